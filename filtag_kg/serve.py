"""``filtag-kg serve``: the tag dataset as Linked Data, with a read-only SPARQL endpoint.

A small WSGI application over an on-disk Oxigraph store opened read-only,
served by waitress (a well-kept pure-Python WSGI server; no HTTP parsing of
our own). It answers

* ``/sparql``: the SPARQL 1.1 Protocol (GET and POST), results as JSON, XML,
  CSV or TSV, CONSTRUCT/DESCRIBE graphs as Turtle, N-Triples, JSON-LD,
  RDF/XML, TriG or N-Quads, with a time limit (503) and a result size limit
  (413); updates are refused (403), and so is ``SERVICE`` (400) unless the
  operator allowed that endpoint: no query makes the server fetch a URL;
* every resource IRI under the base IRI with ``303 See Other`` to a document
  about it, chosen by the Accept header: ``R.html`` for people, ``R.ttl``,
  ``R.jsonld``, ``R.nt`` or ``R.rdf`` for programs (the W3C "Cool URIs" 303
  pattern: a filter is not a document, its description is);
* ``/.well-known/void`` (the VoID description, with the endpoint, dumps,
  license, ontology version and provenance), ``/dumps/`` (the export files given with
  ``--dumps``) and ``/ontology``, each in Turtle, N-Triples, JSON-LD or RDF/XML.

Queries run in worker processes. The server's own page queries have their
own workers, and a query that runs past ``fast_s`` counts as slow: at most
``max_slow`` slow queries hold workers at once, so cheap queries and pages keep
answering while slow ones run. Clients' answers and the resource documents are kept
for identical requests while the server runs (:class:`_AnswerCache`), and the workers end
with the server. Anything that would change data (PUT, DELETE,
PATCH, POST outside ``/sparql``, SPARQL Update) is refused; malformed requests
get 4xx answers; every answer carries ``Access-Control-Allow-Origin: *``.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FiltagError, check_positive, check_whole

RESULT_TYPES = {
    "application/sparql-results+json": "JSON",
    "application/json": "JSON",
    "application/sparql-results+xml": "XML",
    "application/xml": "XML",
    "text/csv": "CSV",
    "text/tab-separated-values": "TSV",
}
GRAPH_TYPES = {
    "text/turtle": "TURTLE",
    "application/n-triples": "N_TRIPLES",
    "application/ld+json": "JSON_LD",
    "application/rdf+xml": "RDF_XML",
    "application/trig": "TRIG",
    "application/n-quads": "N_QUADS",
}
# the documents describing a resource R: R.html, R.ttl, ... (the targets of its 303)
DOC_SUFFIX = {
    ".html": "text/html",
    ".ttl": "text/turtle",
    ".nt": "application/n-triples",
    ".jsonld": "application/ld+json",
    ".rdf": "application/rdf+xml",
}
RDF_SUFFIX = {k: v for k, v in DOC_SUFFIX.items() if k != ".html"}
# documents (VoID, ontology) come in these formats
DOC_TYPES = ["text/turtle", "application/n-triples", "application/ld+json", "application/rdf+xml"]
MAX_QUERY_BYTES = 100_000
#: rows of a library query that a filter or concept page shows
PAGE_ROWS = 300
#: at most this many link labels are kept between pages (a store with at most this many
#: labels has them all read at start, so no page looks one up)
LABEL_CACHE = 200_000
#: ... and at most this many characters of label text are read at start
LABEL_TEXT = 32 << 20
CORS = [("Access-Control-Allow-Origin", "*")]


class ServeError(FiltagError):
    """The store or an option of ``serve`` is unusable."""


@dataclass
class Options:
    """Server settings.

    Attributes:
        base_iri: the IRIs this server answers for (its path part is the mount point);
            ``None``: the ``void:uriSpace`` of the store's VoID description.
        timeout_s: a query running longer is answered with 503.
        max_results: a query with more solutions or triples is answered with 413.
        dumps: export files offered for download under ``/dumps/``.
        ontology: the ontology document served at ``/ontology``.
        allow_service: SPARQL endpoints a query may call with ``SERVICE``; any other
            ``SERVICE`` is refused (400), so a query never makes the server fetch a URL.
        license: IRI of the data's license, stated in the VoID description.
        workers: processes running SPARQL queries from clients.
        max_slow: how many of them may run slow queries (past ``fast_s``) at once; a
            further slow query is stopped with 503, so the others stay free for cheap ones.
        fast_s: how long a query may run before it counts as slow.
        page_workers: processes running the server's own page queries.
        cache_mib: memory for answers kept for identical requests (same query text,
            graphs and formats), three quarters, and for resource documents (same IRI and
            format), a quarter, so a crawler's pages never push the answers out; kept while
            the server runs (restart it after a load); 0: none.
    """

    base_iri: str | None
    timeout_s: float = 10.0
    max_results: int = 100_000
    dumps: tuple[Path, ...] = ()
    ontology: Path | None = None
    allow_service: tuple[str, ...] = ()
    license: str | None = None
    workers: int = 6
    max_slow: int = 4
    fast_s: float = 1.0
    page_workers: int = 2
    cache_mib: float = 64.0


class _Reply(Exception):
    """Raised inside a handler to answer with a status and a short text."""

    def __init__(self, status: str, text: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or []


def _negotiate(accept: str, offered: Iterable[str], default: str) -> str | None:
    """The offered media type the Accept header prefers (q-values, wildcards); None if
    nothing is acceptable. Malformed entries are ignored; a header without any valid
    entry counts as ``*/*``."""
    offered = list(offered)
    prefs: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept or "*/*").split(",")):
        fields = [f.strip() for f in part.split(";")]
        mtype, q = fields[0].lower(), 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if mtype.count("/") == 1 and all(mtype.split("/")):  # ignore malformed entries
            prefs.append((q, i, mtype))
    if not prefs:
        return default
    best: tuple[float, int, int, str] | None = None
    for q, i, mtype in prefs:
        if q <= 0:
            continue
        for rank, o in enumerate([default] + [x for x in offered if x != default]):
            major = o.split("/")[0]
            if mtype in (o, f"{major}/*", "*/*"):
                key = (-q, 0 if mtype == o else 1, i if mtype == o else rank, o)
                if best is None or key < best:
                    best = key
    return best[3] if best else None


class App:
    """The WSGI application (one per store)."""

    def __init__(self, store: Any, options: Options, store_path: str, workers: int | None = None) -> None:
        self.store = store
        self.opts = options
        parsed = urllib.parse.urlsplit(options.base_iri or "")
        self.mount = parsed.path if parsed.path.endswith("/") else parsed.path + "/"
        size = workers if workers is not None else options.workers
        # read before any worker starts: an error here leaves no process behind
        self._all_labels = self._read_labels()  # every label of the store, if they fit
        self.pool = _QueryPool(
            store_path, size, options.timeout_s, options.max_results,
            max_slow=max(1, min(options.max_slow, size - 1)), fast_s=options.fast_s,
        )
        # the server's own page queries never wait behind clients' queries
        self.page_pool = _QueryPool(
            store_path, max(1, min(options.page_workers, size)), options.timeout_s, options.max_results
        )
        self._tag_graphs: list[str] | None | bool = False  # not looked up yet
        self._index_page: tuple[str, list[tuple[str, str]], bytes] | None = None
        self._void: list[Any] | None = None
        self._library: dict[str, Any] = {}  # library queries the pages run, by name
        self._labels: dict[str, str] = {}  # link labels looked up so far (see _label)
        room = int(options.cache_mib * 2**20)
        self.answers = _AnswerCache(room - room // 4, wait_s=options.fast_s)
        # a page is rendered by its first request, however long its query takes (at most
        # the time limit); identical requests wait for it rather than render it again
        self.documents = _AnswerCache(room // 4, wait_s=options.timeout_s + options.fast_s, documents=True)

    def close(self) -> None:
        """Stop the query worker processes."""
        self.pool.close()
        self.page_pool.close()

    def tag_graphs(self) -> list[str] | None:
        """The default graph of ``Graphs: tags`` library queries, as IRIs (``""``: the
        default graph), or ``None`` for the union of all graphs; looked up once."""
        if self._tag_graphs is False:
            import pyoxigraph as ox

            from .sparql.store import tag_graphs

            graphs = tag_graphs(self.store)
            self._tag_graphs = (
                None if graphs is None
                else ["" if isinstance(g, ox.DefaultGraph) else g.value for g in graphs]
            )
        return self._tag_graphs  # type: ignore[return-value]

    # -- plumbing -------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        try:
            status, headers, body = self.route(environ)
        except _Reply as r:
            status, headers, body = (
                r.status,
                [("Content-Type", "text/plain; charset=utf-8"), *r.headers],
                (r.text + "\n").encode(),
            )
        except Exception as exc:  # noqa: BLE001 - the server must survive anything a request triggers
            status, headers, body = (
                "500 Internal Server Error",
                [("Content-Type", "text/plain")],
                (f"internal error: {type(exc).__name__}\n".encode()),
            )
        headers = [*headers, *CORS, ("Content-Length", str(len(body)))]
        start_response(status, headers)
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    def route(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        if method == "OPTIONS":  # CORS preflight: browsers ask before a POST with a body
            return "204 No Content", [
                ("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS"),
                ("Access-Control-Allow-Headers", "Accept, Content-Type"),
                ("Access-Control-Max-Age", "86400"),
                ("Allow", "GET, HEAD, POST, OPTIONS"),
            ], b""
        if path in ("/sparql", self.mount + "sparql"):
            if method not in ("GET", "HEAD", "POST"):
                raise _Reply("405 Method Not Allowed", "use GET or POST", [("Allow", "GET, HEAD, POST")])
            return self.sparql(environ)
        if method not in ("GET", "HEAD"):
            raise _Reply("405 Method Not Allowed", "this server is read-only", [("Allow", "GET, HEAD")])
        if path in ("/.well-known/void", self.mount + ".well-known/void"):
            return self.void(environ)
        if path in ("/ontology", self.mount + "ontology"):
            return self.ontology(environ)
        for prefix in ("/dumps", self.mount + "dumps"):
            if path == prefix or path.startswith(prefix + "/"):
                return self.dumps(path[len(prefix) + 1 :])
        if path == "/" or path == self.mount:
            return self.index(environ)
        if path.startswith(self.mount):
            return self.resource(environ, path)
        raise _Reply("404 Not Found", f"nothing at {path}")

    def run_query(
        self, text: str, default: list[str] | None = None, named: list[str] | None = None,
        *, page: bool = False, formats: tuple[str | None, str | None] | None = None,
    ) -> Any:
        """Run a query in a worker process, within the time and size limits.

        Args:
            text: the query.
            default: IRIs of the graphs whose union is the default graph (``""`` names
                the store's default graph); ``None``: the union of all graphs.
            named: IRIs of the named graphs the query may use; ``None``: all of them.
            page: a query of the server's own pages (runs in the page workers).
            formats: the answer's formats, for a client: a value of :data:`RESULT_TYPES`
                for solutions and one of :data:`GRAPH_TYPES` for graphs (``None``: the
                client accepts none). The worker then writes the answer itself, so the
                server process (whose threads answer every request) only passes bytes on.

        Returns:
            ``True``/``False`` (ASK); without ``formats``, ``(variables, rows)`` (SELECT;
            each row maps a variable to a term dict of the SPARQL JSON results format,
            plus ``"nt"``, its N-Triples syntax) or ``(None, ntriples_bytes)``
            (CONSTRUCT/DESCRIBE); with ``formats``, ``("solutions" or "graph", body)``,
            the body ``None`` if the client accepts no format of that kind.
        """
        pool = self.page_pool if page else self.pool
        if formats is None:  # the pages' own queries (Python rows, not bytes) are not kept
            kind, payload = pool.run(text, default, named, formats)
        else:
            key = (text, _key(default), _key(named), formats)
            kind, payload = self.answers.get_or_run(key, lambda: pool.run(text, default, named, formats))
        if kind == "syntax":
            raise _Reply("400 Bad Request", f"query syntax error: {payload}")
        if kind == "too-large":
            raise _Reply("413 Content Too Large", f"more than {self.opts.max_results} results; add a LIMIT")
        if kind == "error":
            raise _Reply("500 Internal Server Error", f"query failed: {payload}")
        return payload

    # -- SPARQL protocol ------------------------------------------------------------------
    def _query_text(self, environ: dict[str, Any]) -> tuple[str | None, dict[str, list[str]]]:
        """The request's query (``None`` if it has none) and its protocol parameters."""
        params = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if "update" in params:
            raise _Reply("403 Forbidden", "SPARQL Update is refused: this endpoint is read-only")
        if environ.get("REQUEST_METHOD") == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                raise _Reply("400 Bad Request", "bad Content-Length") from None
            if length > MAX_QUERY_BYTES:
                raise _Reply("413 Content Too Large", f"query larger than {MAX_QUERY_BYTES} bytes")
            body = environ["wsgi.input"].read(length) if length else b""
            ctype = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
            if ctype == "application/sparql-update":
                raise _Reply("403 Forbidden", "SPARQL Update is refused: this endpoint is read-only")
            if ctype == "application/sparql-query":
                return body.decode("utf-8", "replace"), params
            if ctype in ("application/x-www-form-urlencoded", ""):
                form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
                if "update" in form:
                    raise _Reply("403 Forbidden", "SPARQL Update is refused: this endpoint is read-only")
                params.update(form)
            else:
                raise _Reply("415 Unsupported Media Type", f"cannot read a {ctype} body")
        queries = params.get("query")
        if not queries:
            return None, params
        if len(queries) > 1:
            raise _Reply("400 Bad Request", "give exactly one query parameter")
        if len(queries[0].encode()) > MAX_QUERY_BYTES:
            raise _Reply("413 Content Too Large", f"query larger than {MAX_QUERY_BYTES} bytes")
        return queries[0], params

    def sparql(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        text, params = self._query_text(environ)
        if text is None:
            return self._page(
                "SPARQL endpoint", _SPARQL_FORM.format(action=html.escape(self.mount + "sparql"))
            )
        if _first_keyword(text) in UPDATE_KEYWORDS:
            raise _Reply("403 Forbidden", "SPARQL Update is refused: this endpoint is read-only")
        for endpoint in service_endpoints(text):
            if endpoint not in self.opts.allow_service:
                raise _Reply(
                    "400 Bad Request",
                    f"SERVICE {'<' + endpoint + '>' if endpoint else '(not a full IRI)'} is refused: this "
                    "endpoint does not query other servers"
                    + (f" except {', '.join(self.opts.allow_service)}" if self.opts.allow_service else "")
                    + " (the operator may allow endpoints with --allow-service URL)",
                )
        # the protocol's dataset parameters: without them the default graph is the union
        # of all graphs; with them, the graphs named (as the SPARQL 1.1 protocol says)
        default = _graph_iris(params.get("default-graph-uri"))
        named = _graph_iris(params.get("named-graph-uri"))
        accept = environ.get("HTTP_ACCEPT", "")
        rtype = _negotiate(accept, RESULT_TYPES, "application/sparql-results+json")
        gtype = _negotiate(accept, GRAPH_TYPES, "text/turtle")
        formats = (RESULT_TYPES[rtype] if rtype else None, GRAPH_TYPES[gtype] if gtype else None)
        result = self.run_query(text, default, named, formats=formats)
        if isinstance(result, bool) or result[0] == "solutions":  # ASK / SELECT
            if rtype is None:
                raise _Reply("406 Not Acceptable", "results come as " + ", ".join(RESULT_TYPES))
            body = _boolean_results(result, formats[0]) if isinstance(result, bool) else result[1]
            return "200 OK", [("Content-Type", f"{rtype}; charset=utf-8"), ("Vary", "Accept")], body
        if gtype is None:
            raise _Reply("406 Not Acceptable", "graphs come as " + ", ".join(GRAPH_TYPES))
        return "200 OK", [("Content-Type", f"{gtype}; charset=utf-8"), ("Vary", "Accept")], result[1]

    # -- Linked Data ----------------------------------------------------------------------
    def _iri_of(self, environ: dict[str, Any], path: str) -> str:
        """The IRI a request path under the mount point stands for (percent-escapes kept)."""
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or urllib.parse.quote(path)
        raw = raw.split("?", 1)[0]
        if not raw.startswith(self.mount):
            raw = urllib.parse.quote(path)
        tail = raw[len(self.mount) :]
        if any(seg in ("..", ".") for seg in urllib.parse.unquote(tail).split("/")):
            raise _Reply("404 Not Found", "no such resource")
        base = self.opts.base_iri or ""
        return base + tail if base.endswith("/") else base.rstrip("/") + "/" + tail

    def resource(self, environ: dict[str, Any], path: str) -> tuple[str, list[tuple[str, str]], bytes]:
        """A resource IRI answers ``303 See Other`` to the document about it that the
        Accept header prefers (``R.html``, ``R.ttl``, ``R.jsonld``, ``R.nt``, ``R.rdf``);
        a document IRI answers 200 with the description in its format."""

        iri = self._iri_of(environ, path)
        if not self._exists(iri):
            suffix = next((s for s in DOC_SUFFIX if iri.endswith(s)), None)
            if suffix is None or not self._exists(iri[: -len(suffix)]):
                raise _Reply("404 Not Found", f"no resource {iri}")
            subject, mtype = iri[: -len(suffix)], DOC_SUFFIX[suffix]
            headers = [
                ("Content-Type", f"{mtype}; charset=utf-8"),
                ("Link", f'<{_header_iri(subject)}>; rel="about"'),
            ]
            # kept like clients' answers: a page repeated is sent without a worker and with
            # no store read beyond the existence checks above; identical requests arriving
            # while one renders wait for it (never 503: a page is rendered anyway after wait_s)
            _, body = self.documents.get_or_run((subject, mtype), lambda: self._document(subject, mtype))
            return "200 OK", headers, body
        mtype = _negotiate(environ.get("HTTP_ACCEPT", ""), DOC_SUFFIX.values(), "text/html")
        if mtype is None:
            raise _Reply("406 Not Acceptable", "resources are described as " + ", ".join(DOC_SUFFIX.values()))
        suffix = next(s for s, m in DOC_SUFFIX.items() if m == mtype)
        location = _header_iri(self._local(iri) or iri) + suffix
        return "303 See Other", [
            ("Location", location),
            ("Vary", "Accept"),
            ("Content-Type", "text/plain; charset=utf-8"),
        ], f"{iri} is described by {location}\n".encode()

    def _document(self, subject: str, mtype: str) -> tuple[str, bytes]:
        """The document about ``subject`` in ``mtype``: ``("ok", body)``, or
        ``("partial", body)`` for a page whose own query failed (a time-out under load, say:
        the page says so), which the answer cache does not keep."""
        import pyoxigraph as ox

        triples = self._describe(ox.NamedNode(subject))
        if mtype == "text/html":
            body, complete = self._resource_page(subject, triples)
            return ("ok" if complete else "partial"), body
        return "ok", _serialize_triples(triples, GRAPH_TYPES[mtype])

    def _exists(self, iri: str) -> bool:
        import pyoxigraph as ox

        try:
            node = ox.NamedNode(iri)
        except ValueError:
            return False
        return (
            next(iter(self.store.quads_for_pattern(node, None, None, None)), None) is not None
            or next(iter(self.store.quads_for_pattern(None, None, node, None)), None) is not None
        )

    def _describe(self, node: Any) -> list[Any]:
        """The resource's own triples, the contents of the named graph it names (an
        explanation), and the triples of its IRI-children in the same graphs (qualified tags)."""
        from itertools import islice

        quads = [self.store.quads_for_pattern(node, None, None, None)]
        if self.store.contains_named_graph(node):
            quads.append(islice(self.store.quads_for_pattern(None, None, None, node), self.opts.max_results))
        return _distinct_triples(*quads)

    def void(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        mtype = _negotiate(environ.get("HTTP_ACCEPT", ""), DOC_TYPES, "text/turtle")
        if mtype is None:
            raise _Reply("406 Not Acceptable", "the VoID description comes as " + ", ".join(DOC_TYPES))
        return (
            "200 OK",
            [("Content-Type", f"{mtype}; charset=utf-8"), ("Vary", "Accept")],
            _serialize_triples(self._void_triples(), GRAPH_TYPES[mtype]),
        )

    def _void_triples(self) -> list[Any]:
        """The statements about every ``void:Dataset`` (the export's dataset description),
        looked up by subject in the indexes (a filter over all quads took 50 s at 2 million
        quads) and kept, since the store is read-only; the datasets with a ``void:uriSpace``
        (the exports) get what only the server knows: its SPARQL endpoint, the dumps it
        offers, the license it was given, and the software that serves them."""
        if self._void is None:
            import pyoxigraph as ox

            from .rdf.vocab import DCTERMS, ONTOLOGY_VERSION_IRI, PROV, RDF, VOID

            N = ox.NamedNode
            typed = self.store.quads_for_pattern(None, N(str(RDF.type)), N(str(VOID.Dataset)))
            datasets = sorted({q.subject for q in typed}, key=str)
            triples = _distinct_triples(*(self.store.quads_for_pattern(d, None, None) for d in datasets))
            base = self.opts.base_iri or ""
            origin = base[: len(base) - len(urllib.parse.urlsplit(base).path)] if base else ""
            here = origin + self.mount
            extra = []
            for d in {t.subject for t in triples if t.predicate.value == str(VOID.uriSpace)}:
                extra.append(ox.Triple(d, N(str(VOID.sparqlEndpoint)), N(here + "sparql")))
                for dump in self.opts.dumps:
                    url = here + "dumps/" + urllib.parse.quote(dump.name)
                    extra.append(ox.Triple(d, N(str(VOID.dataDump)), N(url)))
                if self.opts.license:
                    extra.append(ox.Triple(d, N(str(DCTERMS.license)), N(self.opts.license)))
                # version and provenance: the ontology version the data follows, the run
                # (a prov:Activity) that computed it
                extra.append(ox.Triple(d, N(str(DCTERMS.conformsTo)), N(ONTOLOGY_VERSION_IRI)))
                for root in self.store.quads_for_pattern(d, N(str(VOID.rootResource)), None):
                    extra.append(ox.Triple(d, N(str(PROV.wasGeneratedBy)), root.object))
            self._void = triples + sorted(set(extra), key=str)
        return self._void

    def ontology(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        import pyoxigraph as ox

        if self.opts.ontology is None or not self.opts.ontology.is_file():
            raise _Reply("404 Not Found", "no ontology document configured")
        mtype = _negotiate(environ.get("HTTP_ACCEPT", ""), DOC_TYPES, "text/turtle")
        if mtype is None:
            raise _Reply("406 Not Acceptable", "the ontology comes as " + ", ".join(DOC_TYPES))
        headers = [("Content-Type", f"{mtype}; charset=utf-8"), ("Vary", "Accept")]
        if mtype == "text/turtle":  # the document as written, comments and all
            return "200 OK", headers, self.opts.ontology.read_bytes()
        triples = ox.parse(path=str(self.opts.ontology), format=ox.RdfFormat.TURTLE)
        return "200 OK", headers, _serialize_triples(triples, GRAPH_TYPES[mtype])

    def dumps(self, name: str) -> tuple[str, list[tuple[str, str]], bytes]:
        by_name = {p.name: p for p in self.opts.dumps}
        if not name:
            items = "".join(
                f'<li><a href="{html.escape(self.mount)}dumps/{urllib.parse.quote(n)}">{html.escape(n)}</a> '
                f"({p.stat().st_size:,} bytes)</li>"
                for n, p in sorted(by_name.items())
            )
            return self._page("Downloads", f"<ul>{items or '<li>none offered</li>'}</ul>")
        if name not in by_name:  # only the files given; no path is ever joined
            raise _Reply("404 Not Found", "no such dump")
        p = by_name[name]
        ctype = {
            ".nq": "application/n-quads",
            ".trig": "application/trig",
            ".nt": "application/n-triples",
            ".ttl": "text/turtle",
            ".jsonld": "application/ld+json",
        }.get(p.suffix, "application/octet-stream")
        return (
            "200 OK",
            [
                ("Content-Type", ctype),
                ("Content-Disposition", f'attachment; filename="{urllib.parse.quote(name)}"'),
            ],
            p.read_bytes(),
        )

    # -- HTML -----------------------------------------------------------------------------
    def index(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        # the store is opened read-only, so the page (a scan of every rdf:type statement:
        # seconds at tens of millions of quads) is computed once per server
        if self._index_page is None:
            self._index_page = self._make_index()
        return self._index_page

    def _make_index(self) -> tuple[str, list[tuple[str, str]], bytes]:
        from .rdf.vocab import FK

        try:
            query = "SELECT ?type (COUNT(DISTINCT ?s) AS ?n) { ?s a ?type } GROUP BY ?type ORDER BY DESC(?n)"
            variables, rows = self.run_query(query, page=True)
        except _Reply as failed:  # kept like a result: asking again would only take as long again
            rows, note = [], f"<tr><td colspan=2>not counted: {html.escape(failed.text)}</td></tr>"
        else:
            note = ""
        # types with the same instance count (fk:Concept and skos:Concept, say) share a row,
        # so no count is listed twice
        by_count: dict[str, list[str]] = {}
        for r in rows:
            by_count.setdefault(r["n"]["value"], []).append(r["type"]["value"])
        counts = note + "".join(
            f"<tr><td>{', '.join(self._link(t) for t in types)}</td><td>{html.escape(n)}</td></tr>"
            for n, types in list(by_count.items())[:40]
        )
        models = self.run_query(
            f"SELECT DISTINCT ?m WHERE {{ ?m a <{FK.Model}> }} ORDER BY ?m LIMIT 50", page=True
        )[1]
        m = html.escape(self.mount)
        body = (
            f"<p>Base IRI <code>{html.escape(self.opts.base_iri or '')}</code>. "
            f'Query with <a href="{m}sparql">SPARQL</a>; '
            f'dataset description: <a href="{m}.well-known/void">VoID</a>; '
            f'<a href="{m}dumps/">downloads</a>; <a href="{m}ontology">ontology</a>.</p>'
            "<h2>Models</h2><ul>"
            + "".join(f"<li>{self._link(r['m']['value'])}</li>" for r in models)
            + "</ul>"
            f"<h2>Resources by type</h2><table><tr><th>types</th><th>count</th></tr>{counts}</table>"
        )
        return self._page("filtag-kg knowledge graph", body)

    def _local(self, iri: str) -> str | None:
        base = self.opts.base_iri or ""
        if base and iri.startswith(base):
            return self.mount + iri[len(base) :]
        return None

    def _read_labels(self) -> dict[str, str] | None:
        """Every link label of the store (see :meth:`_label`), read once at start in two
        index scans, or ``None`` if there are more than :data:`LABEL_CACHE` of them (or
        more than :data:`LABEL_TEXT` characters).

        A page links hundreds of resources (a concept page's explanations, a filter's
        referrers), most of them without a label: looked up one by one, two index
        lookups each, they took a third of a concept page's time (10 M quads: about 180
        new IRIs and 26 ms of 75 per page), in the server process that answers every
        request. A 10 M-quad export has about 7,000 labels (0.2 s to read)."""
        import pyoxigraph as ox

        labels: dict[str, str] = {}
        read = text = 0  # label statements and characters read: bound the start-up time and memory
        for pred in _label_predicates():  # a prefLabel wins over an rdfs:label
            for q in self.store.quads_for_pattern(None, ox.NamedNode(str(pred)), None, None):
                # the first literal label of a subject in index order, as a lookup by subject finds it
                if (isinstance(q.subject, ox.NamedNode) and isinstance(q.object, ox.Literal)
                        and q.subject.value not in labels):
                    labels[q.subject.value] = q.object.value
                    text += len(q.object.value)
                read += 1
                if len(labels) > LABEL_CACHE or read > 2 * LABEL_CACHE or text > LABEL_TEXT:
                    return None
        return labels

    def _label(self, iri: str) -> str:
        """The resource's label for links (``skos:prefLabel``, else ``rdfs:label``, else
        the last segment of its IRI). Read with all others at start where they fit in
        memory (:meth:`_read_labels`), else kept once looked up, since the store is
        read-only: a page links the same layers, models, runs and properties many times over."""
        if self._all_labels is not None:
            got = self._all_labels.get(iri)
            return got if got is not None else _iri_tail(iri)
        got = self._labels.get(iri)
        if got is not None:
            return got
        import pyoxigraph as ox

        node = ox.NamedNode(iri)
        got = next(
            (q.object.value for pred in _label_predicates()
             for q in self.store.quads_for_pattern(node, ox.NamedNode(str(pred)), None, None)
             if isinstance(q.object, ox.Literal)),  # a label is a literal (not an IRI or a triple term)
            None,
        )
        if got is None:
            got = _iri_tail(iri)
        if len(self._labels) >= LABEL_CACHE:
            self._labels.clear()  # a bound on memory; the next pages fill it again
        self._labels[iri] = got
        return got

    def _link(self, iri: str) -> str:
        local = self._local(iri)
        href = local if local is not None else iri
        return f'<a href="{html.escape(href, quote=True)}">{html.escape(self._label(iri))}</a>'

    def _term(self, term: Any) -> str:
        import pyoxigraph as ox

        if isinstance(term, ox.NamedNode):
            return self._link(term.value)
        if isinstance(term, ox.Literal):
            return html.escape(term.value)
        return html.escape(str(term))

    def _resource_page(self, iri: str, triples: list[Any]) -> tuple[bytes, bool]:
        """The HTML page about a resource, and whether it is complete (its own library
        query, if it has one, answered)."""
        import pyoxigraph as ox

        node = ox.NamedNode(iri)
        own = [t for t in triples if t.subject == node]
        rest = [t for t in triples if t.subject != node]
        rows = "".join(
            f"<tr><td>{self._link(t.predicate.value)}</td><td>{self._term(t.object)}</td></tr>" for t in own
        )
        incoming = []
        for i, q in enumerate(self.store.quads_for_pattern(None, None, node, None)):
            if i >= 300:
                incoming.append("<tr><td colspan=2>… more through SPARQL</td></tr>")
                break
            incoming.append(
                f"<tr><td>{self._term(q.subject)}</td><td>{self._link(q.predicate.value)}</td></tr>"
            )
        related = "".join(
            f"<tr><td>{self._term(t.subject)}</td><td>{self._link(t.predicate.value)}</td>"
            f"<td>{self._term(t.object)}</td></tr>"
            for t in rest[:500]
        )
        local = _header_iri(self._local(iri) or "")
        alt = " ".join(f'<a href="{html.escape(local + s)}">{s[1:]}</a>' for s in RDF_SUFFIX)
        typed, complete = self._typed_section(node, own)
        body = (
            f"<p><code>{html.escape(iri)}</code> — as {alt}</p>"
            + typed
            + f"<h2>Properties</h2><table>{rows}</table>"
            + (f"<h2>Referenced by</h2><table>{''.join(incoming)}</table>" if incoming else "")
            + (f"<h2>Related statements</h2><table>{related}</table>" if related else "")
        )
        return self._page(self._label(iri), body)[2], complete

    def _typed_section(self, node: Any, own: list[Any]) -> tuple[str, bool]:
        """What people look for on a filter page (its tags and abstract tags) and a concept
        page (the filters that represent it, counting hyponyms), from the query library;
        and whether its query answered."""
        import pyoxigraph as ox

        from .rdf.vocab import FK, RDF

        types = {t.object.value for t in own if t.predicate.value == str(RDF.type)}
        value = {t.predicate.value: t.object for t in own}
        index, in_layer, wnid = str(FK.filterIndex), str(FK.inLayer), str(FK.wnid)
        if str(FK.Filter) in types and index in value and in_layer in value:
            names = self.store.quads_for_pattern(value[in_layer], ox.NamedNode(str(FK.layerName)), None, None)
            layer = next(iter(names), None)
            if layer is None:
                return "", True
            bound = {"layer": layer.object, "filter": value[index]}
            return self._query_table("Tags and abstract tags", "concepts-of-filter", bound)
        if (str(FK.Concept) in types or str(FK.Synset) in types) and wnid in value:
            title = "Filters that represent it (counting hyponyms)"
            # images-for-concept is not run here: it sums every vote for the concept's hyponyms
            # (dog.n.01 at ImageNet-validation scale: about a minute), too slow for a page
            table, answered = self._query_table(title, "filters-for-concept", {"concept": value[wnid]})
            return table + (
                "<p>Images explained by it: the library query <code>images-for-concept</code> "
                f"(<code>filtag-kg query images-for-concept --param concept={html.escape(value[wnid].value)}"
                "</code>, or its text at the SPARQL endpoint).</p>"
            ), answered
        return "", True

    def _query_table(self, title: str, name: str, bound: dict[str, Any]) -> tuple[str, bool]:
        """A library query with fixed values for some variables, as an HTML table, and
        whether the query answered (else the table says why not)."""
        info = self._library.get(name)
        if info is None:  # read and parsed once per server, not on every page
            from .sparql.library import find_query

            info = self._library[name] = find_query(name)
        # the page shows the first PAGE_ROWS rows: the engine sends no more (dog.n.01 has
        # 2,449 at ImageNet scale), so neither the worker nor this process handles the rest
        text = _with_values(info.text, bound)
        if not re.search(r"\bLIMIT\s+\d+\s*$", text, re.IGNORECASE):
            text = f"{text.rstrip()}\nLIMIT {PAGE_ROWS}"
        try:
            # a query that reads only tags runs over the tag graphs, as the library runs it
            variables, rows = self.run_query(
                text, self.tag_graphs() if info.graphs == "tags" else None, page=True
            )
        except _Reply as r:
            return f"<h2>{html.escape(title)}</h2><p>{html.escape(r.text)}</p>", False
        if not rows:
            return f"<h2>{html.escape(title)}</h2><p>none</p>", True
        head = "".join(f"<th>{html.escape(v)}</th>" for v in variables)
        cells = "".join(
            "<tr>" + "".join(f"<td>{self._cell(r.get(v))}</td>" for v in variables) + "</tr>"
            for r in rows[:PAGE_ROWS]
        )
        return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{cells}</table>", True

    def _cell(self, term: dict[str, str] | None) -> str:
        if not term:
            return ""
        if term["type"] == "uri":
            return self._link(term["value"])
        return html.escape(term["value"])

    def _page(self, title: str, body: str) -> tuple[str, list[tuple[str, str]], bytes]:
        doc = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<nav><a href='{html.escape(self.mount)}'>filtag-kg</a> · "
            f"<a href='{html.escape(self.mount)}sparql'>SPARQL</a></nav>"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>"
        )
        return "200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Vary", "Accept")], doc.encode()


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:70em;margin:1em auto;padding:0 1em;line-height:1.4}"
    "table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:.2em .6em;text-align:left;"
    "vertical-align:top}code{background:#f4f4f4}nav{margin-bottom:1em}textarea{width:100%}"
)
_SPARQL_FORM = (
    "<form method='post' action='{action}'><textarea name='query' rows='12'>"
    "SELECT ?s ?p ?o WHERE {{ ?s ?p ?o }} LIMIT 10</textarea><br>"
    "<button type='submit'>Run</button></form>"
)


UPDATE_KEYWORDS = {"INSERT", "DELETE", "LOAD", "CLEAR", "DROP", "CREATE", "COPY", "MOVE", "ADD", "WITH"}


def _first_keyword(text: str) -> str:
    """The first keyword after the prologue (PREFIX/BASE declarations and comments),
    upper-cased: tells a query (SELECT, ASK, ...) from an update (INSERT, DROP, ...)."""
    text = re.sub(r"(?m)#[^\n<>\"']*$", "", text)  # comments (not inside IRIs or strings)
    prologue = re.compile(r"\s*(?:PREFIX\s+[^:\s]*:\s*<[^>]*>|BASE\s*<[^>]*>)", re.IGNORECASE)
    pos = 0
    while m := prologue.match(text, pos):
        pos = m.end()
    word = re.match(r"\s*([A-Za-z]+)", text[pos:])
    return word.group(1).upper() if word else ""


_LEXEME = re.compile(
    r"""(?P<comment>\#[^\n\r]*)"""
    r"""|(?P<string>'{3}(?:[^'\\]|\\.|'(?!''))*'{3}|"{3}(?:[^"\\]|\\.|"(?!""))*"{3}"""
    r"""|'(?:[^'\\\n\r]|\\.)*'|"(?:[^"\\\n\r]|\\.)*")"""
    r"""|(?P<iri><[^<>"{}|^`\\\x00-\x20]*>)"""
    r"""|(?P<word>[?$]?\w+)"""
    r"""|(?P<other>\S)""",
    re.DOTALL,
)


def service_endpoints(text: str) -> list[str | None]:
    """The endpoints of every ``SERVICE`` in a query: the IRI written in full (``<...>``),
    or ``None`` for a variable or prefixed name (which the server cannot vet).

    A lexer, not a parser: strings, IRIs and comments are skipped, so ``"SERVICE"`` in a
    literal does not count, while the keyword in any case, glued to its neighbours
    (``}SERVICE<x>{``) or written with ``\\u`` escapes counts. It errs on the safe side:
    a prefixed name whose local part is exactly ``service`` counts as well.
    """
    found: list[str | None] = []
    for variant in {text, _unescape_codepoints(text)}:
        tokens = [(m.lastgroup, m.group()) for m in _LEXEME.finditer(variant)]
        tokens = [t for t in tokens if t[0] != "comment"]
        for i, (kind, value) in enumerate(tokens):
            if kind != "word" or value.upper() != "SERVICE":
                continue
            rest = tokens[i + 1 : i + 3]
            if rest and rest[0][0] == "word" and rest[0][1].upper() == "SILENT":
                rest = rest[1:]
            if rest and rest[0][0] == "iri":
                found.append(rest[0][1][1:-1])
            else:
                found.append(None)
    return found


def _unescape_codepoints(text: str) -> str:
    """``\\uXXXX`` and ``\\UXXXXXXXX`` escapes replaced by their characters (SPARQL 1.1
    allows them anywhere in a query, though Oxigraph does not read them today)."""

    def char(m: re.Match[str]) -> str:
        code = int(m.group(1) or m.group(2), 16)
        return chr(code) if code < 0x110000 and not 0xD800 <= code < 0xE000 else m.group()

    return re.sub(r"\\u([0-9A-Fa-f]{4})|\\U([0-9A-Fa-f]{8})", char, text)


def _label_predicates() -> tuple[Any, Any]:
    """The predicates of a link's label, the one that wins first: ``skos:prefLabel``, then
    ``rdfs:label`` (for the labels read at start and for those looked up one by one)."""
    from .rdf.vocab import RDFS, SKOS

    return SKOS.prefLabel, RDFS.label


def _iri_tail(iri: str) -> str:
    """The last segment of an IRI (after its last ``/`` or ``#``): a link's label when
    the resource has none."""
    return iri.rsplit("/", 1)[-1].rsplit("#", 1)[-1] or iri


def _header_iri(iri: str) -> str:
    """An IRI or path as a URI fit for an HTTP header: non-ASCII and unsafe characters
    percent-encoded, existing escapes kept."""
    return urllib.parse.quote(iri, safe="/:@!$&'()*+,;=-._~%?#[]")


def _distinct_triples(*quad_sources: Iterable[Any]) -> list[Any]:
    """The triples of the quads (graph names dropped), each once, in first-seen order."""
    import pyoxigraph as ox

    seen: set[Any] = set()
    out = []
    for quads in quad_sources:
        for q in quads:
            t = ox.Triple(q.subject, q.predicate, q.object)
            if t not in seen:
                seen.add(t)
                out.append(t)
    return out


def _graph_iris(values: list[str] | None) -> list[str] | None:
    """Checked IRIs of a ``default-graph-uri`` / ``named-graph-uri`` parameter."""
    if not values:
        return None
    import pyoxigraph as ox

    for v in values:
        try:
            ox.NamedNode(v)
        except ValueError:
            raise _Reply("400 Bad Request", f"graph IRI {v!r} is not an absolute IRI") from None
    return list(values)


def _with_values(text: str, bound: dict[str, Any]) -> str:
    """The query with ``VALUES`` fixing some variables to RDF terms, right after its first
    ``WHERE {`` (comments removed first). Terms are written in their N-Triples syntax by
    pyoxigraph, so a value can never change the query's structure."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    body = "\n".join(lines)
    m = re.search(r"WHERE\s*\{", body, re.IGNORECASE)
    if m is None:
        raise ValueError("query has no WHERE clause")
    names = " ".join(f"?{k}" for k in bound)
    values = " ".join(str(v) for v in bound.values())
    return f"{body[: m.end()]}\n  VALUES ({names}) {{ ({values}) }}\n{body[m.end() :]}"


def _boolean_results(value: bool, fmt: str) -> bytes:
    if fmt == "JSON":
        return json.dumps({"head": {}, "boolean": value}).encode()
    if fmt == "XML":
        return (
            '<?xml version="1.0"?><sparql xmlns="http://www.w3.org/2005/sparql-results#">'
            f"<head/><boolean>{'true' if value else 'false'}</boolean></sparql>"
        ).encode()
    return f"_askResult\n{'true' if value else 'false'}\n".encode()


def _term_json(t: Any) -> dict[str, str]:
    """A pyoxigraph term as a SPARQL JSON results term, plus its N-Triples syntax (``nt``)."""
    import pyoxigraph as ox

    if isinstance(t, ox.NamedNode):
        d = {"type": "uri", "value": t.value}
    elif isinstance(t, ox.BlankNode):
        d = {"type": "bnode", "value": t.value}
    else:
        d = {"type": "literal", "value": t.value}
        if t.language:
            d["xml:lang"] = t.language
        elif t.datatype.value != "http://www.w3.org/2001/XMLSchema#string":
            d["datatype"] = t.datatype.value
    d["nt"] = str(t)
    return d


# characters XML 1.0 cannot carry at all, not even as character references
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: str) -> str:
    """Text for XML 1.0 content or a quoted attribute: markup characters escaped, tab,
    newline and carriage return as character references (so no parser normalises them
    away), and the control characters XML 1.0 forbids replaced by U+FFFD (the format
    has no way to carry them; the JSON, CSV and TSV results carry them exactly)."""
    text = html.escape(_NOT_XML.sub("\ufffd", text), quote=True)
    return text.replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;")


def _solutions_results(variables: list[str], rows: list[dict[str, Any]], fmt: str) -> bytes:
    """SELECT results in the SPARQL 1.1 JSON, XML, CSV or TSV results format."""
    if fmt == "JSON":
        bindings = [
            {v: {k: x for k, x in r[v].items() if k != "nt"} for v in variables if r.get(v)} for r in rows
        ]
        return json.dumps(
            {"head": {"vars": variables}, "results": {"bindings": bindings}}, ensure_ascii=False
        ).encode()
    if fmt == "XML":
        out = ['<?xml version="1.0"?><sparql xmlns="http://www.w3.org/2005/sparql-results#"><head>']
        out += [f'<variable name="{_xml(v)}"/>' for v in variables]
        out.append("</head><results>")
        for r in rows:
            out.append("<result>")
            for v in variables:
                j = r.get(v)
                if not j:
                    continue
                if j["type"] == "literal":
                    attrs = "".join(f' {k}="{_xml(j[k])}"' for k in ("xml:lang", "datatype") if k in j)
                    inner = f"<literal{attrs}>{_xml(j['value'])}</literal>"
                else:
                    inner = f"<{j['type']}>{_xml(j['value'])}</{j['type']}>"
                out.append(f'<binding name="{_xml(v)}">{inner}</binding>')
            out.append("</result>")
        out.append("</results></sparql>")
        return "".join(out).encode()
    if fmt == "CSV":
        import csv

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(variables)
        for r in rows:
            w.writerow([r[v]["value"] if r.get(v) else "" for v in variables])
        return buf.getvalue().encode()
    lines = ["\t".join(f"?{v}" for v in variables)]  # TSV: terms in their SPARQL/Turtle syntax
    lines += ["\t".join(r[v]["nt"] if r.get(v) else "" for v in variables) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def _worker_main(store_dir: str, conn: Any, max_results: int) -> None:
    """A query worker: opens the store read-only and answers queries until told to stop.

    Runs in its own process, so a query past the time limit is stopped by killing it.
    """
    import pyoxigraph as ox

    _die_with_parent()
    store = ox.Store.read_only(store_dir)

    def graph(iri: str) -> Any:
        return ox.DefaultGraph() if iri == "" else ox.NamedNode(iri)

    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        text, default, named, formats = message
        dataset: dict[str, Any] = {"use_default_graph_as_union": True}
        if default is not None:
            dataset = {"default_graph": [graph(g) for g in default]}
        if named is not None:
            dataset["named_graphs"] = [ox.NamedNode(g) for g in named]
        try:
            result = store.query(text, **dataset)
            if isinstance(result, ox.QueryBoolean):
                conn.send(("ok", bool(result)))
            elif isinstance(result, ox.QuerySolutions):
                variables = [v.value for v in result.variables]
                rows = []
                for i, sol in enumerate(result):
                    if i >= max_results:
                        break
                    rows.append({v: (_term_json(sol[v]) if sol[v] is not None else None) for v in variables})
                else:
                    if formats is None:
                        conn.send(("ok", (variables, rows)))
                    else:  # a client's answer, written here rather than in the server process
                        body = _solutions_results(variables, rows, formats[0]) if formats[0] else None
                        conn.send(("ok", ("solutions", body)))
                    continue
                conn.send(("too-large", None))
            else:
                triples = []
                for i, t in enumerate(result):
                    if i >= max_results:
                        conn.send(("too-large", None))
                        break
                    triples.append(t)
                else:
                    if formats is None:
                        conn.send(("ok", (None, ox.serialize(triples, format=ox.RdfFormat.N_TRIPLES) or b"")))
                    else:
                        body = _serialize_triples(triples, formats[1]) if formats[1] else None
                        conn.send(("ok", ("graph", body)))
        except SyntaxError as exc:
            conn.send(("syntax", str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the client as a 500
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _key(graphs: list[str] | None) -> tuple[str, ...] | None:
    return None if graphs is None else tuple(graphs)


#: functions whose value changes from one evaluation to the next, and SERVICE (another
#: endpoint's answer): a query using them is never answered from the cache
_NONDETERMINISTIC = re.compile(r"\b(NOW|RAND|UUID|STRUUID|BNODE)\s*\(|\bSERVICE\b", re.IGNORECASE)


class _Flight:
    """A request being computed: its outcome (a reply or the exception it raised) once done."""

    def __init__(self) -> None:
        import threading

        self.done = threading.Event()
        self.outcome: tuple[str, Any] | BaseException | None = None


class _AnswerCache:
    """Answers to clients' queries, kept for identical requests (query text, graphs and
    formats), least recently used first out, within ``max_bytes``; or, with
    ``documents``, the documents about resources (IRI and format: the server keeps them
    in a cache of their own, so a crawler's pages never push the answers out).

    A library query a page or client repeats (``filters-for-concept`` for dog.n.01 reads
    thousands of tags: seconds under load) is then answered without a worker. Only
    answers (not errors or time-outs) are kept. The server's workers read the store as
    it was when they opened it (Oxigraph's read-only handles are snapshots), so the
    server is restarted after a ``load`` into its store, which also empties this cache.
    Identical requests arriving while one runs wait for its outcome (its answer, or its
    error: a query past the time limit would only reach it again) instead of running the
    query again, for at most ``wait_s`` seconds: then they get 503, as a slow query past
    the server's limit of slow queries does, so waiting requests never hold every
    server thread while cheap requests queue behind them. A document is never refused
    as busy: after ``wait_s`` the waiting request renders it itself. A page whose own
    query failed is not kept.
    """

    def __init__(self, max_bytes: int, wait_s: float | None = None, *, documents: bool = False) -> None:
        import threading
        from collections import OrderedDict

        self.max_bytes, self.wait_s, self.documents = max_bytes, wait_s, documents
        self.lock = threading.Lock()
        self.kept: OrderedDict[Any, tuple[tuple[str, Any], int]] = OrderedDict()  # (reply, bytes)
        self.size = 0
        self.running: dict[Any, _Flight] = {}  # the requests being computed, by key
        self.shared = 0  # requests that waited for an identical one

    def get_or_run(self, key: Any, run: Callable[[], tuple[str, Any]]) -> tuple[str, Any]:
        """The kept answer for ``key``, else ``run()``'s (kept if it is an answer that fits).

        ``key[0]`` is a query text, the rest what else makes the answer differ; ``run()``
        gives ``(kind, payload)``, kept only for kind ``"ok"``. A request that waited
        ``wait_s`` for an identical one gets 503. In a cache of ``documents``, ``key[0]`` is
        the IRI of a resource whose document the server renders: no query text to vet, and
        a request that waited ``wait_s`` renders it itself."""
        document = self.documents
        if self.max_bytes <= 0 or (not document and _NONDETERMINISTIC.search(key[0])):
            return run()
        with self.lock:
            got = self.kept.get(key)
            if got is not None:
                self.kept.move_to_end(key)
                return got[0]
            flight = self.running.get(key)
            leader = flight is None
            if leader:  # nobody computes it: this request does
                flight = self.running[key] = _Flight()
            else:
                self.shared += 1
        if not leader:  # an identical request is running: its outcome is this one's too
            if not flight.done.wait(self.wait_s):
                if document:
                    return run()
                raise _Reply("503 Service Unavailable", f"an identical query has been running for over "
                             f"{self.wait_s:g} s; try again later")
            if isinstance(flight.outcome, BaseException):
                raise flight.outcome
            return flight.outcome  # type: ignore[return-value]
        try:
            flight.outcome = run()
            self._keep(key, flight.outcome)
            return flight.outcome
        except BaseException as exc:  # a time-out or a crash: the waiting requests get it too
            flight.outcome = exc
            raise
        finally:
            with self.lock:
                del self.running[key]
            flight.done.set()

    def _keep(self, key: Any, reply: tuple[str, Any]) -> None:
        kind, payload = reply
        if kind != "ok":
            return
        body = payload[1] if isinstance(payload, tuple) else payload
        # the answer, the query (or IRI), and overhead
        size = len(body if isinstance(body, bytes) else b"") + len(key[0]) + 200
        if size > self.max_bytes // 4:  # one answer never takes most of the room
            return
        with self.lock:
            self.kept[key] = (reply, size)
            self.size += size
            while self.size > self.max_bytes:
                _, (_, old_size) = self.kept.popitem(last=False)
                self.size -= old_size


def _die_with_parent() -> None:
    """Have the kernel kill this process when the server process ends, however it ends
    (Linux's ``PR_SET_PDEATHSIG``; elsewhere nothing happens). Without it a worker in the
    middle of a slow query outlived a server stopped with SIGTERM or SIGKILL and kept a
    core busy (and 3 GiB of memory) until its query ended: for the four-way cross product
    of bench_serve.py, never. A worker waiting for a query ends on its own (its pipe closes).
    """
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


#: CPU niceness of a worker while it runs a slow query (the lowest priority on Linux).
SLOW_NICENESS = 19


def _lower_priority(pid: int) -> None:
    """Give process ``pid`` the lowest CPU priority, where the platform allows it."""
    with contextlib.suppress(AttributeError, OSError):  # no setpriority (Windows), or refused
        os.setpriority(os.PRIO_PROCESS, pid, SLOW_NICENESS)


class _QueryPool:
    """Worker processes that run queries; one past the time limit is killed and replaced.

    A query that runs longer than ``fast_s`` is slow; at most ``max_slow`` slow queries
    hold workers at once (``None``: no such limit), so the other workers stay free for
    cheap queries. A further slow query is stopped at once with 503 instead of holding a
    worker until the time limit. A slow query's worker drops to the lowest CPU priority
    (:data:`SLOW_NICENESS`) for the rest of the query, so slow queries cannot starve
    cheap ones of CPU either, and is replaced when it is done.
    """

    def __init__(
        self, store_dir: str, size: int, timeout_s: float, max_results: int,
        *, max_slow: int | None = None, fast_s: float = 1.0,
    ) -> None:
        import multiprocessing as mp
        import queue
        import threading

        self.ctx = mp.get_context("spawn")  # forking a threaded server is unsafe
        self.store_dir, self.timeout_s, self.max_results = store_dir, timeout_s, max_results
        self.max_slow, self.fast_s = max_slow, min(fast_s, timeout_s)
        self.slow = 0
        self.lock = threading.Lock()
        self.idle: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.workers: list[Any] = []
        for _ in range(size):
            self.idle.put(self._start())

    def _start(self) -> tuple[Any, Any]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=_worker_main, args=(self.store_dir, child, self.max_results), daemon=True
        )
        proc.start()
        child.close()
        with self.lock:
            self.workers.append(proc)
        return proc, parent

    def _replace(self, proc: Any) -> None:
        """Stop a worker (past the limit, or dead) and put a fresh one in its place."""
        proc.kill()
        proc.join(timeout=5)
        with self.lock:
            self.workers.remove(proc)
        self.idle.put(self._start())

    def run(
        self, text: str, default: list[str] | None = None, named: list[str] | None = None,
        formats: tuple[str | None, str | None] | None = None,
    ) -> tuple[str, Any]:
        """Run a query in an idle worker (see :meth:`App.run_query` for the graph lists
        and the formats)."""
        import queue

        try:
            proc, conn = self.idle.get(timeout=self.timeout_s)
        except queue.Empty:
            raise _Reply("503 Service Unavailable", "all query workers are busy; try again") from None
        counted = False
        try:
            conn.send((text, default, named, formats))
            done = conn.poll(self.fast_s)
            if not done and self.max_slow is not None:
                with self.lock:
                    counted = self.slow < self.max_slow
                    self.slow += counted
                if not counted:
                    self._replace(proc)
                    raise _Reply(
                        "503 Service Unavailable",
                        f"{self.max_slow} slow queries are running; this one was stopped after "
                        f"{self.fast_s:g} s; try again later",
                        [("Retry-After", str(int(self.timeout_s) + 1))],
                    )
                # the rest of a slow query runs at the lowest CPU priority, so on a small
                # machine it takes only the CPU that cheap queries and pages leave; the
                # worker is replaced afterwards (a priority cannot be raised again without
                # privileges)
                _lower_priority(proc.pid)
            if done or conn.poll(self.timeout_s - self.fast_s):
                reply = conn.recv()
                if counted:
                    self._replace(proc)  # it runs at the lowest priority now
                else:
                    self.idle.put((proc, conn))
                return reply
        except (EOFError, OSError):
            # the worker died with the query: a crash, not a time-out (a query nested
            # thousands deep overflows the parser's stack, say)
            proc.join(timeout=5)
            code = proc.exitcode
            self._replace(proc)
            raise _Reply(
                "500 Internal Server Error",
                f"the query worker crashed (exit code {code}) while running this query; "
                "it may be nested too deeply. The server goes on.",
            ) from None
        finally:
            if counted:
                with self.lock:
                    self.slow -= 1
        self._replace(proc)  # past the time limit: stop it, start a fresh one
        raise _Reply("503 Service Unavailable", f"query exceeded the {self.timeout_s:g} s time limit")

    def close(self) -> None:
        with self.lock:
            for proc in self.workers:
                proc.kill()


def _serialize_triples(triples: Iterable[Any], fmt: str) -> bytes:
    """Triples in a Turtle (with ``@prefix`` lines), N-Triples, JSON-LD, RDF/XML, TriG or
    N-Quads document (the last two: the triples as the default graph). RDF/XML is XML 1.0,
    which cannot carry some control characters: in its literals they become U+FFFD (the
    other formats carry them exactly)."""
    import pyoxigraph as ox

    triples = list(triples)
    fmt_ = getattr(ox.RdfFormat, fmt)
    if fmt == "RDF_XML":
        triples = [_xml_safe(t) for t in triples]
    if fmt in ("TRIG", "N_QUADS"):
        triples = [ox.Quad(t.subject, t.predicate, t.object, ox.DefaultGraph()) for t in triples]
    if fmt in ("TURTLE", "TRIG"):
        from .rdf.vocab import PREFIXES  # the exports' own prefixes

        return ox.serialize(triples, format=fmt_, prefixes=PREFIXES) or b""
    data = ox.serialize(triples, format=fmt_) or b""
    # a raw carriage return would be read back as a newline (XML end-of-line handling);
    # it can only come from a literal, and the reference keeps it (formatting uses \n, \t)
    return data.replace(b"\r", b"&#13;") if fmt == "RDF_XML" else data


def _xml_safe(t: Any) -> Any:
    """The triple, its literal's characters that XML 1.0 forbids replaced by U+FFFD."""
    import pyoxigraph as ox

    o = t.object
    if isinstance(o, ox.Literal) and _NOT_XML.search(o.value):
        value = _NOT_XML.sub("\ufffd", o.value)
        o = ox.Literal(value, language=o.language) if o.language else ox.Literal(value, datatype=o.datatype)
        return ox.Triple(t.subject, t.predicate, o)
    return t


def open_store(store_dir: str | os.PathLike[str]) -> Any:
    """Open an on-disk Oxigraph store read-only.

    Raises:
        ServeError: the folder is not an Oxigraph store.
        StoreError: the store's last load was cut off (it is not served as if whole).
    """
    import pyoxigraph as ox

    from .sparql.store import check_complete, store_message

    p = Path(store_dir)
    if not p.is_dir():
        raise ServeError(
            f"store {store_dir} does not exist; create it with `filtag-kg load FILE --store {store_dir}`"
        )
    check_complete(p)
    try:
        return ox.Store.read_only(str(p))
    except (OSError, RuntimeError) as exc:  # RuntimeError: pyoxigraph's "Corruption: ..."
        raise ServeError(store_message(p, exc)) from None


def store_base_iri(store: Any) -> str | None:
    """The base IRI the store's data was exported with: the ``void:uriSpace`` of its
    VoID description (``None`` if it has none).

    Raises:
        ServeError: the store holds exports with different base IRIs.
    """
    import pyoxigraph as ox

    from .rdf.vocab import VOID

    quads = store.quads_for_pattern(None, ox.NamedNode(str(VOID.uriSpace)), None)
    spaces = sorted({q.object.value for q in quads})
    if len(spaces) > 1:
        raise ServeError(
            f"the store holds exports with {len(spaces)} base IRIs ({', '.join(spaces[:3])}); "
            "choose the one to serve with --base-iri"
        )
    return spaces[0] if spaces else None


def make_app(store_dir: str | os.PathLike[str], options: Options, *, workers: int | None = None) -> App:
    """The WSGI application over a store (see :class:`Options`), with ``workers`` query
    processes (default ``options.workers``). Without a base IRI in the options, the
    store's own (:func:`store_base_iri`) or else the default one is used.

    Raises:
        ServeError: the store cannot be opened, or an option is unusable.
    """
    from .rdf.mint import DEFAULT_BASE_IRI, check_base_iri

    if (workers if workers is not None else options.workers) < 1:
        raise ServeError("--workers must be at least 1")
    check_positive("--timeout", options.timeout_s)
    check_whole("--max-results", options.max_results, 1)
    if not (options.cache_mib >= 0 and math.isfinite(options.cache_mib)):
        raise ServeError(
            f"--cache-mib must be a number of MiB, 0 (no cache) or more, not {options.cache_mib}"
        )
    store = open_store(store_dir)
    if options.base_iri is None:
        options.base_iri = store_base_iri(store) or DEFAULT_BASE_IRI
    options.base_iri = check_base_iri(options.base_iri)
    for url in options.allow_service:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ServeError(f"--allow-service {url!r} is not an http(s) URL, e.g. https://query.wikidata.org/sparql")
    if options.license is not None:
        from .rdf.export import check_license_iri

        check_license_iri(options.license)  # the same rule as export's --license
    return App(store, options, str(store_dir), workers)


def serve(
    store_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    options: Options,
    threads: int = 8,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve a store until interrupted (waitress, ``threads`` worker threads).

    Raises:
        ServeError: the store or an option is unusable, or the address cannot be bound
            (a port in use, say).
    """
    import waitress

    app = make_app(store_dir, options)
    try:
        server = waitress.create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            max_request_body_size=MAX_QUERY_BYTES * 2,
            ident="filtag-kg",
        )
    except OSError as exc:
        app.close()
        why = exc.strerror or str(exc)
        raise ServeError(
            f"cannot listen on {host}:{port}: {why}; choose another --port (0 picks a free one)"
        ) from None
    if ready is not None:
        ready(f"http://{host}:{server.effective_port}/")
    previous = _stop_on_sigterm()
    try:
        server.run()
    except _Terminated:  # a service manager's stop is a normal end (exit 0), not an interruption
        pass
    finally:
        server.close()
        app.close()
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


class _Terminated(BaseException):
    """SIGTERM arrived: :func:`serve` stops its workers and returns."""


def _stop_on_sigterm() -> Any:
    """Make SIGTERM (a service manager's or a benchmark's stop) end :func:`serve` the way
    Ctrl-C does, its query workers stopped too, but as a normal return (exit status 0, which
    systemd counts as a clean stop); returns the previous handler (``None`` where none could
    be set: not in the main thread)."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise _Terminated

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # signal handlers can only be set in the main thread
        return None
