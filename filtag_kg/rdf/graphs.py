"""rdflib views of an export, for small data (tests, notebooks, further processing).

These build the same graphs as the streaming writer (both consume
:class:`~.nquads.RunGraphs`), held in memory as rdflib objects. For large
explanation sets use :func:`~.nquads.write_nquads` or
:func:`~.export.export_run` instead: rdflib keeps every triple as Python
objects and adds well under 100,000 triples per second.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rdflib import Dataset, Graph, URIRef

from .mint import DEFAULT_BASE_IRI
from .nquads import RunGraphs
from .rundata import RunData
from .terms import to_rdflib
from .vocab import PREFIXES

if TYPE_CHECKING:
    from ..wordnet import WordNet

__all__ = ["add_triples", "build_dataset", "build_tag_graph"]


def _bind(g: Graph) -> None:
    for prefix, ns in PREFIXES.items():
        g.bind(prefix, ns, override=True, replace=True)


def add_triples(graph: Graph, text: str) -> None:
    """Add the N-Triples text of one graph (as yielded by :class:`~.nquads.RunGraphs`) to a graph."""
    cache: dict[str, Any] = {}
    for line in text.split("\n"):
        if not line:
            continue
        s, p, o = line[:-2].split(" ", 2)
        s_ = cache.get(s)
        if s_ is None:
            s_ = cache[s] = to_rdflib(s)
        p_ = cache.get(p)
        if p_ is None:
            p_ = cache[p] = to_rdflib(p)
        graph.add((s_, p_, to_rdflib(o)))


def build_dataset(
    run: str | os.PathLike[str] | RunData,
    *,
    base_iri: str = DEFAULT_BASE_IRI,
    wordnet: WordNet | None = None,
    ili_map: str | os.PathLike[str] | Mapping[str, str] | None = None,
    explanations: bool = True,
) -> Dataset:
    """The whole export as an rdflib ``Dataset``: one named graph per explanation,
    the tag graph ``R/kg/tags`` and the VoID graph ``R/kg/void``.

    Args:
        run, base_iri, wordnet, ili_map, explanations: see :class:`~.nquads.RunGraphs`.

    Example:
        >>> ds = build_dataset("runs/vgg16")  # doctest: +SKIP
        >>> ds.serialize(format="trig")  # doctest: +SKIP
    """
    ds = Dataset()
    _bind(ds)
    for graph, text, _ in RunGraphs(
        run, base_iri=base_iri, wordnet=wordnet, ili_map=ili_map, explanations=explanations, graphs=False
    ):
        add_triples(ds.graph(URIRef(graph)), text)
    return ds


def build_tag_graph(
    run: str | os.PathLike[str] | RunData,
    *,
    base_iri: str = DEFAULT_BASE_IRI,
    wordnet: WordNet | None = None,
    ili_map: str | os.PathLike[str] | Mapping[str, str] | None = None,
    explanations: bool = True,
) -> Graph:
    """The tag graph alone as an rdflib ``Graph`` (identifier: its graph name ``R/kg/tags``).

    With ``explanations`` (default) the run's explanations are read, but
    only so that the concepts, filters and settings they mention are
    described, exactly as in the export's tag graph.
    """
    stream = RunGraphs(
        run, base_iri=base_iri, wordnet=wordnet, ili_map=ili_map, explanations=explanations, graphs=False
    )
    g = Graph(identifier=URIRef(stream.ctx.tag_graph_iri))
    _bind(g)
    for graph, text, _ in stream:
        if graph == stream.ctx.tag_graph_iri:
            add_triples(g, text)
    return g
