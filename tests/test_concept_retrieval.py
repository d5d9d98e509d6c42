"""images-for-concept: explained images ranked by votes for a concept and its hyponyms, checked
against the same sums computed in Python from the run's explanation records, from the library,
the CLI and the server's concept pages."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from test_rdf_support import wordnet
from test_sparql_support import ancestors_or_self, explanations, kg, pref_label, split_list, tags

from filtag_kg import sparql
from filtag_kg.rdf import DEFAULT_BASE_IRI


def expected(concept: str, setting: str | None = None) -> dict[tuple[str, str], tuple[float, int, frozenset]]:
    """(image, setting) -> (summed votes, vote count, matched labels), straight from the records."""
    name = wordnet().synset(concept).name
    labels = {t["class_id"]: t["label"] for t in tags(kg().run_a)}
    out: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0.0, 0, set()])
    for r in explanations(kg().run_a):
        label = f"{r['method']} {r['param']}".strip()
        if setting is not None and label != setting:
            continue
        for cid, v in r["votes"].items():
            if name in ancestors_or_self(cid):
                row = out[(r["image"], label)]
                row[0] += v
                row[1] += r["vote_counts"][cid]
                row[2].add(pref_label(cid, labels[cid]))
    return {k: (v[0], v[1], frozenset(v[2])) for k, v in out.items()}


@pytest.mark.parametrize("concept", ["dog.n.01", "n02121808", "animal.n.01"])
def test_images_for_concept_sum_the_votes_of_the_concept_and_its_hyponyms(concept: str) -> None:
    rows = sparql.query(sparql.open_source(store=kg().store), "images-for-concept",
                        wordnet=wordnet(), concept=concept).dicts()
    got = {(r["image"], r["setting"]): (r["votes"], r["voteCount"], split_list(r["matched"])) for r in rows}
    want = expected(concept)
    assert want and got.keys() == want.keys()
    for k, (votes, count, matched) in want.items():
        assert got[k][0] == pytest.approx(votes) and got[k][1] == count and got[k][2] == matched
    assert [r["votes"] for r in rows] == sorted((r["votes"] for r in rows), reverse=True)
    assert len(rows) == len(want)  # one row per explanation, nothing counted twice across runs


def test_images_for_concept_setting_and_unrelated_concept() -> None:
    src = sparql.open_source(store=kg().store)
    rows = sparql.query(src, "images-for-concept", wordnet=wordnet(), concept="dog.n.01",
                        setting="top-k 2").dicts()
    assert {(r["image"], r["setting"]) for r in rows} == set(expected("dog.n.01", "top-k 2"))
    assert sparql.query(src, "images-for-concept", wordnet=wordnet(), concept="fungus.n.01").dicts() == []


def test_images_for_concept_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from filtag_kg.cli import main

    assert main(["query", "images-for-concept", "--store", str(kg().store), "--param",
                 "concept=dog.n.01", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("concept,image,setting,variant,votes,voteCount,matched,explanation")
    assert len(lines) - 1 == len(expected("dog.n.01"))


def test_the_server_answers_images_for_concept_and_its_concept_page_names_it() -> None:
    """The server's concept page names the query (running it there would hold the page for
    a minute on a large store); its SPARQL endpoint answers the library text."""
    import urllib.parse

    import pyoxigraph as ox

    from filtag_kg.serve import Options, _with_values, make_app
    from filtag_kg.sparql.library import find_query

    store = ox.Store.read_only(str(kg().store))
    dog = next(store.quads_for_pattern(None, ox.NamedNode("https://w3id.org/filtag-kg/ontology#wnid"),
                                       ox.Literal("n02084071"), None)).subject.value
    del store
    text = _with_values(find_query("images-for-concept").text, {"concept": ox.Literal("n02084071")})
    app = make_app(kg().store, Options(base_iri=DEFAULT_BASE_IRI), workers=1)
    try:
        path = "/" + dog.split("://", 1)[1].split("/", 1)[1] + ".html"
        status, _, page = app.route({"PATH_INFO": path, "REQUEST_METHOD": "GET", "HTTP_ACCEPT": "text/html",
                                     "QUERY_STRING": ""})
        q_status, _, answer = app.route({
            "PATH_INFO": "/sparql", "REQUEST_METHOD": "GET", "HTTP_ACCEPT": "text/csv",
            "QUERY_STRING": urllib.parse.urlencode({"query": text}),
        })
    finally:
        app.close()
    assert status.startswith("200") and b"images-for-concept --param concept=n02084071" in page
    assert q_status.startswith("200"), answer
    rows = answer.decode().splitlines()
    assert len(rows) - 1 == len(expected("dog.n.01"))
    best = max(expected("dog.n.01").items(), key=lambda kv: kv[1][0])[0][0]
    assert best in rows[1]
