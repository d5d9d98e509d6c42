"""One named graph per image explanation, encoded fast from the run's explanations.

Each explanation record (one image under one tagging setting, perhaps perturbed,
perhaps Grad-CAM weighted) becomes the named graph ``E`` = the explanation's IRI::

    E a fk:ImageExplanation, eo:LocalExplanation ; prov:wasGeneratedBy R/explanations ;
      fk:classification C ; fk:setting S ; fk:predictedConcept C1 ; fk:lastLayerPredictedConcept C1 ;
      [fk:weighting "gradcam"] ;
      fk:hasActiveFilter E/active/{layer}/{f} … ; fk:hasVote E/vote/{class} … ;
      fk:hasLastLayerVote E/last-layer-vote/{class} … .
    E/active/{layer}/{f} a fk:ActiveFilter ; fk:filter F ; fk:activation 0.41 ; fk:rank 1 ; [fk:weight 0.2] .
    E/vote/{class} a fk:Vote ; fk:voteConcept C1 ; fk:voteScore 12.0 ; fk:voteCount 12 .
    E/last-layer-vote/{class} a fk:LastLayerVote ; fk:lastLayerVoteConcept C1 ; fk:voteScore 3.0 .

With ``explain --clusters``, ``E fk:hasClusterLabel E/cluster/{layer}/{rank}/label/{class}`` … too:
the labels of the image's feature-map clusters under E's setting (:meth:`ExplanationEncoder._cluster_labels`).

What the model itself said about the image (its top-5, the true class, the image
and its path, its feature-map clusters with their members, weights and map files) does not depend
on the setting, so it is stated once per image (variant), in the classification graph ``C``
(:meth:`ExplanationEncoder.classify`), written before the first explanation that links to it.

The encoder is the export's hot loop (hundreds of triples per line, millions
of lines), so it renders N-Triples text directly with pre-rendered
predicates and caches every IRI that repeats across lines (filters,
concepts, settings). :meth:`ExplanationEncoder.classify` and
:meth:`ExplanationEncoder.encode` are the one place that lists an explanation's
triples; the export runs them a batch of rows at a time (:func:`encode_batch`),
in worker processes with ``--jobs`` (:func:`iter_encoded_batches`), and joins
the batches with :class:`BatchMerger`.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cluster_atlas import split_map_ref
from . import terms as T
from .errors import ExplanationFileError
from .mint import segment
from .rundata import RowBatch, explanation_batches, explanation_records, iter_explanation_records
from .tag_graph import Context
from .vocab import DCTERMS, EO, FK, PROV, RDF

__all__ = [
    "BatchMerger",
    "EncodedBatch",
    "ExplanationEncoder",
    "SeenVariants",
    "encode_batch",
    "iter_encoded_batches",
    "iter_explanation_graphs",
    "read_explanation_lines",
    "relative_path",
]


def _p(term: Any) -> str:
    return T.iri(str(term))


_A = _p(RDF.type)
_DOUBLE = T.DOUBLE_TYPE
_INTEGER = T.INTEGER_TYPE
_C_EXPL = _p(FK.ImageExplanation)
_C_LOCAL = _p(EO.LocalExplanation)
_C_IMAGE = _p(FK.Image)
_C_ACTIVE = _p(FK.ActiveFilter)
_C_VOTE = _p(FK.Vote)
_C_LAST_VOTE = _p(FK.LastLayerVote)
_C_PRED = _p(FK.ModelPrediction)
_C_CLASSIFICATION = _p(FK.ImageClassification)
_CLASSIFICATION = _p(FK.classification)
_PRED_CONCEPT = _p(FK.predictionConcept)
_C_PERT = _p(FK.Perturbation)
_GENERATED = _p(PROV.wasGeneratedBy)
_SETTING = _p(FK.setting)
_IMAGE = _p(FK.image)
_IMAGE_PATH = _p(FK.imagePath)
_IMAGE_INDEX = _p(FK.imageIndex)
_SHA = _p(FK.sha256)
_TRUE = _p(FK.trueConcept)
_TOP = _p(FK.modelTopConcept)
_PRED = _p(FK.predictedConcept)
_PRED_LAST = _p(FK.lastLayerPredictedConcept)
_WEIGHTING = _p(FK.weighting)
_PERT = _p(FK.perturbation)
_PERT_KIND = _p(FK.perturbationKind)
_PERT_PARAM = _p(FK.perturbationParameter)
_SEED = _p(FK.seed)
_HAS_PRED = _p(FK.hasModelPrediction)
_HAS_ACTIVE = _p(FK.hasActiveFilter)
_HAS_VOTE = _p(FK.hasVote)
_HAS_LAST = _p(FK.hasLastLayerVote)
_FILTER = _p(FK.filter)
_VOTE_CONCEPT = _p(FK.voteConcept)
_LAST_VOTE_CONCEPT = _p(FK.lastLayerVoteConcept)
_ACTIVATION = _p(FK.activation)
_RANK = _p(FK.rank)
_WEIGHT = _p(FK.weight)
_SCORE = _p(FK.voteScore)
_COUNT = _p(FK.voteCount)
_PROB = _p(FK.probability)
_CLASS_LABEL = _p(FK.classLabel)
_C_CLUSTER = _p(FK.FeatureMapCluster)
_C_CLUSTER_LABEL = _p(FK.ClusterLabel)
_C_CLUSTER_MAP = _p(FK.ClusterMap)
_HAS_CLUSTER = _p(FK.hasCluster)
_CLUSTER_LAYER = _p(FK.clusterLayer)
_CLUSTER_MAP = _p(FK.clusterMap)
_CLUSTER_WEIGHT = _p(FK.clusterWeight)
_HAS_CLUSTER_LABEL = _p(FK.hasClusterLabel)
_LABELLED = _p(FK.labelledCluster)
_MEMBER_COUNT = _p(FK.memberCount)
_MEMBER = _p(FK.memberFilter)
_CLUSTER_CONCEPT = _p(FK.clusterConcept)
_LABEL_SCORE = _p(FK.clusterLabelScore)
_FILE_PATH = _p(FK.filePath)
_MAP_REGION = _p(FK.mapRegion)
_FORMAT = _p(DCTERMS.format)
_PNG = T.string("image/png")


_END = " .\n"


def cluster_rows(clusters: dict[str, Any] | None) -> dict[str, dict[int, dict[str, Any]]]:
    """A record's ``"clusters"`` as layer -> rank -> cluster; a rank listed twice: the last wins
    (its members, map and labels all replace the earlier entry's)."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for layer, rows in (clusters or {}).items():
        by_rank = out[str(layer)] = {}
        for row in rows:
            by_rank[int(row["rank"])] = row
    return out


def _dbl(x: Any) -> str | None:
    v = float(x)
    # v - v is 0.0 exactly for finite v, NaN for NaN and infinities
    return f'"{v!r}"^^{_DOUBLE}' if v - v == 0.0 else None


class SeenVariants:
    """The image variants whose classification graph was written, in memory flat in their number.

    An image variant is named by its classification IRI ``R/classification/{index}[/{variant}]``;
    for a plain decimal index (every explanation pass writes one) it is one bit at the index in
    a bit set per variant (125 KiB per million images), any other IRI is kept as it is.
    Supports ``in`` and :meth:`add`, like the ``set`` it replaces.
    """

    def __init__(self, run_iri: str) -> None:
        self._prefix = f"{run_iri}/classification/"
        self._bits: dict[str, bytearray] = {}
        self._other: set[str] = set()

    def _slot(self, iri: str) -> tuple[bytearray, int, int] | None:
        if not iri.startswith(self._prefix):
            return None
        index, _, variant = iri[len(self._prefix):].partition("/")
        # canonical decimal numbers only (so one index has one slot), below 10**8 (a bit set <= 12 MiB)
        plain = index.isascii() and index.isdigit() and len(index) <= 8
        if not plain or (index[0] == "0" and index != "0"):
            return None
        i = int(index)
        bits = self._bits.get(variant)
        if bits is None:
            bits = self._bits[variant] = bytearray()
        return bits, i >> 3, 1 << (i & 7)

    def __contains__(self, iri: object) -> bool:
        slot = self._slot(iri) if isinstance(iri, str) else None
        if slot is None:
            return iri in self._other
        bits, byte, mask = slot
        return byte < len(bits) and bool(bits[byte] & mask)

    def add(self, iri: str) -> None:
        """Mark the variant named ``iri`` as written."""
        slot = self._slot(iri)
        if slot is None:
            self._other.add(iri)
            return
        bits, byte, mask = slot
        if byte >= len(bits):
            bits.extend(bytes(max(byte + 1 - len(bits), len(bits))))  # grow geometrically
        bits[byte] |= mask


#: Predicates of an explanation node in the order its lines sort in (checked by a test).
E_PREDICATE_ORDER = (
    "type", "wasGeneratedBy", "classification", "hasActiveFilter", "hasClusterLabel", "hasLastLayerVote",
    "hasVote", "lastLayerPredictedConcept", "predictedConcept", "setting", "weighting",
)


class ExplanationEncoder:
    """Turns explanation records into named graphs of sorted N-Quads (or N-Triples) text.

    The lines of a graph come out sorted without sorting them: each subject's
    lines are emitted in predicate order (:data:`E_PREDICATE_ORDER` and the
    fixed orders below), and only the subjects are sorted, a few dozen per
    explanation instead of hundreds of lines.

    Args:
        ctx: the export's shared context; the encoder registers in it every
            class, filter and setting it references, so the tag graph,
            written afterwards, describes them all.
        graphs: end each line with the explanation's graph name (N-Quads);
            ``False`` writes N-Triples lines.
    """

    def __init__(self, ctx: Context, *, graphs: bool = True) -> None:
        self.ctx = ctx
        self.mint = ctx.mint
        self.graphs = graphs
        self._x = T.iri(ctx.explanation_run_iri)
        self._filters: dict[str, dict[int, str]] = {}
        self._segments: dict[str, str] = {}
        # classification graphs written so far: one per image variant, whatever the settings
        self._classified: SeenVariants | set[str] = SeenVariants(ctx.run_iri)
        self._label_literals: dict[str, str] = {}
        self._layers: dict[str, str] = {}
        #: filters referenced for the first time (by this encoder), for :func:`encode_batch`
        self.new_filters: list[tuple[str, int]] = []
        meta = ctx.data.explanations_meta or {}
        ds = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
        self._root: str | None = str(ds["root"]) if ds.get("root") else None

    def _filter(self, layer: str, index: int) -> str:
        by_index = self._filters.get(layer)
        if by_index is None:
            by_index = self._filters[layer] = {}
        got = by_index.get(index)
        if got is None:
            got = by_index[index] = T.iri(self.mint.filter(self.ctx.model_iri, layer, index))
            self.ctx.filter_seen(layer, index)
            self.new_filters.append((layer, index))
        return got

    def classify(self, rec: dict[str, Any]) -> tuple[str, str, int] | None:
        """The model's classification of the record's image as ``(graph IRI, text, line count)``,
        or ``None`` when an earlier record of the same image (variant) already gave it.

        The graph ``C`` holds what does not depend on the tagging setting or the vote
        weighting, stated once per image variant::

            C a fk:ImageClassification ; fk:image I ; fk:imagePath "…" ; fk:imageIndex 0 ;
              fk:trueConcept C1 ; fk:modelTopConcept C2 ; fk:hasModelPrediction C/model-prediction/1 … ;
              [fk:perturbation C/perturbation] .
            I a fk:Image ; fk:sha256 "…" .
            C/model-prediction/{r} a fk:ModelPrediction ; fk:rank r ; fk:predictionConcept C2 ;
              fk:probability p ; fk:classLabel "…" .

        and, with ``explain --clusters``, the variant's feature-map clusters ``K = C/cluster/{layer}/{rank}``
        (every filter of a clustered layer in one of them) and their map files::

            C fk:hasCluster K … .
            K a fk:FeatureMapCluster ; fk:clusterLayer L ; fk:rank 1 ; fk:clusterWeight 0.41 ;
              fk:memberCount 3 ; fk:memberFilter F3, F7, F12 ; [fk:clusterMap M] .
            M a fk:ClusterMap ; fk:filePath "clusters/maps/…/clean.png" ; dcterms:format "image/png" ;
              fk:mapRegion "xywh=0,56,28,28" .

        ``M = R/file/{atlas path}#xywh=x,y,w,h``: the cluster's region of the image variant's map
        atlas (one PNG holds all its clusters' maps), a Media Fragments IRI, so each cluster has
        its own map node and dereferencing it gets the atlas file. A map stored without a
        region (runs before the atlas: one file per map) is ``R/file/{path}``, without
        ``fk:mapRegion``.

        The record is the first of its variant (in file order); members, weight, rank and map are
        the same in every record of a variant (docs/cluster-method.md: they are computed once per
        image variant, before any setting's labels), so which record gives them does not matter.
        """
        ctx, mint = self.ctx, self.mint
        concept = ctx.concept
        index = rec["index"]
        pert = rec.get("perturbation") or None
        c_iri = mint.classification(ctx.run_iri, index, pert)
        if c_iri in self._classified:
            return None
        self._classified.add(c_iri)
        c = f"<{c_iri}>"
        end = f" {c} .\n" if self.graphs else _END
        lines = [f"{c} {_A} {_C_CLASSIFICATION}{end}"]
        add = lines.append
        label_literals = self._label_literals
        for r, pred in enumerate(rec.get("model_top") or (), 1):
            label = pred.get("label")
            if label is not None:
                label = str(label)
            cc = concept(str(pred["class_id"]), label)
            if r == 1:
                add(f"{c} {_TOP} {cc}{end}")
            m = f"<{mint.model_prediction(c_iri, r)}>"
            add(f"{c} {_HAS_PRED} {m}{end}")
            add(f"{m} {_A} {_C_PRED}{end}")
            if label is not None:
                lit = label_literals.get(label)
                if lit is None:
                    lit = T.string(label)
                    if len(label_literals) < 100_000:  # the model's class labels, a few thousand
                        label_literals[label] = lit
                add(f"{m} {_CLASS_LABEL} {lit}{end}")
            add(f"{m} {_PRED_CONCEPT} {cc}{end}")
            prob = pred.get("prob")
            lit = _dbl(prob) if prob is not None else None
            if lit:
                add(f"{m} {_PROB} {lit}{end}")
            add(f'{m} {_RANK} "{r}"^^{_INTEGER}{end}')
        if pert:
            pn = f"<{mint.perturbation(c_iri)}>"
            add(f"{c} {_PERT} {pn}{end}")
            add(f"{pn} {_A} {_C_PERT}{end}")
            if pert.get("kind") is not None:
                add(f"{pn} {_PERT_KIND} {T.string(str(pert['kind']))}{end}")
            lit = T.double(pert.get("param"))
            if lit:
                add(f"{pn} {_PERT_PARAM} {lit}{end}")
            if isinstance(pert.get("seed"), int) and not isinstance(pert.get("seed"), bool):
                add(f'{pn} {_SEED} "{int(pert["seed"])}"^^{_INTEGER}{end}')
        sha = rec.get("sha256")
        if sha:
            img = f"<{mint.image(str(sha))}>"
            add(f"{c} {_IMAGE} {img}{end}")
            add(f"{img} {_A} {_C_IMAGE}{end}")
            add(f"{img} {_SHA} {T.string(str(sha).lower())}{end}")
        if isinstance(index, int) and not isinstance(index, bool):
            add(f'{c} {_IMAGE_INDEX} "{index}"^^{_INTEGER}{end}')
        path = rec.get("image")
        if path is not None:
            add(f"{c} {_IMAGE_PATH} {T.string(self._path(str(path)))}{end}")
        cid = rec.get("true_class")
        if cid is not None:
            add(f"{c} {_TRUE} {concept(str(cid))}{end}")
        # the image variant's feature-map clusters and their map files (the same under every setting)
        prefix = mint.cluster_prefix(c_iri)
        for layer, by_rank in cluster_rows(rec.get("clusters")).items():
            lp = f"<{prefix}{mint.layer_segment(layer)}/"
            layer_iri = self._layer(layer)
            for rank, row in by_rank.items():
                k = f"{lp}{rank}>"
                add(f"{c} {_HAS_CLUSTER} {k}{end}")
                add(f"{k} {_A} {_C_CLUSTER}{end}")
                add(f"{k} {_CLUSTER_LAYER} {layer_iri}{end}")
                add(f'{k} {_RANK} "{rank}"^^{_INTEGER}{end}')
                w = _dbl(row["weight"]) if row.get("weight") is not None else None
                if w:
                    add(f"{k} {_CLUSTER_WEIGHT} {w}{end}")
                members = {int(f) for f in row["filters"]}
                add(f'{k} {_MEMBER_COUNT} "{len(members)}"^^{_INTEGER}{end}')
                for f in members:
                    add(f"{k} {_MEMBER} {self._filter(layer, f)}{end}")
                path = row.get("map")
                if path:
                    file, region = split_map_ref(str(path))
                    m = f"<{mint.cluster_map(ctx.run_iri, file, region and region.fragment)}>"
                    add(f"{k} {_CLUSTER_MAP} {m}{end}")
                    add(f"{m} {_A} {_C_CLUSTER_MAP}{end}")
                    add(f"{m} {_FORMAT} {_PNG}{end}")
                    add(f"{m} {_FILE_PATH} {T.string(file)}{end}")
                    if region is not None:
                        add(f"{m} {_MAP_REGION} {T.string(region.fragment)}{end}")
        unique = sorted(set(lines))
        return c_iri, "".join(unique), len(unique)

    def _path(self, path: str) -> str:
        """The image path to publish: relative to the dataset root unless absolute paths were asked for."""
        if self.ctx.absolute_paths:
            return path
        return relative_path(path, self._root)

    def encode(self, rec: dict[str, Any]) -> tuple[str, str, int]:
        """One explanation record as ``(graph IRI, text, line count)``.

        The text holds unique, sorted lines, each ending in ``" <E> .\\n"``
        (N-Quads, ``E`` the graph IRI) or ``" .\\n"`` (N-Triples). What the model
        itself said about the image is in its classification graph (:meth:`classify`),
        which ``E`` links with ``fk:classification``.

        Raises:
            KeyError, TypeError, ValueError: the record lacks a field or has
                one of the wrong type (:func:`iter_explanation_graphs` turns
                these into :class:`ExplanationFileError` naming the line).
        """
        ctx, mint = self.ctx, self.mint
        concepts, concept = ctx.concepts, ctx.concept
        method = str(rec["method"])
        param = rec.get("param")
        param = "" if param is None else str(param)
        pert = rec.get("perturbation") or None
        weighting = rec.get("weighting") or None
        index = rec["index"]
        e_iri = mint.explanation(ctx.run_iri, index, method, param, pert, weighting)
        e = f"<{e_iri}>"
        cut = len(e) - 1  # every other subject of the graph is "<E/...>": sort on "/..."
        end = f" {e} .\n" if self.graphs else _END
        ctx.explained_settings.add((method, param))
        # subject key ("/active/...>") -> its lines in predicate order, and how many
        blocks: dict[str, str] = {}
        n = 0
        # subject key -> (predicate linking E to it, its rendered IRI)
        links: dict[str, tuple[str, str]] = {}

        # active filters: type, activation, filter, rank, weight
        prefix = mint.active_filter_prefix(e_iri)
        layer_segment, filters = mint.layer_segment, self._filters
        for layer, rows in (rec.get("active_filters") or {}).items():
            by_index = filters.get(layer)
            lp = f"<{prefix}{layer_segment(layer)}/"
            for row in rows:
                f = int(row["filter"])
                fi = by_index.get(f) if by_index is not None else None
                if fi is None:
                    fi = self._filter(layer, f)
                    by_index = filters[layer]
                a = f"{lp}{f}>"
                v = float(row["value"])
                rank = row.get("rank")
                w = row.get("weight")
                if v - v == 0.0 and rank is not None and w is None:  # the common case, one string
                    text = (
                        f"{a} {_A} {_C_ACTIVE}{end}{a} {_ACTIVATION} \"{v!r}\"^^{_DOUBLE}{end}"
                        f"{a} {_FILTER} {fi}{end}{a} {_RANK} \"{int(rank)}\"^^{_INTEGER}{end}"
                    )
                    lines = 4
                else:
                    text = f"{a} {_A} {_C_ACTIVE}{end}"
                    lines = 2
                    if v - v == 0.0:
                        text += f'{a} {_ACTIVATION} "{v!r}"^^{_DOUBLE}{end}'
                        lines += 1
                    text += f"{a} {_FILTER} {fi}{end}"
                    if rank is not None:
                        text += f'{a} {_RANK} "{int(rank)}"^^{_INTEGER}{end}'
                        lines += 1
                    if w is not None:
                        w = float(w)
                        if w - w == 0.0:
                            text += f'{a} {_WEIGHT} "{w!r}"^^{_DOUBLE}{end}'
                            lines += 1
                key = a[cut:]
                if key in blocks:  # a filter listed twice: the last entry wins
                    n -= blocks[key].count("\n")
                blocks[key] = text
                links[key] = (_HAS_ACTIVE, a)
                n += lines

        # votes over all layers: type, concept, voteCount, voteScore
        segments = self._segments
        votes = rec.get("votes") or {}
        counts = rec.get("vote_counts") or {}
        vp = f"<{mint.vote_prefix(e_iri)}"
        for cid in dict.fromkeys([*votes, *counts]) if counts.keys() != votes.keys() else votes:
            seg = segments.get(cid)
            if seg is None:
                seg = segments[cid] = segment(cid)
            v_iri = f"{vp}{seg}>"
            c = concepts.get(cid) or concept(cid)
            k = counts.get(cid)
            sc = votes.get(cid)
            if sc is not None:
                sc = float(sc)
            if k is not None and sc is not None and sc - sc == 0.0:
                text = (
                    f"{v_iri} {_A} {_C_VOTE}{end}{v_iri} {_VOTE_CONCEPT} {c}{end}"
                    f'{v_iri} {_COUNT} "{int(k)}"^^{_INTEGER}{end}{v_iri} {_SCORE} "{sc!r}"^^{_DOUBLE}{end}'
                )
                lines = 4
            else:
                text = f"{v_iri} {_A} {_C_VOTE}{end}{v_iri} {_VOTE_CONCEPT} {c}{end}"
                lines = 2
                if k is not None:
                    text += f'{v_iri} {_COUNT} "{int(k)}"^^{_INTEGER}{end}'
                    lines += 1
                if sc is not None and sc - sc == 0.0:
                    text += f'{v_iri} {_SCORE} "{sc!r}"^^{_DOUBLE}{end}'
                    lines += 1
            key = v_iri[cut:]
            blocks[key] = text
            links[key] = (_HAS_VOTE, v_iri)
            n += lines
        lvp = f"<{mint.last_layer_vote_prefix(e_iri)}"
        for cid, sc in (rec.get("votes_last_layer") or {}).items():
            seg = segments.get(cid)
            if seg is None:
                seg = segments[cid] = segment(cid)
            v_iri = f"{lvp}{seg}>"
            c = concepts.get(cid) or concept(cid)
            text = f"{v_iri} {_A} {_C_LAST_VOTE}{end}{v_iri} {_LAST_VOTE_CONCEPT} {c}{end}"
            lines = 2
            if sc is not None:
                sc = float(sc)
                if sc - sc == 0.0:
                    text += f'{v_iri} {_SCORE} "{sc!r}"^^{_DOUBLE}{end}'
                    lines += 1
            key = v_iri[cut:]
            blocks[key] = text
            links[key] = (_HAS_LAST, v_iri)
            n += lines

        # feature-map clusters (explain --clusters): their labels under E's setting; the clusters
        # themselves are in the classification graph C
        c_iri = mint.classification(ctx.run_iri, index, pert)
        clusters = rec.get("clusters")
        if clusters:
            n += self._cluster_labels(e_iri, c_iri, clusters, cut, end, blocks, links)

        # the explanation node E (key ">"), predicates in E_PREDICATE_ORDER; E's links follow
        # the sorted subject keys, whose groups ("/active/" < "/cluster/" < "/last-layer-vote/" <
        # "/model-prediction/" < "/vote/") are in the order of their predicates
        keys = sorted(blocks)
        out = [
            f"{e} {_A} {_C_LOCAL}{end}{e} {_A} {_C_EXPL}{end}{e} {_GENERATED} {self._x}{end}"
            f"{e} {_CLASSIFICATION} <{c_iri}>{end}"
        ]
        n += 4
        for k in keys:
            link = links.get(k)
            if link is not None:
                out.append(f"{e} {link[0]} {link[1]}{end}")
        n += len(links)
        tail = []
        cid = rec.get("prediction_last_layer")
        if cid is not None:
            tail.append(f"{e} {_PRED_LAST} {concept(str(cid))}{end}")
        cid = rec.get("prediction")
        if cid is not None:
            tail.append(f"{e} {_PRED} {concept(str(cid))}{end}")
        tail.append(f"{e} {_SETTING} {ctx.setting(method, param)}{end}")
        if weighting:
            tail.append(f"{e} {_WEIGHTING} {T.string(str(weighting))}{end}")
        n += len(tail)
        out += tail
        # E's key ">" sorts after every "/..." key: E's lines come last
        return e_iri, "".join(blocks[k] for k in keys) + "".join(out), n

    def _layer(self, layer: str) -> str:
        got = self._layers.get(layer)
        if got is None:
            got = self._layers[layer] = T.iri(self.mint.layer(self.ctx.model_iri, layer))
        return got

    def _cluster_labels(
        self, e_iri: str, c_iri: str, clusters: dict[str, Any], cut: int,
        end: str, blocks: dict[str, str], links: dict[str, tuple[str, str]],
    ) -> int:
        """Add the labels of a record's ``"clusters"`` to ``blocks`` and ``links``; returns how many
        lines were added (``c_iri``: the record's classification ``C``). The clusters
        ``K = C/cluster/{layer}/{rank}`` are stated once per image
        variant, in its classification graph (:meth:`classify`); only their labels depend on the
        setting. Per label ``N = E/cluster/{layer}/{rank}/label/{class}``::

            E fk:hasClusterLabel N … .
            N a fk:ClusterLabel ; fk:labelledCluster K ; fk:clusterConcept C ; fk:rank 1 ;
              fk:clusterLabelScore 0.73 .

        A rank listed twice: the last entry wins, labels included (:func:`cluster_rows`); a concept
        listed twice in one cluster: its last entry wins.
        """
        ctx, mint = self.ctx, self.mint
        concepts, concept = ctx.concepts, ctx.concept
        e_prefix = mint.cluster_prefix(e_iri)
        c_prefix = mint.cluster_prefix(c_iri)
        n = 0
        for layer, by_rank in cluster_rows(clusters).items():
            seg = mint.layer_segment(layer)
            for rank, row in by_rank.items():
                k = f"<{c_prefix}{seg}/{rank}>"
                lp = f"<{e_prefix}{seg}/{rank}/label/"
                for r, lab in enumerate(row.get("concepts") or (), 1):
                    cid = str(lab["class_id"])
                    li = f"{lp}{segment(cid)}>"
                    ll = [f"{li} {_A} {_C_CLUSTER_LABEL}{end}",
                          f"{li} {_CLUSTER_CONCEPT} {concepts.get(cid) or concept(cid)}{end}",
                          f"{li} {_LABELLED} {k}{end}",
                          f'{li} {_RANK} "{r}"^^{_INTEGER}{end}']
                    sc = _dbl(lab["score"]) if lab.get("score") is not None else None
                    if sc:
                        ll.append(f"{li} {_LABEL_SCORE} {sc}{end}")
                    key = li[cut:]
                    if key in blocks:  # a concept listed twice: the last entry wins
                        n -= blocks[key].count("\n")
                    ll.sort()
                    blocks[key] = "".join(ll)
                    links[key] = (_HAS_CLUSTER_LABEL, li)
                    n += len(ll)
        return n


def relative_path(path: str, root: str | None) -> str:
    """``path`` relative to the dataset ``root`` when it lies below it, else its file name.

    A relative path stays as it is; no machine-local prefix is ever returned.

    Example:
        >>> relative_path("/data/val/n01/a.jpg", "/data/val"), relative_path("/tmp/x/b.jpg", "/data")
        ('n01/a.jpg', 'b.jpg')
    """
    p = path.replace("\\", "/")
    if not p.startswith("/") and not (len(p) > 2 and p[1] == ":"):
        return path
    if root:
        r = root.replace("\\", "/").rstrip("/") + "/"
        if p.startswith(r) and len(p) > len(r):
            return p[len(r):]
    return p.rstrip("/").rsplit("/", 1)[-1] or path


def read_explanation_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-blank line of ``explanations.jsonl``, streamed.

    Raises:
        ExplanationFileError: a line is not a JSON object (file and line named).
    """
    return explanation_records(path)


def _bad_record(path: Any, n: int, exc: Exception) -> ExplanationFileError:
    what = f"missing field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
    return ExplanationFileError(
        f"{path}:{n}: not an explanation record ({what}); regenerate it with `filtag-kg explain`"
    )


_RECORD_ERRORS = (KeyError, TypeError, ValueError, AttributeError)


def iter_explanation_graphs(
    ctx: Context, *, graphs: bool = True
) -> Iterator[tuple[str, str, int, bool, dict[str, Any]]]:
    """Encode every explanation of the run (none if it has none), streamed, graph by graph.

    Yields ``(graph IRI, text, triple count, is_explanation, record)``: for each record
    first the image's classification graph (the first time that image variant
    occurs; ``is_explanation`` false), then its explanation graph (see
    :meth:`ExplanationEncoder.encode`). :func:`iter_encoded_batches` gives the
    same lines a batch of rows at a time (the export's route).

    Raises:
        ExplanationFileError: a line is malformed (file, line and field named).
    """
    path = ctx.data.explanations_path
    enc = ExplanationEncoder(ctx, graphs=graphs)
    for n, rec in iter_explanation_records(ctx.data):
        try:
            got = enc.classify(rec)
            if got is not None:
                yield (*got, False, rec)
            yield (*enc.encode(rec), True, rec)
        except _RECORD_ERRORS as exc:
            raise _bad_record(path, n, exc) from None


@dataclass
class EncodedBatch:
    """The graphs of one :class:`~.rundata.RowBatch` as UTF-8 text, and what they registered.

    ``data`` holds, per row in order, the row's classification graph (when the
    row is the first of its image variant within the batch) and its explanation
    graph. Another batch may already have given a variant's classification:
    :class:`BatchMerger` drops such repeats, using ``classifications``.

    Attributes:
        data: the text, UTF-8.
        size: its length in bytes.
        lines: its line count.
        explanations: explanation graphs in it.
        classifications: ``(start byte, end byte, graph IRI, line count)`` per classification graph.
        concepts: ``(class id, label)`` of the concepts first referenced, in order.
        settings: tagging settings first referenced, in order.
        explained: the settings explanations were made under.
        filters: ``(layer, filter)`` first referenced.
        spill: set by a worker process: the file that holds ``data`` instead (``data`` is then empty,
            so that the text does not travel through a pipe; the writer copies it in the kernel).
    """

    data: bytes
    size: int = 0
    lines: int = 0
    explanations: int = 0
    classifications: list[tuple[int, int, str, int]] = field(default_factory=list)
    concepts: list[tuple[str, str | None]] = field(default_factory=list)
    settings: list[tuple[str, str]] = field(default_factory=list)
    explained: list[tuple[str, str]] = field(default_factory=list)
    filters: list[tuple[str, int]] = field(default_factory=list)
    spill: str | None = None


def encode_batch(enc: ExplanationEncoder, batch: RowBatch, *, spill: str | None = None) -> EncodedBatch:
    """Encode one batch of rows (:meth:`ExplanationEncoder.classify` + :meth:`~ExplanationEncoder.encode`
    per row), as the same text as :func:`iter_explanation_graphs` except that a classification
    graph is repeated when an earlier batch already gave it (see :class:`BatchMerger`).

    Args:
        spill: write the text to this file instead of keeping it (:attr:`EncodedBatch.spill`).

    Raises:
        ExplanationFileError: a row is malformed (file, row and field named).
    """
    ctx = enc.ctx
    n_concepts, n_settings, explained = len(ctx.concepts), len(ctx.settings), set(ctx.explained_settings)
    enc.new_filters = []
    seen, enc._classified = enc._classified, set()  # this batch's variants; the merge sees all
    pieces: list[bytes] = []
    spans: list[tuple[int, int, str, int]] = []
    at = lines = rows = 0
    try:
        for n, rec in batch.records():
            try:
                got = enc.classify(rec)
                _, text, count = enc.encode(rec)
            except _RECORD_ERRORS as exc:
                raise _bad_record(batch.path, n, exc) from None
            if got is not None:
                iri, ctext, ccount = got
                data = ctext.encode("utf-8")
                spans.append((at, at + len(data), iri, ccount))
                pieces.append(data)
                at += len(data)
                lines += ccount
            data = text.encode("utf-8")
            pieces.append(data)
            at += len(data)
            lines += count
            rows += 1
    finally:
        enc._classified = seen
    if spill is not None:
        with open(spill, "wb") as fh:
            fh.writelines(pieces)
        data = b""
    else:
        data = b"".join(pieces)
    return EncodedBatch(
        data=data, size=at, lines=lines, explanations=rows, classifications=spans,
        concepts=[(cid, ctx.labels.get(cid)) for cid in list(ctx.concepts)[n_concepts:]],
        settings=list(ctx.settings[n_settings:]),
        explained=sorted(ctx.explained_settings - explained),
        filters=enc.new_filters, spill=spill,
    )


class BatchMerger:
    """Joins :class:`EncodedBatch` es, in row order, into the export's explanation graphs.

    Drops a classification graph an earlier batch gave, and registers in the
    export's context what each batch referenced (in the order a single pass
    would have), so the result does not depend on how many processes encoded.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.seen = SeenVariants(ctx.run_iri)

    def merge(self, batch: EncodedBatch) -> tuple[list[tuple[int, int]], int, int]:
        """The byte ranges of the batch's text to write, their line count, and the batch's
        classification graphs kept."""
        ctx = self.ctx
        for cid, label in batch.concepts:
            ctx.concept(cid, label)
        for method, param in batch.settings:
            ctx.setting(method, param)
        ctx.explained_settings.update(batch.explained)
        for layer, index in batch.filters:
            ctx.filter_seen(layer, index)
        ranges: list[tuple[int, int]] = []
        at, lines, kept = 0, batch.lines, 0
        for start, end, iri, count in batch.classifications:
            if iri in self.seen:
                if start > at:
                    ranges.append((at, start))
                at = end
                lines -= count
            else:
                self.seen.add(iri)
                kept += 1
        if batch.size > at:
            ranges.append((at, batch.size))
        return ranges, lines, kept


_WORKER: tuple[ExplanationEncoder, str] | None = None


def _start_worker(ctx: Context, graphs: bool, spill_dir: str) -> None:
    global _WORKER
    _WORKER = (ExplanationEncoder(ctx, graphs=graphs), spill_dir)


def _encode_in_worker(batch: RowBatch) -> EncodedBatch:
    if _WORKER is None:  # pragma: no cover - the pool's initializer sets it
        raise RuntimeError("export worker not started")
    enc, spill_dir = _WORKER
    return encode_batch(enc, batch, spill=os.path.join(spill_dir, f"{batch.first:012d}.nq"))


def iter_encoded_batches(ctx: Context, *, graphs: bool = True, jobs: int = 1) -> Iterator[EncodedBatch]:
    """Encode every explanation of the run a :class:`~.rundata.RowBatch` at a time, in row order.

    With ``jobs`` > 1, that many worker processes (forked, so they share the
    context as it is now) encode the batches while this process reads the next
    ones; at most ``2 * jobs`` batches are in flight, so memory does not grow
    with the number of rows. Merge the results with :class:`BatchMerger`: the
    merged text is the same for every ``jobs``. Where processes cannot be
    forked (Windows), the batches are encoded here.

    Raises:
        ExplanationFileError: a row is malformed (file, row and field named).
    """
    path = ctx.data.explanations_path
    if path is None:
        return
    batches = explanation_batches(path)
    if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        enc = ExplanationEncoder(ctx, graphs=graphs)
        for b in batches:
            yield encode_batch(enc, b)
        return
    # fork: the workers inherit the context (WordNet, labels, caches) without pickling it
    spill_dir = tempfile.mkdtemp(prefix="filtag-kg-export-")
    pool = multiprocessing.get_context("fork").Pool(jobs, _start_worker, (ctx, graphs, spill_dir))
    try:
        pending: deque[Any] = deque()
        for b in batches:
            pending.append(pool.apply_async(_encode_in_worker, (b,)))
            if len(pending) >= 2 * jobs:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        pool.terminate()
        pool.join()
        shutil.rmtree(spill_dir, ignore_errors=True)
