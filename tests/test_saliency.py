"""iGOS++, SAG and deletion/insertion AUC against plain per-image implementations and
toy scorers whose answers are known by hand (docs/saliency-method.md)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import build_tiny

from filtag_kg import saliency as S


def _inputs(n: int = 3, side: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, 3, side, side), generator=torch.Generator().manual_seed(seed))


def _ref_path(model, x, y, k, t, steps):
    """P(X, Y, K) for one image, one path point at a time."""
    total = 0.0
    for s in range(1, steps + 1):
        u = F.interpolate(
            (s / steps * k)[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False
        )[0]
        img = x * u + y * (1 - u)
        total = total + torch.softmax(model(img[None]), dim=1)[0, t]
    return total / steps


def _ref_loss(model, x, b, t, d, n, o):
    m = d * n
    terms = (
        _ref_path(model, x, b, m, t, o.ig_steps)
        - _ref_path(model, b, x, m, t, o.ig_steps)
        + _ref_path(model, x, b, d, t, o.ig_steps)
        - _ref_path(model, b, x, n, t, o.ig_steps)
    )
    tv = ((m[1:] - m[:-1]) ** 2).mean() + ((m[:, 1:] - m[:, :-1]) ** 2).mean()
    return 0.5 * terms + o.l1 * (1 - m).abs().mean() + o.tv * tv


def _ref_step(model, x, b, t, d, n, o):
    """One iGOS++ iteration for one image, written out plainly."""
    d = d.clone().requires_grad_(True)
    n = n.clone().requires_grad_(True)
    loss = _ref_loss(model, x, b, t, d, n, o)
    gd, gn = torch.autograd.grad(loss, (d, n))
    gsq = float((gd**2).sum() + (gn**2).sum())
    a = o.alpha
    with torch.no_grad():
        while True:
            trial = _ref_loss(model, x, b, t, (d - a * gd).clamp(0, 1), (n - a * gn).clamp(0, 1), o)
            if float(trial) <= float(loss) - 1e-4 * a * gsq or a < 1e-5:
                break
            a *= 0.2
        return (d - a * gd).clamp(0, 1), (n - a * gn).clamp(0, 1)


def test_igos_step_batched_equals_a_per_image_loop(device: str) -> None:
    model = build_tiny()
    x = _inputs(3)
    b = S.blur_baseline(x)
    t = model(x).argmax(dim=1)
    o = S.IgosOptions(size=4, ig_steps=3, iterations=1)
    g = torch.Generator().manual_seed(1)
    d = torch.rand((3, 4, 4), generator=g)
    n = torch.rand((3, 4, 4), generator=g)
    dev = torch.device(device)
    score = S.class_probability(build_tiny().to(dev))
    bd, bn = S.igos_step(score, x.to(dev), b.to(dev), t.to(dev), d.to(dev), n.to(dev), o)
    bd, bn = bd.cpu(), bn.cpu()
    for i in range(3):
        rd, rn = _ref_step(model, x[i], b[i], int(t[i]), d[i], n[i], o)
        assert torch.allclose(bd[i], rd, atol=1e-5), i
        assert torch.allclose(bn[i], rn, atol=1e-5), i
    assert not torch.allclose(bd, d)  # the step moved the masks


def test_igos_marks_the_region_a_toy_scorer_depends_on() -> None:
    """The class lives only in the top-left quadrant: the heatmap must be highest there."""
    x = torch.ones((2, 3, 8, 8))
    base = torch.zeros_like(x)

    def score(imgs: torch.Tensor, _t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(12 * imgs[:, :, :4, :4].mean(dim=(1, 2, 3)) - 6)

    heat = S.igos(
        score,
        x,
        torch.zeros(2, dtype=torch.long),
        S.IgosOptions(size=4, iterations=8, ig_steps=4),
        baselines=base,
    )
    assert heat.shape == (2, 4, 4)
    assert float(heat.min()) >= 0 and float(heat.max()) <= 1
    top_left = heat[:, :2, :2].mean(dim=(1, 2))
    rest = (heat.sum(dim=(1, 2)) - heat[:, :2, :2].sum(dim=(1, 2))) / 12
    assert bool((top_left > 5 * rest).all()) and bool((top_left > 0.02).all())
    assert all(divmod(int(h.argmax()), 4)[0] < 2 and divmod(int(h.argmax()), 4)[1] < 2 for h in heat)
    again = S.igos(
        score,
        x,
        torch.zeros(2, dtype=torch.long),
        S.IgosOptions(size=4, iterations=8, ig_steps=4),
        baselines=base,
    )
    assert torch.equal(heat, again)  # deterministic


def test_blur_keeps_a_flat_image_and_smooths_an_edge() -> None:
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(S.blur_baseline(flat), flat, atol=1e-6)
    edge = torch.zeros((1, 3, 16, 16))
    edge[..., 8:] = 1
    b = S.blur_baseline(edge)
    assert 0.2 < float(b[0, 0, 0, 7]) < 0.8 and float(b[0, 0, 0, 0]) < float(b[0, 0, 0, 15])


def _pixel_score(imgs: torch.Tensor, _t: torch.Tensor) -> torch.Tensor:
    return imgs[:, 0, 0, 0]


@pytest.mark.parametrize(
    "best_first, deletion, insertion", [(True, 1 / 32, 31 / 32), (False, 31 / 32, 1 / 32)]
)
def test_deletion_insertion_auc_on_a_one_pixel_scorer(
    best_first: bool, deletion: float, insertion: float
) -> None:
    x = torch.ones((1, 3, 4, 4))
    heat = torch.arange(16, dtype=torch.float32).view(1, 4, 4)  # pixel (0, 0) least salient
    if best_first:
        heat = -heat
    d, i = S.deletion_insertion(
        _pixel_score, x, torch.zeros(1, dtype=torch.long), heat, grid=4, baselines=torch.zeros_like(x)
    )
    assert d[0] == pytest.approx(deletion)
    assert i[0] == pytest.approx(insertion)


def _toy_patch_scorer(grid: int, side: int, seed: int):
    """A scorer monotone in the shown patches: sigmoid(sum of shown patch weights - bias)."""
    w = torch.rand(grid * grid, generator=torch.Generator().manual_seed(seed)) + 0.2

    def score(imgs: torch.Tensor, _t: torch.Tensor) -> torch.Tensor:
        cells = F.adaptive_avg_pool2d(imgs[:, :1], grid).flatten(1)
        return torch.sigmoid(4 * (cells * w).sum(dim=1) - 2 * float(w.sum()) + 2)

    return score


def _exhaustive_minimal(score, image, base, grid, threshold):
    n = grid * grid
    hw = tuple(image.shape[-2:])

    def p(s):
        u = S.patch_masks([s], grid, hw)
        return float(score(S.compose(image[None], base[None], u), torch.zeros(1, dtype=torch.long))[0])

    full = p(tuple(range(n)))
    probs = {s: p(s) for k in range(n + 1) for s in itertools.combinations(range(n), k)}
    bar = threshold * full
    return {
        s: q
        for s, q in probs.items()
        if s and q >= bar and all(probs[s[:i] + s[i + 1 :]] < bar for i in range(len(s)))
    }


@pytest.mark.parametrize("grid, seed", [(2, 0), (3, 1), (3, 2)])
def test_sag_full_beam_finds_exactly_the_exhaustive_minimal_sets(grid: int, seed: int) -> None:
    side = 3 * grid
    image = torch.ones((3, side, side))
    base = torch.zeros_like(image)
    score = _toy_patch_scorer(grid, side, seed)
    want = _exhaustive_minimal(score, image, base, grid, 0.9)
    got = S.sag(score, image, 0, S.SagOptions(grid=grid, beam=200, roots=99, overlap=99), baseline=base)
    assert {m: pytest.approx(q) for m, q in want.items()} == dict(got.minimal)
    assert want  # the toy has something to find


@pytest.mark.parametrize("seed, threshold, grows", [(10, 0.9, False), (112, 0.99, True)])
def test_sag_on_the_tiny_model_matches_direct_forward_passes(
    seed: int, threshold: float, grows: bool
) -> None:
    """Seed 10 gives two single-patch roots (no edges); seed 112 at 0.99 one root of three
    patches with children and grandchildren, so the edges are checked too."""
    model = build_tiny()
    image = _inputs(1, side=12, seed=seed)[0]
    t = int(model(image[None]).argmax())
    opts = S.SagOptions(grid=3, beam=4, roots=2, overlap=1, depth=2, max_nodes=12, threshold=threshold)
    score = S.class_probability(model)
    g = S.sag(score, image, t, opts)
    assert g == S.sag(score, image, t, opts)  # deterministic
    base = S.blur_baseline(image[None])[0]

    def p(s):
        u = S.patch_masks([s], 3, (12, 12))
        with torch.no_grad():
            return float(torch.softmax(model(S.compose(image[None], base[None], u)), 1)[0, t])

    assert g.probability == pytest.approx(p(tuple(range(9))), abs=1e-6)
    assert 1 <= len(g.roots) <= 2 and len(g.nodes) <= 12
    for r in g.roots:
        patches, q = g.nodes[r]
        assert q == pytest.approx(p(patches), abs=1e-6) and q >= threshold * g.probability
        assert all(p(patches[:i] + patches[i + 1 :]) < threshold * g.probability for i in range(len(patches)))
    if len(g.roots) == 2:
        a, b = (set(g.nodes[r][0]) for r in g.roots)
        assert len(a & b) <= 1
    # every node one patch short of another (within the depth, below max_nodes) hangs from it
    sets = [frozenset(n[0]) for n in g.nodes]
    below = {(i, j) for i, a in enumerate(sets) for j, b in enumerate(sets) if b < a and len(a - b) == 1}
    assert {(parent, child) for parent, child, _ in g.edges} == below and bool(below) == grows
    for parent, child, removed in g.edges:
        assert set(g.nodes[parent][0]) - set(g.nodes[child][0]) == {removed}
        assert g.nodes[child][1] == pytest.approx(p(g.nodes[child][0]), abs=1e-6)


def test_sag_small_beam_finds_a_subset_of_the_full_search() -> None:
    model = build_tiny()
    image = _inputs(1, side=12, seed=10)[0]
    t = int(model(image[None]).argmax())
    score = S.class_probability(model)
    wide = S.sag(score, image, t, S.SagOptions(grid=3, beam=200, roots=99, overlap=99, max_size=4))
    narrow = S.sag(score, image, t, S.SagOptions(grid=3, beam=2, roots=99, overlap=99, max_size=4))
    assert set(dict(narrow.minimal)) <= set(dict(wide.minimal))
    assert narrow.evaluated <= wide.evaluated


def test_sag_has_no_roots_when_the_blurred_image_alone_suffices() -> None:
    model = build_tiny()
    image = _inputs(1, side=12, seed=3)[0]  # p(blurred) = 0.96 of p(image) = 1.0
    g = S.sag(S.class_probability(model), image, int(model(image[None]).argmax()), S.SagOptions(grid=3))
    assert g.baseline_probability >= 0.9 * g.probability
    assert g.roots == [] and g.nodes == [] and g.minimal == []


def test_patch_masks_tile_an_uneven_image() -> None:
    m = S.patch_masks([(0,), (8,), tuple(range(9))], 3, (10, 7))
    assert m.shape == (3, 1, 10, 7)
    assert int(m[0].sum()) == 3 * 2 and bool(m[0, 0, :3, :2].all())
    assert bool(m[1, 0, 6:, 4:].all()) and int(m[1].sum()) == 4 * 3
    assert bool(m[2].all())


def test_region_positions() -> None:
    r = S.region_positions([0], 2, (8, 8), (4, 4))
    assert r.tolist() == [[True, True, False, False], [True, True, False, False]] + [[False] * 4] * 2
    coarse = S.region_positions([3], 7, (14, 14), (2, 2))  # no centre inside: the nearest one
    assert coarse.sum() == 1 and coarse[0, 1]  # patch centre (1, 7) px lies in map cell (0, 1)


@pytest.mark.parametrize(
    "opts, word",
    [
        (S.SagOptions(grid=0), "grid"),
        (S.SagOptions(threshold=1.5), "threshold"),
        (S.SagOptions(beam=0), "beam"),
    ],
)
def test_sag_rejects_bad_options(opts: S.SagOptions, word: str) -> None:
    with pytest.raises(S.SaliencyError, match=word):
        S.sag(lambda x, t: x.mean(dim=(1, 2, 3)), torch.ones(3, 8, 8), 0, opts)


def test_gradcam_shape_and_sign() -> None:
    model = build_tiny()
    x = _inputs(2)
    t = model(x).argmax(dim=1)
    cam = S.gradcam(model, "conv3", x, t)
    assert cam.shape == (2, 12, 12) and float(cam.min()) >= 0
    assert not any(h for m in model.modules() for h in m._forward_hooks.values())
    with pytest.raises(S.SaliencyError, match="nope"):
        S.gradcam(model, "nope", x, t)
    assert np.isfinite(cam.numpy()).all()
