"""``filtag-kg publish``: push every named graph to a SPARQL 1.1 Graph Store.

Each graph (the tag graph, the VoID graph, each image explanation) is sent
with one HTTP ``PUT <endpoint>?graph=<IRI>``, which the Graph Store HTTP
Protocol defines as "replace this graph": publishing again replaces each
graph, never duplicates it, and a store applies each PUT as a whole, so no
graph is ever half-written. A failed graph is retried with backoff and, if it
still fails, reported by name; the command then exits non-zero.

Works with any store implementing the protocol: Oxigraph (``/store``), Apache
Jena Fuseki (``/DATASET/data``), GraphDB (``/repositories/REPO/rdf-graphs/service``),
Virtuoso (``/sparql-graph-crud``).
"""

from __future__ import annotations

import base64
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FiltagError

RETRIES = 3


class PublishError(FiltagError):
    """The endpoint, credentials or input of ``publish`` are unusable."""


@dataclass
class PublishReport:
    """What was sent: graph IRIs with their triple counts, and the graphs that failed."""

    endpoint: str
    sent: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    retries: int = 0

    @property
    def triples(self) -> int:
        """Triples sent in graphs that arrived."""
        return sum(n for _, n in self.sent)

    def summary(self) -> str:
        """A few lines for the CLI."""
        lines = [
            f"published {len(self.sent)} graphs ({self.triples} triples) to {self.endpoint}"
            + (f" after {self.retries} retries" if self.retries else "")
        ]
        lines += [f"  FAILED {iri}: {why}" for iri, why in self.failed]
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
    if not p.is_file():
        raise PublishError(f"{source} is neither a run folder nor an RDF file")
    import pyoxigraph as ox

    fmt = ox.RdfFormat.from_extension(p.suffix.lstrip(".")) if p.suffix else None
    if fmt is None:
        raise PublishError(f"cannot tell the RDF format of {source} from its extension; use .nq or .trig")
    try:
        quads = list(ox.parse(path=str(p), format=fmt))
    except (SyntaxError, OSError) as exc:
        raise PublishError(f"cannot parse {source}: {str(exc).splitlines()[0][:200]}") from None
    by_graph: dict[object, list[object]] = {}
    for q in quads:
        by_graph.setdefault(q.graph_name, []).append(ox.Triple(q.subject, q.predicate, q.object))
    for g in sorted(by_graph, key=lambda g: "" if isinstance(g, ox.DefaultGraph) else str(g)):
        triples = by_graph[g]
        body = ox.serialize(triples, format=ox.RdfFormat.N_TRIPLES)
        yield (None if isinstance(g, ox.DefaultGraph) else g.value), body, len(triples)


def _auth_header(auth: str | None) -> dict[str, str]:
    if not auth:
        return {}
    if ":" not in auth:
        raise PublishError("--auth takes USER:PASSWORD")
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def _graph_url(endpoint: str, iri: str | None) -> str:
    sep = "&" if urllib.parse.urlsplit(endpoint).query else "?"
    if iri is None:
        return f"{endpoint}{sep}default"
    return f"{endpoint}{sep}graph={urllib.parse.quote(iri, safe='')}"


def put_graph(
    endpoint: str, iri: str | None, body: bytes, *, headers: dict[str, str], timeout: float = 60.0
) -> None:
    """Replace one graph on the endpoint (HTTP PUT, N-Triples body).

    Raises:
        urllib.error.URLError: the request failed (HTTPError for a non-2xx answer).
    """
    req = urllib.request.Request(
        _graph_url(endpoint, iri),
        data=body,
        method="PUT",
        headers={"Content-Type": "application/n-triples", **headers},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the user's endpoint
        resp.read()


def _send(
    endpoint: str,
    iri: str | None,
    body: bytes,
    headers: dict[str, str],
    retries: int,
    backoff_s: float,
    report: PublishReport,
) -> str | None:
    """PUT one graph, retrying connection failures, timeouts and 5xx; the last error or None."""
    wait, error = backoff_s, ""
    for attempt in range(retries + 1):
        try:
            put_graph(endpoint, iri, body, headers=headers)
            return None
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code} {exc.reason}"
            if exc.code in (401, 403):
                raise PublishError(f"{endpoint} refused the credentials ({error}); check --auth") from None
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                return error  # the request itself is wrong: retrying cannot help
        except (urllib.error.URLError, OSError) as exc:
            error = str(getattr(exc, "reason", exc))
        if attempt < retries:
            report.retries += 1
            time.sleep(wait)
            wait *= 2
    return error


def publish(
    source: str | os.PathLike[str],
    endpoint: str,
    *,
    auth: str | None = None,
    base_iri: str | None = None,
    retries: int = RETRIES,
    backoff_s: float = 0.5,
    progress: Callable[[str], None] | None = None,
    graphs: Iterable[tuple[str | None, bytes, int]] | None = None,
) -> PublishReport:
    """Publish every graph of a run folder or RDF file to a Graph Store endpoint.

    Args:
        source: a run folder (exported on the fly) or an RDF file.
        endpoint: the store's Graph Store Protocol URL (``http://host:7878/store``).
        auth: ``USER:PASSWORD`` for HTTP Basic authentication.
        base_iri: base IRI when exporting a run folder.
        retries: attempts per graph after the first failure.
        backoff_s: first wait between attempts (doubles each time).
        progress: called with one line per graph sent.
        graphs: the graphs to send, instead of reading ``source`` (for tests and callers
            that already hold them).

    Returns:
        The report; graphs that failed after every retry are listed in ``failed``.

    Raises:
        PublishError: a bad endpoint URL, credentials syntax or source.
    """
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PublishError(f"endpoint {endpoint!r} is not an http(s) URL, e.g. http://127.0.0.1:7878/store")
    headers = _auth_header(auth)
    report = PublishReport(endpoint)
    for iri, body, count in graphs if graphs is not None else graphs_of(source, base_iri=base_iri):
        name = iri or "(default graph)"
        error = _send(endpoint, iri, body, headers, retries, backoff_s, report)
        if error is None:
            report.sent.append((name, count))
            if progress:
                progress(f"sent {name} ({count} triples)")
        else:
            report.failed.append((name, error))
    return report
