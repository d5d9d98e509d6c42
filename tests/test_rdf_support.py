"""Helpers for the knowledge-graph tests (no tests here): small run folders and parsers.

Runs are written in the exact file formats of real runs (``profile.json``,
``tags.tsv``, ``explanations.jsonl`` ...) by :mod:`filtag_kg.rdf.synthetic`,
then linked to WordNet with the real ``write_abstractions``, so that every
part of an export is present: synsets, label concepts, abstract tags,
explanations with weights and perturbations.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import rdflib
from rdflib import BNode, Dataset, Graph, Literal, URIRef

from filtag_kg.rdf.synthetic import write_synthetic_run

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "ontology" / "shapes.ttl"
ONTOLOGY = ROOT / "ontology" / "filtag.ttl"

#: Three toy dogs, a violin, a cat, and a class without a synset.
CLASSES = [
    ("n02085620", "Chihuahua"),
    ("n02085936", "Maltese_dog"),
    ("n02086240", "Shih-Tzu"),
    ("n04536866", "violin"),
    ("n02123045", "tabby"),
    ("zz unlinked", "zz unlinked"),
]
LAYERS = [("features.0", 6), ("features.28", 8)]

RDFLIB_FORMATS = {
    "nq": "nquads", "trig": "trig", "jsonld": "json-ld", "nt": "nt", "ttl": "turtle", "xml": "xml",
}
NAMED_GRAPH_FORMATS = ("nq", "trig", "jsonld")


@functools.lru_cache(maxsize=1)
def wordnet() -> Any:
    """The bundled WordNet slice: the same answers on every machine."""
    from filtag_kg.wordnet import load_wordnet

    return load_wordnet(source="slice")


def make_run(
    path: Path,
    *,
    images: int = 6,
    layers: list[tuple[str, int]] | None = None,
    classes: list[tuple[str, str]] | None = None,
    abstract: bool = True,
    **kwargs: Any,
) -> Path:
    """A small synthetic run folder with tags, abstractions and explanations."""
    run = write_synthetic_run(
        path, layers=layers or LAYERS, classes=classes or CLASSES, images=images, k=2, **kwargs
    )
    if abstract:
        from filtag_kg.wordnet import write_abstractions

        write_abstractions(run, wordnet=wordnet())
    return run


def quads_rdflib(path: Path, fmt: str) -> set[tuple[Any, Any, Any, Any]]:
    """The statements of an export parsed by rdflib; graph ``None`` for triple formats."""
    if fmt in NAMED_GRAPH_FORMATS:
        ds = Dataset()
        ds.parse(str(path), format=RDFLIB_FORMATS[fmt])
        out = set()
        for s, p, o, g in ds.quads((None, None, None, None)):
            gid = g.identifier if isinstance(g, Graph) else g
            out.add((s, p, o, gid))
        return out
    g = Graph()
    g.parse(str(path), format=RDFLIB_FORMATS[fmt])
    return {(s, p, o, None) for s, p, o in g}


def _ox_term(t: Any) -> Any:
    import pyoxigraph as ox

    if isinstance(t, ox.NamedNode):
        return URIRef(t.value)
    if isinstance(t, ox.BlankNode):
        return BNode(t.value)
    if isinstance(t, ox.Literal):
        if t.language:
            return Literal(t.value, lang=t.language)
        if t.datatype.value == "http://www.w3.org/2001/XMLSchema#string":
            return Literal(t.value)
        return Literal(t.value, datatype=URIRef(t.datatype.value), normalize=False)
    if isinstance(t, ox.DefaultGraph):
        return None
    raise TypeError(t)


def quads_oxigraph(path: Path, fmt: str) -> set[tuple[Any, Any, Any, Any]]:
    """The statements of an export parsed by pyoxigraph, as rdflib terms."""
    import pyoxigraph as ox

    f = {
        "nq": ox.RdfFormat.N_QUADS, "trig": ox.RdfFormat.TRIG, "jsonld": ox.RdfFormat.JSON_LD,
        "nt": ox.RdfFormat.N_TRIPLES, "ttl": ox.RdfFormat.TURTLE, "xml": ox.RdfFormat.RDF_XML,
    }[fmt]
    return {
        (_ox_term(q.subject), _ox_term(q.predicate), _ox_term(q.object), _ox_term(q.graph_name))
        for q in ox.parse(path=str(path), format=f)
    }


def union(quads: set[tuple[Any, Any, Any, Any]]) -> Graph:
    """All statements in one rdflib Graph (what SHACL validation and reasoning need)."""
    g = Graph()
    for s, p, o, _ in quads:
        g.add((s, p, o))
    return g


def validate(graph: Graph) -> tuple[bool, str]:
    """pySHACL against ontology/shapes.ttl: (conforms, report text)."""
    import pyshacl

    shapes = Graph().parse(str(SHAPES), format="turtle")
    conforms, _, text = pyshacl.validate(graph, shacl_graph=shapes)
    return bool(conforms), text


def values(graph: Graph, prop: URIRef) -> set[str]:
    """String values of one property."""
    return {str(o) for o in graph.objects(None, prop)}


__all__ = [
    "CLASSES", "LAYERS", "NAMED_GRAPH_FORMATS", "ONTOLOGY", "RDFLIB_FORMATS", "SHAPES",
    "make_run", "quads_oxigraph", "quads_rdflib", "rdflib", "union", "validate", "values", "wordnet",
]
