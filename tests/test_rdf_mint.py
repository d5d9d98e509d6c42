"""IRI minting and literal writing: safe, injective, stable, readable; exact literal forms."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pyoxigraph as ox
import pytest
from rdflib import Graph, Literal, URIRef

from filtag_kg.rdf import terms as T
from filtag_kg.rdf.errors import BaseIriError
from filtag_kg.rdf.mint import DEFAULT_BASE_IRI, Minter, check_base_iri, segment

HOSTILE = [
    "", ".", "..", "...", "~", "%", "%25", "%2E", "a b", "a/b", "a%2Fb", "a#b", "a?b", 'say "hi"', "it's",
    "back\\slash", "<tag>", "{x}", "tab\there", "new\nline", "cr\rhere", "nul\x00byte", "ünïcødé", "日本語",
    "🐕 dog", "features.28", "layer4.0.conv1", "features.2", "features.28 ", " features.28", "a+b", "a=b&c",
    "\u2028sep", "\ufeffbom", "\ud800lone", "tiny_models:build_tiny",
]


def test_segment_is_injective_and_uses_only_safe_characters() -> None:
    segs = [segment(s) for s in HOSTILE]
    assert len(set(segs)) == len(HOSTILE)
    for s in segs:
        assert re.fullmatch(r"[A-Za-z0-9._~%-]+", s), s
        assert s not in (".", "..")


def test_segment_decodes_back_and_keeps_plain_names_readable() -> None:
    for s in HOSTILE:
        if s in ("", "\ud800lone"):
            continue
        assert unquote(segment(s)) == s
    assert segment("") == "~"
    for readable in ("features.28", "layer4.0.conv1", "n02084071", "top-k-3", "top-percent-2.5"):
        assert segment(readable) == readable


def test_minted_iris_are_valid_for_rdf_libraries() -> None:
    m = Minter("https://example.org/kg/")
    model = m.model("vgg16", "ab" * 32)
    for s in HOSTILE:
        for iri in (m.layer(model, s), m.filter(model, s, 3), m.label_concept(s), m.image(s or "x")):
            ox.NamedNode(iri)  # raises on an invalid IRI
            g = Graph()
            g.parse(data=f"<{iri}> <http://e.org/p> <{iri}> .", format="nt")
            assert {str(x) for x in g.subjects()} == {iri}


def test_readable_stable_layout() -> None:
    m = Minter("https://example.org/kg")
    model = m.model("vgg16", "1A2B3C4D5E6F" + "0" * 52)
    assert model == "https://example.org/kg/model/vgg16-1a2b3c4d5e6f"
    assert m.filter(model, "features.28", 17) == model + "/layer/features.28/filter/17"
    assert m.synset("n02084071") == "https://example.org/kg/concept/n02084071"
    assert m.concept("Chihuahua", "n02085620") == m.synset("n02085620")
    assert m.concept("n02085620", None) == m.synset("n02085620")
    assert m.concept("truck", None) == "https://example.org/kg/concept/label/truck"
    run = m.run("vgg16", {"fingerprint": {"a": 1}})
    assert run == m.run("vgg16", {"fingerprint": {"a": 1}})
    assert run != m.run("vgg16", {"fingerprint": {"a": 2}})
    assert re.fullmatch(r"https://example\.org/kg/run/vgg16-[0-9a-f]{16}", run)
    e = m.explanation(run, 7, "top-percent", "2.5", {"kind": "blur", "param": 2.0, "seed": 0}, "gradcam")
    assert e == f"{run}/explanation/7/top-percent-2.5/blur-2.0-0/gradcam"
    assert m.active_filter(e, "features.28", 3) == f"{e}/active/features.28/3"
    assert m.vote(e, "a b") == f"{e}/vote/a%20b"
    assert m.princeton_wn30("n02084071") == "http://wordnet-rdf.princeton.edu/pwn30/02084071-n"
    # a model given as a file path is named by the file
    assert Minter(DEFAULT_BASE_IRI).model("/models/my net.pt", None).startswith(
        DEFAULT_BASE_IRI + "model/my%20net.pt-"
    )


@pytest.mark.parametrize(
    "bad",
    ["", "example.org/kg", "relative/path", "http://ex ample.org/", "https://example.org/kg#", "http:///x",
     "https://example.org/kg?x=1", "https://example.org/<kg>", 'http://e.org/"q"', "http://e.org/%zz",
     "http://e.org/\nkg"],
)
def test_bad_base_iris_are_refused_with_a_hint(bad: str) -> None:
    with pytest.raises(BaseIriError, match="base IRI .*example.org/kg/"):
        check_base_iri(bad)


def test_good_base_iris_get_a_trailing_slash() -> None:
    assert check_base_iri("https://example.org/kg") == "https://example.org/kg/"
    assert check_base_iri("https://example.org/kg/") == "https://example.org/kg/"
    assert check_base_iri("urn:example:kg:") == "urn:example:kg:"
    assert check_base_iri("http://localhost:8000/filtag-kg/") == DEFAULT_BASE_IRI


STRINGS = [s for s in HOSTILE if "\ud800" not in s] + ["\x01\x07\x1f\x7f", "\\u0041 not an escape", "\\"]


def test_string_literals_round_trip_through_rdflib_and_oxigraph() -> None:
    lines = "".join(f"<http://e.org/s{i}> <http://e.org/p> {T.string(s)} .\n" for i, s in enumerate(STRINGS))
    g = Graph().parse(data=lines, format="nt")
    got = {str(s)[len("http://e.org/s"):]: o for s, _, o in g}
    for i, s in enumerate(STRINGS):
        assert got[str(i)] == Literal(s)
        assert T.to_rdflib(T.string(s)) == Literal(s)
    ox_got = {q.subject.value: q.object.value for q in ox.parse(lines, ox.RdfFormat.N_TRIPLES)}
    assert [ox_got[f"http://e.org/s{i}"] for i in range(len(STRINGS))] == STRINGS


def test_lone_surrogates_become_replacement_characters() -> None:
    assert T.to_rdflib(T.string("a\ud800b")) == Literal("a\ufffdb")


def test_numbers_and_times_have_forms_both_libraries_keep() -> None:
    assert T.double(0.5) == '"0.5"^^<http://www.w3.org/2001/XMLSchema#double>'
    assert T.double(1) == '"1.0"^^<http://www.w3.org/2001/XMLSchema#double>'
    assert T.double(1e-05).startswith('"1e-05"')
    for bad in (float("nan"), float("inf"), "x", None):
        assert T.double(bad) is None
    assert T.decimal("3") == '"3"^^<http://www.w3.org/2001/XMLSchema#decimal>'
    assert T.decimal("2.50").startswith('"2.5"')
    assert T.decimal("1e-05").startswith('"0.00001"')
    assert T.decimal("nan") is None
    assert T.date_time("2026-01-02T03:04:05Z") == T.date_time("2026-01-02T03:04:05+00:00")
    assert T.date_time("yesterday") is None
    lits = [T.double(0.1), T.double(123456789.123), T.double(-2.5e-300), T.integer(-7), T.decimal("0.25"),
            T.date_time("2026-01-02T03:04:05+00:00"), T.boolean(True), T.lang_string("dog")]
    lines = "".join(f"<http://e.org/s> <http://e.org/p{i}> {lit} .\n" for i, lit in enumerate(lits))
    rd = {str(p): o for _, p, o in Graph().parse(data=lines, format="nt")}
    ox_ = {q.predicate.value: q.object.value for q in ox.parse(lines, ox.RdfFormat.N_TRIPLES)}
    for i, lit in enumerate(lits):
        lexical = T.to_rdflib(lit)
        assert str(rd[f"http://e.org/p{i}"]) == str(lexical) == ox_[f"http://e.org/p{i}"]


def test_to_rdflib_reads_every_term_kind() -> None:
    assert T.to_rdflib("<http://e.org/x>") == URIRef("http://e.org/x")
    assert T.to_rdflib('"chien"@fr') == Literal("chien", lang="fr")
    assert T.to_rdflib(T.integer(3)) == Literal("3", datatype=URIRef("http://www.w3.org/2001/XMLSchema#integer"))
