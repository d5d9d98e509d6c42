"""The report's charts: matplotlib figures rendered to PNG files.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot,
so no global state and no GUI backend: PNG output goes through Agg). Text is
never parsed as mathtext, so a label with ``$`` signs stays what it is, and
missing-glyph warnings (labels in scripts the font lacks) are silenced.
Charts are few: one on the overview, two per layer and one per explanation
page.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["concept_groups_chart", "layer_overview_chart", "tags_per_filter_chart", "votes_chart"]

PALETTE = ("#4f7fd1", "#e07b39", "#4aa56b", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
HIGHLIGHT = "#c44e52"


def _short(text: str, n: int = 38) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


@contextlib.contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    rc = {
        "text.parse_math": False,
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": False,
    }
    with matplotlib.rc_context(rc), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs, tight-layout notes
        yield


def _figure(
    width: float,
    height: float,
    *,
    labels: Sequence[str] = (),
    title: bool = True,
    xlabel: bool = True,
    legend_right: float = 0.0,
) -> Any:
    """A figure with margins fitted to its y tick labels (cheaper than a layout engine)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    left = (0.35 + 0.068 * max((len(x) for x in labels), default=2)) / width
    fig.subplots_adjust(
        left=min(0.6, left),
        right=0.97 - legend_right / width,
        top=1 - (0.36 if title else 0.12) / height,
        bottom=(0.45 if xlabel else 0.25) / height,
    )
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path


def _grouped_bars(ax: Any, series: Mapping[str, Sequence[float]], n: int, *, horizontal: bool) -> None:
    """One bar per series at each of ``n`` positions, side by side; a legend if several."""
    k = max(1, len(series))
    size = 0.8 / k
    for j, (name, values) in enumerate(series.items()):
        at = [i + (j - (k - 1) / 2) * size for i in range(n)]
        style = {"label": _short(name, 24), "color": PALETTE[j % len(PALETTE)]}
        if horizontal:
            ax.barh(at, values, height=size, **style)
        else:
            ax.bar(at, values, width=size, **style)
    if k > 1:
        ax.legend(loc="best", fontsize=8)


def layer_overview_chart(
    path: Path, layers: Sequence[str], settings: Sequence[str], share: Mapping[str, Sequence[float]]
) -> Path:
    """Share of each layer's filters that carry a tag, one bar per setting (grouped by layer)."""
    with _style():
        n, k = len(layers), max(1, len(settings))
        labels = [_short(x, 28) for x in layers]
        fig = _figure(7.5, min(14.0, 1.0 + 0.22 * n * max(1, min(k, 3))), labels=labels)
        ax = fig.subplots()
        _grouped_bars(ax, {s: [100 * v for v in share[s]] for s in settings}, n, horizontal=True)
        ax.set_yticks(range(n), labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("filters with at least one tag (%)")
        ax.set_title("tagged filters per layer")
        return _save(fig, path)


def tags_per_filter_chart(path: Path, layer: str, counts: Mapping[str, Sequence[int]]) -> Path:
    """How many filters of a layer carry 0, 1, 2, ... tags, one bar group per count."""
    with _style():
        settings = list(counts)
        top = max((max(c) for c in counts.values() if len(c)), default=0)
        xs = list(range(top + 1))
        fig = _figure(7.0, 2.6, labels=["0000"])
        ax = fig.subplots()
        hists = {}
        for s in settings:
            hist = hists[s] = [0] * (top + 1)
            for c in counts[s]:
                hist[c] += 1
        _grouped_bars(ax, hists, len(xs), horizontal=False)
        ax.set_xticks(xs if len(xs) <= 30 else xs[:: max(1, len(xs) // 20)])
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("tags on a filter")
        ax.set_ylabel("filters")
        ax.set_title(_short(f"tags per filter in {layer}", 70))
        return _save(fig, path)


def concept_groups_chart(
    path: Path, layer: str, groups: Sequence[str], tags: Mapping[str, Sequence[int]], *, note: str = ""
) -> Path:
    """Tags of a layer under each WordNet concept group, one bar per setting."""
    with _style():
        settings = list(tags)
        n, k = len(groups), max(1, len(settings))
        labels = [_short(g, 34) for g in groups]
        fig = _figure(7.0, min(10.0, 1.0 + 0.24 * n * max(1, min(k, 3))), labels=labels)
        ax = fig.subplots()
        _grouped_bars(ax, {s: tags[s] for s in settings}, n, horizontal=True)
        ax.set_yticks(range(n), labels)
        ax.invert_yaxis()
        ax.set_xlabel("tags" + (f" ({note})" if note else ""))
        ax.set_title(_short(f"tags of {layer} by WordNet concept", 70))
        return _save(fig, path)


def votes_chart(path: Path, panels: Sequence[tuple[str, Sequence[tuple[str, float]], set[str]]]) -> Path:
    """Votes per class for one image, one panel per explanation (setting, perturbation).

    Bars are labelled directly (class left, votes right) instead of with axes:
    easier to read and about twice as fast to draw, which counts at one chart per
    explanation page.

    Args:
        path: the PNG to write.
        panels: ``(title, [(class label, votes)] most first, labels to highlight)``.
    """
    from matplotlib.transforms import blended_transform_factory

    with _style():
        k = max(1, len(panels))
        rows = max((len(p[1]) for p in panels), default=1)
        cols = min(k, 2)
        nrows = (k + cols - 1) // cols
        labels = [_short(c, 24) for p in panels for c, _ in p[1]]
        panel_h = 0.45 + 0.2 * max(rows, 1)
        width = 4.2 * cols
        fig = _figure(width, nrows * panel_h, labels=labels, xlabel=False)
        space = 0.35 + 0.068 * max((len(x) for x in labels), default=2)
        axis_w = (width * (fig.subplotpars.right - fig.subplotpars.left) - (cols - 1) * space) / cols
        fig.subplots_adjust(
            bottom=0.1 / (nrows * panel_h),
            wspace=space / max(axis_w, 0.5),
            hspace=0.45 / max(panel_h - 0.45, 0.3),
        )
        axes = fig.subplots(nrows, cols, squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, (title, votes, hot) in zip(axes.flat, panels):
            n = len(votes)
            top = max((v for _, v in votes), default=0.0)
            ax.barh(
                range(n),
                [v for _, v in votes],
                height=0.75,
                color=[HIGHLIGHT if c in hot else PALETTE[0] for c, _ in votes],
            )
            ax.set_ylim(max(rows, 1) - 0.5, -0.5)
            ax.set_xlim(0, top * 1.18 if top > 0 else 1.0)
            names = blended_transform_factory(ax.transAxes, ax.transData)
            for i, (c, v) in enumerate(votes):
                ax.text(-0.02, i, _short(c, 24), transform=names, ha="right", va="center")
                ax.text(v, i, f" {v:.3g}", ha="left", va="center", fontsize=8, color="#333333")
            ax.set_title(_short(title, 44), loc="left")
            if not votes:
                ax.text(0.0, 0.5, "no votes", ha="left", va="center", transform=ax.transAxes)
        return _save(fig, path)
