"""The ontology and the shapes: they parse, every term is declared, labelled and defined, the
vocabulary class matches the ontology, and an OWL-RL closure gives the promised entailments."""

from __future__ import annotations

from pathlib import Path

import owlrl
import pytest
from rdflib import OWL, RDF, RDFS, SKOS, Dataset, Graph, Namespace, URIRef
from rdflib.namespace import PROV
from test_rdf_support import ONTOLOGY, ROOT, SHAPES, make_run, quads_rdflib, union, wordnet

from filtag_kg.rdf import export_run
from filtag_kg.rdf.vocab import FK, FK_NAMESPACE, ONTOLOGY_IRI, ONTOLOGY_VERSION_IRI, PREFIXES

SH = Namespace("http://www.w3.org/ns/shacl#")
MLS = Namespace(PREFIXES["mls"])
NNO = Namespace(PREFIXES["nno"])
EO = Namespace(PREFIXES["eo"])
DECLARATIONS = (OWL.Class, OWL.ObjectProperty, OWL.DatatypeProperty, OWL.NamedIndividual)


@pytest.fixture(scope="module")
def onto() -> Graph:
    return Graph().parse(str(ONTOLOGY), format="turtle")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Graph:
    run = make_run(tmp_path_factory.mktemp("onto") / "run", images=3, weighting="gradcam",
                   perturbation={"kind": "blur", "param": 1.0, "seed": 0})
    return union(quads_rdflib(export_run(run, fmt="nq", wordnet=wordnet()), "nq"))


def _declared(onto: Graph) -> dict[str, set[URIRef]]:
    out: dict[str, set[URIRef]] = {}
    for s, o in onto.subject_objects(RDF.type):
        if str(s).startswith(FK_NAMESPACE) and o in DECLARATIONS:
            out.setdefault(str(s)[len(FK_NAMESPACE):], set()).add(o)
    return out


def test_ontology_header(onto: Graph) -> None:
    o = URIRef(ONTOLOGY_IRI)
    assert (o, RDF.type, OWL.Ontology) in onto
    assert (o, OWL.versionIRI, URIRef(ONTOLOGY_VERSION_IRI)) in onto
    assert FK_NAMESPACE == ONTOLOGY_IRI + "#"  # dereferencing a term yields the ontology
    assert ONTOLOGY_VERSION_IRI.startswith(ONTOLOGY_IRI + "/")


def test_vocabulary_class_and_ontology_declare_the_same_terms(onto: Graph) -> None:
    declared = _declared(onto)
    in_code = set(FK.__annotations__)
    assert set(declared) == in_code
    assert all(len(kinds) == 1 for kinds in declared.values()), "a term declared as two kinds"
    with pytest.raises(AttributeError):
        FK.notATerm  # noqa: B018 - _fail = True: typos are errors


def test_every_term_is_labelled_and_defined_in_english(onto: Graph) -> None:
    for name in FK.__annotations__:
        term = FK[name]
        labels = [o for o in onto.objects(term, RDFS.label) if o.language == "en"]
        definitions = [o for o in onto.objects(term, SKOS.definition) if o.language == "en"]
        assert len(labels) == 1 and len(definitions) == 1, name
        assert len(str(definitions[0]).split()) >= 4, name
        assert (term, RDFS.isDefinedBy, URIRef(ONTOLOGY_IRI)) in onto


def test_domains_ranges_and_parents_are_declared(onto: Graph) -> None:
    classes = set(onto.subjects(RDF.type, OWL.Class))
    xsd = "http://www.w3.org/2001/XMLSchema#"
    for prop in (RDFS.domain, RDFS.subClassOf):
        for s, o in onto.subject_objects(prop):
            assert o in classes, (s, prop, o)
    for s, o in onto.subject_objects(RDFS.range):
        assert o in classes or str(o).startswith(xsd) or o == RDF.langString, (s, o)  # fk:sentence
    props = set(onto.subjects(RDF.type, OWL.ObjectProperty))
    props |= set(onto.subjects(RDF.type, OWL.DatatypeProperty))
    for s, o in onto.subject_objects(RDFS.subPropertyOf):
        assert o in props, (s, o)


def test_every_fk_term_an_export_uses_is_declared(onto: Graph, export: Graph) -> None:
    declared = set(_declared(onto))
    used = {str(t)[len(FK_NAMESPACE):] for triple in export for t in triple
            if str(t).startswith(FK_NAMESPACE) and str(t) != FK_NAMESPACE}
    assert used and used <= declared
    # and every fk class the data uses has a node shape
    shapes = Graph().parse(str(SHAPES), format="turtle")
    targeted = set(shapes.objects(None, SH.targetClass))
    for cls in set(export.objects(None, RDF.type)):
        if str(cls).startswith(FK_NAMESPACE):
            assert cls in targeted, cls


def test_shapes_parse_and_target_declared_classes(onto: Graph) -> None:
    shapes = Graph().parse(str(SHAPES), format="turtle")
    classes = set(onto.subjects(RDF.type, OWL.Class))
    targets = set(shapes.objects(None, SH.targetClass))
    assert targets and targets <= classes
    for path in shapes.objects(None, SH.path):
        if str(path).startswith(FK_NAMESPACE):
            assert str(path)[len(FK_NAMESPACE):] in FK.__annotations__, path


def test_owl_rl_closure_gives_the_expected_entailments(onto: Graph, export: Graph) -> None:
    g = Graph()
    for t in export:
        g.add(t)
    run = next(g.subjects(RDF.type, FK.TaggingRun))
    model = next(g.subjects(RDF.type, FK.Model))
    layer = next(g.subjects(RDF.type, FK.Layer))
    expl = next(g.subjects(RDF.type, FK.ImageExplanation))
    class_expl = next(g.subjects(RDF.type, FK.ClassExplanation))
    setting = next(g.subjects(RDF.type, FK.TagSetting))
    synset = next(g.subjects(RDF.type, FK.Synset))
    # drop what the export materialises, so that only the ontology can bring it back
    for s, o in ((run, PROV.Activity), (run, MLS.Run), (model, NNO.Model), (layer, NNO.Layer),
                 (expl, EO.LocalExplanation), (class_expl, EO.GlobalExplanation),
                 (setting, MLS.HyperParameterSetting), (synset, SKOS.Concept)):
        g.remove((s, RDF.type, o))
    g.remove((run, PROV.used, None))
    g.remove((model, NNO.hasLayer, None))
    g += onto
    owlrl.DeductiveClosure(owlrl.OWLRL_Semantics).expand(g)
    assert (run, RDF.type, PROV.Activity) in g  # a tagging run is a prov:Activity
    assert (run, RDF.type, MLS.Run) in g
    assert (run, PROV.used, model) in g  # via fk:taggedModel
    assert (model, RDF.type, NNO.Model) in g and (model, RDF.type, MLS.Model) in g
    assert (model, NNO.hasLayer, layer) in g  # fk:layerOf is its inverse
    assert (layer, RDF.type, NNO.Layer) in g
    assert (expl, RDF.type, EO.LocalExplanation) in g
    assert (class_expl, RDF.type, EO.GlobalExplanation) in g
    assert (setting, RDF.type, MLS.HyperParameterSetting) in g
    assert (synset, RDF.type, SKOS.Concept) in g
    assert not list(g.subjects(RDF.type, OWL.Nothing))  # consistent


def test_readme_documents_every_term_and_its_example_is_valid(onto: Graph) -> None:
    text = (ROOT / "ontology" / "README.md").read_text(encoding="utf-8")
    missing = [name for name in FK.__annotations__ if f"fk:{name}" not in text]
    assert not missing, missing
    assert Path(ONTOLOGY).name in text and Path(SHAPES).name in text
    example = text.split("```trig\n", 1)[1].split("```", 1)[0]
    ds = Dataset()
    ds.parse(data=example, format="trig")
    used = {str(t)[len(FK_NAMESPACE):] for q in ds.quads((None, None, None, None)) for t in q[:3]
            if str(t).startswith(FK_NAMESPACE)}
    assert used and used <= set(_declared(onto))


def _represents_by_reasoning(onto: Graph, tag_graph: Graph) -> set[tuple[str, str]]:
    g = Graph()
    for t in tag_graph:
        g.add(t)
    g += onto
    owlrl.DeductiveClosure(owlrl.OWLRL_Semantics).expand(g)
    assert not list(g.subjects(RDF.type, OWL.Nothing))  # consistent
    return {(str(f), str(c)) for f, c in g.subject_objects(FK.represents)}


@pytest.mark.parametrize(
    ("concept", "classes"),
    [
        # ImageNet-like: dog breeds, a wolf, cats and a few artefacts
        ("dog.n.01", slice(145, 165)),
        # the demo's plane shapes: polygons and curved shapes
        ("polygon.n.01", None),
    ],
    ids=["dog", "polygon"],
)
def test_owl_rl_derives_exactly_the_filters_filters_for_concept_finds(
    onto: Graph, tmp_path: Path, concept: str, classes: slice | None
) -> None:
    from filtag_kg import sparql
    from filtag_kg.imagenet import imagenet1k_classes
    from filtag_kg.rdf.synthetic import write_synthetic_run
    from filtag_kg.shapes import SHAPE_CLASSES

    chosen = (
        [(c.wnid, c.label) for c in imagenet1k_classes()[classes]] if classes else list(SHAPE_CLASSES)
    )
    run = write_synthetic_run(tmp_path / "run", layers=[("conv1", 8), ("conv2", 12)], classes=chosen, k=2)
    path = export_run(run, fmt="nq", out=tmp_path / "kg.nq", wordnet=wordnet(), explanations=False)
    rows = sparql.query(sparql.open_source(graphs=[path]), "filters-for-concept", concept=concept,
                        wordnet=wordnet()).dicts()
    found = {r["filterIri"] for r in rows}
    target = next(r["concept"] for r in rows)
    assert 0 < len(found) < 20  # some filters, not all
    quads = quads_rdflib(path, "nq")
    tag_graph = union({q for q in quads if str(q[3]).endswith("/kg/tags")})
    derived = _represents_by_reasoning(onto, tag_graph)
    synset = next(str(s) for s, o in tag_graph.subject_objects(FK.wnid) if str(o) == target)
    assert {f for f, c in derived if c == synset} == found
    # `export --materialize` writes exactly what the reasoner derives, for stores that do not reason
    mat = export_run(run, fmt="nq", out=tmp_path / "mat.nq", wordnet=wordnet(), explanations=False,
                     materialize=True)
    written = {(str(s), str(o)) for s, p, o, _ in quads_rdflib(mat, "nq") if p == FK.represents}
    assert written == derived


def test_alignment_axioms(onto: Graph) -> None:
    # fk:taggedModel names the model the run tagged: a prov:used, not an ML-Schema input (data or setting)
    assert (FK.taggedModel, RDFS.subPropertyOf, MLS.hasInput) not in onto
    # ML-Schema links an algorithm to its hyperparameters, a setting to its hyperparameter
    assert not list(onto.triples((FK.TopK, MLS.specifiedBy, None)))
    assert (FK.TopK, MLS.hasHyperParameter, FK.KParameter) in onto
    # dcterms:creator takes an agent
    creator = next(onto.objects(URIRef(ONTOLOGY_IRI), URIRef("http://purl.org/dc/terms/creator")))
    assert isinstance(creator, URIRef) and (creator, RDF.type, PROV.Agent) in onto
    # the reasoning axioms
    assert (SKOS.broader, RDFS.subPropertyOf, SKOS.broaderTransitive) in onto
    assert (SKOS.broaderTransitive, RDF.type, OWL.TransitiveProperty) in onto
    assert (FK.taggedWith, RDFS.subPropertyOf, FK.represents) in onto
    for sub in (FK.tagConcept, FK.voteConcept, FK.lastLayerVoteConcept, FK.predictionConcept):
        assert (sub, RDFS.subPropertyOf, FK.concept) in onto


def test_each_term_and_shape_is_written_once() -> None:
    """A merge once left the SAG/iGOS++ sections twice in both files: the duplicate terms
    collapsed in the graph, but the shapes' blank property shapes were doubled (each SAG
    constraint checked twice). Every subject block starts once in each file."""
    import re
    from collections import Counter

    for path in (ONTOLOGY, SHAPES):
        starts = Counter(re.findall(r"(?m)^([A-Za-z][\w-]*:[\w-]+)\s+a\s", Path(path).read_text()))
        assert starts, path
        assert [name for name, n in starts.items() if n > 1] == [], path
