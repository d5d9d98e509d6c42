"""The tag graph of a run (model, layers, filters, tags, concepts, provenance) and its VoID.

:class:`Context` holds what one export shares between its graphs: the minted
IRIs of the run and model, how each class id maps to a concept, and what the
explanation graphs referenced (classes, filters, settings) that the tag graph
must describe too. :func:`tag_graph_triples` then writes the tag graph and
:func:`void_triples` the VoID description, both as N-Triples term triples
(see :mod:`.terms`).

What the tag graph holds, per run:

* the model (spec, architecture, weights SHA-256), its measured layers (name,
  order, width, where measured) and every filter of them (index, layer);
* the tagging run as a ``prov:Activity`` / ``mls:Run`` that used the model
  and the dataset, with start and end times, software versions, options and
  tagging settings (``mls:HyperParameterSetting``, e.g. top-k with k = 3);
* each tag twice: ``filter fk:taggedWith concept`` (one hop for queries) and
  a qualified ``fk:Tag`` (``fk:tagConcept``) with score, rank, share, setting and
  run; per setting and class a ``fk:ClassExplanation`` (an ``eo:GlobalExplanation``);
  with ``materialize``, ``filter fk:represents C`` for every C at or above a tag;
* abstract tags (common hypernyms) with their coverage counts;
* concepts: WordNet synsets with wnid, synset name, lemmas as labels,
  definition, ``skos:broader`` up to ``entity.n.01``, ``rdfs:seeAlso`` Princeton's
  WordNet 3.0 look-up IRI and ``skos:exactMatch`` the Interlingual Index (with an
  ILI map); classes without a synset as plain SKOS concepts.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import terms as T
from .mint import Minter
from .rundata import RunData, read_ili_map
from .vocab import DCAT, DCTERMS, EO, FK, MLS, NNO, PROV, RDF, RDFS, SKOS, VOID

if TYPE_CHECKING:
    from ..wordnet import WordNet

__all__ = ["Context", "GraphStats", "tag_graph_triples", "void_triples"]

Triple = tuple[str, str, str]


_RENDERED: dict[str, str] = {}


def _p(term: Any) -> str:
    """A vocabulary term as ``<iri>`` (cached: terms repeat in every triple)."""
    got = _RENDERED.get(term)
    if got is None:
        got = _RENDERED[term] = T.iri(str(term))
    return got


A = _p(RDF.type)
LABEL = _p(RDFS.label)
METHOD_TERMS = {"top-k": FK.TopK, "top-percent": FK.TopPercent, "above-average": FK.AboveAverage}
HYPERPARAMETERS = {"top-k": FK.KParameter, "top-percent": FK.PercentParameter}


class Context:
    """What one export of one run shares between its graphs.

    Args:
        data: the run folder's content (:func:`~.rundata.read_run`).
        base_iri: base IRI of minted IRIs.
        wordnet: WordNet 3.0 source for concept labels, definitions and
            hypernyms; ``None`` loads the default (:func:`~filtag_kg.wordnet.load_wordnet`).
        ili_map: CILI's ``ili-map-pwn30.tab`` (path) or a wnid -> ILI id
            mapping; adds ``skos:exactMatch`` links to the ILI. ``None``: the map
            shipped in the package (:data:`~filtag_kg.wordnet.ili.ILI_RESOURCE`), if any.
        absolute_paths: keep dataset roots and image paths as given (machine-local);
            by default only paths relative to the dataset root are written.
        materialize: also write ``filter fk:represents concept`` for every concept
            at or above a tag's concept (what the ontology's axioms entail).
        license: IRI of the licence of the export (``dcterms:license`` in the VoID).
    """

    def __init__(
        self,
        data: RunData,
        *,
        base_iri: str,
        wordnet: WordNet | None = None,
        ili_map: str | os.PathLike[str] | Mapping[str, str] | None = None,
        absolute_paths: bool = False,
        materialize: bool = False,
        license: str | None = None,
    ) -> None:
        self.data = data
        #: write machine-local paths (dataset roots, image paths as given) instead of relative ones
        self.absolute_paths = absolute_paths
        #: write the fk:represents triples an OWL RL reasoner would infer
        self.materialize = materialize
        #: IRI of the export's licence (dcterms:license of the VoID description)
        self.license = license
        self.mint = Minter(base_iri)
        if wordnet is None:
            from ..wordnet import load_wordnet

            wordnet = load_wordnet()
        self.wordnet = wordnet
        if ili_map is None:  # the map shipped with the package, if it ships one
            from ..wordnet.ili import load_ili_resource

            self.ili: Mapping[str, str] = load_ili_resource()
        elif isinstance(ili_map, (str, os.PathLike)):
            self.ili = read_ili_map(ili_map)
        else:
            self.ili = ili_map
        m = data.model
        self.run_iri = self.mint.run(data.spec, data.identity)
        self.model_iri = self.mint.model(data.spec, m.get("weights_sha256"))
        self.tag_graph_iri = self.mint.tag_graph(self.run_iri)
        self.void_graph_iri = self.mint.void_graph(self.run_iri)
        self.explanation_run_iri = self.mint.explanation_run(self.run_iri)
        # class id -> label, for every class the export mentions (first label wins)
        self.labels: dict[str, str] = {}
        for c in data.classes:
            self.labels.setdefault(c.id, c.label)
        for cid, lab in data.model_classes:
            self.labels.setdefault(cid, lab)
        for t in data.tags:
            self.labels.setdefault(t.class_id, t.label)
        for a in data.abstract:
            for cid in a.covered_ids:
                self.labels.setdefault(cid, cid)
        #: class id -> rendered concept IRI (read directly by the explanation encoder's hot loop)
        self.concepts: dict[str, str] = {}
        self._settings: dict[tuple[str, str], str] = {}
        self.settings: list[tuple[str, str]] = list(data.settings)
        # filters described in the tag graph: every filter of a layer of known width
        self.filters: dict[str, set[int]] = {}
        for lr in data.layers:
            self.filters[lr.name] = set(range(lr.width)) if lr.width else set()
        for t in data.tags:
            self.filters.setdefault(t.layer, set()).add(t.filter)
        for a in data.abstract:
            self.filters.setdefault(a.layer, set()).add(a.filter)
        self.explained_settings: set[tuple[str, str]] = set()

    # -- lookups shared with the explanation encoder ----------------------------------
    def wnid_of(self, class_id: str) -> str | None:
        """The linked wnid of a class (``class_links.tsv``, else the id itself if it is a wnid)."""
        w = self.data.links.get(class_id)
        if w:
            return w
        return class_id if len(class_id) == 9 and class_id[0] == "n" and class_id[1:].isdigit() else None

    def concept(self, class_id: str, label: str | None = None) -> str:
        """The rendered concept IRI of a class id (registers unseen ids for description)."""
        got = self.concepts.get(class_id)
        if got is None:
            got = self.concepts[class_id] = T.iri(self.mint.concept(class_id, self.wnid_of(class_id)))
            self.labels.setdefault(class_id, label if label is not None else class_id)
        return got

    def setting(self, method: str, param: str) -> str:
        """The rendered IRI of a tagging setting (registers unseen settings)."""
        key = (method, param)
        got = self._settings.get(key)
        if got is None:
            got = self._settings[key] = T.iri(self.mint.setting(self.run_iri, method, param))
            if key not in self.settings:
                self.settings.append(key)
        return got

    def filter_seen(self, layer: str, index: int) -> None:
        """Record that an explanation referenced a filter (so the tag graph describes it)."""
        known = self.filters.get(layer)
        if known is None:
            self.filters[layer] = {index}
        elif index not in known:
            known.add(index)


def _typed(value: Any) -> str | None:
    """A run option value as a typed literal."""
    if isinstance(value, bool):
        return T.boolean(value)
    if isinstance(value, int):
        return T.integer(value)
    if isinstance(value, float):
        return T.double(value)
    if value is None:
        return None
    return T.string(str(value))


def _lemma_text(lemma: str) -> str:
    return lemma.replace("_", " ")


def tag_graph_triples(ctx: Context) -> list[Triple]:
    """The tag graph of ``ctx``'s run, deduplicated and sorted.

    Call it after the explanations were encoded, so that the classes, filters
    and settings they referenced are described as well.
    """
    out: list[Triple] = []
    add = out.append
    data, mint = ctx.data, ctx.mint
    run, model = T.iri(ctx.run_iri), T.iri(ctx.model_iri)

    # -- model, layers, filters --------------------------------------------------------
    m = data.model
    for t in (FK.Model, NNO.Model, MLS.Model):
        add((model, A, _p(t)))
    add((model, LABEL, T.string(data.spec)))
    add((model, _p(FK.modelSpec), T.string(data.spec)))
    for key, prop in (("architecture", FK.architecture), ("weights", FK.weightsName)):
        if m.get(key):
            add((model, _p(prop), T.string(str(m[key]))))
    if m.get("weights_sha256"):
        add((model, _p(FK.weightsSha256), T.string(str(m["weights_sha256"]).lower())))
    if isinstance(m.get("num_classes"), int):
        add((model, _p(FK.numClasses), T.integer(m["num_classes"])))
    records = {lr.name: lr for lr in data.layers}
    for name in ctx.filters:
        lr = records.get(name)
        layer = T.iri(mint.layer(ctx.model_iri, name))
        add((layer, A, _p(FK.Layer)))
        add((layer, A, _p(NNO.Layer)))
        add((layer, LABEL, T.string(name)))
        add((layer, _p(FK.layerName), T.string(name)))
        add((layer, _p(FK.layerOf), model))
        add((model, _p(NNO.hasLayer), layer))
        if lr is not None:
            if lr.index is not None:
                add((layer, _p(FK.layerIndex), T.integer(lr.index)))
            if lr.width is not None:
                add((layer, _p(FK.width), T.integer(lr.width)))
            if lr.measured_at:
                add((layer, _p(FK.measuredAt), T.string(lr.measured_at)))
            if lr.measure_kind:
                add((layer, _p(FK.measureKind), T.string(lr.measure_kind)))
        c_filter, p_index, p_in, p_has = _p(FK.Filter), _p(FK.filterIndex), _p(FK.inLayer), _p(FK.hasFilter)
        for i in sorted(ctx.filters[name]):
            f = T.iri(mint.filter(ctx.model_iri, name, i))
            out += (
                (f, A, c_filter),
                (f, LABEL, T.string(f"{name} filter {i}")),
                (f, p_index, T.integer(i)),
                (f, p_in, layer),
                (layer, p_has, f),
            )

    # -- the run and its provenance ---------------------------------------------------
    for t in (FK.TaggingRun, PROV.Activity, MLS.Run):
        add((run, A, _p(t)))
    what = "imported FilTag tags" if data.kind == "import" else "FilTag tagging"
    add((run, LABEL, T.string(f"{what} of {data.spec}")))
    add((run, _p(FK.taggedModel), model))
    if data.tags_sha256:
        add((run, _p(FK.tagsSha256), T.string(data.tags_sha256)))
    add((run, _p(PROV.used), model))
    _activity_provenance(ctx, run, data.started_at, data.finished_at, data.dataset, FK.profiledDataset, add)
    for name, version in sorted(data.software.items()):
        sw = T.iri(mint.software(name, version))
        add((sw, A, _p(FK.SoftwarePackage)))
        add((sw, A, _p(PROV.Entity)))
        add((sw, LABEL, T.string(name)))
        add((sw, _p(FK.softwareVersion), T.string(version)))
        add((run, _p(FK.usedSoftware), sw))
        add((run, _p(PROV.used), sw))
    for name, value in sorted(data.parameters.items()):
        _parameter_triples(ctx, ctx.run_iri, name, value, add)
    if data.import_info:
        info = data.import_info
        if info.get("source_file"):
            src = str(info["source_file"])
            add((run, _p(FK.sourceFile), T.string(src if ctx.absolute_paths else _file_name(src))))
        if info.get("source_sha256"):
            add((run, _p(FK.sourceSha256), T.string(str(info["source_sha256"]))))
    for method, param in ctx.settings:
        s = ctx.setting(method, param)
        add((s, A, _p(FK.TagSetting)))
        add((s, A, _p(MLS.HyperParameterSetting)))
        add((s, LABEL, T.string(f"{method} {param}".strip())))
        if method in METHOD_TERMS:
            add((s, _p(FK.method), _p(METHOD_TERMS[method])))
        if method in HYPERPARAMETERS:
            add((s, _p(MLS.specifiedBy), _p(HYPERPARAMETERS[method])))
        lit = T.decimal(param) if param else None
        if lit:
            add((s, _p(FK.parameter), lit))
        add((run, _p(FK.hasSetting), s))

    # -- tags ---------------------------------------------------------------------------
    images = {c.id: c.images for c in data.classes}
    p_tagged, p_has_tag, c_tag, p_filter = _p(FK.taggedWith), _p(FK.hasTag), _p(FK.Tag), _p(FK.filter)
    p_concept, p_setting, p_generated = _p(FK.tagConcept), _p(FK.setting), _p(PROV.wasGeneratedBy)
    p_score, p_share, p_rank, p_images = _p(FK.score), _p(FK.share), _p(FK.rank), _p(FK.imageCount)
    c_class_expl, c_global = _p(FK.ClassExplanation), _p(EO.GlobalExplanation)
    filter_iris: dict[tuple[str, int], str] = {}
    class_explanations: set[str] = set()
    # tags per filter and setting: each tag carries its filter's count, the denominator of the
    # selectivity filters-for-concept ranks by (a join over the filter's other tags is slow)
    per_filter = Counter((t.layer, t.filter, t.method, t.param) for t in data.tags)
    p_count = _p(FK.filterTagCount)
    for tag in data.tags:
        key = (tag.layer, tag.filter)
        f = filter_iris.get(key)
        if f is None:
            f = filter_iris[key] = T.iri(mint.filter(ctx.model_iri, tag.layer, tag.filter))
        c = ctx.concept(tag.class_id, tag.label)
        s = ctx.setting(tag.method, tag.param)
        t = T.iri(mint.tag(ctx.run_iri, tag.layer, tag.filter, tag.method, tag.param, tag.class_id))
        out += (
            (f, p_tagged, c),
            (f, p_has_tag, t),
            (t, A, c_tag),
            (t, p_filter, f),
            (t, p_concept, c),
            (t, p_setting, s),
            (t, p_generated, run),
        )
        lit = T.double(tag.score)
        if lit:
            add((t, p_score, lit))
        lit = T.double(tag.share)
        if lit:
            add((t, p_share, lit))
        if tag.rank:
            add((t, p_rank, T.integer(tag.rank)))
        add((t, p_count, T.integer(per_filter[(tag.layer, tag.filter, tag.method, tag.param)])))
        ce = T.iri(mint.class_explanation(ctx.run_iri, tag.method, tag.param, tag.class_id))
        add((ce, p_has_tag, t))
        if ce in class_explanations:
            continue
        class_explanations.add(ce)
        setting_label = f"{tag.method} {tag.param}".strip()
        out += (
            (ce, A, c_class_expl),
            (ce, A, c_global),
            (ce, LABEL, T.string(f"filters tagged {tag.label} ({setting_label})")),
            (ce, _p(FK.explainedConcept), c),
            (ce, p_setting, s),
            (ce, p_generated, run),
        )
        if images.get(tag.class_id) is not None:
            add((ce, p_images, T.integer(images[tag.class_id])))

    # -- abstract tags ---------------------------------------------------------------
    for row in data.abstract:
        f = T.iri(mint.filter(ctx.model_iri, row.layer, row.filter))
        c = T.iri(mint.synset(row.wnid))
        a = T.iri(mint.abstract_tag(ctx.run_iri, row.layer, row.filter, row.method, row.param, row.wnid))
        add((f, _p(FK.abstractlyTaggedWith), c))
        add((f, _p(FK.hasAbstractTag), a))
        add((a, A, _p(FK.AbstractTag)))
        add((a, _p(FK.filter), f))
        add((a, _p(FK.abstractConcept), c))
        add((a, _p(FK.setting), ctx.setting(row.method, row.param)))
        add((a, _p(FK.coverCount), T.integer(row.cover)))
        add((a, _p(FK.linkedTagCount), T.integer(row.linked_tags)))
        if row.depth is not None:
            add((a, _p(FK.depth), T.integer(row.depth)))
        add((a, _p(PROV.wasGeneratedBy), run))
        for cid in row.covered_ids:
            add((a, _p(FK.covers), ctx.concept(cid)))

    # -- the explanation activity -------------------------------------------------------
    if data.explanations_path is not None:
        _explanation_run_triples(ctx, add)

    # -- concepts ------------------------------------------------------------------------
    broader = _concept_triples(ctx, add, extra_synsets=[r.wnid for r in data.abstract])
    if ctx.materialize:
        _represents_triples(out, broader)
    return sorted(set(out))


def _file_name(path: str) -> str:
    """The last component of a path (either separator), the path itself if it has none."""
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or path


def _represents_triples(out: list[Triple], broader: Mapping[str, list[str]]) -> None:
    """Add ``filter fk:represents C`` for each concept C at or above a concept the filter is tagged with.

    Exactly what an OWL RL reasoner derives from the ontology's axioms
    (``fk:taggedWith`` ⊑ ``fk:represents``, ``fk:represents`` ⊒ ``fk:taggedWith`` ∘
    ``skos:broaderTransitive``, ``skos:broader`` ⊑ ``skos:broaderTransitive``, transitive),
    for stores that do not reason.
    """
    p_tagged, p_rep = _p(FK.taggedWith), _p(FK.represents)
    above: dict[str, set[str]] = {}

    def closure(c: str) -> set[str]:
        got = above.get(c)
        if got is None:
            got = above[c] = {c}
            for parent in broader.get(c, ()):
                got |= closure(parent)
        return got

    for f, c in {(s, o) for s, p, o in out if p == p_tagged}:
        out.extend((f, p_rep, x) for x in closure(c))


def _activity_provenance(
    ctx: Context, node: str, started: Any, finished: Any, dataset: Any, dataset_prop: Any, add: Any
) -> None:
    """An activity's start and end times (when given) and the dataset it used (when its record
    has a fingerprint), linked by ``dataset_prop`` and ``prov:used``: for the tagging run, the
    explanation run and ClaDec trainings alike."""
    for prop, value in ((PROV.startedAtTime, started), (PROV.endedAtTime, finished)):
        lit = T.date_time(value)
        if lit:
            add((node, _p(prop), lit))
    if isinstance(dataset, Mapping) and dataset.get("fingerprint"):
        d = _dataset_triples(ctx, dataset, add)
        add((node, _p(dataset_prop), d))
        add((node, _p(PROV.used), d))


def _parameter_triples(ctx: Context, owner_iri: str, name: str, value: Any, add: Any) -> None:
    """One ``fk:RunParameter`` (an ML-Schema hyper-parameter setting) of the activity
    ``owner_iri``; nothing when the value has no literal form (:func:`_typed`)."""
    lit = _typed(value)
    if lit is None:
        return
    par = T.iri(ctx.mint.parameter(owner_iri, name))
    add((par, A, _p(FK.RunParameter)))
    add((par, A, _p(MLS.HyperParameterSetting)))
    add((par, LABEL, T.string(f"{name} = {value}")))
    add((par, _p(FK.parameterName), T.string(name)))
    add((par, _p(FK.parameterValue), lit))
    add((T.iri(owner_iri), _p(FK.hasParameter), par))


def _dataset_triples(ctx: Context, record: Mapping[str, Any], add: Any) -> str:
    ds = T.iri(ctx.mint.dataset(str(record["fingerprint"])))
    for t in (FK.ImageDataset, DCAT.Dataset, MLS.Dataset):
        add((ds, A, _p(t)))
    root = record.get("root")
    if root is not None:
        # the root is a machine-local path: by default only its last component names the dataset
        add((ds, LABEL, T.string(str(root) if ctx.absolute_paths else _file_name(str(root)))))
        if ctx.absolute_paths:
            add((ds, _p(FK.datasetRoot), T.string(str(root))))
    if record.get("source"):
        add((ds, _p(FK.datasetSource), T.string(str(record["source"]))))
    add((ds, _p(FK.datasetFingerprint), T.string(str(record["fingerprint"]))))
    for key, prop in (("images", FK.imageCount), ("images_used", FK.imagesUsed),
                      ("skipped_count", FK.skippedCount), ("classes", FK.classCount)):
        if isinstance(record.get(key), int) and not isinstance(record.get(key), bool):
            add((ds, _p(prop), T.integer(record[key])))
    return ds


def param_text(p: Any) -> str:
    """A setting's parameter as a JSON artifact stores it (``1``, ``2.5``, ``None``) in the text form
    of ``tags.tsv`` and the settings' IRIs (``"1"``, ``"2.5"``, ``""``)."""
    return "" if p is None or p == "" else (f"{p:g}" if isinstance(p, (int, float)) else str(p))


def _explanation_run_triples(ctx: Context, add: Any) -> None:
    meta = ctx.data.explanations_meta or {}
    x, model = T.iri(ctx.explanation_run_iri), T.iri(ctx.model_iri)
    for t in (FK.ExplanationRun, PROV.Activity, MLS.Run):
        add((x, A, _p(t)))
    add((x, LABEL, T.string(f"FilTag explanations of {ctx.data.spec}")))
    add((x, _p(PROV.wasInformedBy), T.iri(ctx.run_iri)))
    add((x, _p(FK.explainedModel), model))
    add((x, _p(PROV.used), model))
    _activity_provenance(ctx, x, meta.get("started_at"), meta.get("finished_at") or meta.get("created_at"),
                         meta.get("dataset"), FK.explainedDataset, add)
    if meta.get("weighting"):
        add((x, _p(FK.weighting), T.string(str(meta["weighting"]))))
    software = meta.get("software") if isinstance(meta.get("software"), dict) else {}
    for name, version in sorted(software.items()):
        if version is None:
            continue
        sw = T.iri(ctx.mint.software(str(name), str(version)))
        add((sw, A, _p(FK.SoftwarePackage)))
        add((sw, A, _p(PROV.Entity)))
        add((sw, LABEL, T.string(str(name))))
        add((sw, _p(FK.softwareVersion), T.string(str(version))))
        add((x, _p(FK.usedSoftware), sw))
        add((x, _p(PROV.used), sw))
    for s in meta.get("settings") or []:
        if isinstance(s, dict) and s.get("method"):
            add((x, _p(FK.hasSetting), ctx.setting(str(s["method"]), param_text(s.get("param")))))
    for method, param in sorted(ctx.explained_settings):
        add((x, _p(FK.hasSetting), ctx.setting(method, param)))


def _concept_triples(ctx: Context, add: Any, *, extra_synsets: Iterable[str]) -> dict[str, list[str]]:
    """Describe every concept used, and the WordNet hierarchy above the synsets.

    Returns:
        The ``skos:broader`` links written, as rendered concept IRI -> its parents' IRIs.
    """
    broader: dict[str, list[str]] = {}
    mint, wn = ctx.mint, ctx.wordnet
    for cid, label in list(ctx.labels.items()):
        ctx.concept(cid, label)
    # class ids of each concept (several ids can link to one synset)
    by_concept: dict[str, list[str]] = {}
    for cid in ctx.labels:
        by_concept.setdefault(ctx.concept(cid), []).append(cid)
    synsets: dict[str, str] = {}  # wnid -> rendered IRI, for the closure
    for c, cids in by_concept.items():
        add((c, A, _p(SKOS.Concept)))
        add((c, A, _p(FK.Concept)))
        for cid in cids:
            add((c, _p(FK.classId), T.string(cid)))
            add((c, _p(FK.classLabel), T.string(ctx.labels[cid])))
        wnid = ctx.wnid_of(cids[0])
        if wnid:
            synsets[wnid] = c
        else:
            add((c, _p(SKOS.prefLabel), T.string(ctx.labels[cids[0]])))
    for w in extra_synsets:
        synsets.setdefault(w, T.iri(mint.synset(w)))
    # the hypernym closure, breadth first
    scheme = T.iri(mint.wordnet_scheme())
    todo = list(synsets)
    described: set[str] = set()
    fallback = {ctx.wnid_of(cid): ctx.labels[cid] for cid in ctx.labels if ctx.wnid_of(cid)}
    while todo:
        wnid = todo.pop()
        if wnid in described:
            continue
        described.add(wnid)
        c = synsets.get(wnid) or T.iri(mint.synset(wnid))
        add((c, A, _p(SKOS.Concept)))
        add((c, A, _p(FK.Concept)))
        add((c, A, _p(FK.Synset)))
        add((c, _p(FK.wnid), T.string(wnid)))
        add((c, _p(SKOS.inScheme), scheme))
        # Princeton's pwn30 route is a look-up alias (it redirects to the 3.1 synset), not an identity
        add((c, _p(RDFS.seeAlso), T.iri(mint.princeton_wn30(wnid))))
        if wnid in ctx.ili:
            add((c, _p(SKOS.exactMatch), T.iri(mint.ili(ctx.ili[wnid]))))
        info = wn.find(wnid) if wn is not None else None
        if info is None:  # not in this WordNet source (e.g. the bundled slice)
            add((c, _p(SKOS.prefLabel), T.string(fallback.get(wnid, wnid))))
            continue
        add((c, _p(FK.synsetName), T.string(info.name)))
        lemmas = list(dict.fromkeys(_lemma_text(lm) for lm in info.lemmas)) or [info.name]
        add((c, _p(SKOS.prefLabel), T.lang_string(lemmas[0])))
        for lm in lemmas[1:]:
            add((c, _p(SKOS.altLabel), T.lang_string(lm)))
        if info.definition:
            add((c, _p(SKOS.definition), T.lang_string(info.definition)))
        parents = info.parents
        if not parents:
            add((c, _p(SKOS.topConceptOf), scheme))
            add((scheme, _p(SKOS.hasTopConcept), c))
        for name in parents:
            parent = wn.find(name)
            if parent is None:
                continue
            p_iri = T.iri(mint.synset(parent.wnid))
            add((c, _p(SKOS.broader), p_iri))
            broader.setdefault(c, []).append(p_iri)
            todo.append(parent.wnid)
    if described:
        add((scheme, A, _p(SKOS.ConceptScheme)))
        add((scheme, LABEL, T.string("WordNet 3.0 noun synsets")))
        add((scheme, _p(RDFS.seeAlso), T.iri("https://wordnet.princeton.edu/")))
    return broader


class GraphStats:
    """Counts of the graphs an export wrote, for its VoID description."""

    def __init__(self) -> None:
        self.tag_triples = 0
        self.tag_subjects = 0
        self.tag_properties = 0
        self.tag_classes = 0
        self.explanation_triples = 0
        self.explanations = 0
        self.classifications = 0
        self.label_triples = 0  # the human labels graph (filtag_kg.rdf.label_graph)
        self.cladec_triples = 0  # the ClaDec graph's (filtag_kg.rdf.cladec_graph)
        self.cluster_triples = 0  # the cluster aggregates' graph (filtag_kg.rdf.cluster_graph)

    def count_tag_graph(self, triples: list[Triple]) -> None:
        """Record the size of the (deduplicated) tag graph."""
        self.tag_triples = len(triples)
        self.tag_subjects = len({s for s, _, _ in triples})
        self.tag_properties = len({p for _, p, _ in triples})
        self.tag_classes = len({o for _, p, o in triples if p == A})

    @property
    def triples(self) -> int:
        """Quads of the data graphs (tag, explanation, labels, ClaDec and cluster aggregate graphs;
        VoID graph excluded)."""
        return (self.tag_triples + self.explanation_triples + self.label_triples + self.cladec_triples
                + self.cluster_triples)


def void_triples(ctx: Context, stats: GraphStats) -> list[Triple]:
    """The VoID description of the export (its own named graph ``R/kg/void``).

    Counts describe the data graphs as quads: ``void:triples`` of the
    knowledge graph is the number of quads in the tag graph plus the
    explanation graphs (the VoID graph itself excluded); the tag graph's
    ``void:entities`` is its number of distinct subjects.
    """
    mint, out = ctx.mint, []
    add = out.append
    kg = T.iri(mint.knowledge_graph(ctx.run_iri))
    tg = T.iri(ctx.tag_graph_iri)
    for t in (FK.KnowledgeGraph, VOID.Dataset, DCAT.Dataset):
        add((kg, A, _p(t)))
    add((kg, _p(DCTERMS.title), T.string(f"FilTag knowledge graph of {ctx.data.spec}")))
    add((kg, _p(VOID.triples), T.integer(stats.triples)))
    add((kg, _p(VOID.uriSpace), T.string(mint.base)))
    add((kg, _p(VOID.rootResource), T.iri(ctx.run_iri)))
    if ctx.license:
        add((kg, _p(DCTERMS.license), T.iri(ctx.license)))
    for vocab in (FK._NS, SKOS, PROV, MLS, NNO, EO, VOID, DCAT, DCTERMS):
        add((kg, _p(VOID.vocabulary), T.iri(str(vocab))))
    add((kg, _p(VOID.subset), tg))
    add((tg, A, _p(FK.TagGraph)))
    add((tg, A, _p(VOID.Dataset)))
    # the tagging that asserts the tag graph's triples (fk:taggedWith among them), so that a query
    # tells two taggings in one store apart: GRAPH ?g { ?f fk:taggedWith ?c } ?g prov:wasGeneratedBy ?r
    add((tg, _p(PROV.wasGeneratedBy), T.iri(ctx.run_iri)))
    add((tg, _p(VOID.triples), T.integer(stats.tag_triples)))
    add((tg, _p(VOID.entities), T.integer(stats.tag_subjects)))
    add((tg, _p(VOID.distinctSubjects), T.integer(stats.tag_subjects)))
    add((tg, _p(VOID.properties), T.integer(stats.tag_properties)))
    add((tg, _p(VOID.classes), T.integer(stats.tag_classes)))
    if ctx.data.explanations_path is not None:
        es = T.iri(mint.explanation_set(ctx.run_iri))
        add((kg, _p(VOID.subset), es))
        add((es, A, _p(FK.ExplanationSet)))
        add((es, A, _p(VOID.Dataset)))
        add((es, _p(VOID.triples), T.integer(stats.explanation_triples)))
        add((es, _p(FK.explanationCount), T.integer(stats.explanations)))
        add((es, _p(FK.classificationCount), T.integer(stats.classifications)))
        add((es, _p(FK.explanationPassComplete), T.boolean(ctx.data.explanations_pending is None)))
    if stats.cluster_triples:
        cg = T.iri(mint.clusters_graph(ctx.run_iri))
        add((kg, _p(VOID.subset), cg))
        add((cg, A, _p(VOID.Dataset)))
        add((cg, _p(VOID.triples), T.integer(stats.cluster_triples)))
    return sorted(set(out))
