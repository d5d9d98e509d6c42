"""Explanation pages: per image, predictions, votes and layer-wise heatmaps of tagged filters."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..evaluation import explains_model
from ..sentences import setting_key
from ..tagging import Tag
from . import charts
from .cluster_pages import ClusterPages
from .context import facts_list, pct
from .heatmaps import heat_of, overlay, save_jpeg, thumbnail
from .htmlkit import Page, bar_value, esc, file_key, fmt_num, rdf_link, table
from .runview import setting_text
from .sentence_view import phrase_voters, sentence_html

# the index at the start of a line as ``explain`` writes it: ``{"index": 12, ...`` (lines are
# read as bytes, so that a line cut inside a character is named as damage)
_INDEX = re.compile(rb'\{"index": ?(-?\d+|"(?:[^"\\]|\\.)*")[,}]')


class ExplanationPages(ClusterPages):
    """Explanation pages (``explanations/``): images chosen in a first pass, written in a second."""

    def _groups(self) -> Iterator[tuple[Any, list[Any]]]:
        """The run's explanations grouped by image (consecutive rows with one index).

        Rows come undecoded, as functions that decode their row, so rows of images without a
        page are never decoded (from ``explanations.jsonl``, the index is read off the start
        of each line).
        """
        path = self.view.data.explanations_path
        if path is None:
            return
        key: Any = None
        rows: list[Any] = []
        for idx, row in self._indexed_rows(Path(path)):
            if rows and idx != key:
                yield key, rows
                rows = []
            key = idx
            rows.append(row)
        if rows:
            yield key, rows

    @staticmethod
    def _indexed_rows(path: Path) -> Iterator[tuple[Any, Any]]:
        """``(index, decode)`` per row; ``decode()`` gives its record (a damaged row or line:
        a one-line error naming it)."""
        from ..explanations_io import iter_parquet_rows, jsonl_record

        if path.is_dir():
            yield from iter_parquet_rows(path)
            return
        with open(path, "rb") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                m = _INDEX.match(line)
                decode = functools.partial(jsonl_record, path, n, line)
                yield (json.loads(m.group(1)) if m else decode().get("index")), decode

    @staticmethod
    def _parse(rows: list[Any]) -> list[dict[str, Any]]:
        return [decode() for decode in rows]

    @staticmethod
    def _primary(group: list[dict[str, Any]]) -> dict[str, Any]:
        clean = [r for r in group if not r.get("perturbation")]
        return next((r for r in clean if not r.get("weighting")), clean[0] if clean else group[0])

    def _maps_record(self, group: list[dict[str, Any]]) -> dict[str, Any]:
        """The clean record whose active filters carry the most tags: the heatmaps show its filters."""
        clean = [r for r in group if not r.get("perturbation")] or group
        counts = [sum(len(self._active_tagged(r, layer)) for layer in self.layer_index) for r in clean]
        return clean[counts.index(max(counts))]

    @staticmethod
    def _misexplained(group: list[dict[str, Any]]) -> bool:
        return any(not explains_model(r) for r in group if not r.get("perturbation"))

    def choose_explanations(self, max_images: int, max_misexplained: int) -> None:
        """Pass 1: which images get a page: the first ``max_images``, then up to
        ``max_misexplained`` whose explanation differs from the model's top-1.

        Only the lines of candidates for the second quota are decoded, and the pass ends
        when both quotas are full (when ``explanations.json`` gives the image count).
        """
        if self.view.data.explanations_path is None:
            return
        meta = self.view.data.explanations_meta or {}
        total = meta.get("images") if isinstance(meta.get("images"), int) else None
        extra = 0
        seen = 0
        for idx, lines in self._groups():
            seen += 1
            if idx in self.chosen:
                continue
            if len(self.chosen) < max_images:
                self.chosen[idx] = self._page_of(idx)
            elif extra < max_misexplained:
                if self._misexplained(self._parse(lines)):
                    self.chosen[idx] = self._page_of(idx)
                    extra += 1
            elif total is not None:
                break  # both quotas full: the rest needs no reading
        self.explained_images = total if total is not None else seen
        left = self.explained_images - len(self.chosen)
        if left > 0:
            self.notes.append(
                f"{left} of {self.explained_images} explained images have no page (pages: the first "
                f"{max_images}, then up to {max_misexplained} whose explanation differs from the model)"
            )

    @staticmethod
    def _page_of(idx: Any) -> str:
        key = str(idx) if isinstance(idx, int) else file_key(str(idx))
        return f"explanations/{key}.html"

    def write_explanation_pages(self, per_layer: int) -> None:
        """Pass 2: stream the lines again; decode and write the chosen images' pages in batches."""
        if self.view.data.explanations_path is None:
            self._explanation_index()
            return
        batch: list[list[dict[str, Any]]] = []
        done: set[Any] = set()
        self.chosen_order = sorted(self.chosen, key=lambda i: (str(type(i)), i))
        from .._progress import progress

        with progress(total=len(self.chosen), desc="report: explanation pages", unit="page",
                      enabled=self.progress) as pbar:
            for idx, lines in self._groups():
                if len(done) == len(self.chosen):
                    break
                if idx not in self.chosen or idx in done:
                    continue
                done.add(idx)
                batch.append(self._parse(lines))
                if len(batch) >= self.batch_size:
                    self._explanation_batch(batch, per_layer)
                    pbar.update(len(batch))
                    batch = []
            if batch:
                self._explanation_batch(batch, per_layer)
                pbar.update(len(batch))
        self._explanation_index()

    def _active_tagged(self, rec: dict[str, Any], layer: str) -> list[tuple[int, float, list[Tag]]]:
        setting = setting_key(rec)
        out = []
        for row in (rec.get("active_filters") or {}).get(layer, []):
            f = int(row["filter"])
            tags = self.tags_of.get((setting, layer, f), [])
            if tags:
                out.append((f, float(row.get("value", math.nan)), tags))
        return out

    def _explanation_batch(self, groups: list[list[dict[str, Any]]], per_layer: int) -> None:
        paths = [str(g[0].get("image")) for g in groups]
        views = [self.image_view(p) for p in paths]
        plans: list[dict[int, tuple[list[int], list[int], str | None]]] = []
        phrase_plans: list[dict[int, tuple[int, list[int], list[float]]]] = []
        wanted: list[dict[int, set[int]]] = []
        for g in groups:
            rec = self._maps_record(g)
            pred = rec.get("prediction")
            plan: dict[int, tuple[list[int], list[int], str | None]] = {}
            want: dict[int, set[int]] = {}
            for layer, li in self.layer_index.items():
                act = self._active_tagged(rec, layer)
                if not act:
                    continue
                top = [f for f, _, _ in act[:per_layer]]
                voters = [f for f, _, tags in act if any(t.class_id == pred for t in tags)]
                plan[li] = (top, voters, pred)
                want[li] = set(top) | set(voters)
            phrases: dict[int, tuple[int, list[int], list[float]]] = {}
            if self.sentences is not None:  # the filters behind each concept the sentence names
                prim = self._primary(g)
                for n, p in enumerate(self.sentences.image(prim).phrases):
                    got_v = phrase_voters(self.sentences.ctx, prim, p, self.view.layer_names)
                    if got_v is not None:
                        phrases[n] = got_v
                        want.setdefault(got_v[0], set()).update(got_v[1])
            phrase_plans.append(phrases)
            plans.append(plan)
            wanted.append(want)
        ok = [i for i, v in enumerate(views) if v is not None]
        maps = self.compute_maps([views[i] for i in ok], [wanted[i] for i in ok]) if per_layer else []
        got: dict[int, dict[int, Any]] = dict(zip(ok, maps))
        for i, g in enumerate(groups):
            idx = g[0].get("index")
            key = file_key(str(idx)) if not isinstance(idx, int) else str(idx)
            files: dict[tuple[int, int | str], str] = {}
            thumb = None
            if views[i] is not None:
                self.thumb_of(paths[i], views[i])
                thumb = thumbnail(views[i], self.thumb_size)
                for li, (top, voters, _) in plans[i].items():
                    lm = got.get(i, {}).get(li)
                    if lm is None:
                        continue
                    if voters and not (len(voters) == 1 and voters[0] in top):  # else the same map twice
                        rel = f"maps/x/{key}/{li}-votes.jpg"
                        save_jpeg(overlay(thumb, heat_of([lm.get(f) for f in voters])), self.out / rel)
                        files[(li, "votes")] = rel
                        self.heatmaps += 1
                    for f in top:
                        rel = f"maps/x/{key}/{li}-{f}.jpg"
                        save_jpeg(overlay(thumb, heat_of([lm.get(f)])), self.out / rel)
                        files[(li, f)] = rel
                        self.heatmaps += 1
                for n, (li, fs, ws) in phrase_plans[i].items():
                    lm = got.get(i, {}).get(li)
                    if lm is not None:  # weighted by each filter's vote weight (gradcam), else a mean
                        rel = f"maps/x/{key}/{li}-phrase{n}.jpg"
                        heat = heat_of([lm.get(f) * w for f, w in zip(fs, ws)])
                        save_jpeg(overlay(thumb, heat), self.out / rel)
                        files[(-1, f"phrase{n}")] = rel
                        self.heatmaps += 1
            files.update(self.cluster_files(g, key, thumb))
            self._explanation_page(g, self.chosen[idx], files, plans[i])

    def _explanation_page(
        self,
        group: list[dict[str, Any]],
        path: str,
        files: dict[tuple[int, int | str], str],
        plan: dict[int, tuple[list[int], list[int], str | None]],
    ) -> None:
        view = self.view
        first = group[0]
        img = str(first.get("image"))
        idx = first.get("index")
        page = Page(path, f"image {idx}: {Path(img).name}", [("explanations/index.html", "explanations")])
        pos = self.chosen_order.index(idx)
        nav = []
        if pos > 0:
            nav.append(page.link(self.chosen[self.chosen_order[pos - 1]], "← previous image"))
        if pos + 1 < len(self.chosen_order):
            nav.append(page.link(self.chosen[self.chosen_order[pos + 1]], "next image →"))
        rec0 = self._primary(group)
        top = rec0.get("model_top") or []
        model1 = top[0].get("class_id") if top else None
        true = first.get("true_class")
        facts = [("file", f"<code>{esc(img)}</code>")]
        if img in self.bad_images:
            facts.append(("image", f"unreadable here: {esc(self.bad_images[img])}"))
        facts.append(("true class", self.class_link(page, true) if true is not None else "unknown"))
        if first.get("sha256"):
            facts.append(("RDF", rdf_link(self.mint.image(str(first["sha256"])), text="image")))
        thumb = self.thumbs.get(img)
        left = self.figure(page, thumb, "the model's view", alt=Path(img).name)
        preds = table(
            ["rank", "class", "probability"],
            [
                [
                    esc(r),
                    self.class_link(
                        page, str(p.get("class_id")), label=str(p.get("label", p.get("class_id")))
                    ),
                    bar_value(float(p.get("prob") or 0), pct(p.get("prob"))),
                ]
                for r, p in enumerate(top, 1)
            ],
            caption="the model's top predictions",
        )
        if nav:
            page.add(f"<p>{' · '.join(nav)}</p>")
        page.add(f'<div class="gallery">{left}<div class="wide">{facts_list(facts)}{preds}</div></div>')
        if self.sentences is not None:
            sentence = self.sentences.image(rec0)
            maps = {n: files[(-1, f"phrase{n}")] for n in range(len(sentence.phrases))
                    if (-1, f"phrase{n}") in files}
            figs = [self.figure(page, rel, f"filters voting for {esc(sentence.phrases[n].head)}",
                                width=self.thumb_size, alt=f"heatmap: {sentence.phrases[n].head}")
                    for n, rel in maps.items()]
            page.add("<h2>In words</h2>", sentence_html(page, sentence, maps),
                     '<div class="gallery">' + "".join(figs) + "</div>" if figs else "")

        panels = []
        for rec in group[:6]:
            votes = rec.get("votes") or {}
            order = sorted(votes, key=lambda c: -float(votes[c]))[:10]
            hot = {self.name(c) for c in (rec.get("prediction"), model1) if c}
            panels.append((self._record_title(rec), [(self.name(c), float(votes[c])) for c in order], hot))
        chart_rel = f"charts/votes-{Path(path).stem}.png"
        charts.votes_chart(self.out / chart_rel, panels)
        self.charts += 1
        page.add(
            "<h2>Votes</h2>",
            f'<img class="chart" src="{page.src(chart_rel)}" alt="votes per class">',
            "<p class=\"note\">Red: the explanation's prediction and the model's top-1.</p>",
        )
        if plan:
            rec_maps = self._maps_record(group)
            page.add(
                "<h2>Where the tagged filters look</h2>",
                f'<p class="note">Per layer, for {esc(self._record_title(rec_maps))}: the activation of the '
                "active filters that voted for the explanation's prediction (their mean, scaled to its "
                "maximum), then the most active tagged filters one by one.</p>",
            )
            for li, (topf, voters, pred) in plan.items():
                layer = view.layer_names[li]
                figs = []
                if (li, "votes") in files:
                    figs.append(
                        self.figure(
                            page,
                            files[(li, "votes")],
                            f"{len(voters)} filter(s) voting {self.class_link(page, str(pred))}",
                            width=self.thumb_size,
                            alt=f"{layer} votes",
                        )
                    )
                act = {f: (v, tags) for f, v, tags in self._active_tagged(rec_maps, layer)}
                for f in topf:
                    if (li, f) not in files:
                        continue
                    v, tags = act.get(f, (math.nan, []))
                    cap = (
                        self.filter_link(page, layer, f)
                        + f" · value {fmt_num(v)}<br>"
                        + ", ".join(self.class_link(page, t.class_id, label=t.label) for t in tags[:4])
                    )
                    figs.append(
                        self.figure(
                            page,
                            files[(li, f)],
                            cap,
                            width=self.thumb_size,
                            target=self.filter_page(layer, f),
                            alt=f"{layer} filter {f}",
                        )
                    )
                if figs:
                    page.add(
                        f"<h3>{page.link(self.layer_page(layer), layer)}</h3>",
                        '<div class="gallery">' + "".join(figs) + "</div>",
                    )
        page.add(self.cluster_section(page, group, files))
        page.add("<h2>Each explanation</h2>")
        for rec in group:
            pred, last = rec.get("prediction"), rec.get("prediction_last_layer")
            rtop = (rec.get("model_top") or [{}])[0].get("class_id")
            agree = (
                '<span class="ok">agrees with the model</span>'
                if pred == rtop
                else f'<span class="bad">differs from the model\'s top-1 ({esc(self.name(str(rtop)))})</span>'
            )
            iri = self.mint.explanation(
                self.run_iri,
                idx,
                *setting_key(rec),
                rec.get("perturbation") or None,
                rec.get("weighting") or None,
            )
            votes = rec.get("votes") or {}
            order = sorted(votes, key=lambda c: -float(votes[c]))
            vote_text = ", ".join(
                f"{self.class_link(page, c)} {fmt_num(float(votes[c]))}" for c in order[:12]
            )
            page.add(
                f"<h3>{esc(self._record_title(rec))}</h3>",
                facts_list(
                    [
                        (
                            "prediction",
                            (self.class_link(page, pred) if pred else "none (no votes)") + f" · {agree}",
                        ),
                        ("last layer alone", self.class_link(page, last) if last else "none"),
                        ("votes", vote_text or "none"),
                        ("RDF", rdf_link(iri, text="explanation")),
                    ]
                ),
            )
            rows = []
            for layer in view.layer_names:
                act = (rec.get("active_filters") or {}).get(layer, [])
                setting = setting_key(rec)
                cells = []
                for row in act[:12]:
                    f = int(row["filter"])
                    tags = self.tags_of.get((setting, layer, f), [])
                    label = ", ".join(esc(self.name(t.class_id)) for t in tags[:4]) + (
                        " …" if len(tags) > 4 else ""
                    )
                    cells.append(
                        self.filter_link(page, layer, f, str(f))
                        + (f" <span class='muted'>({label})</span>" if tags else "")
                    )
                more = f" <span class='muted'>… {len(act) - 12} more</span>" if len(act) > 12 else ""
                rows.append(
                    [page.link(self.layer_page(layer), layer), esc(len(act)), ", ".join(cells) + more]
                )
            page.add(table(["layer", "active", "active filters (their tags)"], rows))
        self.summaries.append(
            {
                "index": idx,
                "path": path,
                "image": img,
                "true": true,
                "model": model1,
                "prob": top[0].get("prob") if top else None,
                "prediction": rec0.get("prediction"),
                "setting": self._record_title(rec0),
                "thumb": thumb,
            }
        )
        self.write(page, "explanation")

    @staticmethod
    def _record_title(rec: dict[str, Any]) -> str:
        s = setting_text(setting_key(rec))
        p = rec.get("perturbation")
        if p:
            s += f", {p.get('kind')}:{p.get('param')}"
        if rec.get("weighting"):
            s += f", {rec['weighting']}"
        return s

    def _explanation_index(self) -> None:
        view = self.view
        page = Page("explanations/index.html", "Explanations")
        if view.data.explanations_path is None:
            page.add(
                '<p class="note">This run has no explanations; create them with <code>filtag-kg explain '
                "RUN_DIR --data DIR</code> (or <code>filtag-kg run … --explain-data DIR</code>).</p>"
            )
            self.write(page, "list")
            return
        page.add(
            f"<p>{self.explained_images} images explained; {len(self.summaries)} have a page: the first "
            "ones, then ones whose explanation differs from the model's top-1 (✗: in the setting "
            "shown; see the overview's evaluation for all images).</p>",
            rdf_link(self.mint.explanation_run(self.run_iri), text="explanations"),
        )
        rows = []
        for s in sorted(self.summaries, key=lambda s: (str(type(s["index"])), s["index"])):
            mark = (
                '<span class="ok">✓</span>' if s["prediction"] == s["model"] else '<span class="bad">✗</span>'
            )
            img = f'<img src="{page.src(s["thumb"])}" width="48" alt="" loading="lazy">' if s["thumb"] else ""
            rows.append(
                [
                    page.link(s["path"], s["index"]),
                    img,
                    esc(Path(s["image"]).name),
                    self.class_link(page, s["true"]) if s["true"] is not None else "–",
                    (self.class_link(page, s["model"]) + f" {pct(s['prob'])}") if s["model"] else "–",
                    (self.class_link(page, s["prediction"]) if s["prediction"] else "none") + f" {mark}",
                ]
            )
        setting = self.summaries[0]["setting"] if self.summaries else ""
        page.add(table(["#", "image", "file", "true class", "model", f"explanation ({setting})"], rows))
        self.write(page, "list")
