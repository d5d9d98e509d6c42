"""Report pages of ``filtag-kg sag``: per image the iGOS++ heatmap and the SAG drawn as SVG.

``saliency/index.html`` lists the images (class, probability, minimal sufficient
explanations found, roots); ``saliency/NNNN.html`` shows one image: the heatmap,
the structured attention graph as an inline SVG (each node the masked image with
its probability and patch count, roots on top with a thick frame, one edge per
removed patch, named in the edge's tooltip) and per root the active tagged filters
and the concepts they vote for, linked to their filter and concept pages. The PNGs
are copied from ``RUN/saliency/`` into the site, so it still opens from disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..saliency_io import SALIENCY_DIR, read_saliency
from .context import SiteContext, facts_list
from .htmlkit import Page, esc, fmt_num, href, rdf_link, table

__all__ = ["SaliencyPages", "sag_svg"]

_BOX, _IMG, _GAP_X, _GAP_Y = 96, 72, 16, 56


def _levels(sag: dict[str, Any]) -> list[int]:
    """Depth of each node below the roots (breadth first along the edges)."""
    n = len(sag["nodes"])
    depth = [-1] * n
    for r in sag["roots"]:
        depth[r] = 0
    children: dict[int, list[int]] = {}
    for e in sag["edges"]:
        children.setdefault(e["parent"], []).append(e["child"])
    frontier = list(sag["roots"])
    while frontier:
        nxt = []
        for p in frontier:
            for c in children.get(p, []):
                if depth[c] < 0:
                    depth[c] = depth[p] + 1
                    nxt.append(c)
        frontier = nxt
    return [d if d >= 0 else 0 for d in depth]


def sag_svg(sag: dict[str, Any], image_href: list[str | None]) -> str:
    """The SAG as an inline SVG: nodes in rows by depth (roots first), edges as lines.

    Args:
        sag: the ``sag`` record of ``saliency.json``.
        image_href: per node, the relative URL of its masked image (escaped here), or None.
    """
    nodes = sag["nodes"]
    if not nodes:
        return '<p class="note">No root: the blurred image alone keeps the probability.</p>'
    depth = _levels(sag)
    rows: dict[int, list[int]] = {}
    for k, d in enumerate(depth):
        rows.setdefault(d, []).append(k)
    width = max(len(v) for v in rows.values()) * (_BOX + _GAP_X) + _GAP_X
    height = len(rows) * (_BOX + _GAP_Y) + _GAP_X
    pos: dict[int, tuple[float, float]] = {}
    for d, ks in rows.items():
        offset = (width - len(ks) * (_BOX + _GAP_X) + _GAP_X) / 2
        for i, k in enumerate(ks):
            pos[k] = (offset + i * (_BOX + _GAP_X), _GAP_X + d * (_BOX + _GAP_Y))
    roots = set(sag["roots"])
    parts = [
        f'<svg class="sag" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="structured attention graph">'
    ]
    for e in sag["edges"]:
        (x1, y1), (x2, y2) = pos[e["parent"]], pos[e["child"]]
        parts.append(
            f'<line class="edge" x1="{x1 + _BOX / 2:.1f}" y1="{y1 + _BOX:.1f}" x2="{x2 + _BOX / 2:.1f}" '
            f'y2="{y2:.1f}" stroke="#8a94a6" stroke-width="1.5"><title>remove patch {int(e["removed"])}'
            "</title></line>"
        )
    for k, node in enumerate(nodes):
        x, y = pos[k]
        stroke = 3 if k in roots else 1
        patches = " ".join(str(int(p)) for p in node["patches"])
        parts.append(
            f'<g class="node{" root" if k in roots else ""}" id="node-{k}"><title>patches {esc(patches)}: '
            f"p = {fmt_num(node['probability'])}</title>"
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{_BOX}" height="{_BOX}" rx="6" fill="#ffffff" '
            f'stroke="#20304f" stroke-width="{stroke}"/>'
        )
        href = image_href[k]
        if href:
            parts.append(
                f'<image href="{esc(href)}" x="{x + (_BOX - _IMG) / 2:.1f}" y="{y + 4:.1f}" width="{_IMG}" '
                f'height="{_IMG}"/>'
            )
        parts.append(
            f'<text x="{x + _BOX / 2:.1f}" y="{y + _BOX - 6:.1f}" text-anchor="middle" font-size="12">'
            f"p={fmt_num(node['probability'], 2)} · {len(node['patches'])}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


class SaliencyPages(SiteContext):
    """Writes the ``saliency/`` pages when the run has ``saliency/saliency.json``."""

    def write_saliency_pages(self) -> None:
        """The index and one page per image of ``saliency.json`` (nothing when there is none)."""
        run = Path(self.view.run_dir)
        doc = read_saliency(run)
        if not doc:
            return
        self.pages.setdefault("saliency", 0)
        src = run / SALIENCY_DIR
        rows = []
        for rec in doc.get("images") or []:
            key = f"{int(rec['index']):04d}"
            path = f"saliency/{key}.html"
            self._saliency_page(rec, key, path, src)
            sag = rec["sag"]
            rows.append(
                [
                    f'<a href="{esc(key)}.html">{esc(Path(str(rec["image"])).name)}</a>',
                    esc(rec.get("label") or rec.get("class_id")),
                    fmt_num(sag["probability"]),
                    str(len(sag.get("minimal") or [])),
                    str(len(sag.get("roots") or [])),
                ]
            )
        page = Page(
            "saliency/index.html",
            "iGOS++ heatmaps and structured attention graphs",
            crumbs=[("saliency/index.html", "saliency")],
        )
        page.add(
            '<p class="note">Made by <code>filtag-kg sag</code>; the methods are stated in '
            "<code>docs/saliency-method.md</code>. A minimal sufficient explanation is a smallest set of "
            "patches that keeps the class's probability; the roots are diverse ones.</p>",
            table(["image", "class", "p", "minimal sets found", "roots"], rows),
        )
        self.write(page, "saliency")
        self.notes.append(
            f"iGOS++ heatmaps and structured attention graphs of {len(rows)} image(s): saliency/index.html"
        )

    def _copy(self, src: Path, rel: str | None) -> str | None:
        """Copy one PNG of the artifact into the site; its site path, or None when missing."""
        if not rel:
            return None
        f = src / rel
        if not f.is_file():
            return None
        dest = self.out / "saliency" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
        return f"saliency/{rel}"

    def _saliency_page(self, rec: dict[str, Any], key: str, path: str, src: Path) -> None:
        sag = rec["sag"]
        page = Page(
            path, f"SAG of {Path(str(rec['image'])).name}", crumbs=[("saliency/index.html", "saliency")]
        )
        sag_iri = self.mint.sag(self.run_iri, str(rec["sha256"]))
        page.add(
            facts_list(
                [
                    ("image", f"<code>{esc(rec['image'])}</code>"),
                    (
                        "explained class",
                        self.class_link(page, str(rec["class_id"]), label=str(rec.get("label") or "")),
                    ),
                    (
                        "probability",
                        f"{fmt_num(sag['probability'])} "
                        f"(blurred image: {fmt_num(sag['baseline_probability'])})",
                    ),
                    ("grid", f"{int(sag['grid'])} × {int(sag['grid'])} patches, numbered row by row from 0"),
                    ("minimal sufficient sets found", str(len(sag.get("minimal") or []))),
                    ("RDF", rdf_link(sag_iri)),
                ]
            )
        )
        igos = rec.get("igos")
        heat = self._copy(src, igos.get("png") if igos else None)
        if heat:
            page.add(
                "<h2>iGOS++ heatmap</h2>",
                f'<figure><img src="{page.src(heat)}" alt="iGOS++ heatmap" width="160">'
                f"<figcaption>mask {int(igos['size'])} × {int(igos['size'])}; bright: deleting it "
                "removes the class, keeping it alone restores it</figcaption></figure>",
            )
        hrefs = []
        for node in sag["nodes"]:
            site_path = self._copy(src, node.get("png"))
            hrefs.append(href(page.path, site_path) if site_path else None)
        page.add(
            "<h2>Structured attention graph</h2>",
            '<p class="note">Each node shows only its patches (the rest blurred) with the probability and '
            "the patch count; roots (thick frame) suffice on their own, each edge removes one patch.</p>",
            sag_svg(sag, hrefs),
        )
        for region in rec.get("regions") or []:
            node = sag["nodes"][region["node"]]
            page.add(
                f"<h3>Root {int(region['node'])}: patches {esc(' '.join(str(p) for p in node['patches']))} "
                f"(p = {fmt_num(node['probability'])})</h3>"
            )
            votes = [
                [self.class_link(page, str(v["class_id"]), label=str(v.get("label") or "")), str(v["count"])]
                for v in region.get("votes") or []
            ]
            filters = []
            for layer in region.get("layers") or []:
                for f in layer.get("active") or []:
                    filters.append(
                        [
                            esc(layer["layer"]),
                            self.filter_link(page, layer["layer"], int(f["filter"])),
                            fmt_num(f["value"]),
                            ", ".join(self.class_link(page, str(c)) for c in f.get("tags") or []) or "—",
                        ]
                    )
            page.add(
                table(["concept", "votes"], votes)
                if votes
                else '<p class="note">no tagged filter is active inside this region</p>',
                table(["layer", "filter", "value in region", "tags"], filters),
            )
        self.write(page, "saliency")
