"""Errors of the knowledge-graph export, each caused by a bad input.

All derive from :class:`~filtag_kg.errors.FiltagError`, so the CLI prints them
as one line (``filtag-kg: error: ...``) that names the bad input and the fix.
"""

from __future__ import annotations

from ..errors import DataError, FiltagError, OutputError

__all__ = [
    "BaseIriError",
    "ExplanationFileError",
    "ExportFormatError",
    "LicenseIriError",
    "RdfExportError",
    "RunFolderError",
    "UnrepresentableLiteralError",
]


class RdfExportError(FiltagError):
    """Base class of the knowledge-graph export errors."""


class ExportFormatError(RdfExportError, ValueError):
    """An export format name is unknown (the message lists the valid ones)."""


class BaseIriError(RdfExportError, ValueError):
    """A ``--base-iri`` is not an absolute IRI that data IRIs can be minted under."""


class LicenseIriError(RdfExportError, ValueError):
    """An ``export --license`` value is not an absolute IRI."""


class RunFolderError(RdfExportError, DataError):
    """A run folder lacks ``tags.tsv``, or one of its files is unreadable or inconsistent."""


class ExplanationFileError(RunFolderError):
    """A line of ``explanations.jsonl`` is not a valid explanation record (file and line named)."""


class UnrepresentableLiteralError(RdfExportError, OutputError):
    """A string cannot be written in the chosen format (control characters in RDF/XML)."""
