"""Human labels in the export (their own named graph, never tags), valid by the shapes, and the
label-disagreements query against the same comparison made in Python."""

from __future__ import annotations

from pathlib import Path

from rdflib import Graph, Literal
from test_rdf_support import make_run, quads_oxigraph, union, validate, wordnet
from test_sparql_support import add_human_labels, ancestors_or_self, kg, tags

from filtag_kg import sparql
from filtag_kg.labels import read_labels
from filtag_kg.rdf import export_run
from filtag_kg.rdf.vocab import FK, PROV, RDF


def test_labels_are_their_own_resources_in_their_own_graph(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", images=2)
    add_human_labels(run)
    quads = quads_oxigraph(export_run(run, fmt="nq", wordnet=wordnet()), "nq")
    labels = read_labels(run)
    nodes = {s for s, p, o, _ in quads if p == RDF.type and o == FK.HumanLabel}
    assert len(nodes) == len(labels) == 5
    graphs = {g for s, _, _, g in quads if s in nodes}
    assert len(graphs) == 1 and str(next(iter(graphs))).endswith("/kg/labels")
    label_graph = next(iter(graphs))
    # nothing of a tag in the labels graph, nothing of a label elsewhere
    tag_props = (FK.taggedWith, FK.hasTag, FK.tagConcept)
    assert not any(g == label_graph and p in tag_props for _, p, _, g in quads)
    assert not any(g != label_graph and p in (FK.labelText, FK.labelConcept) for _, p, _, g in quads)
    texts = {str(o) for s, p, o, _ in quads if p == FK.labelText}
    assert texts == {lab.label for lab in labels}
    who = {str(o) for s, p, o, _ in quads if p == PROV.wasAttributedTo}
    assert len(who) == 2
    linked = {s for s, p, o, _ in quads if p == FK.labelStatus and o == Literal("linked")}
    assert len(linked) == sum(1 for lab in labels if lab.resolution.status == "linked") == 4
    void = next(s for s, p, o, _ in quads if p == RDF.type and o == FK.KnowledgeGraph)
    counted = next(int(o) for s, p, o, _ in quads if s == void and str(p).endswith("void#triples"))
    assert counted == sum(1 for q in quads if not str(q[3]).endswith("/kg/void"))  # labels counted
    g = union(quads)
    ok, text = validate(g)
    assert ok, text
    # the shapes catch a label that claims a concept while unlinked, and a label used as a tag
    node = next(s for s in nodes if s not in linked)
    bad = Graph()
    for t in g:
        bad.add(t)
    bad.add((node, FK.labelConcept, next(iter(g.objects(None, FK.labelConcept)))))
    assert not validate(bad)[0]


def expected_disagreements() -> set[tuple[str, int, str, str]]:
    """(layer, filter, label, annotator) of linked labels whose synset is no tag's ancestor-or-self."""
    by_filter: dict[tuple[str, int], set[str]] = {}
    for t in tags(kg().run_a):
        by_filter.setdefault((t["layer"], int(t["filter"])), set()).update(ancestors_or_self(t["class_id"]))
    return {
        (lab.layer, lab.filter, lab.label, lab.annotator)
        for lab in read_labels(kg().run_a)
        if lab.resolution.synset
        and lab.resolution.synset not in by_filter.get((lab.layer, lab.filter), set())
    }


def test_label_disagreements_query() -> None:
    src = sparql.open_source(store=kg().store)
    rows = sparql.query(src, "label-disagreements", wordnet=wordnet()).dicts()
    got = {(r["layer"], r["filter"], r["label"], r["annotator"]) for r in rows}
    want = expected_disagreements()
    assert got == want and 0 < len(want) < len(read_labels(kg().run_a))
    for r in rows:
        assert r["tagged"]  # the filter's tags, to compare
    one = next(iter(want))
    only = sparql.query(sparql.open_source(store=kg().store), "label-disagreements", wordnet=wordnet(),
                        annotator=one[3]).dicts()
    assert {r["annotator"] for r in only} == {one[3]}
