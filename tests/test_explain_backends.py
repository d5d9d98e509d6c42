"""The two implementations of a batch's explanations (torch on the values' device, NumPy on
the host) against each other and against plain per-image sums, field by field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from filtag_kg.explain import Explained, explain_tensors
from filtag_kg.explanations_io import encode_rows, records_from_batch
from filtag_kg.tagging import TagSetting, active_filters

WIDTHS = [6, 9, 16]
NAMES = ["a", "b", "c"]
SETTINGS = [TagSetting("top-k", 1), TagSetting("top-k", 3), TagSetting("top-percent", 60),
            TagSetting("above-average")]


def _batch(ties: bool, density: float, n_classes: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """[B, sum F] values (with a constant layer in one row, a row whose mean equals one of its
    values, and optionally only four levels, so ties everywhere), weights and tag matrices."""
    rng = np.random.default_rng(7)
    batch = 6
    values = rng.integers(0, 4, size=(batch, sum(WIDTHS))) / 4.0 if ties else rng.random((batch, sum(WIDTHS)))
    values[2, 6:15] = 0.5  # layer b constant: above-average activates nothing there
    values[3, :6] = [0.125, 0.25, 0.375, 0.125, 0.25, 0.375]  # the mean (0.25) is a value: not above it
    weights = rng.random(values.shape)
    weights[1] = 0.0  # all weights 0: weighted votes are all 0, no prediction
    incidence = [(rng.random((f, n_classes)) < density).astype(np.float32) for f in WIDTHS]
    incidence[2][:, 1] = incidence[2][:, 0]  # classes 0 and 1 tie everywhere: class 0 wins
    return values, weights, incidence


def _assert_same(a: Explained, b: Explained) -> None:
    for f in dataclasses.fields(Explained):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert (x is None) == (y is None), f.name
        if x is None:
            continue
        if f.name in ("votes", "last") and a.weights is not None:
            np.testing.assert_allclose(x, y, rtol=1e-12, err_msg=f.name)  # float sums, any order
        else:
            np.testing.assert_array_equal(x, y, err_msg=f.name)
            assert np.asarray(x).dtype.kind == np.asarray(y).dtype.kind, f.name


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("density", [0.4, 0.03], ids=["dense-tags", "sparse-tags"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "gradcam"])
def test_torch_and_numpy_explanations_agree_with_per_image_sums(
    setting: TagSetting, ties: bool, density: float, weighted: bool
) -> None:
    n_classes = 7 if density > 0.1 else 90
    values, weights, incidence = _batch(ties, density, n_classes)
    w = torch.from_numpy(weights) if weighted else None
    got = {
        backend: explain_tensors(torch.from_numpy(values), WIDTHS, incidence, setting, NAMES, weights=w,
                                 backend=backend)
        for backend in ("torch", "numpy")
    }
    _assert_same(got["torch"], got["numpy"])
    ex = got["torch"]
    starts = np.concatenate([[0], np.cumsum(WIDTHS)])
    at = 0
    for b in range(len(values)):
        counts, votes = np.zeros(n_classes), np.zeros(n_classes)
        for li, name in enumerate(NAMES):
            v = values[b, starts[li]:starts[li + 1]]
            idx = active_filters(v, setting, name)
            assert ex.lengths[b, li] == len(idx)
            np.testing.assert_array_equal(ex.filters[at:at + len(idx)], idx)
            np.testing.assert_array_equal(ex.values[at:at + len(idx)], v[idx])
            wl = weights[b, starts[li]:starts[li + 1]]
            if weighted:
                np.testing.assert_array_equal(ex.weights[at:at + len(idx)], wl[idx])
            at += len(idx)
            layer_counts = incidence[li][idx].sum(axis=0)
            layer_votes = (incidence[li][idx] * wl[idx, None]).sum(axis=0)
            counts += layer_counts
            votes += layer_votes
        lo, hi = ex.count_offsets[b], ex.count_offsets[b + 1]
        np.testing.assert_array_equal(ex.count_classes[lo:hi], np.flatnonzero(counts))
        np.testing.assert_array_equal(ex.counts[lo:hi], counts[counts != 0])
        last = layer_votes if weighted else layer_counts
        lo2, hi2 = ex.last_offsets[b], ex.last_offsets[b + 1]
        np.testing.assert_array_equal(ex.last_classes[lo2:hi2], np.flatnonzero(last))
        np.testing.assert_allclose(ex.last[lo2:hi2], last[last != 0], rtol=1e-12)
        scored = votes if weighted else counts
        if weighted:
            np.testing.assert_allclose(ex.votes[lo:hi], votes[counts != 0], rtol=1e-12)
        want = int(np.argmax(scored)) if scored.max() > 0 else -1  # ties: the first class
        assert ex.prediction[b] == want
        want_last = int(np.argmax(last)) if last.max() > 0 else -1
        assert ex.prediction_last[b] == want_last
    assert at == len(ex.filters)
    if setting.method == "above-average":
        assert ex.lengths[2, 1] == 0  # the constant layer
        assert list(ex.filters[ex.lengths[:3].sum():][:ex.lengths[3, 0]]) == [2, 5]  # 0.375s, not the 0.25s
    if weighted:
        assert ex.prediction[1] == -1  # all weights 0
    # the rows the two give are the same records
    rows = {}
    for backend, e in got.items():
        batch = encode_rows(
            indices=list(range(len(values))), images=["x"] * len(values), sha256=[None] * len(values),
            true_classes=[None] * len(values), top_class=np.zeros((len(values), 1), dtype=np.int64),
            top_prob=np.ones((len(values), 1)), method=setting.method, param=setting.param_text,
            explained=e, perturbation=None, weighting="gradcam" if weighted else None,
        )
        names = {"layers": NAMES, "class_ids": [f"c{i}" for i in range(n_classes)], "model_ids": [],
                 "model_labels": []}
        rows[backend] = list(records_from_batch(batch, names))
    if not weighted:  # weighted votes may differ in the last bits (summation order)
        assert rows["torch"] == rows["numpy"]
