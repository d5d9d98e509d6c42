"""The questions later issues ask are plain SPARQL 1.1 over an export (run in Oxigraph),
and their answers equal those computed independently from the run's files, whether the
default graph is the union of the named graphs or empty (the SPARQL default, Jena TDB's)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pyoxigraph as ox
import pytest
from test_rdf_support import make_run, wordnet

from filtag_kg.explain import read_explanations
from filtag_kg.rdf import DEFAULT_BASE_IRI, Minter, export_run

PREFIX = """PREFIX fk: <https://w3id.org/filtag-kg/ontology#>
PREFIX skos: <http://www.w3.org/2004/02/skos/core#>
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ox.Store]:
    run = make_run(tmp_path_factory.mktemp("q") / "run", images=12)
    store = ox.Store()
    store.bulk_load(path=str(export_run(run, fmt="nq", wordnet=wordnet())), format=ox.RdfFormat.N_QUADS)
    return run, store


def _query(store: ox.Store, q: str, **bindings: str) -> list[dict[str, str]]:
    subs = {ox.Variable(k): ox.NamedNode(v) for k, v in bindings.items()}
    answers = []
    for union in (True, False):
        res = store.query(PREFIX + q, use_default_graph_as_union=union, substitutions=subs)
        answers.append([{v.value: s[v].value for v in res.variables if s[v] is not None} for s in res])
    union, plain = ([sorted(row.items()) for row in rows] for rows in answers)
    assert sorted(union) == sorted(plain)
    return answers[0]


def _tags(run: Path) -> list[dict[str, str]]:
    with open(run / "tags.tsv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_filters_for_dog_counting_hyponyms(exported: tuple[Path, ox.Store]) -> None:
    run, store = exported
    m = Minter(DEFAULT_BASE_IRI)
    rows = _query(store, """SELECT DISTINCT ?filter ?dog WHERE {
        GRAPH ?g { ?filter fk:taggedWith ?c . ?c skos:broader* ?dog } }""", dog=m.synset("n02084071"))
    wn = wordnet()
    dogs = {cid for cid in {t["class_id"] for t in _tags(run)}
            if cid.startswith("n") and any("dog.n.01" in p for p in wn.hypernym_paths(cid))}
    assert dogs == {"n02085620", "n02085936", "n02086240"}
    model = m.model("vgg16", json.loads((run / "profile.json").read_text())["model"]["weights_sha256"])
    expected = {m.filter(model, t["layer"], int(t["filter"])) for t in _tags(run) if t["class_id"] in dogs}
    assert {r["filter"] for r in rows} == expected


def test_concepts_of_a_filter_with_scores_ranks_and_abstract_tags(exported: tuple[Path, ox.Store]) -> None:
    run, store = exported
    m = Minter(DEFAULT_BASE_IRI)
    model = m.model("vgg16", json.loads((run / "profile.json").read_text())["model"]["weights_sha256"])
    tags = _tags(run)
    layer, index = tags[0]["layer"], int(tags[0]["filter"])
    rows = _query(store, """SELECT ?f ?label ?score ?rank WHERE { GRAPH ?g {
        ?tag fk:filter ?f ; fk:tagConcept ?c ; fk:score ?score ; fk:rank ?rank .
        ?c skos:prefLabel ?label } }""",
                  f=m.filter(model, layer, index))
    want = {(t["score"], t["rank"]) for t in tags if t["layer"] == layer and int(t["filter"]) == index}
    assert {(str(float(r["score"])), r["rank"]) for r in rows} == {(str(float(s)), r) for s, r in want}
    with open(run / "abstract_tags.tsv", encoding="utf-8", newline="") as fh:
        abstract = list(csv.DictReader(fh, delimiter="\t"))
    a = abstract[0]
    rows = _query(store, """SELECT ?f ?name ?cover WHERE { GRAPH ?g {
        ?f fk:hasAbstractTag ?a . ?a fk:abstractConcept ?c ; fk:coverCount ?cover .
        ?c fk:synsetName ?name } }""",
                  f=m.filter(model, a["layer"], int(a["filter"])))
    assert (a["synset"], a["cover"]) in {(r["name"], r["cover"]) for r in rows}


def test_explain_an_image_recounts_its_votes(exported: tuple[Path, ox.Store]) -> None:
    run, store = exported
    rec = list(read_explanations(run))[4]
    rows = _query(store, """SELECT ?img ?class (COUNT(?tag) AS ?votes) WHERE {
        GRAPH ?cg { ?cl fk:image ?img }
        GRAPH ?e { ?e fk:classification ?cl ; fk:setting ?s ; fk:hasActiveFilter/fk:filter ?f }
        GRAPH ?g { ?tag fk:filter ?f ; fk:setting ?s ; fk:tagConcept ?c . ?c fk:classId ?class }
    } GROUP BY ?img ?class""", img=Minter(DEFAULT_BASE_IRI).image(rec["sha256"]))
    assert {r["class"]: int(r["votes"]) for r in rows} == rec["vote_counts"]


def test_misexplained_images(exported: tuple[Path, ox.Store]) -> None:
    run, store = exported
    recs = list(read_explanations(run))
    rows = _query(store, """SELECT ?path WHERE {
        GRAPH ?e { ?e fk:predictedConcept ?pred ; fk:classification ?cl }
        GRAPH ?cg { ?cl fk:modelTopConcept ?top ; fk:imagePath ?path }
        FILTER (?top != ?pred) }""")
    m = Minter(DEFAULT_BASE_IRI)
    expected = Counter(r["image"] for r in recs
                       if m.concept(r["model_top"][0]["class_id"], None) != m.concept(r["prediction"], None))
    assert Counter(r["path"] for r in rows) == expected and expected


def test_each_explanation_is_a_named_graph_that_can_be_dropped(exported: tuple[Path, ox.Store]) -> None:
    _, store = exported
    graphs = [r["e"] for r in _query(store, "SELECT ?e WHERE { GRAPH ?e { ?e a fk:ImageExplanation } }")]
    assert len(graphs) == 12
    before = len(store)
    tmp = ox.Store()
    tmp.extend(store)
    tmp.remove_graph(ox.NamedNode(graphs[0]))
    assert 0 < before - len(tmp) < before / 5
