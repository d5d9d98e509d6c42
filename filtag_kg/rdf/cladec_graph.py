"""The ClaDec graph of a run (``R/kg/cladec``): decoders, their training and evaluation, reconstructions.

``filtag-kg cladec`` leaves, per decoded layer, a training record and an evaluation in
``RUN/cladec/<layer>/`` (see :mod:`filtag_kg.cladec`). This module states them as RDF:

* each training as a ``fk:ClaDecTraining`` (a ``prov:Activity`` and ``mls:Run``) that used
  the frozen model (``fk:decodedModel``) and the training images (``fk:trainingDataset``),
  was informed by the tagging run, decoded a layer (``fk:decodedLayer``), had its options
  as ``fk:RunParameter`` s (``mls:HyperParameterSetting``) and its alpha, and output
  (``mls:hasOutput``) two models, each ``prov:wasGeneratedBy`` it: the
  ``fk:ClaDecDecoder`` and the ``fk:ReferenceAutoencoder`` it is compared with;
* the ``fk:ClaDecEvaluation`` with the held-out figures (accuracy on originals, on ClaDec
  and on reference reconstructions, both pixel errors);
* per stored reconstruction, two ``fk:Reconstruction`` s (ClaDec's and the reference's),
  each linked to the image (``fk:reconstructionOf``, by its SHA-256), the layer and the model
  that drew it, with its error, the classifier's top-1 on it and the PNG that shows it.

The graph names layers, filters' layers and concepts that the tag graph describes, so
it is validated together with the tag graph; it must be built before the tag graph is
(see :class:`~.nquads.RunGraphs`), so that a decoded layer the profile did not measure and
the concepts the reconstructions were classified as are described there too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from . import terms as T
from .tag_graph import LABEL, A, Context, Triple, _activity_provenance, _p, _parameter_triples
from .vocab import FK, MLS, PROV

__all__ = ["cladec_triples", "iter_cladec_graphs"]

_PARAMETERS = ("alpha", "epochs", "batch_size", "lr", "seed")


def cladec_triples(ctx: Context) -> list[Triple]:
    """The ClaDec graph's triples (deduplicated, sorted); empty when the run has no evaluated layer."""
    from ..cladec_files import read_cladec

    out: list[Triple] = []
    add = out.append
    mint = ctx.mint
    model = T.iri(ctx.model_iri)
    for doc in read_cladec(ctx.data.run_dir):
        tr = doc["training"]
        layer_name = str(doc["layer"])
        shape = [int(v) for v in tr.get("activation_shape") or []]
        if shape:  # a decoded layer the profile did not measure is still described in the tag graph
            ctx.filters.setdefault(layer_name, set(range(shape[0])))
        layer = T.iri(mint.layer(ctx.model_iri, layer_name))
        d_iri = mint.cladec_training(ctx.run_iri, layer_name, tr.get("fingerprint") or tr)
        d = T.iri(d_iri)
        dec, ref, ev = (T.iri(mint.cladec_part(d_iri, p)) for p in ("decoder", "reference", "evaluation"))
        for t in (FK.ClaDecTraining, PROV.Activity, MLS.Run):
            add((d, A, _p(t)))
        add((d, LABEL, T.string(f"ClaDec training of {ctx.data.spec} {layer_name}")))
        add((d, _p(FK.decodedModel), model))
        add((d, _p(PROV.used), model))
        add((d, _p(FK.decodedLayer), layer))
        add((d, _p(PROV.wasInformedBy), T.iri(ctx.run_iri)))
        alpha = T.double(tr.get("alpha", 0.0))
        if alpha:  # 0: reconstruction only
            add((d, _p(FK.alpha), alpha))
        if shape:
            add((d, _p(FK.activationShape), T.string(" x ".join(map(str, shape)))))
        _activity_provenance(ctx, d, tr.get("started_at"), tr.get("finished_at"), tr.get("dataset"),
                             FK.trainingDataset, add)
        options = tr.get("options") or {}
        for name in _PARAMETERS:
            _parameter_triples(ctx, d_iri, name, options.get(name), add)
        for m, cls, what in ((dec, FK.ClaDecDecoder, "ClaDec decoder"),
                             (ref, FK.ReferenceAutoencoder, "reference autoencoder")):
            for t in (cls, MLS.Model, PROV.Entity):
                add((m, A, _p(t)))
            add((m, LABEL, T.string(f"{what} of {layer_name}")))
            add((m, _p(PROV.wasGeneratedBy), d))
            add((d, _p(MLS.hasOutput), m))
        add((dec, _p(FK.referenceAutoencoder), ref))
        _evaluation(ctx, doc, ev, dec, add)
        for row in doc.get("reconstructions") or []:
            _reconstructions(ctx, row, d_iri, layer, {"cladec": dec, "reference": ref},
                             f"{doc.get('folder', '')}/{row.get('file', '')}".lstrip("/"), add)
    return sorted(set(out))


def _evaluation(ctx: Context, doc: dict[str, Any], ev: str, dec: str, add: Any) -> None:
    add((ev, A, _p(FK.ClaDecEvaluation)))
    add((ev, A, _p(PROV.Entity)))
    add((ev, LABEL, T.string(f"ClaDec evaluation of {doc['layer']}")))
    add((ev, _p(FK.evaluatedDecoder), dec))
    if isinstance(doc.get("images"), int):
        add((ev, _p(FK.evaluatedImages), T.integer(doc["images"])))
    acc, mse = doc.get("accuracy") or {}, doc.get("mse") or {}
    figures = ((FK.accuracyOnOriginals, acc.get("original")), (FK.accuracyOnClaDec, acc.get("cladec")),
               (FK.accuracyOnReference, acc.get("reference")), (FK.claDecError, mse.get("cladec")),
               (FK.referenceError, mse.get("reference")))
    for prop, value in figures:
        lit = T.double(value) if value is not None else None
        if lit:
            add((ev, _p(prop), lit))


def _reconstructions(ctx: Context, row: dict[str, Any], d_iri: str, layer: str, models: dict[str, str],
                     file: str, add: Any) -> None:
    sha = str(row.get("sha256") or "").lower()
    if len(sha) != 64:
        return  # an image is named by its bytes; without them there is nothing to link to
    image = T.iri(ctx.mint.image(sha))
    add((image, A, _p(FK.Image)))
    add((image, _p(FK.sha256), T.string(sha)))
    predictions = row.get("prediction") or {}
    for by, model in models.items():
        r = T.iri(ctx.mint.reconstruction(d_iri, sha, by))
        add((r, A, _p(FK.Reconstruction)))
        add((r, A, _p(PROV.Entity)))
        add((r, LABEL, T.string(f"{'ClaDec' if by == 'cladec' else 'reference'} reconstruction")))
        add((r, _p(FK.reconstructionOf), image))
        add((r, _p(FK.reconstructedLayer), layer))
        add((r, _p(FK.reconstructedBy), model))
        add((r, _p(PROV.wasDerivedFrom), image))
        err = T.double((row.get("mse") or {}).get(by))
        if err:
            add((r, _p(FK.reconstructionError), err))
        top = predictions.get(by)
        if isinstance(top, str):
            add((r, _p(FK.reconstructionConcept), ctx.concept(top)))
        add((r, _p(FK.reconstructionFile), T.string(file)))


def iter_cladec_graphs(ctx: Context) -> Iterator[tuple[str, list[Triple]]]:
    """The ClaDec graph ``(name, triples)``, when the run has evaluated ClaDec layers (else nothing)."""
    triples = cladec_triples(ctx)
    if triples:
        yield ctx.mint.cladec_graph(ctx.run_iri), triples
