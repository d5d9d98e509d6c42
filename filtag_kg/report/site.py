"""``filtag-kg report``: a static HTML site of a run folder.

The site opens from disk (relative links only; images, charts and the style
sheet are files inside it; no script, no CDN). Pages:

* ``index.html``: model, layers, dataset, run settings, skipped files, evaluation;
* ``layers/…``: per layer, tagged filters, tags per filter and tags by WordNet concept;
* ``filters/…``: per tagged filter, its tags with scores, abstract tags, class
  profile and top activating images with the filter's activation map;
* ``explanations/…``: per explained image (the first N and the misexplained
  ones), the model's and the explanation's predictions, votes and layer-wise
  heatmaps of the most active tagged filters;
* ``concepts/…``: per class and WordNet hypernym, the filters representing it
  (tags of the concept or of a hyponym) across layers;
* ``cladec/…`` (after ``filtag-kg cladec``): per decoded layer, images as original, ClaDec and
  reference reconstructions with the image's active tagged filters of the layer.
* ``clusters/…`` (after ``explain --clusters``): per predicted class, the concepts of its
  images' strongest feature-map clusters per setting and layer; the explanation pages then
  show each layer's strongest clusters too (:mod:`.cluster_pages`).

Every page links back to the overview and to related pages, and names the
RDF IRIs (minted by :class:`~filtag_kg.rdf.mint.Minter` for the same base IRI
as ``filtag-kg export``) of what it shows.

Scale: the explanations (``explanations.parquet`` or ``.jsonl``) are streamed
twice (choose, then write), only the JSON lines of images that get a page are
decoded, and no more than one batch of
images is held at a time; filter pages are written for tagged filters only;
the model is loaded only when there are images to overlay, and runs in
batches (CPU by default); thumbnails are copied, resized, into the site.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import ensure_writable_dir
from ..errors import FiltagError, OutputError
from ..rdf.mint import DEFAULT_BASE_IRI, Minter
from .cladec_pages import CladecPages
from .concept_pages import ConceptPages
from .explanation_pages import ExplanationPages
from .htmlkit import CSS
from .model_pages import LayerFilterPages
from .overview import OverviewPage
from .runview import RunView
from .saliency_pages import SaliencyPages

if TYPE_CHECKING:
    from ..wordnet import WordNet

__all__ = ["DEFAULT_BASE_IRI", "ReportError", "ReportSummary", "write_report"]

MARKER = "report.json"
#: what a report folder holds; an earlier report's copies are removed before writing
MANAGED = (
    "index.html",
    "style.css",
    MARKER,
    "layers",
    "filters",
    "concepts",
    "explanations",
    "charts",
    "images",
    "maps",
    "saliency",
    "cladec",
    "clusters",
)


class ReportError(FiltagError):
    """A report cannot be written (an unusable output folder or option)."""


@dataclass
class ReportSummary:
    """What :func:`write_report` wrote.

    Attributes:
        out_dir: the site folder.
        index: its ``index.html``.
        pages: pages written, by kind (``overview``, ``layer``, ``filter``,
            ``concept``, ``explanation``, ``list``).
        files: all files in the site.
        bytes: their total size.
        charts: chart images.
        heatmaps: heatmap overlays.
        thumbnails: image thumbnails.
        explained_images: images in the run's explanations.
        explanation_pages: of those, images with a page.
        seconds: time taken.
        notes: what was left out and why (also on the overview page).
    """

    out_dir: Path
    index: Path
    pages: dict[str, int]
    files: int = 0
    bytes: int = 0
    charts: int = 0
    heatmaps: int = 0
    thumbnails: int = 0
    explained_images: int = 0
    explanation_pages: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def total_pages(self) -> int:
        """All HTML pages."""
        return sum(self.pages.values())

    def summary(self) -> str:
        """A few lines for the command line."""
        kinds = ", ".join(f"{n} {k}" for k, n in self.pages.items() if n)
        lines = [
            f"wrote {self.total_pages} pages ({kinds}), {self.charts} charts, {self.heatmaps} heatmaps, "
            f"{self.thumbnails} thumbnails: {self.files} files, {self.bytes / 1e6:.1f} MB in "
            f"{self.seconds:.1f} s",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"open {self.index}")
        return "\n".join(lines)


def write_report(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    base_iri: str = DEFAULT_BASE_IRI,
    max_images: int = 50,
    max_misexplained: int = 50,
    max_filters: int | None = None,
    top_images: int | None = None,
    heatmaps: bool = True,
    heatmaps_per_layer: int = 3,
    device: str = "cpu",
    batch_size: int = 16,
    thumb_size: int = 128,
    wordnet: WordNet | None = None,
    progress: bool = True,
) -> ReportSummary:
    """Write a static HTML report of a run folder.

    Args:
        run_dir: a run folder (``filtag-kg run``; an ``import-filtag`` folder works too).
        out_dir: the site folder: new, empty, or an earlier report (replaced).
        base_iri: the base IRI the RDF export used (``--base-iri``), for the IRI links.
        max_images: explanation pages for the first this many explained images.
        max_misexplained: pages for up to this many further images whose explanation
            disagrees with the model's top-1.
        max_filters: at most this many filter pages per layer (the filters with the
            most tags first); ``None``: every tagged filter.
        top_images: top activating images shown per filter (``None``: all the profile kept).
        heatmaps: draw activation maps (loads the run's model when there are images).
        heatmaps_per_layer: filters drawn per layer on an explanation page.
        device: where the model runs for heatmaps (``cpu`` default, ``cuda``, ``auto``).
        batch_size: images per forward pass for heatmaps.
        thumb_size: longer side of thumbnails and heatmaps, in pixels.
        wordnet: a WordNet source (default :func:`~filtag_kg.wordnet.load_wordnet`).
        progress: show progress bars on stderr.

    Returns:
        What was written (pages, files, size, notes).

    Raises:
        RunFolderError: the run folder lacks ``tags.tsv`` or has unreadable files.
        ReportError: the output folder is not empty and holds no earlier report,
            or an option is out of range.
        FiltagError: ``device`` is not available.
        OutputError: the output folder cannot be written.
        BaseIriError: the base IRI is unusable.

    Example:
        >>> s = write_report("runs/vgg16", "runs/vgg16/report", device="cuda")  # doctest: +SKIP
        >>> print(s.summary())  # doctest: +SKIP
        wrote 6215 pages (1 overview, 13 layer, 4224 filter, ...) ...
    """
    t0 = time.perf_counter()
    for name, value in (
        ("max_images", max_images),
        ("max_misexplained", max_misexplained),
        ("heatmaps_per_layer", heatmaps_per_layer),
    ):
        if value < 0:
            raise ReportError(f"invalid {name} {value}: must be >= 0")
    if max_filters is not None and max_filters < 0:
        raise ReportError(f"invalid max_filters {max_filters}: must be >= 0 (or None for all)")
    if top_images is not None and top_images < 0:
        raise ReportError(f"invalid top_images {top_images}: must be >= 0")
    if batch_size < 1:
        raise ReportError(f"invalid batch_size {batch_size}: must be >= 1")
    if not 16 <= thumb_size <= 1024:
        raise ReportError(f"invalid thumb_size {thumb_size}: use 16 to 1024 pixels")
    if heatmaps and device != "cpu":
        from ..profile import resolve_device

        resolve_device(device)  # a device that is not there fails now, not after half the site
    run = Path(run_dir)
    minter = Minter(base_iri)
    view = RunView.load(run)
    site = _Site(
        view,
        Path(out_dir),
        minter,
        wordnet=wordnet,
        heatmaps=heatmaps,
        device=device,
        batch_size=batch_size,
        thumb_size=thumb_size,
        progress=progress,
    )
    out = _prepare_out(Path(out_dir), run)
    _write_marker(out, {"format": "filtag-kg report", "complete": False, "run_dir": str(run)})
    (out / "style.css").write_text(CSS, encoding="utf-8")
    site.choose_filters(max_filters, top_images)
    site.choose_explanations(max_images, max_misexplained)
    site.filter_heatmaps()
    site.write_filter_pages()
    site.write_layer_pages()
    site.write_concept_pages()
    site.write_explanation_pages(heatmaps_per_layer)
    site.write_saliency_pages()
    site.write_cladec_pages()
    site.write_cluster_pages()
    if site.bad_images:
        path, why = next(iter(site.bad_images.items()))
        site.notes.append(
            f"{len(site.bad_images)} image(s) could not be read, e.g. {path} ({why}); image paths are "
            "read as recorded, relative to the working folder or the run folder's parent"
        )
    site.write_overview()
    summary = ReportSummary(
        out_dir=out,
        index=out / "index.html",
        pages=dict(site.pages),
        charts=site.charts,
        heatmaps=site.heatmaps,
        thumbnails=sum(1 for t in site.thumbs.values() if t is not None),
        explained_images=site.explained_images,
        explanation_pages=len(site.chosen),
        notes=list(site.notes),
    )
    _write_marker(
        out,
        {
            "format": "filtag-kg report",
            "format_version": 1,
            "complete": True,
            "run_dir": str(run),
            "base_iri": minter.base,
            "pages": summary.pages,
            "charts": summary.charts,
            "heatmaps": summary.heatmaps,
            "thumbnails": summary.thumbnails,
            "explained_images": summary.explained_images,
            "explanation_pages": summary.explanation_pages,
            "notes": summary.notes,
        },
    )
    for p in out.rglob("*"):
        if p.is_file():
            summary.files += 1
            summary.bytes += p.stat().st_size
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def _write_marker(out: Path, doc: dict[str, Any]) -> None:
    """``report.json``: marks the folder as a report (so a rerun may replace it) and says what it holds."""
    text = json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"
    (out / MARKER).write_text(text, encoding="utf-8", errors="replace")


def _prepare_out(out: Path, run: Path) -> Path:
    """Create the site folder, or clear an earlier report's files from it."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"report folder {out} is a file; choose a folder with --out")
    if out.is_dir():
        try:
            same = out.resolve() == run.resolve()
        except OSError:
            same = False
        entries = list(out.iterdir())
        if same or (entries and not (out / MARKER).is_file()):
            raise ReportError(
                f"report folder {out} is not empty and holds no earlier report; choose a new or empty "
                "folder with --out (e.g. RUN_DIR/report)"
            )
        for name in MANAGED:
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    return ensure_writable_dir(out)


class _Site(LayerFilterPages, ConceptPages, CladecPages, ExplanationPages, SaliencyPages, OverviewPage):
    """All pages of one report."""
