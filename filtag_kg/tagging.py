"""FilTag step 2: choose each class's active filters per layer and tag them.

Works on the class profile alone (no model, no images), so retagging with
another k or percentage takes milliseconds. The selection rules, the tie rule
(lower filter index first) and the top-percent rounding are those of
``docs/filtag-method.md``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import atomic_open, read_table_rows, write_json
from .errors import DataError, TaggingError

if TYPE_CHECKING:
    from .profile import Profile

TOP_K = "top-k"
TOP_PERCENT = "top-percent"
ABOVE_AVERAGE = "above-average"
METHODS = (TOP_K, TOP_PERCENT, ABOVE_AVERAGE)

TSV_COLUMNS = ("method", "param", "layer", "filter", "class_id", "label", "score", "rank", "share")


@dataclass(frozen=True)
class TagSetting:
    """One tagging method with its parameter.

    Args:
        method: ``"top-k"``, ``"top-percent"`` or ``"above-average"``.
        param: k (int >= 1) for top-k, q in (0, 100] for top-percent, ``None``
            for above-average.
    """

    method: str
    param: float | int | None = None

    def __post_init__(self) -> None:
        if self.method == TOP_K:
            if (
                isinstance(self.param, bool)
                or not isinstance(self.param, (int, np.integer, float))
                or self.param != int(self.param)
                or self.param < 1
            ):
                raise TaggingError(f"invalid k {self.param!r}: k must be a whole number >= 1")
            object.__setattr__(self, "param", int(self.param))
        elif self.method == TOP_PERCENT:
            q = self.param
            if not isinstance(q, (int, float, np.number)) or not (0 < float(q) <= 100):
                raise TaggingError(f"invalid percent {q!r}: the percentage must be in (0, 100]")
            q = float(q)
            object.__setattr__(self, "param", int(q) if q.is_integer() else q)
        elif self.method == ABOVE_AVERAGE:
            object.__setattr__(self, "param", None)
        else:
            raise TaggingError(f"unknown tagging method {self.method!r}; use one of {METHODS}")

    @property
    def param_text(self) -> str:
        """The parameter as written in files: ``"3"``, ``"2.5"`` or ``""``."""
        return "" if self.param is None else f"{self.param:g}"

    def __str__(self) -> str:
        return self.method if self.param is None else f"{self.method} {self.param_text}"

    def count(self, width: int, layer: str) -> int | None:
        """How many filters a class activates in a layer of ``width`` filters.

        Returns ``None`` for above-average (the count depends on the values).

        Raises:
            TaggingError: k exceeds the layer's width (naming the layer).
        """
        if self.method == TOP_K:
            if self.param > width:  # type: ignore[operator]
                raise TaggingError(
                    f"k={self.param} exceeds the width of layer {layer!r} ({width} filters); "
                    f"use a smaller --k or select layers with --layers"
                )
            return int(self.param)  # type: ignore[arg-type]
        if self.method == TOP_PERCENT:
            return max(1, round(float(self.param) / 100.0 * width))  # type: ignore[arg-type]
        return None


def order_filters(values: np.ndarray) -> np.ndarray:
    """Filter indices sorted by value, largest first; ties by the lower index.

    Works on the last axis, so a [N, F] array gives one ordering per row.
    """
    # A stable sort of the negated values keeps equal values in index order.
    return np.argsort(-np.asarray(values, dtype=np.float64), axis=-1, kind="stable")


def active_filters(
    values: np.ndarray, setting: TagSetting, layer: str = "?", order: np.ndarray | None = None
) -> np.ndarray:
    """The active set of one value vector, in rank order (most active first).

    Args:
        values: [F] filter values (class profile or one image's values).
        setting: the selection rule.
        layer: the layer's name, for error messages.
        order: ``order_filters(values)`` when already computed (a batch's rows are
            sorted in one call, and several settings share one ordering).

    Returns:
        int64 array of filter indices, most active first.
    """
    values = np.asarray(values, dtype=np.float64)
    order = order_filters(values) if order is None else order
    n = setting.count(values.shape[-1], layer)
    if n is None:  # above-average: strictly above the layer's mean value
        # fsum: the correctly rounded mean, so a value equal to it never counts by rounding luck
        mean = math.fsum(values.tolist()) / values.shape[-1]
        return order[values[order] > mean]
    return order[:n]


@dataclass(frozen=True)
class Tag:
    """One tag: filter ``filter`` of ``layer`` is tagged with class ``class_id``.

    ``score`` is the class's mean filter value, ``rank`` the filter's position
    (1 = most active) in that class's ordering of the layer, ``share`` the
    score divided by the filter's summed score over all classes. Values that
    are unknown (e.g. tags imported from other tools) are NaN / 0.
    """

    method: str
    param: str
    layer: str
    filter: int
    class_id: str
    label: str
    score: float
    rank: int
    share: float

    def row(self) -> list[str]:
        """The TSV row, in :data:`TSV_COLUMNS` order."""
        return [
            self.method,
            self.param,
            self.layer,
            str(self.filter),
            self.class_id,
            self.label,
            _fmt(self.score),
            str(self.rank) if self.rank else "",
            _fmt(self.share),
        ]


def _fmt(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))


def class_shares(means: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each filter's profile read as a distribution over the classes with images.

    Args:
        means: [C, F] class means of one layer.
        counts: [C] images per class; classes with none get share 0.

    Returns:
        [C, F] array whose columns sum to 1 (or are all 0 for a filter that
        no class activates).
    """
    m = np.where(np.asarray(counts)[:, None] > 0, means, 0.0)
    total = m.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, m / np.where(total > 0, total, 1.0), 0.0)


def filter_entropy(shares: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits of each filter's class distribution ([C, F] -> [F]).

    0 for a filter responding to one class only; log2(C) for a filter that
    responds to all classes equally (maximally polysemantic).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(shares > 0, -shares * np.log2(np.where(shares > 0, shares, 1.0)), 0.0)
    return terms.sum(axis=0)


def tag_layer(
    name: str,
    means: np.ndarray,
    counts: np.ndarray,
    class_ids: Sequence[str],
    labels: Sequence[str],
    setting: TagSetting,
) -> list[Tag]:
    """Tags of one layer for one setting, ordered by class then rank."""
    shares = class_shares(means, counts)
    tags: list[Tag] = []
    setting.count(means.shape[1], name)  # validates k against the width even with no classes
    for c in range(means.shape[0]):
        if counts[c] == 0:
            continue  # a class with no images has no profile and no tags
        values = means[c]
        order = order_filters(values)
        rank_of = np.empty_like(order)
        rank_of[order] = np.arange(1, order.size + 1)
        for f in active_filters(values, setting, name):
            tags.append(
                Tag(
                    method=setting.method,
                    param=setting.param_text,
                    layer=name,
                    filter=int(f),
                    class_id=class_ids[c],
                    label=labels[c],
                    score=float(values[f]),
                    rank=int(rank_of[f]),
                    share=float(shares[c, f]),
                )
            )
    return tags


def tag_profile(profile: Profile, settings: Iterable[TagSetting]) -> list[Tag]:
    """All tags of a profile for each setting (setting, layer, class, rank order).

    Raises:
        TaggingError: a k exceeds a layer's width.
    """
    out: list[Tag] = []
    for setting in settings:
        for layer in profile.layers:
            out += tag_layer(
                layer.name, layer.means, profile.counts, profile.class_ids, profile.labels, setting
            )
    return out


def write_tags_tsv(path: str | os.PathLike[str], tags: Iterable[Tag]) -> None:
    """Write tags as tab-separated values with a header row, atomically."""
    with atomic_open(path) as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(TSV_COLUMNS)
        for t in tags:
            w.writerow(t.row())


_RETAG = "rewrite it with `filtag-kg tag` (or `filtag-kg import-filtag` for imported tags)"


def read_tag_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a ``tags.tsv`` as strings by column, checked (every column of
    :data:`TSV_COLUMNS`, no row cut short, whole filter indices).

    Raises:
        DataError: the file is not such a table, naming it and the command that writes it again.
    """
    return read_table_rows(path, TSV_COLUMNS, "tag table", _RETAG)


def read_tags_tsv(path: str | os.PathLike[str]) -> list[Tag]:
    """Read a ``tags.tsv`` written by :func:`write_tags_tsv`.

    Raises:
        DataError: the file is not a tag table (see :func:`read_tag_rows`).
    """
    rows = read_tag_rows(path)
    try:
        return [
            Tag(
                method=row["method"],
                param=row["param"],
                layer=row["layer"],
                filter=int(row["filter"]),
                class_id=row["class_id"],
                label=row["label"],
                score=float(row["score"]) if row["score"] else math.nan,
                rank=int(row["rank"]) if row["rank"] else 0,
                share=float(row["share"]) if row["share"] else math.nan,
            )
            for row in rows
        ]
    except ValueError as exc:
        raise DataError(f"{path} is not a filtag-kg tag table ({exc}); {_RETAG}") from None


def tags_document(profile: Profile, settings: Sequence[TagSetting], tags: Sequence[Tag]) -> dict[str, Any]:
    """The ``tags.json`` document: settings, classes, per-layer filter entropy, tags."""
    layers = []
    for layer in profile.layers:
        ent = filter_entropy(class_shares(layer.means, profile.counts))
        layers.append(
            {
                "name": layer.name,
                "width": layer.width,
                "measured_at": layer.measured_at,
                "entropy_bits": [round(float(e), 12) for e in ent],
            }
        )
    by_setting: list[dict[str, Any]] = []
    for s in settings:
        rows = [t for t in tags if t.method == s.method and t.param == s.param_text]
        by_setting.append(
            {
                "method": s.method,
                "param": s.param,
                "tags": [
                    {
                        "layer": t.layer,
                        "filter": t.filter,
                        "class_id": t.class_id,
                        "label": t.label,
                        "score": t.score,
                        "rank": t.rank,
                        "share": t.share,
                    }
                    for t in rows
                ],
            }
        )
    return {
        "format": "filtag-kg tags",
        "format_version": 1,
        "classes": [
            {"id": c, "label": lab, "images": int(n)}
            for c, lab, n in zip(profile.class_ids, profile.labels, profile.counts)
        ],
        "layers": layers,
        "settings": by_setting,
    }


def write_tags(
    run_dir: str | os.PathLike[str], profile: Profile, settings: Sequence[TagSetting]
) -> list[Tag]:
    """Tag ``profile`` with every setting and write ``tags.tsv`` and ``tags.json``.

    Returns:
        The tags written.
    """
    from pathlib import Path

    settings = list(dict.fromkeys(settings))  # drop repeated settings, keep order
    tags = tag_profile(profile, settings)
    run_dir = Path(run_dir)
    write_tags_tsv(run_dir / "tags.tsv", tags)
    write_json(run_dir / "tags.json", tags_document(profile, settings, tags))
    return tags
