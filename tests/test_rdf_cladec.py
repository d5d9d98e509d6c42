"""The ClaDec graph (R/kg/cladec): decoders as models trained by a ClaDec training, reconstructions
linked to image, layer and model, conforming to the shapes with the tag graph."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import write_images
from rdflib import RDF, Literal, URIRef
from rdflib.namespace import PROV
from test_rdf_support import quads_rdflib, union, validate, wordnet

from filtag_kg.cladec import CladecOptions, run_cladec
from filtag_kg.data import image_folder
from filtag_kg.models import load_model
from filtag_kg.preprocess import Preprocess
from filtag_kg.profile import ProfileOptions, profile_dataset
from filtag_kg.rdf import export_run
from filtag_kg.rdf.vocab import FK, MLS, VOID
from filtag_kg.tagging import TagSetting, write_tags

PRE = Preprocess(resize=None, crop=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("cladec-rdf")
    data = write_images(tmp / "train", per_class=4)
    run = tmp / "run"
    prof = profile_dataset(load_model("tiny_models:build_tiny", preprocess=PRE), image_folder(data), run,
                           ProfileOptions(progress=False, layers=["conv1", "conv2"]))
    write_tags(run, prof, [TagSetting("top-k", 1)])
    opts = dict(epochs=1, batch_size=4, progress=False, reconstructions=2, device="cpu")
    run_cladec(run, ["conv1", "conv3"], data=data, options=CladecOptions(**opts))  # conv3: not profiled
    run_cladec(run, ["conv1"], data=data, options=CladecOptions(**opts, alpha=0.5))
    by_graph: dict = defaultdict(set)
    for s, p, o, g in quads_rdflib(export_run(run, fmt="nq", wordnet=wordnet()), "nq"):
        by_graph[g].add((s, p, o))
    return run, by_graph


def _graph(by_graph: dict, suffix: str) -> object:
    return next(g for g in by_graph if str(g).endswith(suffix))


def test_cladec_graph_conforms_with_the_tag_graph(exported: tuple[Path, dict]) -> None:
    _, by_graph = exported
    unit = {(s, p, o, None) for g in (_graph(by_graph, "/kg/cladec"), _graph(by_graph, "/kg/tags"))
            for s, p, o in by_graph[g]}
    conforms, report = validate(union(unit))
    assert conforms, report
    everything = {(s, p, o, None) for g, ts in by_graph.items() for s, p, o in ts}
    assert validate(union(everything))[0]


def test_decoders_are_models_trained_by_a_cladec_training(exported: tuple[Path, dict]) -> None:
    _, by_graph = exported
    g = union({(s, p, o, None) for ts in by_graph.values() for s, p, o in ts})
    trainings = set(g.subjects(RDF.type, FK.ClaDecTraining))
    assert len(trainings) == 3  # conv1, conv3 and conv1 with alpha 0.5: three IRIs
    run = next(g.subjects(RDF.type, FK.TaggingRun))
    model = next(g.subjects(RDF.type, FK.Model))
    layers = {str(g.value(d, FK.decodedLayer)).rsplit("/", 1)[1] for d in trainings}
    assert layers == {"conv1", "conv3"}
    conv3 = next(d for d in trainings if str(g.value(d, FK.decodedLayer)).endswith("/conv3"))
    assert (g.value(d := conv3, FK.decodedLayer), FK.width, Literal(5)) not in g  # no profile record
    assert (g.value(d, FK.decodedLayer), FK.layerOf, model) in g  # but described in the tag graph
    for d in trainings:
        assert (d, PROV.wasInformedBy, run) in g and (d, FK.decodedModel, model) in g
        outputs = set(g.objects(d, MLS.hasOutput))
        dec = next(o for o in outputs if (o, RDF.type, FK.ClaDecDecoder) in g)
        ref = next(o for o in outputs if (o, RDF.type, FK.ReferenceAutoencoder) in g)
        assert (dec, PROV.wasGeneratedBy, d) in g and (ref, PROV.wasGeneratedBy, d) in g
        assert (dec, FK.referenceAutoencoder, ref) in g
    alphas = sorted(float(a) for d in trainings for a in g.objects(d, FK.alpha))
    assert alphas == [0.0, 0.0, 0.5]


def test_reconstructions_carry_image_layer_model_and_figures(exported: tuple[Path, dict]) -> None:
    run, by_graph = exported
    g = union({(s, p, o, None) for ts in by_graph.values() for s, p, o in ts})
    doc = json.loads((run / "cladec" / "conv3" / "evaluation.json").read_text())
    ev = next(e for e in g.subjects(RDF.type, FK.ClaDecEvaluation)
              if str(g.value(g.value(e, FK.evaluatedDecoder), PROV.wasGeneratedBy)).split("/cladec/")[1]
              .startswith("conv3-"))
    assert float(g.value(ev, FK.claDecError)) == pytest.approx(doc["mse"]["cladec"])
    assert float(g.value(ev, FK.referenceError)) == pytest.approx(doc["mse"]["reference"])
    assert float(g.value(ev, FK.accuracyOnOriginals)) == pytest.approx(doc["accuracy"]["original"])
    assert int(g.value(ev, FK.evaluatedImages)) == doc["images"]
    row = doc["reconstructions"][0]
    image = next(g.subjects(FK.sha256, Literal(row["sha256"])))
    recs = set(g.subjects(FK.reconstructionOf, image))
    by_model = {g.value(r, FK.reconstructedBy): r for r in recs
                if str(g.value(r, FK.reconstructedLayer)).endswith("/conv3")}
    assert len(by_model) == 2
    for m, r in by_model.items():
        kind = "cladec" if (m, RDF.type, FK.ClaDecDecoder) in g else "reference"
        assert float(g.value(r, FK.reconstructionError)) == pytest.approx(row["mse"][kind])
        assert str(g.value(r, FK.reconstructionFile)) == f"cladec/conv3/{row['file']}"
        assert (run / str(g.value(r, FK.reconstructionFile))).is_file()
        concept = g.value(r, FK.reconstructionConcept)
        assert str(concept).endswith("/" + row["prediction"][kind])


def test_void_counts_the_cladec_graph(exported: tuple[Path, dict]) -> None:
    _, by_graph = exported
    void = by_graph[_graph(by_graph, "/kg/void")]
    kg = next(s for s, p, o in void if p == RDF.type and o == FK.KnowledgeGraph)
    total = next(o for s, p, o in void if s == kg and p == VOID.triples)
    assert int(total) == sum(len(ts) for g, ts in by_graph.items() if not str(g).endswith("/kg/void"))


def test_shapes_reject_a_reconstruction_without_its_image(exported: tuple[Path, dict]) -> None:
    _, by_graph = exported
    quads = {(s, p, o, None) for g in (_graph(by_graph, "/kg/cladec"), _graph(by_graph, "/kg/tags"))
             for s, p, o in by_graph[g] if p != FK.reconstructionOf}
    conforms, report = validate(union(quads))
    assert not conforms and "reconstructionOf" in report
    other = URIRef("https://example.org/not-a-decoder")
    unit = (_graph(by_graph, "/kg/cladec"), _graph(by_graph, "/kg/tags"))
    quads = {(s, p, other if p == FK.reconstructedBy else o, None) for g in unit for s, p, o in by_graph[g]}
    assert not validate(union(quads))[0]
