"""Query answers independent of the engine, and their text formats.

A :class:`Result` holds :class:`Term` values, whichever engine answered
(Oxigraph or rdflib), so answers can be compared across engines and written
in one way:

* ``table``: aligned columns for people (IRIs of known vocabularies as
  ``fk:TopK``, numbers shortened, the middle of long cells cut);
* ``csv``: the SPARQL 1.1 Query Results CSV format (plain values, CRLF lines);
* ``tsv``: the SPARQL 1.1 Query Results TSV format (terms in N-Triples syntax,
  lossless);
* ``plain-tsv``: plain values like ``csv``, tab-separated with a bare header,
  for ``cut``/``awk`` and spreadsheets (tab, newline and backslash inside a
  value are written ``\t``, ``\n``, ``\\``);
* ``json``: the SPARQL 1.1 Query Results JSON format.

Nothing here imports pyoxigraph or rdflib.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import ResultFormatError

__all__ = ["FORMATS", "PREFIXES", "Result", "Term", "format_result"]

XSD = "http://www.w3.org/2001/XMLSchema#"
XSD_STRING = XSD + "string"
RDF_LANG_STRING = "http://www.w3.org/1999/02/22-rdf-syntax-ns#langString"
_INTEGERS = {
    XSD + t
    for t in (
        "integer",
        "int",
        "long",
        "short",
        "byte",
        "nonNegativeInteger",
        "positiveInteger",
        "nonPositiveInteger",
        "negativeInteger",
        "unsignedInt",
        "unsignedLong",
        "unsignedShort",
        "unsignedByte",
    )
}
_FLOATS = {XSD + "double", XSD + "float"}

#: Output formats of :func:`format_result` (``--format``).
FORMATS: dict[str, str] = {
    "table": "aligned columns for reading",
    "csv": "SPARQL 1.1 Query Results CSV (plain values)",
    "tsv": "SPARQL 1.1 Query Results TSV (terms in N-Triples syntax)",
    "json": "SPARQL 1.1 Query Results JSON",
    "plain-tsv": "plain values like csv, tab-separated (for cut, awk, spreadsheets)",
}

#: Prefixes the table format abbreviates IRIs with.
PREFIXES: dict[str, str] = {
    "fk": "https://w3id.org/filtag-kg/ontology#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "xsd": XSD,
    "owl": "http://www.w3.org/2002/07/owl#",
    "prov": "http://www.w3.org/ns/prov#",
    "mls": "http://www.w3.org/ns/mls#",
    "eo": "https://purl.org/heals/eo#",
}


@dataclass(frozen=True)
class Term:
    """An RDF term of an answer, the same whichever engine produced it.

    Attributes:
        kind: ``"iri"``, ``"literal"``, ``"bnode"`` or ``"triple"`` (RDF-star).
        value: the IRI, the literal's lexical form, the blank node's label, or
            the quoted triple in N-Triples syntax.
        datatype: a literal's datatype IRI (``xsd:string`` for plain literals,
            ``rdf:langString`` for language-tagged ones); ``None`` otherwise.
        language: a literal's language tag, else ``None``.
    """

    kind: str
    value: str
    datatype: str | None = None
    language: str | None = None

    @classmethod
    def iri(cls, value: str) -> Term:
        """An IRI term."""
        return cls("iri", value)

    @classmethod
    def literal(cls, value: str, datatype: str | None = None, language: str | None = None) -> Term:
        """A literal; no datatype means ``xsd:string`` (or ``rdf:langString`` with a language)."""
        if language:
            return cls("literal", value, RDF_LANG_STRING, language.lower())
        return cls("literal", value, datatype or XSD_STRING, None)

    def __str__(self) -> str:
        return self.value

    def to_python(self) -> Any:
        """The value as Python: ``int``, ``float``, ``Decimal`` or ``bool`` for those types, else ``str``."""
        if self.kind != "literal":
            return self.value
        dt = self.datatype
        try:
            if dt in _INTEGERS:
                return int(self.value)
            if dt in _FLOATS:
                return float(self.value.replace("INF", "inf"))
            if dt == XSD + "decimal":
                return Decimal(self.value)
            if dt == XSD + "boolean":
                return self.value.strip() in ("true", "1")
        except (ValueError, InvalidOperation):
            pass
        return self.value

    def n3(self) -> str:
        """The term in N-Triples syntax (``<iri>``, ``"text"@en``, ``"1"^^<…#integer>``, ``_:b0``)."""
        if self.kind == "iri":
            return f"<{self.value}>"
        if self.kind == "bnode":
            return f"_:{self.value}"
        if self.kind == "triple":
            return f"<< {self.value} >>"
        text = '"' + _escape(self.value) + '"'
        if self.language:
            return f"{text}@{self.language}"
        if self.datatype and self.datatype != XSD_STRING:
            return f"{text}^^<{self.datatype}>"
        return text


def _escape(text: str) -> str:
    out = []
    for ch in text:
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


_SHORT = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


@dataclass(frozen=True)
class Result:
    """The answer to a query.

    Attributes:
        columns: the variables of a SELECT, in order (``subject``, ``predicate``,
            ``object`` for CONSTRUCT and DESCRIBE; none for ASK).
        rows: one tuple per solution, ``None`` where a variable is unbound.
        boolean: the answer of an ASK query, else ``None``.
        name: the query's name.

    Example:
        >>> r = Result(("n",), ((Term.literal("3", XSD + "integer"),),))
        >>> r.values(), r.dicts()
        ([(3,)], [{'n': 3}])
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[Term | None, ...], ...]
    boolean: bool | None = None
    name: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[Term | None, ...]]:
        return iter(self.rows)

    def values(self) -> list[tuple[Any, ...]]:
        """The rows as Python values (:meth:`Term.to_python`; ``None`` where unbound)."""
        return [tuple(None if t is None else t.to_python() for t in row) for row in self.rows]

    def dicts(self) -> list[dict[str, Any]]:
        """The rows as ``{column: Python value}`` (unbound columns left out)."""
        return [{c: t.to_python() for c, t in zip(self.columns, row) if t is not None} for row in self.rows]

    def column(self, name: str) -> list[Any]:
        """The Python values of one column.

        Raises:
            KeyError: the result has no such column.
        """
        i = self.columns.index(name) if name in self.columns else -1
        if i < 0:
            raise KeyError(f"no column {name!r}; the columns are {', '.join(self.columns)}")
        return [None if row[i] is None else row[i].to_python() for row in self.rows]


def format_result(result: Result, fmt: str = "table", *, max_width: int = 60) -> str:
    """Write a result as text.

    Args:
        result: the answer.
        fmt: ``table``, ``csv``, ``tsv``, ``plain-tsv`` or ``json`` (see :data:`FORMATS`).
        max_width: longest cell of the table format; longer cells lose their middle to ``…``.

    Returns:
        The text, ending in a newline.

    Raises:
        ResultFormatError: unknown format.
    """
    f = str(fmt).lower()
    if f == "table":
        return _table(result, max_width)
    if f == "csv":
        return _csv(result)
    if f == "tsv":
        return _tsv(result)
    if f == "plain-tsv":
        return _plain_tsv(result)
    if f == "json":
        return _json(result)
    raise ResultFormatError(f"unknown result format {fmt!r}; use one of {', '.join(FORMATS)} (--format)")


def _table_cell(t: Term | None, max_width: int) -> str:
    if t is None:
        return ""
    if t.kind == "iri":
        text = t.value
        for prefix, ns in PREFIXES.items():
            if text.startswith(ns) and len(text) > len(ns):
                text = f"{prefix}:{text[len(ns) :]}"
                break
    elif t.kind == "bnode":
        text = f"_:{t.value}"
    elif t.kind == "literal" and t.datatype in _FLOATS | {XSD + "decimal"}:
        try:
            text = format(float(t.value.replace("INF", "inf")), ".6g")
        except ValueError:
            text = t.value
    else:
        text = t.value
    text = "".join(ch if ch >= " " else " " for ch in text)
    if len(text) > max_width:  # cut the middle: paths and IRIs differ at their ends
        head = max(1, (max_width - 1) // 2)
        text = text[:head] + "…" + text[len(text) - max(1, max_width - 1 - head) :]
    return text


def _table(result: Result, max_width: int) -> str:
    if result.boolean is not None:
        return ("yes" if result.boolean else "no") + "\n"
    header = list(result.columns)
    cells = [[_table_cell(t, max_width) for t in row] for row in result.rows]
    widths = [len(h) for h in header]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    n = len(result.rows)
    lines.append(f"({n} row{'' if n == 1 else 's'})")
    return "\n".join(lines) + "\n"


def _plain(t: Term | None) -> str:
    if t is None:
        return ""
    if t.kind == "bnode":
        return f"_:{t.value}"
    return t.value


def _csv(result: Result) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    if result.boolean is not None:
        w.writerow(["_askResult"])
        w.writerow(["true" if result.boolean else "false"])
        return buf.getvalue()
    w.writerow(result.columns)
    for row in result.rows:
        w.writerow([_plain(t) for t in row])
    return buf.getvalue()


def _tsv(result: Result) -> str:
    if result.boolean is not None:
        return "?_askResult\n" + ("true" if result.boolean else "false") + "\n"
    lines = ["\t".join(f"?{c}" for c in result.columns)]
    lines += ["\t".join("" if t is None else t.n3() for t in row) for row in result.rows]
    return "\n".join(lines) + "\n"


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _plain_tsv(result: Result) -> str:
    if result.boolean is not None:
        return "_askResult\n" + ("true" if result.boolean else "false") + "\n"
    lines = ["\t".join(result.columns)]
    lines += ["\t".join(_plain(t).translate(_TSV_ESCAPES) for t in row) for row in result.rows]
    return "\n".join(lines) + "\n"


def _json_term(t: Term) -> dict[str, str]:
    if t.kind == "iri":
        return {"type": "uri", "value": t.value}
    if t.kind == "bnode":
        return {"type": "bnode", "value": t.value}
    if t.kind == "triple":
        return {"type": "literal", "value": t.value}
    out = {"type": "literal", "value": t.value}
    if t.language:
        out["xml:lang"] = t.language
    elif t.datatype and t.datatype != XSD_STRING:
        out["datatype"] = t.datatype
    return out


def _json(result: Result) -> str:
    if result.boolean is not None:
        doc: dict[str, Any] = {"head": {}, "boolean": result.boolean}
    else:
        doc = {
            "head": {"vars": list(result.columns)},
            "results": {
                "bindings": [
                    {c: _json_term(t) for c, t in zip(result.columns, row) if t is not None}
                    for row in result.rows
                ]
            },
        }
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
