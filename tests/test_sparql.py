"""The query library's files, parameter binding (and the injection case), bad query files,
the store and its errors, the result formats, the demo's answers, and a fast import."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyoxigraph as ox
import pytest
from conftest import cli_env
from test_rdf_support import wordnet
from test_sparql_support import SPEC_A, kg, tags

from filtag_kg import sparql
from filtag_kg.errors import FiltagError
from filtag_kg.rdf.vocab import FK

INJECTION = 'dog" } ; DROP ALL #'


@pytest.fixture(scope="module")
def store() -> sparql.Source:
    return sparql.open_source(store=kg().store)


# -- the library's files -------------------------------------------------------------------

REQUIRED = {
    "filters-for-concept",
    "concepts-of-filter",
    "explain-image",
    "layer-concept-histogram",
    "polysemantic-filters",
    "untagged-filters",
    "misexplained-images",
    "shared-concepts",
}


def _select_clause(text: str) -> str:
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    return body[body.index("SELECT") : body.index("WHERE")]


def test_the_library_has_every_query_with_a_complete_header() -> None:
    queries = {q.name: q for q in sparql.list_queries()}
    assert set(queries) >= REQUIRED
    for q in queries.values():
        assert q.purpose and q.description and q.example.startswith(f"filtag-kg query {q.name} ")
        assert q.graphs in ("tags", "all")
        assert q.text.lstrip().startswith(f"# {q.name}:")
        projected = set(re.findall(r"\?(\w+)", _select_clause(q.text)))
        for p in q.params:
            assert p.example and p.description
            # a bound variable must be in the SELECT clause (Oxigraph binds only those)
            assert p.name in projected, (q.name, p.name)
            assert f"--param {p.name}=" in q.example or not p.required
        # plain SPARQL 1.1: no SERVICE, no engine-specific functions or prefixes
        assert "SERVICE" not in q.text and "oxigraph" not in q.text.lower()


def test_every_query_file_runs(store: sparql.Source) -> None:
    """Each library query, with the example values of its required parameters."""
    for q in sparql.list_queries():
        params = {p.name: p.example for p in q.params if p.required}
        result = sparql.query(store, q.name, wordnet=wordnet(), **params)
        assert result.columns and result.name == q.name


def test_format_query_list_describes_each_query() -> None:
    text = sparql.format_query_list()
    for q in sparql.list_queries():
        assert f"{q.name}: {q.purpose}" in text
    assert re.search(r"concept +concept +required", text)


def test_unknown_query_name_lists_the_library(store: sparql.Source) -> None:
    with pytest.raises(sparql.UnknownQueryError) as err:
        sparql.query(store, "filters-for-concepts", concept="dog.n.01")
    msg = str(err.value)
    assert "filters-for-concepts" in msg and "filters-for-concept," in msg and "\n" not in msg
    assert isinstance(err.value, FiltagError)


# -- parameters ----------------------------------------------------------------------------


def test_parse_params() -> None:
    assert sparql.parse_params(["concept=dog.n.01", "setting=top-k 3", "x=a=b", "e="]) == {
        "concept": "dog.n.01",
        "setting": "top-k 3",
        "x": "a=b",
        "e": "",
    }
    for bad in (["concept"], ["=x"], ["bad-name=1"], ["a=1", "a=2"]):
        with pytest.raises(sparql.ParameterError) as err:
            sparql.parse_params(bad)
        assert "\n" not in str(err.value)


def test_parameters_are_checked_against_the_header(store: sparql.Source) -> None:
    with pytest.raises(sparql.ParameterError, match=r"needs --param concept=.*e\.g\. dog\.n\.01"):
        sparql.query(store, "filters-for-concept")
    with pytest.raises(
        sparql.ParameterError, match="no parameter 'colour'; its parameters are concept, model"
    ):
        sparql.query(store, "filters-for-concept", concept="n02084071", colour="red")
    with pytest.raises(sparql.ParameterError, match="is not an integer"):
        sparql.query(store, "concepts-of-filter", layer="features.0", filter="3; DROP")


def test_concept_values(store: sparql.Source) -> None:
    wn = wordnet()
    assert sparql.resolve_concept("n02084071") == "n02084071"  # no WordNet needed
    assert sparql.resolve_concept("02084071-n") == "n02084071"
    assert sparql.resolve_concept("dog.n.01", wordnet=wn) == "n02084071"
    assert sparql.resolve_concept("Conic Section", wordnet=wn) == "n13872975"
    with pytest.raises(sparql.ConceptError) as err:
        sparql.resolve_concept("dog", wordnet=wn)  # 7 noun senses in WordNet 3.0
    msg = str(err.value)
    assert "ambiguous" in msg and "dog.n.01 (n02084071:" in msg and "7 noun senses" in msg and "\n" not in msg
    with pytest.raises(sparql.ConceptError, match="no WordNet noun synset has the lemma 'no_such_thing'"):
        sparql.resolve_concept("no such thing", wordnet=wn)
    with pytest.raises(sparql.ConceptError, match="unicorn.n.07"):
        sparql.resolve_concept("unicorn.n.07", wordnet=wn)


def test_concept_ambiguity_lists_every_sense_with_full_wordnet() -> None:
    from filtag_kg.wordnet import WordNetSourceError, load_wordnet

    try:
        wn = load_wordnet()
    except WordNetSourceError:
        pytest.skip("no full WordNet 3.0 on this machine")
    if not wn.complete:
        pytest.skip("only the WordNet slice on this machine")
    with pytest.raises(sparql.ConceptError) as err:
        sparql.resolve_concept("dog", wordnet=wn)
    for name in ("dog.n.01", "frump.n.01", "dog.n.03", "cad.n.01", "frank.n.02", "pawl.n.01", "andiron.n.01"):
        assert name in str(err.value)


def test_method_values_are_bound_as_ontology_terms() -> None:
    assert {
        "top-k": str(FK.TopK),
        "top-percent": str(FK.TopPercent),
        "above-average": str(FK.AboveAverage),
    } == sparql.METHODS


def test_injection_matches_nothing_and_changes_nothing(store: sparql.Source, tmp_path: Path) -> None:
    before = len(store)
    # as a string: one literal that names no layer
    assert sparql.query(store, "filters-for-concept", concept="n02084071", layer=INJECTION).rows == ()
    assert sparql.query(store, "explain-image", image=INJECTION).rows == ()
    # as a concept: no synset has such a lemma
    with pytest.raises(sparql.ConceptError):
        sparql.query(store, "filters-for-concept", wordnet=wordnet(), concept=INJECTION)
    # in a file without declared parameters, any variable binds as a string
    own = tmp_path / "own.rq"
    own.write_text(
        "PREFIX fk: <https://w3id.org/filtag-kg/ontology#>\n"
        "SELECT ?layer ?l WHERE { ?l fk:layerName ?layer }\n",
        encoding="utf-8",
    )
    assert sparql.query(store, own, layer=INJECTION).rows == ()
    assert len(sparql.query(store, own)) > 0
    assert len(store) == before
    # and through rdflib's own engine (initBindings)
    ds = sparql.rdflib_dataset(sparql.open_source(graphs=[kg().nq_a]))
    n = len(ds)
    assert sparql.query(ds, "filters-for-concept", concept="n02084071", layer=INJECTION).rows == ()
    assert len(ds) == n
    # the store on disk still has everything
    assert len(sparql.open_source(store=kg().store)) == before


def test_own_query_file_with_typed_parameters(store: sparql.Source, tmp_path: Path) -> None:
    own = tmp_path / "widths.rq"
    own.write_text(
        "# widths: layers of at least some width.\n#\n# Parameters:\n"
        "#   width  integer  required  the layer's width  e.g. 8\n#\n"
        "# Example:\n#   filtag-kg query widths.rq --graph kg.nq --param width=8\n"
        "PREFIX fk: <https://w3id.org/filtag-kg/ontology#>\n"
        "SELECT ?layer ?width WHERE { ?l fk:layerName ?layer ; fk:width ?width } ORDER BY ?layer\n",
        encoding="utf-8",
    )
    info = sparql.find_query(own)
    assert (
        info.name == "widths"
        and info.purpose == "layers of at least some width."
        and info.params[0].type == "integer"
    )
    assert sparql.query(store, own, width="8").values() == [("features.28", 8)]
    assert sparql.query(store, str(own), width=6).values() == [("features.0", 6)]


# -- bad query files -----------------------------------------------------------------------


def test_syntax_errors_give_the_parser_message_and_position(store: sparql.Source, tmp_path: Path) -> None:
    bad = tmp_path / "bad.rq"
    bad.write_text(
        "# bad: a broken query.\nSELECT ?s WHERE {\n  ?s ?p ?o .\n  FILTER (?o = )\n}\n", encoding="utf-8"
    )
    with pytest.raises(sparql.QuerySyntaxError) as err:
        sparql.query(store, bad)
    msg = str(err.value)
    with pytest.raises(SyntaxError) as raw:  # where Oxigraph's own parser stops
        ox.Store().query(bad.read_text(encoding="utf-8"))
    line, column = re.search(r"error at (\d+):(\d+)", str(raw.value)).groups()
    assert f"bad.rq: SPARQL syntax error at line {line}, column {column}: expected" in msg and "\n" not in msg
    assert isinstance(err.value, FiltagError)
    # the same through rdflib's parser
    ds = sparql.rdflib_dataset(sparql.open_source(graphs=[kg().nq_b]))
    with pytest.raises(
        sparql.QuerySyntaxError, match=r"bad\.rq: SPARQL syntax error at line \d+, column \d+"
    ):
        sparql.query(ds, bad)


def test_bad_query_files(store: sparql.Source, tmp_path: Path) -> None:
    with pytest.raises(sparql.QueryFileError, match="no query file"):
        sparql.query(store, tmp_path / "missing.rq")
    header = tmp_path / "header.rq"
    header.write_text(
        "# header: x.\n# Parameters:\n#   concept  colour  required  what  e.g. red\nSELECT * {}\n",
        encoding="utf-8",
    )
    with pytest.raises(sparql.QueryFileError, match="unknown type 'colour'"):
        sparql.query(store, header)
    unprojected = tmp_path / "unprojected.rq"
    unprojected.write_text(
        "# unprojected: x.\n# Parameters:\n#   layer  string  optional  a layer  e.g. x\n"
        "PREFIX fk: <https://w3id.org/filtag-kg/ontology#>\n"
        "SELECT ?l WHERE { ?l fk:layerName ?layer }\n",
        encoding="utf-8",
    )
    with pytest.raises(sparql.ParameterError, match=r"\?layer is not in the SELECT clause"):
        sparql.query(store, unprojected, layer="features.0")
    update = tmp_path / "update.rq"
    update.write_text("DROP ALL\n", encoding="utf-8")
    before = len(store)
    with pytest.raises(sparql.QuerySyntaxError):
        sparql.query(store, update)
    assert len(store) == before


# -- load, stores, files --------------------------------------------------------------------


def test_load_reports_and_can_be_repeated(tmp_path: Path) -> None:
    stats = sparql.load([kg().nq_a], tmp_path / "s")
    quads = sum(1 for _ in ox.parse(path=str(kg().nq_a), format=ox.RdfFormat.N_QUADS))
    assert stats.quads == quads and len(stats.files) == 1 and stats.files[0].format == "N-Quads"
    assert "quads" in stats.summary()
    again = sparql.load([kg().nq_a, kg().trig_a], tmp_path / "s")  # the same quads: nothing new
    assert again.quads == quads
    forced = sparql.load([kg().nq_b], tmp_path / "s", bulk=True)
    assert forced.files[0].bulk and forced.quads > quads


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(sparql.LoadError, match="no RDF file"):
        sparql.load([tmp_path / "nope.nq"], tmp_path / "s")
    odd = tmp_path / "kg.csv"
    odd.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(sparql.LoadError, match=r"from its extension; use one of \.nq, \.trig"):
        sparql.load([odd], tmp_path / "s")
    broken = tmp_path / "broken.nq"
    broken.write_text("<http://a> <http://b> .\n", encoding="utf-8")
    with pytest.raises(sparql.LoadError) as err:
        sparql.load([broken], tmp_path / "s2")
    assert "broken.nq: not valid N-Quads" in str(err.value) and "line 1" in str(err.value)
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "x.txt").write_text("x", encoding="utf-8")
    with pytest.raises(sparql.StoreError, match="not an Oxigraph store"):
        sparql.load([kg().nq_a], folder)
    with pytest.raises(sparql.LoadError, match="no RDF files"):
        sparql.load([], tmp_path / "s3")


def test_a_cut_off_load_is_detected_and_cleaned_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from filtag_kg.sparql import store as store_mod

    real = store_mod._read_into

    def killed_on_second(store: Any, path: Path, *, bulk: bool | None) -> Any:
        if path == kg().nq_b:
            real(store, path, bulk=True)  # what a killed bulk load leaves: part of the data
            raise KeyboardInterrupt
        return real(store, path, bulk=bulk)

    monkeypatch.setattr(store_mod, "_read_into", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        sparql.load([kg().nq_a, kg().nq_b], tmp_path / "s")
    monkeypatch.setattr(store_mod, "_read_into", real)
    assert (tmp_path / "s" / sparql.store.LOAD_MARKER).is_file()
    # not opened as a valid store, by query or serve
    with pytest.raises(sparql.StoreError, match="incomplete: loading .*kg.nq") as err:
        sparql.open_source(store=tmp_path / "s")
    assert "again starts it over" in str(err.value)
    # the next load of the store that load created starts it over
    stats = sparql.load([kg().nq_a], tmp_path / "s")
    assert "removed the incomplete store" in stats.summary()
    assert stats.quads == sum(1 for _ in ox.parse(path=str(kg().nq_a), format=ox.RdfFormat.N_QUADS))
    assert not (tmp_path / "s" / sparql.store.LOAD_MARKER).exists()
    with sparql.open_source(store=tmp_path / "s") as src:
        assert len(src) == stats.quads
    # a store that was whole before the cut-off load is refused, not guessed at
    monkeypatch.setattr(store_mod, "_read_into", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        sparql.load([kg().nq_b], tmp_path / "s")
    monkeypatch.setattr(store_mod, "_read_into", real)
    with pytest.raises(sparql.StoreError, match="remove the folder and load every file again"):
        sparql.load([kg().nq_a], tmp_path / "s")


def test_open_source_errors(tmp_path: Path) -> None:
    with pytest.raises(sparql.StoreError) as err:
        sparql.open_source(store=tmp_path / "missing")
    assert "does not exist" in str(err.value) and "filtag-kg load" in str(err.value)
    with pytest.raises(sparql.StoreError, match="not both"):
        sparql.open_source(store=kg().store, graphs=[kg().nq_a])
    with pytest.raises(sparql.StoreError, match="nothing to query"):
        sparql.open_source()
    with pytest.raises(sparql.LoadError, match="no RDF file"):
        sparql.open_source(graphs=[tmp_path / "missing.trig"])


def test_sources_of_every_kind() -> None:
    want = sparql.query(kg().store, "untagged-filters").values()  # a store folder
    assert sparql.query(kg().nq_a, "untagged-filters", model=SPEC_A).values() == [
        r for r in want if r[0] == SPEC_A
    ]  # an RDF file
    st = ox.Store()
    st.load(path=str(kg().nq_b), format=ox.RdfFormat.N_QUADS)
    assert sparql.query(st, "untagged-filters").values() == [r for r in want if r[0] != SPEC_A]


def test_rdflib_dataset_without_oxrdflib_is_a_copy() -> None:
    pytest.importorskip("rdflib")
    try:
        import oxrdflib  # noqa: F401

        pytest.skip("oxrdflib is installed: the Dataset is backed by the store instead")
    except ImportError:
        pass
    src = sparql.open_source(graphs=[kg().nq_a])
    ds = sparql.rdflib_dataset(src)
    assert len(list(ds.quads((None, None, None, None)))) == len(src)
    assert ds.default_union


# -- result formats ------------------------------------------------------------------------


def _parsed(text: str, fmt: ox.QueryResultsFormat) -> list[tuple[Any, ...]]:
    res = ox.parse_query_results(text.encode("utf-8"), fmt)
    return [tuple(sol[v] for v in res.variables) for sol in res]


def _as_ox(t: sparql.Term | None) -> Any:
    if t is None:
        return None
    if t.kind == "iri":
        return ox.NamedNode(t.value)
    if t.language:
        return ox.Literal(t.value, language=t.language)
    return ox.Literal(t.value, datatype=ox.NamedNode(t.datatype))


def test_json_and_tsv_are_the_sparql_results_formats(store: sparql.Source) -> None:
    result = sparql.query(store, "concepts-of-filter", layer="features.0", filter=3, model=SPEC_A)
    want = [tuple(_as_ox(t) for t in row) for row in result.rows]
    js = sparql.format_result(result, "json")
    assert json.loads(js)["head"]["vars"] == list(result.columns)
    assert _parsed(js, ox.QueryResultsFormat.JSON) == want
    assert _parsed(sparql.format_result(result, "tsv"), ox.QueryResultsFormat.TSV) == want
    text = sparql.format_result(result, "csv")
    header, *rows = list(csv.reader(io.StringIO(text, newline="")))
    assert header == list(result.columns)
    assert rows == [["" if t is None else t.value for t in row] for row in result.rows]
    assert sparql.format_result(result, "csv").endswith("\r\n")


def test_table_format(store: sparql.Source) -> None:
    result = sparql.query(store, "concepts-of-filter", layer="features.0", filter=3, model=SPEC_A)
    lines = sparql.format_result(result, "table").splitlines()
    assert lines[0].split() == list(result.columns)
    assert set(lines[1].replace(" ", "")) == {"-"} and lines[-1] == f"({len(result)} rows)"
    rows = [t for t in tags(kg().run_a) if t["layer"] == "features.0" and t["filter"] == "3"]
    assert all(any(t["score"] in line for line in lines) for t in rows)
    long = sparql.Result(("x",), ((sparql.Term.literal("a" * 100 + "\nb"),), (None,)))
    text = sparql.format_result(long, "table", max_width=20)
    assert "a" * 9 + "…" + "a" * 8 + " b" in text and "(2 rows)" in text
    iri = sparql.Result(("m",), ((sparql.Term.iri(str(FK.TopK)),),))
    assert "fk:TopK" in sparql.format_result(iri, "table")
    with pytest.raises(sparql.ResultFormatError, match="use one of table, csv, tsv, json"):
        sparql.format_result(result, "xml")


def test_ask_and_construct_files(store: sparql.Source, tmp_path: Path) -> None:
    ask = tmp_path / "ask.rq"
    ask.write_text(
        "PREFIX fk: <https://w3id.org/filtag-kg/ontology#>\nASK { ?f a fk:Filter }\n", encoding="utf-8"
    )
    r = sparql.query(store, ask)
    assert r.boolean is True and sparql.format_result(r, "table") == "yes\n"
    assert json.loads(sparql.format_result(r, "json")) == {"head": {}, "boolean": True}
    construct = tmp_path / "c.rq"
    construct.write_text(
        "PREFIX fk: <https://w3id.org/filtag-kg/ontology#>\n"
        "CONSTRUCT { ?l fk:layerName ?n } WHERE { ?l fk:layerName ?n }\n",
        encoding="utf-8",
    )
    r = sparql.query(store, construct)
    assert r.columns == ("subject", "predicate", "object") and len(r) == 4


# -- the demo, and a fast start --------------------------------------------------------------


def test_demo_answers_name_the_polygon_and_conic_section_filters(tmp_path: Path) -> None:
    from filtag_kg.rdf import export_run
    from filtag_kg.rdf.synthetic import write_synthetic_run
    from filtag_kg.shapes import SHAPE_CLASSES

    run = write_synthetic_run(
        tmp_path / "demo",
        layers=[("features.0", 6), ("features.3", 12)],
        classes=list(SHAPE_CLASSES),
        images=10,
        k=1,
        spec="shapes",
    )
    export_run(run, wordnet=wordnet())
    text = sparql.demo_answers(run, wordnet=wordnet())
    polygons = {"square", "rectangle", "rhombus", "triangle", "pentagon", "hexagon", "octagon"}
    conics = {"circle", "ellipse"}
    for concept, members in (("polygon.n.01", polygons), ("conic_section.n.01", conics)):
        filters = {(t["layer"], t["filter"]) for t in tags(run) if t["label"] in members}
        line = next(x for x in text.splitlines() if f"({concept})" in x)
        assert f"? {len(filters)} under top-k 1" in line
    assert "predict another class than the model" in text
    with pytest.raises(sparql.LoadError, match="filtag-kg export"):
        sparql.demo_answers(tmp_path)


def test_importing_the_package_loads_no_engine() -> None:
    code = (
        "import sys, filtag_kg.sparql; "
        "print(sorted(m for m in ('pyoxigraph', 'rdflib', 'nltk', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_plain_tsv_has_the_plain_values_of_csv(store: sparql.Source) -> None:
    result = sparql.query(store, "concepts-of-filter", layer="features.0", filter=3, model=SPEC_A)
    header, *rows = sparql.format_result(result, "plain-tsv").rstrip("\n").split("\n")
    assert header.split("\t") == list(result.columns)
    want = [["" if t is None else t.value for t in row] for row in result.rows]
    assert [r.split("\t") for r in rows] == want
    odd = sparql.Result(("x", "y"), ((sparql.Term.literal("a\tb\nc\\d"), sparql.Term.iri("http://e/x")),))
    assert sparql.format_result(odd, "plain-tsv") == "x\ty\na\\tb\\nc\\\\d\thttp://e/x\n"


def test_a_damaged_store_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A store whose CURRENT file is overwritten stopped query, load and serve with pyoxigraph's
    RuntimeError ("Corruption: CURRENT file corrupted") as a traceback."""
    from filtag_kg.cli import main

    nq = tmp_path / "kg.nq"
    nq.write_text("<http://example.org/s> <http://example.org/p> <http://example.org/o> .\n",
                  encoding="utf-8")
    store = tmp_path / "store"
    assert main(["load", str(nq), "--store", str(store)]) == 0
    (store / "CURRENT").write_text("garbage\n", encoding="utf-8")
    for argv in (["query", "polysemantic-filters", "--store", str(store)],
                 ["load", str(nq), "--store", str(store)],
                 ["serve", "--store", str(store), "--port", "0"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = [e for e in capsys.readouterr().err.splitlines() if not e.startswith("filtag-kg: warning:")]
        assert len(err) == 1 and err[0].startswith("filtag-kg: error: "), (argv, err)
        assert str(store) in err[0] and "damaged" in err[0] and "filtag-kg load" in err[0], (argv, err)
