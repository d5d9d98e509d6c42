"""Concept pages: per class and WordNet hypernym, the filters representing it across layers."""

from __future__ import annotations

from ..rdf.rundata import AbstractRow
from .context import LIST_CAP, SiteContext, facts_list, progress_bar
from .htmlkit import Page, bar_value, esc, rdf_link, table
from .runview import setting_text


class ConceptPages(SiteContext):
    """Concept pages and the concept tree (``concepts/``)."""

    def write_concept_pages(self) -> None:
        """One page per concept, then the concept tree (``concepts/index.html``)."""
        view, index = self.view, self.concepts
        layers = view.layer_names
        items = list(index.concepts.values())
        abstract_of: dict[str, list[AbstractRow]] = {}
        for a in view.data.abstract:
            abstract_of.setdefault(a.wnid, []).append(a)
        for c in progress_bar(items, total=len(items), desc="report: concept pages", enabled=self.progress):
            title = f"{c.label} ({c.name})" if c.wnid else c.label
            page = Page(f"concepts/{c.key}.html", title, [("concepts/index.html", "concepts")])
            facts = [("name", f"<code>{esc(c.name)}</code>")]
            if c.wnid:
                facts.append(("wnid", f"<code>{esc(c.wnid)}</code>"))
            if c.definition:
                facts.append(("definition", esc(c.definition)))
            if c.depth is not None:
                facts.append(("depth", f"{c.depth} <span class='note'>(entity = 0)</span>"))
            if c.class_ids:
                facts.append(
                    (
                        "class of the run",
                        ", ".join(f"{esc(self.name(cid))} <code>{esc(cid)}</code>" for cid in c.class_ids),
                    )
                )
            clustered = [(cid, self.cluster_page(cid)) for cid in c.class_ids]
            if any(p for _, p in clustered):
                facts.append(("its images' clusters", ", ".join(
                    page.link(p, f"concepts of the clusters of images predicted as {self.name(cid)}")
                    for cid, p in clustered if p)))
            said = [self.sentences.classes[cid] for cid in c.class_ids
                    if self.sentences is not None and cid in self.sentences.classes]
            if said:
                facts.append(("its images", "<br>".join(
                    f'<span class="sentence" lang="en">{esc(s.text)}</span>' for s in said)))
            if c.parents:
                facts.append(
                    (
                        "broader",
                        ", ".join(
                            page.link(self.concept_page(p), index.concepts[p].label) for p in c.parents
                        ),
                    )
                )
            if c.children:
                facts.append(
                    (
                        "narrower",
                        ", ".join(
                            page.link(self.concept_page(k), index.concepts[k].label) for k in c.children
                        ),
                    )
                )
            path = self._path_to_root(c.key)
            if len(path) > 1:
                facts.append(
                    (
                        "path",
                        " › ".join(page.link(self.concept_page(k), index.concepts[k].label) for k in path),
                    )
                )
            facts.append(("RDF", rdf_link(self.concept_iri(c.key), text="concept")))
            page.add(facts_list(facts))
            if len(c.classes_below) > 1 or (c.classes_below and not c.class_ids):
                page.add(
                    f"<h2>Classes under it ({len(c.classes_below)})</h2>",
                    "<p>"
                    + ", ".join(self.class_link(page, cid) for cid in c.classes_below[:200])
                    + (" …" if len(c.classes_below) > 200 else "")
                    + "</p>",
                )
            page.add(
                "<h2>Filters that represent it</h2>",
                '<p class="note">Filters tagged with this concept or one of its hyponyms, per layer; '
                "in brackets the number of such tags on the filter.</p>",
            )
            any_rows = False
            for setting in view.settings:
                rows = []
                for layer in layers:
                    got = index.filters_of(c.key, setting, layer)
                    if not got:
                        continue
                    width = view.width(layer) or 0
                    shown = ", ".join(
                        self.filter_link(page, layer, f, str(f)) + (f"&nbsp;({n})" if n > 1 else "")
                        for f, n in got[:LIST_CAP]
                    ) + (
                        f" <span class='muted'>… {len(got) - LIST_CAP} more</span>"
                        if len(got) > LIST_CAP
                        else ""
                    )
                    rows.append(
                        [
                            page.link(self.layer_page(layer), layer),
                            bar_value(len(got) / width if width else 0, str(len(got))),
                            shown,
                        ]
                    )
                if rows:
                    any_rows = True
                    page.add(
                        f"<h3>{esc(setting_text(setting))}</h3>", table(["layer", "filters", "filter"], rows)
                    )
            if not any_rows:
                page.add('<p class="note">No filter carries a tag of this concept or its hyponyms.</p>')
            if c.wnid:
                abst = abstract_of.get(c.wnid, [])
                if abst:
                    rows = [
                        [
                            esc(setting_text((a.method, a.param))),
                            page.link(self.layer_page(a.layer), a.layer),
                            self.filter_link(page, a.layer, a.filter, str(a.filter)),
                            f"{a.cover} of {a.linked_tags}",
                            ", ".join(self.class_link(page, x) for x in a.covered_ids),
                        ]
                        for a in abst[:500]
                    ]
                    page.add(
                        "<h2>Abstract tag of</h2>",
                        '<p class="note">Filters whose tags this concept '
                        "covers as their most specific common hypernym.</p>",
                        table(["setting", "layer", "filter", "covers", "tags covered"], rows),
                    )
            self.write(page, "concept")
        self._concept_index()

    def _path_to_root(self, key: str) -> list[str]:
        """One hypernym path, root first (following the first broader concept at each step)."""
        path, seen = [key], {key}
        while True:
            parents = self.concepts.concepts[path[-1]].parents
            nxt = next((p for p in parents if p not in seen), None)
            if nxt is None:
                return list(reversed(path))
            path.append(nxt)
            seen.add(nxt)

    def _concept_index(self) -> None:
        view, index = self.view, self.concepts
        page = Page("concepts/index.html", "Concepts")
        page.add(
            '<p class="note">The run\'s classes and their WordNet hypernyms, as a tree (a concept '
            "with several hypernyms appears under the first). Filters count tags of the concept or of "
            "a hyponym, over all layers.</p>"
        )
        header = ["concept", "wnid", "classes under it"] + [
            f"filters: {setting_text(s)}" for s in view.settings
        ]
        rows: list[list[str]] = []
        seen: set[str] = set()
        roots = [c.key for c in index.concepts.values() if not c.parents]

        def visit(key: str, depth: int) -> None:
            stack = [(key, depth)]
            while stack:
                k, d = stack.pop()
                if k in seen:
                    continue
                seen.add(k)
                c = index.concepts[k]
                counts = [esc(index.filter_count(k, s)) for s in view.settings]
                name = page.link(self.concept_page(k), c.label)
                if c.class_ids:
                    name = f"<strong>{name}</strong>"
                rows.append(
                    [
                        f'<span style="padding-left:{1.1 * d:.1f}em">{name}</span>',
                        f"<code>{esc(c.wnid or '')}</code>",
                        esc(len(c.classes_below)),
                        *counts,
                    ]
                )
                kids = sorted(c.children, key=lambda x: index.concepts[x].name, reverse=True)
                stack.extend((kid, d + 1) for kid in kids)

        for r in sorted(roots, key=lambda x: index.concepts[x].name):
            visit(r, 0)
        page.add(table(header, rows), '<p class="note">Bold: a class of the run.</p>')
        self.write(page, "list")
