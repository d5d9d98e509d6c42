"""``filtag-kg publish``: push every named graph to a SPARQL 1.1 Graph Store.

Each graph (the tag graph, the VoID graph, each image explanation) is sent
with one HTTP ``PUT <endpoint>?graph=<IRI>``, which the Graph Store HTTP
Protocol defines as "replace this graph": publishing again replaces each
graph, never duplicates it, and a store applies each PUT as a whole, so no
graph is ever half-written.

Graphs go over ``jobs`` parallel keep-alive connections. A graph that fails
(connection errors, time-outs, broken answers such as ``IncompleteRead`` or
``BadStatusLine``, HTTP 5xx, 408, 429) is retried with backoff and, if it still
fails, reported by name; the command then exits non-zero. An endpoint that
cannot be reached at all stops the run within seconds, before anything is sent.

A small state file beside the source (``SOURCE.published.json``, or
``RUN_DIR/published.json``) records, per endpoint, the SHA-256 of each graph
that arrived; a rerun sends only the graphs that failed or changed since
(``resend=True`` sends all).

Works with any store implementing the protocol: Oxigraph (``/store``), Apache
Jena Fuseki (``/DATASET/data``), GraphDB (``/repositories/REPO/rdf-graphs/service``),
Virtuoso (``/sparql-graph-crud``).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FiltagError

RETRIES = 3
MAX_JOBS = 32
CONNECT_TIMEOUT_S = 5.0


class PublishError(FiltagError):
    """The endpoint, credentials or input of ``publish`` are unusable."""


@dataclass
class PublishReport:
    """What was sent: graph IRIs with their triple counts, the graphs that failed, and
    those left out because they arrived unchanged before (see the module's state file)."""

    endpoint: str
    sent: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    unchanged: list[tuple[str, int]] = field(default_factory=list)
    retries: int = 0
    state_file: Path | None = None
    note: str = ""

    @property
    def triples(self) -> int:
        """Triples sent in graphs that arrived."""
        return sum(n for _, n in self.sent)

    def summary(self) -> str:
        """A few lines for the CLI: how many graphs and triples arrived, what failed."""
        total = len(self.sent) + len(self.failed) + len(self.unchanged)
        lines = [
            f"published {len(self.sent)} graphs ({self.triples} triples) to {self.endpoint}"
            + (f" after {self.retries} retries" if self.retries else "")
        ]
        if self.unchanged:
            lines.append(
                f"{len(self.unchanged)} of {total} graphs ({sum(n for _, n in self.unchanged)} triples) "
                "arrived unchanged before and were not resent (--force resends them)"
            )
        if self.failed:
            lines.append(f"{len(self.failed)} of {total} graphs FAILED; run again to resend only those:")
        lines += [f"  FAILED {iri}: {why}" for iri, why in self.failed]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def graphs_of(
    source: str | os.PathLike[str], *, base_iri: str | None = None
) -> Iterator[tuple[str | None, bytes, int]]:
    """The named graphs of a run folder or an RDF file, as ``(graph IRI, N-Triples, count)``.

    A run folder is exported on the fly (streaming, graph by graph); a file
    (``.nq``, ``.trig``, ``.nt``, ``.ttl``, ``.jsonld``, ``.rdf``) is parsed with
    Oxigraph and split by graph. ``None`` stands for the default graph.

    Raises:
        PublishError: the source is missing or not RDF.
    """
    p = Path(source)
    if p.is_dir():
        from .rdf import DEFAULT_BASE_IRI
        from .rdf.nquads import RunGraphs

        for iri, text, count in RunGraphs(p, base_iri=base_iri or DEFAULT_BASE_IRI, graphs=False):
            yield iri, text.encode(), count
        return
    yield from _file_graphs(p)


def _file_graphs(p: Path) -> list[tuple[str | None, bytes, int]]:
    """The graphs of an RDF file, sorted by name (see :func:`graphs_of`)."""
    if not p.is_file():
        raise PublishError(f"{p} is neither a run folder nor an RDF file")
    import pyoxigraph as ox

    fmt = ox.RdfFormat.from_extension(p.suffix.lstrip(".")) if p.suffix else None
    if fmt is None:
        raise PublishError(f"cannot tell the RDF format of {p} from its extension; use .nq or .trig")
    try:
        quads = list(ox.parse(path=str(p), format=fmt))
    except (SyntaxError, OSError) as exc:
        raise PublishError(f"cannot parse {p}: {str(exc).splitlines()[0][:200]}") from None
    by_graph: dict[object, list[object]] = {}
    for q in quads:
        by_graph.setdefault(q.graph_name, []).append(ox.Triple(q.subject, q.predicate, q.object))
    out = []
    for g in sorted(by_graph, key=lambda g: "" if isinstance(g, ox.DefaultGraph) else str(g)):
        triples = by_graph[g]
        body = ox.serialize(triples, format=ox.RdfFormat.N_TRIPLES)
        out.append(((None if isinstance(g, ox.DefaultGraph) else g.value), body, len(triples)))
    return out


def _auth_header(auth: str | None) -> dict[str, str]:
    if not auth:
        return {}
    if ":" not in auth:
        raise PublishError("--auth takes USER:PASSWORD")
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def check_endpoint(endpoint: str) -> urllib.parse.SplitResult:
    """The parts of a Graph Store endpoint URL, checked.

    Raises:
        PublishError: not an http(s) URL, an unreadable one (a space, ``[::1``, a bad
            port), or one that already chooses a graph (``graph=``, ``default``) or has a
            fragment: every graph would then go to the same place, each replacing the last.
    """
    example = "e.g. http://127.0.0.1:7878/store"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in endpoint):
        raise PublishError(f"endpoint {endpoint!r} holds a space or control character; {example}")
    try:
        parts = urllib.parse.urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise PublishError(f"endpoint {endpoint!r} is not a valid URL ({exc}); {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PublishError(f"endpoint {endpoint!r} is not an http(s) URL, {example}")
    if parts.fragment or endpoint.endswith("#"):
        raise PublishError(f"endpoint {endpoint!r} has a fragment (#...); give the store's URL without it")
    names = {k for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)}
    chosen = sorted(names & {"graph", "default"})
    if chosen:
        raise PublishError(
            f"endpoint {endpoint!r} already names a graph ({', '.join(chosen)}=); "
            "give the store's Graph Store URL without it: publish adds ?graph= per graph"
        )
    return parts


def state_path(source: str | os.PathLike[str]) -> Path:
    """Where the record of what arrived is kept: ``RUN_DIR/published.json`` for a run
    folder, ``FILE.published.json`` beside an RDF file."""
    p = Path(source)
    return p / "published.json" if p.is_dir() else p.with_name(p.name + ".published.json")


def _read_state(path: Path, key: str) -> dict[str, str]:
    """The graph hashes recorded for one endpoint (empty if none or unreadable)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        got = data["endpoints"][key]
        return {str(k): str(v) for k, v in got.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_state(path: Path, key: str, hashes: dict[str, str]) -> None:
    import json

    from ._io import write_json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data.get("endpoints"), dict):
            raise ValueError
    except (OSError, ValueError, AttributeError):
        data = {"format": "filtag-kg publish state 1", "endpoints": {}}
    data["endpoints"][key] = dict(sorted(hashes.items()))
    write_json(path, data)


class _Sender:
    """PUTs graphs over keep-alive connections (one per thread), with retries."""

    def __init__(
        self, parts: urllib.parse.SplitResult, headers: dict[str, str], retries: int, backoff_s: float,
        timeout_s: float,
    ) -> None:
        self.parts, self.headers = parts, headers
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.local = threading.local()
        self.lock = threading.Lock()
        self.retry_count = 0
        self.answered = threading.Event()  # the endpoint answered at least once
        self.stop = threading.Event()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
            conn = self.local.conn = cls(self.parts.hostname, self.parts.port, timeout=CONNECT_TIMEOUT_S)
        if conn.sock is None:
            conn.connect()
            conn.sock.settimeout(self.timeout_s)
        return conn

    def _drop(self) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
        self.local.conn = None

    def _target(self, iri: str | None) -> str:
        path = self.parts.path or "/"
        query = self.parts.query + "&" if self.parts.query else ""
        graph = "default" if iri is None else "graph=" + urllib.parse.quote(iri, safe="")
        return path + "?" + query + graph

    def put(self, iri: str | None, body: bytes) -> str | None:
        """Send one graph; ``None`` if it arrived, else the last error.

        Raises:
            PublishError: the credentials were refused, or the endpoint cannot be reached
                at all (nothing has ever answered).
        """
        wait_s, error = self.backoff_s, ""
        attempt = 0
        while attempt <= self.retries:
            if self.stop.is_set():
                return "not sent: the run was stopped"
            connect_failed = reused = False
            try:
                try:
                    reused = getattr(getattr(self.local, "conn", None), "sock", None) is not None
                    conn = self._connection()
                except (OSError, http.client.HTTPException) as exc:
                    connect_failed = True
                    raise exc
                conn.request("PUT", self._target(iri), body=body,
                             headers={"Content-Type": "application/n-triples", **self.headers})
                resp = conn.getresponse()
                resp.read()
                self.answered.set()
                if resp.will_close:
                    self._drop()
                if 200 <= resp.status < 300:
                    return None
                error = f"HTTP {resp.status} {resp.reason}"
                if resp.status in (401, 403):
                    self.stop.set()
                    raise PublishError(
                        f"{self.parts.geturl()} refused the credentials ({error}); check --auth"
                    )
                if 400 <= resp.status < 500 and resp.status not in (408, 429):
                    return error  # the request itself is wrong: retrying cannot help
            except PublishError:
                raise
            except (OSError, http.client.HTTPException) as exc:
                # refused or reset connections, time-outs, IncompleteRead, BadStatusLine, ...
                self._drop()
                if reused and isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError)):
                    reused = False
                    continue  # the store closed an idle keep-alive connection: reconnect at once
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if connect_failed and not self.answered.is_set() and attempt >= 1:
                    # nothing has ever answered: the endpoint is unreachable, so stop now
                    self.stop.set()
                    raise PublishError(
                        f"cannot connect to {self.parts.hostname}:{self.parts.port or ''} ({error}); "
                        "check the --endpoint URL and that the store is running"
                    ) from None
            if attempt < self.retries:
                with self.lock:
                    self.retry_count += 1
                time.sleep(wait_s)
                wait_s *= 2
            attempt += 1
        return error


def publish(
    source: str | os.PathLike[str],
    endpoint: str,
    *,
    auth: str | None = None,
    base_iri: str | None = None,
    retries: int = RETRIES,
    backoff_s: float = 0.5,
    timeout_s: float = 120.0,
    jobs: int = 4,
    progress: bool = False,
    graphs: Iterable[tuple[str | None, bytes, int]] | None = None,
    state_file: str | os.PathLike[str] | bool = True,
    resend: bool = False,
    allow_local_base: bool = False,
) -> PublishReport:
    """Publish every graph of a run folder or RDF file to a Graph Store endpoint.

    Args:
        source: a run folder (exported on the fly) or an RDF file.
        endpoint: the store's Graph Store Protocol URL (``http://host:7878/store``).
        auth: ``USER:PASSWORD`` for HTTP Basic authentication.
        base_iri: base IRI when exporting a run folder.
        retries: attempts per graph after the first failure.
        backoff_s: first wait between attempts (doubles each time).
        timeout_s: how long one answer may take.
        jobs: parallel connections (1 to 32).
        progress: show a progress bar (graphs, triples, retries) on stderr.
        graphs: the graphs to send, instead of reading ``source`` (for tests and callers
            that already hold them).
        state_file: where to record what arrived (``True``: :func:`state_path` of the
            source; ``False``: nowhere, send everything).
        resend: send the graphs that arrived unchanged before, too.
        allow_local_base: publish IRIs on ``localhost`` or a loopback address (refused by
            default: they point nowhere for anyone else).

    Returns:
        The report; graphs that failed after every retry are listed in ``failed``.

    Raises:
        PublishError: a bad endpoint URL, credentials, source or base IRI, or an endpoint
            that cannot be reached at all.
    """
    parts = check_endpoint(endpoint)
    headers = _auth_header(auth)
    if not 1 <= jobs <= MAX_JOBS:
        raise PublishError(f"--jobs {jobs}: give 1 to {MAX_JOBS} parallel connections")
    src = Path(source)
    if graphs is None:
        if src.is_dir():
            from .rdf import DEFAULT_BASE_IRI

            local = [base_iri or DEFAULT_BASE_IRI]
            graphs = graphs_of(src, base_iri=base_iri)
        else:
            graphs = _file_graphs(src)
            local = [iri for iri, _, _ in graphs if iri] + _uri_spaces(graphs)
        from .rdf.export import is_local_base_iri

        bad = next((iri for iri in local if is_local_base_iri(iri)), None)
        if bad is not None and not allow_local_base:
            raise PublishError(
                f"the graphs' IRIs are on this machine ({bad}): nobody else can follow them. "
                "Export with --base-iri https://your.domain/kg/ (or pass --allow-local-base)"
            )
    key = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()  # no credentials
    if isinstance(state_file, bool):
        path = state_path(src) if state_file and src.exists() else None
    else:
        path = Path(state_file)
    done = _read_state(path, key) if path is not None else {}
    before = dict(done)
    report = PublishReport(key, state_file=path)
    sender = _Sender(parts, headers, retries, backoff_s, timeout_s)
    from ._progress import progress as progress_bar

    bar = progress_bar(total=len(graphs) if isinstance(graphs, list) else None, desc="publish",
                       unit=" graphs", enabled=progress)
    try:
        _send_all(graphs, sender, report, done, resend, jobs, bar)
    finally:
        report.retries = sender.retry_count
        bar.close()
        if path is not None and done != before:
            try:
                _write_state(path, key, done)
            except (OSError, FiltagError) as exc:
                report.note = f"note: cannot record what arrived in {path} ({exc})"
    return report


def _uri_spaces(graphs: list[tuple[str | None, bytes, int]]) -> list[str]:
    """The ``void:uriSpace`` values in the graphs (the base IRI of an export)."""
    needle = b"<http://rdfs.org/ns/void#uriSpace> \""
    out = []
    for _, body, _ in graphs:
        start = body.find(needle)
        while start >= 0:
            end = body.find(b'"', start + len(needle))
            out.append(body[start + len(needle) : end].decode("utf-8", "replace"))
            start = body.find(needle, end)
    return out


def _send_all(
    graphs: Iterable[tuple[str | None, bytes, int]],
    sender: _Sender,
    report: PublishReport,
    done: dict[str, str],
    resend: bool,
    jobs: int,
    bar: Any,
) -> None:
    """Send the graphs over ``jobs`` threads, at most ``2 * jobs`` graphs held at once."""
    lock = threading.Lock()
    in_a_row = [0]  # graphs that failed one after the other
    give_up = max(5, 2 * jobs)

    def one(iri: str | None, body: bytes, count: int, digest: str) -> None:
        name = iri or "(default graph)"
        error = sender.put(iri, body)
        with lock:
            if error is None:
                report.sent.append((name, count))
                done[name] = digest
                in_a_row[0] = 0
            else:
                report.failed.append((name, error))
                done.pop(name, None)
                in_a_row[0] += 1
                if in_a_row[0] == give_up and not sender.stop.is_set():
                    # the store went away (or refuses everything): retrying every one of
                    # thousands of graphs would take hours
                    sender.stop.set()
                    report.note = (
                        f"stopped after {give_up} graphs in a row failed; the graphs after them were "
                        "not sent: run again to send what failed and the rest"
                    )
            bar.update(1)
            bar.set_postfix(triples=report.triples, retries=sender.retry_count, failed=len(report.failed))

    pending: set[Future[None]] = set()
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="publish") as pool:
        try:
            for iri, body, count in graphs:
                if sender.stop.is_set():
                    break
                name = iri or "(default graph)"
                digest = hashlib.sha256(body).hexdigest()
                if not resend and done.get(name) == digest:
                    report.unchanged.append((name, count))
                    continue
                while len(pending) >= 2 * jobs:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        f.result()  # a PublishError stops the run
                pending.add(pool.submit(one, iri, body, count, digest))
            for f in pending:
                f.result()
        except BaseException:
            sender.stop.set()
            for f in pending:
                f.cancel()
            raise

