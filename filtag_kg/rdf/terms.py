"""RDF terms as N-Triples text, and their conversion to rdflib terms.

Graph content is produced once, as triples of terms already written in
N-Triples syntax (``<iri>``, ``"text"@en``, ``"0.5"^^<…#double>``). The
streaming writer joins them into lines as they are; the rdflib builders
convert them with :func:`to_rdflib`. So both routes emit the same graph, and
the fast route pays for no object per term.

Literal forms are chosen so that rdflib and Oxigraph read them back
unchanged: doubles as Python's shortest round-trip ``repr`` (always with a
``.`` or exponent), integers in decimal, decimals without exponent, date-times
in ``isoformat()``. Strings are escaped as N-Triples requires.
Other control characters and the Unicode line separators are written as
``\\uXXXX`` so that no line-based reader can choke on them. NaN and
infinities have no place in the data: such values are left out.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from .vocab import XSD

__all__ = [
    "boolean",
    "date_time",
    "decimal",
    "double",
    "integer",
    "iri",
    "lang_string",
    "string",
    "to_rdflib",
    "unescape",
]

_XSD = str(XSD)
DOUBLE_TYPE = f"<{_XSD}double>"
INTEGER_TYPE = f"<{_XSD}integer>"
DECIMAL_TYPE = f"<{_XSD}decimal>"
BOOLEAN_TYPE = f"<{_XSD}boolean>"
DATETIME_TYPE = f"<{_XSD}dateTime>"

# characters escaped in N-Triples string literals
# (C0/C1 controls and the Unicode line separators too, which some readers take for line ends)
_ESCAPE = re.compile(r'[\\"\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]')
_SHORT = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    short = _SHORT.get(c)
    if short is not None:
        return short
    if "\ud800" <= c <= "\udfff":
        return "\\uFFFD"  # a lone surrogate (undecodable text) cannot be written in any RDF syntax
    return f"\\u{ord(c):04X}"


def _quote(text: str) -> str:
    return '"' + _ESCAPE.sub(_escape_char, text) + '"'


def iri(value: str) -> str:
    """``<value>``: an IRI minted by :mod:`.mint` or a vocabulary term (never user text)."""
    return f"<{value}>"


def string(text: str) -> str:
    """A plain (``xsd:string``) literal."""
    return _quote(str(text))


def lang_string(text: str, lang: str = "en") -> str:
    """A language-tagged literal."""
    return f"{_quote(str(text))}@{lang}"


def double(value: Any) -> str | None:
    """An ``xsd:double`` literal, or ``None`` for NaN, infinity or a non-number."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(x) or math.isinf(x):
        return None
    return f'"{x!r}"^^{DOUBLE_TYPE}'


def integer(value: Any) -> str:
    """An ``xsd:integer`` literal."""
    return f'"{int(value)}"^^{INTEGER_TYPE}'


def decimal(value: Any) -> str | None:
    """An ``xsd:decimal`` literal (plain notation, no exponent), or ``None`` if not a finite number."""
    try:
        d = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    if not d.is_finite():
        return None
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return f'"{text}"^^{DECIMAL_TYPE}'


def boolean(value: bool) -> str:
    """An ``xsd:boolean`` literal."""
    return f'"{"true" if value else "false"}"^^{BOOLEAN_TYPE}'


def date_time(text: Any) -> str | None:
    """An ``xsd:dateTime`` literal from an ISO 8601 text, or ``None`` if it is not one."""
    if not isinstance(text, str) or not text:
        return None
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    try:
        value = _dt.datetime.fromisoformat(t)
    except ValueError:
        return None
    return f'"{value.isoformat()}"^^{DATETIME_TYPE}'


_UNESCAPE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))", re.DOTALL)
_UNSHORT = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "'": "'"}


def unescape(text: str) -> str:
    """Undo N-Triples string escapes (``\\"``, ``\\n``, ``\\uXXXX`` ...)."""
    if "\\" not in text:
        return text

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return chr(int(m.group(1), 16))
        if m.group(2):
            return chr(int(m.group(2), 16))
        return _UNSHORT.get(m.group(3), m.group(3))

    return _UNESCAPE.sub(sub, text)


def to_rdflib(term: str) -> Any:
    """The rdflib term of an N-Triples term written by this module.

    Literals keep their exact lexical form (``normalize=False``), so the
    rdflib graph holds what the streaming writer writes.
    """
    from rdflib import Literal, URIRef

    if term[0] == "<":
        return URIRef(term[1:-1])
    end = term.rfind('"')
    lexical = unescape(term[1:end])
    rest = term[end + 1 :]
    if not rest:
        return Literal(lexical, normalize=False)
    if rest[0] == "@":
        return Literal(lexical, lang=rest[1:], normalize=False)
    return Literal(lexical, datatype=URIRef(rest[3:-1]), normalize=False)
