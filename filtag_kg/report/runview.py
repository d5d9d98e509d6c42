"""What the report reads from a run folder, indexed for page writing.

Reads the same files as the RDF export (:func:`filtag_kg.rdf.rundata.read_run`:
``profile.json``, ``tags.tsv``, ``abstract_tags.tsv``, ``class_links.tsv``,
``explanations.json``) plus ``tags.json`` (filter entropy),
``hypernym_histogram.tsv``, ``evaluation.json`` and ``profile.npz`` (class
means and, with ``--top-images``, each filter's top images). Explanations are
not read here: they are streamed by the site writer.

Concepts: every class of the run and, for classes linked to WordNet, every
hypernym up to ``entity.n.01``. For each concept and tagging setting, the
filters of each layer that carry a tag of the concept or of a hyponym, with
how many such tags, computed as one matrix product per layer and setting.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FiltagError
from ..rdf.errors import RunFolderError
from ..rdf.rundata import AbstractRow, RunData, read_run
from ..tagging import Tag
from .htmlkit import file_key

if TYPE_CHECKING:
    from ..profile import Profile
    from ..wordnet import WordNet

__all__ = ["Concept", "ConceptIndex", "RunView", "setting_text"]

_WNID = re.compile(r"n\d{8}")

Setting = tuple[str, str]  # (method, param) as in tags.tsv


def setting_text(setting: Setting) -> str:
    """A setting for people: ``top-k 3``, ``top-percent 2.5``, ``above-average``."""
    method, param = setting
    return f"{method} {param}" if param else method


def _read_tsv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RunFolderError(f"cannot read {path}: {exc}; rewrite it with `filtag-kg abstract`") from None


def _read_json(path: Path) -> Any:
    """The run file's JSON, or ``None`` when the run has no such file (the export's reader)."""
    from ..rdf.rundata import _read_json as read

    return read(path) if path.is_file() else None


@dataclass
class RunView:
    """A run folder's content, indexed by filter.

    Attributes:
        run_dir: the folder.
        data: what :func:`~filtag_kg.rdf.rundata.read_run` read (model, layers,
            classes, tags, abstract tags, class links, explanation metadata).
        profile_meta: ``profile.json`` (``None`` for imported tags).
        profile: the profile with its arrays (``None`` without ``profile.npz``).
        entropy: layer -> per-filter entropy in bits (``tags.json``).
        histogram: rows of ``hypernym_histogram.tsv``.
        evaluation: ``evaluation.json``, if present.
        labels: class id -> label.
        tags_by_filter: (layer, filter) -> its tags, all settings.
        abstract_by_filter: (layer, filter) -> its abstract tags, all settings.
    """

    run_dir: Path
    data: RunData
    profile_meta: dict[str, Any] | None
    profile: Profile | None
    entropy: dict[str, list[float]]
    histogram: list[dict[str, str]]
    evaluation: dict[str, Any] | None
    labels: dict[str, str]
    tags_by_filter: dict[tuple[str, int], list[Tag]] = field(default_factory=dict)
    abstract_by_filter: dict[tuple[str, int], list[AbstractRow]] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> RunView:
        """Read a run folder.

        Raises:
            RunFolderError: no ``tags.tsv``, or an unreadable file (from ``read_run``).
            ProfileError: ``profile.npz`` or ``profile.json`` is corrupt.
        """
        data = read_run(run_dir)
        meta = _read_json(run_dir / "profile.json")
        profile = None
        if isinstance(meta, dict) and (run_dir / "profile.npz").is_file():
            from ..profile import Profile

            profile = Profile.load(run_dir)
        entropy: dict[str, list[float]] = {}
        tags_doc = _read_json(run_dir / "tags.json")
        if isinstance(tags_doc, dict):
            for lay in tags_doc.get("layers") or []:
                if isinstance(lay, dict) and isinstance(lay.get("entropy_bits"), list):
                    entropy[str(lay.get("name"))] = [float(x) for x in lay["entropy_bits"]]
        evaluation = _read_json(run_dir / "evaluation.json")
        labels: dict[str, str] = {}
        for c in data.classes:
            labels.setdefault(c.id, c.label)
        for cid, lab in data.model_classes:
            labels.setdefault(cid, lab)
        for t in data.tags:
            labels.setdefault(t.class_id, t.label)
        view = cls(
            run_dir=run_dir,
            data=data,
            profile_meta=meta if isinstance(meta, dict) else None,
            profile=profile,
            entropy=entropy,
            histogram=_read_tsv(run_dir / "hypernym_histogram.tsv"),
            evaluation=evaluation if isinstance(evaluation, dict) else None,
            labels=labels,
        )
        for t in data.tags:
            view.tags_by_filter.setdefault((t.layer, t.filter), []).append(t)
        for a in data.abstract:
            view.abstract_by_filter.setdefault((a.layer, a.filter), []).append(a)
        return view

    @property
    def settings(self) -> list[Setting]:
        """The tagging settings, in the run's order."""
        return list(self.data.settings)

    @property
    def layer_names(self) -> list[str]:
        """The layers, in model order."""
        return [lr.name for lr in self.data.layers]

    def label(self, class_id: str) -> str:
        """A class's label (the id itself when unknown)."""
        return self.labels.get(class_id, class_id)

    def wnid_of(self, class_id: str) -> str | None:
        """A class's linked wnid: ``class_links.tsv``, else the id itself when it is a wnid."""
        w = self.data.links.get(class_id)
        if w:
            return w
        return class_id if _WNID.fullmatch(class_id) else None

    def tagged_filters(self, layer: str) -> list[int]:
        """The filters of a layer with at least one tag (any setting), in index order."""
        return sorted(f for (lay, f) in self.tags_by_filter if lay == layer)

    def width(self, layer: str) -> int | None:
        """A layer's number of filters, if known."""
        for lr in self.data.layers:
            if lr.name == layer:
                return lr.width
        return None


@dataclass
class Concept:
    """A concept a page is written for: a WordNet synset, or a class without a synset.

    Attributes:
        key: its page's file stem (the wnid, or ``label-…`` for an unlinked class).
        wnid: the synset's wnid (``None`` for an unlinked class).
        name: the synset name (``rectangle.n.01``) or the class id.
        label: readable name (head lemma with spaces, or the class label).
        definition: WordNet's gloss ("" when unknown).
        depth: shortest hypernym-path depth (``entity.n.01`` = 0), ``None`` if unknown.
        class_ids: the run's classes linked to exactly this concept.
        parents, children: keys of the direct hypernyms / hyponyms within the run's hierarchy.
        classes_below: the run's classes at or under this concept.
    """

    key: str
    wnid: str | None
    name: str
    label: str
    definition: str = ""
    depth: int | None = None
    class_ids: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    classes_below: list[str] = field(default_factory=list)


@dataclass
class ConceptIndex:
    """The run's concepts and, per setting and layer, the filters representing each.

    Attributes:
        concepts: key -> concept, in a stable order (depth, then name).
        of_class: class id -> the key of its concept.
        filters: (setting, layer) -> (its tagged filters, [filters x concepts] counts of
            tags of each concept or a hyponym on each filter); see :meth:`filters_of`.
        notes: what could not be linked, for the overview page.
    """

    concepts: dict[str, Concept]
    of_class: dict[str, str]
    filters: dict[tuple[Setting, str], tuple[np.ndarray, np.ndarray]]
    notes: list[str] = field(default_factory=list)
    _column: dict[str, int] = field(default_factory=dict)
    _totals: dict[Setting, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, view: RunView, wordnet: WordNet | None) -> ConceptIndex:
        """Link the run's classes to WordNet and count the filters under each concept."""
        from ..wordnet import Hierarchy

        notes: list[str] = []
        class_ids = list(
            dict.fromkeys([c.id for c in view.data.classes] + [t.class_id for t in view.data.tags])
        )
        synset_of: dict[str, str] = {}
        info: dict[str, Any] = {}
        if wordnet is not None:
            missing = []
            for cid in class_ids:
                wnid = view.wnid_of(cid)
                if not wnid:
                    continue
                try:
                    s = wordnet.find(wnid)
                except FiltagError:
                    s = None
                if s is None:
                    missing.append(cid)
                    continue
                synset_of[cid] = s.name
                info[s.name] = s
            if missing:
                notes.append(
                    f"{len(missing)} class(es) have a wnid unknown to the WordNet source "
                    f"({wordnet.source}): {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}"
                )
        unlinked = [c for c in class_ids if c not in synset_of]
        if unlinked and wordnet is not None:
            notes.append(
                f"{len(unlinked)} class(es) are not linked to WordNet (run `filtag-kg abstract` to link "
                "labels)"
            )
        concepts: dict[str, Concept] = {}
        of_class: dict[str, str] = {}
        below: dict[str, list[str]] = defaultdict(list)  # concept key -> class ids at or under it
        if synset_of:
            h = Hierarchy.build(sorted(set(synset_of.values())), wordnet=wordnet)
            g = h.graph
            key_of = {n: g.nodes[n]["wnid"] for n in g.nodes}
            for n in g.nodes:
                s = info.get(n) or wordnet.synset(n)  # type: ignore[union-attr]
                concepts[key_of[n]] = Concept(
                    key=key_of[n],
                    wnid=key_of[n],
                    name=n,
                    label=str(g.nodes[n]["lemma"]).replace("_", " "),
                    definition=s.definition,
                    depth=int(g.nodes[n]["depth"]),
                    parents=sorted(key_of[p] for p in g.successors(n)),
                    children=sorted(key_of[c] for c in g.predecessors(n)),
                )
            for cid, name in synset_of.items():
                k = key_of[name]
                of_class[cid] = k
                concepts[k].class_ids.append(cid)
                for a in h.ancestors_or_self(name):
                    below[key_of[a]].append(cid)
        for cid in unlinked:
            k = "label-" + file_key(cid)
            of_class[cid] = k
            concepts[k] = Concept(key=k, wnid=None, name=cid, label=view.label(cid), class_ids=[cid])
            below[k].append(cid)
        position = {c: i for i, c in enumerate(class_ids)}
        for k, cids in below.items():
            concepts[k].classes_below = sorted(set(cids), key=position.__getitem__)
        order = sorted(concepts.values(), key=lambda c: (c.depth if c.depth is not None else 99, c.name))
        index = cls({c.key: c for c in order}, of_class, {}, notes)
        index._count_filters(view, class_ids, below)
        return index

    def _count_filters(self, view: RunView, class_ids: list[str], below: dict[str, list[str]]) -> None:
        keys = list(self.concepts)
        self._column = {k: j for j, k in enumerate(keys)}
        col = {c: i for i, c in enumerate(class_ids)}
        member = np.zeros((len(class_ids), len(keys)), dtype=np.float32)  # class under concept
        for j, k in enumerate(keys):
            for cid in below.get(k, ()):
                member[col[cid], j] = 1.0
        by: dict[tuple[Setting, str], list[Tag]] = defaultdict(list)
        for t in view.data.tags:
            by[((t.method, t.param), t.layer)].append(t)
        for (setting, layer), tags in by.items():
            filters = sorted({t.filter for t in tags})
            row = {f: i for i, f in enumerate(filters)}
            inc = np.zeros((len(filters), len(class_ids)), dtype=np.float32)
            for t in tags:
                inc[row[t.filter], col[t.class_id]] = 1.0
            # [tagged filters, concepts]: tags of the concept or a hyponym on each filter (a count is
            # at most the number of classes: exact in float32, kept as small integers)
            counts = np.rint(inc @ member).astype(np.uint16 if len(class_ids) < 2**16 else np.uint32)
            self.filters[(setting, layer)] = (np.asarray(filters, dtype=np.int64), counts)
            totals = self._totals.setdefault(setting, np.zeros(len(keys), dtype=np.int64))
            totals += np.count_nonzero(counts, axis=0)

    def filters_of(self, key: str, setting: Setting, layer: str) -> list[tuple[int, int]]:
        """The filters of ``layer`` representing concept ``key`` under ``setting``: ``(filter, tags
        of the concept or a hyponym on it)``, most tags first."""
        got = self.filters.get((setting, layer))
        j = self._column.get(key)
        if got is None or j is None:
            return []
        filters, counts = got
        column = counts[:, j]
        nz = np.flatnonzero(column)
        order = np.lexsort((filters[nz], -column[nz].astype(np.int64)))
        return [(int(filters[nz[i]]), int(column[nz[i]])) for i in order]

    def filter_count(self, key: str, setting: Setting) -> int:
        """How many filters (all layers) represent concept ``key`` under ``setting``."""
        totals = self._totals.get(setting)
        j = self._column.get(key)
        return 0 if totals is None or j is None else int(totals[j])
