"""FilTag step 3: explain single classifications by the tags of active filters.

For an image, each layer's filter values give its active filters, chosen with
the same method and parameter as the tagging; every tag of every active filter
is one vote for its class. The explanation's prediction is the class with
most votes over all layers (ties: the class that comes first in the profile),
and, as in the reference, also over the last layer alone. The model's own
top-5 is recorded beside it.

The pass streams its rows (one per image and setting, perturbed copies after
their clean image) into ``explanations.parquet/`` (one Parquet part per
checkpoint; see :mod:`filtag_kg.explanations_io`), or ``explanations.jsonl`` with
``jsonl=True``, so memory does not grow with the number of images. The host-side
work of a batch (active filters, votes, rows, writing) runs on a bounded writer
thread while the next batch's forward pass runs. It resumes exactly like the
profile pass: a state file records what is final; on ``--resume`` everything
after that point is dropped and the pass continues.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from ._interrupt import held_interrupt
from ._io import ensure_writable_dir, write_json
from .activations import FilterProbe
from .clusters import CLUSTERS_DIR, CLUSTERS_JSON, ClusterOptions
from .data import ImageDataset, ImageSet, make_loader
from .distributed import RoundSampler
from .errors import FiltagError, ProfileError, check_whole
from .explanations_io import (
    EXPLANATIONS_DIR,
    EXPLANATIONS_JSONL,
    EXPLANATIONS_META,
    FORMAT_JSONL,
    FORMAT_PARQUET,
    encode_rows,
    iter_explanations,
)
from .measure import RecordedPass, find_measure_points, point_from_record
from .preprocess import channel_stats
from .profile import Engine, Interrupted, Profile, _now, first_good_image, resolve_device, software_versions
from .runfolder import RETAG, fingerprint_diff, json_object_or_none, read_json_object
from .tagging import TagSetting, order_filters, tag_layer

EXPLANATIONS = EXPLANATIONS_JSONL
STATE = "explanations.state.json"
PERTURBATIONS = ("gaussian", "salt-and-pepper", "blur")
WEIGHTINGS = ("gradcam",)


@dataclass(frozen=True)
class Perturbation:
    """A deterministic input perturbation, applied in pixel space ([0, 1]).

    Kinds: ``gaussian:SIGMA`` (additive noise of standard deviation SIGMA),
    ``salt-and-pepper:P`` (a share P of pixels set to black or white) and
    ``blur:SIGMA`` (Gaussian blur, kernel ``2*ceil(3*SIGMA)+1``). Noise for an
    image depends only on the seed and the image's index, never on the batch.
    """

    kind: str
    param: float
    seed: int = 0

    @classmethod
    def parse(cls, text: str, *, seed: int = 0) -> Perturbation:
        """Parse ``KIND:VALUE`` (``gaussian:0.1``, ``salt-and-pepper:0.05``, ``blur:2``).

        Raises:
            FiltagError: unknown kind or invalid value.
        """
        kind, _, value = text.partition(":")
        if kind not in PERTURBATIONS:
            raise FiltagError(
                f"unknown perturbation {text!r}; use {', '.join(k + ':VALUE' for k in PERTURBATIONS)}"
            )
        try:
            param = float(value)
        except ValueError:
            raise FiltagError(
                f"perturbation {text!r} needs a number after the colon, e.g. {kind}:0.1"
            ) from None
        if not math.isfinite(param) or param <= 0 or (kind == "salt-and-pepper" and param > 1):
            raise FiltagError(
                f"invalid perturbation strength in {text!r}: must be > 0"
                + (" and <= 1" if kind == "salt-and-pepper" else "")
            )
        return cls(kind, param, seed)

    def record(self) -> dict[str, Any]:
        """Plain-JSON form written into each perturbed explanation."""
        return {"kind": self.kind, "param": self.param, "seed": self.seed}

    def apply(
        self, x: torch.Tensor, indices: Sequence[int], mean: Sequence[float], std: Sequence[float]
    ) -> torch.Tensor:
        """Perturb a normalised batch ``x`` ([B, 3, H, W]) of dataset ``indices``."""
        m, s = channel_stats(x, mean, std)
        pix = x * s + m
        if self.kind == "blur":
            from torchvision.transforms.functional import gaussian_blur

            k = 2 * math.ceil(3 * self.param) + 1
            out = gaussian_blur(pix, [k, k], [self.param, self.param])
        else:
            noise = []
            for idx in indices:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(idx))
                if self.kind == "gaussian":
                    noise.append(torch.randn(pix.shape[1:], generator=g) * self.param)
                else:
                    u = torch.rand(pix.shape[2:], generator=g)
                    salt = torch.rand(pix.shape[2:], generator=g) < 0.5
                    noise.append(torch.stack([u < self.param, salt]))
            stacked = torch.stack(noise).to(x.device)
            if self.kind == "gaussian":
                out = pix + stacked.to(x.dtype)
            else:
                hit, white = stacked[:, 0:1], stacked[:, 1:2]
                out = torch.where(hit, white.to(x.dtype).expand_as(pix), pix)
        return (out.clamp(0.0, 1.0) - m) / s


@dataclass
class ExplainOptions:
    """Options of the explanation pass (``filtag-kg explain``).

    Attributes:
        settings: tagging settings to explain with; default: those in ``tags.json``.
        perturb: perturbations (``gaussian:0.1``, ...); each image is also
            explained under each one.
        seed: seed of the perturbations.
        weighting: ``None`` or ``"gradcam"`` (votes weighted by each active
            filter's gradient-based contribution to the model's prediction).
        device, batch_size, workers, amp, checkpoint_every, resume, restart,
            progress: as for the profile pass.
        jsonl: write ``explanations.jsonl`` (one JSON object per row) instead of
            the columnar ``explanations.parquet`` folder.
        clusters: ``None``, or cluster each layer's feature maps per image
            (:class:`filtag_kg.clusters.ClusterOptions`, docs/cluster-method.md): the
            rows gain the clusters, their maps go to ``clusters/maps/`` and the class
            aggregates to ``clusters.json``.
        value_bits: store active filters' values rounded to multiples of 2^-K (values are
            min-max scaled to [0, 1], so at most 2^-(K+1) off; ranks, votes and predictions
            are computed before rounding and do not change), in both forms; ``None``: float32
            in Parquet, float64 in JSON Lines. ``10`` makes above-average rows about half
            the size.
    """

    settings: list[TagSetting] | None = None
    perturb: list[str] = field(default_factory=list)
    seed: int = 0
    weighting: str | None = None
    device: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    amp: str = "off"
    checkpoint_every: int = 50
    resume: bool = False
    restart: bool = False
    progress: bool = True
    jsonl: bool = False
    clusters: ClusterOptions | None = None
    value_bits: int | None = None

    def __post_init__(self) -> None:
        for option, value, minimum in (("--batch-size", self.batch_size, 1), ("--workers", self.workers, 0),
                                       ("--checkpoint-every", self.checkpoint_every, 0)):
            check_whole(option, value, minimum)
        if self.value_bits is not None and not 0 <= self.value_bits <= 24:
            raise ProfileError(
                f"--value-bits {self.value_bits} is out of range: give 0..24 (10 keeps values to "
                "within 0.0005), or leave it out for float32 values"
            )


def recorded_settings(run_dir: str | os.PathLike[str]) -> list[TagSetting]:
    """The settings ``tags.json`` was written with (``[]`` when there is none).

    Raises:
        ProfileError: ``tags.json`` is damaged (not an object listing its settings).
    """
    path = Path(run_dir) / "tags.json"
    if not path.is_file():
        return []
    settings = read_json_object(path, RETAG).get("settings")
    if not (isinstance(settings, list) and all(isinstance(s, dict) and {"method", "param"} <= s.keys()
                                               for s in settings)):
        raise ProfileError(f"cannot read {path}: it lists no tagging settings; {RETAG}")
    return [TagSetting(s["method"], s["param"]) for s in settings]


@dataclass
class TagIndex:
    """Which classes tag each filter, per setting and layer: ``incidence[s][l]`` is [F, C]."""

    settings: list[TagSetting]
    incidence: list[list[np.ndarray]]

    @classmethod
    def build(cls, profile: Profile, settings: Sequence[TagSetting]) -> TagIndex:
        """Tag the profile with each setting (the same tags ``filtag-kg tag`` writes)."""
        col = {c: i for i, c in enumerate(profile.class_ids)}
        inc = []
        for s in settings:
            per_layer = []
            for lp in profile.layers:
                m = np.zeros((lp.width, len(profile.class_ids)), dtype=np.float32)  # 0/1: exact
                for t in tag_layer(lp.name, lp.means, profile.counts, profile.class_ids, profile.labels, s):
                    m[t.filter, col[t.class_id]] = 1.0
                per_layer.append(m)
            inc.append(per_layer)
        return cls(list(settings), inc)


_FEW = 8  # up to this many active filters per layer, repeated argmax beats a sort


def _top_n(values: np.ndarray, n: int) -> np.ndarray:
    """[B, n]: each row's n largest values' indices, largest first, ties by the lower index
    (equal to ``order_filters(values)[:, :n]``) by n passes of argmax, which returns the
    first of equal maxima."""
    work = values.copy()
    rows = np.arange(len(values))
    out = np.empty((len(values), n), dtype=np.int64)
    for j in range(n):
        out[:, j] = best = work.argmax(axis=1)
        work[rows, best] = -np.inf
    return out


def _rank_order(values: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``chosen`` ([B, F] mask) filters of each row in rank order (value descending,
    ties by the lower index), one row after the other, and their count per row.

    The chosen values are packed to the left (at most the row's count of them, the rest
    padded with -inf) and sorted with NumPy's fast unstable sort; rows where two chosen
    values are equal (the sort might not keep their index order) are sorted again stably.
    """
    lengths = chosen.sum(axis=1)
    n_images, width = values.shape
    m = int(lengths.max(initial=0))
    if m == 0:
        return np.zeros(0, dtype=np.int64), lengths
    # packed[b, j]: the j-th chosen filter of row b in index order
    packed = np.full((n_images, m), width, dtype=np.int64)
    rows, cols = np.nonzero(chosen)
    slot = np.arange(len(cols)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    packed[rows, slot] = cols
    keys = np.full((n_images, m), np.inf)
    keys[rows, slot] = -values[rows, cols]
    order = np.argsort(keys, axis=1)
    sorted_keys = np.take_along_axis(keys, order, axis=1)
    tied = ((sorted_keys[:, 1:] == sorted_keys[:, :-1]) & np.isfinite(sorted_keys[:, 1:])).any(axis=1)
    if tied.any():
        order[tied] = np.argsort(keys[tied], axis=1, kind="stable")
    ranked = np.take_along_axis(packed, order, axis=1)
    return ranked[np.arange(m)[None, :] < lengths[:, None]], lengths


def _active_batch(
    values: np.ndarray, order: np.ndarray | None, setting: TagSetting, layer: str
) -> tuple[np.ndarray, np.ndarray]:
    """Every image's active filters of one layer, without a loop over images.

    Args:
        values: [B, F] filter values.
        order: ``order_filters(values)`` if already computed, else ``None`` (the
            active filters are then ranked without sorting whole rows).
        setting, layer: the selection rule, and the layer's name for messages.

    Returns:
        ``(filters, lengths)``: the images' active sets one after the other, each in
        rank order, equal to :func:`active_filters` image by image.
    """
    n_images, width = values.shape
    n = setting.count(width, layer)
    if n is not None:
        if order is None and n <= _FEW:
            return _top_n(values, n).reshape(-1), np.full(n_images, n, dtype=np.int64)
        order = order_filters(values) if order is None else order
        return order[:, :n].reshape(-1), np.full(n_images, n, dtype=np.int64)
    mean = values.mean(axis=1)
    # the pairwise mean is within a few ulps of the correctly rounded one: rows with a value
    # that close to it take active_filters' exact fsum mean, so no value counts by rounding luck
    spread = np.abs(values).max(axis=1, initial=0.0)
    near = np.abs(values - mean[:, None]).min(axis=1, initial=np.inf) <= 1e-9 * spread
    for b in np.flatnonzero(near):
        mean[b] = math.fsum(values[b].tolist()) / width
    above = values > mean[:, None]
    if order is None:
        return _rank_order(values, above)
    ranked = np.take_along_axis(above, order, axis=1)
    return order[ranked], ranked.sum(axis=1)


def explain_batch_arrays(
    values: Sequence[np.ndarray],
    incidence: Sequence[np.ndarray],
    setting: TagSetting,
    layer_names: Sequence[str],
    *,
    weights: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """The explanations of a batch of images as whole-batch arrays (see :func:`explain_batch`).

    Returns:
        ``active``: per layer, ``(filters, lengths)`` (the images' active sets
        one after the other, each in rank order); ``votes`` / ``counts``: [B, C]
        over all layers; ``votes_last`` / ``counts_last``: [B, C], last layer alone.
    """
    n_images = values[0].shape[0] if values else 0
    n_classes = incidence[0].shape[1] if incidence else 0
    active = []
    counts = np.zeros((n_images, n_classes))
    # unweighted votes are the counts: one array serves both
    votes = counts if weights is None else np.zeros((n_images, n_classes))
    last_v = last_c = counts
    for li, (v, inc, name) in enumerate(zip(values, incidence, layer_names)):
        cols, lengths = _active_batch(np.asarray(v, dtype=np.float64), None, setting, name)
        rows = np.repeat(np.arange(n_images), lengths)
        c = _segment_votes(inc, rows, cols, lengths, None)
        counts += c
        lv = c
        if weights is not None:
            lv = _segment_votes(inc, rows, cols, lengths, weights[li][rows, cols])
            votes += lv
        active.append((cols, lengths))
        if li == len(values) - 1:
            last_v, last_c = lv, c
    return {"active": active, "votes": votes, "counts": counts, "votes_last": last_v, "counts_last": last_c}


_TAG_LISTS: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}


def _tag_lists(inc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``inc`` ([F, C], 0/1) as lists: filter f's classes are ``tagged[indptr[f]:indptr[f + 1]]``.

    Made once per matrix (kept while the matrix lives; a tag matrix is not changed
    after it is built), so each batch costs only its active filters' tags.
    """
    import weakref

    key = id(inc)
    hit = _TAG_LISTS.get(key)
    if hit is not None and hit[0]() is inc:
        return hit[1], hit[2]
    filters, tagged = np.nonzero(inc)
    indptr = np.zeros(inc.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(filters, minlength=inc.shape[0]), out=indptr[1:])
    ref = weakref.ref(inc, lambda _, key=key: _TAG_LISTS.pop(key, None))
    _TAG_LISTS[key] = (ref, indptr, tagged)
    return indptr, tagged


def _segment_votes(
    inc: np.ndarray, rows: np.ndarray, cols: np.ndarray, lengths: np.ndarray, weight: np.ndarray | None
) -> np.ndarray:
    """[B, C] votes: per image, the (weighted) sum of its active filters' rows of ``inc``.

    Sparse tags (top-k, top-percent tagging): count the (image, class) pairs of the
    active filters' tags. Few active filters with dense tags: gather their rows and
    sum each image's run. Many (above-average): one [B, F] x [F, C] product is
    cheaper than gathering half the matrix per image.
    """
    n_images, (n_filters, n_classes) = len(lengths), inc.shape
    indptr, tagged = _tag_lists(inc)
    per = indptr[cols + 1] - indptr[cols]  # tags of each active filter
    pairs = int(per.sum())
    if pairs * 8 <= len(cols) * n_classes:
        # sparse tags (top-k, top-percent): one bincount over the (image, class) pairs
        starts = np.cumsum(per) - per
        picked = tagged[np.repeat(indptr[cols] - starts, per) + np.arange(pairs)]
        flat = np.repeat(rows, per) * n_classes + picked
        w = None if weight is None else np.repeat(weight, per)
        out = np.bincount(flat, weights=w, minlength=n_images * n_classes)
        return out.reshape(n_images, n_classes).astype(np.float64, copy=False)
    if len(cols) * 4 >= n_images * n_filters:
        # counts are sums of ones: exact in float32 (below 2**24), twice as fast as float64;
        # torch's product (same BLAS kind) kept its speed on a loaded machine, NumPy's did not
        dtype = np.float32 if weight is None else np.float64
        mark = np.zeros((n_images, n_filters), dtype=dtype)
        mark[rows, cols] = 1.0 if weight is None else weight
        product = torch.from_numpy(mark) @ torch.from_numpy(inc.astype(dtype, copy=False))
        return product.numpy().astype(np.float64)
    if n_images and len(cols) == n_images * int(lengths[0]) and (lengths == lengths[0]).all():
        # top-k and top-percent: the same count per image, so a reshape replaces reduceat
        picked = inc[cols] if weight is None else inc[cols] * weight[:, None]
        return picked.reshape(n_images, int(lengths[0]), n_classes).sum(axis=1, dtype=np.float64)
    out = np.zeros((n_images, n_classes))
    if len(cols):
        picked = inc[cols] if weight is None else inc[cols] * weight[:, None]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        some = lengths > 0
        out[some] = np.add.reduceat(picked, starts[some], axis=0)
    return out


@dataclass
class Explained:
    """The explanations of one batch under one setting, compact and on the host.

    Computed by :func:`explain_tensors` where the filter values are (on the device),
    so the host receives only what the rows hold: the active filters (no [B, F]
    matrix) and the nonzero votes as sparse (class, count) pairs (no [B, C] matrix).

    Attributes:
        filters: the active filters of all images one after the other: per image,
            layer by layer, each layer's in rank order (index within its layer).
        values / weights: their values (and gradcam weights, else ``None``), float64.
        lengths: [B, L] how many active filters each image has per layer.
        count_offsets, count_classes, counts: per image ``counts[count_offsets[b]:
            count_offsets[b + 1]]`` votes (unweighted) for classes ``count_classes[...]``
            (profile order), nonzero ones only, classes ascending.
        votes: weighted only: the weighted votes at the same (image, class) pairs.
        last_offsets, last_classes, last: the last layer's nonzero counts (or, weighted,
            nonzero weighted votes) in the same sparse form.
        prediction / prediction_last: per image the class index with most votes (ties:
            the lowest index), -1 where no class has a vote.
    """

    filters: np.ndarray
    values: np.ndarray
    weights: np.ndarray | None
    lengths: np.ndarray
    count_offsets: np.ndarray
    count_classes: np.ndarray
    counts: np.ndarray
    votes: np.ndarray | None
    last_offsets: np.ndarray
    last_classes: np.ndarray
    last: np.ndarray
    prediction: np.ndarray
    prediction_last: np.ndarray


def _sparse_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the nonzero entries of [B, C] ``matrix``, row by row."""
    nz = (matrix != 0).nonzero()
    return nz[:, 0], nz[:, 1]


def _offsets_of(rows: torch.Tensor, n_rows: int) -> np.ndarray:
    out = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(torch.bincount(rows, minlength=n_rows).cpu().numpy(), out=out[1:])
    return out


def _predict(votes: torch.Tensor) -> torch.Tensor:
    """Per row, the class with most votes (ties: the lowest index; ``argmax`` returns the
    first maximum), or -1 where no class has a positive vote."""
    if votes.shape[1] == 0:
        return torch.full((votes.shape[0],), -1, dtype=torch.int64, device=votes.device)
    return torch.where(votes.amax(dim=1) > 0, votes.argmax(dim=1), -1)


def explain_tensors(
    values: torch.Tensor,
    widths: Sequence[int],
    incidence: Sequence[np.ndarray],
    setting: TagSetting,
    layer_names: Sequence[str],
    *,
    weights: torch.Tensor | None = None,
    backend: str | None = None,
) -> Explained:
    """Explain a batch where its filter values are, returning only what its rows hold.

    Two implementations give the same :class:`Explained`: ``"torch"`` (the default for
    values on a GPU) computes active filters and votes on the values' device and
    copies only the active filters and the sparse votes to the host; ``"numpy"``
    (the default on the CPU, where it is faster) is :func:`explain_batch_arrays`.

    Args:
        values: [B, sum F] float64 filter values, layers side by side.
        widths: the layers' widths (in ``values``' column order).
        incidence: per layer, the [F, C] 0/1 tag matrix of ``setting``.
        setting: the selection rule (the same as the tagging's).
        layer_names: the layers' names, for messages.
        weights: optional [B, sum F] weight of each filter's votes.
        backend: ``"torch"`` or ``"numpy"``; default: by the values' device.

    Returns:
        The batch's :class:`Explained`.
    """
    if (backend or ("numpy" if values.device.type == "cpu" else "torch")) == "numpy":
        splits = np.cumsum(widths)[:-1]
        per_layer = np.split(values.to(torch.float64).cpu().numpy(), splits, axis=1)
        w = None if weights is None else np.split(weights.to(torch.float64).cpu().numpy(), splits, axis=1)
        arr = explain_batch_arrays(per_layer, incidence, setting, layer_names, weights=w)
        return _compact(arr, per_layer, w)
    # weighted votes are summed in float64; counts (sums of ones) are exact in either type
    joined = joined_incidence(incidence, values.device, torch.float32 if weights is None else torch.float64)
    return _explain_torch(values, widths, joined, setting, layer_names, weights=weights)


def _sparse(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row offsets, column indices and values of the nonzero entries of [B, C] ``matrix``."""
    rows, cols = np.nonzero(matrix != 0)  # a boolean mask takes NumPy's fast path
    offsets = np.zeros(matrix.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=offsets[1:])
    return offsets, cols.astype(np.int32), matrix[rows, cols]


def _prediction_index(votes: np.ndarray) -> np.ndarray:
    """Per row, the class with most votes (ties: the lowest index), or -1 when none has any."""
    if not votes.shape[1]:
        return np.full(len(votes), -1, dtype=np.int64)
    return np.where(votes.max(axis=1) > 0, np.argmax(votes, axis=1), -1)


def _compact(
    arr: dict[str, Any], values: Sequence[np.ndarray], weights: Sequence[np.ndarray] | None
) -> Explained:
    """:func:`explain_batch_arrays`' result as an :class:`Explained`: each image's active
    filters of all layers one after the other, votes as sparse pairs."""
    active = arr["active"]
    n = len(arr["votes"])
    lengths = np.stack([ln for _, ln in active], axis=1) if active else np.zeros((n, 0), dtype=np.int64)
    row_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths.sum(axis=1), out=row_start[1:])
    layer_start = np.cumsum(lengths, axis=1) - lengths  # where each layer's run starts in its image's
    total = int(row_start[-1])
    flat_f = np.empty(total, dtype=np.int32)
    flat_v = np.empty(total, dtype=np.float64)
    flat_w = np.empty(total, dtype=np.float64) if weights is not None else None
    for li, (cols, ln) in enumerate(active):
        if not len(cols):
            continue
        rows = np.repeat(np.arange(n), ln)
        first = np.cumsum(ln) - ln
        pos = np.repeat(row_start[:-1] + layer_start[:, li] - first, ln) + np.arange(len(cols))
        flat_f[pos] = cols
        flat_v[pos] = values[li][rows, cols]
        if flat_w is not None:
            flat_w[pos] = weights[li][rows, cols]  # type: ignore[index]
    c_off, c_cls, c_val = _sparse(arr["counts"])
    weighted = weights is not None
    l_off, l_cls, l_val = _sparse(arr["votes_last"] if weighted else arr["counts_last"])
    return Explained(
        filters=flat_f, values=flat_v, weights=flat_w, lengths=lengths,
        count_offsets=c_off, count_classes=c_cls, counts=np.rint(c_val).astype(np.int32),
        votes=arr["votes"][np.repeat(np.arange(n), np.diff(c_off)), c_cls] if weighted else None,
        last_offsets=l_off, last_classes=l_cls, last=l_val.astype(np.float64),
        prediction=_prediction_index(arr["votes"]), prediction_last=_prediction_index(arr["votes_last"]),
    )


def _explain_torch(
    values: torch.Tensor,
    widths: Sequence[int],
    incidence: torch.Tensor,
    setting: TagSetting,
    layer_names: Sequence[str],
    *,
    weights: torch.Tensor | None = None,
) -> Explained:
    """:func:`explain_tensors` on the values' device (``incidence``: the [sum F, C] float32
    tag matrix of all layers there).

    Per layer, a stable sort of the negated values ranks the filters (value descending,
    ties by the lower index, as :func:`filtag_kg.tagging.order_filters`); the active set
    is a prefix of that ranking: the first ``n`` for top-k / top-percent, the values
    strictly above the layer's mean for above-average (rows with a value within a few
    ulps of the mean take the correctly rounded ``math.fsum`` mean, as
    :func:`filtag_kg.tagging.active_filters` does). Votes are one product of the
    [B, sum F] 0/1 mark of active filters with the tag matrix (float32: sums of ones
    are exact below 2**24; weighted votes in float64), and one of the last layer alone.
    """
    n_images, device = values.shape[0], values.device
    values = values.to(torch.float64)
    chunks = torch.split(values, list(widths), dim=1)
    ranked, order, first_n, means = [], [], [], {}
    for li, (v, width, name) in enumerate(zip(chunks, widths, layer_names)):
        neg, idx = torch.sort(-v, dim=1, stable=True)
        ranked.append(neg)
        order.append(idx)
        first_n.append(setting.count(width, name))
        if first_n[-1] is None:
            means[li] = v.mean(dim=1)
    if means:
        # the pairwise mean is within a few ulps of the correctly rounded one: rows with a
        # value that close to it take the fsum mean, so no value counts by rounding luck
        near = torch.stack([
            (chunks[li] - m[:, None]).abs().amin(dim=1) <= 1e-9 * chunks[li].abs().amax(dim=1)
            for li, m in means.items()
        ])
        for j, b in (near.nonzero().tolist() if bool(near.any()) else []):
            li = list(means)[j]
            row = chunks[li][b].cpu().tolist()
            means[li][b] = math.fsum(row) / len(row)
    masks = []
    for li, (neg, width) in enumerate(zip(ranked, widths)):
        if li in means:
            masks.append(neg < -means[li][:, None])  # value > mean, a prefix of the ranking
        else:
            masks.append((torch.arange(width, device=device) < first_n[li]).expand(n_images, width))
    mask = torch.cat(masks, dim=1)
    flat_order = torch.cat(order, dim=1)
    filters = flat_order[mask]
    flat_values = -torch.cat(ranked, dim=1)[mask]
    # the 0/1 mark of active filters in index order, in the tag matrix's type
    mark = torch.cat([torch.zeros_like(m, dtype=incidence.dtype).scatter_(1, o, m.to(incidence.dtype))
                      for m, o in zip(masks, order)], dim=1)
    last = sum(widths[:-1]) if widths else 0
    counts = mark @ incidence
    flat_weights = None
    if weights is not None:
        w = weights.to(torch.float64)
        wmark = mark * w
        votes = wmark @ incidence
        votes_last = wmark[:, last:] @ incidence[last:]
        starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
        flat_weights = torch.cat([w[:, s:s + o.shape[1]].gather(1, o) for s, o in zip(starts, order)],
                                 dim=1)[mask]
    else:
        votes, votes_last = counts, mark[:, last:] @ incidence[last:]
    rows, classes = _sparse_rows(counts)
    l_rows, l_classes = _sparse_rows(votes_last)
    lengths = torch.stack([m.sum(dim=1) for m in masks], dim=1) if masks else torch.zeros(
        (n_images, 0), dtype=torch.int64, device=device)

    def host(t: torch.Tensor) -> np.ndarray:
        return t.cpu().numpy()

    return Explained(
        filters=host(filters.to(torch.int32)),
        values=host(flat_values),
        weights=None if flat_weights is None else host(flat_weights),
        lengths=host(lengths),
        count_offsets=_offsets_of(rows, n_images),
        count_classes=host(classes.to(torch.int32)),
        counts=host(counts[rows, classes].to(torch.int32)),
        votes=None if weights is None else host(votes[rows, classes]),
        last_offsets=_offsets_of(l_rows, n_images),
        last_classes=host(l_classes.to(torch.int32)),
        last=host(votes_last[l_rows, l_classes].to(torch.float64)),
        prediction=host(_predict(votes)),
        prediction_last=host(_predict(votes_last)),
    )


_JOINED: dict[tuple[Any, ...], tuple[list[Any], torch.Tensor]] = {}


def joined_incidence(
    incidence: Sequence[np.ndarray], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The per-layer [F, C] tag matrices of one setting as one [sum F, C] tensor of ``dtype``
    on ``device``; made once per matrices, device and type (tag matrices are not changed
    after they are built), so each batch only multiplies."""
    import weakref

    key = (*(id(m) for m in incidence), str(device), str(dtype))
    hit = _JOINED.get(key)
    if hit is not None and all(r() is m for r, m in zip(hit[0], incidence)):
        return hit[1]
    joined = torch.from_numpy(np.concatenate([np.asarray(m, dtype=np.float32) for m in incidence])
                              if len(incidence) else np.zeros((0, 0), dtype=np.float32)).to(device, dtype)
    refs = [weakref.ref(m, lambda _, key=key: _JOINED.pop(key, None)) for m in incidence]
    _JOINED[key] = (refs, joined)
    return joined


def explain_batch(
    values: Sequence[np.ndarray],
    incidence: Sequence[np.ndarray],
    setting: TagSetting,
    layer_names: Sequence[str],
    *,
    weights: Sequence[np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """The explanations of a batch of images from their per-layer filter values.

    Votes are counted for the whole batch at once, per layer: the rows of the
    layer's [F, C] tag matrix that belong to each image's active filters,
    summed per image (weighted when ``weights`` are given). Counts are sums of
    ones, so they are exact whatever the order of summation.

    Args:
        values: per layer, the [B, F] filter values of the batch.
        incidence: per layer, the [F, C] tag matrix of ``setting``.
        setting: the selection rule (the same as the tagging's).
        layer_names: names of the layers, for messages.
        weights: per layer, an optional [B, F] weight for each filter's votes.

    Returns:
        Per image: ``active`` (per layer: indices in rank order), ``votes`` /
        ``counts`` ([C] arrays over all layers), ``votes_last`` /
        ``counts_last`` (last layer alone).
    """
    arr = explain_batch_arrays(values, incidence, setting, layer_names, weights=weights)
    splits = [np.split(cols, np.cumsum(lengths)[:-1]) for cols, lengths in arr["active"]]
    return [
        {"active": [per_layer[b] for per_layer in splits], "votes": arr["votes"][b],
         "counts": arr["counts"][b], "votes_last": arr["votes_last"][b], "counts_last": arr["counts_last"][b]}
        for b in range(len(arr["votes"]))
    ]


def explain_values(
    values: Sequence[np.ndarray],
    incidence: Sequence[np.ndarray],
    setting: TagSetting,
    layer_names: Sequence[str],
    *,
    weights: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """One image's explanation from its per-layer [F] filter values (see :func:`explain_batch`)."""
    return explain_batch(
        [np.asarray(v)[None] for v in values], incidence, setting, layer_names,
        weights=None if weights is None else [np.asarray(w)[None] for w in weights],
    )[0]


class _Sink:
    """Where explanation rows go: the run's file(s) alone, or, under ``torchrun``, one
    Arrow part file per rank that rank 0 merges into the run's files, in dataset order,
    at every synchronisation (so the run's files always hold a finished prefix)."""

    def __init__(
        self, run: Path, form: str, committed: int, dist: distributed.Dist, names: dict[str, Any],
        clusters: bool = False,
    ) -> None:
        from .explanations_io import JsonlLines, ParquetParts, names_metadata

        self.run, self.dist, self.form, self.clusters = run, dist, form, clusters
        self.value_type = "float32" if form == FORMAT_PARQUET else "float64"
        self.main: ParquetParts | JsonlLines | None = None
        if dist.main:
            self.main = (
                ParquetParts(run / EXPLANATIONS_DIR, committed, names_metadata(**names))
                if form == FORMAT_PARQUET
                else JsonlLines(run / EXPLANATIONS, committed, names)
            )
        self.local: list[Any] = []

    def _part_path(self, rank: int) -> Path:
        return self.run / f"explanations.part{rank:04d}.arrow"

    def write(self, batch: Any) -> None:
        if self.dist.active:
            self.local.append(batch)
        else:
            self.main.write(batch)  # type: ignore[union-attr]

    def synchronise(self) -> int | None:
        """Make every row written so far final; rank 0 gets the resume point (parts or bytes)."""
        if self.dist.active:
            import pyarrow as pa

            from .explanations_io import row_schema

            schema = row_schema(self.value_type, clusters=self.clusters)
            path = str(self._part_path(self.dist.rank))
            with pa.OSFile(path, "wb") as fh, pa.ipc.new_file(fh, schema) as w:
                for b in self.local:
                    w.write_batch(b)
            self.local = []
            self.dist.barrier()
            if self.main is not None:
                tables = []
                for rank in range(self.dist.world):
                    with pa.memory_map(str(self._part_path(rank))) as src:
                        t = pa.ipc.open_file(src).read_all()
                    n = t.num_rows
                    tables.append(t.append_column("_rank", pa.array(np.full(n, rank))).append_column(
                        "_seq", pa.array(np.arange(n))))
                merged = pa.concat_tables(tables).sort_by(
                    [("index", "ascending"), ("_rank", "ascending"), ("_seq", "ascending")]
                ).drop_columns(["_rank", "_seq"])
                for b in merged.combine_chunks().to_batches():
                    self.main.write(b)
            self.dist.barrier()
        return self.main.commit() if self.main is not None else None

    def close(self, *, remove_part: bool = False) -> None:
        if self.main is not None:
            self.main.close()
        if remove_part and self.dist.active:
            self._part_path(self.dist.rank).unlink(missing_ok=True)


class _HostWorker:
    """Runs each batch's host-side work (votes, encoding, writing) on one background
    thread, so it overlaps the next batch's forward pass.

    At most ``depth`` batches wait (their arrays are the only memory held); a failed
    job is raised in the pass's thread at the next :meth:`submit` or :meth:`drain`.
    :meth:`close` ends the thread, so nothing outlives the pass.
    """

    def __init__(self, depth: int = 2) -> None:
        import queue
        import threading

        self._jobs: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="filtag-explain-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:  # after a failure, later jobs are dropped
                    job()
            except BaseException as exc:  # raised in the pass's thread
                self._error = exc
            finally:
                self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait_for_room(self) -> None:
        """Block (interruptibly) until a job can be queued without waiting; only the pass's
        thread submits, so the room stays free for its next :meth:`submit`."""
        with self._jobs.not_full:
            while 0 < self._jobs.maxsize <= self._jobs._qsize():
                self._jobs.not_full.wait(0.1)

    def submit(self, job: Any) -> None:
        """Queue ``job`` (blocks while ``depth`` jobs wait)."""
        self._raise()
        self._jobs.put(job)

    def drain(self) -> None:
        """Wait until every queued job has run; raise the error of a failed one."""
        self._jobs.join()
        self._raise()

    def close(self) -> None:
        """End the thread after the queued jobs (errors are dropped: call drain first)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()


@contextlib.contextmanager
def _no_inplace(module: torch.nn.Module) -> Iterator[None]:
    """Turn off ``inplace`` on every submodule (gradients need the originals)."""
    changed = [m for m in module.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


def _model_top(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's top-5 (probabilities, class indices; fewer for fewer classes) of
    ``[B, C]`` logits: the one place its predicted class is chosen, so the class whose
    gradients weight the votes and clusters is the class the rows record as its top-1
    (``argmax`` and ``topk`` may order tied scores differently, on a GPU even from run
    to run)."""
    return torch.softmax(logits.detach().float(), dim=1).topk(min(5, logits.shape[1]), dim=1)


def _class_gradients(
    outputs: Sequence[torch.Tensor], logits: torch.Tensor, target: torch.Tensor | None = None
) -> list[torch.Tensor | None]:
    """Per measured point, d (each image's predicted class score) / d output (``None``
    where the score does not depend on it): one backward pass for all layers. ``target``:
    ``[B]`` class indices (default: :func:`_model_top`'s first)."""
    if target is None:
        target = _model_top(logits)[1][:, 0]
    score = logits.gather(1, target.view(-1, 1)).sum()
    try:
        return list(torch.autograd.grad(score, list(outputs), allow_unused=True))
    except RuntimeError as exc:
        raise FiltagError(
            f"gradients of the predicted class failed on this model ({str(exc).splitlines()[0][:160]}); "
            "explain without --weighting and --clusters"
        ) from None


def _gradcam_weights(
    outputs: Sequence[torch.Tensor], points: Sequence[Any], grads: Sequence[torch.Tensor | None]
) -> torch.Tensor:
    """[B, sum F] float64 on the device, per layer: relu(spatial mean of d score / d map *
    spatial mean of the map) (``grads``: :func:`_class_gradients`)."""
    out = []
    for o, g, p in zip(outputs, grads, points):
        act = o.detach() if p.apply is None else p.apply(o.detach())
        if g is None:
            out.append(torch.zeros(tuple(o.shape[:2]), dtype=torch.float64, device=o.device))
            continue
        w = (g.float().mean(dim=(2, 3)) * act.float().mean(dim=(2, 3))).clamp(min=0)
        out.append(w.double())
    return torch.cat(out, dim=1)


def _reusable_points(profile: Profile, loaded: Any, *, amp: str | None, grads: bool) -> list[Any] | None:
    """The profile's measure points rebuilt from its records, for a pass whose first batch
    can check them (an eager model, no autocast, no gradients); ``None``: find them with a
    dry run instead."""
    module = loaded.module
    if grads or amp not in (None, "off") or isinstance(module, torch.jit.ScriptModule):
        return None
    points = [point_from_record(lp.measure, layer=lp.name, width=lp.width) for lp in profile.layers]
    modules = dict(module.named_modules())
    if any(p is None or p.hook_module not in modules for p in points):
        return None
    return points


def _check_points(points: Sequence[Any], profile: Profile, expected: Sequence[Any] | None = None) -> None:
    """Raise unless ``points`` (found on this model) are where the profile measured (and,
    given ``expected``, the points the pass measured at: every field alike)."""
    if [p.describe() for p in points] != [lp.measured_at for lp in profile.layers] or (
        expected is not None and [p.record() for p in points] != [p.record() for p in expected]
    ):
        raise ProfileError("the model's measure points differ from the profile's; profile again")


def explain_dataset(
    run_dir: str | os.PathLike[str],
    imageset: ImageSet,
    options: ExplainOptions | None = None,
    *,
    profile: Profile | None = None,
    loaded: Any = None,
) -> dict[str, Any]:
    """Explain every image of ``imageset`` with the run's tags; write ``explanations.parquet/``
    (or ``explanations.jsonl``).

    Args:
        run_dir: a run folder with a profile.
        imageset: the images (folder, list or single files).
        options: see :class:`ExplainOptions`.
        profile: the run's profile (read from ``run_dir`` when omitted).
        loaded: the model (rebuilt from ``profile.json`` when omitted).

    Returns:
        The metadata also written to ``explanations.json``.

    Raises:
        ProfileError: no profile, or a state file without resume/restart.
        Interrupted: Ctrl-C (state saved for ``--resume``).
    """
    from .models import load_recorded_model

    opts = options or ExplainOptions()
    dist = distributed.current()
    run = ensure_writable_dir(run_dir)
    profile = profile or Profile.load(run)
    settings = list(dict.fromkeys(opts.settings or recorded_settings(run) or [TagSetting("top-k", 1)]))
    perturbs = [Perturbation.parse(p, seed=opts.seed) for p in opts.perturb]
    if opts.weighting not in (None, *WEIGHTINGS):
        raise FiltagError(f"unknown --weighting {opts.weighting!r}; use gradcam")
    copts = None if opts.clusters is None else opts.clusters.check()
    grads_needed = opts.weighting == "gradcam" or copts is not None
    loaded = loaded or load_recorded_model(profile.meta)
    device = resolve_device(opts.device, dist)
    names = [lp.name for lp in profile.layers]
    measure = "conv" if all(lp.measure.get("kind") == "conv" for lp in profile.layers) else "activation"
    dataset = ImageDataset(imageset.samples, loaded.preprocess.transform(), with_sha256=True,
                           max_pixels=imageset.max_pixels)
    # the profile's measure points, checked on the pass's first batch (recorded, see
    # RecordedPass) instead of a separate dry run, where the records rebuild them all and
    # that batch runs as the profile's dry run did (an eager model, full precision, no
    # gradients; one process, so a set in which nothing decodes is refused alike); else
    # a dry run finds them, as the profile pass did
    reused = None if dist.active else _reusable_points(profile, loaded, amp=opts.amp, grads=grads_needed)
    if reused is not None:
        from .models import select_layers

        select_layers(loaded.module, names)
        engine = Engine(loaded, reused, device, opts.amp)
    else:
        engine = Engine.build(
            loaded,
            first_good_image(imageset, dataset),
            layers=names,
            measure=measure,
            device=device,
            amp=opts.amp,
        )
        _check_points(engine.points, profile)
    index = TagIndex.build(profile, settings)
    model_ids = [c["id"] for c in profile.meta.get("model_classes") or []]
    model_labels = [c["label"] for c in profile.meta.get("model_classes") or []]
    pre = loaded.preprocess

    form = FORMAT_JSONL if opts.jsonl else FORMAT_PARQUET
    fingerprint = {
        "profile": profile.meta.get("fingerprint"),
        "data": imageset.fingerprint(),
        "settings": [str(s) for s in settings],
        "perturb": [p.record() for p in perturbs],
        "weighting": opts.weighting,
        "format": form,
        **({"value_bits": opts.value_bits} if opts.value_bits is not None else {}),
        # the precision the values, votes and gradients were computed in (absent when full:
        # fingerprints of earlier passes stay valid)
        **({"amp": opts.amp} if opts.amp not in (None, "off") else {}),
    }
    if copts is not None:  # absent without clusters: fingerprints of earlier passes stay valid
        fingerprint["clusters"] = copts.record()
    out_path = run / (EXPLANATIONS if form == FORMAT_JSONL else EXPLANATIONS_DIR)
    state_path = run / STATE
    # with reused points, --restart discards the interrupted pass (its state and rows) only
    # once the first batch's check passed: a refused restart leaves it resumable
    deferred_restart = opts.restart and reused is not None
    dist.barrier()
    if opts.restart and dist.main and not deferred_restart:  # the rows go with the new pass below
        state_path.unlink(missing_ok=True)
    dist.barrier()
    done, committed, skipped, started = 0, 0, [], _now()
    remove_stale = False  # a new pass with reused points: earlier rows go once its first batch passed
    if state_path.exists() and not deferred_restart:
        if not opts.resume:
            raise ProfileError(
                f"{run} holds an interrupted explanation pass ({STATE}); rerun with --resume to "
                "finish it, or --restart to discard it"
            )
        state = read_json_object(state_path, "discard the interrupted pass with --restart")
        if not {"fingerprint", "done", "committed", "skipped", "started_at"} <= state.keys():
            raise ProfileError(f"cannot read {state_path}: it is not an explanation pass's state; "
                               "discard the interrupted pass with --restart")
        if state["fingerprint"] != fingerprint:
            diff = fingerprint_diff(state["fingerprint"], fingerprint)
            raise ProfileError(
                f"the interrupted explanation pass in {run} used a different "
                f"{', '.join(diff)}; rerun with the same options, or --restart"
            )
        done, committed, skipped, started = (
            state["done"], state["committed"], state["skipped"], state["started_at"]
        )
    else:
        if opts.resume and (run / EXPLANATIONS_META).exists():
            meta = json_object_or_none(run / EXPLANATIONS_META)  # damaged: not finished, explain again
            if meta is not None and meta.get("fingerprint") == fingerprint:
                return meta  # already finished
        if dist.main and reused is not None:
            remove_stale = True
        elif dist.main:  # a new pass: the other form's rows would be stale
            _remove_outputs(run)
    dist.barrier()

    n = len(dataset)
    first = done
    workers = (
        opts.workers if opts.workers is not None else (0 if n - done < 512 else min(8, os.cpu_count() or 1))
    )
    sampler = RoundSampler(done, n, opts.batch_size, dist)
    loader = make_loader(dataset, batch_sampler=sampler, workers=workers, pin_memory=device.type == "cuda")
    names_doc = {"layers": names, "class_ids": list(profile.class_ids), "model_ids": model_ids,
                 "model_labels": model_labels}
    sinks: list[_Sink] = []

    def open_sink() -> _Sink:
        """The pass's sink, made on first use; with reused measure points that is after
        the first batch's check, so a refused pass leaves the run's earlier rows as they were."""
        if not sinks:
            if remove_stale:
                state_path.unlink(missing_ok=True)  # --restart: the interrupted pass goes now
                _remove_outputs(run)
            sinks.append(_Sink(run, form, committed, dist, names_doc, clusters=copts is not None))
        return sinks[0]

    if reused is None:
        open_sink()
    local_skipped: list[tuple[int, dict[str, str]]] = []
    from ._progress import progress

    bar = progress(total=n, initial=done, unit="img", desc="explain", enabled=opts.progress and dist.main,
                   leave=True)
    module = engine.module
    variants: list[Perturbation | None] = [None, *perturbs]
    t0 = time.perf_counter()
    worker = _HostWorker()

    def synchronise(save: bool) -> None:
        """Make rows and skipped files final on rank 0 (collective under torchrun)."""
        worker.drain()
        if copts is not None:  # the cluster maps before the rows (and state) that name them
            from .clusters import sync_maps

            sync_maps(run)
        committed = open_sink().synchronise()
        gathered = [x for part in dist.gather_objects(local_skipped) for x in part]
        with held_interrupt():  # moved, not copied, even if Ctrl-C comes now
            skipped.extend(entry for _, entry in sorted(gathered, key=lambda e: e[0]))
            local_skipped.clear()
        if save and dist.main:
            write_json(
                state_path,
                {"fingerprint": fingerprint, "done": done, "committed": committed, "skipped": skipped,
                 "started_at": started, "total": n},
            )

    cluster_inc: list[list[torch.Tensor]] = []  # per setting and layer, on the device

    def forward(
        x: torch.Tensor, probe: FilterProbe
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, Any] | None]:
        if grads_needed:
            with torch.enable_grad(), engine.autocast():
                x = x.detach().requires_grad_(True)
                logits = module(x)
                values = probe.take_flat()
                probs, top = _model_top(logits)
                grads = _class_gradients(probe.outputs, logits.float(), top[:, 0])
                weights = (_gradcam_weights(probe.outputs, engine.points, grads)
                           if opts.weighting == "gradcam" else None)
            clustered = None
            if copts is not None:  # one forward and one backward pass serve votes and clusters
                from .clusters import cluster_batch

                if not cluster_inc:
                    cluster_inc.extend([torch.from_numpy(m).to(values.device, torch.float64) for m in per]
                                       for per in index.incidence)
                with torch.no_grad():
                    acts = [o.detach() if p.apply is None else p.apply(o.detach())
                            for o, p in zip(probe.outputs, engine.points)]
                    clustered = cluster_batch(acts, grads, values, cluster_inc, copts)
            probe.outputs = [None] * len(probe.outputs)  # free the maps before the next batch
            return values, probs, top, weights, clustered
        if not sinks:  # reused points, unchecked: the first batch is the dry run, recorded
            with torch.no_grad(), RecordedPass(module) as recorded:
                logits = module(x)
            _check_points(recorded.points(names, measure=measure), profile, engine.points)
            open_sink()
            with torch.inference_mode():
                values = probe.take_flat()
                probs, top = _model_top(logits)
            return values, probs, top, None, None
        with torch.inference_mode(), engine.autocast():
            logits = module(x)
            values = probe.take_flat()
            probs, top = _model_top(logits)
        # the values stay on the device: the writer thread explains them there and copies
        # only the active filters and sparse votes to the host
        return values, probs, top, None, None

    # on a GPU the writer thread explains on its own stream, after an event the pass's thread
    # records once a batch's values and top-5 exist, so its copies to the host wait for that
    # batch only, never for the forward passes queued after it
    side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def host_work(info: dict[str, Any], results: list[tuple[Any, ...]], ready: Any,
                  clustered_results: list[dict[str, Any]]) -> None:
        """Votes, rows and writing of one batch (on the writer thread)."""
        ctx = contextlib.nullcontext()
        if side is not None:
            side.wait_event(ready)
            ctx = torch.cuda.stream(side)
        with ctx:
            host = None
            if copts is not None:
                from .clusters import to_host, write_maps

                host = [to_host(c) for c in clustered_results]
                for r, h in zip(results, host):
                    write_maps(run, h, info["indices"], info["sha256"], r[0])
            sink = open_sink()
            rows = encode_batch(info, results, settings, index.incidence, names,
                                weighting=opts.weighting, value_type=sink.value_type, widths=widths,
                                clusters=host, value_bits=opts.value_bits)
        sink.write(rows)

    widths = [p.width for p in engine.points]
    rounds = 0
    try:
        ctx = (
            _no_inplace(module)
            if grads_needed and not hasattr(module, "filtag_graph_probes")
            else contextlib.nullcontext()
        )
        with ctx, FilterProbe(module, engine.points, keep_outputs=grads_needed) as probe:
            for batch in loader:
                job = None
                if batch.images is not None:
                    x = engine.to_device(batch.images)
                    idx = batch.indices.tolist()
                    results, clustered_results = [], []
                    for var in variants:
                        xv = x if var is None else var.apply(x, idx, pre.mean, pre.std)
                        values, probs, top, weights, clustered = forward(xv, probe)
                        clustered_results.append(clustered)
                        # tensors: the writer thread copies them, so this thread never waits
                        results.append((None if var is None else var.record(), values, weights,
                                        probs, top))
                    samples = [imageset.samples[i] for i in idx]
                    info = {
                        "indices": idx,
                        "images": [sm.path for sm in samples],
                        "sha256": list(batch.sha256) if batch.sha256 else [None] * len(idx),
                        "true_classes": [
                            imageset.classes[sm.label].id if sm.label >= 0 else None for sm in samples
                        ],
                    }
                    ready = None
                    if side is not None:
                        ready = torch.cuda.Event()
                        ready.record()
                    def job(info=info, results=results, ready=ready, cl=clustered_results) -> None:
                        host_work(info, results, ready, cl)
                # the batch's rows, skipped files and count change together: Ctrl-C waits,
                # so the writer must have room first (a hung writer would swallow Ctrl-C)
                worker.wait_for_room()
                with held_interrupt():
                    local_skipped += [
                        (i, {"path": imageset.samples[i].path, "reason": why}) for i, why in batch.bad
                    ]
                    if job is not None:
                        worker.submit(job)
                    rounds += 1
                    new_done = sampler.done_after(rounds)
                    bar.update(new_done - done)
                    done = new_done
                # no checkpoint before the reused points' check opened the sink: it would
                # remove the earlier rows and save a state for an unchecked pass
                if opts.checkpoint_every and rounds % opts.checkpoint_every == 0 and done < n and sinks:
                    synchronise(save=True)
    except KeyboardInterrupt:
        bar.close()
        # alone, the rows so far are consistent: keep them (none yet while the reused
        # points await their check: the run stays as it was)
        if not dist.active and sinks:
            synchronise(save=True)
        worker.close()
        for sink in sinks:
            sink.close()
        if not sinks:  # nothing of this pass was kept
            raise Interrupted("interrupted before the first batch's check; the run is as it was, "
                              "rerun the same command") from None
        raise Interrupted(f"interrupted after {done} of {n} images; rerun with --resume to finish") from None
    except BaseException:
        worker.close()
        for sink in sinks:
            sink.close()
        raise
    bar.close()
    if not sinks:  # no batch of this pass decoded: a dry run checks the reused points, as before
        try:  # (refused where no file of the set decodes, resumed pass or not)
            found = find_measure_points(module, names, first_good_image(imageset, dataset).to(device),
                                        measure=measure)
            _check_points(found, profile, engine.points)
        except BaseException:
            worker.close()
            raise
    try:
        synchronise(save=False)
    finally:
        worker.close()
        for sink in sinks:
            sink.close(remove_part=True)
    dist.barrier()
    if dist.main:  # parts left by a killed run with more processes
        for stale in run.glob("explanations.part*.*"):
            stale.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    meta = {
        "format": "filtag-kg explanations",
        "format_version": 1,
        "file": out_path.name,
        "storage": form,
        "settings": [{"method": s.method, "param": s.param} for s in settings],
        "perturbations": [p.record() for p in perturbs],
        "weighting": opts.weighting,
        "clusters": None if copts is None else copts.record(),
        "value_bits": opts.value_bits,
        "model": profile.meta.get("model"),
        "layers": names,
        "dataset": {**imageset.record(), "skipped_count": len(skipped), "skipped": skipped},
        "images": n - len(skipped),
        "processes": dist.world,
        "fingerprint": fingerprint,
        "software": software_versions(),
        "started_at": started,
        "finished_at": _now(),
        "images_per_second": round((n - first) / seconds, 3) if seconds > 0 else None,
    }
    if dist.main:
        if copts is not None:  # before the metadata that marks the pass finished
            from .clusters import aggregate_records

            write_json(run / CLUSTERS_JSON, aggregate_records(iter_explanations(run)))
        write_json(run / EXPLANATIONS_META, meta)
        with contextlib.suppress(FileNotFoundError):
            state_path.unlink()
    dist.barrier()
    return meta


def _flat(values: Any) -> tuple[torch.Tensor, list[int]]:
    """A batch's filter values (or weights) as one [B, sum F] tensor and the layers' widths,
    from a flat tensor (widths then come from the caller) or per-layer [B, F] arrays."""
    if isinstance(values, torch.Tensor):
        return values, []
    arrays = [np.asarray(v, dtype=np.float64) for v in values]
    return torch.from_numpy(np.concatenate(arrays, axis=1)), [a.shape[1] for a in arrays]


def _numpy(x: Any) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def encode_batch(
    info: dict[str, Any],
    results: Sequence[tuple[Any, ...]],
    settings: Sequence[TagSetting],
    incidence: Sequence[Sequence[np.ndarray]],
    names: Sequence[str],
    *,
    weighting: str | None,
    value_type: str,
    widths: Sequence[int] | None = None,
    clusters: Sequence[dict[str, Any]] | None = None,
    value_bits: int | None = None,
) -> Any:
    """The work of one batch after the forward pass: active filters and votes (on the
    values' device, see :func:`explain_tensors`), then the rows of every input variant and
    setting, as one Arrow record batch in file order.

    Args:
        info: ``indices``, ``images``, ``sha256`` and ``true_classes`` of the batch.
        results: per input variant, ``(perturbation record or None, values, weights,
            top-5 probabilities, top-5 classes)``; values / weights either one
            [B, sum F] tensor (CPU or GPU; then ``widths`` gives the layers' widths) or
            per-layer [B, F] arrays; the top-5 as tensors or arrays.
        settings / incidence: the tagging settings and, per setting, the per-layer tag matrices.
        names: the layers' names.
        weighting: ``None`` or ``"gradcam"`` (recorded in each row).
        value_type: ``"float32"`` (Parquet) or ``"float64"`` (JSON Lines).
        widths: the layers' widths when values come as one tensor.
        clusters: ``explain --clusters``: per input variant, the host arrays of
            :func:`filtag_kg.clusters.to_host`.
        value_bits: values rounded to multiples of 2^-``value_bits`` (see :class:`ExplainOptions`).
    """
    return encode_explained(info, explain_results(results, settings, incidence, names, widths=widths),
                            weighting=weighting, value_type=value_type, clusters=clusters,
                            value_bits=value_bits)


def explain_results(
    results: Sequence[tuple[Any, ...]],
    settings: Sequence[TagSetting],
    incidence: Sequence[Sequence[np.ndarray]],
    names: Sequence[str],
    *,
    widths: Sequence[int] | None = None,
    backend: str | None = None,
) -> list[tuple[Any, np.ndarray, np.ndarray, TagSetting, Explained]]:
    """The first half of :func:`encode_batch`: per input variant and setting,
    ``(perturbation record, top-5 probabilities, top-5 classes, setting, Explained)``."""
    out = []
    with torch.inference_mode():
        for pert, values, weights, probs, top in results:
            flat, found = _flat(values)
            layer_widths = list(widths) if widths is not None else found
            w = None if weights is None else _flat(weights)[0]
            probs, top = _numpy(probs), _numpy(top)
            for s, inc in zip(settings, incidence):
                out.append((pert, probs, top, s,
                            explain_tensors(flat, layer_widths, inc, s, names, weights=w, backend=backend)))
    return out


def encode_explained(
    info: dict[str, Any], explained: Sequence[tuple[Any, ...]], *, weighting: str | None, value_type: str,
    clusters: Sequence[dict[str, Any]] | None = None,
    value_bits: int | None = None,
) -> Any:
    """The second half of :func:`encode_batch` (all the host does when a GPU explains):
    the rows of :func:`explain_results`' output as one record batch in file order
    (``explained`` holds every setting of the first variant, then of the next, ...)."""
    from .clusters import cluster_columns, variant_columns

    per_variant = len(explained) // len(clusters) if clusters else 0
    shared: Any = None  # the current variant's columns that no setting changes
    blocks = []
    for i, (pert, probs, top, s, ex) in enumerate(explained):
        cols = None
        if clusters:
            v = i // per_variant
            if i % per_variant == 0:  # the variant's first setting
                shared = variant_columns(clusters[v], info["indices"], info["sha256"], pert)
            cols = cluster_columns(clusters[v], i % per_variant, shared)
        blocks.append(encode_rows(**info, top_class=top, top_prob=probs, method=s.method, param=s.param_text,
                                  explained=ex, perturbation=pert, weighting=weighting, value_type=value_type,
                                  clusters=cols, value_bits=value_bits))
    return interleave(blocks)


def interleave(blocks: Sequence[Any]) -> Any:
    """One record batch of a batch's rows in file order: image by image, and for each
    image its blocks' rows in block order (blocks: one per variant and setting, B rows each)."""
    import pyarrow as pa

    if len(blocks) == 1:
        return blocks[0]
    n = blocks[0].num_rows
    table = pa.Table.from_batches(blocks)
    perm = (np.arange(len(blocks))[None, :] * n + np.arange(n)[:, None]).reshape(-1)
    return table.take(pa.array(perm)).combine_chunks().to_batches()[0]


def _remove_outputs(run: Path) -> None:
    """Delete the explanation rows of either form, and their cluster maps and aggregates."""
    import shutil

    (run / EXPLANATIONS).unlink(missing_ok=True)
    shutil.rmtree(run / EXPLANATIONS_DIR, ignore_errors=True)
    # explain --clusters: the maps and class aggregates belong to the rows
    shutil.rmtree(run / CLUSTERS_DIR, ignore_errors=True)
    (run / CLUSTERS_JSON).unlink(missing_ok=True)


def read_explanations(run_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Stream the explanations of a run, one dict per row, from ``explanations.parquet``
    or ``explanations.jsonl`` (see :func:`filtag_kg.explanations_io.iter_explanations`).

    Raises:
        ProfileError: the run has no explanations.
    """
    return iter_explanations(run_dir)


__all__ = [
    "EXPLANATIONS",
    "EXPLANATIONS_DIR",
    "ExplainOptions",
    "Perturbation",
    "TagIndex",
    "explain_dataset",
    "explain_batch",
    "explain_batch_arrays",
    "explain_results",
    "explain_tensors",
    "explain_values",
    "read_explanations",
    "recorded_settings",
]
