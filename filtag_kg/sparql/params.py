"""Query parameters: ``NAME=VALUE`` text to typed RDF terms, and concept look-up.

A parameter value never becomes query text. It is turned into one RDF term of
the type the query declares (:data:`~.library.PARAM_TYPES`) and handed to the
engine as a binding of the variable ``?NAME``, so ``dog" } ; DROP ALL #`` is
just a string that matches nothing.

Concepts are bound as their wnid string (``fk:wnid "n02084071"``) rather than
as an IRI, so the library's queries work whatever base IRI the export used.
A concept value may be a wnid, an offset id (``02084071-n``), a synset name
(``dog.n.01``) or a lemma (``dog``; an ambiguous lemma is an error listing its
senses). Only synset names and lemmas need WordNet, loaded on first use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from .errors import ConceptError, ParameterError
from .library import QueryInfo
from .results import XSD, Term

if TYPE_CHECKING:
    from ..wordnet import WordNet

__all__ = ["METHODS", "bind_params", "parse_params", "resolve_concept"]

_FK = "https://w3id.org/filtag-kg/ontology#"
#: Selection method names and the ``fk:`` individuals they are bound as.
METHODS: dict[str, str] = {
    "top-k": _FK + "TopK",
    "top-percent": _FK + "TopPercent",
    "above-average": _FK + "AboveAverage",
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WNID = re.compile(r"n\d{8}")
_OFFSET_ID = re.compile(r"(\d{8})-n")
_SYNSET_NAME = re.compile(r".+\.[a-z]\.\d+")
_INTEGER = re.compile(r"[+-]?\d+")
_BAD_IRI = re.compile(r"[\x00-\x20<>\"{}|\\^`]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def parse_params(items: Iterable[str]) -> dict[str, str]:
    """``["concept=dog.n.01", "layer=features.28"]`` to ``{"concept": "dog.n.01", ...}``.

    The value is everything after the first ``=`` (it may be empty or contain ``=``).

    Raises:
        ParameterError: an item has no ``=``, a name that is not a SPARQL
            variable name, or repeats a name.
    """
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise ParameterError(
                f"bad --param {item!r}: expected NAME=VALUE with NAME a query variable "
                f"(letters, digits, _), e.g. --param concept=dog.n.01"
            )
        if name in out:
            raise ParameterError(f"--param {name} is given twice ({out[name]!r} and {value!r}); give it once")
        out[name] = value
    return out


def resolve_concept(value: str, *, wordnet: WordNet | None = None, name: str = "concept") -> str:
    """The wnid a concept parameter stands for.

    Args:
        value: a wnid (``n02084071``), offset id (``02084071-n``), synset name
            (``dog.n.01``) or lemma (``dog``, ``conic section``).
        wordnet: the WordNet 3.0 source for names and lemmas (default
            :func:`~filtag_kg.wordnet.load_wordnet`, loaded only when needed).
        name: the parameter's name, for messages.

    Raises:
        ConceptError: no synset has that name or lemma, or the lemma has
            several noun senses (the message lists them).

    Example:
        >>> resolve_concept("n02084071")
        'n02084071'
        >>> from filtag_kg.wordnet import load_wordnet
        >>> resolve_concept("conic section", wordnet=load_wordnet(source="slice"))
        'n13872975'
    """
    from ..errors import UnknownSynsetError

    v = str(value).strip()
    if _WNID.fullmatch(v):
        return v
    m = _OFFSET_ID.fullmatch(v)
    if m:
        return "n" + m.group(1)
    if not v:
        raise ConceptError(
            f"--param {name} is empty; give a wnid (n02084071), synset name (dog.n.01) or lemma"
        )
    wn = _wordnet(wordnet)
    if _SYNSET_NAME.fullmatch(v):
        try:
            return wn.synset(v).wnid
        except UnknownSynsetError as exc:
            raise ConceptError(f"--param {name}: {exc}") from None
    from ..wordnet.source import normalize_lemma

    senses = wn.lemma_senses(v)
    found = [wn.find(s) for s in senses.names]
    found = [s for s in found if s is not None]
    if senses.total == 1 and len(found) == 1:
        return found[0].wnid
    if not found:
        hint = (
            "" if wn.complete else " (the bundled WordNet slice holds only the ImageNet and demo hierarchies)"
        )
        raise ConceptError(
            f"--param {name}={v!r}: no WordNet noun synset has the lemma {normalize_lemma(v)!r}{hint}; "
            f"give a wnid (n02084071) or synset name (dog.n.01); `filtag-kg wordnet show NAME` looks one up"
        )
    listed = "; ".join(f"{s.name} ({s.wnid}: {_short(s.definition)})" for s in found)
    missing = senses.total - len(found)
    more = f"; {missing} more not in this WordNet source" if missing > 0 else ""
    raise ConceptError(
        f"--param {name}={v!r} is ambiguous: the lemma has {senses.total} noun senses: {listed}{more}; "
        f"give one as a synset name, e.g. {name}={found[0].name}"
    )


def _short(text: str, n: int = 48) -> str:
    t = " ".join(str(text).split())
    return t if len(t) <= n else t[: n - 1] + "…"


def _wordnet(wordnet: WordNet | None) -> WordNet:
    if wordnet is not None:
        return wordnet
    from ..wordnet import load_wordnet

    return load_wordnet()


def _canonical_decimal(text: str) -> str | None:
    try:
        d = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        return None
    if not d.is_finite():
        return None
    out = format(d, "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return "0" if out in ("-0", "") else out


def to_term(value: Any, typ: str, *, name: str, wordnet: WordNet | None = None) -> Term:
    """One parameter value as the RDF term of its declared type.

    A :class:`~.results.Term` is bound as it is.

    Raises:
        ParameterError: the value does not fit the type.
        ConceptError: a concept value names no synset, or is ambiguous.
    """
    if isinstance(value, Term):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ParameterError(f"--param {name}: {value!r} is not a {typ} value")
    text = str(value)
    if typ == "string":
        return Term.literal(text)
    if typ == "concept":
        return Term.literal(resolve_concept(text, wordnet=wordnet, name=name))
    if typ == "integer":
        if not _INTEGER.fullmatch(text.strip()):
            raise ParameterError(f"--param {name}={text!r} is not an integer (e.g. {name}=17)")
        return Term.literal(str(int(text)), XSD + "integer")
    if typ == "decimal":
        canon = _canonical_decimal(text)
        if canon is None:
            raise ParameterError(f"--param {name}={text!r} is not a decimal number (e.g. {name}=2.5)")
        return Term.literal(canon, XSD + "decimal")
    if typ == "method":
        iri = METHODS.get(text.strip().lower())
        if iri is None:
            raise ParameterError(
                f"--param {name}={text!r} is not a selection method; use one of {', '.join(METHODS)}"
            )
        return Term.iri(iri)
    if typ == "iri":
        t = text.strip()
        if t.startswith("<") and t.endswith(">"):
            t = t[1:-1]
        if not _SCHEME.match(t) or _BAD_IRI.search(t):
            raise ParameterError(
                f"--param {name}={text!r} is not an absolute IRI (e.g. https://example.org/kg/x)"
            )
        return Term.iri(t)
    raise ParameterError(f"--param {name}: unknown parameter type {typ!r}")


def bind_params(
    info: QueryInfo, params: Mapping[str, Any], *, wordnet: WordNet | None = None
) -> dict[str, Term]:
    """Check the parameters against what the query declares and type them.

    A query whose header declares parameters accepts exactly those (typed as
    declared) and needs the required ones; a query that declares none
    accepts any variable it mentions, as a string (or a :class:`Term` given
    as it is).

    Raises:
        ParameterError: an unknown parameter (the declared ones are listed), a
            missing required one, or a value of the wrong type.
        ConceptError: a concept value is unknown or ambiguous.
    """
    out: dict[str, Term] = {}
    if info.params:
        for name, value in params.items():
            p = info.param(name)
            if p is None:
                raise ParameterError(
                    f"query {info.name!r} has no parameter {name!r}; its parameters are "
                    f"{', '.join(q.name for q in info.params)}"
                )
            out[name] = to_term(value, p.type, name=name, wordnet=wordnet)
        missing = [p for p in info.params if p.required and p.name not in params]
        if missing:
            raise ParameterError(
                f"query {info.name!r} needs "
                + ", ".join(f"--param {p.name}=... ({p.description}, e.g. {p.example})" for p in missing)
            )
        return out
    variables = info.variables()
    for name, value in params.items():
        if name not in variables:
            listed = ", ".join(sorted(variables)) or "none"
            raise ParameterError(
                f"query {info.name!r} has no variable ?{name} to bind; its variables are {listed}"
            )
        out[name] = to_term(value, "string", name=name, wordnet=wordnet)
    return out
