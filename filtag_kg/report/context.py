"""The state one report's pages share: run data, IRIs, page paths, links and image files."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FiltagError
from ..rdf.mint import Minter
from ..tagging import Tag
from .heatmaps import HeatmapError, ImageViews, MapEngine, save_jpeg, thumbnail
from .htmlkit import Page, esc, file_key
from .runview import ConceptIndex, RunView, Setting
from .sentence_view import SentenceView

if TYPE_CHECKING:
    from ..wordnet import WordNet

VIEW_SIZE = 256  # the explained image and top-image links, longer side in pixels
LIST_CAP = 40  # filters listed per layer on a concept page


def image_key(path: str) -> str:
    """A file stem for an image path (its thumbnail and heatmaps are named by it)."""
    return hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def pct(x: Any) -> str:
    """A share as a percentage, or a dash when unknown."""
    return "–" if not isinstance(x, (int, float)) or isinstance(x, bool) else f"{100 * x:.1f}%"


def progress_bar(items: Iterable[Any], *, total: int | None, desc: str, enabled: bool) -> Iterator[Any]:
    """``items`` with a progress bar on stderr when ``enabled`` (log lines off a terminal)."""
    from .._progress import progress

    yield from progress(items, total=total, desc=desc, unit="page", enabled=enabled)


def facts_list(items: list[tuple[str, str]]) -> str:
    """A definition list; values are HTML already."""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


class SiteContext:
    """What the pages of one report share: the run, its IRIs, page paths, links and image files.

    The page writers (:mod:`.model_pages`, :mod:`.concept_pages`,
    :mod:`.explanation_pages`, :mod:`.overview`) extend it; a page links to
    another only through :meth:`filter_page`, :meth:`concept_page`, ... which
    return ``None`` for a page that is not written, so no link dangles.
    """

    def __init__(
        self,
        view: RunView,
        out: Path,
        minter: Minter,
        *,
        wordnet: WordNet | None,
        heatmaps: bool,
        device: str,
        batch_size: int,
        thumb_size: int,
        progress: bool,
    ) -> None:
        self.view, self.out, self.mint = view, out, minter
        data = view.data
        self.run_iri = minter.run(data.spec, data.identity)
        self.model_iri = minter.model(data.spec, data.model.get("weights_sha256"))
        self.notes: list[str] = []
        self.pages: dict[str, int] = {
            "overview": 0,
            "layer": 0,
            "filter": 0,
            "concept": 0,
            "explanation": 0,
            "list": 0,
        }
        self.charts = self.heatmaps = 0
        self.progress = progress
        self.thumb_size = thumb_size
        self.batch_size = batch_size
        if wordnet is None:
            from ..wordnet import load_wordnet

            try:
                wordnet = load_wordnet()
            except FiltagError as exc:
                self.notes.append(f"no WordNet source ({exc}); concepts are the classes alone")
                wordnet = None
        self.concepts = ConceptIndex.build(view, wordnet)
        self._wordnet = wordnet  # for the sentences (built on first use)
        self.notes += self.concepts.notes
        meta = view.profile_meta
        pre = None
        if meta and isinstance(meta.get("preprocess"), dict):
            from ..preprocess import Preprocess

            try:
                pre = Preprocess.from_dict(meta["preprocess"])
            except (KeyError, TypeError, ValueError):
                pre = None
        self.views = ImageViews(pre)
        self.engine: MapEngine | None = None
        if heatmaps and meta and pre is not None:
            self.engine = MapEngine(meta, self.views, device=device, batch_size=batch_size)
        elif heatmaps:
            self.notes.append("no heatmaps: the run has no profile.json with the model and preprocessing")
        self.heatmap_error: str | None = None
        self.thumbs: dict[str, str | None] = {}  # image path -> site path of its view (None: unreadable)
        self.bad_images: dict[str, str] = {}
        self.layer_index = {name: i for i, name in enumerate(view.layer_names)}
        self.filter_pages: dict[tuple[str, int], str] = {}
        self.filter_top: dict[tuple[str, int], list[tuple[str, float]]] = {}
        self.filter_maps: dict[tuple[str, int, str], str] = {}  # (layer, filter, image) -> overlay
        self.tags_of: dict[tuple[Setting, str, int], list[Tag]] = {}
        self.layer_tags: dict[tuple[Setting, str], list[Tag]] = {}
        for t in data.tags:
            self.tags_of.setdefault(((t.method, t.param), t.layer, t.filter), []).append(t)
            self.layer_tags.setdefault(((t.method, t.param), t.layer), []).append(t)
        self.chosen: dict[Any, str] = {}  # explanation index -> page path
        self.chosen_order: list[Any] = []  # the indices in page order (for previous / next links)
        self.explained_images = 0
        self.summaries: list[dict[str, Any]] = []

    @functools.cached_property
    def sentences(self) -> SentenceView | None:
        """The run's generated sentences (``None``: no WordNet source or no ``profile.json``)."""
        if self._wordnet is None:
            return None
        return SentenceView.build(self.view.data.run_dir, self._wordnet)

    # -- paths ---------------------------------------------------------------------------
    def layer_page(self, layer: str) -> str:
        """The page of a layer (every layer has one)."""
        return f"layers/{file_key(layer)}.html"

    def filter_page(self, layer: str, f: int) -> str | None:
        """The page of a filter, or ``None`` when it has none (untagged, or over ``max_filters``)."""
        return self.filter_pages.get((layer, f))

    def concept_page(self, key: str | None) -> str | None:
        """The page of a concept by key (wnid or ``label-…``), or ``None`` for an unknown one."""
        return f"concepts/{key}.html" if key is not None and key in self.concepts.concepts else None

    def class_page(self, class_id: str) -> str | None:
        """The concept page of a class (its synset, else its label concept)."""
        return self.concept_page(self.concepts.of_class.get(class_id))

    def cluster_aggregates(self) -> dict[str, Any] | None:
        """The run's ``clusters.json`` (class-level cluster aggregates), read once; ``None`` without one."""
        if not hasattr(self, "_cluster_doc"):
            from ..rdf.cluster_graph import read_cluster_aggregates

            self._cluster_doc = read_cluster_aggregates(self.view.run_dir)
        return self._cluster_doc

    def cluster_page(self, class_id: str) -> str | None:
        """The page of a predicted class's cluster aggregates, or ``None`` when it has none."""
        doc = self.cluster_aggregates()
        if not doc:
            return None
        if not hasattr(self, "_cluster_classes"):
            self._cluster_classes = {str(e.get("class_id")) for e in doc.get("classes") or []
                                     if isinstance(e, dict)}
        return f"clusters/{file_key(class_id)}.html" if class_id in self._cluster_classes else None

    def name(self, class_id: str) -> str:
        """A class for people: its label, else (a bare wnid) its concept's lemma."""
        label = self.view.label(class_id)
        if label != class_id:
            return label
        key = self.concepts.of_class.get(class_id)
        return self.concepts.concepts[key].label if key in self.concepts.concepts else class_id

    def class_link(self, page: Page, class_id: str, *, label: str | None = None) -> str:
        """A link from ``page`` to a class's concept page, showing its readable name."""
        text = label if label and label != class_id else self.name(class_id)
        return page.link(self.class_page(class_id), text)

    def filter_link(self, page: Page, layer: str, f: int, text: str | None = None) -> str:
        """A link from ``page`` to a filter's page (plain text when it has none)."""
        return page.link(self.filter_page(layer, f), text if text is not None else f"filter {f}")

    def concept_iri(self, key: str) -> str:
        """The RDF IRI of a concept, as the export mints it."""
        c = self.concepts.concepts[key]
        return self.mint.synset(c.wnid) if c.wnid else self.mint.label_concept(c.name)

    def write(self, page: Page, kind: str) -> None:
        """Write a page into the site and count it under ``kind``."""
        path = self.out / page.path
        path.parent.mkdir(parents=True, exist_ok=True)
        title = f"filtag-kg report: {self.view.data.spec}"
        path.write_text(page.render(site_title=title), encoding="utf-8", errors="replace")
        self.pages[kind] += 1

    def resolve_image(self, path: str) -> Path:
        """An image path as recorded: absolute, relative to the working folder, or to the run."""
        p = Path(path)
        if p.is_absolute() or p.exists():
            return p
        # relative paths are relative to the folder each pass ran in (recorded as ``cwd``)
        metas = (self.view.profile_meta or {}, self.view.data.explanations_meta or {})
        cwds = [(m.get("dataset") or {}).get("cwd") for m in metas]
        for base in (*[Path(c) for c in cwds if c], self.view.run_dir.parent, self.view.run_dir):
            q = base / p
            if q.exists():
                return q
        return p

    def image_view(self, path: str) -> Any:
        """The model's view of an image, or ``None`` (noted) when it cannot be read."""
        if path in self.bad_images:
            return None
        try:
            return self.views.view(str(self.resolve_image(path)))
        except Exception as exc:  # noqa: BLE001 - any decoding failure is shown, not raised
            self.bad_images[path] = f"{type(exc).__name__}: {str(exc)[:120]}"
            return None

    def thumb_of(self, path: str, view: Any) -> str | None:
        """The site path of an image's view thumbnail, written once."""
        if path in self.thumbs:
            return self.thumbs[path]
        if view is None:
            self.thumbs[path] = None
            return None
        rel = f"images/{image_key(path)}.jpg"
        save_jpeg(thumbnail(view, max(VIEW_SIZE, self.thumb_size)), self.out / rel)
        self.thumbs[path] = rel
        return rel

    def figure(
        self,
        page: Page,
        src: str | None,
        caption: str,
        *,
        width: int | None = None,
        target: str | None = None,
        alt: str = "",
    ) -> str:
        """An image (or a placeholder) with its caption (HTML), optionally linking to ``target``."""
        if src is None:
            missing = '<div class="note">image unavailable</div>'
            return f"<figure>{missing}<figcaption>{caption}</figcaption></figure>"
        w = f' width="{width}"' if width else ""
        img = f'<img src="{page.src(src)}" alt="{esc(alt)}"{w} loading="lazy">'
        if target:
            img = f'<a href="{page.src(target)}">{img}</a>'
        return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"

    def tag_links(self, page: Page, tags: list[Tag], limit: int = 8) -> str:
        """A filter's tags as concept links (the first ``limit``, then how many more)."""
        shown = [self.class_link(page, t.class_id, label=t.label or t.class_id) for t in tags[:limit]]
        more = f' <span class="muted">+{len(tags) - limit}</span>' if len(tags) > limit else ""
        return '<span class="tags">' + ", ".join(shown) + more + "</span>"

    def maps_ok(self) -> bool:
        """Whether heatmaps can still be drawn (asked for, and the model has not failed)."""
        return self.engine is not None and self.heatmap_error is None

    def compute_maps(self, views: list[Any], wanted: list[dict[int, set[int]]]) -> list[dict[int, Any]]:
        """Maps for a batch, or empty results (noted once) when the model cannot be used."""
        if not self.maps_ok() or not views:
            return [{} for _ in views]
        try:
            return self.engine.maps(views, wanted)  # type: ignore[union-attr]
        except HeatmapError as exc:
            self.heatmap_error = str(exc)
            self.notes.append(f"no heatmaps: {exc}")
            return [{} for _ in views]

    def _measured_at(self, layer: str) -> str:
        """Where a layer's filters were measured (``profile.json``), or a dash."""
        for lr in self.view.data.layers:
            if lr.name == layer:
                return lr.measured_at or "–"
        return "–"
