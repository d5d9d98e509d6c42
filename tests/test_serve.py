"""`filtag-kg serve` and `filtag-kg publish` against real server processes on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_env, write_images
from test_publish import StubStore

from filtag_kg.rdf.vocab import ONTOLOGY_VERSION_IRI
from filtag_kg.serve import _first_keyword, _negotiate

FK = "https://w3id.org/filtag-kg/ontology#"
BASE = "http://localhost:8000/filtag-kg/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise TimeoutError(url)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def http(
    url: str, *, data: bytes | None = None, method: str | None = None, headers: dict[str, str] | None = None,
    follow: bool = True,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    opener = urllib.request.build_opener(*([] if follow else [_NoRedirect()]))
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with explanations and its kg.trig."""
    from filtag_kg.cli import main

    tmp = tmp_path_factory.mktemp("serve")
    data = write_images(tmp / "data", per_class=3)
    held = write_images(tmp / "held", per_class=1, seed=5)
    code = main(
        [
            "run",
            "--model",
            "tiny_models:build_tiny",
            "--image-size",
            "16",
            "--data",
            str(data),
            "--k",
            "1",
            "--explain-data",
            str(held),
            "--out",
            str(tmp / "run"),
            "--quiet",
        ]
    )
    assert code == 0
    return tmp / "run"


def load_store(run_dir: Path, name: str) -> Path:
    """A new on-disk Oxigraph store beside the run, holding its kg.trig."""
    import pyoxigraph as ox

    store_dir = run_dir.parent / name
    s = ox.Store(str(store_dir))
    s.bulk_load(path=str(run_dir / "kg.trig"), format=ox.RdfFormat.TRIG)
    s.flush()
    del s
    return store_dir


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[str]:
    store = load_store(run_dir, "store")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "filtag_kg",
            "serve",
            "--store",
            str(store),
            "--port",
            str(port),
            "--dumps",
            str(run_dir / "kg.trig"),
            "--max-results",
            "500",
            "--timeout",
            "5",
            "--license",
            "https://creativecommons.org/licenses/by/4.0/",
        ],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def sparql(url: str, query: str, accept: str = "application/sparql-results+json") -> tuple[int, dict, bytes]:
    return http(url + "/sparql?" + urllib.parse.urlencode({"query": query}), headers={"Accept": accept})


def test_sparql_protocol_formats(server: str) -> None:
    q = f"SELECT ?f WHERE {{ ?f a <{FK}Filter> }} ORDER BY ?f"
    code, headers, body = sparql(server, q)
    assert code == 200 and headers["Content-Type"].startswith("application/sparql-results+json")
    rows = json.loads(body)["results"]["bindings"]
    assert len(rows) == 6 + 8 + 5  # the tiny model's filters
    code, headers, body = http(
        server + "/sparql",
        data=q.encode(),
        method="POST",
        headers={"Content-Type": "application/sparql-query", "Accept": "text/csv"},
    )
    assert code == 200 and body.decode().splitlines()[0] == "f" and len(body.decode().splitlines()) == 20
    code, _, body = sparql(server, q, "application/sparql-results+xml")
    assert code == 200 and body.count(b"<result>") == 19
    code, _, body = sparql(server, q, "text/tab-separated-values")
    assert code == 200 and body.decode().splitlines()[1].startswith("<http")
    code, _, body = sparql(server, f"ASK {{ ?f a <{FK}Filter> }}")
    assert json.loads(body) == {"head": {}, "boolean": True}
    code, headers, body = sparql(
        server, f"CONSTRUCT {{ ?f a <{FK}Filter> }} WHERE {{ ?f a <{FK}Filter> }}", "application/n-triples"
    )
    assert code == 200 and len(body.decode().strip().splitlines()) == 19
    code, _, body = sparql(server, "DESCRIBE <http://example.org/none>", "text/turtle")
    assert code == 200


def test_updates_are_refused_and_nothing_changes(server: str) -> None:
    count = "SELECT (COUNT(*) AS ?n) WHERE { GRAPH ?g { ?s ?p ?o } }"
    before = json.loads(sparql(server, count)[2])["results"]["bindings"][0]["n"]["value"]
    for data, ctype in (
        (b"update=DROP+ALL", "application/x-www-form-urlencoded"),
        (b"DROP ALL", "application/sparql-update"),
        (
            b"query=PREFIX+x%3A+%3Chttp%3A%2F%2Fx%2F%3E+%23c%0ADELETE+WHERE+%7B%3Fs+%3Fp+%3Fo%7D",
            "application/x-www-form-urlencoded",
        ),
    ):
        code, _, _ = http(server + "/sparql", data=data, method="POST", headers={"Content-Type": ctype})
        assert code == 403, data
    for method in ("PUT", "DELETE", "PATCH"):
        assert http(server + "/filtag-kg/x", data=b"<a> <b> <c> .", method=method)[0] == 405
    assert http(server + "/", data=b"x", method="POST")[0] == 405
    assert json.loads(sparql(server, count)[2])["results"]["bindings"][0]["n"]["value"] == before


def test_limits_and_malformed_requests(server: str) -> None:
    code, _, body = sparql(server, "SELECT * WHERE { ?s ?p ?o }")  # more than --max-results 500
    assert code == 413 and b"LIMIT" in body
    code, _, body = sparql(server, "SELECT * WHERE { ?s ?p }")
    assert code == 400 and b"syntax" in body
    huge = "SELECT * WHERE { ?s ?p ?o } # " + "x" * 200_000
    assert (
        http(
            server + "/sparql",
            data=huge.encode(),
            method="POST",
            headers={"Content-Type": "application/sparql-query"},
        )[0]
        == 413
    )
    slow = "SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f . ?g ?h ?i . ?j ?k ?l }"
    code, _, body = sparql(server, slow)
    assert code == 503 and b"time limit" in body
    for path in (
        "/dumps/../../etc/passwd",
        "/filtag-kg/../../etc/passwd",
        "/filtag-kg/%2e%2e/x",
        "/filtag-kg/model/%00",
        "/nowhere",
    ):
        assert http(server + path)[0] == 404, path
    assert http(server + "/sparql?query=" + "%ZZ")[0] in (400, 403)
    assert http(server + "/")[0] == 200  # still alive


def test_dereferencing_with_content_negotiation(server: str, run_dir: Path) -> None:
    rows = json.loads(sparql(server, f"SELECT ?l WHERE {{ ?l a <{FK}Layer> }} ORDER BY ?l")[2])
    layer = rows["results"]["bindings"][0]["l"]["value"]
    assert layer.startswith(BASE)
    path = "/filtag-kg/" + layer[len(BASE) :]
    # a layer is not a document: its IRI answers 303 See Other to the document describing it
    for accept, doc in (("text/html", ".html"), ("text/turtle;q=0.9, text/html;q=0.5", ".ttl"),
                        ("application/ld+json", ".jsonld"), ("application/n-triples", ".nt"),
                        ("application/rdf+xml", ".rdf"), ("*/*", ".html")):
        code, headers, body = http(server + path, headers={"Accept": accept}, follow=False)
        assert code == 303 and headers["Location"] == path + doc, accept
        assert "Accept" in headers["Vary"] and headers["Access-Control-Allow-Origin"] == "*"
    code, headers, body = http(server + path + ".html")
    assert code == 200 and headers["Content-Type"].startswith("text/html") and b"<table>" in body
    assert headers["Link"] == f'<{layer}>; rel="about"'
    code, headers, body = http(server + path, headers={"Accept": "text/html"})  # clients follow the 303
    assert code == 200 and headers["Content-Type"].startswith("text/html") and b"<table>" in body
    import rdflib

    assert (rdflib.URIRef(layer), None, None) in rdflib.Graph().parse(data=http(server + path + ".rdf")[2],
                                                                        format="xml")
    code, headers, body = http(server + path, headers={"Accept": "text/turtle"})
    assert code == 200 and headers["Content-Type"].startswith("text/turtle") and layer.encode() in body
    import pyoxigraph as ox

    for accept, fmt in (
        ("application/ld+json", ox.RdfFormat.JSON_LD),
        ("application/n-triples", ox.RdfFormat.N_TRIPLES),
    ):
        code, _, body = http(server + path, headers={"Accept": accept})
        triples = list(ox.parse(body, format=fmt))
        assert code == 200 and any(t.subject.value == layer for t in triples)
    assert http(server + path, headers={"Accept": "image/png"})[0] == 406
    assert http(server + path, headers={"Accept": ";;,garbage"})[0] == 200  # malformed: the default
    assert http(server + path + ".ttl")[1]["Content-Type"].startswith("text/turtle")
    code, headers, body = http(server + "/.well-known/void")
    assert code == 200 and b"@prefix void: <http://rdfs.org/ns/void#>" in body and b"void:triples" in body
    # exactly the export's dataset description: its VoID graph
    described = {
        (q.subject, q.predicate, q.object)
        for q in ox.parse(path=str(run_dir / "kg.trig"), format=ox.RdfFormat.TRIG)
        if q.graph_name.value.endswith("/kg/void")
    }
    served = {(t.subject, t.predicate, t.object) for t in ox.parse(body, format=ox.RdfFormat.TURTLE)}
    assert described and served >= described  # the export's dataset description, and
    kg = next(s for s, p, o in described if p.value == "http://rdfs.org/ns/void#uriSpace")
    added = {(p.value, o.value) for s, p, o in served - described if s == kg}
    void, dct = "http://rdfs.org/ns/void#", "http://purl.org/dc/terms/"
    root = next(o.value for s, p, o in described if s == kg and p.value == void + "rootResource")
    assert added == {  # what only the server knows, and version and provenance
        (void + "sparqlEndpoint", "http://localhost:8000/filtag-kg/sparql"),
        (void + "dataDump", "http://localhost:8000/filtag-kg/dumps/kg.trig"),
        (dct + "license", "https://creativecommons.org/licenses/by/4.0/"),
        (dct + "conformsTo", ONTOLOGY_VERSION_IRI),
        ("http://www.w3.org/ns/prov#wasGeneratedBy", root),
    }
    assert http(server + "/filtag-kg/dumps/kg.trig")[2] == (run_dir / "kg.trig").read_bytes()
    assert http(server + "/filtag-kg/sparql?query=ASK%7B%7D")[0] == 200
    code, _, body = http(server + "/ontology")
    assert code == 200 and b"owl:Ontology" in body
    for accept, fmt in (("application/rdf+xml", "xml"), ("application/ld+json", "json-ld"),
                        ("application/n-triples", "nt")):
        for doc in ("/ontology", "/.well-known/void"):
            code, headers, body = http(server + doc, headers={"Accept": accept})
            assert code == 200 and headers["Content-Type"].startswith(accept), (doc, accept)
            assert len(rdflib.Graph().parse(data=body, format=fmt)) > 10, (doc, accept)
    code, headers, body = http(server + "/dumps/kg.trig")
    assert code == 200 and body == (run_dir / "kg.trig").read_bytes()


def test_negotiation_and_update_detection_units() -> None:
    offered = ["text/html", "text/turtle", "application/ld+json"]
    assert _negotiate("text/turtle;q=0.9, application/ld+json", offered, "text/html") == "application/ld+json"
    assert _negotiate("*/*", offered, "text/html") == "text/html"
    assert _negotiate("text/*;q=0.5, text/turtle", offered, "text/html") == "text/turtle"
    assert _negotiate("application/xml", offered, "text/html") is None
    assert _negotiate("", offered, "text/html") == "text/html"
    assert _first_keyword("PREFIX a: <http://x/#> # c\nBASE <http://y/>\n delete where {}") == "DELETE"
    assert _first_keyword("# DROP ALL\nSELECT * {}") == "SELECT"


@pytest.fixture(scope="module")
def oxigraph_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("oxigraph") or str(Path(sys.executable).parent / "oxigraph")
    if not Path(exe).exists():
        pytest.skip("the oxigraph server (pip install oxigraph) is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "serve", "--location", str(tmp_path_factory.mktemp("oxi")), "--bind", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/query?query=ASK%7B%7D", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _graph_counts(url: str) -> dict[str, int]:
    q = "SELECT ?g (COUNT(*) AS ?n) WHERE { GRAPH ?g { ?s ?p ?o } } GROUP BY ?g"
    code, _, body = http(
        url + "/query?" + urllib.parse.urlencode({"query": q}),
        headers={"Accept": "application/sparql-results+json"},
    )
    assert code == 200
    return {b["g"]["value"]: int(b["n"]["value"]) for b in json.loads(body)["results"]["bindings"]}


def test_publish_is_idempotent(
    oxigraph_server: str, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyoxigraph as ox

    from filtag_kg.cli import main

    expected: dict[str, int] = {}
    for q in ox.parse(path=str(run_dir / "kg.trig"), format=ox.RdfFormat.TRIG):
        expected[q.graph_name.value] = expected.get(q.graph_name.value, 0) + 1
    endpoint = oxigraph_server + "/store"
    local = ["--allow-local-base", "--quiet"]  # the run's IRIs are on localhost
    assert main(["publish", str(run_dir), "--endpoint", endpoint, *local]) == 0
    assert f"published {len(expected)} graphs" in capsys.readouterr().out
    assert _graph_counts(oxigraph_server) == expected
    # again, from the file this time: each graph is replaced, none duplicated
    assert main(["publish", str(run_dir / "kg.trig"), "--endpoint", endpoint, "--jobs", "8", *local]) == 0
    assert _graph_counts(oxigraph_server) == expected
    # the run folder again: everything arrived unchanged before, so nothing is sent
    assert main(["publish", str(run_dir), "--endpoint", endpoint, *local]) == 0
    assert "published 0 graphs" in capsys.readouterr().out and _graph_counts(oxigraph_server) == expected


def test_filter_and_concept_pages_show_tags_and_filters(server: str, run_dir: Path) -> None:
    import csv

    tags = list(csv.DictReader((run_dir / "tags.tsv").open(), delimiter="\t"))
    t = tags[0]
    q = (
        f'SELECT ?f ?c WHERE {{ ?l <{FK}layerName> "{t["layer"]}" . ?f <{FK}inLayer> ?l ; '
        f'<{FK}filterIndex> {t["filter"]} . ?c <{FK}wnid> "{t["class_id"]}" }}'
    )
    row = json.loads(sparql(server, q)[2])["results"]["bindings"][0]
    code, _, body = http(
        server + "/filtag-kg/" + row["f"]["value"][len(BASE) :], headers={"Accept": "text/html"}
    )
    page = body.decode()
    assert code == 200 and "Tags and abstract tags" in page and t["label"] in page
    code, _, body = http(
        server + "/filtag-kg/" + row["c"]["value"][len(BASE) :], headers={"Accept": "text/html"}
    )
    page = body.decode()
    assert code == 200 and "Filters that represent it" in page
    assert f"<td>{t['layer']}</td>" in page


def test_dataset_parameters_choose_the_graphs(server: str) -> None:
    rows = json.loads(sparql(server, f"SELECT ?g WHERE {{ ?g a <{FK}TagGraph> }}")[2])["results"]["bindings"]
    tags = rows[0]["g"]["value"]

    def count(query: str, **params: str) -> int:
        url = server + "/sparql?" + urllib.parse.urlencode({"query": query, **params})
        code, _, body = http(url, headers={"Accept": "application/sparql-results+json"})
        assert code == 200, body
        return int(json.loads(body)["results"]["bindings"][0]["n"]["value"])

    all_triples = "SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }"
    in_tags = count(f"SELECT (COUNT(*) AS ?n) WHERE {{ GRAPH <{tags}> {{ ?s ?p ?o }} }}")
    assert 0 < in_tags < count(all_triples)
    assert count(all_triples, **{"default-graph-uri": tags}) == in_tags
    graphs = "SELECT (COUNT(DISTINCT ?g) AS ?n) WHERE { GRAPH ?g { ?s ?p ?o } }"
    assert count(graphs) > 2 and count(graphs, **{"named-graph-uri": tags}) == 1
    bad = {"query": all_triples, "default-graph-uri": "not an iri"}
    code, _, body = http(server + "/sparql?" + urllib.parse.urlencode(bad))
    assert code == 400 and b"not an absolute IRI" in body


def test_concept_pages_read_tags_from_the_tag_graphs(run_dir: Path) -> None:
    """A tag-shaped node inside an explanation graph is not a tag: the library query names
    its graph, so neither the union nor the tag graphs nor the concept page list it."""
    import csv

    import pyoxigraph as ox

    from filtag_kg.serve import Options, make_app

    t = next(csv.DictReader((run_dir / "tags.tsv").open(), delimiter="\t"))
    store_dir = load_store(run_dir, "store-with-impostor")
    s = ox.Store(str(store_dir))
    P = ox.NamedNode
    concept = next(s.quads_for_pattern(None, P(FK + "wnid"), ox.Literal(t["class_id"]), None)).subject
    real_tag = next(
        q.subject for q in s.quads_for_pattern(None, P(FK + "tagConcept"), concept, None)
        if next(s.quads_for_pattern(None, P(FK + "hasTag"), q.subject, None), None) is not None
    )
    layer = next(s.quads_for_pattern(None, P(FK + "layerName"), None, None)).subject
    setting = next(s.quads_for_pattern(real_tag, P(FK + "setting"), None, None)).object
    generated_by = P("http://www.w3.org/ns/prov#wasGeneratedBy")
    run = next(s.quads_for_pattern(real_tag, generated_by, None, None)).object
    explanation = next(g for g in s.named_graphs() if "/explanation/" in g.value)
    fake_tag, fake_filter = P(BASE + "impostor/tag"), P(BASE + "impostor/filter")
    for sub, pred, obj in [
        (fake_tag, FK + "tagConcept", concept), (fake_tag, FK + "filter", fake_filter),
        (fake_tag, FK + "filterTagCount", ox.Literal("1", datatype=P("http://www.w3.org/2001/XMLSchema#integer"))),
        (fake_tag, generated_by.value, run),
        (fake_tag, FK + "setting", setting), (fake_filter, FK + "hasTag", fake_tag),
        (fake_filter, FK + "filterIndex", ox.Literal("31337", datatype=P("http://www.w3.org/2001/XMLSchema#integer"))),
        (fake_filter, FK + "inLayer", layer),
    ]:
        s.add(ox.Quad(sub, P(pred), obj, explanation))
    s.flush()
    del s
    from filtag_kg.serve import _with_values
    from filtag_kg.sparql.library import find_query

    app = make_app(store_dir, Options(base_iri=BASE), workers=1)
    try:
        text = _with_values(find_query("filters-for-concept").text, {"concept": ox.Literal(t["class_id"])})
        _, union_rows = app.run_query(text)
        assert union_rows and not any(r["filter"]["value"] == "31337" for r in union_rows)
        _, tag_rows = app.run_query(text, app.tag_graphs())
        assert tag_rows and not any(r["filter"]["value"] == "31337" for r in tag_rows)
        status, _, page = app.route(
            {"PATH_INFO": "/filtag-kg/" + concept.value[len(BASE):] + ".html", "REQUEST_METHOD": "GET",
             "HTTP_ACCEPT": "text/html", "QUERY_STRING": ""}
        )
        assert status.startswith("200") and b"Filters that represent it" in page
        assert b"31337" not in page and f"<td>{t['layer']}</td>".encode() in page
    finally:
        app.close()


def test_index_page_is_computed_once_per_read_only_store(run_dir: Path) -> None:

    from filtag_kg.serve import Options, make_app

    store_dir = load_store(run_dir, "store-index")
    app = make_app(store_dir, Options(base_iri=BASE), workers=1)
    ran = _record_page_queries(app)
    try:
        environ = {"PATH_INFO": "/", "REQUEST_METHOD": "GET", "HTTP_ACCEPT": "text/html", "QUERY_STRING": ""}
        first = app.route(dict(environ))
        assert first[0].startswith("200") and b"Resources by type" in first[2]
        assert f"{FK}Filter".encode() in first[2]
        queries = len(ran)
        assert queries >= 1 and app.route(dict(environ)) == first and len(ran) == queries
        # no count is listed twice (types with the same instances, e.g. fk:Concept and
        # skos:Concept, share a row)
        import re

        table = first[2].decode().split("Resources by type", 1)[1]
        counts = re.findall(r"</td><td>(\d+)</td></tr>", table)
        assert counts and len(counts) == len(set(counts))
    finally:
        app.close()


def test_index_page_whose_counts_time_out_is_kept_too(run_dir: Path) -> None:
    """At tens of millions of quads the type counts can pass the time limit: the page says
    so and is kept, so asking again does not hold a page worker for that long again."""
    from filtag_kg.serve import Options, _Reply, make_app

    app = make_app(load_store(run_dir, "store-index-slow"), Options(base_iri=BASE), workers=1)
    ran: list[str] = []
    real_run = app.page_pool.run

    def slow_counts(text: str, *args: object) -> object:
        ran.append(text)
        if "COUNT" in text:
            raise _Reply("503 Service Unavailable", "query exceeded the 10 s time limit")
        return real_run(text, *args)

    app.page_pool.run = slow_counts  # type: ignore[method-assign]
    try:
        environ = {"PATH_INFO": "/", "REQUEST_METHOD": "GET", "HTTP_ACCEPT": "text/html", "QUERY_STRING": ""}
        status, _, page = app.route(dict(environ))
        assert status.startswith("200") and b"not counted: query exceeded the 10 s time limit" in page
        assert b"Models" in page and app.route(dict(environ))[2] == page and len(ran) == 2
    finally:
        app.close()


# -- on the open web: no outbound requests, well-formed results, fairness -----------------


@pytest.fixture
def listener() -> Iterator[StubStore]:
    """A loopback HTTP server that records every request it gets (and answers 500)."""
    got = StubStore()
    yield got
    got.close()


def test_no_query_makes_the_server_fetch_a_url(server: str, listener: StubStore) -> None:
    u = listener.url
    refused = [
        f"SELECT * WHERE {{ SERVICE <{u}> {{ ?s ?p ?o }} }}",
        f"select * {{ ?a ?b ?c }} {{ }}SeRvIcE SILENT<{u}>{{ ?s ?p ?o }}",
        f"SELECT * WHERE {{ OPTIONAL {{ SERVICE <{u}> {{ ?s ?p ?o }} }} }}",
        f"ASK {{ FILTER EXISTS {{ SERVICE <{u}> {{ ?s ?p ?o }} }} }}",
        f"SELECT * WHERE {{ VALUES ?e {{ <{u}> }} SERVICE ?e {{ ?s ?p ?o }} }}",
        f"PREFIX e: <{u}>\nSELECT * WHERE {{ SERVICE e: {{ ?s ?p ?o }} }}",
        f"CONSTRUCT {{ ?s ?p ?o }} WHERE {{ SERVICE <{u}> {{ ?s ?p ?o }} }}",
        f"SELECT * WHERE {{ \\u0053ERVICE <{u}> {{ ?s ?p ?o }} }}",
    ]
    for q in refused:
        code, headers, body = sparql(server, q)
        assert code == 400 and b"SERVICE" in body and b"--allow-service" in body, q
    # nothing else that names a URL fetches it either
    for q in (f"SELECT * FROM <{u}> WHERE {{ ?s ?p ?o }} LIMIT 1",
              f"SELECT * FROM NAMED <{u}> WHERE {{ GRAPH ?g {{ ?s ?p ?o }} }} LIMIT 1",
              f"DESCRIBE <{u}>", f'SELECT * WHERE {{ ?s ?p "SERVICE <{u}> {{}}" }}'):
        assert sparql(server, q, "*/*")[0] == 200, q
    assert http(server + "/sparql", data=f"LOAD <{u}>".encode(), method="POST",
                headers={"Content-Type": "application/sparql-update"})[0] == 403
    params = urllib.parse.urlencode({"query": "ASK {}", "default-graph-uri": u})
    assert http(server + "/sparql?" + params)[0] == 200
    assert listener.requests == []


def test_allowed_service_endpoints_only(run_dir: Path, listener: StubStore) -> None:
    from filtag_kg.serve import Options, make_app, service_endpoints

    assert service_endpoints('SELECT ?service { ?service <http://x/p> "SERVICE <http://y/>" }') == []
    other = StubStore()
    options = Options(base_iri=BASE, allow_service=(listener.url,))
    app = make_app(load_store(run_dir, "store-service"), options, workers=1)
    try:
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/sparql", "HTTP_ACCEPT": "*/*"}
        for url in (listener.url, other.url):
            q = urllib.parse.urlencode({"query": f"SELECT * WHERE {{ SERVICE <{url}> {{ ?s ?p ?o }} }}"})
            with pytest.raises(Exception) as got:
                app.route({**env, "QUERY_STRING": q})
            assert got.value.status.startswith("500" if url == listener.url else "400")  # type: ignore[attr-defined]
        assert len(listener.requests) == 1 and other.requests == []
    finally:
        app.close()
        other.close()


def _call(app: object, path: str, accept: str = "*/*", query: str = "") -> tuple[str, dict[str, str], bytes]:
    """One request through the WSGI interface (status, headers, body)."""
    got: dict[str, object] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        got["status"], got["headers"] = status, dict(headers)

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": urllib.parse.unquote(path), "RAW_URI": path,
               "HTTP_ACCEPT": accept, "QUERY_STRING": query}
    body = b"".join(app(environ, start_response))  # type: ignore[operator]
    return got["status"], got["headers"], body  # type: ignore[return-value]


def test_every_result_format_is_well_formed_for_hostile_labels(tmp_path: Path) -> None:
    import csv
    import io
    import xml.etree.ElementTree as ET

    import pyoxigraph as ox
    import rdflib
    from test_rdf_hostile import CLASSES, LAYERS, PATHS_CONTROL, PATHS_PLAIN

    from filtag_kg.serve import Options, make_app

    labels = sorted({x for pair in CLASSES for x in pair} | {n for n, _ in LAYERS} | set(PATHS_PLAIN)
                    | set(PATHS_CONTROL) | {"\x00nul", "cr\ronly", "\ufffe", "]]>", "&amp;"})
    store = ox.Store(str(tmp_path / "store"))
    p = ox.NamedNode("http://example.org/p")
    for i, label in enumerate(labels):
        s = ox.NamedNode(f"http://example.org/s{i}")
        store.add(ox.Quad(s, p, ox.Literal(label), ox.DefaultGraph()))
        store.add(ox.Quad(s, p, ox.Literal(label, language="en"), ox.DefaultGraph()))
    store.flush()
    del store
    app = make_app(tmp_path / "store", Options(base_iri=BASE), workers=1)
    want = {(lab, lang) for lab in labels for lang in ("", "en")}
    select = urllib.parse.urlencode({"query": "SELECT ?s ?o WHERE { ?s ?p ?o }"})
    construct = urllib.parse.urlencode({"query": "CONSTRUCT WHERE { ?s ?p ?o }"})
    try:
        status, _, body = _call(app, "/sparql", "application/sparql-results+json", select)
        rows = json.loads(body)["results"]["bindings"]
        assert status.startswith("200")
        assert {(r["o"]["value"], r["o"].get("xml:lang", "")) for r in rows} == want
        _, _, body = _call(app, "/sparql", "application/sparql-results+xml", select)
        ns = "{http://www.w3.org/2005/sparql-results#}"
        lits = ET.fromstring(body).iter(ns + "literal")  # expat: a standard, strict XML 1.0 parser
        got = {(e.text or "", e.get("{http://www.w3.org/XML/1998/namespace}lang", "")) for e in lits}
        xml_safe = {(re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]", "\ufffd", a), b) for a, b in want}
        assert got == xml_safe  # exact but for what XML 1.0 cannot carry at all
        _, _, body = _call(app, "/sparql", "text/csv", select)
        rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
        assert rows[0] == ["s", "o"] and sorted(r[1] for r in rows[1:]) == sorted(lab for lab, _ in want)
        _, _, body = _call(app, "/sparql", "text/tab-separated-values", select)
        lines = body.decode().split("\n")
        assert lines[0] == "?s\t?o" and lines[-1] == "" and len(lines) == len(want) + 2
        terms = ox.parse("".join(f"{line.replace(chr(9), ' <http://x/p> ')} .\n" for line in lines[1:-1]),
                         format=ox.RdfFormat.N_TRIPLES)
        assert {(t.object.value, t.object.language or "") for t in terms} == want
        for accept, fmt in (("text/turtle", "turtle"), ("application/n-triples", "nt"),
                            ("application/ld+json", "json-ld"), ("application/trig", "trig"),
                            ("application/n-quads", "nquads"), ("application/rdf+xml", "xml")):
            status, headers, body = _call(app, "/sparql", accept, construct)
            assert status.startswith("200") and headers["Content-Type"].startswith(accept), accept
            g = rdflib.Dataset() if fmt in ("trig", "nquads") else rdflib.Graph()
            g.parse(data=body, format=fmt)
            got = {(str(o), o.language or "") for _, _, o, *_ in
                   (g.quads() if isinstance(g, rdflib.Dataset) else g)}
            assert got == (xml_safe if fmt == "xml" else want), accept
        assert _call(app, "/sparql", "text/turtle", construct)[2].startswith(b"@prefix ")
    finally:
        app.close()


def test_port_in_use_is_one_line(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from filtag_kg.cli import main

    store = load_store(run_dir, "store-port")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = main(["serve", "--store", str(store), "--port", str(busy.getsockname()[1]), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("filtag-kg: error: cannot listen on 127.0.0.1:")
    assert len(err.strip().splitlines()) == 1 and "--port" in err


def test_a_crashed_worker_is_reported_as_a_crash(server: str) -> None:
    deep = "SELECT * WHERE " + "{ " * 5000 + "?s ?p ?o" + " }" * 5000
    code, _, body = http(server + "/sparql", data=deep.encode(), method="POST",
                         headers={"Content-Type": "application/sparql-query"})
    assert code == 500 and b"crashed" in body and b"time limit" not in body
    assert sparql(server, "ASK {}")[0] == 200  # a fresh worker took its place


def test_pages_and_cheap_queries_answer_while_slow_queries_run(server: str, run_dir: Path) -> None:
    """Five slow queries at once (the server allows 4 slow ones): the fifth is stopped as
    soon as it is known to be slow, and while the four run to the time limit, a cheap
    query and a filter page are answered."""
    import threading

    # five different texts: identical ones would share one run (see the answer cache)
    slow = "SELECT (COUNT(*) AS ?n{}) WHERE {{ ?a ?b ?c . ?d ?e ?f . ?g ?h ?i . ?j ?k ?l . ?m ?n2 ?o }}"
    results: list[tuple[int, bytes]] = []
    threads = [threading.Thread(target=lambda i=i: results.append(sparql(server, slow.format(i))[::2]))
               for i in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 4.5  # the fifth is refused once it has run 1 s
    while not results and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(results) == 1 and b"slow queries are running" in results[0][1]
    rows = json.loads(sparql(server, f"SELECT ?f WHERE {{ ?f a <{FK}Filter> }} LIMIT 1")[2])
    filter_iri = rows["results"]["bindings"][0]["f"]["value"]
    code, _, page = http(server + "/filtag-kg/" + filter_iri[len(BASE) :] + ".html")
    still_running = sum(t.is_alive() for t in threads)
    for t in threads:
        t.join()
    assert code == 200 and b"Tags and abstract tags" in page
    assert still_running == 4  # answered before any of the four slow queries ended
    assert sorted(c for c, _ in results) == [503] * 5
    assert sum(b"slow queries are running" in b for _, b in results) == 1
    assert sum(b"time limit" in b for _, b in results) == 4


def test_cors_and_preflight(server: str) -> None:
    asks = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    code, headers, _ = http(server + "/sparql", method="OPTIONS", headers=asks)
    assert code == 204 and headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in headers["Access-Control-Allow-Headers"]
    assert sparql(server, "ASK {}")[1]["Access-Control-Allow-Origin"] == "*"


def test_base_iri_comes_from_the_store(run_dir: Path, tmp_path: Path) -> None:
    import pyoxigraph as ox

    from filtag_kg.cli import main
    from filtag_kg.serve import Options, make_app

    assert main(["export", str(run_dir), "--base-iri", "https://example.org/kg/", "--out",
                 str(tmp_path / "kg.nq"), "--format", "nq"]) == 0
    store = ox.Store(str(tmp_path / "store"))
    store.bulk_load(path=str(tmp_path / "kg.nq"), format=ox.RdfFormat.N_QUADS)
    store.flush()
    layer = next(store.quads_for_pattern(None, ox.NamedNode(FK + "layerName"), None)).subject.value
    del store
    app = make_app(tmp_path / "store", Options(base_iri=None), workers=1)
    try:
        assert app.opts.base_iri == "https://example.org/kg/" and layer.startswith("https://example.org/kg/")
        status, headers, _ = _call(app, "/kg/" + layer[len("https://example.org/kg/"):], "text/turtle")
        assert status.startswith("303") and headers["Location"].endswith(".ttl")
        status, headers, body = _call(app, headers["Location"])
        assert status.startswith("200") and layer.encode() in body
    finally:
        app.close()


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="no process priorities on this platform")
def test_a_slow_query_runs_at_the_lowest_cpu_priority(run_dir: Path) -> None:
    """Once a query counts as slow, its worker drops to the lowest CPU priority (so on a small
    machine it cannot starve cheap queries of CPU), and is replaced when it is done."""
    import threading

    from filtag_kg.serve import SLOW_NICENESS, Options, make_app

    app = make_app(load_store(run_dir, "store-nice"), Options(base_iri=BASE, timeout_s=3, fast_s=0.3),
                   workers=2)
    try:
        before = {p.pid for p in app.pool.workers}
        slow = "SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f . ?g ?h ?i . ?j ?k ?l . ?m ?n2 ?o }"
        answers: list[Any] = []
        t = threading.Thread(target=lambda: answers.append(_reply_of(app.pool.run, slow)))
        t.start()
        deadline, niced = time.monotonic() + 2.5, set()
        while t.is_alive() and time.monotonic() < deadline and not niced:
            niced = {pid for pid in before if _priority(pid) == SLOW_NICENESS}
            time.sleep(0.05)
        t.join()
        assert len(niced) == 1  # the slow query's worker, and only it
        assert answers and "time limit" in answers[0]
        after = {p.pid for p in app.pool.workers}
        assert niced.isdisjoint(after) and len(after) == 2  # replaced, the pool at full size
        assert all(_priority(pid) == 0 for pid in after)
        # a cheap query keeps its worker at normal priority and in the pool
        assert app.pool.run("ASK {}")[0]
        assert {p.pid for p in app.pool.workers} == after
    finally:
        app.close()


def _priority(pid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return None


def _reply_of(run: Any, text: str) -> str:
    from filtag_kg.serve import _Reply

    try:
        run(text)
    except _Reply as exc:
        return exc.text
    return "answered"


def test_client_answers_are_written_by_the_query_workers(run_dir: Path) -> None:
    """A client's SELECT or CONSTRUCT answer is written in its format by the query worker,
    so the server process, whose threads answer every request, only passes bytes on (a
    2,449-row answer no longer holds it for the time of its serialisation)."""
    from filtag_kg.serve import Options, make_app

    app = make_app(load_store(run_dir, "store-bytes"), Options(base_iri=BASE), workers=1)
    try:
        q = f"SELECT ?f WHERE {{ ?f a <{FK}Filter> }} ORDER BY ?f"
        kind, (what, body) = app.pool.run(q, None, None, ("JSON", "TURTLE"))
        assert kind == "ok" and what == "solutions"
        assert len(json.loads(body)["results"]["bindings"]) == 6 + 8 + 5
        construct = f"CONSTRUCT WHERE {{ ?f a <{FK}Filter> }}"
        kind, (what, body) = app.pool.run(construct, None, None, ("JSON", "N_TRIPLES"))
        assert what == "graph" and body.count(b" .\n") == 6 + 8 + 5
        # no acceptable format: nothing is written, and the client gets 406
        assert app.pool.run(q, None, None, (None, "TURTLE")) == ("ok", ("solutions", None))
        status, _, _ = _call(app, "/sparql", "text/turtle", urllib.parse.urlencode({"query": q}))
        assert status.startswith("406")
        status, headers, body = _call(app, "/sparql", "text/csv", urllib.parse.urlencode({"query": q}))
        assert status.startswith("200") and headers["Content-Type"].startswith("text/csv")
        assert body.decode().splitlines()[0] == "f" and len(body.decode().splitlines()) == 1 + 19
    finally:
        app.close()


def _spy_store(app: Any, on_read: Any) -> None:
    """From now on, call ``on_read(*args)`` on each of the app's ``quads_for_pattern`` reads."""

    class Spy:
        def __init__(self, store: Any) -> None:
            self.store = store

        def __getattr__(self, name: str) -> Any:
            return getattr(self.store, name)

        def quads_for_pattern(self, *args: Any) -> Any:
            on_read(*args)
            return self.store.quads_for_pattern(*args)

    app.store = Spy(app.store)


def _count_label_lookups(app: Any) -> list[tuple[str, str]]:
    """The (subject, predicate) label lookups by subject the app makes from now on."""
    from filtag_kg.rdf.vocab import RDFS, SKOS

    lookups: list[tuple[str, str]] = []

    def label_lookup(s: Any, p: Any, *rest: Any) -> None:
        if s is not None and p is not None and p.value in (str(SKOS.prefLabel), str(RDFS.label)):
            lookups.append((s.value, p.value))

    _spy_store(app, label_lookup)
    return lookups


def test_page_labels_are_looked_up_once(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The labels of a page's links (layers, models, runs, properties: the same few, many
    times over; explanations and referrers: hundreds, mostly without a label) are read
    from the read-only store at start when there are at most LABEL_CACHE of them, so a
    page looks none up (before, two index lookups per new IRI: 26 of a concept page's 75
    ms at 10 M quads); with more, each is looked up once, not once per link and page.
    Both ways give the same page."""
    import filtag_kg.serve as serve

    store = load_store(run_dir, "store-labels")
    pages = []
    for bound in (serve.LABEL_CACHE, 20):  # the store has more than 20 labels
        monkeypatch.setattr(serve, "LABEL_CACHE", bound)
        app = serve.make_app(store, serve.Options(base_iri=BASE), workers=1)
        lookups = _count_label_lookups(app)
        try:
            path = urllib.parse.urlsplit(_first_filter(app)).path + ".html"
            first = _call(app, path, "text/html")
            assert first[0].startswith("200")
            if bound == 20:  # more labels than the bound: looked up, each once
                assert app._all_labels is None and lookups
                assert len(lookups) == len(set(lookups))  # each label once, within the page too
                assert len({s for s, _ in lookups}) > 3  # the layer, model, run, properties, ...
            else:  # all read at start: none looked up by a page
                assert app._all_labels and lookups == []
            n = len(lookups)
            assert _call(app, path, "text/html") == first and len(lookups) == n
            pages.append(first[2])
        finally:
            app.close()
    assert pages[0] == pages[1]
    assert re.search(rb"<h1>conv\d filter \d+</h1>", pages[0])  # the filter's rdfs:label, not "3"


def test_reading_labels_at_start_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The labels read at start stop after 2 x LABEL_CACHE statements, even when they
    label few resources (many languages, say), so the start-up time stays bounded; links
    then look their labels up, with the same result."""
    import pyoxigraph as ox

    import filtag_kg.serve as serve
    from filtag_kg.rdf.vocab import RDFS

    node = ox.NamedNode(BASE + "thing")
    label = ox.NamedNode(str(RDFS.label))
    store_dir = _label_store(tmp_path, [ox.Quad(node, label, ox.Literal(f"label {i:02}", language="en"))
                                        for i in range(50)])
    labels = []
    for bound in (1000, 20):
        monkeypatch.setattr(serve, "LABEL_CACHE", bound)
        app = serve.make_app(store_dir, serve.Options(base_iri=BASE), workers=1)
        try:
            assert (app._all_labels is None) == (bound == 20)
            labels.append(app._label(node.value))
        finally:
            app.close()
    assert labels[0] == labels[1] == "label 00"


def _first_filter(app: Any) -> str:
    import pyoxigraph as ox

    quads = app.store.quads_for_pattern(None, ox.NamedNode(RDF_TYPE), ox.NamedNode(FK + "Filter"), None)
    return next(iter(quads)).subject.value


RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"


def test_pages_ask_only_for_the_rows_they_show(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A concept page shows the first PAGE_ROWS rows of filters-for-concept: the engine is
    asked for those only (entity.n.01 has every filter of the model), and they are the
    first rows of the whole answer."""
    import pyoxigraph as ox

    import filtag_kg.serve as serve
    from filtag_kg.sparql.library import find_query

    monkeypatch.setattr(serve, "PAGE_ROWS", 2)
    app = serve.make_app(load_store(run_dir, "store-page-rows"), serve.Options(base_iri=BASE), workers=1)
    sent = _record_page_queries(app)
    try:
        wnid = ox.NamedNode(FK + "wnid")
        entity = next(app.store.quads_for_pattern(None, wnid, ox.Literal("n00001740"))).subject
        _, whole = app.run_query(_with_values_ffc("n00001740"), app.tag_graphs())
        assert len(whole) > 2
        status, _, page = _call(app, urllib.parse.urlsplit(entity.value).path + ".html", "text/html")
        assert status.startswith("200") and sent and sent[-1].rstrip().endswith("LIMIT 2")
        table = page.decode().split("Filters that represent it", 1)[1].split("</table>", 1)[0]
        assert table.count("<tr><td>") == 2
        for r in whole[:2]:
            assert f'{r["filterIri"]["value"][len(BASE):]}' in table
        assert whole[2]["filterIri"]["value"][len(BASE):] not in table
        assert find_query("filters-for-concept").text.count("LIMIT") == 0
    finally:
        app.close()


def _with_values_ffc(wnid: str) -> str:
    import pyoxigraph as ox

    from filtag_kg.serve import _with_values
    from filtag_kg.sparql.library import find_query

    return _with_values(find_query("filters-for-concept").text, {"concept": ox.Literal(wnid)})


def _record_queries(pool: Any) -> list[str]:
    """The texts of the queries a query pool runs from now on, in order."""
    sent: list[str] = []
    real_run = pool.run

    def recording(text: str, *args: object) -> object:
        sent.append(text)
        return real_run(text, *args)

    pool.run = recording
    return sent


def _record_page_queries(app: Any) -> list[str]:
    """The texts of the page queries the app runs from now on, in order."""
    return _record_queries(app.page_pool)


def test_identical_sparql_requests_are_answered_from_the_cache(run_dir: Path) -> None:
    """A repeated library query (the same text, graphs and formats) is answered without a
    query worker: dog.n.01's filters-for-concept read 4,602 tags, 5.8 s under the load of
    benchmarks/bench_serve.py, every time it was asked. Another format, other graphs or
    another query run again; with ``cache_mib=0`` every request runs."""
    from filtag_kg.serve import Options, make_app

    store = load_store(run_dir, "store-cache")
    for mib, runs_expected in ((64.0, 4), (0.0, 6)):
        app = make_app(store, Options(base_iri=BASE, cache_mib=mib), workers=1)
        runs = _record_queries(app.pool)
        try:
            q = urllib.parse.urlencode({"query": _with_values_ffc("n02084071")})
            other = urllib.parse.urlencode({"query": f"SELECT ?f WHERE {{ ?f a <{FK}Filter> }}"})
            graphs = q + "&" + urllib.parse.urlencode({"default-graph-uri": "urn:x-none"})
            bodies = []
            json_ = "application/sparql-results+json"
            for query, accept in ((q, json_), (q, json_), (q, "text/csv"), (other, "text/csv"),
                                  (graphs, "text/csv"), (q, "text/csv")):
                status, _, body = _call(app, "/sparql", accept, query)
                assert status.startswith("200")
                bodies.append(body)
            assert bodies[0] == bodies[1] and bodies[2] == bodies[5] and bodies[0] != bodies[2]
            assert len(runs) == runs_expected
        finally:
            app.close()


def test_answers_that_change_between_runs_are_never_kept() -> None:
    """NOW(), RAND(), UUID(), STRUUID(), BNODE() and SERVICE give another answer on each
    run: such a query runs every time (before, the first answer was replayed)."""
    from filtag_kg.serve import _AnswerCache

    cache = _AnswerCache(1 << 20)
    for text in ("SELECT (NOW() AS ?t) {}", "select (rand () as ?r) {}", "SELECT (UUID() AS ?u) {}",
                 "SELECT (STRUUID() AS ?u) {}", "SELECT (BNODE() AS ?b) {}",
                 "SELECT * { SERVICE <http://127.0.0.1:1/> { ?s ?p ?o } }"):
        runs: list[int] = []

        def run(runs: list[int] = runs) -> tuple[str, Any]:
            runs.append(1)
            return "ok", ("solutions", f"answer {len(runs)}".encode())

        key = (text, None, None, ("JSON", None))
        assert [cache.get_or_run(key, run) for _ in range(2)] == [
            ("ok", ("solutions", b"answer 1")), ("ok", ("solutions", b"answer 2"))], text
    deterministic = ("SELECT ?now {}", None, None, ("JSON", None))  # a variable, not NOW()
    assert cache.get_or_run(deterministic, lambda: ("ok", ("solutions", b"a"))) == \
        cache.get_or_run(deterministic, lambda: ("ok", ("solutions", b"b")))


def test_answer_cache_keeps_answers_only_within_its_memory(tmp_path: Path) -> None:
    """The least recently used answers go first when the memory is full; an answer
    larger than a quarter of it, an error or a failed run is never kept."""
    from filtag_kg.serve import _AnswerCache, _Reply

    cache = _AnswerCache(4000)
    runs: list[str] = []

    def answer(name: str, size: int, kind: str = "ok") -> Any:
        def run() -> tuple[str, Any]:
            runs.append(name)
            return kind, ("solutions", b"x" * size)
        return run

    def key(name: str) -> Any:
        return (name, None, None, ("JSON", None))

    for name in ("a", "b", "c", "a", "d", "e", "a", "b"):  # 700 bytes + 201 of query and overhead each
        cache.get_or_run(key(name), answer(name, 700))
    assert runs == ["a", "b", "c", "d", "e", "b"]  # four fit; b, least recently used, went first
    assert cache.size <= 4000 and len(cache.kept) == 4
    for _ in range(2):
        cache.get_or_run(key("big"), answer("big", 1000))  # over a quarter of 4000
        cache.get_or_run(key("bad"), answer("bad", 10, kind="syntax"))
    assert runs[6:] == ["big", "bad", "big", "bad"]

    def failing() -> tuple[str, Any]:
        runs.append("fail")
        raise _Reply("503 Service Unavailable", "query exceeded the time limit")

    for _ in range(2):
        with pytest.raises(_Reply):
            cache.get_or_run(key("fail"), failing)
    assert runs[-2:] == ["fail", "fail"]


def test_identical_requests_running_at_once_run_the_query_once(tmp_path: Path) -> None:
    """Clients asking the same slow query at once share one run (one worker, not one each),
    and its outcome: its answer, or its error (a query stopped at the time limit is not run
    again for each client waiting for it)."""
    import threading

    from filtag_kg.serve import _AnswerCache, _Reply

    cache = _AnswerCache(1 << 20)
    for fails in (False, True):
        started, release = threading.Event(), threading.Event()
        runs: list[int] = []

        def run(runs: list[int] = runs, started: Any = started, release: Any = release,
                fails: bool = fails) -> tuple[str, Any]:
            runs.append(1)
            started.set()
            release.wait(30)
            if fails:
                raise _Reply("503 Service Unavailable", "query exceeded the 10 s time limit")
            return "ok", ("solutions", b"the answer")

        key = (f"SELECT * {{}} # {fails}", None, None, ("JSON", None))
        got: list[Any] = []

        def ask(got: list[Any] = got, key: Any = key, run: Any = run) -> None:
            try:
                got.append(cache.get_or_run(key, run))
            except _Reply as exc:
                got.append(exc.text)

        first = threading.Thread(target=ask)
        first.start()
        assert started.wait(30)
        second = threading.Thread(target=ask)
        second.start()
        for _ in range(300):  # until the second request waits for the first's outcome
            if cache.shared == 1 + fails:
                break
            time.sleep(0.01)
        release.set()
        first.join(30)
        second.join(30)
        outcome = "query exceeded the 10 s time limit" if fails else ("ok", ("solutions", b"the answer"))
        assert runs == [1] and got == [outcome] * 2


def test_requests_waiting_for_an_identical_slow_query_give_up_like_slow_queries() -> None:
    """A request waiting for an identical running query waits at most wait_s (the server's
    fast_s), then gets 503: before, eight identical slow requests held all eight server
    threads until the time limit, and pages and cheap queries queued behind them."""
    import threading

    from filtag_kg.serve import _AnswerCache, _Reply

    cache = _AnswerCache(1 << 20, wait_s=0.2)
    started, release = threading.Event(), threading.Event()

    def slow() -> tuple[str, Any]:
        started.set()
        release.wait(30)
        return "ok", ("solutions", b"late")

    key = ("SELECT * {} # slow", None, None, ("JSON", None))
    first = threading.Thread(target=lambda: cache.get_or_run(key, slow))
    first.start()
    try:
        assert started.wait(30)
        t0 = time.monotonic()
        with pytest.raises(_Reply) as info:
            cache.get_or_run(key, slow)
        assert info.value.status.startswith("503") and 0.15 < time.monotonic() - t0 < 5
    finally:
        release.set()
        first.join(30)
    assert cache.get_or_run(key, slow) == ("ok", ("solutions", b"late"))  # kept once it came


def _concept_page_path(app: Any, wnid: str) -> str:
    import pyoxigraph as ox

    node = next(app.store.quads_for_pattern(None, ox.NamedNode(FK + "wnid"), ox.Literal(wnid))).subject
    return urllib.parse.urlsplit(node.value).path


def _count_store_reads(app: Any) -> list[int]:
    """A one-item list counting the app's quads_for_pattern calls from now on."""
    reads = [0]

    def count(*args: Any) -> None:
        reads[0] += 1

    _spy_store(app, count)
    return reads


def test_documents_are_answered_from_the_cache(run_dir: Path) -> None:
    """A document asked again (a filter or concept page, its Turtle) is sent from the
    answer cache: no page query, and no store read beyond the resource's existence check
    (before, every request rendered it again: a concept page's query, its hundreds of
    links). With cache_mib=0 every request renders it."""
    from filtag_kg.serve import Options, make_app

    store = load_store(run_dir, "store-documents")
    for mib in (64.0, 0.0):
        app = make_app(store, Options(base_iri=BASE, cache_mib=mib), workers=1)
        sent = _record_page_queries(app)
        filter_page = urllib.parse.urlsplit(_first_filter(app)).path
        paths = [filter_page + ".html", _concept_page_path(app, "n02084071") + ".html", filter_page + ".ttl"]
        reads = _count_store_reads(app)
        try:
            for path in paths:
                queries, before = len(sent), reads[0]
                first = _call(app, path, "*/*")
                assert first[0].startswith("200") and len(sent) == queries + path.endswith(".html")
                rendering = reads[0] - before
                again = _call(app, path, "*/*")
                assert again == first
                if mib:
                    assert len(sent) == queries + path.endswith(".html")  # no page query
                    assert reads[0] - before - rendering <= 3 < rendering  # the existence check only
                else:
                    assert len(sent) == queries + 2 * path.endswith(".html")
                    assert reads[0] - before - rendering > 3  # rendered again
            if mib:  # the documents count against the cache's memory, by their size
                assert app.documents.size >= sum(len(_call(app, p, "*/*")[2]) for p in paths)
                assert app.answers.size == 0  # the documents' own memory
        finally:
            app.close()


def test_a_page_whose_query_failed_is_not_kept(run_dir: Path) -> None:
    """A page rendered while its own library query failed (the page says why) is not kept:
    the next request renders it again, with the query's answer."""
    from filtag_kg.serve import Options, _Reply, make_app

    app = make_app(load_store(run_dir, "store-partial"), Options(base_iri=BASE), workers=1)
    real = app.page_pool.run
    fail = [True]

    def flaky(*args: Any) -> Any:
        if fail[0]:
            raise _Reply("503 Service Unavailable", "all query workers are busy; try again")
        return real(*args)

    app.page_pool.run = flaky  # type: ignore[method-assign]
    try:
        path = _concept_page_path(app, "n02084071") + ".html"
        status, _, page = _call(app, path, "text/html")
        assert status.startswith("200") and b"all query workers are busy" in page
        fail[0] = False
        status, _, page = _call(app, path, "text/html")
        assert status.startswith("200") and b"busy" not in page and b"<th>filterIri</th>" in page
        assert _call(app, path, "text/html")[2] == page  # now kept
    finally:
        app.close()


def test_requests_waiting_for_an_identical_page_render_it_after_waiting() -> None:
    """A request for a document that another request is rendering waits at most wait_s,
    then renders it itself: a page is never refused as busy (a client's query is, with 503);
    a document's key is an IRI, never vetted as query text (an IRI with "service" in it is kept)."""
    import threading

    from filtag_kg.serve import _AnswerCache

    cache = _AnswerCache(1 << 20, wait_s=0.2, documents=True)
    started, release = threading.Event(), threading.Event()

    def slow() -> tuple[str, Any]:
        started.set()
        release.wait(30)
        return "ok", b"slow page"

    key = (BASE + "service/x", None, None, ("document", "text/html"))
    first = threading.Thread(target=lambda: cache.get_or_run(key, slow))
    first.start()
    try:
        assert started.wait(30)
        assert cache.get_or_run(key, lambda: ("ok", b"own page")) == ("ok", b"own page")
    finally:
        release.set()
        first.join(30)
    assert cache.get_or_run(key, lambda: ("ok", b"other")) == ("ok", b"slow page")


def _children_of(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    kids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(entry.name))
    return kids


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie has)."""
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_query_workers_end_with_the_server(run_dir: Path, how: str) -> None:
    """A server stopped while a slow query runs takes its query workers with it: before,
    a worker in the middle of bench_serve.py's cross product outlived the stopped server
    and kept a core busy (3 GiB resident) for good."""
    import signal
    import threading

    store = load_store(run_dir, f"store-end-{how}")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "filtag_kg", "serve", "--store", str(store), "--port", str(port),
         "--timeout", "120", "--workers", "2"],
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/sparql?query=ASK%7B%7D", proc)
        slow = "SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f . ?g ?h ?i . ?j ?k ?l . ?m ?n2 ?o }"
        threading.Thread(target=lambda: sparql(url, slow), daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until a worker runs it as a slow query (niced)
            workers = _children_of(proc.pid)
            if any(_priority(w) == 19 for w in workers):
                break
            time.sleep(0.1)
        assert workers and any(_priority(w) == 19 for w in workers)
        proc.send_signal(getattr(signal, how))
        status = proc.wait(timeout=30)
        if how == "SIGTERM":  # a service manager's stop is a clean end, not an interruption
            assert status == 0, proc.stderr.read() if proc.stderr else ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(w) for w in workers):
            time.sleep(0.1)
        alive = [w for w in workers if _running(w)]
        for w in alive:  # never leave them running, even when the test fails
            os.kill(w, signal.SIGKILL)
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("mib", ["-1", "nan", "inf"])
def test_cache_size_must_be_a_finite_number(tmp_path: Path, mib: str) -> None:
    """--cache-mib inf passed the check and crashed with OverflowError (a traceback)."""
    from filtag_kg.serve import Options, ServeError, make_app

    with pytest.raises(ServeError, match="--cache-mib must be"):
        make_app(tmp_path / "no-store", Options(base_iri=None, cache_mib=float(mib)))


def test_identical_page_requests_share_one_render(run_dir: Path) -> None:
    """Requests for a page being rendered wait for it up to the query time limit, so a
    page whose query takes longer than fast_s runs that query once (before, each waiter
    rendered the page again after fast_s: four requests, four queries queued on the page
    workers behind the first, none finishing before it)."""
    import threading
    import time

    from filtag_kg.serve import Options, make_app

    app = make_app(load_store(run_dir, "store-share"), Options(base_iri=BASE, fast_s=0.2), workers=1)
    real, sent = app.page_pool.run, []

    def slow(*args: Any) -> Any:
        sent.append(args[0])
        time.sleep(0.6)  # three times fast_s
        return real(*args)

    app.page_pool.run = slow  # type: ignore[method-assign]
    try:
        path = _concept_page_path(app, "n02084071") + ".html"
        got: list[tuple[str, dict[str, str], bytes]] = []
        threads = [threading.Thread(target=lambda: got.append(_call(app, path, "text/html")))
                   for _ in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join(30)
        assert len(got) == 4 and len({g[2] for g in got}) == 1 and got[0][0].startswith("200")
        assert len(sent) == 1
    finally:
        app.close()


def test_documents_never_push_the_answers_out(run_dir: Path) -> None:
    """Documents have a quarter of --cache-mib of their own: a crawler reading every page
    once leaves the clients' kept answers in place (before, one LRU held both, and pages of
    100-300 KB pushed the library answers out)."""
    from filtag_kg.serve import Options, make_app

    app = make_app(load_store(run_dir, "store-crawl"), Options(base_iri=BASE, cache_mib=0.05), workers=1)
    try:
        query = urllib.parse.urlencode({"query": "SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }"})
        assert _call(app, "/sparql", "application/sparql-results+json", query)[0].startswith("200")
        assert len(app.answers.kept) == 1
        import pyoxigraph as ox

        filters = [q.subject.value for q in app.store.quads_for_pattern(
            None, ox.NamedNode(RDF_TYPE), ox.NamedNode(FK + "Filter"), None)]
        for iri in filters[:40]:
            for suffix in (".html", ".ttl"):
                assert _call(app, urllib.parse.urlsplit(iri).path + suffix)[0].startswith("200")
        assert 0 < app.documents.size <= app.documents.max_bytes
        assert len(app.answers.kept) == 1  # the answer is still there
    finally:
        app.close()


def _label_store(tmp_path: Path, extra: list[Any]) -> Path:
    import pyoxigraph as ox

    store_dir = tmp_path / "labels-store"
    s = ox.Store(str(store_dir))
    for q in extra:
        s.add(q)
    s.flush()
    del s
    return store_dir


def test_labels_read_at_start_are_those_a_lookup_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subjects with several labels (both properties, several graphs and languages, long
    and short texts), a label that is an IRI and one that is a triple term: the labels
    read at start are those the per-link lookup finds, literals only (before, a triple
    term's label stopped serve at start with an AttributeError traceback)."""
    import pyoxigraph as ox

    import filtag_kg.serve as serve
    from filtag_kg.rdf.vocab import RDFS, SKOS

    pref, lab = ox.NamedNode(str(SKOS.prefLabel)), ox.NamedNode(str(RDFS.label))
    graphs = [ox.DefaultGraph(), ox.NamedNode(BASE + "g1"), ox.NamedNode(BASE + "g2")]
    quads, subjects = [], []
    for i in range(12):
        node = ox.NamedNode(f"{BASE}thing/{i}")
        subjects.append(node.value)
        for j in range(i % 4 + 1):
            text = f"label {i} {j} " + "x" * (20 * ((i + j) % 3))
            lit = ox.Literal(text, language=["en", "de"][j % 2]) if j % 3 else ox.Literal(text)
            quads.append(ox.Quad(node, pref if (i + j) % 2 else lab, lit, graphs[(i + j) % 3]))
    odd = ox.NamedNode(BASE + "odd")
    triple = ox.Triple(odd, lab, ox.Literal("x"))
    quads += [ox.Quad(odd, lab, ox.NamedNode(BASE + "not-a-label")), ox.Quad(odd, pref, triple)]
    store_dir = _label_store(tmp_path, quads)
    seen = []
    for bound in (1000, 0):  # all read at start; each looked up
        monkeypatch.setattr(serve, "LABEL_CACHE", bound)
        app = serve.make_app(store_dir, serve.Options(base_iri=BASE), workers=1)
        try:
            assert (app._all_labels is None) == (bound == 0)
            seen.append([app._label(s) for s in [*subjects, odd.value]])
            page = _call(app, urllib.parse.urlsplit(odd.value).path + ".html", "text/html")
            assert page[0].startswith("200")
        finally:
            app.close()
    assert seen[0] == seen[1]
    assert seen[0][-1] == "odd" and all(x.startswith("label") for x in seen[0][:-1])


def test_labels_read_at_start_are_bounded_in_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More label text than LABEL_TEXT characters is not read at start (a store of few but
    huge labels would hold them all in memory); links look them up instead, alike."""
    import pyoxigraph as ox

    import filtag_kg.serve as serve
    from filtag_kg.rdf.vocab import RDFS

    nodes = [ox.NamedNode(f"{BASE}big/{i}") for i in range(5)]
    store_dir = _label_store(tmp_path, [ox.Quad(n, ox.NamedNode(str(RDFS.label)), ox.Literal(f"{i}" * 1000))
                                        for i, n in enumerate(nodes)])
    monkeypatch.setattr(serve, "LABEL_TEXT", 4000)
    app = serve.make_app(store_dir, serve.Options(base_iri=BASE), workers=1)
    try:
        assert app._all_labels is None
        assert [app._label(n.value) for n in nodes] == [f"{i}" * 1000 for i in range(5)]
    finally:
        app.close()
