"""The overview page: model, layers, dataset, run settings, skipped files and evaluation."""

from __future__ import annotations

import json
from typing import Any

from . import charts
from .context import SiteContext, facts_list, pct
from .htmlkit import Page, esc, fmt_num, rdf_link, table
from .runview import setting_text


class OverviewPage(SiteContext):
    """The overview page (``index.html``)."""

    def write_overview(self) -> None:
        view, data = self.view, self.view.data
        meta = view.profile_meta or {}
        page = Page("index.html", f"Run report: {data.spec}")
        m = data.model
        facts = [
            ("model", f"<code>{esc(data.spec)}</code>"),
            ("architecture", esc(m.get("architecture") or "–")),
            ("weights", esc(m.get("weights") or m.get("weights_file") or "as built")),
            ("weights SHA-256", f"<code>{esc(m.get('weights_sha256') or '–')}</code>"),
            ("model classes", esc(m.get("num_classes") or len(data.model_classes) or "–")),
            ("run folder", f"<code>{esc(view.run_dir)}</code>"),
            ("RDF", rdf_link(self.model_iri, text="model") + "<br>" + rdf_link(self.run_iri, text="run")),
        ]
        page.add("<h2>Model</h2>", facts_list(facts))
        if self.notes:
            page.add("<h2>Notes</h2>", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in self.notes) + "</ul>")

        page.add('<h2 id="layers">Layers</h2>')
        layers = view.layer_names
        share: dict[str, list[float]] = {}
        trs = []
        for layer in layers:
            width = view.width(layer)
            cells = [
                page.link(self.layer_page(layer), layer),
                esc(width or "–"),
                esc(self._measured_at(layer)),
            ]
            for setting in view.settings:
                layer_tags = self.layer_tags.get((setting, layer), [])
                n, tags = len({t.filter for t in layer_tags}), len(layer_tags)
                cells.append(f"{n} filters, {tags} tags")
                share.setdefault(setting_text(setting), []).append(n / width if width else 0.0)
            cells.append(rdf_link(self.mint.layer(self.model_iri, layer)))
            trs.append(cells)
        page.add(
            table(
                ["layer", "filters", "measured at"]
                + [f"tagged: {setting_text(s)}" for s in view.settings]
                + ["IRI"],
                trs,
            )
        )
        if layers and share:
            rel = "charts/layers.png"
            charts.layer_overview_chart(self.out / rel, layers, list(share), share)
            self.charts += 1
            page.add(f'<img class="chart" src="{page.src(rel)}" alt="tagged filters per layer">')

        ds = data.dataset or {}
        page.add("<h2>Dataset</h2>")
        if ds:
            dfacts = [
                ("root", f"<code>{esc(ds.get('root', '–'))}</code>"),
                ("source", esc(ds.get("source", "–"))),
                ("images", esc(ds.get("images", "–"))),
                ("images used", esc(ds.get("images_used", "–"))),
                ("skipped files", esc(ds.get("skipped_count", 0))),
            ]
            if ds.get("fingerprint"):
                dfacts.append(("RDF", rdf_link(self.mint.dataset(str(ds["fingerprint"])), text="dataset")))
            page.add(facts_list(dfacts))
        classes = data.classes
        rows = [
            [
                self.class_link(page, c.id, label=c.label),
                f"<code>{esc(c.id)}</code>",
                esc(c.images if c.images is not None else "–"),
            ]
            for c in classes
        ]
        page.add(
            f"<details><summary>{len(classes)} classes</summary>"
            + table(["class", "id", "images"], rows)
            + "</details>"
        )
        skipped = list(ds.get("skipped") or [])
        ex_ds = (data.explanations_meta or {}).get("dataset") or {}
        skipped += [dict(s, where="explained") for s in ex_ds.get("skipped") or [] if isinstance(s, dict)]
        if skipped:
            rows = [
                [
                    f"<code>{esc(s.get('path', ''))}</code>",
                    esc(s.get("reason", "")),
                    esc(s.get("where", "profiled")),
                ]
                for s in skipped[:200]
                if isinstance(s, dict)
            ]
            page.add(
                f"<h3>Skipped files ({len(skipped)})</h3>",
                table(["file", "reason", "pass"], rows)
                + (
                    f'<p class="note">… {len(skipped) - 200} more in profile.json / explanations.json</p>'
                    if len(skipped) > 200
                    else ""
                ),
            )
        else:
            page.add('<p class="note">No file was skipped.</p>')

        page.add("<h2>Run settings</h2>")
        sfacts = [("tagging", ", ".join(esc(setting_text(s)) for s in view.settings) or "–")]
        if meta:
            opts = meta.get("options") or {}
            sfacts += [
                ("profile options", esc(", ".join(f"{k}={v}" for k, v in opts.items()))),
                (
                    "preprocessing",
                    esc(", ".join(f"{k}={v}" for k, v in (meta.get("preprocess") or {}).items())),
                ),
                ("software", esc(", ".join(f"{k} {v}" for k, v in (meta.get("software") or {}).items()))),
                (
                    "started / finished",
                    esc(f"{meta.get('started_at', '–')} / {meta.get('finished_at', '–')}"),
                ),
                (
                    "profile pass",
                    esc(f"{meta.get('seconds', '–')} s, {meta.get('images_per_second', '–')} images/s"),
                ),
            ]
        if data.import_info:
            sfacts.append(("imported from", esc(json.dumps(data.import_info, ensure_ascii=False)[:400])))
        ex = data.explanations_meta
        if ex:
            settings = ", ".join(
                setting_text((str(x.get("method")), _param_text(x.get("param"))))
                for x in ex.get("settings") or []
            )
            root = (ex.get("dataset") or {}).get("root", "–")
            text = f"{ex.get('images', '–')} images of {root}; {settings}"
            if ex.get("perturbations"):
                text += "; perturbations " + ", ".join(
                    f"{p.get('kind')}:{p.get('param')}" for p in ex["perturbations"] if isinstance(p, dict)
                )
            if ex.get("weighting"):
                text += f"; weighting {ex['weighting']}"
            sfacts.append(("explanations", esc(text)))
        page.add(facts_list(sfacts))

        page.add("<h2>Evaluation</h2>")
        ev = view.evaluation
        if ev and ev.get("groups"):
            rows = []
            for g in ev["groups"]:
                setting = setting_text((str(g.get("method")), str(g.get("param") or "")))
                for scope, label in (("all_layers", "all"), ("last_layer", "last")):
                    s = g.get(scope) or {}
                    counts = s.get("counts") or {}
                    rows.append(
                        [
                            esc(setting),
                            esc(g.get("perturbation", "none")),
                            esc(g.get("weighting", "none")),
                            esc(label),
                            esc(g.get("images", "–")),
                            f"{pct(s.get('fidelity'))} "
                            f"<span class='muted'>({esc(counts.get('fidelity', '–'))})</span>",
                            pct(s.get("model_top1_in_top3")),
                            pct(s.get("model_top1_in_top5")),
                            pct(s.get("explanation_accuracy")),
                            pct(g.get("model_accuracy")),
                        ]
                    )
            page.add(
                "<p class=\"note\">Fidelity: the explanation's prediction equals the model's top-1; "
                "top-3/top-5: the model's top-1 is among the explanation's most voted classes.</p>",
                table(
                    [
                        "setting",
                        "perturbation",
                        "weighting",
                        "layers",
                        "images",
                        "fidelity",
                        "top-3",
                        "top-5",
                        "explanation accuracy",
                        "model accuracy",
                    ],
                    rows,
                ),
            )
            pert = ev.get("perturbations") or []
            if pert:
                rows = [
                    [
                        esc(setting_text((str(p.get("method")), str(p.get("param") or "")))),
                        esc(p.get("perturbation")),
                        f"{pct(p.get('model_flip_rate'))}",
                        f"{pct(p.get('explanation_flip_rate'))}",
                        ", ".join(
                            self.class_link(page, c["class_id"]) + f" +{fmt_num(c['votes'])}"
                            for c in p.get("concepts_gaining") or []
                        ),
                        ", ".join(
                            self.class_link(page, c["class_id"]) + f" −{fmt_num(c['votes'])}"
                            for c in p.get("concepts_losing") or []
                        ),
                    ]
                    for p in pert
                ]
                page.add(
                    "<h3>Perturbations</h3>",
                    table(
                        ["setting", "perturbation", "model flips", "explanation flips", "gaining", "losing"],
                        rows,
                    ),
                )
        elif data.explanations_path is not None:
            page.add('<p class="note">No evaluation.json: run <code>filtag-kg evaluate RUN_DIR</code>.</p>')
        else:
            page.add('<p class="note">No explanations in this run.</p>')
        if self.pages.get("cladec"):  # after `filtag-kg cladec` (report.cladec_pages)
            page.add('<h2 id="cladec">ClaDec</h2>', self.cladec_table(page))  # type: ignore[attr-defined]
        page.add(
            "<h2>More</h2><ul>"
            f"<li>{page.link('explanations/index.html', 'Explanations')}: {len(self.chosen)} image pages of "
            f"{self.explained_images} explained images</li>"
            f"<li>{page.link('concepts/index.html', 'Concepts')}: {len(self.concepts.concepts)} classes and "
            "WordNet hypernyms, with the filters representing each</li>"
            f"<li>{len(self.filter_pages)} filter pages, reached from the layer pages</li></ul>"
        )
        self.write(page, "overview")


def _param_text(param: Any) -> str:
    """A setting's parameter as ``tags.tsv`` writes it (``3``, ``2.5``, empty)."""
    if param is None:
        return ""
    return f"{param:g}" if isinstance(param, (int, float)) and not isinstance(param, bool) else str(param)
