"""The query library: ``queries/*.rq`` files and the parameters their headers declare.

Every library file starts with a comment header that a person can read and this
module can parse::

    # filters-for-concept: the filters that represent a concept, counting its hyponyms.
    #
    # (what it answers, in prose)
    #
    # Graphs: tags
    #
    # Parameters (bound as RDF terms, never pasted into this text):
    #   concept  concept  required  the concept (a wnid, synset name or lemma)  e.g. dog.n.01
    #   layer    string   optional  the layer's module path                     e.g. features.28
    #
    # Example:
    #   filtag-kg query filters-for-concept --store kg-store --param concept=dog.n.01

``Graphs:`` says which graphs of an export the query reads: ``tags`` (only the
tag graphs: model, filters, tags, concepts) or ``all`` (the default: also the
classification and explanation graphs). The library's queries name their
graphs (``GRAPH ?g { ... }``), so they answer alike whether the default graph
is empty (the SPARQL default, Jena TDB) or the union of the named graphs; the
library still runs a ``tags`` query with the tag graphs as default graph,
which matters only for a query of your own written against the default graph.

A parameter line is ``NAME TYPE required|optional DESCRIPTION e.g. EXAMPLE``;
NAME is a variable of the query's SELECT clause, which is bound to the value
(a SPARQL 1.1 store binds it with ``substitutions`` / ``initBindings``, so the
text itself never changes). TYPE is one of :data:`PARAM_TYPES`.

Your own ``.rq`` files may declare parameters the same way; a file without
declarations accepts any of its variables as a string parameter.

Nothing here imports pyoxigraph or rdflib.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import QueryFileError, UnknownQueryError

__all__ = [
    "GRAPHS",
    "PARAM_TYPES",
    "Param",
    "QueryInfo",
    "find_query",
    "format_query_list",
    "library_dirs",
    "list_queries",
    "read_query",
]

#: Parameter types: how a ``--param`` value becomes an RDF term.
PARAM_TYPES: dict[str, str] = {
    "concept": "a wnid (n02084071), synset name (dog.n.01) or lemma (dog); bound as the synset's wnid string",
    "string": "a plain string literal (xsd:string)",
    "integer": "an xsd:integer literal",
    "decimal": "an xsd:decimal literal",
    "method": "a selection method (top-k, top-percent, above-average); bound as its fk: IRI",
    "iri": "an absolute IRI",
}

#: Values of a header's ``Graphs:`` line.
GRAPHS = ("all", "tags")

#: Environment variable naming an extra folder of ``.rq`` files (searched first).
QUERIES_ENV = "FILTAG_KG_QUERIES"

_PKG = Path(__file__).resolve().parent.parent  # filtag_kg/
_NAME_LINE = re.compile(r"#\s*([A-Za-z0-9_.-]+)\s*:\s*(.+?)\s*$")
_PARAM_LINE = re.compile(
    r"#\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s+(?P<type>[a-z]+)\s+(?P<req>required|optional)\s+"
    r"(?P<desc>.+?)\s+e\.g\.\s+(?P<example>.+?)\s*$"
)
_VARIABLE = re.compile(r"[?$]([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Param:
    """A parameter a query declares in its header.

    Attributes:
        name: the SPARQL variable it binds (without ``?``), also the ``--param`` name.
        type: one of :data:`PARAM_TYPES`.
        required: whether the query needs it.
        description: what it is.
        example: an example value.
    """

    name: str
    type: str
    required: bool
    description: str
    example: str


@dataclass(frozen=True)
class QueryInfo:
    """A query: its text and what its header says.

    Attributes:
        name: the library name (the file name without ``.rq``).
        path: the file.
        purpose: the one-line purpose from the header's first line.
        description: the header's prose.
        params: the declared parameters, in header order.
        example: the example call(s) of the header.
        graphs: ``"tags"`` if it reads only the tag graphs, else ``"all"``.
        text: the whole file, exactly as it is run.
    """

    name: str
    path: Path
    purpose: str
    description: str
    params: tuple[Param, ...]
    example: str
    text: str
    graphs: str = "all"

    def param(self, name: str) -> Param | None:
        """The declared parameter ``name``, or ``None``."""
        return next((p for p in self.params if p.name == name), None)

    def variables(self) -> set[str]:
        """Names of every variable the text mentions (a rough scan, comments excluded)."""
        return set(_VARIABLE.findall(_strip_comments(self.text)))


def library_dirs() -> list[Path]:
    """Folders searched for library queries, in order.

    ``$FILTAG_KG_QUERIES`` (if set), ``filtag_kg/queries`` (when the package
    ships them) and ``queries/`` of the source tree.
    """
    dirs = []
    env = os.environ.get(QUERIES_ENV)
    if env:
        dirs.append(Path(env))
    dirs += [_PKG / "queries", _PKG.parent / "queries"]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def _library_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for d in library_dirs():
        for p in sorted(d.glob("*.rq")):
            files.setdefault(p.stem, p)
    return files


def list_queries() -> list[QueryInfo]:
    """Every query of the library, sorted by name.

    Raises:
        QueryFileError: a library file is unreadable or its header is malformed.

    Example:
        >>> [q.name for q in list_queries()][:2]  # doctest: +SKIP
        ['concepts-of-filter', 'explain-image']
    """
    return [read_query(p, name=n) for n, p in sorted(_library_files().items())]


def find_query(name_or_file: str | os.PathLike[str]) -> QueryInfo:
    """A library query by name, or a ``.rq`` file by path.

    A value that ends in ``.rq``, contains a path separator or names an
    existing file is read as a file; anything else is looked up by name.

    Raises:
        UnknownQueryError: no library query has that name (the message lists them).
        QueryFileError: the file cannot be read or its header is malformed.
    """
    text = os.fspath(name_or_file)
    if text.endswith(".rq") or os.sep in text or "/" in text or Path(text).is_file():
        return read_query(Path(text))
    files = _library_files()
    path = files.get(text)
    if path is None:
        if not files:
            raise UnknownQueryError(
                f"unknown query {text!r}: no query library found "
                f"(looked in {', '.join(map(str, _candidates()))}); "
                f"give a .rq file instead, or set ${QUERIES_ENV}"
            )
        raise UnknownQueryError(
            f"unknown query {text!r}; the library has {', '.join(sorted(files))} "
            f"(`filtag-kg queries` describes them), or give a .rq file"
        )
    return read_query(path, name=text)


def _candidates() -> list[Path]:
    env = os.environ.get(QUERIES_ENV)
    return ([Path(env)] if env else []) + [_PKG / "queries", _PKG.parent / "queries"]


def read_query(path: str | os.PathLike[str], *, name: str | None = None) -> QueryInfo:
    """Read a ``.rq`` file and parse its header.

    Args:
        path: the file.
        name: its library name (default: the file name without ``.rq``).

    Raises:
        QueryFileError: the file cannot be read, or a parameter line has an
            unknown type or repeats a name.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QueryFileError(
            f"no query file {str(p)!r}; give a library name (`filtag-kg queries`) or an existing .rq file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QueryFileError(f"cannot read query file {str(p)!r}: {exc}") from None
    return _parse(text, path=p, name=name or p.stem)


def _header(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#"):
            lines.append(s)
        elif s:
            break
        else:
            lines.append("#")
    return lines


def _parse(text: str, *, path: Path, name: str) -> QueryInfo:
    header = _header(text)
    purpose = ""
    prose: list[str] = []
    params: list[Param] = []
    example: list[str] = []
    graphs = "all"
    section = "prose"
    for i, line in enumerate(header):
        body = line[1:].strip()
        if i == 0:
            m = _NAME_LINE.fullmatch(line)
            purpose = m.group(2) if m else body
            continue
        if body.lower().startswith("parameters"):
            section = "params"
            continue
        if body.lower().startswith("example"):
            section = "example"
            continue
        if section == "prose" and body.lower().startswith("graphs:"):
            graphs = body.split(":", 1)[1].strip().split()[0].lower() if body.split(":", 1)[1].strip() else ""
            if graphs not in GRAPHS:
                raise QueryFileError(f"{path}: bad line {body!r}; write 'Graphs: tags' or 'Graphs: all'")
        elif section == "prose":
            prose.append(body)
        elif section == "params" and body:
            m = _PARAM_LINE.fullmatch(line)
            if m is None:
                raise QueryFileError(
                    f"{path}: bad parameter line {body!r}; write "
                    "'NAME TYPE required|optional DESCRIPTION e.g. EXAMPLE' with TYPE one of "
                    + ", ".join(PARAM_TYPES)
                )
            if m["type"] not in PARAM_TYPES:
                raise QueryFileError(
                    f"{path}: parameter {m['name']!r} has unknown type {m['type']!r}; "
                    f"use one of {', '.join(PARAM_TYPES)}"
                )
            if any(q.name == m["name"] for q in params):
                raise QueryFileError(f"{path}: parameter {m['name']!r} is declared twice")
            params.append(Param(m["name"], m["type"], m["req"] == "required", m["desc"], m["example"]))
        elif section == "example" and body:
            example.append(body)
    description = " ".join(" ".join(prose).split())
    return QueryInfo(
        name=name,
        path=path,
        purpose=purpose,
        description=description,
        params=tuple(params),
        example="\n".join(example),
        text=text,
        graphs=graphs,
    )


def _strip_comments(text: str) -> str:
    # drop '#' comments outside IRIs and strings (enough for variable scanning)
    out = []
    for line in text.splitlines():
        quote = None
        in_iri = False
        cut = len(line)
        for i, ch in enumerate(line):
            if quote:
                if ch == quote and line[i - 1] != "\\":
                    quote = None
            elif in_iri:
                in_iri = ch != ">"
            elif ch in "\"'":
                quote = ch
            elif ch == "<" and i + 1 < len(line) and not line[i + 1].isspace() and line[i + 1] != "=":
                in_iri = True
            elif ch == "#":
                cut = i
                break
        out.append(line[:cut])
    return "\n".join(out)


def format_query_list(queries: list[QueryInfo] | None = None) -> str:
    """The library as text for ``filtag-kg queries``: name, purpose, parameters, example."""
    qs = list_queries() if queries is None else queries
    if not qs:
        return "no query library found (looked in " + ", ".join(map(str, _candidates())) + ")"
    blocks = []
    for q in qs:
        lines = [f"{q.name}: {q.purpose}"]
        for p in q.params:
            need = "required" if p.required else "optional"
            lines.append(f"    {p.name:<9} {p.type:<8} {need:<9} {p.description} (e.g. {p.example})")
        if q.example:
            lines += [f"  {e}" for e in q.example.splitlines()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
