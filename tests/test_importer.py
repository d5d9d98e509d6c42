"""Importing tag files written by the original FilTag code."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from filtag_kg.errors import FiltagError
from filtag_kg.importer import (
    AmbiguousLabelError,
    FiltagFileError,
    _feasible,
    import_filtag,
    parse_filtag_file,
)
from filtag_kg.tagging import read_tags_tsv

# Lines in the reference's format (cf. its EXAMPLE_FilterTags_VGG16_conv5-3_k1.txt):
# repr() of space-padded ImageNet names, in class-index order per line.
CLEAN = """filter tags k=1
0:[' chiton ', ' soccer_ball ']
1:[' cornet ', ' French_horn ', ' trombone ']
3:[]
44:[' jellyfish ', " jack-o'-lantern ", ' stove ']
129:[' coffeepot ', ' joystick ', ' pickelhaube ', " potter's_wheel "]
"""
AMBIGUOUS = """filter tags k=1
372:[' black_grouse ', ' ruffed_grouse ', ' prairie_chicken ', ' crane ', ' bustard ']
411:[' bikini ', ' brassiere ', ' maillot ', ' maillot ', ' swimming_trunks ']
420:[' brass ', ' gas_pump ', ' manhole_cover ']
424:[' crane ']
"""


@pytest.fixture
def write(tmp_path):
    def _write(text, name="tags.txt"):
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return p

    return _write


def test_clean_file_becomes_tags(write):
    res = parse_filtag_file(write(CLEAN), layer="features.28")
    assert (res.method, res.param, res.filters) == ("top-k", "1", 5)
    assert res.problems == []
    got = [(t.filter, t.class_id, t.label) for t in res.tags]
    assert got == [
        (0, "n01955084", "chiton"),
        (0, "n04254680", "soccer_ball"),
        (1, "n03110669", "cornet"),
        (1, "n03394916", "French_horn"),
        (1, "n04487394", "trombone"),
        (44, "n01910747", "jellyfish"),
        (44, "n03590841", "jack-o'-lantern"),
        (44, "n04330267", "stove"),
        (129, "n03063689", "coffeepot"),
        (129, "n03602883", "joystick"),
        (129, "n03929855", "pickelhaube"),
        (129, "n03992509", "potter's_wheel"),
    ]
    t = res.tags[0]
    assert (t.method, t.param, t.layer, t.rank) == ("top-k", "1", "features.28", 0)
    assert math.isnan(t.score) and math.isnan(t.share)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("filter tags k=1", ("top-k", "1")),
        ("filter tags k=25", ("top-k", "25")),
        ("filter tags k=0", ("above-average", "")),
        ("filter tags k%=5", ("top-percent", "5")),
        ("filter tags q=2.5%", ("top-percent", "2.5")),
    ],
)
def test_headers(write, header, expected):
    res = parse_filtag_file(write(f"{header}\n1:[' cornet ']\n"), layer="l")
    assert (res.method, res.param) == expected
    assert res.tags[0].method == expected[0]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "is empty"),
        ("0:[' cornet ']\n", r":1: expected a header"),
        ("filter tags k%=150\n", r"not in \(0, 100\]"),
        ("filter tags k=1\nx:[' cornet ']\n", r":2: expected 'FILTER:\[names"),
        ("filter tags k=1\n1:[' cornet '\n", r":2: expected 'FILTER"),
        ("filter tags k=1\n1:[' cornet ' ' trombone ' +]\n", r":2: .*not a Python literal"),
        ("filter tags k=1\n1:[1, 2]\n", r":2: expected a list of strings"),
        ("filter tags k=1\n1:[' cornet ']\n\n1:[' trombone ']\n", r":4: filter 1 already"),
        ("filter tags k=1\n1:[__import__('os')]\n", r":2: .*not a Python literal"),
    ],
)
def test_malformed_files_name_the_line(write, text, match):
    with pytest.raises(FiltagFileError, match=match):
        parse_filtag_file(write(text), layer="l")


def test_missing_file(tmp_path):
    with pytest.raises(FiltagFileError, match="cannot read"):
        parse_filtag_file(tmp_path / "nope.txt", layer="l")


def test_ambiguous_names_are_all_reported_not_guessed(write):
    with pytest.raises(AmbiguousLabelError) as err:
        parse_filtag_file(write(AMBIGUOUS), layer="l")
    assert isinstance(err.value, FiltagError)
    problems = err.value.problems
    assert [(p.line, p.filter, p.name) for p in problems] == [
        (2, 372, "crane"), (3, 411, "maillot"), (3, 411, "maillot"), (5, 424, "crane")
    ]
    assert problems[0].candidates == ("n02012849", "n03126707")
    assert problems[1].candidates == ("n03710637", "n03710721")
    assert all(p.kind == "ambiguous" and p.resolved is None for p in problems)
    msg = str(err.value)
    assert "line 5 (filter 424): 'crane' is ambiguous: n02012849 or n03126707" in msg
    assert "--resolve-by-order" in msg


def test_resolve_by_order_uses_the_class_order_of_each_line(write):
    path = write(AMBIGUOUS.replace("k=1", "k=2"))
    with pytest.raises(AmbiguousLabelError) as err:  # line 5 has no neighbours; k=2: no elimination
        parse_filtag_file(path, layer="l", resolve_by_order=True)
    assert [(p.line, p.name) for p in err.value.problems] == [(5, "crane")]
    res = parse_filtag_file(path, layer="l", resolve_by_order=True, on_problem="keep")
    by_filter = {}
    for t in res.tags:
        by_filter.setdefault(t.filter, []).append(t.class_id)
    # between prairie_chicken (83) and bustard (138): the bird (134)
    assert by_filter[372][3] == "n02012849"
    # two maillots between brassiere (459) and swimming_trunks (842): both classes
    assert by_filter[411][2:4] == ["n03710637", "n03710721"]
    assert by_filter[424] == ["crane"]  # kept unlinked, by name
    assert [p.resolved for p in res.problems] == ["n02012849", "n03710637", "n03710721", None]


def test_k1_resolves_the_lone_crane_by_elimination(write, tmp_path):
    """Under k=1 each class tags one filter: with the bird crane placed by class order (line 2),
    the lone crane of line 5 can only be the machine; the summary says how each was resolved."""
    res = parse_filtag_file(write(AMBIGUOUS), layer="l", resolve_by_order=True)
    assert [(p.line, p.resolved, p.resolved_by) for p in res.problems] == [
        (2, "n02012849", "class order"),
        (3, "n03710637", "class order"),
        (3, "n03710721", "class order"),
        (5, "n03126707", "elimination"),
    ]
    assert [(t.filter, t.class_id) for t in res.tags if t.label == "crane"] == [
        (372, "n02012849"), (424, "n03126707")
    ]
    assert res.problems[3].describe().endswith("resolved to n03126707 by elimination")
    # without a resolution by order both cranes are alike: nothing to eliminate, nothing guessed
    with pytest.raises(AmbiguousLabelError):
        parse_filtag_file(write(AMBIGUOUS), layer="l")
    # a crane whose other class is named by wnid elsewhere is settled by elimination alone
    res = parse_filtag_file(write("filter tags k=1\n7:[' n02012849 ']\n9:[' crane ']\n"), layer="l")
    assert [(t.filter, t.class_id) for t in res.tags] == [(7, "n02012849"), (9, "n03126707")]
    out = tmp_path / "imp"
    import_filtag(write(AMBIGUOUS), model="vgg16", layer="l", out_dir=out, resolve_by_order=True)
    doc = json.loads((out / "import.json").read_text())
    assert [p["resolved_by"] for p in doc["problems"]] == ["class order"] * 3 + ["elimination"]


def test_unknown_names_are_problems(write):
    path = write("filter tags k=1\n7:[' cornet ', ' unicorn ']\n")
    with pytest.raises(AmbiguousLabelError, match="'unicorn' is not an ImageNet-1k class"):
        parse_filtag_file(path, layer="l")
    res = parse_filtag_file(path, layer="l", on_problem="keep")
    assert [(t.class_id, t.label) for t in res.tags] == [("n03110669", "cornet"),
                                                         ("unicorn", "unicorn")]
    assert res.problems[0].kind == "unknown" and res.problems[0].candidates == ()


def test_wnids_are_accepted_as_names(write):
    res = parse_filtag_file(write("filter tags k=1\n2:['n03126707']\n"), layer="l")
    assert [(t.class_id, t.label) for t in res.tags] == [("n03126707", "crane")]


def test_bad_option(write):
    with pytest.raises(ValueError, match="on_problem"):
        parse_filtag_file(write(CLEAN), layer="l", on_problem="guess")


def test_feasible_choices():
    assert _feasible([[83], [134, 517], [138]]) == [[83], [134], [138]]
    assert _feasible([[459], [638, 639], [638, 639], [842]]) == [[459], [638], [639], [842]]
    assert _feasible([[134, 517]]) == [[134, 517]]
    assert _feasible([[600], [134, 517], [900]]) == [[], [], []]  # no increasing choice
    assert _feasible([[900], [100]]) == [[], []]  # not in class order: nothing resolvable


def test_import_writes_a_run_folder(write, tmp_path):
    src = write(CLEAN)
    out = tmp_path / "run"
    res = import_filtag(src, model="vgg16", layer="features.28", out_dir=out)
    assert res.files == {"tags": out / "tags.tsv", "import": out / "import.json"}
    tags = read_tags_tsv(out / "tags.tsv")
    assert [(t.filter, t.class_id) for t in tags] == [(t.filter, t.class_id) for t in res.tags]
    assert all(t.layer == "features.28" and t.rank == 0 and math.isnan(t.score) for t in tags)
    doc = json.loads((out / "import.json").read_text())
    assert doc["model"] == "vgg16" and doc["layer"] == "features.28"
    assert (doc["method"], doc["param"], doc["filters"], doc["tags"]) == ("top-k", "1", 5, 12)
    assert doc["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert doc["problems"] == []


def test_import_then_abstract_gives_brass(write, tmp_path):
    from filtag_kg.wordnet import load_wordnet, write_abstractions

    out = tmp_path / "run"
    import_filtag(write(CLEAN), model="vgg16", layer="features.28", out_dir=out)
    write_abstractions(out, wordnet=load_wordnet(source="slice"))
    rows = (out / "abstract_tags.tsv").read_text().splitlines()[1:]
    brass = [r.split("\t") for r in rows if r.split("\t")[3] == "1"]
    assert [(r[4], r[8]) for r in brass] == [("brass.n.02", "3")]


def test_kept_ambiguous_names_stay_unlinked_downstream(write, tmp_path):
    from filtag_kg.wordnet import load_wordnet, map_tag_classes

    res = parse_filtag_file(write(AMBIGUOUS), layer="l", on_problem="keep")
    m = map_tag_classes(res.tags, wordnet=load_wordnet(source="slice"))
    crane = m.links["crane"]
    assert not crane.linked and crane.ambiguous
    assert {"crane.n.04", "crane.n.05"} <= set(crane.candidates)
    assert m.links["n01795545"].linked and m.links["n01795545"].how == "synset-id"
    assert [v.class_id for v in m.unlinked] == ["crane", "maillot"]
