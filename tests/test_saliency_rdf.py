"""SAGs in the knowledge graph: one named graph per image, shapes-valid with the tag graph,
every node, edge, root vote and heatmap as saliency.json says; and the library query
``multiple-explanations`` against the file."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from rdflib import Literal, URIRef
from saliency_support import write_saliency_fixture
from test_rdf_support import make_run, quads_rdflib, union, validate, wordnet
from test_sparql_support import kg

from filtag_kg import sparql
from filtag_kg.rdf import export_run
from filtag_kg.rdf.vocab import FK, RDF


def _graphs(path: Path) -> dict[URIRef, set]:
    out: dict[URIRef, set] = defaultdict(set)
    for s, p, o, g in quads_rdflib(path, "nq"):
        out[g].add((s, p, o))
    return out


def test_sag_graphs_match_the_file_and_conform_with_the_tag_graph(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", images=4)
    doc = write_saliency_fixture(run)
    graphs = _graphs(export_run(run, fmt="nq", wordnet=wordnet()))
    tags = next(n for n in graphs if str(n).endswith("/kg/tags"))
    sags = {n: g for n, g in graphs.items() if (n, RDF.type, FK.StructuredAttentionGraph) in g}
    assert len(sags) == len(doc["images"]) == 3
    explanations = {n for n, g in graphs.items() if (n, RDF.type, FK.ImageExplanation) in g}
    for name, g in sags.items():
        conforms, report = validate(union({(s, p, o, None) for s, p, o in g | graphs[tags]}))
        assert conforms, report
        sha = str(next(o for s, p, o in g if p == FK.sha256))
        rec = next(r for r in doc["images"] if r["sha256"] == sha)
        sag = rec["sag"]
        assert (name, FK.minimalExplanationCount, Literal(len(sag["minimal"]))) in g
        roots = {s for s, p, o in g if p == RDF.type and o == FK.MinimalSufficientExplanation}
        got_roots = {frozenset(int(o) for s2, p, o in g if s2 == r and p == FK.patch) for r in roots}
        assert got_roots == {frozenset(sag["nodes"][k]["patches"]) for k in sag["roots"]}
        removals = [s for s, p, o in g if p == RDF.type and o == FK.RegionRemoval]
        assert len(removals) == len(sag["edges"])
        votes = [s for s, p, o in g if p == RDF.type and o == FK.RegionVote]
        assert len(votes) == sum(len(r["votes"]) for r in rec["regions"])
        assert any(p == FK.regionFilter for _, p, _ in g)
        related = {o for s, p, o in g if p == FK.relatedExplanation}
        assert related and related <= explanations  # linked to the image's FilTag explanations
        values = next(str(o) for s, p, o in g if p == FK.saliencyValues)
        assert values == "0.0000 0.5000 1.0000 0.2500"
    # a SAG graph alone lacks the concepts and filters the tag graph describes
    assert not validate(union({(s, p, o, None) for s, p, o in next(iter(sags.values()))}))[0]


@pytest.mark.parametrize("text", ["[1, 2]", '{"images": 3}', '{"images": [1, 2]}'])
def test_saliency_json_of_another_shape_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """A saliency.json that is JSON but not an object with a list of image objects stopped the
    export and the report with AttributeError: 'list' object has no attribute 'get'."""
    from filtag_kg.cli import main

    run = make_run(tmp_path / "run", images=2)
    path = run / "saliency" / "saliency.json"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    for argv in (["export", str(run), "--out", str(tmp_path / "kg.nq")],
                 ["report", str(run), "--out", str(tmp_path / "report"), "--quiet"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = [e for e in capsys.readouterr().err.splitlines() if not e.startswith("filtag-kg: warning:")]
        assert len(err) == 1 and str(path) in err[0] and "run filtag-kg sag again" in err[0], (argv, err)


def test_no_saliency_file_no_sag_graph(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", images=2)
    graphs = _graphs(export_run(run, fmt="nq", wordnet=wordnet()))
    assert not any((n, RDF.type, FK.StructuredAttentionGraph) in g for n, g in graphs.items())


def test_multiple_explanations_query_lists_images_with_two_or_more() -> None:
    doc = (kg().run_a / "saliency" / "saliency.json").read_text(encoding="utf-8")
    import json

    want = {
        r["sha256"]: len(r["sag"]["minimal"])
        for r in json.loads(doc)["images"]
        if len(r["sag"]["minimal"]) > 1
    }
    rows = sparql.query(
        sparql.open_source(store=kg().store), "multiple-explanations", wordnet=wordnet()
    ).dicts()
    assert {r["sha256"]: r["minimal"] for r in rows} == want == {k: v for k, v in want.items()}
    assert sorted(want.values(), reverse=True) == [r["minimal"] for r in rows]
    assert all(r["model"] == "vgg16" and r["roots"] == r["minimal"] for r in rows)
