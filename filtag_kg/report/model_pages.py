"""Layer and filter pages: tags, tags per filter, concept groups, top images with heatmaps."""

from __future__ import annotations

import math
from pathlib import Path

from . import charts
from .context import SiteContext, facts_list, image_key, progress_bar
from .heatmaps import heat_of, overlay, save_jpeg, thumbnail
from .htmlkit import Page, bar_value, esc, file_key, fmt_num, rdf_link, table
from .runview import setting_text


class LayerFilterPages(SiteContext):
    """Layer pages and filter pages (chosen first, with their top images' heatmaps)."""

    def choose_filters(self, max_filters: int | None, top_images: int | None) -> None:
        """Decide which filters get pages (tagged ones, most tags first when capped)."""
        view = self.view
        capped = 0
        for layer in view.layer_names:
            tagged = view.tagged_filters(layer)
            if max_filters is not None and len(tagged) > max_filters:

                def weight(f: int, layer: str = layer) -> tuple[int, float, int]:
                    tags = view.tags_by_filter[(layer, f)]
                    best = max((t.score for t in tags if math.isfinite(t.score)), default=0.0)
                    return (-len(tags), -best, f)

                capped += len(tagged) - max_filters
                tagged = sorted(sorted(tagged, key=weight)[:max_filters])
            key = file_key(layer)
            for f in tagged:
                self.filter_pages[(layer, f)] = f"filters/{key}/{f}.html"
                if view.profile is not None:
                    tops = view.profile.top_images(layer, f)
                    self.filter_top[(layer, f)] = tops if top_images is None else tops[:top_images]
        if capped:
            self.notes.append(f"{capped} tagged filters have no page (at most {max_filters} per layer)")
        if view.profile is not None and not view.profile.top_image_paths:
            self.notes.append("no top activating images: profile the run with --top-images N to show them")

    def filter_heatmaps(self) -> None:
        """Thumbnails of every filter's top images, with the filter's map over each."""
        jobs: dict[str, dict[int, set[int]]] = {}
        for (layer, f), tops in self.filter_top.items():
            for path, _ in tops:
                jobs.setdefault(path, {}).setdefault(self.layer_index[layer], set()).add(f)
        if not jobs:
            return
        paths = list(jobs)
        step = self.batch_size * 4
        for start in progress_bar(
            range(0, len(paths), step),
            total=(len(paths) + step - 1) // step,
            desc="report: top images",
            enabled=self.progress,
        ):
            part = paths[start : start + step]
            views = [self.image_view(p) for p in part]
            ok = [i for i, v in enumerate(views) if v is not None]
            for i in ok:
                self.thumb_of(part[i], views[i])
            maps = self.compute_maps([views[i] for i in ok], [jobs[part[i]] for i in ok])
            for i, got in zip(ok, maps):
                path = part[i]
                thumb = thumbnail(views[i], self.thumb_size)
                for li, filters in jobs[path].items():
                    lm = got.get(li)
                    if lm is None:
                        continue
                    layer = self.view.layer_names[li]
                    for f in sorted(filters):
                        rel = f"maps/{file_key(layer)}/{f}-{image_key(path)}.jpg"
                        save_jpeg(overlay(thumb, heat_of([lm.get(f)])), self.out / rel)
                        self.filter_maps[(layer, f, path)] = rel
                        self.heatmaps += 1

    def write_filter_pages(self) -> None:
        view = self.view
        by_layer: dict[str, list[int]] = {}
        for layer, f in self.filter_pages:
            by_layer.setdefault(layer, []).append(f)
        items = list(self.filter_pages.items())
        for (layer, f), path in progress_bar(
            items, total=len(items), desc="report: filter pages", enabled=self.progress
        ):
            siblings = by_layer[layer]
            pos = siblings.index(f)
            page = Page(path, f"{layer} · filter {f}", [(self.layer_page(layer), f"layer {layer}")])
            nav = []
            if pos > 0:
                nav.append(
                    page.link(self.filter_page(layer, siblings[pos - 1]), f"← filter {siblings[pos - 1]}")
                )
            if pos + 1 < len(siblings):
                nav.append(
                    page.link(self.filter_page(layer, siblings[pos + 1]), f"filter {siblings[pos + 1]} →")
                )
            ent = view.entropy.get(layer)
            facts = [
                ("layer", page.link(self.layer_page(layer), layer)),
                ("filter", esc(f)),
                ("measured at", esc(self._measured_at(layer))),
            ]
            if ent is not None and f < len(ent):
                facts.append(
                    (
                        "class entropy",
                        f"{fmt_num(ent[f])} bits <span class='note'>(0: one class; "
                        f"{fmt_num(math.log2(max(2, len(view.data.classes))))}: all alike)</span>",
                    )
                )
            said = self.sentences.filters.get((layer, f)) if self.sentences is not None else None
            if said is not None:
                facts.append(("in words", f'<span class="sentence" lang="en">{esc(said.text)}</span>'))
            facts.append(("RDF", rdf_link(self.mint.filter(self.model_iri, layer, f), text="filter")))
            page.add(facts_list(facts), f"<p>{' · '.join(nav)}</p>" if nav else "")
            tops = self.filter_top.get((layer, f), [])
            if tops:
                page.add(
                    "<h2>Top activating images</h2>",
                    '<p class="note">The images of the profiled data that activate this filter most, with '
                    "the filter's activation map over the model's view (scaled to its maximum).</p>",
                )
                figs = []
                for img, value in tops:
                    src = self.filter_maps.get((layer, f, img)) or self.thumbs.get(img)
                    cls = Path(img).parent.name
                    known = self.class_link(page, cls) + " · " if cls in view.labels else ""
                    cap = f"{known}{esc(Path(img).name)}<br>value {fmt_num(value)}"
                    if img in self.bad_images:
                        cap += f"<br>{esc(self.bad_images[img])}"
                    figs.append(
                        self.figure(
                            page,
                            src,
                            cap,
                            width=self.thumb_size,
                            target=self.thumbs.get(img),
                            alt=f"{Path(img).name}, filter {f}",
                        )
                    )
                page.add('<div class="gallery">' + "".join(figs) + "</div>")
            page.add("<h2>Tags</h2>")
            for setting in view.settings:
                tags = self.tags_of.get((setting, layer, f), [])
                if not tags:
                    continue
                rows = [
                    [
                        self.class_link(page, t.class_id, label=t.label or t.class_id),
                        f"<code>{esc(t.class_id)}</code>",
                        fmt_num(t.score),
                        esc(t.rank or "–"),
                        bar_value(t.share, fmt_num(t.share)) if math.isfinite(t.share) else "–",
                        rdf_link(self.mint.tag(self.run_iri, layer, f, t.method, t.param, t.class_id)),
                    ]
                    for t in tags
                ]
                page.add(
                    f"<h3>{esc(setting_text(setting))}: {len(tags)} tag{'s' if len(tags) != 1 else ''}</h3>",
                    table(["class", "id", "score", "rank", "share", "IRI"], rows),
                )
            abstract = view.abstract_by_filter.get((layer, f), [])
            if abstract:
                page.add(
                    "<h2>Abstract tags</h2>",
                    '<p class="note">The most specific WordNet concepts '
                    "that cover at least two of this filter's tags.</p>",
                )
                rows = [
                    [
                        esc(setting_text((a.method, a.param))),
                        page.link(self.concept_page(a.wnid), a.synset),
                        f"{a.cover} of {a.linked_tags}",
                        ", ".join(self.class_link(page, c) for c in a.covered_ids),
                        rdf_link(self.mint.abstract_tag(self.run_iri, layer, f, a.method, a.param, a.wnid)),
                    ]
                    for a in abstract
                ]
                page.add(table(["setting", "concept", "covers", "tags covered", "IRI"], rows))
            prof = view.profile
            if prof is not None:
                try:
                    means = prof.layer(layer).means[:, f]
                except (KeyError, IndexError):
                    means = None
                if means is not None and len(means):
                    order = sorted(range(len(means)), key=lambda c: -float(means[c]))[:10]
                    top = float(means[order[0]]) or 1.0
                    rows = [
                        [
                            self.class_link(page, prof.class_ids[c], label=prof.labels[c]),
                            bar_value(float(means[c]) / top, fmt_num(float(means[c]))),
                        ]
                        for c in order
                    ]
                    page.add(
                        "<h2>Classes that activate it most</h2>",
                        '<p class="note">The class profile: mean min-max scaled value of this filter '
                        "over each class's images.</p>",
                        table(["class", "mean value"], rows),
                    )
            self.write(page, "filter")

    # -- layers --------------------------------------------------------------------------
    def write_layer_pages(self) -> None:
        view = self.view
        for layer in view.layer_names:
            page = Page(self.layer_page(layer), f"layer {layer}")
            width = view.width(layer)
            tagged = view.tagged_filters(layer)
            page.add(
                facts_list(
                    [
                        ("filters", esc(width if width is not None else "unknown")),
                        ("measured at", esc(self._measured_at(layer))),
                        ("tagged filters", f"{len(tagged)} (any setting)"),
                        ("RDF", rdf_link(self.mint.layer(self.model_iri, layer), text="layer")),
                    ]
                )
            )
            n = width if width else (max(tagged) + 1 if tagged else 0)
            rows, counts = [], {}
            for setting in view.settings:
                per = [len(self.tags_of.get((setting, layer, f), [])) for f in range(n)]
                counts[setting_text(setting)] = per
                with_tags = sum(1 for c in per if c)
                n_abs = len(
                    {
                        a.filter
                        for a in view.data.abstract
                        if a.layer == layer and (a.method, a.param) == setting
                    }
                )
                rows.append(
                    [
                        esc(setting_text(setting)),
                        bar_value(with_tags / n if n else 0, f"{with_tags} of {n}"),
                        esc(sum(per)),
                        fmt_num(sum(per) / with_tags if with_tags else float("nan")),
                        esc(max(per, default=0)),
                        esc(n_abs),
                    ]
                )
            page.add(
                "<h2>Tags</h2>",
                table(
                    [
                        "setting",
                        "tagged filters",
                        "tags",
                        "tags per tagged filter",
                        "most tags on a filter",
                        "filters with abstract tags",
                    ],
                    rows,
                ),
            )
            if counts and n:
                rel = f"charts/tags-per-filter-{file_key(layer)}.png"
                charts.tags_per_filter_chart(self.out / rel, layer, counts)
                self.charts += 1
                page.add(f'<img class="chart" src="{page.src(rel)}" alt="tags per filter in {esc(layer)}">')
            self._concept_groups(page, layer)
            page.add("<h2>Tagged filters</h2>")
            if not tagged:
                page.add('<p class="note">No filter of this layer is tagged.</p>')
            else:
                header = ["filter", "entropy (bits)"] + [f"tags: {setting_text(s)}" for s in view.settings]
                header.append("abstract tags")
                ent = view.entropy.get(layer) or []
                trs = []
                for f in tagged:
                    cells = [
                        self.filter_link(page, layer, f, str(f)),
                        fmt_num(ent[f]) if f < len(ent) else "–",
                    ]
                    for setting in view.settings:
                        cells.append(self.tag_links(page, self.tags_of.get((setting, layer, f), [])))
                    abst = view.abstract_by_filter.get((layer, f), [])
                    cells.append(
                        ", ".join(
                            page.link(self.concept_page(a.wnid), a.synset)
                            + (
                                f" <span class='muted'>({esc(setting_text((a.method, a.param)))})</span>"
                                if len(view.settings) > 1
                                else ""
                            )
                            for a in abst[:6]
                        )
                        + (" …" if len(abst) > 6 else "")
                    )
                    trs.append(cells)
                page.add(table(header, trs))
            self.write(page, "layer")

    def _concept_groups(self, page: Page, layer: str) -> None:
        """The layer's tags under WordNet's broad concepts (``hypernym_histogram.tsv``)."""
        view = self.view
        rows = [r for r in view.histogram if r.get("layer") == layer]
        groups: dict[str, tuple[str, str]] = {}  # bucket -> (label, wnid)
        tags: dict[str, dict[str, int]] = {}
        for r in rows:
            s = setting_text((r.get("method", ""), r.get("param", "")))
            try:
                n = int(r.get("tags") or 0)
            except ValueError:
                continue
            b = r.get("bucket", "")
            tags.setdefault(s, {})[b] = n
            if n:
                groups.setdefault(b, ((r.get("lemma") or b).replace("_", " "), r.get("wnid") or ""))
        note = ""
        if not rows:
            groups, tags = self._fallback_groups(layer)
        real = [b for b in groups if groups[b][1]]
        if len(real) == 1 and len(groups) == 1:  # one broad concept holds every tag: look below it
            finer = self._split_below(layer, groups[real[0]][1])
            if finer is not None:
                groups, tags, note = finer
        page.add("<h2>Tags by WordNet concept</h2>")
        if note:
            page.add(
                f'<p class="note">Every tag of this layer falls {esc(note)}: grouped by the concepts '
                "below it.</p>"
            )
        if not groups:
            page.add(
                '<p class="note">No tags of this layer to group (or no WordNet links; run '
                "<code>filtag-kg abstract</code>).</p>"
            )
            return
        keys = list(groups)
        rel = f"charts/concepts-{file_key(layer)}.png"
        charts.concept_groups_chart(
            self.out / rel,
            layer,
            [groups[k][0] for k in keys],
            {s: [v.get(k, 0) for k in keys] for s, v in tags.items()},
            note=note,
        )
        self.charts += 1
        page.add(f'<img class="chart" src="{page.src(rel)}" alt="tags of {esc(layer)} by WordNet concept">')
        trs = [
            [page.link(self.concept_page(groups[k][1] or None), groups[k][0])]
            + [esc(tags[s].get(k, 0)) for s in tags]
            for k in keys
        ]
        page.add(table(["concept"] + [f"tags: {s}" for s in tags], trs))

    def _fallback_groups(self, layer: str) -> tuple[dict[str, tuple[str, str]], dict[str, dict[str, int]]]:
        """Without ``hypernym_histogram.tsv``: the layer's tags under WordNet's broad categories
        (those ``filtag-kg abstract`` uses by default)."""
        from ..wordnet import DEFAULT_ROOTS

        roots = [c for c in self.concepts.concepts.values() if c.name in DEFAULT_ROOTS]
        under = {r.name: set(r.classes_below) for r in roots}
        groups: dict[str, tuple[str, str]] = {}
        tags: dict[str, dict[str, int]] = {}
        other = "(other or unlinked)"
        for setting in self.view.settings:
            counts: dict[str, int] = {}
            for t in self.layer_tags.get((setting, layer), []):
                hits = [r for r in roots if t.class_id in under[r.name]] or [None]
                for r in hits:
                    name = r.name if r is not None else other
                    counts[name] = counts.get(name, 0) + 1
                    groups.setdefault(name, (r.label, r.wnid or "") if r is not None else (other, ""))
            tags[setting_text(setting)] = counts
        return groups, tags

    def _split_below(
        self, layer: str, wnid: str
    ) -> tuple[dict[str, tuple[str, str]], dict[str, dict[str, int]], str] | None:
        """The layer's tags under the narrower concepts of ``wnid``, from the first level
        down at which they fall under two or more (``None`` when they never split)."""
        index = self.concepts
        if wnid not in index.concepts:
            return None
        classes = {t.class_id for s in self.view.settings for t in self.layer_tags.get((s, layer), [])}
        key = wnid
        while True:
            kids = [k for k in index.concepts[key].children if classes & set(index.concepts[k].classes_below)]
            if len(kids) != 1:
                break
            key = kids[0]
        if len(kids) < 2:
            return None
        under = {k: set(index.concepts[k].classes_below) for k in kids}
        groups = {k: (index.concepts[k].label, k) for k in kids}
        tags: dict[str, dict[str, int]] = {}
        for setting in self.view.settings:
            counts: dict[str, int] = {}
            for t in self.layer_tags.get((setting, layer), []):
                for k in kids:
                    if t.class_id in under[k]:
                        counts[k] = counts.get(k, 0) + 1
            tags[setting_text(setting)] = counts
        return groups, tags, f"under {index.concepts[key].label}"
