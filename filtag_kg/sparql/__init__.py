"""SPARQL over the knowledge graph: a library of queries, an embedded store, results.

The library (``queries/*.rq``) answers the usual questions without writing
SPARQL, and each file is plain SPARQL 1.1 with a header saying what it
answers, its parameters and an example call, to learn from. Parameters are
bound by the engine as typed RDF terms, never pasted into the text.

Entry points (the ``filtag-kg load / query / queries`` commands call these):

* :func:`load` loads exports into an on-disk Oxigraph store;
* :func:`open_source` opens a store read-only, or RDF files in memory;
* :func:`query` runs a library query (by name) or a ``.rq`` file, returning a :class:`Result`;
* :func:`format_result` writes a result as a table, CSV, TSV or SPARQL JSON;
* :func:`list_queries` / :func:`format_query_list` describe the library;
* :func:`rdflib_dataset` gives rdflib users the same data;
* :func:`demo_answers` runs a few queries on the demo's graph.

Example:
    >>> from filtag_kg import sparql
    >>> stats = sparql.load(["runs/vgg16/kg.nq"], "kg-store")  # doctest: +SKIP
    >>> r = sparql.query("kg-store", "filters-for-concept", concept="dog.n.01")  # doctest: +SKIP
    >>> print(sparql.format_result(r, "table"))  # doctest: +SKIP

pyoxigraph and rdflib are imported only when a query runs or a store opens,
so ``filtag-kg query`` starts fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .errors import (
    ConceptError,
    LoadError,
    ParameterError,
    QueryFileError,
    QuerySyntaxError,
    ResultFormatError,
    SparqlError,
    StoreError,
    UnknownQueryError,
)
from .library import PARAM_TYPES, Param, QueryInfo, find_query, format_query_list, list_queries, read_query
from .params import METHODS, bind_params, parse_params, resolve_concept
from .results import FORMATS, Result, Term, format_result
from .store import RDF_EXTENSIONS, FileStats, LoadStats, Source, as_source, load, open_source, rdflib_dataset

if TYPE_CHECKING:
    from ..wordnet import WordNet

__all__ = [
    "FORMATS",
    "METHODS",
    "PARAM_TYPES",
    "RDF_EXTENSIONS",
    "ConceptError",
    "FileStats",
    "LoadError",
    "LoadStats",
    "Param",
    "ParameterError",
    "QueryFileError",
    "QueryInfo",
    "QuerySyntaxError",
    "Result",
    "ResultFormatError",
    "Source",
    "SparqlError",
    "StoreError",
    "Term",
    "UnknownQueryError",
    "as_source",
    "bind_params",
    "demo_answers",
    "find_query",
    "format_query_list",
    "format_result",
    "list_queries",
    "load",
    "open_source",
    "parse_params",
    "query",
    "rdflib_dataset",
    "read_query",
    "resolve_concept",
]


def query(
    source: Any,
    name_or_file: str | os.PathLike[str] | QueryInfo,
    /,
    *,
    wordnet: WordNet | None = None,
    **params: Any,
) -> Result:
    """Run a library query or a ``.rq`` file, with its parameters bound.

    Args:
        source: what to query: a :class:`Source` (:func:`open_source`), a
            ``pyoxigraph.Store``, an rdflib ``Graph``/``Dataset``, a store
            folder, or an RDF file.
        name_or_file: a library name (``filters-for-concept``), a ``.rq``
            file, or a :class:`QueryInfo`.
        wordnet: WordNet 3.0 source for concept parameters given as synset
            names or lemmas (default: :func:`~filtag_kg.wordnet.load_wordnet`).
        **params: parameter values by name (strings as on the command line,
            ints, or :class:`Term` objects), typed as the query declares.

    Returns:
        The answer: ``columns`` and ``rows`` of :class:`Term` values
        (``.values()`` / ``.dicts()`` give Python values).

    Raises:
        UnknownQueryError: no library query has that name.
        QueryFileError: the file cannot be read or declares parameters badly.
        QuerySyntaxError: the query does not parse (message and position).
        ParameterError: an unknown, missing or ill-typed parameter.
        ConceptError: a concept names no synset, or is an ambiguous lemma.
        StoreError, LoadError: the source cannot be opened.

    Example:
        >>> r = query("kg-store", "filters-for-concept", concept="dog.n.01")  # doctest: +SKIP
        >>> r.columns[:4]  # doctest: +SKIP
        ('concept', 'model', 'layer', 'filter')
    """
    info = name_or_file if isinstance(name_or_file, QueryInfo) else find_query(name_or_file)
    bindings = bind_params(info, params, wordnet=wordnet)
    from .store import run_query

    return run_query(as_source(source), info, bindings)


def demo_answers(run_dir: str | os.PathLike[str], *, wordnet: WordNet | None = None) -> str:
    """A few library queries answered on the demo's knowledge graph, as readable lines.

    See :func:`filtag_kg.sparql.demo.demo_answers`.
    """
    from .demo import demo_answers as answers

    return answers(run_dir, wordnet=wordnet)
