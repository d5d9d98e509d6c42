"""Clustered feature maps per image and layer, weighted by a generalised Grad-CAM and
labelled by FilTag tags (``filtag-kg explain --clusters``; method: docs/cluster-method.md).

The idea follows Bianchi et al. (arXiv 2405.03301): explain an image layer by layer by
grouping a layer's feature maps that look alike, merging each group into one saliency
map and weighting it by the gradient of the predicted class; FilTag's tags name what
each group sees. Everything per batch runs on the maps' device, all images of a batch
and one layer at once (:func:`cluster_layer`, :func:`cluster_concepts`); the host gets
compact arrays (:class:`LayerClusters`). :func:`class_aggregates` turns a finished
pass's records into per-class global explanations (``RUN_DIR/clusters.json``).
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cluster_atlas import Region, atlas_layout, map_ref
from .errors import FiltagError

CLUSTERS_DIR = "clusters"
CLUSTERS_JSON = "clusters.json"
MAPS_DIR = "clusters/maps"
#: how many concepts label a cluster at most
TOP_CONCEPTS = 5
#: how many top-weighted clusters per image and layer the class aggregates count
TOP_CLUSTERS = 3
#: how many concepts each class aggregate keeps
AGGREGATE_CONCEPTS = 20


class ClusterError(FiltagError):
    """A bad clustering parameter (``--cluster-threshold``, ``--cluster-maps``)."""


@dataclass(frozen=True)
class ClusterOptions:
    """Parameters of the clustering (docs/cluster-method.md).

    Attributes:
        threshold: cosine similarity (of min-max scaled maps) at or above which a map
            may link to a more important map, in (0, 1].
        maps: how many of each layer's top clusters (weight > 0) get a PNG map.
    """

    threshold: float = 0.5
    maps: int = 3

    @classmethod
    def parse(cls, threshold: str, maps: str) -> ClusterOptions:
        """Options from the CLI's text (``--cluster-threshold``, ``--cluster-maps``).

        Raises:
            ClusterError: not a number, or out of range.
        """
        try:
            t = float(threshold)
        except ValueError:
            raise ClusterError(f"--cluster-threshold {threshold!r} is not a number; use e.g. "
                               "--cluster-threshold 0.5") from None
        try:
            m = int(maps)
        except ValueError:
            raise ClusterError(f"--cluster-maps {maps!r} is not a whole number; use e.g. "
                               "--cluster-maps 3") from None
        return cls(t, m).check()

    def check(self) -> ClusterOptions:
        """Raise :class:`ClusterError` for a parameter outside its range; return self."""
        t = self.threshold
        if not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 < t <= 1:
            raise ClusterError(f"--cluster-threshold {t!r} is not in (0, 1]; use e.g. "
                               "--cluster-threshold 0.5")
        if not isinstance(self.maps, int) or self.maps < 0:
            raise ClusterError(f"--cluster-maps {self.maps!r} must be a whole number >= 0; use e.g. "
                               "--cluster-maps 3")
        return self

    def record(self) -> dict[str, Any]:
        """Plain-JSON form (fingerprint and ``explanations.json``)."""
        return {"threshold": float(self.threshold), "maps": self.maps, "top_clusters": TOP_CLUSTERS,
                "top_concepts": TOP_CONCEPTS}


@dataclass
class LayerClusters:
    """One layer's clusters of a batch of B images with F maps each (tensors on the device).

    Clusters are indexed by rank (0 = the first): slot ``k < count[b]`` of image b is
    its cluster of rank ``k + 1``; later slots are padding (size 0, weight 0).

    Attributes:
        members: [B, F] each image's filters grouped by cluster rank, ascending in a cluster.
        sizes: [B, F] members per cluster slot.
        weights: [B, F] float64 generalised Grad-CAM weight per cluster slot (>= 0).
        count: [B] clusters per image.
        rank_of: [B, F] the 0-based rank slot of each filter's cluster.
        alpha: [B, F] float64 spatial mean of each map's gradient.
        maps: [B, N, H, W] uint8 merged maps of the first N slots (255 = the map's
            maximum), ``None`` when N = 0.
        has_map: [B, N] bool: slot has weight > 0, so its map is written.
        slots: N as asked (``--cluster-maps``; ``maps`` has fewer slots in a layer with
            fewer filters): with ``size`` it fixes the layout of the maps' atlas.
        size: ``(H, W)`` of the layer's maps.
    """

    members: torch.Tensor
    sizes: torch.Tensor
    weights: torch.Tensor
    count: torch.Tensor
    rank_of: torch.Tensor
    alpha: torch.Tensor
    maps: torch.Tensor | None
    has_map: torch.Tensor | None
    slots: int = 0
    size: tuple[int, int] = (0, 0)


#: unit roundoff of float32 and float64
_U32 = 2.0**-24
_U64 = 2.0**-53


def _gamma(k: int, u: float) -> float:
    """Higham's gamma_k = k u / (1 - k u): the bound on the relative error of k roundings."""
    return k * u / (1 - k * u) if k * u < 1 else math.inf


def screen_bound(cells: int) -> float:
    """A bound on |float32 screen similarity - float64 similarity| of two maps of ``cells``
    cells (derivation: docs/cluster-method.md, "Precision and cost"): the screen is within
    gamma_(n+10) (float32) of the exact cosine, a float64 evaluation within gamma_(3n+32)
    (float64), n = ``cells``; plus n 2^-126 for float32 products that underflow."""
    return _gamma(cells + 10, _U32) + _gamma(3 * cells + 32, _U64) + cells * 2.0**-126


def float64_bound(cells: int) -> float:
    """A bound on |one float64 evaluation of a similarity - another| of two maps of ``cells``
    cells: each is within gamma_(3n+32) (float64) of the exact cosine (docs/cluster-method.md),
    plus n 2^-1022 for products that underflow."""
    return 2 * _gamma(3 * cells + 32, _U64) + cells * 2.0**-1022


def _screen_allowed(device: torch.device) -> bool:
    """The float32 screen's bound assumes float32 products rounded in float32; a matmul
    allowed to use TF32 or bfloat16 breaks it: set by ``torch.set_float32_matmul_precision``,
    by the per-backend ``fp32_precision`` settings of newer torch (mixing them with the
    former makes the getter raise), or by oneDNN's fast-math variable (an ARM server's
    bfloat16 setting). Then every similarity is computed in float64."""
    for var in ("ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE"):
        if os.environ.get(var, "strict").strip().lower() not in ("", "strict", "f32"):
            return False
    try:
        if torch.get_float32_matmul_precision() != "highest":
            return False
        b = torch.backends
        for level in (b, b.mkldnn, getattr(b.mkldnn, "matmul", None), b.cuda, b.cuda.matmul):
            if getattr(level, "fp32_precision", "none") not in ("none", "ieee"):
                return False
        return not (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:  # torch could not say
        return False


def _screen_units(
    rows: torch.Tensor, lo: torch.Tensor, inv: torch.Tensor, is_flat: torch.Tensor
) -> torch.Tensor:
    """[R, n] float32 unit vectors of the scaled maps' directions (zero for a flat map), from
    the maps as measured (``rows``, any float dtype; a fresh tensor this may overwrite), their
    minima ``lo`` and ``inv = 1 / |A - min A|`` (float64, :func:`_map_stats`) and ``is_flat``:
    ``D = A - min A`` (in float32 from half or float32 maps: one rounding, none when the
    difference is subnormal; in float64 from float64 maps) times ``inv`` rounded to float32.
    Each coordinate is within gamma_5 (float32) of the exact direction's
    (docs/cluster-method.md). The caller keeps every non-flat map's span within
    [2^-100, 2^100] (:func:`_screen_safe`), so no step overflows and ``inv`` is a normal float32."""
    count, cells = rows.shape
    if rows.dtype == torch.float64:
        out = torch.empty((count, cells), dtype=torch.float32, device=rows.device)
        step = _chunk_rows(rows.device, cells)
        for r0 in range(0, count, step):
            sl = slice(r0, r0 + step)
            out[sl] = rows[sl].sub_(lo[sl, None]).mul_(inv[sl, None])
    else:
        out = rows if rows.dtype == torch.float32 else rows.to(torch.float32)
        if bool((lo != 0).any()):  # after a ReLU most maps have minimum 0: no subtraction
            out.sub_(lo.to(torch.float32)[:, None])
        out.mul_(inv.to(torch.float32)[:, None])
    flat = is_flat.nonzero().squeeze(1)
    if len(flat):
        out.index_fill_(0, flat, 0.0)  # a map with a NaN is flat: its direction is zero too
    return out


def _screen_safe(lo: torch.Tensor, span: torch.Tensor, is_flat: torch.Tensor) -> bool:
    """Whether the screen's steps stay in float32's normal range for these maps: every
    non-flat map finite, with a span in [2^-100, 2^100] (activations are nowhere near;
    otherwise the layer's similarities are all float64)."""
    ok = is_flat | ((span >= 2.0**-100) & (span <= 2.0**100) & torch.isfinite(lo))
    return bool(ok.all())


#: float64 elements of the maps the per-map steps hold at once (2 MiB: they stay in the
#: cache, where whole layers in float64 would stream through memory several times)
_CHUNK = 1 << 18


def _chunk(device: torch.device) -> int:
    """:data:`_CHUNK` on a CPU; 16 times as many on a GPU, where each step is a kernel launch
    and the cache is not what bounds the work."""
    return _CHUNK if device.type == "cpu" else 16 * _CHUNK


def _chunk_rows(device: torch.device, row_elements: int) -> int:
    """How many rows of ``row_elements`` elements fit in one chunk (:func:`_chunk`), at least 1."""
    return max(1, _chunk(device) // max(row_elements, 1))


def _scaled_rows(rows: torch.Tensor, lo: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """Step 1 for some maps ([R, n] as measured, their minima and spans [R]): the float64
    scaled maps, ``(A - min A) / (max A - min A)``, a flat map (constant, or with a NaN:
    its span is not > 0) to zeros."""
    x = rows.to(torch.float64, copy=True).sub_(lo[:, None])
    spread = (span > 0)[:, None]
    return torch.where(spread, x.div_(torch.where(spread, span[:, None], 1.0)), 0.0)


def _unit_rows(rows: torch.Tensor, lo: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """Step 2's float64 unit maps of some maps ([R, n] as measured, their minima and spans
    [R]): each scaled map divided by its norm; a flat map's is zero, and so is a map's with
    an infinite span (it scales to NaN where it is infinite, and NaN similarities count as
    below T, as a zero vector's do). Both paths' float64 similarities come from these."""
    scaled = _scaled_rows(rows, lo, span)
    norm = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)
    unit = scaled.div_(torch.where(norm > 0, norm, 1.0))
    endless = (~torch.isfinite(span) & (span > 0)).nonzero().squeeze(1)
    if len(endless):
        unit.index_fill_(0, endless, 0.0)
    return unit


def _map_stats(
    rows: torch.Tensor, grads: torch.Tensor | None, norms: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per map ([N, n] as measured, gradients likewise or ``None``), in float64: mean,
    gradient mean, minimum, span and with ``norms`` the norm of ``A - min A``. Minima and
    maxima are elements of the maps (exact in any dtype); means and norms are float64 sums
    over a few thousand maps at a time (whose float64 copy stays in the cache)."""
    count, cells = rows.shape
    f64 = dict(dtype=torch.float64, device=rows.device)
    if not count or not cells:
        zero = torch.zeros(count, **f64)
        return zero, zero.clone(), zero.clone(), zero.clone(), zero.clone() if norms else None
    lo = rows.amin(dim=1).to(torch.float64)
    span = rows.amax(dim=1).to(torch.float64) - lo
    mean, alpha = torch.zeros(count, **f64), torch.zeros(count, **f64)
    norm = torch.zeros(count, **f64) if norms else None
    step = _chunk_rows(rows.device, cells)
    for r0 in range(0, count, step):
        sl = slice(r0, r0 + step)
        x = rows[sl].to(torch.float64, copy=True)  # a copy even of float64 maps: changed below
        mean[sl] = x.sum(dim=1)
        if norm is not None:
            norm[sl] = torch.linalg.vector_norm(x.sub_(lo[sl, None]), dim=1)
        if grads is not None:
            alpha[sl] = grads[sl].sum(dim=1, dtype=torch.float64)
    return mean.div_(cells), alpha.div_(cells), lo, span, norm


#: rows of the [B, rows, F] similarity blocks the screen computes one at a time (``None``:
#: :func:`_block_rows` chooses)
_BLOCK: int | None = None
#: the product size (images x rows x cells) near which a block's fixed cost (a few dozen
#: small operations) equals what its square above the diagonal wastes
_BLOCK_WORK = 1 << 26
#: columns per part when a block's row maxima are found in two steps (:func:`_row_top2`)
_PART = 32


def _block_rows(n: int, cells: int) -> int:
    """Rows per block of the screen's product for ``n`` images with maps of ``cells`` cells:
    each block computes a square above the diagonal for nothing (``rows / F`` of the
    triangle) and costs a few dozen small operations, so large maps (dear products) take
    small blocks and small maps large ones: ``sqrt(_BLOCK_WORK / (n cells))`` as a power of
    two in [32, 256] (64 for 56x56 maps in batches of 8, 256 for 7x7 or 14x14)."""
    if _BLOCK:
        return _BLOCK
    rows = math.sqrt(_BLOCK_WORK / (max(n, 1) * max(cells, 64)))
    return int(min(256, max(32, 2 ** round(math.log2(rows)))))


def _row_top2(blk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's largest value, its first position, and the largest value at any other
    position, of ``blk`` [B, R, C] (left as it was). A wide block is searched in two steps:
    the maxima of parts of ``_PART`` columns (a plain vectorised reduction), then the best
    part alone; a reduction that keeps positions is several times slower per element."""
    n, rows, cols = blk.shape
    if cols >= 16 * _PART and cols % _PART == 0:
        parts = blk.view(n, rows, cols // _PART, _PART)
        part_max = parts.amax(dim=3)
        m1, j = part_max.max(dim=2)  # ties: the first part
        others = part_max.scatter_(2, j[..., None], -math.inf).amax(dim=2)
        inside = parts.gather(2, j[:, :, None, None].expand(n, rows, 1, _PART)).squeeze(2)
        _, i = inside.max(dim=2)  # ties: the first position
        second = inside.scatter_(2, i[..., None], -math.inf).amax(dim=2)
        return m1, j * _PART + i, torch.maximum(others, second)
    m1, i = blk.max(dim=2)
    m2 = blk.scatter_(2, i[..., None], -math.inf).amax(dim=2)
    blk.scatter_(2, i[..., None], m1[..., None])
    return m1, i, m2


def _links_screened(
    rows: torch.Tensor, lo: torch.Tensor, span: torch.Tensor, unit_o: torch.Tensor, bound: float,
    order: torch.Tensor, is_flat: torch.Tensor, threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each map's link (step 4): ``(best, linked)``, [B, F] in importance order (the position
    of the map each map links to, and whether it links at all), from similarities within
    ``bound`` of the float64 ones, with every row they cannot decide decided by
    :func:`_recheck`'s float64 similarities (docs/cluster-method.md, "Precision and cost").

    Args:
        rows: [B * F, n] the maps as measured, lo / span: [B * F] their minima and spans;
        unit_o: [B, F, n] the maps' unit vectors in importance order (zero for a flat map):
            float32 for the screen, float64 without it; bound: their similarities' largest
            distance from :func:`_recheck`'s (:func:`screen_bound`, :func:`float64_bound`);
        order: [B, F] importance order; is_flat: [B, F] constant maps.
    """
    n, width = order.shape
    cells = rows.shape[1]
    device = rows.device
    low = threshold - bound
    # the vectors are in importance order, so that only the lower triangle of the product
    # is computed: row block [r0, r1) against the columns before r1
    pos = torch.arange(width, device=device).expand(n, width)
    flat_o = is_flat.gather(1, order)
    best = torch.empty((n, width), dtype=torch.long, device=device)
    linked = torch.empty((n, width), dtype=torch.bool, device=device)
    step = min(width, _block_rows(n, cells))
    work = torch.empty(n * step * width, dtype=unit_o.dtype, device=device)
    later = torch.zeros(step, step, dtype=unit_o.dtype, device=device).masked_fill_(
        torch.ones(step, step, dtype=torch.bool, device=device).triu(), -math.inf)
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (image, row, column) to recheck
    for r0 in range(0, width, step):
        r1 = min(width, r0 + step)
        blk = torch.bmm(unit_o[:, r0:r1], unit_o[:, :r1].transpose(1, 2),
                        out=work[:n * (r1 - r0) * r1].view(n, r1 - r0, r1))  # [B, r1 - r0, r1]
        blk[:, :, r0:].add_(later[:r1 - r0, :r1 - r0])  # -inf: a map and those after it
        m1, i, m2 = _row_top2(blk)
        # decided: no similarity can reach T, or one is surely >= T and no other can match it
        # (in the recheck's float64); compared in float64, so that no rounding of T +- bound to
        # float32 eats into the bound
        m1d, m2d = m1.to(torch.float64), m2.to(torch.float64)
        rival = torch.clamp(m1d - 2 * bound, min=low)  # a column below this cannot win in float64
        surely_none = m1d < low
        surely_best = (m1d >= threshold + bound) & (m2d < rival)
        best[:, r0:r1], linked[:, r0:r1] = i, ~surely_none
        unsure = ~(surely_none | surely_best | flat_o[:, r0:r1])
        if bool(unsure.any()):  # the columns that may win each undecided row, from this block
            b, r = unsure.nonzero(as_tuple=True)
            p, j = (blk[b, r].to(torch.float64) >= rival[b, r][:, None]).nonzero(as_tuple=True)
            pairs.append((b[p], r[p] + r0, j))
    del work
    # flat maps: exact 0 / 1 similarities, each links to the first flat map (ties: the earlier)
    first_flat = torch.where(flat_o, pos, width).amin(dim=1, keepdim=True)
    linked = torch.where(flat_o, pos > first_flat, linked)
    best = torch.where(flat_o, first_flat.expand(n, width), best)
    if pairs:
        b, r, j = (torch.cat(t) for t in zip(*pairs))
        _recheck(rows, lo, span, order, b, r, j, threshold, best, linked)
    return best, linked


def _recheck(
    maps: torch.Tensor, lo: torch.Tensor, span: torch.Tensor, order: torch.Tensor,
    b: torch.Tensor, r: torch.Tensor, j: torch.Tensor, threshold: float, best: torch.Tensor,
    linked: torch.Tensor,
) -> None:
    """Decide the screen's undecided rows in float64, in place: ``(b, r, j)`` are the pairs
    (image, row position, column position in importance order) whose float64 similarity
    may win their row, every row's best screen column among them; each row links to its
    most similar column at or above ``threshold`` in float64 (ties: the earlier), if any."""
    n, width = order.shape
    cells = maps.shape[1]
    device = maps.device
    # rows of the [B * F, n] maps: each pair's two maps, each map made a float64 unit map once
    # (as step 2 defines; a flat map's is zero, its similarity to the row's map 0)
    pair_maps = torch.cat([b * width + order[b, r], b * width + order[b, j]])
    used, at = torch.unique(pair_maps, return_inverse=True)
    unit = torch.empty((len(used), cells), dtype=torch.float64, device=device)
    step = _chunk_rows(device, cells)
    for c0 in range(0, len(used), step):
        f = used[c0:c0 + step]
        unit[c0:c0 + step] = _unit_rows(maps.index_select(0, f), lo[f], span[f])
    ia, ic = at[:len(b)], at[len(b):]
    s64 = torch.empty(len(b), dtype=torch.float64, device=device)
    for c0 in range(0, len(b), step):
        sl = slice(c0, c0 + step)
        s64[sl] = (unit.index_select(0, ia[sl]) * unit.index_select(0, ic[sl])).sum(dim=1)
    key = b * width + r
    cand = s64 >= threshold
    top = torch.full((n * width,), -math.inf, dtype=torch.float64, device=device)
    top.scatter_reduce_(0, key[cand], s64[cand], reduce="amax")
    win = cand & (s64 == top[key])
    first = torch.full((n * width,), width, dtype=torch.long, device=device)
    first.scatter_reduce_(0, key[win], j[win], reduce="amin")  # ties: the earlier map
    rows = torch.unique(key)
    has = top[rows] > -math.inf
    linked.view(-1)[rows] = has
    best.view(-1)[rows] = torch.where(has, first[rows], best.view(-1)[rows])


def cluster_layer(
    acts: torch.Tensor, grads: torch.Tensor | None, threshold: float, n_maps: int = 0,
    screen: bool | None = None,
) -> LayerClusters:
    """Cluster one layer's maps of a batch (docs/cluster-method.md, steps 1-5).

    Args:
        acts: [B, F, H, W] the maps as measured (after the nonlinearity).
        grads: [B, F, H, W] gradient of each image's predicted class score with respect
            to the maps (``None``: zero, e.g. a layer the score does not depend on).
        threshold: the cosine similarity a link needs, in (0, 1].
        n_maps: merged maps for the first ``n_maps`` rank slots.
        screen: the links from a float32 screen with a float64 recheck of the rows it
            cannot decide (the same links, cheaper) or from float64 similarities of every
            pair; ``None``: the screen unless the float32 matmul precision is lowered.
    """
    n, width = acts.shape[:2]
    device = acts.device
    cells = math.prod(acts.shape[2:])
    measured = acts.detach().reshape(n * width, cells)  # with the screen, float64 a few maps at a time
    if screen is None:
        screen = _screen_allowed(device)
    flat_grads = None if grads is None else grads.detach().reshape(n * width, cells)
    screen = bool(screen and width and cells)
    mean, alpha, lo, span, norm = _map_stats(measured, flat_grads, norms=screen)
    raw_mean, alpha = mean.view(n, width), alpha.view(n, width)
    # importance order: alpha * mean map descending, ties by the lower filter index
    order = torch.sort(-(alpha * raw_mean), dim=1, stable=True).indices
    is_flat = ~(span > 0).view(n, width)  # constant maps (and maps with a NaN) scale to all zeros
    pos = torch.arange(width, device=device).expand(n, width)
    unit_o = None
    at = (torch.arange(n, device=device)[:, None] * width + order).reshape(-1)  # maps in importance order
    flat1 = is_flat.reshape(-1)
    spread = ~flat1
    if norm is not None and _screen_safe(lo, span, flat1):  # norm: with the screen only
        inv = torch.where(spread, 1.0 / torch.where(spread, norm, 1.0), 0.0)
        unit_o = _screen_units(measured.index_select(0, at), lo[at], inv[at], flat1[at])
        unit_o = unit_o.view(n, width, cells)
        best, linked = _links_screened(measured, lo, span, unit_o, screen_bound(cells), order, is_flat,
                                       threshold)
    elif width and cells:  # every similarity in float64, close calls decided as the screen's are
        unit64 = _unit_rows(measured.index_select(0, at), lo[at], span[at]).view(n, width, cells)
        best, linked = _links_screened(measured, lo, span, unit64, float64_bound(cells), order, is_flat,
                                       threshold)
        del unit64
    else:
        best, linked = pos, torch.zeros_like(is_flat)
    root = torch.where(linked, best, pos)
    for _ in range(max(1, math.ceil(math.log2(max(width, 2)))) + 1):  # pointer jumping to the tree roots
        root = root.gather(1, root)
    # each filter's cluster, named by its root filter's index
    leader = torch.empty_like(order).scatter_(1, order, order.gather(1, root))
    weight = torch.zeros_like(alpha).scatter_add_(1, leader, alpha).clamp(min=0)
    weight = torch.where(is_flat, 0.0, weight)  # the cluster of constant maps has no spatial content
    is_root = leader == torch.arange(width, device=device)[None, :]
    # rank: weight descending, ties by the smallest member (a cluster's smallest member is found by
    # scatter amin); non-roots last
    smallest = torch.full_like(leader, width).scatter_reduce_(1, leader, pos.clone(), reduce="amin")
    key_w = torch.where(is_root, weight, -1.0)
    by_small = torch.sort(smallest, dim=1, stable=True).indices
    by_weight = torch.sort(-key_w.gather(1, by_small), dim=1, stable=True).indices
    ranked_roots = by_small.gather(1, by_weight)  # [B, F] root filter of each rank slot
    rank_of_root = torch.empty_like(ranked_roots).scatter_(1, ranked_roots, pos.clone())
    rank_of = rank_of_root.gather(1, leader)
    count = is_root.sum(dim=1)
    members = torch.sort(rank_of * width + pos, dim=1).indices  # by rank, then filter index
    sizes = torch.zeros_like(leader).scatter_add_(1, rank_of, torch.ones_like(leader))
    slot_weight = torch.zeros_like(weight).scatter_(1, rank_of, weight.gather(1, leader))
    maps = has_map = None
    k = min(n_maps, width)
    if k > 0:
        if unit_o is not None:  # the screen's unit vectors times |A - min A| / span are the scaled maps
            scale = torch.where(spread, norm / torch.where(spread, span, 1.0), 0.0).view(n, width)
            merged = _merged_unit_maps(unit_o, scale.gather(1, order), rank_of.gather(1, order), k)
        else:
            merged = _merged_maps(measured, lo, span, rank_of, k)
        merged = merged / sizes[:, :k, None].clamp(min=1)
        top = merged.amax(dim=2, keepdim=True)
        png = torch.where(top > 0, merged / torch.where(top > 0, top, 1.0), 0.0)
        maps = torch.round(png * 255).to(torch.uint8).view(n, k, *acts.shape[2:])
        has_map = (slot_weight[:, :k] > 0) & (top.squeeze(2) > 0)
    size = (int(acts.shape[2]), int(acts.shape[3])) if acts.dim() == 4 else (1, cells)
    return LayerClusters(members=members, sizes=sizes, weights=slot_weight, count=count, rank_of=rank_of,
                         alpha=alpha, maps=maps, has_map=has_map, slots=max(0, int(n_maps)), size=size)


def _merged_maps(
    maps: torch.Tensor, lo: torch.Tensor, span: torch.Tensor, rank_of: torch.Tensor, k: int
) -> torch.Tensor:
    """[B, k, n] float64 sums of the scaled maps of each image's first k rank slots (maps
    [B * F, n] as measured, lo / span [B * F]): per group of images, the maps less their
    minima in float64 times a [k, F] matrix holding ``1 / span`` where a filter is in the
    slot (0 for a flat map), a product instead of a scaling and a scatter of every map."""
    n, width = rank_of.shape
    cells = maps.shape[1]
    device = maps.device
    inv = torch.where(span > 0, 1.0 / torch.where(span > 0, span, 1.0), 0.0)
    weight = (rank_of[:, None, :] == torch.arange(k, device=device)[None, :, None]) * inv.view(n, 1, width)
    out = torch.empty((n, k, cells), dtype=torch.float64, device=device)
    group = _chunk_rows(device, width * cells)
    for b0 in range(0, n, group):
        b1 = min(n, b0 + group)
        rows = maps[b0 * width:b1 * width].to(torch.float64, copy=True).sub_(lo[b0 * width:b1 * width, None])
        # a map of weight 0 (flat, possibly with a NaN; or an infinite span) must not carry a NaN
        # or an infinity into the other maps' sums through 0 x inf
        dead = (inv[b0 * width:b1 * width] == 0).nonzero().squeeze(1)
        if len(dead):
            rows.index_fill_(0, dead, 0.0)
        torch.bmm(weight[b0:b1], rows.view(b1 - b0, width, cells), out=out[b0:b1])
    # step 1 scales a map with an infinite span to NaN where it is infinite: its slot has no map
    endless = ((span > 0) & ~torch.isfinite(span)).view(n, width) & (rank_of < k)
    if bool(endless.any()):
        b, f = endless.nonzero(as_tuple=True)
        out[b, rank_of[b, f]] = math.nan
    return out


def _merged_unit_maps(
    unit_o: torch.Tensor, scale_o: torch.Tensor, rank_o: torch.Tensor, k: int
) -> torch.Tensor:
    """[B, k, n] float64 sums of the scaled maps of each image's first k rank slots, from the
    screen's float32 unit vectors in importance order (``unit_o`` [B, F, n]), each map's
    ``|A - min A| / span`` and rank slot in that order ([B, F]): one float32 product (the
    map's grey levels, docs/cluster-method.md step 5)."""
    slot = torch.arange(k, device=unit_o.device)[None, :, None]
    weight = (rank_o[:, None, :] == slot) * scale_o.to(torch.float32)[:, None, :]
    return torch.bmm(weight, unit_o).to(torch.float64)


def cluster_concepts(
    lc: LayerClusters, values: torch.Tensor, incidence: torch.Tensor, top: int = TOP_CONCEPTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cluster's labels under one tagging setting (docs/cluster-method.md, step 6).

    Args:
        lc: the layer's clusters.
        values: [B, F] the filters' FilTag values.
        incidence: [F, C] float64 0/1 tag matrix of the setting on the same device.
        top: at most this many concepts per cluster.

    Returns:
        ``(classes, scores)``, both [B, F, top] by rank slot: class indices (profile
        order) and scores, best first (ties: the lower class index); a score of 0
        marks no concept.
    """
    f_idx, c_idx, tag = _tagged_pairs(incidence)
    return _concepts(lc.rank_of, lc.alpha, lc.weights, values, f_idx, c_idx, tag, incidence.shape[1], top)


#: each tag matrix's (filter, class, weight) triples, computed once per matrix (the pass
#: labels every batch with the same matrices): id -> (weak reference, version, triples)
_PAIRS: dict[int, tuple[Any, int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}


def _tagged_pairs(incidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tagged (filter, class) pairs of a tag matrix, row-major (ascending filter), and
    their entries; kept while the matrix lives and is unchanged."""
    key = id(incidence)
    got = _PAIRS.get(key)
    if got is not None and got[0]() is incidence and got[1] == incidence._version:
        return got[2]
    f_idx, c_idx = incidence.nonzero(as_tuple=True)
    pairs = (f_idx, c_idx, incidence[f_idx, c_idx])
    ref = weakref.ref(incidence, lambda r, k=key: _PAIRS.pop(k) if _PAIRS.get(k, (None,))[0] is r else None)
    _PAIRS[key] = (ref, incidence._version, pairs)
    return pairs


def _concepts(
    rank_of: torch.Tensor, alpha: torch.Tensor, weights: torch.Tensor, values: torch.Tensor,
    f_idx: torch.Tensor, c_idx: torch.Tensor, tag: torch.Tensor, n_classes: int, top: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cluster_concepts` on the clusters' arrays ([B, F] rank slot of each filter,
    gradient weights, slot weights; the [B, F] values) and the tagged pairs; F may span
    several layers side by side (slots numbered apart), as :func:`cluster_batch` labels
    a whole batch in one go."""
    n, width = rank_of.shape
    device = rank_of.device
    g = alpha.clamp(min=0) * values.to(torch.float64)
    den = torch.zeros_like(g).scatter_add_(1, rank_of, g)
    k = min(top, n_classes)
    # only the tagged (filter, class) pairs carry mass: sum g f x incidence over each slot's
    # members per class, filter by filter in ascending order (as a dense scatter would); a
    # pair without mass, or in a cluster of weight 0, cannot give a concept, so it is left out
    slot = rank_of[:, f_idx]  # [B, nnz]
    mass = g[:, f_idx] * tag[None, :]
    group = torch.arange(n, device=device)[:, None] * width + slot  # (image, rank slot)
    carries = (mass > 0) & (weights.reshape(-1)[group] > 0) & torch.isfinite(den.reshape(-1)[group])
    group = group[carries]
    key = group * n_classes + c_idx[None, :].expand(n, -1)[carries]
    keys, where = torch.unique(key, return_inverse=True)  # sorted: by group, then class
    num = torch.zeros(len(keys), dtype=torch.float64, device=device).scatter_add_(0, where, mass[carries])
    grp, cls = keys // n_classes, keys % n_classes
    score = num / den.reshape(-1)[grp]  # > 0: the cluster's g sum holds this mass
    # best first, ties by the lower class: stable sorts by score, then by group
    by_score = torch.sort(-score, stable=True).indices
    by_group = by_score[torch.sort(grp[by_score], stable=True).indices]
    grp, cls, score = grp[by_group], cls[by_group], score[by_group]
    starts = torch.searchsorted(grp, grp, right=False)
    rank = torch.arange(len(grp), device=device) - starts
    top_k = rank < k
    # places without a concept hold class 0 and score 0
    classes = torch.zeros((n * width, k), dtype=torch.long, device=device)
    scores = torch.zeros((n * width, k), dtype=torch.float64, device=device)
    classes[grp[top_k], rank[top_k]] = cls[top_k]
    scores[grp[top_k], rank[top_k]] = score[top_k]
    return classes.view(n, width, k), scores.view(n, width, k)


def batch_concepts(
    layers: Sequence[LayerClusters], values: torch.Tensor, incidence: Sequence[torch.Tensor],
    top: int = TOP_CONCEPTS,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`cluster_concepts` of every layer of a batch under one setting, computed in one
    go (the layers side by side, each layer's rank slots and filters numbered after the
    previous layers'): the same result, without a few dozen small operations per layer.

    Args:
        layers: the batch's clusters per layer.
        values: [B, sum F] the filters' FilTag values, layers side by side.
        incidence: per layer, the [F, C] float64 tag matrix (the same C for all).
    """
    if not layers:
        return []
    widths = [lc.rank_of.shape[1] for lc in layers]
    bases = [sum(widths[:i]) for i in range(len(widths))]
    pairs = [_tagged_pairs(inc) for inc in incidence]
    f_idx = torch.cat([f + base for (f, _, _), base in zip(pairs, bases)])
    c_idx = torch.cat([c for _, c, _ in pairs])
    tag = torch.cat([t for _, _, t in pairs])
    rank_of = torch.cat([lc.rank_of + base for lc, base in zip(layers, bases)], dim=1)
    alpha = torch.cat([lc.alpha for lc in layers], dim=1)
    weights = torch.cat([lc.weights for lc in layers], dim=1)
    classes, scores = _concepts(rank_of, alpha, weights, values.to(rank_of.device), f_idx, c_idx, tag,
                                incidence[0].shape[1], top)
    return list(zip(torch.split(classes, widths, dim=1), torch.split(scores, widths, dim=1)))


def variant_name(perturbation: dict[str, Any] | None, index: int) -> str:
    """The folder of an input variant's maps: ``clean``, ``blur-2.0``, or for noise, which
    is drawn from the seed and the image's position in the dataset (two copies of one file
    get different noise), e.g. ``gaussian-0.1-seed0-index17``. The parameter is written
    exactly (``repr``), so parameters that differ in the 7th digit get their own folder."""
    if not perturbation:
        return "clean"
    name = f"{perturbation['kind']}-{float(perturbation['param'])!r}"
    if perturbation["kind"] == "blur":  # a function of the pixels alone
        return name
    return f"{name}-seed{perturbation.get('seed', 0)}-index{index}"


def map_path(sha256: str | None, index: int, perturbation: dict[str, Any] | None) -> str:
    """The path of an image variant's map atlas (all its cluster maps in one PNG, see
    :mod:`filtag_kg.cluster_atlas`) relative to the run folder: by the file's checksum, so
    copies of one file share their clean and blurred maps (they are the same)."""
    image = sha256 or f"index-{index}"
    return f"{MAPS_DIR}/{image}/{variant_name(perturbation, index)}.png"


def sync_maps(run: Path) -> None:
    """Make the maps written so far durable: one flush of the run folder's file system."""
    from ._io import sync_filesystem

    sync_filesystem(run)  # the maps are on the run folder's file system


def cluster_batch(
    acts: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor | None],
    values: torch.Tensor,
    incidence: Sequence[Sequence[torch.Tensor]],
    options: ClusterOptions,
) -> dict[str, Any]:
    """A batch's clusters of every layer and their labels under every setting, on the device.

    Args:
        acts / grads: per layer, the [B, F, H, W] maps and their gradients.
        values: [B, sum F] the filters' FilTag values, layers side by side.
        incidence: per setting, per layer, the [F, C] float64 tag matrix on the device.
        options: threshold and how many maps per layer.

    Returns:
        ``{"layers": [LayerClusters per layer], "concepts": [per setting, per layer
        (classes, scores)]}`` (tensors; :func:`to_host` copies them).
    """
    layers = [cluster_layer(a, g, options.threshold, options.maps) for a, g in zip(acts, grads)]
    concepts = [batch_concepts(layers, values, per_setting) for per_setting in incidence]
    return {"layers": layers, "concepts": concepts}


def to_host(batch: dict[str, Any]) -> dict[str, Any]:
    """:func:`cluster_batch`'s tensors as NumPy arrays, with the atlas layout and the slots of
    the maps to write (worked out once: the atlases and the rows' map references share them)."""

    def np_(t: torch.Tensor | None) -> Any:
        return None if t is None else t.cpu().numpy()

    layers = [{"members": np_(lc.members), "sizes": np_(lc.sizes), "weights": np_(lc.weights),
               "count": np_(lc.count), "maps": np_(lc.maps), "has_map": np_(lc.has_map), "slots": lc.slots,
               "size": lc.size}
              for lc in batch["layers"]]
    concepts = [[(np_(c), np_(s)) for c, s in per_setting] for per_setting in batch["concepts"]]
    return {"layers": layers, "concepts": concepts, "layout": _host_layout(layers),
            "map_slots": _map_slots(layers)}


def _map_slots(layers: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """``(image, layer, rank slot)`` of every map to write, image by image, layer by layer."""
    out = []
    for li, h in enumerate(layers):
        if h["has_map"] is not None:
            for b, k in zip(*np.nonzero(h["has_map"])):
                out.append((int(b), li, int(k)))
    return sorted(out)


def _host_layout(layers: list[dict[str, Any]]) -> tuple[int, int, list[list[Region]]]:
    """The atlas layout of a batch's maps (:func:`filtag_kg.cluster_atlas.atlas_layout`):
    from the layers' map shapes and the number of map slots alone."""
    slots = max((int(h["slots"]) for h in layers), default=0)
    return atlas_layout([tuple(h["size"]) for h in layers], slots)


def atlases(host: dict[str, Any]) -> dict[int, np.ndarray]:
    """Image -> its ``[height, width]`` uint8 atlas: each map at its slot's region, 0
    elsewhere; images without any map are left out (they get no file)."""
    width, height, regions = host["layout"]
    out: dict[int, np.ndarray] = {}
    for b, li, k in host["map_slots"]:
        atlas = out.get(b)
        if atlas is None:
            atlas = out[b] = np.zeros((height, width), dtype=np.uint8)
        r = regions[li][k]
        atlas[r.y:r.y + r.h, r.x:r.x + r.w] = host["layers"][li]["maps"][b, k]
    return out


def write_maps(
    run: Path, host: dict[str, Any], indices: Sequence[int], sha256: Sequence[str | None],
    perturbation: dict[str, Any] | None,
) -> None:
    """Write the map atlases of one input variant of a batch, one PNG per image (its maps
    of every layer; none for an image without a map), each atomically (no half file after
    a crash) and without an fsync per file: the pass calls :func:`sync_maps` once before
    its state names the rows that refer to them."""
    from PIL import Image

    from ._io import write_png

    for b, atlas in atlases(host).items():  # zlib level 1: 0.6x the time of the default, 1.1x the bytes
        write_png(run / map_path(sha256[b], indices[b], perturbation), Image.fromarray(atlas, mode="L"),
                  durable=False, compress_level=1)


def variant_columns(
    host: dict[str, Any], indices: Sequence[int], sha256: Sequence[str | None],
    perturbation: dict[str, Any] | None,
) -> tuple[dict[str, tuple[np.ndarray, Any]], np.ndarray]:
    """The stored columns of one input variant of a batch that are the same under every
    setting (layers, clusters, weights, members, maps), and the [B, sum F] mask of the
    rank slots that hold a cluster: made once per variant, :func:`cluster_columns` adds
    each setting's labels."""
    layers = host["layers"]
    n = len(indices)
    counts = np.stack([h["count"] for h in layers], axis=1).astype(np.int64)  # [B, L]
    valid = np.concatenate([np.arange(h["sizes"].shape[1])[None, :] < h["count"][:, None] for h in layers],
                           axis=1)  # [B, sum F]: rank slots that hold a cluster
    sizes = np.concatenate([h["sizes"] for h in layers], axis=1)
    weights = np.concatenate([h["weights"] for h in layers], axis=1)
    members = np.concatenate([h["members"] for h in layers], axis=1)
    c_off = _offsets(valid.sum(axis=1))
    paths: list[str | None] = [None] * int(c_off[-1])
    first_slot = np.concatenate([[0], np.cumsum([h["sizes"].shape[1] for h in layers])[:-1]])
    flat_pos = np.cumsum(valid.reshape(-1)).reshape(valid.shape) - 1  # slot -> position among clusters
    regions = host["layout"][2]
    files = {b: map_path(sha256[b], indices[b], perturbation) for b in range(n)}
    for b, li, k in host["map_slots"]:
        paths[int(flat_pos[b, first_slot[li] + k])] = map_ref(files[b], regions[li][k])
    return {
        "cluster_layer": (np.arange(n + 1, dtype=np.int64) * len(layers), counts.reshape(-1)),
        "cluster_size": (c_off, sizes[valid]),
        "cluster_filter": (np.arange(n + 1, dtype=np.int64) * members.shape[1], members.reshape(-1)),
        "cluster_weight": (c_off, weights[valid]),
        "cluster_map": (c_off, paths),
    }, valid


def cluster_columns(
    host: dict[str, Any], setting: int, variant: tuple[dict[str, tuple[np.ndarray, Any]], np.ndarray]
) -> dict[str, tuple[np.ndarray, Any]]:
    """The stored columns of one input variant and setting of a batch: per column,
    ``(row offsets [B + 1], flat values)`` (see :mod:`filtag_kg.explanations_io`);
    ``variant``: the variant's :func:`variant_columns`."""
    columns, valid = variant
    classes = np.concatenate([c for c, _ in host["concepts"][setting]], axis=1)
    scores = np.concatenate([s for _, s in host["concepts"][setting]], axis=1)
    labelled = valid[:, :, None] & (scores > 0)
    l_off = _offsets(labelled.sum(axis=(1, 2)))
    return {
        **columns,
        "cluster_concepts": (columns["cluster_size"][0], labelled.sum(axis=2)[valid]),
        "cluster_concept": (l_off, classes[labelled]),
        "cluster_score": (l_off, scores[labelled]),
    }


def _offsets(per_row: np.ndarray) -> np.ndarray:
    """Row offsets [B + 1] of rows holding ``per_row`` values each."""
    out = np.zeros(len(per_row) + 1, dtype=np.int64)
    np.cumsum(per_row, out=out[1:])
    return out


def _setting(rec: dict[str, Any]) -> tuple[str, Any]:
    param = rec.get("param")
    if param not in (None, ""):
        try:
            num = float(param)
            param = int(num) if num.is_integer() else num
        except (TypeError, ValueError):
            pass
    else:
        param = None
    return rec["method"], param


def aggregate_records(records: Iterable[dict[str, Any]], top_clusters: int = TOP_CLUSTERS) -> dict[str, Any]:
    """Class-level aggregates of explanation records (docs/cluster-method.md, step 7).

    Only unperturbed records with clusters count. Per (setting, predicted class,
    layer): ``images``; per concept, ``count`` (images where it labels one of the
    image's ``top_clusters`` first clusters with weight > 0) and ``weight`` (sum over
    those clusters of cluster weight x concept score).
    """
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    layer_order: dict[str, int] = {}  # the profile's order, as the records list the layers
    for rec in records:
        clusters = rec.get("clusters")
        if clusters is None or rec.get("perturbation") is not None or not rec.get("model_top"):
            continue
        method, param = _setting(rec)
        predicted = rec["model_top"][0]["class_id"]
        for layer, cl in clusters.items():
            layer_order.setdefault(layer, len(layer_order))
            key = (method, "" if param is None else str(param), predicted, layer)
            g = groups.setdefault(key, {"setting": {"method": method, "param": param}, "class_id": predicted,
                                        "layer": layer, "images": 0, "_c": {}})
            g["images"] += 1
            seen: set[str] = set()
            for c in [c for c in cl if c["weight"] > 0][:top_clusters]:
                for con in c["concepts"]:
                    slot = g["_c"].setdefault(con["class_id"], [0, 0.0])
                    slot[1] += c["weight"] * con["score"]
                    if con["class_id"] not in seen:
                        seen.add(con["class_id"])
                        slot[0] += 1
    classes = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], layer_order[k[3]])):
        g = groups[key]
        concepts = sorted(g.pop("_c").items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))
        g["concepts"] = [{"class_id": c, "count": n, "weight": w}
                         for c, (n, w) in concepts[:AGGREGATE_CONCEPTS]]
        classes.append(g)
    return {"format": "filtag-kg cluster aggregates", "format_version": 1, "top_clusters": top_clusters,
            "classes": classes}


def class_aggregates(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The class-level aggregates of a run's clustered explanations (the content of
    ``RUN_DIR/clusters.json``; see :func:`aggregate_records`).

    Raises:
        ProfileError: the run has no explanations.
        ClusterError: its explanations were made without ``--clusters``.
    """
    from .explanations_io import EXPLANATIONS_META, iter_explanations
    from .runfolder import read_json_object

    run = Path(run_dir)
    meta_path = run / EXPLANATIONS_META
    fix = f"explain again with `filtag-kg explain {run} ... --clusters`"
    if meta_path.is_file() and not read_json_object(meta_path, fix).get("clusters"):
        raise ClusterError(f"the explanations in {run} were made without clusters; rerun "
                           f"`filtag-kg explain {run} ... --clusters`")
    return aggregate_records(iter_explanations(run))


__all__ = [
    "CLUSTERS_DIR",
    "CLUSTERS_JSON",
    "ClusterError",
    "ClusterOptions",
    "LayerClusters",
    "aggregate_records",
    "atlases",
    "class_aggregates",
    "cluster_columns",
    "cluster_concepts",
    "cluster_layer",
    "map_path",
    "sync_maps",
    "variant_columns",
    "variant_name",
    "write_maps",
]
