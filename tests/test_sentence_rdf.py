"""Generated sentences in the export: an @en literal with its template and generation on each
explanation (in its own graph), tagged filter and class explanation; valid by the shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from rdflib import Graph, Literal
from test_rdf_support import make_run, quads_oxigraph, union, validate, wordnet

from filtag_kg.explain import read_explanations
from filtag_kg.rdf import export_run
from filtag_kg.rdf.vocab import FK, PROV, RDF
from filtag_kg.sentences import (
    GENERATOR_VERSION,
    SentenceContext,
    SentenceError,
    class_sentences,
    filter_sentences,
    image_sentence,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set]:
    run = make_run(tmp_path_factory.mktemp("sentence-rdf") / "run", images=8)
    path = export_run(run, fmt="nq", wordnet=wordnet(), sentences=True)
    return run, quads_oxigraph(path, "nq")


def test_sentences_in_the_export_are_the_generated_ones(exported: tuple[Path, set]) -> None:
    run, quads = exported
    ctx = SentenceContext.from_run(run, wordnet=wordnet())
    records = list(read_explanations(run))
    said = {(s, g): o for s, p, o, g in quads if p == FK.sentence}
    # each explanation carries its sentence in its own graph, as an English literal
    explanations = {s for s, p, o, _ in quads if p == RDF.type and o == FK.ImageExplanation}
    assert len(explanations) == len(records)
    by_index = {int(str(e).split("/explanation/")[1].split("/")[0]): e for e in explanations}
    for rec in records:
        e = by_index[rec["index"]]
        lit = said[(e, e)]
        assert lit == Literal(image_sentence(ctx, rec).text, lang="en")
        assert (e, FK.sentenceTemplate, Literal("image-v1"), e) in quads
    # filters and class explanations in the tag graph
    texts = {str(o) for (s, _), o in said.items()}
    assert {s.text for s in filter_sentences(ctx)} <= texts
    assert {s.text for s in class_sentences(ctx, records)} <= texts
    gen = [s for s, p, o, _ in quads if p == RDF.type and o == FK.SentenceGeneration]
    assert len(gen) == 1
    assert (gen[0], FK.generatorVersion, Literal(GENERATOR_VERSION)) in {q[:3] for q in quads}
    assert all((s, FK.sentenceGeneratedBy, gen[0]) in {q[:3] for q in quads} for s, _ in said)
    ces = {s for (s, _) in said if "/class-explanation/" in str(s)}
    assert ces and all((s, RDF.type, FK.ClassExplanation) in {q[:3] for q in quads} for s in ces)


def test_export_with_sentences_conforms_to_the_shapes(exported: tuple[Path, set]) -> None:
    _, quads = exported
    g = union(quads)
    ok, text = validate(g)
    assert ok, text
    # the shapes do check them: an untagged literal, a second sentence, a missing generator
    e = next(s for s in g.subjects(RDF.type, FK.ImageExplanation))
    for bad in (
        [(e, FK.sentence, Literal("x"))],
        [(e, FK.sentence, Literal("another", lang="en"))],
    ):
        g2 = Graph()
        for t in g:
            g2.add(t)
        for t in bad:
            g2.add(t)
        assert not validate(g2)[0]
    g3 = Graph()
    for t in g:
        if t[1] != PROV.used:
            g3.add(t)
    assert not validate(g3)[0]


def test_sentences_are_opt_in_and_need_a_profile(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", images=2)
    plain = quads_oxigraph(export_run(run, fmt="nq", out=tmp_path / "plain.nq", wordnet=wordnet()), "nq")
    assert not any(p == FK.sentence for _, p, _, _ in plain)
    (run / "profile.json").unlink()
    with pytest.raises(SentenceError, match="profile.json"):
        export_run(run, fmt="nq", out=tmp_path / "s.nq", wordnet=wordnet(), sentences=True)


def test_sentences_with_jobs_give_the_same_bytes(exported: tuple[Path, set], tmp_path: Path) -> None:
    """``--jobs`` encodes in worker processes, sentences are added in step with the records:
    the file with sentences must not depend on the number of processes."""
    run, _ = exported
    one = export_run(run, fmt="nq", out=tmp_path / "one.nq", wordnet=wordnet(), sentences=True)
    two = export_run(run, fmt="nq", out=tmp_path / "two.nq", wordnet=wordnet(), sentences=True, jobs=2)
    from filtag_kg.rdf.vocab import FK

    assert f"<{FK.sentence}>".encode() in one.read_bytes()
    assert two.read_bytes() == one.read_bytes()
