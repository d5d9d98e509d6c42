"""Hostile strings in layer names, class ids, labels, file names and the model spec
round-trip exactly through every format, in rdflib and in Oxigraph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rdflib import RDF
from test_rdf_support import make_run, quads_oxigraph, quads_rdflib, union, validate, values, wordnet

from filtag_kg.rdf import FORMATS, UnrepresentableLiteralError, export_run
from filtag_kg.rdf.vocab import FK

LAYERS = [
    ("features.28", 3), ("a b/c#d%20e?f=g&h", 3), ("quote\"s 'and' \\back", 3), ("ünïcødé 🐕 日本", 3),
    ("..", 3), ("", 3), ("new\nline\ttab\rcr", 3), ("<angle>{brace}|pipe^`", 3), ("~", 3),
]
CLASSES = [
    ("n02085620", 'Chihuahua "the dog"'),
    ("slash/and#hash%20", "slash/and#hash%20"),
    ("tab\there", "label with\nnewline and \\n not one"),
    ("ünïcødé 🐕", "ünïcødé 🐕"),
    ("..", ".."),
    ('quote"s', "it's <b>bold</b> & more"),
]
PATHS_PLAIN = ["dir with space/img #1 %20.jpg", 'quote"d\\back.png', "ünï/🐕.png", "a/../b/./c.png",
               "\u2028line\u2029sep\x85.png"]
PATHS_CONTROL = ["ctrl\x01\x1f\x7f.png", "bell\x07.jpg"]


def _run(path: Path, paths: list[str], layers: list[tuple[str, int]] = LAYERS) -> Path:
    return make_run(
        path, layers=layers, classes=CLASSES, images=len(paths), spec="my models/net #1 \"v2\".pt",
        image_name=lambda i: paths[i % len(paths)],
    )


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("hostile") / "run", PATHS_PLAIN + PATHS_CONTROL)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "xml"])
def test_hostile_strings_round_trip(fmt: str, hostile: Path, tmp_path: Path) -> None:
    path = export_run(hostile, fmt=fmt, out=tmp_path / f"kg.{fmt}", wordnet=wordnet())
    quads = quads_rdflib(path, fmt)
    assert quads == quads_oxigraph(path, fmt)
    g = union(quads)
    assert values(g, FK.layerName) == {name for name, _ in LAYERS}
    assert len(set(g.subjects(RDF.type, FK.Layer))) == len(LAYERS)
    assert values(g, FK.classId) >= {c for c, _ in CLASSES}
    assert values(g, FK.classLabel) >= {lab for _, lab in CLASSES}
    assert values(g, FK.imagePath) == set(PATHS_PLAIN + PATHS_CONTROL)
    assert values(g, FK.modelSpec) == {'my models/net #1 "v2".pt'}
    if fmt == "nq":
        conforms, report = validate(g)
        assert conforms, report


def test_rdf_xml_refuses_control_characters_and_carries_the_rest(hostile: Path, tmp_path: Path) -> None:
    with pytest.raises(UnrepresentableLiteralError, match="U\\+0001.*trig"):
        export_run(hostile, fmt="xml", out=tmp_path / "kg.rdf", wordnet=wordnet())
    assert not list(tmp_path.iterdir())  # nothing half-written
    layers = [(name.replace("\r", ""), w) for name, w in LAYERS]  # XML parsers read CR as LF
    run = _run(tmp_path / "plain", PATHS_PLAIN, layers)
    path = export_run(run, fmt="xml", wordnet=wordnet())
    quads = quads_rdflib(path, "xml")
    assert quads == quads_oxigraph(path, "xml")
    g = union(quads)
    assert values(g, FK.layerName) == {name for name, _ in layers}
    assert values(g, FK.imagePath) == set(PATHS_PLAIN)


def test_undecodable_file_names_are_written_with_a_replacement_character(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", ["placeholder"])
    lines = (run / "explanations.jsonl").read_text(encoding="utf-8").splitlines()
    recs = [json.loads(line) for line in lines]
    for rec in recs:
        rec["image"] = "bad\udcffname.jpg"  # what os.fsdecode gives for an undecodable byte
    (run / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    path = export_run(run, fmt="nq", wordnet=wordnet())
    g = union(quads_oxigraph(path, "nq"))
    assert values(g, FK.imagePath) == {"bad\ufffdname.jpg"}
