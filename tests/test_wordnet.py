"""WordNet 3.0 sources, class linking, the hypernym hierarchy and abstract tags.

The bundled slice is tested always. The Debian database source needs
``/usr/share/wordnet`` with ``index.sense`` (``apt-get install wordnet-base
wordnet-sense-index``); the nltk source is tested on an nltk data folder that
``install(from_dir=...)`` builds from that database in ``tmp_path``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import networkx as nx
import nltk.data
import pytest

from filtag_kg.errors import DataError, FiltagError, UnknownSynsetError
from filtag_kg.imagenet import imagenet1k_classes
from filtag_kg.tagging import Tag, read_tags_tsv, write_tags_tsv
from filtag_kg.wordnet import (
    MIN_ABSTRACT_DEPTH,
    SHAPE_CLASSES,
    Hierarchy,
    WordNetSourceError,
    abstract_filter_tags,
    clear_cache,
    format_show,
    format_status,
    hypernym_graph,
    install,
    layer_histograms,
    link_class,
    load_wordnet,
    map_classes,
    map_tag_classes,
    read_synset_map,
    show,
    status,
    write_abstractions,
)
from filtag_kg.wordnet import source as wnsource

# CI installs Debian's wordnet-base + wordnet-sense-index; the variable lets a
# run point elsewhere (or at nothing, to exercise the skips).
DEBIAN = Path(os.environ.get("FILTAG_KG_TEST_WORDNET_DIR", "/usr/share/wordnet"))
HAVE_DEBIAN = (DEBIAN / "data.noun").is_file() and (DEBIAN / "index.sense").is_file()
needs_debian = pytest.mark.skipif(
    not HAVE_DEBIAN,
    reason="Debian WordNet 3.0 database absent: apt-get install wordnet-base wordnet-sense-index",
)

CORNET, FRENCH_HORN, TROMBONE = "n03110669", "n03394916", "n04487394"
FRENCH_HORN_PATH = [
    "entity.n.01", "physical_entity.n.01", "object.n.01", "whole.n.02", "artifact.n.01",
    "instrumentality.n.03", "device.n.01", "musical_instrument.n.01", "wind_instrument.n.01",
    "brass.n.02", "french_horn.n.01",
]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Private cache dir, no WNHOME, and an nltk.data.path that cannot leak."""
    monkeypatch.setenv("FILTAG_KG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WNHOME", raising=False)
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    monkeypatch.setattr(wnsource, "DEBIAN_WORDNET_DIR", DEBIAN)
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def slice_wn():
    return load_wordnet(source="slice")


@pytest.fixture(scope="session")
def full_sources(tmp_path_factory):
    """Full WordNet through the database-dir and nltk sources, loaded once.

    Loading reads the index files (about a second each), so both are built
    once per session in a private cache, with nltk.data.path restored
    afterwards. The readers keep their data files open, so later tests do
    not need their roots on nltk.data.path.
    """
    if not HAVE_DEBIAN:
        return None
    base = tmp_path_factory.mktemp("wordnet-session")
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("FILTAG_KG_CACHE", str(base / "cache"))
        mp.delenv("WNHOME", raising=False)
        mp.setattr(nltk.data, "path", list(nltk.data.path))
        clear_cache()
        dir_wn = load_wordnet(wordnet_dir=DEBIAN)
        root = base / "nltk_data"
        install(from_dir=DEBIAN, target=root)
        nltk.data.path.append(str(root))
        nltk_wn = load_wordnet(source="nltk")
        for wn in (dir_wn, nltk_wn):  # open every file the tests use
            wn.synset("dog.n.01")
            wn.noun_count()
    finally:
        mp.undo()
        clear_cache()
    return {"wordnet-dir": dir_wn, "nltk": nltk_wn, "nltk_root": root}


@pytest.fixture
def debian_wn(full_sources):
    if full_sources is None:
        pytest.skip("Debian WordNet 3.0 database absent (apt-get install wordnet-base "
                    "wordnet-sense-index)")
    return full_sources["wordnet-dir"]


@pytest.fixture
def nltk_wn(full_sources):
    if full_sources is None:
        pytest.skip("needs the Debian WordNet database to build an nltk data folder offline")
    return full_sources["nltk"]


@pytest.fixture(params=["slice", "wordnet-dir", "nltk"])
def any_wn(request):
    return request.getfixturevalue({"slice": "slice_wn", "wordnet-dir": "debian_wn",
                                    "nltk": "nltk_wn"}[request.param])


# ---------------------------------------------------------------------------
# the synset API, on every source
# ---------------------------------------------------------------------------


def test_wnid_and_names_round_trip(any_wn):
    assert any_wn.synset("n02084071").name == "dog.n.01"
    assert any_wn.synset("02084071-n").name == "dog.n.01"
    assert any_wn.wnid("dog.n.01") == "n02084071"
    assert any_wn.name("n02084071") == "dog.n.01"
    dog = any_wn.synset("dog.n.01")
    assert dog.lemmas == ("dog", "domestic_dog", "Canis_familiaris")
    assert dog.definition.startswith("a member of the genus Canis")
    assert set(dog.hypernyms) == {"canine.n.02", "domestic_animal.n.01"}


def test_paths_and_depth(any_wn):
    assert any_wn.hypernym_paths(FRENCH_HORN) == [FRENCH_HORN_PATH]
    assert any_wn.depth("entity.n.01") == 0
    assert any_wn.depth(FRENCH_HORN) == len(FRENCH_HORN_PATH) - 1
    # dog.n.01 has two paths: via canine and via domestic_animal (shorter, depth 8)
    paths = any_wn.hypernym_paths("dog.n.01")
    assert len(paths) == 2
    assert all(p[0] == "entity.n.01" and p[-1] == "dog.n.01" for p in paths)
    assert any_wn.depth("dog.n.01") == 8


def test_the_118_dog_breeds_are_imagenet_classes_151_to_268(any_wn):
    dogs = [c.index for c in imagenet1k_classes() if "dog.n.01" in any_wn.ancestors(c.wnid)]
    assert len(dogs) == 118
    assert dogs == list(range(151, 269))


@pytest.mark.parametrize("key", ["n123", "n0208407x", "dog", "", "02084071", "dog.n"])
def test_malformed_keys_are_errors_naming_them(any_wn, key):
    with pytest.raises(UnknownSynsetError, match="malformed") as err:
        any_wn.synset(key)
    assert repr(key) in str(err.value)


def test_non_noun_synset_is_refused(slice_wn):
    with pytest.raises(UnknownSynsetError, match="not a noun synset"):
        slice_wn.synset("run.v.01")


def test_unknown_wnid_is_an_error_naming_it(any_wn):
    with pytest.raises(UnknownSynsetError, match="n99999999"):
        any_wn.synset("n99999999")
    # an offset inside a synset line is not a synset
    with pytest.raises(UnknownSynsetError, match="n02084072"):
        any_wn.synset("n02084072")
    assert any_wn.find("n99999999") is None
    assert "n02084071" in any_wn and "n99999999" not in any_wn


def test_slice_says_when_a_synset_is_outside_it(slice_wn):
    with pytest.raises(UnknownSynsetError, match="not in the bundled WordNet slice"):
        slice_wn.synset("deer.n.01")


def test_lemma_senses_are_exact_and_in_sense_order(any_wn):
    crane = any_wn.lemma_senses("crane")
    assert crane.total == 5
    assert {"crane.n.04", "crane.n.05"} <= set(crane.names)
    numbers = [n for n, _ in crane.senses]
    assert numbers == sorted(numbers)
    assert any_wn.lemma_senses("French horn").names == ("french_horn.n.01",)
    assert any_wn.lemma_senses("dogs").total == 0  # no morphology
    # "lemma.n.NN" names a lemma's sense, as in nltk
    assert any_wn.synset("crane.n.05").wnid == "n02012849"


def test_slice_covers_imagenet_and_shape_paths(slice_wn):
    seeds = [c.wnid for c in imagenet1k_classes()] + list(SHAPE_CLASSES)
    for w in seeds:
        info = slice_wn.synset(w)
        for path in slice_wn.hypernym_paths(w):  # every ancestor is present
            assert path[0] == "entity.n.01" and path[-1] == info.name
    assert slice_wn.synset("n13873502").name == "circle.n.01"
    assert slice_wn.complete is False


def test_slice_equals_full_wordnet_on_its_synsets(slice_wn, debian_wn):
    full = debian_wn
    names = slice_wn.names()
    assert len(names) > 1500
    for n in names:
        assert slice_wn.synset(n) == full.synset(n)
        assert slice_wn.hypernym_paths(n) == full.hypernym_paths(n)
        assert slice_wn.depth(n) == full.depth(n)
    for lemma in ("crane", "cat", "truck", "maillot", "dog"):
        assert slice_wn.lemma_senses(lemma).total == full.lemma_senses(lemma).total


@needs_debian
def test_noun_files_answer_exactly_like_nltk(debian_wn):
    """The direct reads of data.noun / index.noun (no nltk, no lemma index) give the
    synsets nltk's reader gives: every 25th noun synset, the slice's, by offset and name."""
    from filtag_kg.wordnet.source import _NltkWordNet

    nouns = debian_wn._nouns
    assert nouns is not None
    via_nltk = _NltkWordNet(debian_wn._reader, source="nltk", location=str(DEBIAN))
    lines = (nouns.folder / "data.noun").read_bytes().splitlines()
    offsets = [int(x[:8]) for x in lines if not x.startswith(b" ")][::25]
    offsets += sorted(load_wordnet(source="slice")._by_off)[:400]
    assert len(offsets) > 3000
    instance = 0
    for off in offsets:
        got = nouns.by_offset(off)
        assert got == via_nltk._by_offset(off)
        assert nouns.by_name(got.name) == via_nltk._by_name(got.name) == got
        instance += bool(got.instance_hypernyms)
    assert instance > 10  # instance hypernyms (people, places) covered too
    for missing in (1, 2084072):
        assert nouns.by_offset(missing) is None and via_nltk._by_offset(missing) is None
    for name in ("nosuchword.n.01", "dog.n.99", "zzzz.n.01", "a.n.01"):
        assert nouns.by_name(name) == via_nltk._by_name(name)
    for lemma in ("crane", "dog", "a", "zzzz", "new_york", "abc"):
        assert debian_wn.lemma_senses(lemma) == via_nltk.lemma_senses(lemma)
    assert debian_wn.noun_count() == via_nltk.noun_count() == 82115


@needs_debian
def test_loading_wordnet_for_lookups_imports_no_nltk(tmp_path):
    """Export-style look-ups (wnids and synset names) leave nltk and its index unloaded."""
    import subprocess
    import sys

    code = ("import sys; from filtag_kg.wordnet import load_wordnet; w = load_wordnet(); "
            "print(w.source, w.find('n02084071').name, w.find('canine.n.02').wnid, 'nltk' in sys.modules)")
    env = {**os.environ, "FILTAG_KG_CACHE": str(tmp_path / "cache"), "WNHOME": str(DEBIAN),
           "NLTK_DATA": str(tmp_path / "none"), "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["wordnet-dir", "dog.n.01", "n02083346", "False"]


@needs_debian
def test_depths_and_ancestors_agree_with_nltk_itself(debian_wn):
    """Independent check: nltk's own Synset.min_depth and closure()."""
    reader = debian_wn._reader
    for c in imagenet1k_classes()[::37]:
        s = reader.synset_from_pos_and_offset("n", int(c.wnid[1:]))
        assert debian_wn.depth(c.wnid) == s.min_depth()
        ups = {x.name() for x in s.closure(lambda x: x.hypernyms() + x.instance_hypernyms())}
        assert debian_wn.ancestors(c.wnid) == ups


# ---------------------------------------------------------------------------
# sources: selection, database directories, install, status, show
# ---------------------------------------------------------------------------


def test_slice_loads_fast():
    """Timed in a fresh process: this one holds full WordNet, whose many
    objects make garbage collection (and so any timing) slower."""
    import subprocess
    import sys

    code = (
        "import time; from filtag_kg.wordnet import source as s; "
        "best = min((lambda t: (s._SliceWordNet(s.slice_path()), time.perf_counter() - t)[1])"
        "(time.perf_counter()) for _ in range(3)); print(best)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent)
    elapsed = float(out.stdout)
    assert elapsed < 0.5, f"slice load took {elapsed:.3f} s"
    assert load_wordnet(source="slice").noun_count() > 1500


def _map_and_build(wn):
    m = map_classes([c.wnid for c in imagenet1k_classes()], wordnet=wn)
    return m, hypernym_graph([v.synset for v in m.linked], wordnet=wn)


@pytest.mark.parametrize("src", ["slice", "wordnet-dir"])
def test_mapping_1000_classes_and_hierarchy_under_a_second(src, request):
    wn = request.getfixturevalue("slice_wn" if src == "slice" else "debian_wn")
    t0 = time.perf_counter()
    m, g = _map_and_build(wn)
    elapsed = time.perf_counter() - t0
    assert len(m.linked) == 1000
    assert g.nodes["entity.n.01"]["depth"] == 0
    assert elapsed < 1.0, f"mapping + hierarchy took {elapsed:.3f} s"


@needs_debian
def test_database_dir_is_copied_privately_with_lexnames(tmp_path):
    wn = load_wordnet(wordnet_dir=DEBIAN)
    assert wn.source == "wordnet-dir" and wn.location == str(DEBIAN)
    copies = list((tmp_path / "cache" / "wordnet-db").glob("*/corpora/wordnet"))
    assert len(copies) == 1
    lexnames = (copies[0] / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45
    assert lexnames[5] == "05\tnoun.animal\t1" and lexnames[44] == "44\tadj.ppl\t3"
    assert (copies[0] / "index.sense").is_file()
    assert (copies[0] / "data.noun").stat().st_mode & 0o022 == 0
    # nltk's reader is made only when the noun files cannot answer; its root then goes on
    # nltk.data.path so nltk's path check accepts it
    assert wn._loaded_reader is None
    assert wn._reader is not None and str(copies[0].parent.parent) in nltk.data.path
    # a second load reuses the copy
    stamp = copies[0] / "FILTAG_KG_SOURCE.json"
    before = stamp.stat().st_mtime_ns
    clear_cache()
    load_wordnet(wordnet_dir=DEBIAN).synset("dog.n.01")
    assert stamp.stat().st_mtime_ns == before


@needs_debian
def test_wnhome_is_used(tmp_path, monkeypatch):
    home = tmp_path / "WordNet-3.0"
    home.mkdir()
    (home / "dict").symlink_to(DEBIAN)
    monkeypatch.setenv("WNHOME", str(home))
    wn = load_wordnet(source="wordnet-dir")
    assert wn.location == str(home / "dict")
    assert wn.synset("n02084071").name == "dog.n.01"


def test_bad_database_dirs_are_clear_errors(tmp_path):
    with pytest.raises(WordNetSourceError, match="does not exist"):
        load_wordnet(wordnet_dir=tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WordNetSourceError, match="no WordNet database"):
        load_wordnet(wordnet_dir=empty)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "data.noun").write_text("  1 WordNet 3.0 Copyright 2006\n")
    with pytest.raises(WordNetSourceError, match="lacks .*index.noun"):
        load_wordnet(wordnet_dir=partial)
    other = tmp_path / "wn31"
    other.mkdir()
    for f in wnsource._REQUIRED_DB_FILES:
        (other / f).write_text("  1 WordNet 3.1 Copyright 2011\n")
    with pytest.raises(WordNetSourceError, match="version '3.1'"):
        load_wordnet(wordnet_dir=other)
    with pytest.raises(WordNetSourceError, match="unknown WordNet source"):
        load_wordnet(source="wordnet31")


def test_auto_selection_order(monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [])
    wn = load_wordnet()
    assert wn.source == ("wordnet-dir" if HAVE_DEBIAN else "slice")


def test_status_reports_active_source_and_candidates(monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [])
    doc = status()
    json.dumps(doc)  # JSON-ready
    sources = [c["source"] for c in doc["candidates"]]
    assert sources[0] == "nltk" and sources[-1] == "slice"
    assert doc["candidates"][0]["available"] is False
    assert doc["active"]["imagenet1k_resolved"] == 1000
    assert doc["active"]["shape_classes_resolved"] == 10
    text = format_status(doc)
    assert "active source:" in text and "slice" in text
    forced = status(source="slice")
    assert forced["active"]["source"] == "slice" and forced["active"]["complete"] is False
    assert "bundled slice" in forced["active"]["covers"]


@needs_debian
def test_install_from_local_dir_makes_an_nltk_corpus(tmp_path, monkeypatch):
    out = install(from_dir=DEBIAN)  # default target: the cache's nltk_data
    corpus = tmp_path / "cache" / "nltk_data" / "corpora" / "wordnet"
    assert out["method"] == "copy" and out["target"] == str(corpus)
    assert out["noun_synsets"] == 82115  # WordNet 3.0 has 82,115 noun synsets
    assert (corpus / "lexnames").is_file()
    monkeypatch.setattr(nltk.data, "path", [])
    clear_cache()
    wn = load_wordnet()  # nltk comes first, found in our own install root
    assert wn.source == "nltk" and wn.location == str(corpus)
    assert wn.synset("n02084071").name == "dog.n.01"


def test_install_from_a_non_wordnet_dir_fails(tmp_path):
    with pytest.raises(WordNetSourceError, match="no WordNet database"):
        install(from_dir=tmp_path)


def test_nltk_source_reads_the_installed_corpus(nltk_wn, full_sources):
    assert nltk_wn.source == "nltk"
    assert nltk_wn.location == str(full_sources["nltk_root"] / "corpora" / "wordnet")
    assert nltk_wn.noun_count() == 82115


def test_show_gives_paths_and_imagenet_class(slice_wn):
    doc = show("n03394916", wordnet=slice_wn)
    json.dumps(doc)
    assert doc["synset"] == "french_horn.n.01"
    assert doc["lemmas"] == ["French_horn", "horn"]
    assert doc["hypernym_paths"] == [FRENCH_HORN_PATH]
    assert doc["imagenet1k_index"] == 566 and doc["imagenet1k_label"] == "French_horn"
    assert doc["depth"] == 10
    text = format_show(doc)
    assert "brass.n.02 > french_horn.n.01" in text and "ImageNet-1k class 566" in text
    assert show("brass.n.02", wordnet=slice_wn)["imagenet1k_index"] is None


# ---------------------------------------------------------------------------
# linking classes
# ---------------------------------------------------------------------------


def test_wnid_folders_link_directly(any_wn):
    link = link_class("n02084071", wordnet=any_wn)
    assert (link.synset, link.wnid, link.how) == ("dog.n.01", "n02084071", "synset-id")
    assert link_class("dog.n.01", wordnet=any_wn).wnid == "n02084071"


def test_malformed_or_unknown_wnid_class_is_an_error(any_wn):
    with pytest.raises(UnknownSynsetError, match="'n123'"):
        link_class("n123", wordnet=any_wn)
    if any_wn.complete:
        with pytest.raises(UnknownSynsetError, match="n99999999"):
            link_class("n99999999", wordnet=any_wn)
    else:  # may be valid WordNet outside the slice: reported, not fatal
        link = link_class("n99999999", wordnet=any_wn)
        assert not link.linked and "slice" in link.reason


def test_unambiguous_lemma_links(any_wn):
    for label in ("French_horn", "french horn", "FRENCH HORN"):
        link = link_class(label, wordnet=any_wn)
        assert (link.synset, link.how) == ("french_horn.n.01", "lemma")
    assert link_class("zebra", wordnet=any_wn).synset == "zebra.n.01"


def test_ambiguous_lemma_is_reported_not_guessed(any_wn):
    link = link_class("truck", wordnet=any_wn)
    assert not link.linked and link.ambiguous and link.senses == 2
    assert link.candidates[0] == "truck.n.01"
    assert "ambiguous" in link.reason and "--first-sense" in link.reason
    chosen = link_class("truck", wordnet=any_wn, first_sense=True)
    assert (chosen.synset, chosen.how) == ("truck.n.01", "first-sense")
    cat = link_class("cat", wordnet=any_wn, first_sense=True)
    assert cat.synset == "cat.n.01" and cat.senses == 8
    crane = link_class("crane", wordnet=any_wn)
    assert not crane.linked and {"crane.n.04", "crane.n.05"} <= set(crane.candidates)


def test_unknown_lemma_keeps_the_class_unlinked(any_wn):
    m = map_classes(["n02084071", "aquarium_fish", "truck"], wordnet=any_wn)
    assert m.synset_of("n02084071") == "dog.n.01"
    assert [v.class_id for v in m.unlinked] == ["aquarium_fish", "truck"]
    assert [v.class_id for v in m.ambiguous] == ["truck"]
    report = "\n".join(m.report())
    assert "'aquarium_fish' is not linked" in report
    assert "truck.n.01" in report


def test_synset_map_file_wins(tmp_path, slice_wn):
    tsv = tmp_path / "map.tsv"
    tsv.write_text(
        "label\tsynset\n# CIFAR names\ncat\tdomestic_cat.n.01\ntruck\tn04490091\n"
        "crane\tn02012849\n"
    )
    smap = read_synset_map(tsv)
    assert smap == {"cat": "domestic_cat.n.01", "truck": "n04490091", "crane": "n02012849"}
    m = map_classes(["cat", "truck", ("c7", "crane")], wordnet=slice_wn, synset_map=tsv)
    assert m.synset_of("cat") == "domestic_cat.n.01"
    assert m.links["cat"].wnid == "n02121808"
    assert m.synset_of("truck") == "truck.n.01"
    assert m.synset_of("c7") == "crane.n.05"  # matched on the label
    assert all(v.how == "synset-map" for v in m.links.values())
    js = tmp_path / "map.json"
    js.write_text(json.dumps({"cat": "n02121808"}))
    assert read_synset_map(js) == {"cat": "n02121808"}


def test_bad_synset_maps_name_file_and_line(tmp_path, slice_wn, full_sources):
    bad = tmp_path / "bad.tsv"
    bad.write_text("cat\tdomestic_cat.n.01\ntruck\n")
    with pytest.raises(DataError, match=r"bad\.tsv:2"):
        read_synset_map(bad)
    bad.write_text("cat\tkitty\n")
    with pytest.raises(UnknownSynsetError, match=r"bad\.tsv:1.*'cat'.*'kitty'"):
        read_synset_map(bad)
    with pytest.raises(DataError, match="cannot read synset map"):
        read_synset_map(tmp_path / "missing.tsv")
    if full_sources is not None:
        with pytest.raises(UnknownSynsetError, match="n00000007"):
            map_classes(["cat"], wordnet=full_sources["wordnet-dir"],
                        synset_map={"cat": "n00000007"})


# ---------------------------------------------------------------------------
# the hierarchy and abstractions
# ---------------------------------------------------------------------------


def test_hypernym_graph_structure(slice_wn):
    g = hypernym_graph(["n02084071", "n02123045", FRENCH_HORN], wordnet=slice_wn)
    assert nx.is_directed_acyclic_graph(g)
    assert g.graph["root"] == "entity.n.01"
    roots = [n for n in g if g.out_degree(n) == 0]
    assert roots == ["entity.n.01"]
    assert g.has_edge("french_horn.n.01", "brass.n.02")
    assert g.edges["french_horn.n.01", "brass.n.02"]["kind"] == "hypernym"
    for n in g:
        assert g.nodes[n]["depth"] == slice_wn.depth(n)
        assert g.nodes[n]["max_depth"] == max(len(p) for p in slice_wn.hypernym_paths(n)) - 1
    assert g.nodes["dog.n.01"]["seed"] and not g.nodes["canine.n.02"]["seed"]
    assert g.nodes["brass.n.02"]["wnid"] == "n02891788"


@needs_debian
def test_instance_hypernyms_are_edges(debian_wn):
    g = hypernym_graph(["eiffel_tower.n.01"], wordnet=debian_wn)
    assert g.edges["eiffel_tower.n.01", "tower.n.01"]["kind"] == "instance_hypernym"
    assert "entity.n.01" in g


def test_brass_instruments(any_wn):
    got = abstract_filter_tags([CORNET, FRENCH_HORN, TROMBONE], wordnet=any_wn)
    assert [(a.synset, a.cover, a.lemma) for a in got] == [("brass.n.02", 3, "brass")]
    assert got[0].covered == ("cornet.n.01", "french_horn.n.01", "trombone.n.01")
    assert got[0].depth == 9


def test_two_groups_give_two_abstractions(slice_wn):
    got = abstract_filter_tags(
        [CORNET, TROMBONE, "beagle.n.01", "basset.n.01", "n01440764"], wordnet=slice_wn
    )
    assert [(a.synset, a.cover) for a in got] == [("hound.n.01", 2), ("brass.n.02", 2)]


def test_edge_cases(slice_wn):
    assert abstract_filter_tags([CORNET], wordnet=slice_wn) == []
    assert abstract_filter_tags([CORNET, CORNET], wordnet=slice_wn) == []
    own = abstract_filter_tags(["dog.n.01", "beagle.n.01"], wordnet=slice_wn)
    assert [(a.synset, a.cover) for a in own] == [("dog.n.01", 2)]
    single = abstract_filter_tags([CORNET], wordnet=slice_wn, min_cover=1)
    assert [(a.synset, a.cover) for a in single] == [("cornet.n.01", 1)]
    with pytest.raises(FiltagError, match="min_cover"):
        abstract_filter_tags([CORNET], wordnet=slice_wn, min_cover=0)


def test_closed_adds_broader_concepts_covering_more(slice_wn):
    tags = ["tabby.n.01", "n02123159", "beagle.n.01"]  # tabby, tiger cat, beagle
    minimal = abstract_filter_tags(tags, wordnet=slice_wn)
    assert [(a.synset, a.cover) for a in minimal] == [("domestic_cat.n.01", 2)]
    closed = abstract_filter_tags(tags, wordnet=slice_wn, closed=True)
    assert [(a.synset, a.cover) for a in closed] == [
        ("carnivore.n.01", 3), ("domestic_animal.n.01", 3), ("domestic_cat.n.01", 2)
    ]


def _toy_hierarchy():
    """root <- A, B;  x <- A, B (two parents);  y <- A;  z <- B."""
    g = nx.DiGraph()
    depth = {"root": 0, "A": 1, "B": 1, "x": 2, "y": 2, "z": 2}
    for n, d in depth.items():
        g.add_node(n, wnid=f"n{d:08d}", lemma=n, depth=d)
    g.add_edges_from([("A", "root"), ("B", "root"), ("x", "A"), ("x", "B"), ("y", "A"),
                      ("z", "B")])
    return Hierarchy(g)


def test_definition_on_a_hand_made_diamond():
    h = _toy_hierarchy()
    got = h.common_hypernyms(["x", "y", "z"], min_depth=0)
    assert [(a.synset, a.cover, a.covered) for a in got] == [
        ("A", 2, ("x", "y")), ("B", 2, ("x", "z"))
    ]
    closed = h.common_hypernyms(["x", "y", "z"], closed=True, min_depth=0)
    assert [(a.synset, a.cover) for a in closed] == [("root", 3), ("A", 2), ("B", 2)]
    assert [a.synset for a in h.common_hypernyms(["y", "z"], min_depth=0)] == ["root"]
    assert h.common_hypernyms(["y", "z"], min_depth=1) == []  # only the root unites them
    assert h.at_level("x", 1) == {"A", "B"}
    assert h.at_level("root", 3) == {"root"}
    with pytest.raises(UnknownSynsetError, match="'w'"):
        h.common_hypernyms(["w"])


def _tag(filter_, class_id, label, layer="features.28"):
    return Tag("top-k", "1", layer, filter_, class_id, label, math.nan, 0, math.nan)


def test_layer_histograms_by_roots_and_depth(slice_wn):
    tags = [
        _tag(0, "n02088364", "beagle"),
        _tag(0, "n02123045", "tabby"),
        _tag(1, CORNET, "cornet"),
        _tag(2, "zzz", "zzz"),
        _tag(0, CORNET, "cornet", layer="features.0"),
    ]
    mapping = map_tag_classes(tags, wordnet=slice_wn)
    h = Hierarchy.build([v.synset for v in mapping.linked], wordnet=slice_wn)
    rows = layer_histograms(tags, mapping=mapping, hierarchy=h, wordnet=slice_wn,
                            roots=["animal.n.01", "n00021939"])  # artifact by wnid
    got = {(r.layer, r.bucket): (r.tags, r.filters, r.share) for r in rows}
    assert got == {
        ("features.28", "animal.n.01"): (2, 1, 0.5),
        ("features.28", "artifact.n.01"): (1, 1, 0.25),
        ("features.28", "(unlinked)"): (1, 1, 0.25),
        ("features.0", "animal.n.01"): (0, 0, 0.0),
        ("features.0", "artifact.n.01"): (1, 1, 1.0),
    }
    rows = layer_histograms(tags, mapping=mapping, hierarchy=h, wordnet=slice_wn, depth=4)
    got = {(r.layer, r.bucket): r.tags for r in rows}
    assert got == {
        ("features.28", "living_thing.n.01"): 2,
        ("features.28", "artifact.n.01"): 1,
        ("features.28", "(unlinked)"): 1,
        ("features.0", "artifact.n.01"): 1,
    }
    with pytest.raises(FiltagError, match="either a depth or roots"):
        layer_histograms(tags, mapping=mapping, hierarchy=h, wordnet=slice_wn, depth=1,
                         roots=["animal.n.01"])
    with pytest.raises(UnknownSynsetError):
        layer_histograms(tags, mapping=mapping, hierarchy=h, wordnet=slice_wn, roots=["beast"])


def test_write_abstractions_into_a_run_folder(tmp_path, slice_wn):
    run = tmp_path / "run"
    tags = [
        _tag(1, CORNET, "cornet"), _tag(1, FRENCH_HORN, "French_horn"),
        _tag(1, TROMBONE, "trombone"), _tag(2, "n02088364", "beagle"),
        _tag(2, "n02089973", "English_foxhound"), _tag(3, "cat", "cat"),
    ]
    write_tags_tsv(run / "tags.tsv", tags)
    assert read_tags_tsv(run / "tags.tsv") == [
        t for t in read_tags_tsv(run / "tags.tsv")
    ]
    report = write_abstractions(run, wordnet=slice_wn)
    lines = (run / "abstract_tags.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, ln.split("\t"))) for ln in lines[1:]]
    assert [(r["filter"], r["synset"], r["cover"], r["linked_tags"]) for r in rows] == [
        ("1", "brass.n.02", "3", "3"), ("2", "hound.n.01", "2", "2")
    ]
    assert rows[0]["covered_ids"] == f"{CORNET},{FRENCH_HORN},{TROMBONE}"
    assert rows[0]["covered_labels"] == "cornet,French_horn,trombone"
    hist = (run / "hypernym_histogram.tsv").read_text().splitlines()
    assert hist[0].split("\t")[:4] == ["method", "param", "layer", "bucket"]
    assert any("\tartifact.n.01\t" in ln and "\t3\t1\t0.5" in ln for ln in hist)
    links = (run / "class_links.tsv").read_text()
    assert "cat\tcat\t\t\tunlinked\t8\t" in links
    summary = json.loads((run / "abstract.json").read_text())
    assert summary["linked_classes"] == 5 and summary["filters_with_abstractions"] == 2
    assert summary["unlinked_classes"][0]["class_id"] == "cat"
    assert report.filters == 2 and "linked 5/6 classes" in report.summary()
    # --first-sense links "cat"; --depth switches the histogram
    report = write_abstractions(run, wordnet=slice_wn, first_sense=True, depth=6)
    assert len(report.mapping.linked) == 6
    assert json.loads((run / "abstract.json").read_text())["settings"]["histogram"] == {
        "depth": 6
    }


def test_abstract_tags_groups_by_setting_layer_and_filter(slice_wn):
    from filtag_kg.wordnet import abstract_tags

    tags = [_tag(1, CORNET, "cornet"), _tag(1, TROMBONE, "trombone"),
            _tag(1, CORNET, "cornet", layer="features.0"), _tag(1, "xyz", "xyz"),
            _tag(1, FRENCH_HORN, "French_horn", layer="features.0")]
    mapping = map_tag_classes(tags, wordnet=slice_wn)
    h = Hierarchy.build([v.synset for v in mapping.linked], wordnet=slice_wn)
    got = abstract_tags(tags, mapping=mapping, hierarchy=h)
    assert [(f.layer, f.filter, f.linked_tags, f.abstract.synset, f.abstract.cover)
            for f in got] == [("features.28", 1, 2, "brass.n.02", 2),
                              ("features.0", 1, 2, "brass.n.02", 2)]
    assert [t.label for t in got[0].covered] == ["cornet", "trombone"]


def test_write_abstractions_needs_tags(tmp_path, slice_wn):
    with pytest.raises(DataError, match="no tags.tsv"):
        write_abstractions(tmp_path, wordnet=slice_wn)


def test_no_torch_import():
    import subprocess
    import sys

    code = (
        "import sys, filtag_kg.wordnet, filtag_kg.importer, filtag_kg.imagenet; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False"


@needs_debian
def test_install_falls_back_to_a_local_database_when_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(wnsource, "_download", lambda root, quiet: (False, "offline"))
    out = install(target=tmp_path / "nd")
    assert out["method"] == "copy" and out["from"] == str(DEBIAN)
    assert out["download_error"] == "offline"


def test_install_offline_without_any_database_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(wnsource, "_download", lambda root, quiet: (False, "offline"))
    monkeypatch.setattr(wnsource, "DEBIAN_WORDNET_DIR", tmp_path / "absent")
    with pytest.raises(WordNetSourceError, match=r"offline.*apt-get install.*--from DIR"):
        install(target=tmp_path / "nd")


def test_nltk_zip_layout_is_read(full_sources, tmp_path, monkeypatch):
    """nltk's downloader may leave corpora/wordnet.zip unextracted."""
    import zipfile

    if full_sources is None:
        pytest.skip("needs the Debian WordNet database to build an nltk data folder offline")
    corpus = full_sources["nltk_root"] / "corpora" / "wordnet"
    root = tmp_path / "zipped"
    (root / "corpora").mkdir(parents=True)
    with zipfile.ZipFile(root / "corpora" / "wordnet.zip", "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(corpus.iterdir()):
            zf.write(f, f"wordnet/{f.name}")
    (root / "corpora" / "wordnet.zip").chmod(0o644)  # nltk refuses group-writable files
    monkeypatch.setattr(nltk.data, "path", [str(root)])
    wn = load_wordnet(source="nltk")
    assert wn.location.endswith("wordnet.zip/wordnet")
    assert wn.synset("n03394916").name == "french_horn.n.01"


@needs_debian
def test_shipped_slice_is_what_the_script_builds(tmp_path):
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "scripts" / "build_wordnet_slice.py"
    spec = importlib.util.spec_from_file_location("build_wordnet_slice", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "slice.json.gz"
    mod.write(mod.build(str(DEBIAN), []), out)
    assert out.read_bytes() == wnsource.slice_path().read_bytes()


# -- the Collaborative Interlingual Index map ------------------------------------------------


def test_ili_resource_is_checked_built_and_used_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A genuine CILI map (dog.n.01 = i46360) becomes the shipped noun map, byte-stable, and the
    export links synsets to the ILI without being given a map; a copy that numbers nouns by
    WordNet 3.0 offset order (dog.n.01 = i10816, as the copy read for this edition did) is refused."""
    import gzip

    from filtag_kg.rdf.rundata import read_run
    from filtag_kg.rdf.synthetic import write_synthetic_run
    from filtag_kg.rdf.tag_graph import Context
    from filtag_kg.wordnet import ili

    genuine = tmp_path / "ili-map-pwn30.tab"
    genuine.write_text("i1\t00001740-a\ni35545\t02083346-n\ni46360\t02084071-n\ni9999\t00001740-r\n")
    out = tmp_path / "nouns.tsv.gz"
    assert ili.build_ili_resource(genuine, out) == 2
    first = out.read_bytes()
    assert ili.build_ili_resource(genuine, out) == 2 and out.read_bytes() == first
    assert gzip.decompress(first).decode() == "n02083346\ti35545\nn02084071\ti46360\n"
    assert ili.load_ili_resource(out) == {"n02083346": "i35545", "n02084071": "i46360"}
    renumbered = tmp_path / "renumbered.tab"
    renumbered.write_text("i10816\t02084071-n\ni46360\t08548924-n\n")
    with pytest.raises(ili.IliMapError, match="i10816"):
        ili.build_ili_resource(renumbered, tmp_path / "bad.tsv.gz")
    assert ili.load_ili_resource(tmp_path / "absent.tsv.gz") == {}
    # the export's default: the shipped map
    monkeypatch.setattr(ili, "ILI_RESOURCE", out)
    run = write_synthetic_run(tmp_path / "run", layers=[("conv1", 4)], classes=[("n02085620", "Chihuahua")])
    ctx = Context(read_run(run), base_iri="https://example.org/kg/", wordnet=load_wordnet(source="slice"))
    assert ctx.ili["n02084071"] == "i46360"


def test_shipped_ili_map_gives_the_published_ids() -> None:
    """The shipped noun map covers WordNet 3.0's 82,115 nouns with CILI's noun ids, and agrees
    with the ids published outside this package (entity, person, dog, cat, tree)."""
    from filtag_kg.wordnet import ili

    shipped = ili.load_ili_resource()
    assert len(shipped) == 82115
    assert {w: shipped[w] for w in ili.ILI_CHECKS} == {
        "n00001740": "i35545", "n00007846": "i35562", "n02084071": "i46360",
        "n02121620": "i46593", "n13104059": "i105570",
    }
    numbers = sorted(int(i[1:]) for i in shipped.values())
    assert numbers == list(range(35545, 117660))  # one id each, CILI's whole noun range


def test_ili_map_derived_from_wordnet_equals_the_shipped_one(tmp_path: Path) -> None:
    """CILI's numbering applied to a WordNet 3.0 data.noun gives exactly the shipped map; a
    database with another noun count is refused."""
    from filtag_kg.wordnet import ili

    home = next((Path(d) for d in (os.environ.get("WNHOME", ""), "/usr/share/wordnet")
                 if d and (Path(d) / "data.noun").is_file()), None)
    if home is None:
        pytest.skip("no WordNet 3.0 database installed (apt-get install wordnet-base)")
    derived = ili.derive_noun_ili_map(home)
    assert derived == ili.load_ili_resource()
    out = tmp_path / "nouns.tsv.gz"
    assert ili.build_ili_resource(derived, out) == 82115
    assert out.read_bytes() == ili.ILI_RESOURCE.read_bytes()  # byte-identical rebuild
    short = tmp_path / "short"
    short.mkdir()
    (short / "data.noun").write_bytes(b"  header line\n00001740 03 n 01 entity 0 000 | x\n")
    with pytest.raises(ili.IliMapError, match="82115"):
        ili.derive_noun_ili_map(short)


def test_top_of_wordnet_is_never_an_abstract_tag(tmp_path, slice_wn):
    """chiton and soccer ball meet only at whole.n.02 (depth 3): no abstract tag, and the report
    counts the filter; brass instruments on another filter keep theirs."""
    chiton, soccer_ball = "n01955084", "n04254680"
    assert [a.synset for a in abstract_filter_tags([chiton, soccer_ball], wordnet=slice_wn)] == []
    top = slice_wn.synset("whole.n.02").name
    h = Hierarchy.build([chiton, soccer_ball], wordnet=slice_wn)
    names = [slice_wn.synset(w).name for w in (chiton, soccer_ball)]
    assert [a.synset for a in h.common_hypernyms(names, min_depth=0)] == [top]
    assert h.depth(top) == MIN_ABSTRACT_DEPTH - 1
    run = tmp_path / "run"
    write_tags_tsv(run / "tags.tsv", [
        _tag(0, chiton, "chiton"), _tag(0, soccer_ball, "soccer_ball"),
        _tag(1, CORNET, "cornet"), _tag(1, TROMBONE, "trombone"),
    ])
    report = write_abstractions(run, wordnet=slice_wn)
    assert report.filters == 1 and report.too_general == 1
    assert "1 filter(s) have no abstract tag" in report.summary()
    summary = json.loads((run / "abstract.json").read_text())
    assert summary["filters_too_general"] == 1 and summary["settings"]["min_depth"] == MIN_ABSTRACT_DEPTH
    assert "whole.n.02" not in (run / "abstract_tags.tsv").read_text()
