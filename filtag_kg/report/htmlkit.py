"""Small HTML toolkit of the report: escaping, safe file names, links and the page frame.

Everything that goes into a page passes through :func:`esc` (text and attribute
values alike), so labels, file names and layer names can contain anything:
quotes, ``<``, ``&``, newlines, unicode, even lone surrogates from undecodable
file names. File names of pages never contain user text verbatim beyond a
sanitised, length-limited stem followed by a hash (:func:`file_key`), so any
layer or class name gives a valid, unique name on every file system
(case-insensitive ones included). Links between pages are relative, so the
site opens from disk anywhere.
"""

from __future__ import annotations

import functools
import hashlib
import html
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote

__all__ = [
    "CSS",
    "Page",
    "bar",
    "bar_value",
    "esc",
    "file_key",
    "fmt_num",
    "href",
    "link",
    "rdf_link",
    "table",
]

_SURROGATES = re.compile("[\ud800-\udfff]")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_PLAIN_URL = re.compile(r"[A-Za-z0-9/#._~-]*")


def esc(value: object) -> str:
    """``value`` as HTML text, safe in element content and in double-quoted attributes.

    Lone surrogates (from undecodable file names) become U+FFFD so the page can
    be written as UTF-8.

    Example:
        >>> esc('<a href="x">&</a>')
        '&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;'
    """
    text = value if isinstance(value, str) else str(value)
    return html.escape(_SURROGATES.sub("\ufffd", text), quote=True)


def file_key(name: str, *, max_stem: int = 40) -> str:
    """A file-name stem for any text: a readable, sanitised prefix and a hash of the text.

    Only ``A-Z a-z 0-9 _ -`` appear, so the key is safe in URLs and on every
    file system; the hash keeps names apart that sanitise alike (``a b`` and
    ``a/b``) or differ only in case.

    Example:
        >>> file_key("features.28")
        'features_28-8c798eee'
    """
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem = _UNSAFE.sub("_", name).strip("_")[:max_stem] or "x"
    return f"{stem}-{digest}"


def href(from_page: str, target: str) -> str:
    """The relative, percent-encoded URL from one site file to another.

    Both are site-relative paths without ``.``/``..`` segments (``filters/x/3.html``);
    a target in the page's own folder is named alone, any other one through
    ``../`` up to the site root (a few string operations: pages hold thousands of links).

    Example:
        >>> href("filters/a/1.html", "filters/a/2.html"), href("layers/a.html", "index.html#layers")
        ('2.html', '../index.html#layers')
    """
    folder, sep, _ = from_page.rpartition("/")
    if sep and target.startswith(folder + "/"):
        rel = target[len(folder) + 1 :]
    else:
        rel = "../" * from_page.count("/") + target
    return _quote(rel)


@functools.lru_cache(maxsize=65536)
def _quote(rel: str) -> str:
    return rel if _PLAIN_URL.fullmatch(rel) else quote(rel, safe="/#-._~")


def link(from_page: str, target: str | None, text: object, *, cls: str | None = None) -> str:
    """An ``<a>`` to another site file, or the escaped text alone when ``target`` is ``None``."""
    if target is None:
        return esc(text)
    c = f' class="{esc(cls)}"' if cls else ""
    return f'<a href="{esc(href(from_page, target))}"{c}>{esc(text)}</a>'


def rdf_link(iri: str | None, *, text: str = "RDF", short: bool = False) -> str:
    """A small link to an RDF IRI: ``RDF: <iri>`` with the IRI as its title.

    Only ``http``/``https`` IRIs are clickable (they may resolve); any other scheme
    (``urn:``, or a ``javascript:`` base IRI) is shown as text. ``short``: the link shows
    ``text`` alone (the IRI in its title), for captions.
    """
    if not iri:
        return ""
    if iri.split(":", 1)[0].lower() not in ("http", "https"):
        return f'<span class="rdf">{esc(text)}: <code>{esc(iri)}</code></span>'
    if short:
        return f'<span class="rdf"><a href="{esc(iri)}" class="iri" title="{esc(iri)}">{esc(text)}</a></span>'
    return (
        f'<span class="rdf">{esc(text)}: <a href="{esc(iri)}" class="iri" title="{esc(iri)}">'
        f"{esc(iri)}</a></span>"
    )


def fmt_num(x: object, digits: int = 3) -> str:
    """A number for display: integers as they are, floats with ``digits`` significant digits."""
    if isinstance(x, bool) or x is None:
        return "" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x != x:  # NaN
            return "–"
        return f"{x:.{digits}g}"
    return str(x)


def bar(share: float, *, title: str | None = None) -> str:
    """A horizontal CSS bar for a share in [0, 1] (values outside are clipped)."""
    pct = 0.0 if share != share else max(0.0, min(1.0, float(share))) * 100
    t = f' title="{esc(title)}"' if title else ""
    return f'<span class="bar"{t}><span style="width:{pct:.1f}%"></span></span>'


def bar_value(share: float, text: str) -> str:
    """A bar followed by its value, kept on one line."""
    return f'<span class="nowrap">{bar(share)} {text}</span>'


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    cls: str | None = None,
    caption: str | None = None,
) -> str:
    """An HTML table; ``header`` is escaped, the cells are HTML already (escape them first)."""
    c = f' class="{esc(cls)}"' if cls else ""
    out = [f"<table{c}>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
    out.extend("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    out.append("</tbody></table>")
    return "\n".join(out)


class Page:
    """One HTML page being assembled: a site-relative path, a title and body parts.

    Args:
        path: where the page goes, relative to the site root (``layers/x.html``).
        title: the page title (plain text).
        crumbs: ``(target, text)`` pairs of the breadcrumb trail after the index.
    """

    def __init__(self, path: str, title: str, crumbs: Sequence[tuple[str | None, str]] = ()) -> None:
        self.path = path
        self.title = title
        self.crumbs = list(crumbs)
        self.parts: list[str] = []

    def link(self, target: str | None, text: object, *, cls: str | None = None) -> str:
        """A link from this page (see :func:`link`)."""
        return link(self.path, target, text, cls=cls)

    def src(self, target: str) -> str:
        """The escaped relative URL of a site file, for ``src``/``href`` attributes."""
        return esc(href(self.path, target))

    def add(self, *parts: str) -> None:
        """Append HTML fragments to the body."""
        self.parts.extend(parts)

    def render(self, *, site_title: str) -> str:
        """The whole document."""
        nav = [link(self.path, "index.html", "Overview")]
        nav += [link(self.path, t, text) for t, text in self.crumbs]
        menu = " · ".join(
            link(self.path, t, text)
            for t, text in (
                ("index.html", "overview"),
                ("index.html#layers", "layers"),
                ("concepts/index.html", "concepts"),
                ("explanations/index.html", "explanations"),
            )
        )
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(self.title)} · {esc(site_title)}</title>\n"
            f'<link rel="stylesheet" href="{self.src("style.css")}">\n'
            "</head>\n<body>\n"
            f'<header><div class="site">{link(self.path, "index.html", site_title)}</div>'
            f'<nav class="menu">{menu}</nav></header>\n'
            f'<nav class="crumbs">{" › ".join(nav)}</nav>\n'
            f"<main>\n<h1>{esc(self.title)}</h1>\n" + "\n".join(self.parts) + "\n</main>\n"
            "<footer>Written by <code>filtag-kg report</code>. Static files: no server, no "
            "network.</footer>\n</body>\n</html>\n"
        )


CSS = """\
:root { --fg: #1d2330; --muted: #5b6577; --line: #dde2ea; --bg: #ffffff; --soft: #f5f7fa;
        --accent: #2458b3; --bar: #4f7fd1; --ok: #1f7a3f; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: var(--bg);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header { display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between;
         gap: .5rem 2rem; padding: .6rem 1.5rem; background: #20304f; }
header a { color: #fff; text-decoration: none; }
header .site a { font-weight: 600; }
header .menu a { color: #cdd8ee; margin-left: .2rem; }
nav.crumbs { padding: .4rem 1.5rem; background: var(--soft); border-bottom: 1px solid var(--line);
             font-size: .9rem; }
main { max-width: 72rem; padding: .5rem 1.5rem 2rem; }
h1 { font-size: 1.6rem; margin: 1rem 0 .5rem; overflow-wrap: anywhere; }
h2 { font-size: 1.25rem; margin: 1.8rem 0 .6rem; padding-bottom: .2rem;
     border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; }
a { color: var(--accent); }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .9em; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: .92rem; }
caption { text-align: left; color: var(--muted); padding-bottom: .2rem; }
th, td { border-bottom: 1px solid var(--line); padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td { overflow-wrap: break-word; }
.wide { flex: 1 1 24rem; }
.nowrap { white-space: nowrap; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: .4rem 0 1rem; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.muted, .note { color: var(--muted); }
.note { font-size: .9rem; }
.sentence { font-style: italic; }
a.phrase { font-weight: 600; }
.rdf { font-size: .8rem; color: var(--muted); overflow-wrap: anywhere; }
.rdf a.iri { color: var(--muted); }
.bar { display: inline-block; width: 7rem; height: .7rem; background: var(--soft);
       border: 1px solid var(--line); vertical-align: middle; }
.bar > span { display: block; height: 100%; background: var(--bar); }
.ok { color: var(--ok); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.tags a { white-space: nowrap; }
figure { margin: .3rem .6rem .8rem 0; display: inline-block; vertical-align: top; }
figure img { display: block; border: 1px solid var(--line); image-rendering: auto; }
figcaption { font-size: .8rem; color: var(--muted); max-width: 12rem; overflow-wrap: anywhere; }
img.chart { max-width: 100%; height: auto; border: 0; }
.gallery { display: flex; flex-wrap: wrap; gap: .2rem; }
footer { padding: 1rem 1.5rem 2rem; color: var(--muted); font-size: .8rem;
         border-top: 1px solid var(--line); }
"""
