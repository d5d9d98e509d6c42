"""iGOS++ heatmaps, structured attention graphs (SAG) and deletion/insertion AUC.

``docs/saliency-method.md`` is the contract: every formula, order and default
here is stated there. All work is batched torch on the model's device; given
its parameters every result is deterministic (no noise, ties broken by index).

A *scorer* is any callable ``(images [n, 3, H, W], targets [n]) -> [n]`` giving
the probability of each image's target class; :func:`class_probability` makes
one from a classifier. The functions take a scorer rather than a model so a test
can pass a toy function whose answers are known by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FiltagError

__all__ = [
    "IgosOptions",
    "Sag",
    "SagOptions",
    "SaliencyError",
    "blur_baseline",
    "class_probability",
    "compose",
    "deletion_insertion",
    "gradcam",
    "igos",
    "igos_loss",
    "igos_step",
    "patch_masks",
    "region_positions",
    "sag",
]

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SaliencyError(FiltagError):
    """An iGOS++ or SAG parameter is invalid (a grid of 0, a threshold above 1, ...)."""


def class_probability(module: torch.nn.Module) -> Scorer:
    """A scorer: the softmax probability of each image's target class under ``module``."""

    def score(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = module(images).float()
        return torch.softmax(out, dim=1).gather(1, targets.view(-1, 1)).view(-1)

    return score


def _gauss_kernel(side: int, device: torch.device) -> torch.Tensor:
    width = max(3, 2 * int(round((51 * side / 224 - 1) / 2)) + 1)
    sigma = 50.0 * side / 224
    r = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    k = torch.exp(-(r**2) / (2 * sigma * sigma))
    return (k / k.sum()).float().to(device)


def blur_baseline(images: torch.Tensor) -> torch.Tensor:
    """The blurred baseline ``B`` of a batch [n, 3, H, W] (separable Gaussian, replicate
    padding; kernel and sigma scale with ``min(H, W)``: 51 and 50 at 224 px)."""
    n, ch, h, w = images.shape
    k = _gauss_kernel(min(h, w), images.device).to(images.dtype)
    pad = len(k) // 2
    x = images.reshape(n * ch, 1, h, w)
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(n, ch, h, w)


def compose(x: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``Phi(X, Y, U) = X * U + Y * (1 - U)`` with ``U`` [n, 1, H, W] broadcast over channels."""
    return x * u + y * (1 - u)


def _up(masks: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """[n, r, r] -> [n, 1, H, W], bilinear, align_corners=False."""
    m = masks.unsqueeze(1)
    if tuple(m.shape[-2:]) == tuple(hw):
        return m
    return F.interpolate(m, size=hw, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- iGOS++


@dataclass
class IgosOptions:
    """iGOS++ parameters (see the method page; * = the authors' published defaults).

    Attributes:
        size: mask resolution r* (capped at the image side).
        iterations: gradient steps*.
        ig_steps: points S on each integration path*.
        l1: weight of the size penalty*.
        tv: weight of the total-variation penalty*.
        alpha: first step size of the line search*.
    """

    size: int = 28
    iterations: int = 15
    ig_steps: int = 20
    l1: float = 1.0
    tv: float = 20.0
    alpha: float = 1000.0

    def check(self) -> None:
        """Raise :class:`SaliencyError` naming the first invalid parameter."""
        for name in ("size", "iterations", "ig_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise SaliencyError(f"invalid iGOS++ {name} {v!r}: use a whole number >= 1")
        for name in ("l1", "tv", "alpha"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise SaliencyError(f"invalid iGOS++ {name} {v!r}: use a number >= 0")


def _path_score(
    score: Scorer, x: torch.Tensor, y: torch.Tensor, k: torch.Tensor, targets: torch.Tensor, steps: int
) -> torch.Tensor:
    """``P(X, Y, K)``: mean target probability over ``Phi(X, Y, Up((s/S) K))``, s = 1..S. [n]."""
    n = x.shape[0]
    up = _up(k, tuple(x.shape[-2:]))  # Up is linear, so Up(s K) = s Up(K)
    scales = torch.arange(1, steps + 1, device=x.device, dtype=x.dtype) / steps
    u = (up.unsqueeze(1) * scales.view(1, -1, 1, 1, 1)).flatten(0, 1)
    imgs = compose(x.repeat_interleave(steps, 0), y.repeat_interleave(steps, 0), u)
    return score(imgs, targets.repeat_interleave(steps)).view(n, steps).mean(dim=1)


def _tv(m: torch.Tensor) -> torch.Tensor:
    a = (m[:, 1:, :] - m[:, :-1, :]).pow(2).flatten(1)
    b = (m[:, :, 1:] - m[:, :, :-1]).pow(2).flatten(1)
    zero = m.new_zeros(m.shape[0])
    return (a.mean(dim=1) if a.shape[1] else zero) + (b.mean(dim=1) if b.shape[1] else zero)


def igos_loss(
    score: Scorer,
    images: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor,
    dmask: torch.Tensor,
    nmask: torch.Tensor,
    options: IgosOptions,
) -> torch.Tensor:
    """The iGOS++ objective ``L(D, N)`` of each image ([n]); differentiable in the masks."""
    m = dmask * nmask
    s = options.ig_steps
    terms = (
        _path_score(score, images, baselines, m, targets, s)
        - _path_score(score, baselines, images, m, targets, s)
        + _path_score(score, images, baselines, dmask, targets, s)
        - _path_score(score, baselines, images, nmask, targets, s)
    )
    size = (1 - m).abs().flatten(1).mean(dim=1)
    return 0.5 * terms + options.l1 * size + options.tv * _tv(m)


def igos_step(
    score: Scorer,
    images: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor,
    dmask: torch.Tensor,
    nmask: torch.Tensor,
    options: IgosOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One iGOS++ iteration for a batch: integrated gradients, then a per-image Armijo
    line search (``alpha, 0.2 alpha, ...``), then the clipped step. Returns new (D, N)."""
    d = dmask.detach().requires_grad_(True)
    nm = nmask.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = igos_loss(score, images, baselines, targets, d, nm, options)
        gd, gn = torch.autograd.grad(loss.sum(), (d, nm))
    d, nm = d.detach(), nm.detach()
    n = d.shape[0]
    with torch.no_grad():
        base = loss.detach()
        gsq = gd.pow(2).flatten(1).sum(1) + gn.pow(2).flatten(1).sum(1)
        alphas = torch.full((n,), float(options.alpha), device=d.device, dtype=d.dtype)
        pending = torch.ones(n, dtype=torch.bool, device=d.device)
        while bool(pending.any()):
            idx = pending.nonzero().view(-1)
            a = alphas[idx].view(-1, 1, 1)
            nd = (d[idx] - a * gd[idx]).clamp(0, 1)
            nn_ = (nm[idx] - a * gn[idx]).clamp(0, 1)
            trial = igos_loss(score, images[idx], baselines[idx], targets[idx], nd, nn_, options)
            ok = trial <= base[idx] - 1e-4 * alphas[idx] * gsq[idx]
            done = ok | (alphas[idx] < 1e-5)
            pending[idx[done]] = False
            alphas[idx[~done]] *= 0.2
        a = alphas.view(-1, 1, 1)
        return (d - a * gd).clamp(0, 1), (nm - a * gn).clamp(0, 1)


def igos(
    score: Scorer,
    images: torch.Tensor,
    targets: torch.Tensor,
    options: IgosOptions | None = None,
    *,
    baselines: torch.Tensor | None = None,
) -> torch.Tensor:
    """iGOS++ heatmaps ``1 - D * N`` ([n, r, r], 1 = most salient) for a batch of inputs.

    Args:
        score: a scorer (:func:`class_probability`).
        images: model inputs [n, 3, H, W] on the model's device.
        targets: the class explained per image (usually the predicted one).
        options: see :class:`IgosOptions`.
        baselines: ``B`` per image; default :func:`blur_baseline` of ``images``.
    """
    opts = options or IgosOptions()
    opts.check()
    base = blur_baseline(images) if baselines is None else baselines
    r = min(opts.size, *images.shape[-2:])
    n = images.shape[0]
    d = torch.ones((n, r, r), device=images.device, dtype=images.dtype)
    nm = torch.ones_like(d)
    for _ in range(opts.iterations):
        d, nm = igos_step(score, images, base, targets, d, nm, opts)
    return 1 - d * nm


# ---------------------------------------------------------------- deletion / insertion AUC


def deletion_insertion(
    score: Scorer,
    images: torch.Tensor,
    targets: torch.Tensor,
    heatmaps: torch.Tensor,
    *,
    grid: int,
    baselines: torch.Tensor | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion AUC per image (method page, "Deletion and insertion AUC").

    Args:
        score: a scorer.
        images, targets: model inputs [n, 3, H, W] and the class per image.
        heatmaps: [n, h, w], any resolution (resized bilinearly to ``grid x grid``).
        grid: the evaluation grid's side.
        baselines: default the blurred images.
        batch_size: images per forward pass.

    Returns:
        ``(deletion_auc, insertion_auc)``, each [n] float64.
    """
    base = blur_baseline(images) if baselines is None else baselines
    n = images.shape[0]
    hm = heatmaps.to(images.device, torch.float32)
    if tuple(hm.shape[-2:]) != (grid, grid):
        hm = F.interpolate(hm.unsqueeze(1), size=(grid, grid), mode="bilinear", align_corners=False)[:, 0]
    cells = grid * grid
    order = torch.argsort(-hm.reshape(n, cells), dim=1, stable=True)
    step = max(1, cells // 50)
    counts = [min(k * step, cells) for k in range(math.ceil(cells / step) + 1)]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(cells, device=order.device).expand(n, cells))
    nk = torch.tensor(counts, device=images.device).view(1, -1, 1)
    z = (ranks.unsqueeze(1) >= nk).to(images.dtype).view(n * len(counts), grid, grid)  # 0 on the first n_k
    up = _up(z, tuple(images.shape[-2:]))
    rep_i = images.repeat_interleave(len(counts), 0)
    rep_b = base.repeat_interleave(len(counts), 0)
    rep_t = targets.repeat_interleave(len(counts))
    dels, inss = [], []
    with torch.no_grad():
        for s in range(0, len(up), batch_size):
            sl = slice(s, s + batch_size)
            dels.append(score(compose(rep_i[sl], rep_b[sl], up[sl]), rep_t[sl]))
            inss.append(score(compose(rep_b[sl], rep_i[sl], up[sl]), rep_t[sl]))
    x = np.asarray(counts, dtype=np.float64) / cells
    dc = torch.cat(dels).double().cpu().numpy().reshape(n, -1)
    ic = torch.cat(inss).double().cpu().numpy().reshape(n, -1)
    return _trapezoid(dc, x), _trapezoid(ic, x)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return ((y[:, 1:] + y[:, :-1]) * 0.5 * np.diff(x)[None, :]).sum(axis=1)


def gradcam(module: torch.nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps [n, h, w] at the output of submodule ``layer`` (a ``named_modules`` name):
    ``relu(sum_f w_f A_f)``, ``w_f`` the spatial mean of d logit / d A_f."""
    sub = dict(module.named_modules()).get(layer)
    if sub is None:
        raise SaliencyError(f"no module {layer!r} in the model; list them with filtag-kg layers")
    kept: list[torch.Tensor] = []
    handle = sub.register_forward_hook(lambda _m, _i, out: kept.append(out))
    training = module.training
    try:
        with torch.enable_grad():
            logits = module(images).float()
            act = kept[-1]
            g = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), act)[0]
    finally:
        handle.remove()
        module.train(training)
    w = g.float().mean(dim=(2, 3), keepdim=True)
    return torch.relu((w * act.detach().float()).sum(dim=1))


# ---------------------------------------------------------------- SAG


@dataclass
class SagOptions:
    """SAG parameters (see the method page).

    Attributes:
        grid: patches per side (the paper's 7).
        threshold: sufficient if p >= threshold * p(full image).
        beam: beam width.
        roots: at most this many roots.
        overlap: two roots share at most this many patches.
        max_size: largest patch set searched (``None``: grid * grid).
        depth: graph levels below the roots.
        max_nodes: nodes in the whole graph.
        batch_size: patch sets per forward pass.
    """

    grid: int = 7
    threshold: float = 0.9
    beam: int = 5
    roots: int = 3
    overlap: int = 1
    max_size: int | None = None
    depth: int = 2
    max_nodes: int = 30
    batch_size: int = 128

    def check(self) -> None:
        """Raise :class:`SaliencyError` naming the first invalid parameter."""
        for name, low in (
            ("grid", 1),
            ("beam", 1),
            ("roots", 1),
            ("overlap", 0),
            ("depth", 0),
            ("max_nodes", 1),
            ("batch_size", 1),
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise SaliencyError(
                    f"invalid SAG {name.replace('_', '-')} {v!r}: use a whole number >= {low}"
                )
        if self.max_size is not None and (not isinstance(self.max_size, int) or self.max_size < 1):
            raise SaliencyError(f"invalid SAG max-size {self.max_size!r}: use a whole number >= 1")
        if not (0 < float(self.threshold) <= 1):
            raise SaliencyError(f"invalid SAG threshold {self.threshold!r}: use a fraction in (0, 1]")


@dataclass
class Sag:
    """A structured attention graph of one image.

    Attributes:
        grid: patches per side.
        target: the explained output index.
        probability: p of the full image; ``baseline_probability``: p of the blurred one.
        nodes: ``(patches, probability)`` per node; roots first.
        roots: indices of the root nodes (minimal sufficient explanations).
        edges: ``(parent, child, removed patch)`` node indices.
        minimal: every minimal sufficient set found, ``(patches, probability)``.
        levels: the last search level (set size) evaluated.
        evaluated: patch sets evaluated (forward passes).
    """

    grid: int
    target: int
    probability: float
    baseline_probability: float
    nodes: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    roots: list[int] = field(default_factory=list)
    edges: list[tuple[int, int, int]] = field(default_factory=list)
    minimal: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    levels: int = 0
    evaluated: int = 0

    def record(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "grid": self.grid,
            "target": self.target,
            "probability": self.probability,
            "baseline_probability": self.baseline_probability,
            "nodes": [{"patches": list(p), "probability": q} for p, q in self.nodes],
            "roots": list(self.roots),
            "edges": [{"parent": a, "child": b, "removed": j} for a, b, j in self.edges],
            "minimal": [{"patches": list(p), "probability": q} for p, q in self.minimal],
            "levels": self.levels,
            "evaluated": self.evaluated,
        }


def _bounds(grid: int, side: int) -> list[int]:
    return [(i * side) // grid for i in range(grid + 1)]


def patch_masks(
    sets: Sequence[Sequence[int]], grid: int, hw: tuple[int, int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """0/1 image masks [n, 1, H, W], 1 on the patches of each set (row-major numbering)."""
    h, w = hw
    cells = torch.zeros((len(sets), grid * grid), device=device)
    for i, s in enumerate(sets):
        if len(s):
            cells[i, list(s)] = 1.0
    rows = torch.bucketize(
        torch.arange(h, device=device), torch.tensor(_bounds(grid, h)[1:-1], device=device), right=True
    )
    cols = torch.bucketize(
        torch.arange(w, device=device), torch.tensor(_bounds(grid, w)[1:-1], device=device), right=True
    )
    index = (rows.view(-1, 1) * grid + cols.view(1, -1)).view(-1)
    return cells[:, index].view(len(sets), 1, h, w)


def _key(item: tuple[tuple[int, ...], float]) -> tuple[float, tuple[int, ...]]:
    return (-item[1], item[0])


def _choose_roots(minimal: list[tuple[tuple[int, ...], float]], roots: int, overlap: int) -> list[int]:
    order = sorted(range(len(minimal)), key=lambda i: (len(minimal[i][0]), -minimal[i][1], minimal[i][0]))
    chosen: list[int] = []
    for i in order:
        s = set(minimal[i][0])
        if all(len(s & set(minimal[j][0])) <= overlap for j in chosen):
            chosen.append(i)
            if len(chosen) == roots:
                break
    return chosen


def sag(
    score: Scorer,
    image: torch.Tensor,
    target: int,
    options: SagOptions | None = None,
    *,
    baseline: torch.Tensor | None = None,
) -> Sag:
    """The structured attention graph of one model input [3, H, W] for class ``target``.

    Patch sets are evaluated in batches of ``options.batch_size`` on the image's
    device, each set once (a cache). See the method page for the search, the
    choice of roots and the graph.
    """
    opts = options or SagOptions()
    opts.check()
    hw = (int(image.shape[-2]), int(image.shape[-1]))
    if opts.grid > min(hw):
        raise SaliencyError(
            f"SAG grid {opts.grid} is finer than the {hw[0]}x{hw[1]} image; use a smaller --grid"
        )
    base = blur_baseline(image.unsqueeze(0))[0] if baseline is None else baseline
    n_cells = opts.grid * opts.grid
    max_size = min(opts.max_size or n_cells, n_cells)
    cache: dict[tuple[int, ...], float] = {}
    tgt = torch.tensor([target], device=image.device)

    def probs(sets: Sequence[tuple[int, ...]]) -> list[float]:
        todo = [s for s in dict.fromkeys(sets) if s not in cache]
        with torch.no_grad():
            for i in range(0, len(todo), opts.batch_size):
                part = todo[i : i + opts.batch_size]
                u = patch_masks(part, opts.grid, hw, image.device).to(image.dtype)
                x = compose(image.unsqueeze(0), base.unsqueeze(0), u)
                p = score(x, tgt.expand(len(part))).double().cpu().tolist()
                cache.update(zip(part, p))
        return [cache[s] for s in sets]

    full = probs([tuple(range(n_cells))])[0]  # every patch shown: the image itself
    empty = probs([()])[0]
    bar = opts.threshold * full
    beam: list[tuple[int, ...]] = [()]
    minimal: list[tuple[tuple[int, ...], float]] = []
    chosen: list[int] = []
    level = 0
    for level in range(1, max_size + 1):  # noqa: B007 (kept: the last level searched)
        cands = sorted({tuple(sorted((*s, j))) for s in beam for j in range(n_cells) if j not in s})
        ps = probs(cands)
        suff = [c for c, p in zip(cands, ps) if p >= bar]
        below = [tuple(c[:i] + c[i + 1 :]) for c in suff for i in range(len(c))]
        probs(below)
        for c, p in zip(cands, ps):
            if p >= bar and all(cache[c[:i] + c[i + 1 :]] < bar for i in range(len(c))):
                minimal.append((c, p))
        insuff = sorted(((c, p) for c, p in zip(cands, ps) if p < bar), key=_key)
        beam = [c for c, _ in insuff[: opts.beam]]
        chosen = _choose_roots(minimal, opts.roots, opts.overlap)
        if len(chosen) >= opts.roots or not beam:
            break
    out = Sag(
        opts.grid,
        int(target),
        full,
        float(empty),
        minimal=sorted(minimal, key=lambda m: (len(m[0]), _key(m))),
        levels=level,
    )
    index: dict[tuple[int, ...], int] = {}
    for i in chosen:
        index[minimal[i][0]] = len(out.nodes)
        out.roots.append(len(out.nodes))
        out.nodes.append(minimal[i])
    frontier = [minimal[i][0] for i in chosen]
    edges: set[tuple[int, int, int]] = set()
    for _ in range(opts.depth):
        children: dict[tuple[int, ...], list[tuple[tuple[int, ...], int]]] = {}
        for s in frontier:
            if len(s) > 1:
                for i, j in enumerate(s):
                    children.setdefault(s[:i] + s[i + 1 :], []).append((s, j))
        new = [c for c in children if c not in index]
        pn = probs(new)
        added = []
        for c, p in sorted(zip(new, pn), key=_key):
            if len(out.nodes) >= opts.max_nodes:
                break
            index[c] = len(out.nodes)
            out.nodes.append((c, p))
            added.append(c)
        for c, parents in children.items():
            if c in index:
                edges.update((index[s], index[c], j) for s, j in parents)
        frontier = added
    out.edges = sorted(edges)
    out.evaluated = len(cache)
    return out


def region_positions(
    patches: Sequence[int], grid: int, hw: tuple[int, int], map_hw: tuple[int, int]
) -> np.ndarray:
    """A [h, w] boolean mask of the map positions whose centre lies in one of ``patches``
    (nearest position to each patch centre when none does)."""
    h, w = map_hw
    big_h, big_w = hw
    rb, cb = _bounds(grid, big_h), _bounds(grid, big_w)
    ys = np.floor((np.arange(h) + 0.5) * big_h / h).astype(int)
    xs = np.floor((np.arange(w) + 0.5) * big_w / w).astype(int)
    prow = np.searchsorted(rb[1:-1], ys, side="right")
    pcol = np.searchsorted(cb[1:-1], xs, side="right")
    cell = prow[:, None] * grid + pcol[None, :]
    inside = np.isin(cell, np.asarray(list(patches), dtype=int))
    if not inside.any():
        for p in patches:
            i, j = divmod(int(p), grid)
            cy, cx = (rb[i] + rb[i + 1]) / 2, (cb[j] + cb[j + 1]) / 2
            inside[min(h - 1, int(cy * h / big_h)), min(w - 1, int(cx * w / big_w))] = True
    return inside
