"""The hypernym hierarchy above linked tags, and abstract tags derived from it.

Definitions used throughout (``A(t)`` is the set of ancestors-or-self of a
synset ``t``: ``t`` and everything reachable from it by hypernym and
instance-hypernym edges, up to ``entity.n.01``):

* **Coverage.** For a set ``T`` of tag synsets (the distinct linked synsets of
  one filter's tags), a synset ``s`` covers ``cover(s) = {t in T : s in A(t)}``.
* **Most specific common hypernyms.** The candidates are
  ``C = {s : |cover(s)| >= min_cover}`` (``min_cover`` is 2: a concept must
  unite at least two tags). The most specific common hypernyms are the
  *minimal* elements of ``C`` under the hypernym order: ``s in C`` such that
  no other ``c in C`` has ``s`` in ``A(c)``. Each is reported with
  ``|cover(s)|``. A tag synset itself can be one (tags ``dog`` and
  ``beagle`` give ``dog.n.01`` covering 2).
  Example: cornet, French_horn and trombone give ``brass.n.02`` (brass
  instrument) covering 3; ``wind_instrument.n.01`` also covers all three but
  is not minimal.
* **Closed abstractions** (``closed=True``): additionally every ``s in C`` that
  covers strictly more tags than each of its candidates below it, i.e. the
  most specific concept for each distinct covered set. For tabby, tiger_cat
  and beagle this adds ``carnivore.n.01`` (3) above ``domestic_cat.n.01`` (2).
* **Too general to tell.** Abstract tags at depth below
  :data:`MIN_ABSTRACT_DEPTH` (4) are never emitted: the top levels of WordNet
  (``entity``, ``physical_entity``, ``abstraction``, ``object``, ``attribute``,
  ``whole``, ``shape``, ...) unite almost anything, so ``whole.n.02`` for chiton
  and soccer ball tells a reader nothing. A filter whose only common hypernyms
  are that general has no abstract tag; the report counts such filters.
* **Depth** is the length of the shortest hypernym path to ``entity.n.01``
  (nltk's ``min_depth``). **Level d** of a synset is the set of synsets at
  position ``d`` (0 = root) on its hypernym paths.

The graph has an edge from each synset to each of its direct hypernyms
(``kind="hypernym"`` or ``"instance_hypernym"``), so ancestors of ``t`` are
``networkx.descendants(graph, t)``.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from .._io import atomic_open, write_json
from ..errors import DataError, FiltagError, UnknownSynsetError
from .mapping import ClassMapping, map_tag_classes
from .source import ROOT_SYNSET, WordNet, load_wordnet

if TYPE_CHECKING:
    from ..tagging import Tag

__all__ = [
    "ABSTRACT_COLUMNS",
    "AbstractionError",
    "DEFAULT_ROOTS",
    "HISTOGRAM_COLUMNS",
    "MIN_ABSTRACT_DEPTH",
    "OTHER",
    "UNLINKED",
    "AbstractTag",
    "AbstractionReport",
    "FilterAbstraction",
    "HistogramRow",
    "Hierarchy",
    "abstract_filter_tags",
    "abstract_tags",
    "hypernym_graph",
    "layer_histograms",
    "write_abstractions",
]

class AbstractionError(FiltagError, ValueError):
    """An abstraction parameter is invalid (min_cover, depth, depth with roots)."""


#: Default roots of the per-layer histogram: broad noun categories that
#: together cover all but one of the ImageNet-1k classes, and the demo shapes.
DEFAULT_ROOTS = (
    "animal.n.01",
    "plant.n.02",
    "fungus.n.01",
    "person.n.01",
    "food.n.01",
    "food.n.02",
    "artifact.n.01",
    "geological_formation.n.01",
    "shape.n.02",
)
OTHER = "(other)"
UNLINKED = "(unlinked)"

ABSTRACT_COLUMNS = (
    "method", "param", "layer", "filter", "synset", "wnid", "lemma", "depth", "cover",
    "linked_tags", "covered_ids", "covered_labels",
)
HISTOGRAM_COLUMNS = (
    "method", "param", "layer", "bucket", "wnid", "lemma", "depth", "tags", "filters", "share",
)
CLASS_LINK_COLUMNS = ("class_id", "label", "synset", "wnid", "how", "senses", "candidates", "reason")


MIN_ABSTRACT_DEPTH = 4
"""Shallowest depth of an emitted abstract tag: ``whole.n.02`` (3) and everything above
it (``entity`` 0, ``physical_entity``/``abstraction`` 1, ``object``/``attribute`` 2,
``shape`` 3) are too general; ``artifact``, ``living_thing`` (4) and below are kept."""


def hypernym_graph(synsets: Iterable[str], *, wordnet: WordNet | None = None) -> nx.DiGraph:
    """The hypernym graph of ``synsets`` up to ``entity.n.01``.

    Args:
        synsets: wnids or synset names (the linked tags' synsets).
        wordnet: the source; default :func:`load_wordnet`.

    Returns:
        A DiGraph with an edge child -> parent for every hypernym and
        instance-hypernym link. Node attributes: ``wnid``, ``lemma`` (head
        lemma), ``depth`` (shortest path length to the root), ``max_depth``,
        ``seed`` (whether it was given). Edge attribute ``kind``. Graph
        attributes ``root`` and ``source``.

    Raises:
        UnknownSynsetError: a synset is malformed or not in the source.
    """
    wn = wordnet if wordnet is not None else load_wordnet()
    g = nx.DiGraph(root=ROOT_SYNSET, source=wn.source)
    todo: list[str] = []
    for key in synsets:
        info = wn.synset(key)
        if info.name not in g:
            g.add_node(info.name, wnid=info.wnid, lemma=info.label, seed=True)
            todo.append(info.name)
        else:
            g.nodes[info.name]["seed"] = True
    while todo:
        name = todo.pop()
        info = wn.synset(name)
        for kind, parents in (("hypernym", info.hypernyms), ("instance_hypernym", info.instance_hypernyms)):
            for p in parents:
                if p not in g:
                    pinfo = wn.synset(p)
                    g.add_node(p, wnid=pinfo.wnid, lemma=pinfo.label, seed=False)
                    todo.append(p)
                g.add_edge(name, p, kind=kind)
    # parents before children: reverse of a topological order of child -> parent edges
    for n in reversed(list(nx.topological_sort(g))):
        ups = [g.nodes[p] for p in g.successors(n)]
        g.nodes[n]["depth"] = 1 + min(u["depth"] for u in ups) if ups else 0
        g.nodes[n]["max_depth"] = 1 + max(u["max_depth"] for u in ups) if ups else 0
    return g


@dataclass(frozen=True)
class AbstractTag:
    """A common hypernym of some of a filter's tags.

    Attributes:
        synset: the hypernym's synset name (e.g. ``"brass.n.02"``).
        wnid: its wnid.
        lemma: its head lemma (e.g. ``"brass"``).
        depth: its depth (``entity.n.01`` = 0).
        cover: how many of the filter's distinct tag synsets it covers.
        covered: the covered tag synsets, sorted.
    """

    synset: str
    wnid: str
    lemma: str
    depth: int
    cover: int
    covered: tuple[str, ...]


class Hierarchy:
    """A hypernym graph with cached ancestor sets and paths.

    Build it once for all synsets of a run (``Hierarchy.build(synsets)``) and
    ask it for abstractions of many filters.
    """

    def __init__(self, graph: nx.DiGraph) -> None:
        self.graph = graph
        self._anc: dict[str, frozenset[str]] = {}
        self._paths: dict[str, tuple[tuple[str, ...], ...]] = {}

    @classmethod
    def build(cls, synsets: Iterable[str], *, wordnet: WordNet | None = None) -> Hierarchy:
        """A hierarchy over ``synsets`` (see :func:`hypernym_graph`)."""
        return cls(hypernym_graph(synsets, wordnet=wordnet))

    def _node(self, name: str) -> str:
        if name not in self.graph:
            raise UnknownSynsetError(
                f"synset {name!r} is not in this hierarchy; build it over all synsets you query"
            )
        return name

    def ancestors_or_self(self, name: str) -> frozenset[str]:
        """``A(name)``: the synset and all its hypernyms."""
        got = self._anc.get(name)
        if got is None:
            got = frozenset(nx.descendants(self.graph, self._node(name))) | {name}
            self._anc[name] = got
        return got

    def depth(self, name: str) -> int:
        """Shortest-path depth of a synset (``entity.n.01`` = 0)."""
        return int(self.graph.nodes[self._node(name)]["depth"])

    def paths(self, name: str) -> tuple[tuple[str, ...], ...]:
        """All hypernym paths of ``name``, root first."""
        got = self._paths.get(name)
        if got is None:
            ups = sorted(self.graph.successors(self._node(name)))
            got = (
                tuple(p + (name,) for u in ups for p in self.paths(u)) if ups else ((name,),)
            )
            self._paths[name] = got
        return got

    def at_level(self, name: str, level: int) -> frozenset[str]:
        """Synsets at position ``level`` of the hypernym paths of ``name``.

        A synset whose paths are all shorter is its own representative (it
        is already more general than the level asked for).
        """
        if level < 0:
            raise AbstractionError(f"level must be >= 0, got {level}")
        found = {p[level] for p in self.paths(name) if len(p) > level}
        return frozenset(found) if found else frozenset({name})

    def common_hypernyms(
        self, synsets: Iterable[str], *, min_cover: int = 2, closed: bool = False,
        min_depth: int = MIN_ABSTRACT_DEPTH,
    ) -> list[AbstractTag]:
        """Most specific common hypernyms of a set of tag synsets (module docstring).

        Args:
            synsets: the tag synsets (repeats are counted once).
            min_cover: how many tags a concept must cover (>= 1; default 2).
            closed: also report broader concepts that cover more tags.
            min_depth: drop abstract tags shallower than this (0 keeps all).

        Returns:
            Abstract tags sorted by cover (largest first), then depth
            (deepest first), then name.
        """
        if min_cover < 1:
            raise AbstractionError(f"min_cover must be >= 1, got {min_cover}")
        tags = sorted(set(synsets))
        cover: dict[str, set[str]] = defaultdict(set)
        for t in tags:
            for a in self.ancestors_or_self(t):
                cover[a].add(t)
        cand = {s: c for s, c in cover.items() if len(c) >= min_cover}
        keep = set(cand)
        for c in cand:
            for a in self.ancestors_or_self(c):
                if a == c or a not in keep:
                    continue
                # a is strictly above c: a is not minimal; under `closed` it
                # survives only if it covers more than c
                if not closed or len(cand[a]) == len(cand[c]):
                    keep.discard(a)
        nodes = self.graph.nodes
        out = [
            AbstractTag(
                synset=s,
                wnid=nodes[s]["wnid"],
                lemma=nodes[s]["lemma"],
                depth=nodes[s]["depth"],
                cover=len(cand[s]),
                covered=tuple(sorted(cand[s])),
            )
            for s in keep
            if nodes[s]["depth"] >= min_depth
        ]
        out.sort(key=lambda a: (-a.cover, -a.depth, a.synset))
        return out


def abstract_filter_tags(
    synsets: Iterable[str],
    *,
    hierarchy: Hierarchy | None = None,
    wordnet: WordNet | None = None,
    min_cover: int = 2,
    closed: bool = False,
) -> list[AbstractTag]:
    """Most specific common hypernyms of one filter's tag synsets.

    Example:
        >>> wn = load_wordnet(source="slice")
        >>> [(a.synset, a.cover) for a in abstract_filter_tags(
        ...     ["n03110669", "n03394916", "n04487394"], wordnet=wn)]
        [('brass.n.02', 3)]
    """
    wn = wordnet if wordnet is not None else load_wordnet()
    names = [wn.synset(s).name for s in synsets]
    h = hierarchy if hierarchy is not None else Hierarchy.build(names, wordnet=wn)
    return h.common_hypernyms(names, min_cover=min_cover, closed=closed)


_Key = tuple[str, str, str]  # method, param, layer


def _group_by_filter(tags: Iterable[Tag]) -> dict[tuple[str, str, str, int], list[Tag]]:
    groups: dict[tuple[str, str, str, int], list[Tag]] = defaultdict(list)
    for t in tags:
        groups[(t.method, t.param, t.layer, t.filter)].append(t)
    return groups


@dataclass(frozen=True)
class FilterAbstraction:
    """One abstract tag of one filter, with the tags it covers.

    Attributes:
        method, param, layer, filter: identify the filter and tagging setting.
        linked_tags: the filter's number of distinct linked tag synsets.
        abstract: the common hypernym and its coverage.
        covered: the filter's tags whose synsets it covers, in tag order.
    """

    method: str
    param: str
    layer: str
    filter: int
    linked_tags: int
    abstract: AbstractTag
    covered: tuple[Tag, ...]


def abstract_tags(
    tags: Sequence[Tag],
    *,
    mapping: ClassMapping,
    hierarchy: Hierarchy,
    min_cover: int = 2,
    closed: bool = False,
    min_depth: int = MIN_ABSTRACT_DEPTH,
) -> list[FilterAbstraction]:
    """Abstract tags of every filter in ``tags`` (grouped by setting, layer, filter).

    Args:
        tags: tags of any number of settings and layers.
        mapping: class links (:func:`~filtag_kg.wordnet.map_tag_classes`).
        hierarchy: a hierarchy over all linked synsets.
        min_cover: see :meth:`Hierarchy.common_hypernyms`.
        closed: see :meth:`Hierarchy.common_hypernyms`.
        min_depth: see :meth:`Hierarchy.common_hypernyms`.

    Returns:
        Filters in order of first appearance, each filter's abstractions
        sorted as :meth:`Hierarchy.common_hypernyms`; unlinked tags are
        ignored.
    """
    out = []
    for (method, param, layer, filt), group in _group_by_filter(tags).items():
        syn_of = {t.class_id: mapping.synset_of(t.class_id) for t in group}
        linked = {s for s in syn_of.values() if s}
        if len(linked) < min_cover:
            continue
        for a in hierarchy.common_hypernyms(linked, min_cover=min_cover, closed=closed, min_depth=min_depth):
            cov = set(a.covered)
            out.append(
                FilterAbstraction(
                    method=method,
                    param=param,
                    layer=layer,
                    filter=filt,
                    linked_tags=len(linked),
                    abstract=a,
                    covered=tuple(t for t in group if syn_of[t.class_id] in cov),
                )
            )
    return out


@dataclass(frozen=True)
class HistogramRow:
    """How many tags of one layer fall in one bucket.

    Attributes:
        method, param, layer: the tagging setting and layer.
        bucket: synset name, ``"(other)"`` (linked but under no root) or
            ``"(unlinked)"``.
        wnid, lemma, depth: of the bucket synset ("" / -1 for the others).
        tags: number of tags in the bucket (a tag under several roots or
            level-d synsets counts in each).
        filters: number of distinct filters with such a tag.
        share: ``tags`` divided by the layer's number of tags.
    """

    method: str
    param: str
    layer: str
    bucket: str
    wnid: str
    lemma: str
    depth: int
    tags: int
    filters: int
    share: float


def layer_histograms(
    tags: Sequence[Tag],
    *,
    mapping: ClassMapping,
    hierarchy: Hierarchy,
    wordnet: WordNet | None = None,
    depth: int | None = None,
    roots: Sequence[str] | None = None,
) -> list[HistogramRow]:
    """Per layer, a histogram of its tags by hypernym.

    Either by ``depth`` (each tag counts for the synsets at that level of its
    hypernym paths) or under ``roots`` (each tag counts for each root that
    is among its ancestors-or-self; tags under none go to ``"(other)"``).
    Unlinked tags go to ``"(unlinked)"``. With neither, :data:`DEFAULT_ROOTS`.

    Raises:
        AbstractionError: both ``depth`` and ``roots`` given, or a negative depth.
        UnknownSynsetError: a root is malformed or not in WordNet.
    """
    if depth is not None and roots is not None:
        raise AbstractionError("give either a depth or roots for the histogram, not both")
    if depth is not None and depth < 0:
        raise AbstractionError(f"depth must be >= 0 (0 is entity.n.01), got {depth}")
    wn = wordnet if wordnet is not None else load_wordnet()
    root_names: list[str] = []
    if depth is None:
        root_names = list(dict.fromkeys(wn.synset(r).name for r in (roots or DEFAULT_ROOTS)))
    counts: dict[_Key, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    totals: dict[_Key, int] = defaultdict(int)
    for t in tags:
        key = (t.method, t.param, t.layer)
        totals[key] += 1
        s = mapping.synset_of(t.class_id)
        if s is None:
            buckets: Iterable[str] = (UNLINKED,)
        elif depth is not None:
            buckets = sorted(hierarchy.at_level(s, depth))
        else:
            anc = hierarchy.ancestors_or_self(s)
            buckets = [r for r in root_names if r in anc] or [OTHER]
        for b in buckets:
            counts[key][b].append(t.filter)
    rows: list[HistogramRow] = []
    for key, by_bucket in counts.items():
        order = list(by_bucket)
        if depth is None:
            order = root_names + [b for b in (OTHER, UNLINKED) if b in by_bucket]
        else:
            order.sort(key=lambda b: (b in (OTHER, UNLINKED), -len(by_bucket[b]), b))
        for b in order:
            hits = by_bucket.get(b, [])
            info = wn.find(b) if b not in (OTHER, UNLINKED) else None
            rows.append(
                HistogramRow(
                    method=key[0],
                    param=key[1],
                    layer=key[2],
                    bucket=b,
                    wnid=info.wnid if info else "",
                    lemma=info.label if info else "",
                    depth=wn.depth(b) if info else -1,
                    tags=len(hits),
                    filters=len(set(hits)),
                    share=len(hits) / totals[key] if totals[key] else math.nan,
                )
            )
    return rows


@dataclass
class AbstractionReport:
    """What :func:`write_abstractions` wrote and found."""

    run_dir: Path
    files: dict[str, Path]
    mapping: ClassMapping
    filters: int
    abstract_rows: int
    histogram_rows: int
    settings: dict[str, Any] = field(default_factory=dict)
    too_general: int = 0
    """Filters whose common hypernyms all lie above :data:`MIN_ABSTRACT_DEPTH` (so none is emitted)."""

    def summary(self) -> str:
        """A few lines for the CLI."""
        m = self.mapping
        lines = [
            f"linked {len(m.linked)}/{len(m.links)} classes (WordNet source: {m.source})",
            f"{self.abstract_rows} abstract tags on {self.filters} filters",
        ]
        if self.too_general:
            lines.append(
                f"  {self.too_general} filter(s) have no abstract tag: their tags meet only at the "
                f"top of WordNet (depth < {MIN_ABSTRACT_DEPTH}: entity, object, whole, abstraction, ...)"
            )
        lines += [f"  {line}" for line in m.report()]
        lines += [f"wrote {p}" for p in self.files.values()]
        return "\n".join(lines)


def _write_tsv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    import csv

    with atomic_open(path) as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in r])


def write_abstractions(
    run_dir: str | os.PathLike[str],
    *,
    tags: Sequence[Tag] | None = None,
    wordnet: WordNet | None = None,
    synset_map: Mapping[str, str] | str | os.PathLike[str] | None = None,
    first_sense: bool = False,
    min_cover: int = 2,
    closed: bool = False,
    depth: int | None = None,
    roots: Sequence[str] | None = None,
) -> AbstractionReport:
    """Link a run's tags to WordNet and write its abstractions (``filtag-kg abstract``).

    Reads ``RUN_DIR/tags.tsv`` (unless ``tags`` are given) and writes:

    * ``abstract_tags.tsv``: per filter, its most specific common hypernyms
      (columns :data:`ABSTRACT_COLUMNS`);
    * ``hypernym_histogram.tsv``: per layer, tags by hypernym under
      ``roots`` (default :data:`DEFAULT_ROOTS`) or at ``depth``
      (columns :data:`HISTOGRAM_COLUMNS`);
    * ``class_links.tsv``: how each class was linked, or why not;
    * ``abstract.json``: the parameters and counts.

    Raises:
        DataError: ``tags.tsv`` is missing.
        UnknownSynsetError: a wnid, map value or root is malformed/unknown.
    """
    from ..tagging import read_tags_tsv

    run = Path(run_dir)
    if tags is None:
        src = run / "tags.tsv"
        if not src.is_file():
            raise DataError(f"no tags.tsv in {str(run)!r}; tag the run first or import tags")
        tags = read_tags_tsv(src)
    wn = wordnet if wordnet is not None else load_wordnet()
    mapping = map_tag_classes(tags, wordnet=wn, synset_map=synset_map, first_sense=first_sense)
    linked = sorted({s for s in (mapping.synset_of(t.class_id) for t in tags) if s})
    hierarchy = Hierarchy.build(linked, wordnet=wn)
    # computed once at any depth: the depth cut is a filter on the result, and the filters
    # it leaves without an abstraction are counted below
    any_depth = abstract_tags(
        tags, mapping=mapping, hierarchy=hierarchy, min_cover=min_cover, closed=closed, min_depth=0
    )
    abstractions = [f for f in any_depth if f.abstract.depth >= MIN_ABSTRACT_DEPTH]
    hist = layer_histograms(
        tags, mapping=mapping, hierarchy=hierarchy, wordnet=wn, depth=depth, roots=roots
    )
    files = {
        "abstract_tags": run / "abstract_tags.tsv",
        "histogram": run / "hypernym_histogram.tsv",
        "class_links": run / "class_links.tsv",
        "summary": run / "abstract.json",
    }
    _write_tsv(
        files["abstract_tags"],
        ABSTRACT_COLUMNS,
        (
            [
                f.method, f.param, f.layer, f.filter, f.abstract.synset, f.abstract.wnid,
                f.abstract.lemma, f.abstract.depth, f.abstract.cover, f.linked_tags,
                ",".join(dict.fromkeys(t.class_id for t in f.covered)),
                ",".join(dict.fromkeys(t.label for t in f.covered)),
            ]
            for f in abstractions
        ),
    )
    _write_tsv(
        files["histogram"],
        HISTOGRAM_COLUMNS,
        (
            [r.method, r.param, r.layer, r.bucket, r.wnid, r.lemma,
             "" if r.depth < 0 else r.depth, r.tags, r.filters, r.share]
            for r in hist
        ),
    )
    _write_tsv(
        files["class_links"],
        CLASS_LINK_COLUMNS,
        (
            [v.class_id, v.label, v.synset or "", v.wnid or "", v.how, v.senses or "",
             ",".join(v.candidates), v.reason]
            for v in mapping.links.values()
        ),
    )
    settings = {
        "min_cover": min_cover,
        "closed": closed,
        "min_depth": MIN_ABSTRACT_DEPTH,
        "histogram": {"depth": depth} if depth is not None else {
            "roots": [wn.synset(r).name for r in (roots or DEFAULT_ROOTS)]
        },
        "first_sense": first_sense,
        "synset_map": str(synset_map) if isinstance(synset_map, (str, os.PathLike)) else None,
    }
    n_filters = len({(f.method, f.param, f.layer, f.filter) for f in abstractions})
    too_general = len({(f.method, f.param, f.layer, f.filter) for f in any_depth}) - n_filters
    write_json(
        files["summary"],
        {
            "format": "filtag-kg abstractions",
            "format_version": 1,
            "wordnet_source": wn.source,
            "wordnet_location": wn.location,
            "settings": settings,
            "classes": len(mapping.links),
            "linked_classes": len(mapping.linked),
            "unlinked_classes": [
                {"class_id": v.class_id, "reason": v.reason, "candidates": list(v.candidates)}
                for v in mapping.unlinked
            ],
            "filters_with_abstractions": n_filters,
            "filters_too_general": too_general,
            "abstract_tags": len(abstractions),
            "histogram_rows": len(hist),
        },
    )
    return AbstractionReport(
        run_dir=run,
        files=files,
        mapping=mapping,
        filters=n_filters,
        abstract_rows=len(abstractions),
        histogram_rows=len(hist),
        settings=settings,
        too_general=too_general,
    )
