"""ClaDec pages (``cladec/``): per decoded layer, each stored image as the original, its ClaDec
and its reference reconstruction, with the image's active tagged filters of that layer beside them.

``filtag-kg cladec`` writes the reconstructions (``RUN/cladec/<layer>/reconstructions/*.png``,
original | ClaDec | reference) and their figures; the image's active filters come from the
run's explanations (the image's clean, unweighted record), when the image was explained.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..cladec_files import claim_holds, read_cladec
from .context import facts_list, pct
from .explanation_pages import ExplanationPages
from .htmlkit import Page, esc, file_key, fmt_num, table


class CladecPages(ExplanationPages):
    """The ClaDec index (``cladec/index.html``) and one page per decoded layer."""

    def cladec_docs(self) -> list[dict[str, Any]]:
        """The run's evaluated ClaDec layers (read once)."""
        if not hasattr(self, "_cladec_docs"):
            self._cladec_docs = read_cladec(self.view.run_dir)
        return self._cladec_docs

    @staticmethod
    def cladec_page(doc: dict[str, Any]) -> str:
        """The page of one decoded layer (and alpha)."""
        return f"cladec/{file_key(str(doc.get('folder') or doc['layer']))}.html"

    def _explained_records(self, images: set[str]) -> dict[str, tuple[Any, dict[str, Any]]]:
        """image path -> (explanation index, its primary record), for the given images that were
        explained; the reading stops once all are found."""
        found: dict[str, tuple[Any, dict[str, Any]]] = {}
        for idx, rows in self._groups():
            if len(found) == len(images):
                break
            group = self._parse(rows)
            rec = self._primary(group)
            path = str(rec.get("image"))
            if path in images and path not in found:
                found[path] = (idx, rec)
        return found

    def write_cladec_pages(self) -> None:
        """Write ``cladec/`` when the run has evaluated ClaDec layers."""
        docs = self.cladec_docs()
        if not docs:
            return
        self.pages.setdefault("cladec", 0)
        images = {str(r.get("image")) for d in docs for r in d.get("reconstructions") or []}
        explained = self._explained_records(images)
        for doc in docs:
            self._layer_page(doc, explained)
        page = Page("cladec/index.html", "ClaDec: what each layer keeps")
        page.add(
            "<p>For each decoded layer, a decoder was trained from the frozen model's activations at the "
            "layer back to the image (ClaDec), and an autoencoder of the same size (the model's "
            "architecture up to the layer, its own weights, trained for reconstruction only) as the "
            "reference. The model's accuracy on the reconstructions shows how much of what it uses each "
            "keeps; the pixel error how much of the image.</p>",
            self.cladec_table(page),
        )
        self.write(page, "cladec")

    def cladec_table(self, page: Page) -> str:
        """The figures of every decoded layer as one table (also on the overview)."""
        rows = []
        for d in self.cladec_docs():
            acc, mse = d.get("accuracy") or {}, d.get("mse") or {}
            holds = claim_holds(d)
            rows.append([
                page.link(self.cladec_page(d), d["layer"]), esc(fmt_num(d.get("alpha", 0))),
                esc(d.get("images", "–")), pct(acc.get("original")), pct(acc.get("cladec")),
                pct(acc.get("reference")), esc(fmt_num(mse.get("cladec"))),
                esc(fmt_num(mse.get("reference"))),
                {None: "–", True: '<span class="ok">yes</span>', False: '<span class="bad">no</span>'}[holds],
            ])
        return table(["layer", "alpha", "held-out images", "accuracy: originals", "ClaDec", "reference",
                      "pixel MSE: ClaDec", "reference", "ClaDec keeps more class information, reference "
                      "more pixels"], rows, cls="cladec")

    def _layer_page(self, doc: dict[str, Any], explained: dict[str, tuple[Any, dict[str, Any]]]) -> None:
        layer = str(doc["layer"])
        path = self.cladec_page(doc)
        page = Page(path, f"ClaDec of {layer}", crumbs=[("cladec/index.html", "ClaDec")])
        tr = doc.get("training") or {}
        acc, mse = doc.get("accuracy") or {}, doc.get("mse") or {}
        profiled = layer in self.layer_index
        page.add(facts_list([
            ("layer", page.link(self.layer_page(layer) if profiled else None, layer)),
            ("activation shape", esc(" x ".join(map(str, tr.get("activation_shape") or [])) or "–")),
            ("alpha", esc(fmt_num(doc.get("alpha", 0)))),
            ("epochs", esc((tr.get("options") or {}).get("epochs", "–"))),
            ("held-out images", esc(doc.get("images", "–"))),
            ("accuracy", f"originals {pct(acc.get('original'))}, ClaDec {pct(acc.get('cladec'))}, "
                         f"reference {pct(acc.get('reference'))}"),
            ("pixel MSE", f"ClaDec {esc(fmt_num(mse.get('cladec')))}, reference "
                          f"{esc(fmt_num(mse.get('reference')))}"),
        ]))
        if not profiled:
            page.add('<p class="note">This layer was not profiled, so it has no tagged filters.</p>')
        rows = []
        folder = self.view.run_dir / str(doc.get("folder") or "")
        for r in doc.get("reconstructions") or []:
            src = folder / str(r.get("file") or "")
            rel = None
            if src.is_file():
                rel = f"cladec/{file_key(str(doc.get('folder') or layer))}/{src.name}"
                (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, self.out / rel)
            image = str(r.get("image"))
            fig = self.figure(page, rel, "original · ClaDec · reference", alt=f"reconstructions of {image}")
            pred = r.get("prediction") or {}
            err = r.get("mse") or {}
            facts = [("image", f"<code>{esc('/'.join(Path(image).parts[-2:]))}</code>")]
            if r.get("true_class"):
                facts.append(("true class", self.class_link(page, str(r["true_class"]))))
            for key, name in (("original", "model on original"), ("cladec", "on ClaDec"),
                              ("reference", "on reference")):
                if isinstance(pred.get(key), str):
                    facts.append((name, self.class_link(page, pred[key])))
            facts.append(("pixel MSE", f"ClaDec {esc(fmt_num(err.get('cladec')))}, reference "
                                       f"{esc(fmt_num(err.get('reference')))}"))
            rows.append([fig, facts_list(facts), self._active_cell(page, layer, explained.get(image))])
        page.add("<h2>Reconstructions</h2>",
                 table(["original · ClaDec · reference", "predictions", f"active tagged filters of {layer}"],
                       rows, cls="cladec"))
        self.write(page, "cladec")

    def _active_cell(self, page: Page, layer: str, hit: tuple[Any, dict[str, Any]] | None) -> str:
        if hit is None:
            return '<span class="muted">not explained</span>'
        idx, rec = hit
        active = self._active_tagged(rec, layer)
        target = self.chosen.get(idx)
        more = f"<br>{page.link(target, 'explanation page')}" if target else ""
        if not active:
            return '<span class="muted">no active tagged filter in this layer</span>' + more
        items = [f"<li>{self.filter_link(page, layer, f)} ({esc(fmt_num(v))}): "
                 f"{self.tag_links(page, tags)}</li>" for f, v, tags in active]
        return '<ul class="active">' + "".join(items) + "</ul>" + more
