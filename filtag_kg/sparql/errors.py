"""Errors of the query library, the store and the ``query`` / ``load`` commands.

All derive from :class:`~filtag_kg.errors.FiltagError`, so the CLI prints each
as one line (``filtag-kg: error: ...``) that names the bad input and says what
would be valid, and exits with code 2.
"""

from __future__ import annotations

from ..errors import DataError, FiltagError

__all__ = [
    "ConceptError",
    "LoadError",
    "ParameterError",
    "QueryFileError",
    "QuerySyntaxError",
    "ResultFormatError",
    "SparqlError",
    "StoreError",
    "UnknownQueryError",
]


class SparqlError(FiltagError):
    """Base class of the errors of :mod:`filtag_kg.sparql`."""


class UnknownQueryError(SparqlError, LookupError):
    """A query name is not in the library (the message lists the names that are)."""


class QueryFileError(SparqlError):
    """A query file cannot be read, or its header declares parameters badly."""


class QuerySyntaxError(SparqlError, ValueError):
    """A query does not parse; the message has the parser's message and position."""


class ParameterError(SparqlError, ValueError):
    """A ``--param`` is malformed, unknown, missing or has a value of the wrong type."""


class ConceptError(ParameterError):
    """A concept parameter names no synset, or a lemma with several senses (listed)."""


class StoreError(SparqlError, DataError):
    """A store folder is missing, is not an Oxigraph store, or is in use."""


class LoadError(SparqlError, DataError):
    """An RDF file to load is missing, of an unknown format, or does not parse."""


class ResultFormatError(SparqlError, ValueError):
    """An output format name is unknown (the message lists the valid ones)."""
