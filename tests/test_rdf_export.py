"""The export: every format parses the same in rdflib and Oxigraph, validates against the
shapes, is deterministic, counts itself right in VoID, and says what the run files say."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from rdflib import RDF, RDFS, SKOS, BNode, Literal, URIRef
from rdflib.namespace import PROV, VOID
from test_rdf_support import (
    LAYERS,
    NAMED_GRAPH_FORMATS,
    make_run,
    quads_oxigraph,
    quads_rdflib,
    union,
    validate,
    values,
    wordnet,
)

from filtag_kg.explain import read_explanations
from filtag_kg.rdf import (
    DEFAULT_BASE_IRI,
    FORMATS,
    BaseIriError,
    ExplanationFileError,
    ExportFormatError,
    Minter,
    RunFolderError,
    build_dataset,
    build_tag_graph,
    export_run,
    export_run_stats,
)
from filtag_kg.rdf.vocab import FK

XSD_DOUBLE = URIRef("http://www.w3.org/2001/XMLSchema#double")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic run with Grad-CAM weights and a perturbation, linked to WordNet."""
    return make_run(
        tmp_path_factory.mktemp("rdf") / "run", images=6, weighting="gradcam",
        perturbation={"kind": "gaussian", "param": 0.1, "seed": 3},
    )


@pytest.fixture(scope="module")
def reference(run: Path, tmp_path_factory: pytest.TempPathFactory) -> set:
    """The N-Quads export parsed by rdflib: what every other format must hold."""
    path = export_run(run, fmt="nq", out=tmp_path_factory.mktemp("ref") / "kg.nq", wordnet=wordnet())
    return quads_rdflib(path, "nq")


def _by_graph(quads: set) -> dict:
    out: dict = defaultdict(set)
    for s, p, o, g in quads:
        out[g].add((s, p, o))
    return out


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_parses_alike_and_validates(fmt: str, run: Path, reference: set, tmp_path: Path) -> None:
    path = export_run(run, fmt=fmt, out=tmp_path / f"kg.{fmt}", wordnet=wordnet())
    by_rdflib, by_oxigraph = quads_rdflib(path, fmt), quads_oxigraph(path, fmt)
    assert by_rdflib == by_oxigraph
    if fmt in NAMED_GRAPH_FORMATS:
        assert by_rdflib == reference
    else:  # formats without named graphs: everything in one graph
        assert {q[:3] for q in by_rdflib} == {q[:3] for q in reference}
    assert not any(isinstance(t, BNode) for q in by_rdflib for t in q)
    conforms, report = validate(union(by_rdflib))
    assert conforms, report


def test_default_output_is_trig_in_the_run_folder(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in run.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    path = export_run(copy, wordnet=wordnet())
    assert path == copy / "kg.trig"
    assert export_run(copy, fmt="xml", wordnet=wordnet()) == copy / "kg.rdf"
    assert sorted(p.name for p in copy.iterdir() if p.name.startswith((".", "kg"))) == ["kg.rdf", "kg.trig"]


def test_nquads_and_ntriples_are_byte_identical_and_sorted_per_graph(run: Path, tmp_path: Path) -> None:
    for fmt in ("nq", "nt"):
        a = export_run(run, fmt=fmt, out=tmp_path / f"a.{fmt}", wordnet=wordnet()).read_bytes()
        b = export_run(run, fmt=fmt, out=tmp_path / f"b.{fmt}", wordnet=wordnet()).read_bytes()
        assert a == b
    lines = (tmp_path / "a.nq").read_text(encoding="utf-8").split("\n")[:-1]
    order: list[str] = []
    graphs: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        graphs[line.rsplit(" ", 2)[1]].append(line)
        if not order or order[-1] != line.rsplit(" ", 2)[1]:
            order.append(line.rsplit(" ", 2)[1])
    assert len(order) == len(graphs)  # each graph is one contiguous block
    for g, ls in graphs.items():
        assert ls == sorted(set(ls)), g


def test_output_does_not_depend_on_hash_seed(run: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from filtag_kg.rdf import export_run; from filtag_kg.wordnet import load_wordnet; "
        "export_run(sys.argv[1], fmt='nq', out=sys.argv[2], wordnet=load_wordnet(source='slice')); "
        "assert 'torch' not in sys.modules and 'pyoxigraph' not in sys.modules, 'heavy import'"
    )
    root = str(Path(__file__).resolve().parents[1])
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=root)
        out = tmp_path / f"seed{seed}.nq"
        subprocess.run([sys.executable, "-c", code, str(run), str(out)], check=True, env=env)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] == export_run(run, fmt="nq", out=tmp_path / "here.nq", wordnet=wordnet()).read_bytes()


def test_void_counts_equal_the_real_counts(reference: set) -> None:
    graphs = _by_graph(reference)
    g = union(reference)
    kg = next(g.subjects(RDF.type, FK.KnowledgeGraph))
    tags_graph = next(g.subjects(RDF.type, FK.TagGraph))
    expl_set = next(g.subjects(RDF.type, FK.ExplanationSet))
    void_graph = next(gr for gr, ts in graphs.items() if (kg, RDF.type, FK.KnowledgeGraph) in ts)
    data_graphs = [gr for gr in graphs if gr not in (tags_graph, void_graph)]
    expl_graphs = [gr for gr in data_graphs if (gr, RDF.type, FK.ImageExplanation) in graphs[gr]]
    classification_graphs = [gr for gr in data_graphs if (gr, RDF.type, FK.ImageClassification) in graphs[gr]]
    assert len(expl_graphs) + len(classification_graphs) == len(data_graphs)
    tag_triples = graphs[tags_graph]

    def count(node: URIRef, prop: URIRef) -> int:
        return int(next(g.objects(node, prop)))

    assert count(tags_graph, VOID.triples) == len(tag_triples)
    assert count(tags_graph, VOID.entities) == len({s for s, _, _ in tag_triples})
    assert count(tags_graph, VOID.distinctSubjects) == len({s for s, _, _ in tag_triples})
    assert count(tags_graph, VOID.properties) == len({p for _, p, _ in tag_triples})
    assert count(tags_graph, VOID.classes) == len({o for _, p, o in tag_triples if p == RDF.type})
    assert count(expl_set, VOID.triples) == sum(len(graphs[gr]) for gr in data_graphs)
    assert count(expl_set, FK.explanationCount) == len(expl_graphs) == 6
    assert count(expl_set, FK.classificationCount) == len(classification_graphs) == 6
    assert (expl_set, FK.explanationPassComplete, Literal(True)) in g
    assert count(kg, VOID.triples) == len(reference) - len(graphs[void_graph])
    assert set(g.objects(kg, VOID.subset)) == {tags_graph, expl_set}
    # each explanation graph is named by its explanation, and links its image's classification
    for gr in expl_graphs:
        assert next(g.objects(gr, FK.classification)) in classification_graphs


def test_tag_graph_says_what_the_run_files_say(run: Path, reference: set) -> None:
    g = union(reference)
    m = Minter(DEFAULT_BASE_IRI)
    profile = json.loads((run / "profile.json").read_text())
    model = URIRef(m.model("vgg16", profile["model"]["weights_sha256"]))
    assert (model, FK.weightsSha256, Literal(profile["model"]["weights_sha256"])) in g
    assert {str(o) for o in g.objects(None, FK.layerName)} == {name for name, _ in LAYERS}
    assert len(set(g.subjects(RDF.type, FK.Filter))) == sum(w for _, w in LAYERS)
    layer = URIRef(m.layer(str(model), "features.28"))
    assert (layer, FK.width, Literal(8)) in g and (layer, FK.layerIndex, Literal(1)) in g
    # every row of tags.tsv is a qualified tag with its score and rank, and a one-hop triple
    with open(run / "tags.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(set(g.subjects(RDF.type, FK.Tag))) == len(rows)
    for r in rows:
        f = URIRef(m.filter(str(model), r["layer"], int(r["filter"])))
        c = URIRef(m.concept(r["class_id"], None))
        tag = next(t for t in g.subjects(FK.filter, f)
                   if (t, FK.tagConcept, c) in g and (t, RDF.type, FK.Tag) in g)
        assert float(next(g.objects(tag, FK.score))) == float(r["score"])
        assert int(next(g.objects(tag, FK.rank))) == int(r["rank"])
        assert (f, FK.taggedWith, c) in g
    # concepts: WordNet synsets up to entity.n.01; Princeton's WordNet 3.0 route is a look-up alias
    # (rdfs:seeAlso), not an identity (skos:exactMatch)
    chihuahua = URIRef(m.synset("n02085620"))
    assert (chihuahua, SKOS.prefLabel, Literal("Chihuahua", lang="en")) in g
    assert (chihuahua, RDFS.seeAlso, URIRef("http://wordnet-rdf.princeton.edu/pwn30/02085620-n")) in g
    assert not any("wordnet-rdf.princeton.edu" in o for o in g.objects(None, SKOS.exactMatch))
    up, seen = [chihuahua], set()
    while up:
        c = up.pop()
        seen.add(str(next(g.objects(c, FK.synsetName))))
        up += list(g.objects(c, SKOS.broader))
    assert {"dog.n.01", "mammal.n.01", "entity.n.01"} <= seen
    unlinked = URIRef(m.label_concept("zz unlinked"))
    assert (unlinked, SKOS.prefLabel, Literal("zz unlinked")) in g
    assert not list(g.objects(unlinked, SKOS.exactMatch))
    # abstract tags with their coverage
    with open(run / "abstract_tags.tsv", encoding="utf-8", newline="") as fh:
        abstract = list(csv.DictReader(fh, delimiter="\t"))
    assert abstract and len(set(g.subjects(RDF.type, FK.AbstractTag))) == len(abstract)
    assert sorted(int(o) for o in g.objects(None, FK.coverCount)) == sorted(int(r["cover"]) for r in abstract)
    # provenance: the run used the model and the dataset, with times, software and settings
    run_iri = next(g.subjects(RDF.type, FK.TaggingRun))
    assert (run_iri, PROV.used, model) in g
    ds = next(g.objects(run_iri, FK.profiledDataset))
    assert (ds, FK.skippedCount, Literal(1)) in g
    assert str(next(g.objects(run_iri, PROV.startedAtTime))) == profile["started_at"]
    assert {str(o) for o in g.objects(None, FK.softwareVersion)} >= set(profile["software"].values())
    assert values(g, FK.parameterName) >= {"batch_size", "measure", "preprocess.crop"}
    setting = next(g.subjects(RDF.type, FK.TagSetting))
    assert (setting, FK.method, FK.TopK) in g and float(next(g.objects(setting, FK.parameter))) == 2


def test_explanation_graphs_say_what_the_json_lines_say(run: Path, reference: set) -> None:
    graphs = _by_graph(reference)
    m = Minter(DEFAULT_BASE_IRI)
    lines = list(read_explanations(run))
    run_iri = str(next(s for s, p, o, _ in reference if o == FK.TaggingRun))
    for rec in lines:
        e = URIRef(m.explanation(run_iri, rec["index"], rec["method"], rec["param"], rec["perturbation"],
                                 rec["weighting"]))
        c = URIRef(m.classification(run_iri, rec["index"], rec["perturbation"]))
        assert (e, FK.classification, c) in graphs[e]
        # what the model said is in the classification graph, once, not in the explanation graph
        assert not any(p in (FK.image, FK.imagePath, FK.hasModelPrediction, FK.modelTopConcept)
                       for _, p, _ in graphs[e])
        g = union({(s, p, o, e) for s, p, o in graphs[e] | graphs[c]})
        assert (c, FK.imagePath, Literal(rec["image"])) in g
        assert (URIRef(m.image(rec["sha256"])), FK.sha256, Literal(rec["sha256"])) in g
        active = set()
        for a in g.objects(e, FK.hasActiveFilter):
            f = next(g.objects(a, FK.filter))
            active.add((str(f), float(next(g.objects(a, FK.activation))), int(next(g.objects(a, FK.rank))),
                        float(next(g.objects(a, FK.weight)))))
        weights = json.loads((run / "profile.json").read_text())["model"]["weights_sha256"]
        model_iri = m.model("vgg16", weights)
        assert active == {
            (m.filter(model_iri, layer, r["filter"]), r["value"], r["rank"], r["weight"])
            for layer, rows in rec["active_filters"].items() for r in rows
        }
        votes = {(str(next(g.objects(v, FK.voteConcept))), float(next(g.objects(v, FK.voteScore))),
                  int(next(g.objects(v, FK.voteCount)))) for v in g.objects(e, FK.hasVote)}
        assert votes == {(m.concept(c, None), s, rec["vote_counts"][c]) for c, s in rec["votes"].items()}
        assert len(list(g.objects(e, FK.hasLastLayerVote))) == len(rec["votes_last_layer"])
        preds = {(int(next(g.objects(p, FK.rank))), float(next(g.objects(p, FK.probability))))
                 for p in g.objects(c, FK.hasModelPrediction)}
        assert preds == {(i + 1, p["prob"]) for i, p in enumerate(rec["model_top"])}
        assert (c, FK.modelTopConcept, URIRef(m.concept(rec["model_top"][0]["class_id"], None))) in g
        assert (e, FK.predictedConcept, URIRef(m.concept(rec["prediction"], None))) in g
        assert (c, FK.trueConcept, URIRef(m.concept(rec["true_class"], None))) in g
        assert (e, FK.weighting, Literal("gradcam")) in g
        pert = next(g.objects(c, FK.perturbation))
        assert (pert, FK.perturbationParameter, Literal("0.1", datatype=XSD_DOUBLE)) in g


def test_rdflib_builders_hold_the_same_graphs(run: Path, reference: set) -> None:
    ds = build_dataset(run, wordnet=wordnet())
    got = set()
    for s, p, o, g in ds.quads((None, None, None, None)):
        got.add((s, p, o, getattr(g, "identifier", g)))
    assert got == reference
    tags = build_tag_graph(run, wordnet=wordnet())
    assert set(tags) == _by_graph(reference)[tags.identifier]


def test_base_iri_and_without_explanations(run: Path, tmp_path: Path) -> None:
    stats = export_run_stats(run, fmt="nq", out=tmp_path / "kg.nq", base_iri="https://example.org/kg",
                             wordnet=wordnet(), explanations=False)
    assert stats.explanations == 0 and stats.explanation_triples == 0
    quads = quads_oxigraph(tmp_path / "kg.nq", "nq")
    vocabularies = ("http://www.w3.org/", "https://w3id.org/", "https://purl.org/", "http://rdfs.org/",
                    "http://purl.org/", "http://wordnet-rdf.princeton.edu/", "https://wordnet.princeton.edu/",
                    "http://globalwordnet.org/ili/")
    for s, _, o, g in quads:
        assert str(s).startswith("https://example.org/kg/") and str(g).startswith("https://example.org/kg/")
        if isinstance(o, URIRef):
            assert str(o).startswith(("https://example.org/kg/", *vocabularies)), o
    assert not any((None, RDF.type, FK.ImageExplanation) == (None, p, o) for _, p, o, _ in quads)
    assert stats.run_iri.startswith("https://example.org/kg/run/vgg16-")


def test_errors_name_the_input_and_the_fix(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportFormatError, match=r"'yaml'.*trig, nq, nt, ttl, jsonld, xml"):
        export_run(run, fmt="yaml")
    with pytest.raises(BaseIriError, match="example.org/kg/"):
        export_run(run, base_iri="not an iri")
    with pytest.raises(RunFolderError, match=r"no tags\.tsv in .*filtag-kg run"):
        export_run(tmp_path)
    with pytest.raises(RunFolderError, match="does not exist"):
        export_run(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("profile.json", "tags.tsv"):
        (bad / name).write_bytes((run / name).read_bytes())
    good = json.dumps(next(read_explanations(run)))
    (bad / "explanations.jsonl").write_text(good + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(ExplanationFileError, match=r"explanations\.jsonl:3: not valid JSON"):
        export_run(bad, fmt="nq", wordnet=wordnet())
    rec = json.loads(good)
    del rec["method"]
    (bad / "explanations.jsonl").write_text(good + "\n" + json.dumps(rec) + "\n", encoding="utf-8")
    with pytest.raises(ExplanationFileError, match=r"explanations\.jsonl:2: .*missing field 'method'"):
        export_run(bad, fmt="nq", wordnet=wordnet())
    meta = json.loads((run / "explanations.json").read_text())
    meta["model"]["weights_sha256"] = "f" * 64
    (bad / "explanations.json").write_text(json.dumps(meta))
    with pytest.raises(RunFolderError, match="other model weights"):
        export_run(bad, fmt="nq", wordnet=wordnet())
    assert not [p for p in bad.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_imported_filtag_tags_export_what_is_there(tmp_path: Path) -> None:
    from filtag_kg.importer import import_filtag

    src = tmp_path / "EXAMPLE_FilterTags_VGG16_conv5-3_k1.txt"
    src.write_text("filter tags k=1\n0:[' chiton ', ' soccer_ball ']\n1:[' cornet ', ' French_horn ', "
                   "' trombone ']\n3:[]\n", encoding="utf-8")
    out = tmp_path / "imported"
    import_filtag(src, model="vgg16", layer="features.28", out_dir=out)
    path = export_run(out, fmt="trig", wordnet=wordnet())
    quads = quads_rdflib(path, "trig")
    assert quads == quads_oxigraph(path, "trig")
    g = union(quads)
    conforms, report = validate(g)
    assert conforms, report
    run_iri = next(g.subjects(RDF.type, FK.TaggingRun))
    info = json.loads((out / "import.json").read_text())
    assert (run_iri, FK.sourceSha256, Literal(info["source_sha256"])) in g
    assert len(set(g.subjects(RDF.type, FK.Tag))) == 5
    assert not list(g.objects(None, FK.score))  # the reference records no scores: none invented
    model = next(g.subjects(RDF.type, FK.Model))
    assert str(model).startswith(DEFAULT_BASE_IRI + "model/vgg16-")
    assert values(g, FK.layerName) == {"features.28"}
    french_horn = URIRef(Minter(DEFAULT_BASE_IRI).synset("n03394916"))
    assert (french_horn, SKOS.prefLabel, Literal("French horn", lang="en")) in g


def test_a_real_profiled_and_explained_run(image_dir: Path, tmp_path: Path) -> None:
    """The whole pipeline on a tiny CPU model: run, explain (Grad-CAM, a perturbation), export."""
    from filtag_kg.cli import main

    out = tmp_path / "run"
    assert main(["run", "--model", "tiny_models:build_tiny", "--image-size", "16", "--data", str(image_dir),
                 "--k", "1", "--percent", "40", "--out", str(out), "--quiet"]) == 0
    assert main(["explain", str(out), "--data", str(image_dir), "--k", "1", "--weighting", "gradcam",
                 "--perturb", "blur:1", "--quiet"]) == 0
    path = export_run(out, fmt="trig", wordnet=wordnet())
    quads = quads_rdflib(path, "trig")
    assert quads == quads_oxigraph(path, "trig")
    g = union(quads)
    conforms, report = validate(g)
    assert conforms, report
    n_lines = len(list(read_explanations(out)))
    assert len(set(g.subjects(RDF.type, FK.ImageExplanation))) == n_lines == 2 * 12
    assert {str(o) for o in g.objects(None, FK.layerName)} == {"conv1", "conv2", "conv3"}
    assert len(set(g.subjects(RDF.type, FK.TagSetting))) == 2
    for o in g.objects(None, FK.activation):
        assert o.datatype == XSD_DOUBLE and math.isfinite(float(o))


def test_partial_and_repeated_entries_give_sorted_unique_counted_lines(run: Path) -> None:
    from filtag_kg.rdf.explanation_graph import ExplanationEncoder
    from filtag_kg.rdf.rundata import read_run
    from filtag_kg.rdf.tag_graph import Context

    ctx = Context(read_run(run), base_iri=DEFAULT_BASE_IRI, wordnet=wordnet())
    active = {
        "features.0": [
            {"filter": 1, "value": float("nan")},  # repeated below: the last entry wins
            {"filter": 1, "value": 0.5, "rank": 1},
            {"filter": 10, "value": 2.0, "rank": 2, "weight": float("inf")},
        ],
        "new layer": [{"filter": 0, "value": 1.0, "rank": 1, "weight": -0.5}],
    }
    records = [
        {"index": 3, "method": "top-k", "param": "2", "image": None, "sha256": None,
         "model_top": [{"class_id": "n02085620"}, {"class_id": "new class", "label": "new", "prob": 0.5}],
         "active_filters": active,
         "votes": {"n02085620": 1.5}, "vote_counts": {"n02085620": 2, "zz unlinked": 1},
         "votes_last_layer": {"n02085620": None}, "prediction": None, "perturbation": {"kind": "blur"}},
        {"index": "7", "method": "above-average", "param": None, "active_filters": {}},
    ]
    for graphs in (True, False):
        enc = ExplanationEncoder(ctx, graphs=graphs)
        for rec in records:
            for iri, text, n in (enc.classify(rec), enc.encode(rec)):
                lines = text.split("\n")[:-1]
                assert lines == sorted(set(lines)) and n == len(lines)
                assert all(line.endswith(f" <{iri}> ." if graphs else " .") for line in lines)
                assert len(quads_oxigraph_text(text, graphs)) == n  # parses
            assert enc.classify(rec) is None  # an image's classification is written once
    # what the lines referenced is described in the tag graph
    assert 10 in ctx.filters["features.0"] and ctx.filters["new layer"] == {0}
    assert "new class" in ctx.labels and ("above-average", "") in ctx.settings


def quads_oxigraph_text(text: str, graphs: bool) -> set:
    import pyoxigraph as ox

    fmt = ox.RdfFormat.N_QUADS if graphs else ox.RdfFormat.N_TRIPLES
    return {(str(q.subject), str(q.predicate), str(q.object), None) for q in ox.parse(text, fmt)}


def test_ili_links_and_text_or_binary_streams(run: Path, tmp_path: Path) -> None:
    import io

    from filtag_kg.rdf import write_nquads

    ili = tmp_path / "ili-map-pwn30.tab"
    ili.write_text("i46360\t02084071-n\ni1\t00001740-a\n", encoding="utf-8")  # dog; an adjective
    binary = io.BytesIO()
    write_nquads(run, binary, wordnet=wordnet(), ili_map=ili)
    (tmp_path / "ili.nq").write_bytes(binary.getvalue())
    g = union(quads_oxigraph(tmp_path / "ili.nq", "nq"))
    dog = URIRef(Minter(DEFAULT_BASE_IRI).synset("n02084071"))
    assert set(g.objects(dog, SKOS.exactMatch)) == {URIRef("http://globalwordnet.org/ili/i46360")}
    assert (dog, RDFS.seeAlso, URIRef("http://wordnet-rdf.princeton.edu/pwn30/02084071-n")) in g
    text = io.StringIO()
    write_nquads(run, text, wordnet=wordnet(), ili_map=ili)
    assert text.getvalue().encode("utf-8") == binary.getvalue()
    with open(tmp_path / "kg.nq", "w", encoding="utf-8") as fh:
        fh.write("")  # a text file: written through its binary buffer
        write_nquads(run, fh, wordnet=wordnet(), ili_map=ili)
    assert (tmp_path / "kg.nq").read_bytes() == binary.getvalue()
    bad = tmp_path / "bad.tab"
    bad.write_text("not a map\n", encoding="utf-8")
    with pytest.raises(RunFolderError, match="bad.tab:1"):
        export_run(run, fmt="nq", out=tmp_path / "x.nq", wordnet=wordnet(), ili_map=bad)


def test_each_validation_unit_conforms_on_its_own(tmp_path: Path) -> None:
    """The graphs the shapes (and ontology/README.md) name as validation units each conform:
    the tag graph alone; VoID + tags; each classification + tags; each explanation + tags + the
    classification it links. An explanation graph alone does not (its filters, concepts and
    setting are described in the tag graph)."""
    run = make_run(tmp_path / "run", images=2, perturbation={"kind": "blur", "param": 1.0, "seed": 0})
    graphs = _by_graph(quads_rdflib(export_run(run, fmt="nq", wordnet=wordnet()), "nq"))

    def unit(*names: URIRef) -> object:
        return union({(s, p, o, None) for n in names for s, p, o in graphs[n]})

    tags = next(n for n in graphs if str(n).endswith("/kg/tags"))
    void = next(n for n in graphs if str(n).endswith("/kg/void"))
    explanations = [n for n in graphs if (n, RDF.type, FK.ImageExplanation) in graphs[n]]
    classifications = [n for n in graphs if (n, RDF.type, FK.ImageClassification) in graphs[n]]
    assert len(explanations) == len(classifications) == 2
    units = [(tags,), (void, tags)] + [(c, tags) for c in classifications]
    units += [(e, tags, next(o for s, p, o in graphs[e] if p == FK.classification)) for e in explanations]
    for names in units:
        conforms, report = validate(unit(*names))
        assert conforms, (names, report)
    assert not validate(unit(explanations[0]))[0]
