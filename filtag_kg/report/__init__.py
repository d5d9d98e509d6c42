"""A static HTML report of a run folder (``filtag-kg report RUN_DIR --out SITE_DIR``).

>>> from filtag_kg.report import write_report        # doctest: +SKIP
>>> summary = write_report("runs/vgg16", "runs/vgg16/report")
>>> print(summary.index)
runs/vgg16/report/index.html

The site needs no server and no network: open ``index.html`` from disk. See
:mod:`filtag_kg.report.site` for the pages it holds.
"""

from __future__ import annotations

from .site import DEFAULT_BASE_IRI, ReportError, ReportSummary, write_report

__all__ = ["DEFAULT_BASE_IRI", "ReportError", "ReportSummary", "write_report"]
