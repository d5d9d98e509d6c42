"""The float32 similarity screen of explain --clusters decides every link as float64 does
(docs/cluster-method.md, "Precision and cost"): rows it cannot decide within its error
bound are recomputed in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_clusters import plain_cluster

from filtag_kg.clusters import _map_stats, _screen_units, cluster_layer, screen_bound


def _scaled(x: torch.Tensor) -> torch.Tensor:
    """Step 1 of [B, F, n] maps, written out: each map less its minimum over its span, a map
    without a span > 0 to zeros."""
    lo = x.amin(dim=2, keepdim=True)
    span = x.amax(dim=2, keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1.0), 0.0)


def unit_maps(scaled: torch.Tensor) -> torch.Tensor:
    """[B, F, n + 1]: each scaled map as a unit vector, with one more coordinate that is 1
    for an all-zero map and 0 otherwise, so that one product gives every pair's similarity
    as docs/cluster-method.md defines it: the cosine of two maps, 1 for two all-zero maps, 0
    for an all-zero map and any other (the extra coordinate adds exactly 0 to the others)."""
    norm = scaled.norm(dim=2, keepdim=True)
    flat = norm == 0
    return torch.cat([scaled / torch.where(flat, 1.0, norm), flat.to(scaled.dtype)], dim=2)


def clusters_of(lc, b: int = 0) -> list[list[int]]:
    """Image b's clusters as sorted member lists, in rank order."""
    members, out, at = lc.members[b].tolist(), [], 0
    for k in range(int(lc.count[b])):
        size = int(lc.sizes[b, k])
        out.append(sorted(members[at:at + size]))
        at += size
    return out


def maps(
    rows: list[list[float]], alphas: list[float], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's 2x2 maps (given as 4 cells each) and gradients whose spatial means are
    ``alphas`` (so the importance order is alpha x mean map)."""
    acts = torch.tensor(rows, dtype=dtype).view(1, len(rows), 2, 2)
    grads = torch.tensor(alphas, dtype=dtype).view(1, -1, 1, 1).expand(1, len(rows), 2, 2).contiguous()
    return acts, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_similarity_just_below_the_threshold_does_not_link(dtype: torch.dtype) -> None:
    # map 1 = [1, 0, 0, 0] after map 0 = [1, 0.75, 0, 0] (norm 1.25, exact in both precisions):
    # their cosine is 0.8 in float64 but 0.800000012 in float32 (1 / 1.25 rounds up there),
    # so at T = 0.8 + 1e-12 float32 alone would link them and float64 does not
    acts, grads = maps([[1, 0.75, 0, 0], [1, 0, 0, 0]], [1.0, 0.5], dtype)
    assert float(np.float32(0.8)) > 0.8 + 1e-12  # the float32 rounding the case relies on
    for threshold, want in ((0.8, [[0, 1]]), (0.8 + 1e-12, [[0], [1]])):
        assert clusters_of(cluster_layer(acts, grads, threshold)) == want
        assert clusters_of(cluster_layer(acts, grads, threshold, screen=False)) == want
        ref = plain_cluster(acts[0].double().numpy(), grads[0].double().numpy(), threshold)
        assert [sorted(c["filters"]) for c in ref] == want


def test_two_candidates_equal_in_float32_link_to_the_more_similar() -> None:
    # map 0 = [1, 1 - 1e-9, 0, 0] is more similar to map 1 = [1, 0, 0, 0] than to map 2 =
    # [0, 1, 0, 0] by about 7e-10 (cosines 0.70710678154 and 0.70710678083); in float32
    # 1 - 1e-9 is 1, an exact tie that the rule would give to map 2, the earlier in the
    # importance order (map 2, map 1, map 0), while float64 links map 0 to map 1
    acts, grads = maps([[1, 1 - 1e-9, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]], [0.1, 2.0, 4.0], torch.float64)
    assert np.float32(1 - 1e-9) == 1
    want = [[2], [0, 1]]  # weights: {2} 4.0, {0, 1} 2.1
    assert clusters_of(cluster_layer(acts, grads, 0.5)) == want
    assert clusters_of(cluster_layer(acts, grads, 0.5, screen=False)) == want
    ref = plain_cluster(acts[0].numpy(), grads[0].numpy(), 0.5)
    assert [sorted(c["filters"]) for c in ref] == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("side", [3, 12, 40])
def test_the_screen_stays_within_its_bound(side: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(side)
    scale = torch.rand(2, 24, 1, generator=gen) * 100
    acts = (torch.relu(torch.randn(2, 24, side * side, generator=gen)) * scale + 3 * scale).to(dtype)
    acts[:, :3] = 7.0  # flat maps
    acts[:, 3, 0] = float("nan")  # flat too
    exact = acts.to(torch.float64)
    _, _, lo, span, norm = _map_stats(acts.reshape(48, -1), None, norms=True)
    is_flat = ~(span > 0)
    inv = torch.where(is_flat, 0.0, 1 / norm)
    unit = _screen_units(acts.reshape(48, -1).clone(), lo, inv, is_flat).view(2, 24, -1)
    is_flat = is_flat.view(2, 24)
    assert unit.dtype == torch.float32
    s32 = (unit @ unit.transpose(1, 2)).double()
    u64 = unit_maps(_scaled(exact))
    s64 = u64 @ u64.transpose(1, 2)
    nonflat = ~(is_flat[:, :, None] | is_flat[:, None, :])
    err = (s32 - s64).abs()[nonflat].max().item()
    assert 0 < err <= screen_bound(side * side)
    assert (s32[~nonflat] == 0).all()  # a flat map's screen similarity is exactly 0 (decided exactly)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_screen_and_float64_links_agree_on_tied_maps(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    import filtag_kg.clusters as clusters

    gen = torch.Generator().manual_seed(3)
    for trial in range(3):
        acts = torch.relu(torch.randn(3, 70, 4, 4, generator=gen, dtype=dtype))
        acts[:, :10] = 0
        acts = torch.round(acts * (2 + 2 * trial)) / (2 + 2 * trial)  # many equal and proportional maps
        grads = torch.round(torch.randn(3, 70, 4, 4, generator=gen, dtype=dtype) * 4) / 4
        before = acts.clone()
        for threshold, block, part in ((0.3, 256, 64), (0.5, 256, 64), (0.9, 256, 64), (1.0, 256, 64),
                                       (0.5, 16, 2), (0.9, 7, 64), (0.3, 64, 4), (1.0, 32, 4)):
            monkeypatch.setattr(clusters, "_BLOCK", block)  # small: rows past the first block too
            monkeypatch.setattr(clusters, "_PART", part)  # small: rows' maxima found part by part
            a = cluster_layer(acts, grads, threshold, 3)
            b = cluster_layer(acts, grads, threshold, 3, screen=False)
            for field in ("members", "sizes", "weights", "count", "rank_of", "has_map"):
                assert torch.equal(getattr(a, field), getattr(b, field)), (trial, threshold, field)
            # the screen's maps are float32 products: a grey level may be one off float64's
            assert (a.maps.int() - b.maps.int()).abs().max() <= 1, (trial, threshold)
        assert torch.equal(acts, before)  # the maps are scaled in a copy


def test_maps_taken_a_few_at_a_time_give_the_same_clusters(monkeypatch: pytest.MonkeyPatch) -> None:
    import filtag_kg.clusters as clusters

    gen = torch.Generator().manual_seed(5)
    acts = torch.relu(torch.randn(3, 37, 4, 4, generator=gen))
    acts[:, :5] = 0
    grads = torch.randn(3, 37, 4, 4, generator=gen)
    whole = cluster_layer(acts, grads, 0.5, 3)
    monkeypatch.setattr(clusters, "_CHUNK", 40)  # two or three 4x4 maps per step, across images
    parts = cluster_layer(acts, grads, 0.5, 3)
    for field in ("members", "sizes", "weights", "count", "rank_of", "alpha", "maps", "has_map"):
        assert torch.equal(getattr(whole, field), getattr(parts, field)), field
    for b in range(3):
        ref = plain_cluster(acts[b].double().numpy(), grads[b].double().numpy(), 0.5)
        assert clusters_of(parts, b) == [sorted(c["filters"]) for c in ref]


@pytest.mark.parametrize("screen", [True, False])
def test_a_map_with_a_nan_is_flat(screen: bool) -> None:
    """A map holding a NaN (an overflow under --amp fp16, say) has no span > 0: it scales to
    zeros and joins the flat cluster of weight 0, as docs/cluster-method.md's step 1 treats
    a map without a positive span (the first version of the screen made it a cluster of its
    own, weight 1, with no map)."""
    acts, grads = maps([[1, float("nan"), 0, 2], [0, 0, 0, 0], [3, 1, 0, 0], [1, 2, 3, 4]],
                       [1.0, 1.0, 1.0, 1.0], torch.float32)
    lc = cluster_layer(acts, grads, 0.5, 3, screen=screen)
    assert clusters_of(lc) == [[2], [3], [0, 1]]
    assert lc.weights[0, :3].tolist() == [1.0, 1.0, 0.0]
    assert lc.has_map[0].tolist() == [True, True, False]


@pytest.mark.parametrize("setting", ["mkldnn-bf16", "cuda-tf32", "highest-medium", "env-bf16"])
def test_reduced_precision_matmuls_turn_the_screen_off(setting: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With float32 products allowed in TF32 or bfloat16 (either torch API, or oneDNN's
    environment variable) the screen's bound does not hold: every similarity is float64.
    (Before, torch's newer per-backend setting made the precision check raise, so explain
    --clusters stopped even on a CPU.)"""
    import filtag_kg.clusters as clusters

    gen = torch.Generator().manual_seed(7)
    acts = torch.relu(torch.randn(2, 20, 3, 3, generator=gen))
    grads = torch.randn(2, 20, 3, 3, generator=gen)
    reference = cluster_layer(acts, grads, 0.5, 2, screen=False)
    used: list[bool] = []
    real = clusters._screen_units
    monkeypatch.setattr(clusters, "_screen_units", lambda *a: used.append(True) or real(*a))
    backends = torch.backends
    try:
        if setting == "mkldnn-bf16":
            backends.mkldnn.matmul.fp32_precision = "bf16"
        elif setting == "cuda-tf32":
            backends.cuda.matmul.fp32_precision = "tf32"
        elif setting == "highest-medium":
            torch.set_float32_matmul_precision("medium")
        else:
            monkeypatch.setenv("DNNL_DEFAULT_FPMATH_MODE", "BF16")
        got = cluster_layer(acts, grads, 0.5, 2)
    finally:
        monkeypatch.delenv("DNNL_DEFAULT_FPMATH_MODE", raising=False)
        backends.mkldnn.matmul.fp32_precision = "none"
        backends.cuda.matmul.fp32_precision = "none"
        torch.set_float32_matmul_precision("highest")
    assert used == []
    for field in ("members", "sizes", "weights", "count", "rank_of", "maps", "has_map"):
        assert torch.equal(getattr(got, field), getattr(reference, field)), field
    assert torch.get_float32_matmul_precision() == "highest"
    assert bool(cluster_layer(acts, grads, 0.5, 2).count.sum()) and used == [True]  # the screen is back


def test_a_batch_labelled_in_one_go_equals_layer_by_layer() -> None:
    """cluster_batch labels all layers of a batch in one go (layers side by side): the
    classes and scores equal those of cluster_concepts layer by layer, bit for bit, for
    sparse and dense tags, ties included; a tag matrix changed in place is read again."""
    from filtag_kg.clusters import batch_concepts, cluster_concepts

    gen = torch.Generator().manual_seed(11)
    layers, incidences = [], []
    for width, side, tags in ((6, 3, 1), (40, 2, 3), (17, 4, 1), (25, 1, 8)):
        acts = torch.relu(torch.randn(3, width, side, side, generator=gen))
        acts[:, :2] = 0
        grads = torch.round(torch.randn(3, width, side, side, generator=gen) * 2) / 2
        layers.append(cluster_layer(acts, grads, 0.4, 2))
        inc = torch.zeros(width, 9, dtype=torch.float64)
        for f in range(width):
            inc[f, torch.randperm(9, generator=gen)[:tags]] = 1.0
        incidences.append(inc)
    values = torch.round(torch.rand(3, sum(lc.rank_of.shape[1] for lc in layers), generator=gen) * 4) / 4
    for _ in range(2):
        together = batch_concepts(layers, values, incidences)
        at = 0
        for lc, inc, (classes, scores) in zip(layers, incidences, together):
            width = lc.rank_of.shape[1]
            c1, s1 = cluster_concepts(lc, values[:, at:at + width], inc)
            assert torch.equal(classes, c1) and torch.equal(scores, s1)
            at += width
        assert any(bool((s[..., 0] > 0).any()) for _, s in together)
        incidences[1][:, :] = 0  # changed in place: the cached pairs must not be used
        incidences[1][:, 4] = 1.0
    assert all(bool((c[..., 0] == 4)[s[..., 0] > 0].all()) for c, s in [together[1]])


def test_a_map_with_an_infinity_spoils_only_its_own_slot() -> None:
    """A map with an infinite cell (an fp16 overflow) has an infinite span: step 1 scales it
    to NaN there, so its cluster gets no map; the other slots keep theirs. (The merged maps'
    product once multiplied its infinities by the zero weights of every other slot, so no
    slot of the image had a map.)"""
    gen = torch.Generator().manual_seed(2)
    acts = torch.rand(1, 6, 4, 4, generator=gen)
    alphas = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    grads = alphas.view(1, 6, 1, 1).expand(1, 6, 4, 4).contiguous()
    for spoiled, want in ((5, [True, True, True]), (0, [False, True, True])):
        bad = acts.clone()
        bad[0, spoiled, 0, 0] = float("inf")
        lc = cluster_layer(bad, grads, 0.999, 3)
        assert [int(lc.sizes[0, k]) for k in range(3)] == [1, 1, 1]  # each map its own cluster
        assert lc.has_map[0].tolist() == want
        clean = cluster_layer(acts, grads, 0.999, 3)
        for k in range(3):
            if want[k]:
                assert torch.equal(lc.maps[0, k], clean.maps[0, k])


def test_a_nan_value_gives_its_cluster_no_concepts_and_no_nan_scores() -> None:
    """Step 6 with a member whose FilTag value is NaN: that cluster's weighted sum is not a
    number, so it has no concepts (score 0, as the docstring says of a place without one);
    the other cluster keeps its concepts."""
    from filtag_kg.clusters import cluster_concepts

    acts, grads = maps([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2]], [1.0, 0.5, 0.9, 0.4],
                       torch.float32)
    lc = cluster_layer(acts, grads, 0.9)
    assert clusters_of(lc) == [[0, 1], [2, 3]]
    inc = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.25, 1.0, 0.2]], dtype=torch.float64)
    _, clean = cluster_concepts(lc, values, inc)
    values[0, 1] = float("nan")
    _, scores = cluster_concepts(lc, values, inc)
    assert torch.isfinite(scores).all()
    assert (scores[0, 0] == 0).all() and (clean[0, 0] > 0).any()
    assert torch.equal(scores[0, 1], clean[0, 1]) and (clean[0, 1] > 0).any()


def test_screen_and_float64_paths_make_close_calls_alike() -> None:
    """A similarity within rounding of T (T = 1 with equal or proportional maps, or T set to
    one of the similarities) is decided by the same float64 arithmetic on both paths: the
    float64 path once took its own product's values, which differ from the recheck's in the
    last bits, so one path linked where the other did not (about a third of such cases)."""
    m = [0.37, 0, 0.27, 0.51, 0.58, 0.43, 0.44, 0.17, 0.76]
    acts = torch.tensor(m * 2).view(1, 2, 3, 3)
    grads = torch.tensor([1.0, 0.5]).view(1, 2, 1, 1).expand(1, 2, 3, 3).contiguous()
    once = cluster_layer(acts, grads, 1.0)
    assert clusters_of(once) == clusters_of(cluster_layer(acts, grads, 1.0, screen=False))
    gen = torch.Generator().manual_seed(13)
    for trial in range(60):
        acts = torch.relu(torch.randn(2, 12, 5, 5, generator=gen))
        acts[:, 6:] = acts[:, :6] * (1.0 if trial % 2 else 0.37 * (1 + trial))  # equal or proportional maps
        grads = torch.randn(2, 12, 5, 5, generator=gen)
        scaled = _scaled(acts.reshape(2, 12, 25).double())
        unit = unit_maps(scaled)[..., :25]
        near = float((unit[0, 0] * unit[0, 3]).sum())  # a similarity as one float64 evaluation gives it
        for threshold in (1.0, near):
            got = [clusters_of(cluster_layer(acts, grads, threshold, screen=s), b) for s in (True, False)
                   for b in range(2)]
            assert got[:2] == got[2:], (trial, threshold)
