"""Where queries run: an on-disk Oxigraph store, RDF files in memory, or an rdflib graph.

* :func:`load` puts exports into an on-disk Oxigraph store (``filtag-kg load``):
  big files with Oxigraph's bulk loader, small ones in one transaction each.
* :func:`open_source` opens a store read-only (so several ``query`` processes
  can share it) or loads files into an in-memory store (``--graph``).
* :func:`run_query` runs a query on any :class:`Source` with its parameters
  bound by the engine (Oxigraph ``substitutions``, rdflib ``initBindings``),
  the default graph being the union of all graphs (on Oxigraph, the union of
  the tag graphs for queries whose header says ``Graphs: tags``).
* :func:`rdflib_dataset` gives rdflib users the same data as an rdflib ``Dataset``.

pyoxigraph and rdflib are imported only inside the functions that need them.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LoadError, ParameterError, QuerySyntaxError, StoreError
from .library import QueryInfo
from .results import Result, Term

__all__ = [
    "RDF_EXTENSIONS",
    "LOAD_MARKER",
    "FileStats",
    "LoadStats",
    "Source",
    "check_complete",
    "load",
    "open_source",
    "rdflib_dataset",
    "run_query",
]

#: File extensions :func:`load` and ``--graph`` read, and their formats.
RDF_EXTENSIONS: dict[str, str] = {
    ".nq": "N-Quads",
    ".trig": "TriG",
    ".nt": "N-Triples",
    ".ttl": "Turtle",
    ".jsonld": "JSON-LD",
    ".rdf": "RDF/XML",
    ".owl": "RDF/XML",
    ".xml": "RDF/XML",
    ".n3": "N3",
}
#: Files at least this big go through Oxigraph's bulk loader (not transactional, much faster).
BULK_BYTES = 32 * 1024 * 1024

_OX_ERROR = re.compile(r"error at (\d+):(\d+)(?:-\d+:\d+)?:\s*(.*)", re.DOTALL)


@dataclass(frozen=True)
class FileStats:
    """One file :func:`load` read: its path, format, size, how and how fast."""

    path: Path
    format: str
    bytes: int
    bulk: bool
    seconds: float


@dataclass(frozen=True)
class LoadStats:
    """What :func:`load` did.

    Attributes:
        store: the store folder.
        files: per file, what was read.
        quads: quads in the store afterwards (all graphs).
        seconds: wall time of the whole load.
    """

    store: Path
    files: tuple[FileStats, ...]
    quads: int
    seconds: float
    #: what was done before loading (e.g. an interrupted load's incomplete store removed)
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """Lines for the CLI."""
        lines = list(self.notes) + [
            f"loaded {f.path} ({f.format}, {f.bytes / 1e6:.1f} MB{', bulk' if f.bulk else ''}) "
            f"in {f.seconds:.1f} s"
            for f in self.files
        ]
        lines.append(f"store {self.store}: {self.quads} quads ({self.seconds:.1f} s)")
        return "\n".join(lines)


class Source:
    """Something queries run on: a pyoxigraph ``Store`` or an rdflib graph.

    Obtain one from :func:`open_source`, or wrap your own object:
    ``Source(store)`` for a ``pyoxigraph.Store``, ``Source(graph)`` for an
    rdflib ``Graph`` or ``Dataset`` (its SPARQL runs in rdflib; a ``Dataset``
    is queried as the union of its graphs).

    Args:
        backend: a ``pyoxigraph.Store`` or an rdflib ``Graph``.
        description: what it is, for messages.
    """

    def __init__(self, backend: Any, *, description: str = "") -> None:
        self.backend = backend
        mod = type(backend).__module__.split(".", 1)[0]
        if mod == "pyoxigraph":
            self.engine = "oxigraph"
        elif mod == "rdflib" or (hasattr(backend, "query") and hasattr(backend, "store")):
            self.engine = "rdflib"
        else:
            raise TypeError(
                f"cannot query a {type(backend).__name__}; give a pyoxigraph Store or an rdflib Graph"
            )
        self.description = description or f"{self.engine} {type(backend).__name__}"
        self._tag_graphs: list[Any] | None | bool = False  # not looked up yet

    def __repr__(self) -> str:
        return f"<Source {self.description}>"

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the reference to the backend (an on-disk store closes when it is collected)."""
        self.backend = None

    def __len__(self) -> int:
        """Quads (Oxigraph) or triples (rdflib) in the source."""
        return len(self.backend)


def _format_of(path: Path) -> Any:
    import pyoxigraph as ox

    ext = path.suffix.lower()
    if ext not in RDF_EXTENSIONS:
        raise LoadError(
            f"cannot tell the RDF format of {str(path)!r} from its extension; use one of "
            f"{', '.join(RDF_EXTENSIONS)} (filtag-kg export writes .trig and .nq)"
        )
    if ext in (".owl", ".xml"):
        return ox.RdfFormat.RDF_XML
    return ox.RdfFormat.from_extension(ext[1:])


def _read_into(store: Any, path: Path, *, bulk: bool | None) -> FileStats:
    """Parse one file into a store; ``bulk=None`` chooses by size."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise LoadError(f"no RDF file {str(path)!r}") from None
    except OSError as exc:
        raise LoadError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise LoadError(f"{str(path)!r} is a folder; give RDF files (e.g. RUN/kg.nq)")
    fmt = _format_of(path)
    use_bulk = size >= BULK_BYTES if bulk is None else bulk
    t0 = time.perf_counter()
    try:
        if use_bulk:
            store.bulk_load(path=str(path), format=fmt)
        else:
            store.load(path=str(path), format=fmt)
    except SyntaxError as exc:
        msg = " ".join(str(exc).split())
        raise LoadError(f"{path}: not valid {RDF_EXTENSIONS[path.suffix.lower()]}: {msg}") from None
    except (OSError, ValueError) as exc:
        raise LoadError(f"cannot load {path}: {' '.join(str(exc).split())}") from None
    return FileStats(path, RDF_EXTENSIONS[path.suffix.lower()], size, use_bulk, time.perf_counter() - t0)


def _is_store(path: Path) -> bool:
    return (path / "CURRENT").is_file()


#: written into a store folder before :func:`load` changes it, removed once the load is
#: complete: a store holding it was cut off half way (a kill, a crash, a full disk)
LOAD_MARKER = "filtag-kg-load-in-progress.json"


def _marker(path: Path) -> dict[str, Any] | None:
    import json

    p = path / LOAD_MARKER
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rec = {}
    return rec if isinstance(rec, dict) else {}


def check_complete(store_dir: str | os.PathLike[str]) -> None:
    """Refuse a store whose last :func:`load` was cut off (or is still running).

    Raises:
        StoreError: naming the files of that load and how to rebuild the store.
    """
    path = Path(store_dir)
    rec = _marker(path)
    if rec is None:
        return
    files = ", ".join(rec.get("files") or []) or "its files"
    again = (f"`filtag-kg load {files} --store {path}` again starts it over"
             if rec.get("created") else "remove the folder and load every file again")
    raise StoreError(
        f"store {str(path)!r} is incomplete: loading {files} into it was cut off (or is still "
        f"running, started {rec.get('started_at', '?')}); {again}"
    )


def _clear_interrupted(target: Path) -> list[str]:
    """Deal with the marker of a cut-off load before loading into ``target`` again.

    A store that the cut-off load created holds nothing else: it is removed (with the
    sorted files a killed bulk load leaves) and built anew. A store that existed before
    is refused: which of its quads are whole cannot be told.
    """
    import shutil

    import pyoxigraph as ox

    rec = _marker(target)
    if rec is None:
        return []
    if _is_store(target):
        try:  # a load still running holds the store's lock
            probe = ox.Store(str(target))
            del probe
        except (OSError, RuntimeError) as exc:
            raise StoreError(store_message(target, exc)) from None
    if not rec.get("created"):
        check_complete(target)
    shutil.rmtree(target)
    return [f"removed the incomplete store {target} that an interrupted load of "
            f"{', '.join(rec.get('files') or []) or 'files'} left; loading anew"]


def load(
    files: Sequence[str | os.PathLike[str]],
    store_dir: str | os.PathLike[str],
    *,
    bulk: bool | None = None,
    optimize: bool = False,
) -> LoadStats:
    """Load RDF files (exports) into an on-disk Oxigraph store, creating it if needed.

    Quads already in the store are kept; loading a file twice adds nothing.
    Files of :data:`BULK_BYTES` or more go through Oxigraph's bulk loader (it
    writes sorted files directly and is several times faster, but a file that
    fails to parse half way leaves the quads before the error); smaller files
    load in one transaction each.

    Args:
        files: RDF files; the format comes from the extension (:data:`RDF_EXTENSIONS`).
            Triples of formats without named graphs go to the default graph,
            which queries see together with the named graphs.
        store_dir: the store folder (created if missing).
        bulk: force (``True``) or avoid (``False``) the bulk loader for every file.
        optimize: compact the store afterwards (slower load, a little faster queries).

    Returns:
        What was loaded, and the store's size.

    Raises:
        LoadError: no files, a file is missing, of an unknown format or invalid.
        StoreError: the folder is not an Oxigraph store, or is in use by another process.

    Example:
        >>> load(["runs/vgg16/kg.nq"], "kg-store").quads  # doctest: +SKIP
        23450121
    """
    import pyoxigraph as ox

    if not files:
        raise LoadError(
            "no RDF files to load; give one or more, e.g. filtag-kg load RUN/kg.nq --store kg-store"
        )
    paths = [Path(f) for f in files]
    for p in paths:  # fail before touching the store
        if not p.is_file():
            raise LoadError(f"no RDF file {str(p)!r}" + ("; it is a folder" if p.is_dir() else ""))
        _format_of(p)
    target = Path(store_dir)
    if target.exists() and not target.is_dir():
        raise StoreError(f"store {str(target)!r} is a file; give a folder (new or made by filtag-kg load)")
    notes = _clear_interrupted(target)
    if target.is_dir() and any(target.iterdir()) and not _is_store(target):
        raise StoreError(
            f"{str(target)!r} is not an Oxigraph store (no CURRENT file) and not empty; give a new folder"
        )
    created = not _is_store(target)
    t0 = time.perf_counter()
    try:
        target.mkdir(parents=True, exist_ok=True)
        store = ox.Store(str(target))
    except (OSError, RuntimeError) as exc:
        raise StoreError(store_message(target, exc)) from None
    from .._io import write_json

    write_json(target / LOAD_MARKER, {
        "files": [str(p) for p in paths], "created": created, "pid": os.getpid(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    stats: list[FileStats] = []
    try:
        for p in paths:
            stats.append(_read_into(store, p, bulk=bulk))
        store.flush()
        if optimize:
            store.optimize()
    except LoadError:
        # a transactional load that failed left nothing of its file: the store is whole;
        # a failed bulk load may have left part of its file, so the marker stays
        failed = paths[len(stats)] if len(stats) < len(paths) else None
        if failed is not None and not (bulk if bulk is not None else failed.stat().st_size >= BULK_BYTES):
            (target / LOAD_MARKER).unlink(missing_ok=True)
        raise
    quads = len(store)
    del store
    (target / LOAD_MARKER).unlink(missing_ok=True)
    return LoadStats(target, tuple(stats), quads, time.perf_counter() - t0, tuple(notes))


def store_message(path: Path, exc: Exception) -> str:
    """The one line for a store that does not open: in use, damaged (pyoxigraph's RuntimeError
    "Corruption: ...", e.g. an overwritten CURRENT file) or otherwise unreadable."""
    text = " ".join(str(exc).split())
    if "lock" in text.lower():
        return f"store {str(path)!r} is in use by another process (it is being loaded); wait for it to finish"
    if isinstance(exc, RuntimeError) or "corrupt" in text.lower():
        return (f"store {str(path)!r} is damaged ({text[:160]}); load the export files into a new store "
                f"with `filtag-kg load FILE... --store NEW_DIR`")
    return f"cannot open store {str(path)!r}: {text}"


def open_source(
    store: str | os.PathLike[str] | None = None,
    graphs: Sequence[str | os.PathLike[str]] | None = None,
) -> Source:
    """Open what a query runs on: an on-disk store, or RDF files loaded into memory.

    Args:
        store: a store folder made by :func:`load`; opened read-only, so any
            number of processes can query it at once.
        graphs: RDF files (any format of :data:`RDF_EXTENSIONS`) to load into
            an in-memory Oxigraph store instead.

    Raises:
        StoreError: neither or both given, or the store folder is missing or
            not a store.
        LoadError: a file is missing, of an unknown format or invalid.
    """
    import pyoxigraph as ox

    if store is not None and graphs:
        raise StoreError("give a store (--store DIR) or RDF files (--graph FILE), not both")
    if store is not None:
        path = Path(store)
        check_complete(path)
        if not _is_store(path):
            what = "does not exist" if not path.exists() else "is not an Oxigraph store"
            raise StoreError(
                f"store {str(path)!r} {what}; create it with `filtag-kg load FILE... --store {path}`, "
                f"or query files directly with --graph FILE"
            )
        try:
            backend = ox.Store.read_only(str(path))
        except (OSError, RuntimeError) as exc:
            raise StoreError(store_message(path, exc)) from None
        return Source(backend, description=f"store {path}")
    if not graphs:
        raise StoreError("nothing to query; give a store (--store DIR) or RDF files (--graph FILE)")
    mem = ox.Store()
    for g in graphs:
        _read_into(mem, Path(g), bulk=None)
        _name_default_graph(mem, Path(g))
    return Source(mem, description="files " + ", ".join(str(g) for g in graphs))


def _name_default_graph(store: Any, path: Path) -> None:
    """Move the triples a file put in the default graph into a named graph (the file's URI).

    A format without named graphs (a merged Turtle export, say) fills the default graph,
    which the library's queries never read: they name their graphs (``GRAPH ?g``), so
    that they run on stores whose default graph is not the union of the named graphs.
    """
    import pyoxigraph as ox

    default = list(store.quads_for_pattern(None, None, None, ox.DefaultGraph()))
    if not default:
        return
    name = ox.NamedNode(path.resolve().as_uri())
    store.extend([ox.Quad(q.subject, q.predicate, q.object, name) for q in default])
    store.clear_graph(ox.DefaultGraph())


def as_source(obj: Any) -> Source:
    """A :class:`Source` for a Source, a pyoxigraph Store, an rdflib graph, a store folder or an RDF file."""
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        return open_source(store=p) if p.is_dir() else open_source(graphs=[p])
    return Source(obj)


# -- running queries -----------------------------------------------------------------------


def _syntax_error(info: QueryInfo, exc: Exception) -> QuerySyntaxError:
    where = str(info.path) if info.path else info.name
    text = str(exc)
    m = _OX_ERROR.search(text)
    if m:  # Oxigraph: "error at LINE:COLUMN: message"
        msg = " ".join(m.group(3).split())
        return QuerySyntaxError(
            f"{where}: SPARQL syntax error at line {m.group(1)}, column {m.group(2)}: {msg}"
        )
    line, col = getattr(exc, "lineno", None), getattr(exc, "col", None)
    if line is not None:  # rdflib (pyparsing)
        msg = " ".join(str(getattr(exc, "msg", text)).split())
        return QuerySyntaxError(f"{where}: SPARQL syntax error at line {line}, column {col}: {msg}")
    return QuerySyntaxError(f"{where}: SPARQL syntax error: {' '.join(text.split())}")


def _ox_term(t: Term) -> Any:
    import pyoxigraph as ox

    if t.kind == "iri":
        try:
            return ox.NamedNode(t.value)
        except ValueError as exc:
            raise ParameterError(f"{t.value!r} is not a valid IRI: {exc}") from None
    if t.kind == "literal":
        if t.language:
            return ox.Literal(t.value, language=t.language)
        return ox.Literal(
            t.value, datatype=ox.NamedNode(t.datatype or "http://www.w3.org/2001/XMLSchema#string")
        )
    if t.kind == "bnode":
        return ox.BlankNode(t.value)
    raise ParameterError(f"cannot bind a {t.kind} term")


class _OxConverter:
    """pyoxigraph terms to :class:`Term`, caching repeated values (layer names, settings, IRIs)."""

    def __init__(self) -> None:
        import pyoxigraph as ox

        self._named, self._literal, self._blank = ox.NamedNode, ox.Literal, ox.BlankNode
        self._cache: dict[Any, Term] = {}

    def __call__(self, t: Any) -> Term | None:
        if t is None:
            return None
        got = self._cache.get(t)
        if got is not None:
            return got
        cls = type(t)
        if cls is self._named:
            got = Term("iri", t.value)
        elif cls is self._literal:
            got = Term.literal(t.value, t.datatype.value, t.language)
        elif cls is self._blank:
            got = Term("bnode", t.value)
        else:
            got = Term("triple", str(t))
        if len(self._cache) < 100_000:
            self._cache[t] = got
        return got


def _rdflib_term(t: Term) -> Any:
    from rdflib import BNode, Literal, URIRef

    if t.kind == "iri":
        return URIRef(t.value)
    if t.kind == "bnode":
        return BNode(t.value)
    if t.language:
        return Literal(t.value, lang=t.language)
    if t.datatype in (None, "http://www.w3.org/2001/XMLSchema#string"):
        return Literal(t.value)  # a plain literal: how rdflib's parsers store xsd:string
    return Literal(t.value, datatype=URIRef(t.datatype), normalize=False)


def _from_rdflib(t: Any) -> Term | None:
    from rdflib import BNode, Literal, URIRef

    if t is None:
        return None
    if isinstance(t, URIRef):
        return Term("iri", str(t))
    if isinstance(t, Literal):
        return Term.literal(str(t), None if t.datatype is None else str(t.datatype), t.language)
    if isinstance(t, BNode):
        return Term("bnode", str(t))
    return Term("triple", str(t))


def run_query(source: Source, info: QueryInfo, bindings: Mapping[str, Term]) -> Result:
    """Run a query on a source, the variables of ``bindings`` bound to their terms.

    The default graph is the union of all graphs (Oxigraph's
    ``use_default_graph_as_union``; for rdflib, a ``Dataset`` with
    ``default_union``), for queries of your own written against the default
    graph; the library's queries name their graphs and need neither. A query
    whose header says ``Graphs: tags`` runs on Oxigraph with the union of the
    tag graphs as default graph.

    Raises:
        QuerySyntaxError: the text does not parse (message and position of the parser).
        ParameterError: a bound variable is not in the SELECT clause (Oxigraph
            binds only projected variables).
    """
    if source.backend is None:
        raise StoreError(f"{source.description} is closed")
    if source.engine == "oxigraph":
        return _run_oxigraph(source, info, bindings)
    return _run_rdflib(source.backend, info, bindings)


def tag_graphs(store: Any) -> list[Any] | None:
    """The default graph for ``Graphs: tags`` queries on an Oxigraph store.

    Every tag graph the data declares (``?g a fk:TagGraph``) that exists as a
    named graph, plus the default graph if it holds data (a merged Turtle
    export, say); ``None`` (use the union of all graphs) if there is none.
    Restricting the default graph this way keeps a query that reads tags from
    touching the explanation graphs, which outnumber the tags by orders of
    magnitude.
    """
    import pyoxigraph as ox

    found = [
        s[0]
        for s in store.query(
            "SELECT DISTINCT ?g WHERE { ?g a <https://w3id.org/filtag-kg/ontology#TagGraph> }",
            use_default_graph_as_union=True,
        )
    ]
    graphs: list[Any] = [g for g in found if isinstance(g, ox.NamedNode) and store.contains_named_graph(g)]
    if graphs and next(iter(store.quads_for_pattern(None, None, None, ox.DefaultGraph())), None) is not None:
        graphs.append(ox.DefaultGraph())
    return graphs or None


def _tag_graphs(source: Source) -> list[Any] | None:
    """:func:`tag_graphs` of the source's store, looked up once per source."""
    if source._tag_graphs is False:
        source._tag_graphs = tag_graphs(source.backend)
    return source._tag_graphs  # type: ignore[return-value]


def _run_oxigraph(source: Source, info: QueryInfo, bindings: Mapping[str, Term]) -> Result:
    import pyoxigraph as ox

    store = source.backend
    subs = {ox.Variable(k): _ox_term(v) for k, v in bindings.items()}
    dataset: dict[str, Any] = {"use_default_graph_as_union": True}
    if info.graphs == "tags":
        graphs = _tag_graphs(source)
        if graphs:
            dataset = {"default_graph": graphs}
    try:
        answer = store.query(info.text, substitutions=subs or None, **dataset)
    except SyntaxError as exc:
        raise _syntax_error(info, exc) from None
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        m = re.search(r"variable \?(\w+) in its SELECT projection", text)
        if m:
            raise ParameterError(
                f"{info.path or info.name}: ?{m.group(1)} is not in the SELECT clause, "
                "so it cannot be bound; add it to the SELECT clause"
            ) from None
        raise
    conv = _OxConverter()
    if isinstance(answer, ox.QueryBoolean):
        return Result((), (), bool(answer), info.name)
    if isinstance(answer, ox.QuerySolutions):
        columns = tuple(v.value for v in answer.variables)
        rows = tuple(tuple(conv(v) for v in sol) for sol in answer)
        return Result(columns, rows, None, info.name)
    rows = tuple((conv(t.subject), conv(t.predicate), conv(t.object)) for t in answer)
    return Result(("subject", "predicate", "object"), rows, None, info.name)  # type: ignore[arg-type]


def _run_rdflib(graph: Any, info: QueryInfo, bindings: Mapping[str, Term]) -> Result:
    from rdflib import Dataset

    g = graph
    if isinstance(g, Dataset) and not g.default_union:
        g = Dataset(store=g.store, default_union=True)  # the union of the graphs, like the Oxigraph route
    init = {k: _rdflib_term(v) for k, v in bindings.items()}
    try:
        answer = g.query(info.text, initBindings=init)
        kind = answer.type
        if kind == "ASK":
            return Result((), (), bool(answer.askAnswer), info.name)
        if kind == "SELECT":
            columns = tuple(str(v) for v in answer.vars)
            rows = tuple(tuple(_from_rdflib(row[i]) for i in range(len(columns))) for row in answer)
            return Result(columns, rows, None, info.name)
        rows = tuple((_from_rdflib(s), _from_rdflib(p), _from_rdflib(o)) for s, p, o in answer)
        return Result(("subject", "predicate", "object"), rows, None, info.name)  # type: ignore[arg-type]
    except SyntaxError as exc:  # oxrdflib passes Oxigraph's parser errors through
        raise _syntax_error(info, exc) from None
    except Exception as exc:
        if type(exc).__name__ in ("ParseException", "ParseBaseException", "ParseSyntaxException"):
            raise _syntax_error(info, exc) from None
        raise


def rdflib_dataset(source: Any) -> Any:
    """The data of a source as an rdflib ``Dataset`` (default graph = union of all graphs).

    With the ``oxrdflib`` package installed, the Dataset is backed by the
    Oxigraph store itself (no copy; its SPARQL runs in Oxigraph). Without it,
    the quads are copied into rdflib's in-memory store, which suits small
    graphs only (about 1 kB of memory per triple).

    Args:
        source: a :class:`Source`, a pyoxigraph Store, a store folder or an RDF file.

    Example:
        >>> ds = rdflib_dataset("kg-store")  # doctest: +SKIP
        >>> ds.query("SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }")  # doctest: +SKIP
    """
    from rdflib import Dataset

    src = as_source(source)
    if src.engine == "rdflib":
        return src.backend
    try:
        from oxrdflib import OxigraphStore  # type: ignore[import-not-found]
    except ImportError:
        OxigraphStore = None  # noqa: N806
    if OxigraphStore is not None:
        return Dataset(store=OxigraphStore(store=src.backend), default_union=True)
    return _copy_to_rdflib(src.backend, Dataset(default_union=True))


def _copy_to_rdflib(store: Any, ds: Any) -> Any:
    import pyoxigraph as ox
    from rdflib import BNode, Literal, URIRef

    def conv(t: Any) -> Any:
        if isinstance(t, ox.NamedNode):
            return URIRef(t.value)
        if isinstance(t, ox.BlankNode):
            return BNode(t.value)
        if t.language:
            return Literal(t.value, lang=t.language)
        if t.datatype.value == "http://www.w3.org/2001/XMLSchema#string":
            return Literal(t.value)
        return Literal(t.value, datatype=URIRef(t.datatype.value), normalize=False)

    graphs: dict[str, Any] = {}
    for q in store:
        if isinstance(q.graph_name, ox.DefaultGraph):
            g = ds.default_graph if hasattr(ds, "default_graph") else ds.default_context
        else:
            key = q.graph_name.value
            g = graphs.get(key)
            if g is None:
                g = graphs[key] = ds.graph(
                    URIRef(key) if isinstance(q.graph_name, ox.NamedNode) else BNode(key)
                )
        g.add((conv(q.subject), conv(q.predicate), conv(q.object)))
    return ds
