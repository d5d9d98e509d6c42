"""``filtag-kg serve``: the tag dataset as Linked Data, with a read-only SPARQL endpoint.

A small WSGI application over an on-disk Oxigraph store opened read-only,
served by waitress (a well-kept pure-Python WSGI server; no HTTP parsing of
our own). It answers

* ``/sparql``: the SPARQL 1.1 Protocol (GET and POST), results as JSON, XML,
  CSV or TSV, CONSTRUCT/DESCRIBE graphs as Turtle, N-Triples or JSON-LD, with
  a time limit (503) and a result size limit (413); updates are refused (403);
* every resource IRI under the base IRI, with content negotiation: an HTML page
  for people, Turtle, JSON-LD or N-Triples for programs (always answered
  directly, with ``Vary: Accept``, never by redirect);
* ``/.well-known/void`` (the VoID description), ``/dumps/`` (the export files
  given with ``--dumps``) and ``/ontology`` (the ontology document).

Anything that would change data (PUT, DELETE, PATCH, POST outside ``/sparql``,
SPARQL Update) is refused; malformed requests get 4xx answers.
"""

from __future__ import annotations

import html
import io
import json
import os
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FiltagError

RESULT_TYPES = {
    "application/sparql-results+json": "JSON",
    "application/json": "JSON",
    "application/sparql-results+xml": "XML",
    "application/xml": "XML",
    "text/csv": "CSV",
    "text/tab-separated-values": "TSV",
}
GRAPH_TYPES = {
    "text/turtle": "TURTLE",
    "application/n-triples": "N_TRIPLES",
    "application/ld+json": "JSON_LD",
}
RDF_SUFFIX = {".ttl": "text/turtle", ".nt": "application/n-triples", ".jsonld": "application/ld+json"}
MAX_QUERY_BYTES = 100_000
RDFS_LABEL = "http://www.w3.org/2000/01/rdf-schema#label"
SKOS_PREF = "http://www.w3.org/2004/02/skos/core#prefLabel"
RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"
VOID_DATASET = "http://rdfs.org/ns/void#Dataset"
FK = "https://w3id.org/filtag-kg/ontology#"


class ServeError(FiltagError):
    """The store or an option of ``serve`` is unusable."""


@dataclass
class Options:
    """Server settings.

    Attributes:
        base_iri: the IRIs this server answers for (its path part is the mount point).
        timeout_s: a query running longer is answered with 503.
        max_results: a query with more solutions or triples is answered with 413.
        dumps: export files offered for download under ``/dumps/``.
        ontology: the ontology document served at ``/ontology``.
    """

    base_iri: str
    timeout_s: float = 10.0
    max_results: int = 100_000
    dumps: tuple[Path, ...] = ()
    ontology: Path | None = None


class _Reply(Exception):
    """Raised inside a handler to answer with a status and a short text."""

    def __init__(self, status: str, text: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or []


def _negotiate(accept: str, offered: Iterable[str], default: str) -> str | None:
    """The offered media type the Accept header prefers (q-values, wildcards); None if
    nothing is acceptable. Malformed entries are ignored; a header without any valid
    entry counts as ``*/*``."""
    offered = list(offered)
    prefs: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept or "*/*").split(",")):
        fields = [f.strip() for f in part.split(";")]
        mtype, q = fields[0].lower(), 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if mtype.count("/") == 1 and all(mtype.split("/")):  # ignore malformed entries
            prefs.append((q, i, mtype))
    if not prefs:
        return default
    best: tuple[float, int, int, str] | None = None
    for q, i, mtype in prefs:
        if q <= 0:
            continue
        for rank, o in enumerate([default] + [x for x in offered if x != default]):
            major = o.split("/")[0]
            if mtype in (o, f"{major}/*", "*/*"):
                key = (-q, 0 if mtype == o else 1, i if mtype == o else rank, o)
                if best is None or key < best:
                    best = key
    return best[3] if best else None


class App:
    """The WSGI application (one per store)."""

    def __init__(self, store: Any, options: Options, store_path: str, workers: int = 4) -> None:
        self.store = store
        self.opts = options
        parsed = urllib.parse.urlsplit(options.base_iri)
        self.mount = parsed.path if parsed.path.endswith("/") else parsed.path + "/"
        self.pool = _QueryPool(store_path, workers, options.timeout_s, options.max_results)
        self._tag_graphs: list[str] | None | bool = False  # not looked up yet
        self._index_page: tuple[str, list[tuple[str, str]], bytes] | None = None
        self._void: list[Any] | None = None
        self._library: dict[str, Any] = {}  # library queries the pages run, by name

    def tag_graphs(self) -> list[str] | None:
        """The default graph of ``Graphs: tags`` library queries, as IRIs (``""``: the
        default graph), or ``None`` for the union of all graphs; looked up once."""
        if self._tag_graphs is False:
            import pyoxigraph as ox

            from .sparql.store import tag_graphs

            graphs = tag_graphs(self.store)
            self._tag_graphs = (
                None if graphs is None
                else ["" if isinstance(g, ox.DefaultGraph) else g.value for g in graphs]
            )
        return self._tag_graphs  # type: ignore[return-value]

    # -- plumbing -------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        try:
            status, headers, body = self.route(environ)
        except _Reply as r:
            status, headers, body = (
                r.status,
                [("Content-Type", "text/plain; charset=utf-8"), *r.headers],
                (r.text + "\n").encode(),
            )
        except Exception as exc:  # noqa: BLE001 - the server must survive anything a request triggers
            status, headers, body = (
                "500 Internal Server Error",
                [("Content-Type", "text/plain")],
                (f"internal error: {type(exc).__name__}\n".encode()),
            )
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    def route(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        if path in ("/sparql", self.mount + "sparql"):
            if method not in ("GET", "HEAD", "POST"):
                raise _Reply("405 Method Not Allowed", "use GET or POST", [("Allow", "GET, HEAD, POST")])
            return self.sparql(environ)
        if method not in ("GET", "HEAD"):
            raise _Reply("405 Method Not Allowed", "this server is read-only", [("Allow", "GET, HEAD")])
        if path in ("/.well-known/void", self.mount + ".well-known/void"):
            return self.void(environ)
        if path == "/ontology":
            return self.ontology(environ)
        if path.startswith("/dumps/") or path == "/dumps":
            return self.dumps(path)
        if path == "/" or path == self.mount:
            return self.index(environ)
        if path.startswith(self.mount):
            return self.resource(environ, path)
        raise _Reply("404 Not Found", f"nothing at {path}")

    def run_query(self, text: str, default: list[str] | None = None, named: list[str] | None = None) -> Any:
        """Run a query in a worker process, within the time and size limits.

        Args:
            text: the query.
            default: IRIs of the graphs whose union is the default graph (``""`` names
                the store's default graph); ``None``: the union of all graphs.
            named: IRIs of the named graphs the query may use; ``None``: all of them.

        Returns:
            ``True``/``False`` (ASK), ``(variables, rows)`` (SELECT; each row maps a
            variable to a term dict of the SPARQL JSON results format, plus ``"nt"``,
            its N-Triples syntax) or ``(None, ntriples_bytes)`` (CONSTRUCT/DESCRIBE).
        """
        kind, payload = self.pool.run(text, default, named)
        if kind == "syntax":
            raise _Reply("400 Bad Request", f"query syntax error: {payload}")
        if kind == "too-large":
            raise _Reply("413 Content Too Large", f"more than {self.opts.max_results} results; add a LIMIT")
        if kind == "error":
            raise _Reply("500 Internal Server Error", f"query failed: {payload}")
        return payload

    # -- SPARQL protocol ------------------------------------------------------------------
    def _query_text(self, environ: dict[str, Any]) -> tuple[str | None, dict[str, list[str]]]:
        """The request's query (``None`` if it has none) and its protocol parameters."""
        params = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if "update" in params:
            raise _Reply("403 Forbidden", "SPARQL Update is refused: this endpoint is read-only")
        if environ.get("REQUEST_METHOD") == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                raise _Reply("400 Bad Request", "bad Content-Length") from None
            if length > MAX_QUERY_BYTES:
                raise _Reply("413 Content Too Large", f"query larger than {MAX_QUERY_BYTES} bytes")
            body = environ["wsgi.input"].read(length) if length else b""
            ctype = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
            if ctype == "application/sparql-update":
                raise _Reply("403 Forbidden", "SPARQL Update is refused: this endpoint is read-only")
            if ctype == "application/sparql-query":
                return body.decode("utf-8", "replace"), params
            if ctype in ("application/x-www-form-urlencoded", ""):
                form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
                if "update" in form:
                    raise _Reply("403 Forbidden", "SPARQL Update is refused: this endpoint is read-only")
                params.update(form)
            else:
                raise _Reply("415 Unsupported Media Type", f"cannot read a {ctype} body")
        queries = params.get("query")
        if not queries:
            return None, params
        if len(queries) > 1:
            raise _Reply("400 Bad Request", "give exactly one query parameter")
        if len(queries[0].encode()) > MAX_QUERY_BYTES:
            raise _Reply("413 Content Too Large", f"query larger than {MAX_QUERY_BYTES} bytes")
        return queries[0], params

    def sparql(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:

        text, params = self._query_text(environ)
        if text is None:
            return self._page(
                "SPARQL endpoint", _SPARQL_FORM.format(action=html.escape(self.mount + "sparql"))
            )
        if _first_keyword(text) in UPDATE_KEYWORDS:
            raise _Reply("403 Forbidden", "SPARQL Update is refused: this endpoint is read-only")
        # the protocol's dataset parameters: without them the default graph is the union
        # of all graphs; with them, the graphs named (as the SPARQL 1.1 protocol says)
        default = _graph_iris(params.get("default-graph-uri"))
        named = _graph_iris(params.get("named-graph-uri"))
        result = self.run_query(text, default, named)
        accept = environ.get("HTTP_ACCEPT", "")
        if isinstance(result, bool) or result[0] is not None:  # SELECT / ASK
            mtype = _negotiate(accept, RESULT_TYPES, "application/sparql-results+json")
            if mtype is None:
                raise _Reply("406 Not Acceptable", "results come as " + ", ".join(RESULT_TYPES))
            if isinstance(result, bool):
                body = _boolean_results(result, RESULT_TYPES[mtype])
            else:
                body = _solutions_results(result[0], result[1], RESULT_TYPES[mtype])
            return "200 OK", [("Content-Type", f"{mtype}; charset=utf-8"), ("Vary", "Accept")], body
        mtype = _negotiate(accept, GRAPH_TYPES, "text/turtle")
        if mtype is None:
            raise _Reply("406 Not Acceptable", "graphs come as " + ", ".join(GRAPH_TYPES))
        body = _convert_ntriples(result[1], GRAPH_TYPES[mtype])
        return "200 OK", [("Content-Type", f"{mtype}; charset=utf-8"), ("Vary", "Accept")], body

    # -- Linked Data ----------------------------------------------------------------------
    def resource(self, environ: dict[str, Any], path: str) -> tuple[str, list[tuple[str, str]], bytes]:
        import pyoxigraph as ox

        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or urllib.parse.quote(path)
        raw = raw.split("?", 1)[0]
        if not raw.startswith(self.mount):
            raw = urllib.parse.quote(path)
        tail = raw[len(self.mount) :]
        if any(seg in ("..", ".") for seg in urllib.parse.unquote(tail).split("/")):
            raise _Reply("404 Not Found", "no such resource")
        iri = (
            self.opts.base_iri.rstrip("/") + "/" + tail
            if not self.opts.base_iri.endswith("/")
            else self.opts.base_iri + tail
        )
        suffix = next((s for s in RDF_SUFFIX if iri.endswith(s)), None)
        forced = None
        if suffix and not self._exists(iri):
            iri, forced = iri[: -len(suffix)], RDF_SUFFIX[suffix]
        try:
            node = ox.NamedNode(iri)
        except ValueError:
            raise _Reply("404 Not Found", "no such resource") from None
        if not self._exists(iri):
            raise _Reply("404 Not Found", f"no resource {iri}")
        mtype = forced or _negotiate(environ.get("HTTP_ACCEPT", ""), ["text/html", *GRAPH_TYPES], "text/html")
        if mtype is None:
            raise _Reply("406 Not Acceptable", "resources come as text/html, " + ", ".join(GRAPH_TYPES))
        triples = self._describe(node)
        headers = [("Vary", "Accept"), ("Content-Type", f"{mtype}; charset=utf-8")]
        if mtype == "text/html":
            return "200 OK", headers, self._resource_page(iri, triples)
        return "200 OK", headers, _serialize_triples(triples, GRAPH_TYPES[mtype])

    def _exists(self, iri: str) -> bool:
        import pyoxigraph as ox

        node = ox.NamedNode(iri)
        return (
            next(iter(self.store.quads_for_pattern(node, None, None, None)), None) is not None
            or next(iter(self.store.quads_for_pattern(None, None, node, None)), None) is not None
        )

    def _describe(self, node: Any) -> list[Any]:
        """The resource's own triples, the contents of the named graph it names (an
        explanation), and the triples of its IRI-children in the same graphs (qualified tags)."""
        from itertools import islice

        quads = [self.store.quads_for_pattern(node, None, None, None)]
        if self.store.contains_named_graph(node):
            quads.append(islice(self.store.quads_for_pattern(None, None, None, node), self.opts.max_results))
        return _distinct_triples(*quads)

    def void(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        mtype = (
            _negotiate(environ.get("HTTP_ACCEPT", ""), ["text/turtle", *GRAPH_TYPES], "text/turtle")
            or "text/turtle"
        )
        return (
            "200 OK",
            [("Content-Type", f"{mtype}; charset=utf-8"), ("Vary", "Accept")],
            _serialize_triples(self._void_triples(), GRAPH_TYPES[mtype]),
        )

    def _void_triples(self) -> list[Any]:
        """The statements about every ``void:Dataset`` (the export's dataset description),
        looked up by subject in the indexes (a filter over all quads took 50 s at 2 million
        quads) and kept, since the store is read-only."""
        if self._void is None:
            import pyoxigraph as ox

            typed = self.store.quads_for_pattern(None, ox.NamedNode(RDF_TYPE), ox.NamedNode(VOID_DATASET))
            datasets = sorted({q.subject for q in typed}, key=str)
            self._void = _distinct_triples(*(self.store.quads_for_pattern(d, None, None) for d in datasets))
        return self._void

    def ontology(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        if self.opts.ontology is None or not self.opts.ontology.is_file():
            raise _Reply("404 Not Found", "no ontology document configured")
        return "200 OK", [("Content-Type", "text/turtle; charset=utf-8")], self.opts.ontology.read_bytes()

    def dumps(self, path: str) -> tuple[str, list[tuple[str, str]], bytes]:
        by_name = {p.name: p for p in self.opts.dumps}
        name = path[len("/dumps/") :] if path.startswith("/dumps/") else ""
        if not name:
            items = "".join(
                f'<li><a href="/dumps/{urllib.parse.quote(n)}">{html.escape(n)}</a> '
                f"({p.stat().st_size:,} bytes)</li>"
                for n, p in sorted(by_name.items())
            )
            return self._page("Downloads", f"<ul>{items or '<li>none offered</li>'}</ul>")
        if name not in by_name:  # only the files given; no path is ever joined
            raise _Reply("404 Not Found", "no such dump")
        p = by_name[name]
        ctype = {
            ".nq": "application/n-quads",
            ".trig": "application/trig",
            ".nt": "application/n-triples",
            ".ttl": "text/turtle",
            ".jsonld": "application/ld+json",
        }.get(p.suffix, "application/octet-stream")
        return (
            "200 OK",
            [
                ("Content-Type", ctype),
                ("Content-Disposition", f'attachment; filename="{urllib.parse.quote(name)}"'),
            ],
            p.read_bytes(),
        )

    # -- HTML -----------------------------------------------------------------------------
    def index(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        # the store is opened read-only, so the page (a scan of every rdf:type statement:
        # seconds at tens of millions of quads) is computed once per server
        if self._index_page is None:
            self._index_page = self._make_index()
        return self._index_page

    def _make_index(self) -> tuple[str, list[tuple[str, str]], bytes]:
        variables, rows = self.run_query(
            "SELECT ?type (COUNT(DISTINCT ?s) AS ?n) WHERE { ?s a ?type } GROUP BY ?type ORDER BY DESC(?n)"
        )
        counts = "".join(
            f"<tr><td>{self._link(r['type']['value'])}</td><td>{r['n']['value']}</td></tr>" for r in rows[:40]
        )
        models = self.run_query(f"SELECT DISTINCT ?m WHERE {{ ?m a <{FK}Model> }} ORDER BY ?m LIMIT 50")[1]
        body = (
            f"<p>Base IRI <code>{html.escape(self.opts.base_iri)}</code>. "
            f'Query with <a href="{html.escape(self.mount)}sparql">SPARQL</a>; '
            'dataset description: <a href="/.well-known/void">VoID</a>; '
            '<a href="/dumps/">downloads</a>; <a href="/ontology">ontology</a>.</p>'
            "<h2>Models</h2><ul>"
            + "".join(f"<li>{self._link(r['m']['value'])}</li>" for r in models)
            + "</ul>"
            f"<h2>Resources by type</h2><table><tr><th>type</th><th>count</th></tr>{counts}</table>"
        )
        return self._page("filtag-kg knowledge graph", body)

    def _local(self, iri: str) -> str | None:
        base = self.opts.base_iri
        if iri.startswith(base):
            return self.mount + iri[len(base) :]
        return None

    def _label(self, iri: str) -> str:
        import pyoxigraph as ox

        node = ox.NamedNode(iri)
        for pred in (SKOS_PREF, RDFS_LABEL):
            for q in self.store.quads_for_pattern(node, ox.NamedNode(pred), None, None):
                return q.object.value
        return iri.rsplit("/", 1)[-1].rsplit("#", 1)[-1] or iri

    def _link(self, iri: str) -> str:
        local = self._local(iri)
        href = local if local is not None else iri
        return f'<a href="{html.escape(href, quote=True)}">{html.escape(self._label(iri))}</a>'

    def _term(self, term: Any) -> str:
        import pyoxigraph as ox

        if isinstance(term, ox.NamedNode):
            return self._link(term.value)
        if isinstance(term, ox.Literal):
            return html.escape(term.value)
        return html.escape(str(term))

    def _resource_page(self, iri: str, triples: list[Any]) -> bytes:
        import pyoxigraph as ox

        node = ox.NamedNode(iri)
        own = [t for t in triples if t.subject == node]
        rest = [t for t in triples if t.subject != node]
        rows = "".join(
            f"<tr><td>{self._link(t.predicate.value)}</td><td>{self._term(t.object)}</td></tr>" for t in own
        )
        incoming = []
        for i, q in enumerate(self.store.quads_for_pattern(None, None, node, None)):
            if i >= 300:
                incoming.append("<tr><td colspan=2>… more through SPARQL</td></tr>")
                break
            incoming.append(
                f"<tr><td>{self._term(q.subject)}</td><td>{self._link(q.predicate.value)}</td></tr>"
            )
        related = "".join(
            f"<tr><td>{self._term(t.subject)}</td><td>{self._link(t.predicate.value)}</td>"
            f"<td>{self._term(t.object)}</td></tr>"
            for t in rest[:500]
        )
        local = self._local(iri) or ""
        alt = " ".join(f'<a href="{html.escape(local + s)}">{s[1:]}</a>' for s in RDF_SUFFIX)
        body = (
            f"<p><code>{html.escape(iri)}</code> — as {alt}</p>"
            + self._typed_section(node, own)
            + f"<h2>Properties</h2><table>{rows}</table>"
            + (f"<h2>Referenced by</h2><table>{''.join(incoming)}</table>" if incoming else "")
            + (f"<h2>Related statements</h2><table>{related}</table>" if related else "")
        )
        return self._page(self._label(iri), body)[2]

    def _typed_section(self, node: Any, own: list[Any]) -> str:
        """What people look for on a filter page (its tags and abstract tags) and a concept
        page (the filters that represent it, counting hyponyms), from the query library."""
        import pyoxigraph as ox

        types = {t.object.value for t in own if t.predicate.value == RDF_TYPE}
        value = {t.predicate.value: t.object for t in own}
        if FK + "Filter" in types and FK + "filterIndex" in value and FK + "inLayer" in value:
            layer = next(
                iter(
                    self.store.quads_for_pattern(
                        value[FK + "inLayer"], ox.NamedNode(FK + "layerName"), None, None
                    )
                ),
                None,
            )
            if layer is None:
                return ""
            bound = {"layer": layer.object, "filter": value[FK + "filterIndex"]}
            return self._query_table("Tags and abstract tags", "concepts-of-filter", bound)
        if (FK + "Concept" in types or FK + "Synset" in types) and FK + "wnid" in value:
            return self._query_table(
                "Filters that represent it (counting hyponyms)",
                "filters-for-concept",
                {"concept": value[FK + "wnid"]},
            )
        return ""

    def _query_table(self, title: str, name: str, bound: dict[str, Any]) -> str:
        """A library query with fixed values for some variables, as an HTML table."""
        info = self._library.get(name)
        if info is None:  # read and parsed once per server, not on every page
            from .sparql.library import find_query

            info = self._library[name] = find_query(name)
        text = _with_values(info.text, bound)
        try:
            # a query that reads only tags runs over the tag graphs, as the library runs it
            variables, rows = self.run_query(text, self.tag_graphs() if info.graphs == "tags" else None)
        except _Reply as r:
            return f"<h2>{html.escape(title)}</h2><p>{html.escape(r.text)}</p>"
        if not rows:
            return f"<h2>{html.escape(title)}</h2><p>none</p>"
        head = "".join(f"<th>{html.escape(v)}</th>" for v in variables)
        cells = "".join(
            "<tr>" + "".join(f"<td>{self._cell(r.get(v))}</td>" for v in variables) + "</tr>"
            for r in rows[:300]
        )
        return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{cells}</table>"

    def _cell(self, term: dict[str, str] | None) -> str:
        if not term:
            return ""
        if term["type"] == "uri":
            return self._link(term["value"])
        return html.escape(term["value"])

    def _page(self, title: str, body: str) -> tuple[str, list[tuple[str, str]], bytes]:
        doc = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<nav><a href='{html.escape(self.mount)}'>filtag-kg</a> · "
            f"<a href='{html.escape(self.mount)}sparql'>SPARQL</a></nav>"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>"
        )
        return "200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Vary", "Accept")], doc.encode()


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:70em;margin:1em auto;padding:0 1em;line-height:1.4}"
    "table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:.2em .6em;text-align:left;"
    "vertical-align:top}code{background:#f4f4f4}nav{margin-bottom:1em}textarea{width:100%}"
)
_SPARQL_FORM = (
    "<form method='post' action='{action}'><textarea name='query' rows='12'>"
    "SELECT ?s ?p ?o WHERE {{ ?s ?p ?o }} LIMIT 10</textarea><br>"
    "<button type='submit'>Run</button></form>"
)


UPDATE_KEYWORDS = {"INSERT", "DELETE", "LOAD", "CLEAR", "DROP", "CREATE", "COPY", "MOVE", "ADD", "WITH"}


def _first_keyword(text: str) -> str:
    """The first keyword after the prologue (PREFIX/BASE declarations and comments),
    upper-cased: tells a query (SELECT, ASK, ...) from an update (INSERT, DROP, ...)."""
    import re

    text = re.sub(r"(?m)#[^\n<>\"']*$", "", text)  # comments (not inside IRIs or strings)
    prologue = re.compile(r"\s*(?:PREFIX\s+[^:\s]*:\s*<[^>]*>|BASE\s*<[^>]*>)", re.IGNORECASE)
    pos = 0
    while m := prologue.match(text, pos):
        pos = m.end()
    word = re.match(r"\s*([A-Za-z]+)", text[pos:])
    return word.group(1).upper() if word else ""


def _distinct_triples(*quad_sources: Iterable[Any]) -> list[Any]:
    """The triples of the quads (graph names dropped), each once, in first-seen order."""
    import pyoxigraph as ox

    seen: set[Any] = set()
    out = []
    for quads in quad_sources:
        for q in quads:
            t = ox.Triple(q.subject, q.predicate, q.object)
            if t not in seen:
                seen.add(t)
                out.append(t)
    return out


def _graph_iris(values: list[str] | None) -> list[str] | None:
    """Checked IRIs of a ``default-graph-uri`` / ``named-graph-uri`` parameter."""
    if not values:
        return None
    import pyoxigraph as ox

    for v in values:
        try:
            ox.NamedNode(v)
        except ValueError:
            raise _Reply("400 Bad Request", f"graph IRI {v!r} is not an absolute IRI") from None
    return list(values)


def _with_values(text: str, bound: dict[str, Any]) -> str:
    """The query with ``VALUES`` fixing some variables to RDF terms, right after its first
    ``WHERE {`` (comments removed first). Terms are written in their N-Triples syntax by
    pyoxigraph, so a value can never change the query's structure."""
    import re

    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    body = "\n".join(lines)
    m = re.search(r"WHERE\s*\{", body, re.IGNORECASE)
    if m is None:
        raise ValueError("query has no WHERE clause")
    names = " ".join(f"?{k}" for k in bound)
    values = " ".join(str(v) for v in bound.values())
    return f"{body[: m.end()]}\n  VALUES ({names}) {{ ({values}) }}\n{body[m.end() :]}"


def _boolean_results(value: bool, fmt: str) -> bytes:
    if fmt == "JSON":
        return json.dumps({"head": {}, "boolean": value}).encode()
    if fmt == "XML":
        return (
            '<?xml version="1.0"?><sparql xmlns="http://www.w3.org/2005/sparql-results#">'
            f"<head/><boolean>{'true' if value else 'false'}</boolean></sparql>"
        ).encode()
    return f"_askResult\n{'true' if value else 'false'}\n".encode()


def _term_json(t: Any) -> dict[str, str]:
    """A pyoxigraph term as a SPARQL JSON results term, plus its N-Triples syntax (``nt``)."""
    import pyoxigraph as ox

    if isinstance(t, ox.NamedNode):
        d = {"type": "uri", "value": t.value}
    elif isinstance(t, ox.BlankNode):
        d = {"type": "bnode", "value": t.value}
    else:
        d = {"type": "literal", "value": t.value}
        if t.language:
            d["xml:lang"] = t.language
        elif t.datatype.value != "http://www.w3.org/2001/XMLSchema#string":
            d["datatype"] = t.datatype.value
    d["nt"] = str(t)
    return d


def _solutions_results(variables: list[str], rows: list[dict[str, Any]], fmt: str) -> bytes:
    """SELECT results in the SPARQL 1.1 JSON, XML, CSV or TSV results format."""
    if fmt == "JSON":
        bindings = [
            {v: {k: x for k, x in r[v].items() if k != "nt"} for v in variables if r.get(v)} for r in rows
        ]
        return json.dumps(
            {"head": {"vars": variables}, "results": {"bindings": bindings}}, ensure_ascii=False
        ).encode()
    if fmt == "XML":
        out = ['<?xml version="1.0"?><sparql xmlns="http://www.w3.org/2005/sparql-results#"><head>']
        out += [f'<variable name="{html.escape(v)}"/>' for v in variables]
        out.append("</head><results>")
        for r in rows:
            out.append("<result>")
            for v in variables:
                j = r.get(v)
                if not j:
                    continue
                if j["type"] == "literal":
                    attrs = "".join(f' {k}="{html.escape(j[k])}"' for k in ("xml:lang", "datatype") if k in j)
                    inner = f"<literal{attrs}>{html.escape(j['value'], quote=False)}</literal>"
                else:
                    inner = f"<{j['type']}>{html.escape(j['value'], quote=False)}</{j['type']}>"
                out.append(f'<binding name="{html.escape(v)}">{inner}</binding>')
            out.append("</result>")
        out.append("</results></sparql>")
        return "".join(out).encode()
    if fmt == "CSV":
        import csv

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(variables)
        for r in rows:
            w.writerow([r[v]["value"] if r.get(v) else "" for v in variables])
        return buf.getvalue().encode()
    lines = ["\t".join(f"?{v}" for v in variables)]  # TSV: terms in their SPARQL/Turtle syntax
    lines += ["\t".join(r[v]["nt"] if r.get(v) else "" for v in variables) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def _convert_ntriples(data: bytes, fmt: str) -> bytes:
    """N-Triples from a worker, re-serialised as Turtle, N-Triples or JSON-LD."""
    import pyoxigraph as ox

    if fmt == "N_TRIPLES":
        return data
    return _serialize_triples(ox.parse(data, format=ox.RdfFormat.N_TRIPLES), fmt)


def _worker_main(store_dir: str, conn: Any, max_results: int) -> None:
    """A query worker: opens the store read-only and answers queries until told to stop.

    Runs in its own process, so a query past the time limit is stopped by killing it.
    """
    import pyoxigraph as ox

    store = ox.Store.read_only(store_dir)

    def graph(iri: str) -> Any:
        return ox.DefaultGraph() if iri == "" else ox.NamedNode(iri)

    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        text, default, named = message
        dataset: dict[str, Any] = {"use_default_graph_as_union": True}
        if default is not None:
            dataset = {"default_graph": [graph(g) for g in default]}
        if named is not None:
            dataset["named_graphs"] = [ox.NamedNode(g) for g in named]
        try:
            result = store.query(text, **dataset)
            if isinstance(result, ox.QueryBoolean):
                conn.send(("ok", bool(result)))
            elif isinstance(result, ox.QuerySolutions):
                variables = [v.value for v in result.variables]
                rows = []
                for i, sol in enumerate(result):
                    if i >= max_results:
                        break
                    rows.append({v: (_term_json(sol[v]) if sol[v] is not None else None) for v in variables})
                else:
                    conn.send(("ok", (variables, rows)))
                    continue
                conn.send(("too-large", None))
            else:
                triples = []
                for i, t in enumerate(result):
                    if i >= max_results:
                        conn.send(("too-large", None))
                        break
                    triples.append(t)
                else:
                    conn.send(("ok", (None, ox.serialize(triples, format=ox.RdfFormat.N_TRIPLES) or b"")))
        except SyntaxError as exc:
            conn.send(("syntax", str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the client as a 500
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _QueryPool:
    """Worker processes that run queries; one past the time limit is killed and replaced."""

    def __init__(self, store_dir: str, size: int, timeout_s: float, max_results: int) -> None:
        import multiprocessing as mp
        import queue

        self.ctx = mp.get_context("spawn")  # forking a threaded server is unsafe
        self.store_dir, self.timeout_s, self.max_results = store_dir, timeout_s, max_results
        self.idle: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.workers: list[Any] = []
        for _ in range(size):
            self.idle.put(self._start())

    def _start(self) -> tuple[Any, Any]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=_worker_main, args=(self.store_dir, child, self.max_results), daemon=True
        )
        proc.start()
        child.close()
        self.workers.append(proc)
        return proc, parent

    def run(
        self, text: str, default: list[str] | None = None, named: list[str] | None = None
    ) -> tuple[str, Any]:
        """Run a query in an idle worker (see :meth:`App.run_query` for the graph lists)."""
        import queue

        try:
            proc, conn = self.idle.get(timeout=self.timeout_s)
        except queue.Empty:
            raise _Reply("503 Service Unavailable", "all query workers are busy; try again") from None
        try:
            conn.send((text, default, named))
            if conn.poll(self.timeout_s):
                reply = conn.recv()
                self.idle.put((proc, conn))
                return reply
        except (EOFError, OSError, BrokenPipeError):
            pass
        proc.kill()  # past the time limit (or dead): stop it, start a fresh one
        proc.join(timeout=5)
        self.workers.remove(proc)
        self.idle.put(self._start())
        raise _Reply("503 Service Unavailable", f"query exceeded the {self.timeout_s:g} s time limit")

    def close(self) -> None:
        for proc in self.workers:
            proc.kill()


def _serialize_triples(triples: Iterable[Any], fmt: str) -> bytes:
    import pyoxigraph as ox

    buf = io.BytesIO()
    ox.serialize(list(triples), buf, getattr(ox.RdfFormat, fmt))
    return buf.getvalue()


def open_store(store_dir: str | os.PathLike[str]) -> Any:
    """Open an on-disk Oxigraph store read-only.

    Raises:
        ServeError: the folder is not an Oxigraph store.
    """
    import pyoxigraph as ox

    p = Path(store_dir)
    if not p.is_dir():
        raise ServeError(
            f"store {store_dir} does not exist; create it with `filtag-kg load FILE --store {store_dir}`"
        )
    try:
        return ox.Store.read_only(str(p))
    except OSError as exc:
        raise ServeError(f"cannot open store {store_dir}: {str(exc).splitlines()[0][:160]}") from None


def make_app(store_dir: str | os.PathLike[str], options: Options, *, workers: int = 4) -> App:
    """The WSGI application over a store (see :class:`Options`), with ``workers`` query processes."""
    from .rdf.mint import check_base_iri

    options.base_iri = check_base_iri(options.base_iri)
    return App(open_store(store_dir), options, str(store_dir), workers)


def serve(
    store_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    options: Options,
    threads: int = 8,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve a store until interrupted (waitress, ``threads`` worker threads)."""
    import waitress

    app = make_app(store_dir, options)
    server = waitress.create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        max_request_body_size=MAX_QUERY_BYTES * 2,
        ident="filtag-kg",
    )
    if ready is not None:
        ready(f"http://{host}:{server.effective_port}/")
    try:
        server.run()
    finally:
        server.close()
        app.pool.close()
