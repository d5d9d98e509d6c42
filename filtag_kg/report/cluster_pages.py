"""Feature-map clusters in the report (``explain --clusters``).

On each explanation page, a section shows the image's layers from the input side down, each
with its strongest clusters (by the rank the pass gave them, weight first): the cluster's
saliency map (its region ``#xywh=x,y,w,h`` of the image variant's atlas
``RUN/clusters/maps/…png``, named by the record; a record of a run before the atlas names a
whole file) drawn over the image like the filters' heatmaps, captioned with its weight, its
member filters and its top concepts (linked to their concept pages). Without a readable image
the grey map itself is saved into the site.

Per predicted class, ``clusters/{class}.html`` lists, for each tagging setting and layer, the
concepts that label the top clusters of the class's images (``RUN/clusters.json``): in how many
images and with how much weight; ``clusters/index.html`` lists the classes, and each class's
concept page links to its page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..cluster_atlas import Region, cut_map, load_grey, split_map_ref
from ..rdf.tag_graph import param_text
from ..sentences import setting_key
from .context import SiteContext, facts_list
from .heatmaps import overlay, save_jpeg
from .htmlkit import Page, bar_value, esc, file_key, fmt_num, rdf_link, table
from .runview import setting_text

__all__ = ["CLUSTERS_SHOWN", "ClusterPages"]

#: clusters drawn per layer on an explanation page (the strongest, by rank)
CLUSTERS_SHOWN = 3
#: concepts listed per layer and setting on a class's cluster page
CONCEPTS_LISTED = 10


class ClusterPages(SiteContext):
    """The clusters' section of the explanation pages and the class pages of ``clusters/``."""

    # -- explanation pages ----------------------------------------------------------------
    @staticmethod
    def cluster_record(group: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The record whose clusters an explanation page shows: the clean, unweighted one with
        clusters (labels depend on the setting; members, weights and maps do not), or ``None``."""
        with_clusters = [r for r in group if r.get("clusters")]
        clean = [r for r in with_clusters if not r.get("perturbation")]
        return next((r for r in clean if not r.get("weighting")), clean[0] if clean else None)

    def _layers_of(self, clusters: dict[str, Any]) -> list[str]:
        """The record's clustered layers in the profile's order (input side first), others after."""
        known = [name for name in self.view.layer_names if name in clusters]
        return known + [name for name in clusters if name not in self.layer_index]

    @staticmethod
    def _shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        strong = [r for r in rows if float(r.get("weight") or 0) > 0]
        return sorted(strong, key=lambda r: int(r["rank"]))[:CLUSTERS_SHOWN]

    @staticmethod
    def _map_path(run: Path, rel: Any) -> tuple[Path, Region | None] | None:
        """The map file of the run folder ``run`` (resolved) a record names and the map's
        region of it (``None``: the whole file), or ``None`` (missing, or outside the folder)."""
        if not rel or not isinstance(rel, str):
            return None
        file, region = split_map_ref(rel)
        path = (run / file).resolve()
        return (path, region) if run in path.parents and path.is_file() else None

    def cluster_files(
        self, group: list[dict[str, Any]], key: str, thumb: Any
    ) -> dict[tuple[int, int | str], str]:
        """Draw the strongest clusters' maps of an image's page: over the image when ``thumb``
        (the page's thumbnail of its preprocessed view) is given, else the grey maps saved
        (each cut from its atlas).
        Returns ``(-2, "layer\\0rank")`` ->
        site path, the keys :meth:`cluster_section` looks up."""
        rec = self.cluster_record(group)
        if rec is None:
            return {}
        from PIL import Image, UnidentifiedImageError

        files: dict[tuple[int, int | str], str] = {}
        run = Path(self.view.run_dir).resolve()
        decoded: dict[Path, Any] = {}  # the image variant's atlas, decoded once for all its maps
        for layer in self._layers_of(rec["clusters"]):
            for row in self._shown(rec["clusters"][layer]):
                src = self._map_path(run, row.get("map"))
                if src is None:
                    continue
                stem = f"maps/c/{key}/{file_key(layer)}-{int(row['rank'])}"
                try:
                    path, region = src
                    if path not in decoded:
                        decoded[path] = load_grey(path)
                    grey = cut_map(decoded[path], region, path)
                    if thumb is not None:
                        rel = stem + ".jpg"
                        save_jpeg(overlay(thumb, grey.astype(np.float32) / 255.0), self.out / rel)
                    else:
                        rel = stem + ".png"
                        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(grey, mode="L").save(self.out / rel, format="PNG")
                except (OSError, UnidentifiedImageError, ValueError) as exc:
                    self.notes.append(f"cluster map {row.get('map')} not drawn: {type(exc).__name__}: {exc}")
                    continue
                files[(-2, f"{layer}\0{int(row['rank'])}")] = rel
                self.heatmaps += 1
        return files

    def cluster_section(
        self, page: Page, group: list[dict[str, Any]], files: dict[tuple[int, int | str], str]
    ) -> str:
        """The clusters' section of an explanation page (empty without clusters)."""
        rec = self.cluster_record(group)
        if rec is None:
            return ""
        method, param = setting_key(rec)
        # the clusters are stated once per image variant, in its classification graph (as the export mints)
        c_iri = self.mint.classification(self.run_iri, rec.get("index"), None)
        top = (rec.get("model_top") or [{}])[0].get("class_id")
        agg = self.cluster_page(str(top)) if top is not None else None
        parts = [
            '<h2 id="clusters">Feature-map clusters</h2>',
            '<p class="note">Per layer, input side first: the strongest clusters of similar feature maps '
            "(rank 1 = largest generalised Grad-CAM weight), each map drawn over the image and labelled "
            f"by its member filters' tags under {esc(setting_text((method, param)))}.</p>",
        ]
        if agg is not None:
            parts.append(f"<p>{page.link(agg, 'Concepts of the clusters of all images predicted as ')}"
                         f"{self.class_link(page, str(top))}</p>")
        for layer in self._layers_of(rec["clusters"]):
            rows = rec["clusters"][layer]
            figs = []
            for row in self._shown(rows):
                rank = int(row["rank"])
                members = [int(f) for f in row.get("filters") or []]
                who = ", ".join(self.filter_link(page, layer, f, str(f)) for f in members[:8])
                if len(members) > 8:
                    who += f" <span class='muted'>… +{len(members) - 8}</span>"
                concepts = ", ".join(
                    f"{self.class_link(page, str(c['class_id']))} {fmt_num(float(c['score']), 2)}"
                    for c in (row.get("concepts") or [])[:3]
                ) or '<span class="muted">no tagged member</span>'
                cap = (f"#{rank} · weight {fmt_num(float(row['weight']))} · {len(members)} filter(s): {who}"
                       f"<br>{concepts}<br>"
                       f"{rdf_link(self.mint.cluster(c_iri, layer, rank), text='RDF', short=True)}")
                figs.append(self.figure(page, files.get((-2, f"{layer}\0{rank}")), cap, width=self.thumb_size,
                                        alt=f"{layer} cluster {rank}"))
            if not figs:
                figs.append('<p class="note">no cluster with a positive weight</p>')
            parts += [
                f"<h3>{page.link(self.layer_page(layer), layer)} "
                f"<span class='muted'>({len(rows)} clusters)</span></h3>",
                '<div class="gallery clusters">' + "".join(figs) + "</div>",
            ]
        return "".join(parts)

    # -- class pages --------------------------------------------------------------------------
    def write_cluster_pages(self) -> None:
        """``clusters/index.html`` and one page per predicted class, when the run has ``clusters.json``."""
        doc = self.cluster_aggregates()
        if not doc:
            return
        self.pages.setdefault("clusters", 0)
        by_class: dict[str, list[dict[str, Any]]] = {}
        for entry in doc.get("classes") or []:
            by_class.setdefault(str(entry["class_id"]), []).append(entry)
        rows = []
        last = self.view.layer_names[-1] if self.view.layer_names else None
        for cid, entries in sorted(by_class.items(), key=lambda kv: self.name(kv[0]).lower()):
            path = self.cluster_page(cid)
            if path is None:
                continue
            self._class_page(cid, entries, doc, path)
            images = max(int(e.get("images") or 0) for e in entries)
            at_last = next((e for e in entries if e["layer"] == last and e.get("concepts")), None)
            page_link = f'<a href="{esc(Path(path).name)}">{esc(self.name(cid))}</a>'
            best = (self.name(str(at_last["concepts"][0]["class_id"])) if at_last else "–")
            rows.append([page_link, str(images), esc(best)])
        page = Page("clusters/index.html", "Global explanations by feature-map clusters",
                    crumbs=[("clusters/index.html", "clusters")])
        page.add(
            '<p class="note">Per class the model predicted: the concepts that label the '
            f"{esc(doc.get('top_clusters', ''))} strongest feature-map clusters of its images, per layer "
            "(made by <code>filtag-kg explain --clusters</code>, <code>clusters.json</code>).</p>",
            table(["predicted class", "images", f"top concept at {last or 'the last layer'}"], rows),
        )
        self.write(page, "clusters")
        self.notes.append(
            f"global explanations by feature-map clusters of {len(rows)} class(es): clusters/index.html"
        )

    def _class_page(self, cid: str, entries: list[dict[str, Any]], doc: dict[str, Any], path: str) -> None:
        page = Page(path, f"Clusters of images predicted as {self.name(cid)}",
                    crumbs=[("clusters/index.html", "clusters")])
        page.add(facts_list([
            ("predicted class", self.class_link(page, cid)),
            ("counted", f"the {esc(doc.get('top_clusters', '?'))} strongest clusters per image and layer"),
        ]))
        settings: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for e in entries:
            s = e.get("setting") or {}
            settings.setdefault((str(s.get("method")), param_text(s.get("param"))), []).append(e)
        order = {name: i for i, name in enumerate(self.view.layer_names)}
        for (method, param), group in sorted(settings.items()):
            page.add(f"<h2>{esc(setting_text((method, param)))}</h2>")
            for e in sorted(group, key=lambda e: (order.get(str(e["layer"]), len(order)), str(e["layer"]))):
                layer, n = str(e["layer"]), int(e.get("images") or 0)
                a_iri = self.mint.cluster_aggregate(self.run_iri, method, param, cid, layer)
                rows = [
                    [
                        str(r),
                        self.class_link(page, str(c["class_id"])),
                        bar_value(int(c["count"]) / n if n else 0.0, f"{int(c['count'])} of {n}"),
                        fmt_num(float(c["weight"])),
                    ]
                    for r, c in enumerate((e.get("concepts") or [])[:CONCEPTS_LISTED], 1)
                ]
                more = len(e.get("concepts") or []) - CONCEPTS_LISTED
                page.add(
                    f"<h3>{page.link(self.layer_page(layer), layer)} "
                    f"<span class='muted'>({n} image(s))</span> {rdf_link(a_iri, short=True)}</h3>",
                    table(["rank", "concept", "images", "weight"], rows, cls="aggregate")
                    if rows else '<p class="note">no labelled cluster</p>',
                    f'<p class="note">… {more} more concepts</p>' if more > 0 else "",
                )
        self.write(page, "clusters")
