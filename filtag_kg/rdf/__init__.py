"""The knowledge graph: a run's tags and explanations as RDF, linked to WordNet.

One export per run folder: the tag graph (model, layers, filters, tags,
abstract tags, WordNet concepts, provenance) in the named graph
``R/kg/tags``, one named graph per image explanation, and a VoID
description in ``R/kg/void`` (``R`` is the run's IRI). The vocabulary is
``ontology/filtag.ttl`` (:class:`~.vocab.FK`); every export validates against
``ontology/shapes.ttl``.

Entry points:

* :func:`export_run` writes a file in any format (``filtag-kg export``);
* :func:`write_nquads` streams N-Quads for any number of explanations;
* :func:`build_dataset` / :func:`build_tag_graph` give rdflib objects for small data;
* :class:`~.mint.Minter` mints every IRI; :class:`~.vocab.FK` names every term.

Nothing here imports torch; pyoxigraph is imported only to convert formats.
"""

from __future__ import annotations

from .errors import (
    BaseIriError,
    ExplanationFileError,
    ExportFormatError,
    RdfExportError,
    RunFolderError,
    UnrepresentableLiteralError,
)
from .export import FORMATS, ExportFormat, export_run, export_run_stats, format_of
from .graphs import build_dataset, build_tag_graph
from .mint import DEFAULT_BASE_IRI, Minter, check_base_iri, segment
from .nquads import ExportStats, RunGraphs, write_nquads
from .rundata import RunData, read_run
from .vocab import FK, FK_NAMESPACE, ONTOLOGY_IRI, ONTOLOGY_VERSION_IRI, PREFIXES

__all__ = [
    "DEFAULT_BASE_IRI",
    "FK",
    "FK_NAMESPACE",
    "FORMATS",
    "ONTOLOGY_IRI",
    "ONTOLOGY_VERSION_IRI",
    "PREFIXES",
    "BaseIriError",
    "ExplanationFileError",
    "ExportFormat",
    "ExportFormatError",
    "ExportStats",
    "Minter",
    "RdfExportError",
    "RunData",
    "RunFolderError",
    "RunGraphs",
    "UnrepresentableLiteralError",
    "build_dataset",
    "build_tag_graph",
    "check_base_iri",
    "export_run",
    "export_run_stats",
    "format_of",
    "read_run",
    "segment",
    "write_nquads",
]
