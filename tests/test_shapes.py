"""Tests of the embedded shapes demo: dataset, network, training and cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from filtag_kg import shapes
from filtag_kg.shapes import (
    SHAPE_CLASSES,
    SHAPES_OUTPUT_WNIDS,
    SHAPES_PREPROCESS,
    ShapesNet,
    build_shapes_net,
    default_cache_dir,
    load_or_train_shapes_net,
    make_shapes_dataset,
    make_shapes_splits,
    train_shapes_net,
)

WNIDS = [wnid for wnid, _label in SHAPE_CLASSES]

# A tiny cache configuration: the whole first call takes about a second.
TINY = {"train_per_class": 4, "heldout_per_class": 2, "epochs": 1}


def _digests(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root``."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --------------------------------------------------------------------------- dataset


def test_shape_classes():
    assert [label for _wnid, label in SHAPE_CLASSES] == [
        "circle",
        "ellipse",
        "crescent",
        "square",
        "rectangle",
        "rhombus",
        "triangle",
        "pentagon",
        "hexagon",
        "octagon",
    ]
    assert WNIDS[0] == "n13873502" and WNIDS[-1] == "n13882563"
    assert len(set(WNIDS)) == 10
    assert all(w.startswith("n") and len(w) == 9 and w[1:].isdigit() for w in WNIDS)


def test_dataset_layout_and_images(tmp_path):
    root = make_shapes_dataset(tmp_path / "ds", per_class=3, seed=0)
    assert root == tmp_path / "ds"
    assert sorted(p.name for p in root.iterdir()) == sorted(WNIDS)
    for wnid in WNIDS:
        assert sorted(p.name for p in (root / wnid).iterdir()) == [
            "0000.png",
            "0001.png",
            "0002.png",
        ]
    size = shapes.DEFAULT_SIZE
    with Image.open(root / WNIDS[0] / "0000.png") as im:
        assert im.format == "PNG"
        assert im.mode == "RGB"
        assert im.size == (size, size)
        pixels = np.asarray(im).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 10  # gradient and anti-aliasing, not flat

    small = make_shapes_dataset(tmp_path / "small", per_class=1, seed=0, size=32)
    with Image.open(small / WNIDS[5] / "0000.png") as im:
        assert im.size == (32, 32)


@pytest.mark.parametrize("class_index", range(len(SHAPE_CLASSES)))
def test_shapes_are_large_and_inside_the_image(class_index):
    """Each shape spans roughly 45-90 % of the side and never touches the border."""
    label = SHAPE_CLASSES[class_index][1]
    size, canvas = 48, 48 * 4
    extents = []
    for i in range(40):
        mask = shapes._shape_mask(label, np.random.default_rng([5, class_index, i]), canvas, size)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert rows[0] > 0 and cols[0] > 0 and rows[-1] < canvas - 1 and cols[-1] < canvas - 1
        extents.append(max(rows[-1] - rows[0], cols[-1] - cols[0]) / canvas)
    # The longest side of the bounding box: at least sqrt(2) * 0.24 = 34 % of the
    # side (an axis-aligned square of the smallest radius), at most 92 % (a circle
    # of the largest).
    assert min(extents) >= 0.33
    assert max(extents) <= 0.93
    assert max(extents) - min(extents) >= 0.15  # sizes vary


def test_background_is_calm_and_shape_covers_much_of_the_image(tmp_path):
    root = make_shapes_dataset(tmp_path, per_class=5, seed=0)
    for wnid in WNIDS:
        for path in sorted((root / wnid).iterdir()):
            with Image.open(path) as im:
                img = np.asarray(im, dtype=np.float64)
            # Neighbouring pixels agree almost everywhere: flat regions, faint noise at
            # most (the earlier noisy backgrounds had medians up to about 30).
            step = np.abs(np.diff(img, axis=1)).max(axis=2)
            assert np.median(step) <= 8.0, path
            # The most common colour (the background) leaves a large share to the shape.
            border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
            background = np.median(border, axis=0)
            far = np.abs(img - background).max(axis=2) > 40
            assert far.mean() >= 0.03, path


def test_dataset_is_deterministic(tmp_path):
    a = _digests(make_shapes_dataset(tmp_path / "a", per_class=3, seed=7))
    b = _digests(make_shapes_dataset(tmp_path / "b", per_class=3, seed=7))
    assert a == b and len(a) == 30

    other_seed = _digests(make_shapes_dataset(tmp_path / "c", per_class=3, seed=8))
    assert other_seed.keys() == a.keys()
    assert all(other_seed[k] != a[k] for k in a)

    other_stream = _digests(make_shapes_dataset(tmp_path / "d", per_class=3, seed=7, stream=1))
    assert all(other_stream[k] != a[k] for k in a)

    # Each image has its own generator: more images per class only append.
    longer = _digests(make_shapes_dataset(tmp_path / "e", per_class=4, seed=7))
    assert {k: v for k, v in longer.items() if k in a} == a


def test_splits_differ_and_have_expected_counts(tmp_path):
    splits = make_shapes_splits(tmp_path, train_per_class=3, heldout_per_class=2, seed=0)
    assert splits == {"train": tmp_path / "train", "heldout": tmp_path / "heldout"}
    train, held = _digests(splits["train"]), _digests(splits["heldout"])
    assert len(train) == 30 and len(held) == 20
    assert not set(train.values()) & set(held.values())

    with_explain = make_shapes_splits(
        tmp_path / "x", train_per_class=1, heldout_per_class=1, explain_per_class=2, seed=0
    )
    assert set(with_explain) == {"train", "heldout", "explain"}
    assert len(_digests(with_explain["explain"])) == 20


def test_training_rejects_bad_arguments(tmp_path):
    for kwargs in ({"epochs": 0}, {"batch_size": 0}, {"label_smoothing": 1.0}, {"seed": -1}):
        args = {"epochs": 1, "seed": 0, "progress": False, **kwargs}
        with pytest.raises(ValueError):
            train_shapes_net(tmp_path, **args)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_class": 0, "seed": 0},
        {"per_class": 1, "seed": -1},
        {"per_class": 1, "seed": 0, "size": 8},
    ],
)
def test_dataset_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_shapes_dataset(tmp_path, **kwargs)


# --------------------------------------------------------------------------- network


def test_shapes_net_shapes_and_layer_patterns():
    model = build_shapes_net()
    assert isinstance(model, ShapesNet)
    model.eval()
    size = shapes.DEFAULT_SIZE
    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 10)
    assert build_shapes_net(num_classes=4)(torch.zeros(1, 3, size, size)).shape == (1, 4)

    names = dict(model.named_modules())
    assert isinstance(names["features.0"], nn.Conv2d)
    assert isinstance(names["classifier.0"], nn.Linear)

    layers = list(model.features)
    conv_bn_relu = conv_relu = 0
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.Conv2d):
            continue
        nxt = layers[i + 1 : i + 3]
        if isinstance(nxt[0], nn.ReLU):
            conv_relu += 1
        elif isinstance(nxt[0], nn.BatchNorm2d) and isinstance(nxt[1], nn.ReLU):
            conv_bn_relu += 1
    assert conv_relu >= 1
    assert conv_bn_relu >= 1
    assert conv_relu + conv_bn_relu == sum(isinstance(m, nn.Conv2d) for m in layers) == 5
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)] == [
        "features.0",
        "features.3",
        "features.7",
        "features.11",
        "features.15",
    ]
    assert ShapesNet(widths=(8, 16)).classifier[0].in_features == 16
    # More last-layer filters than classes: with exactly one per class, 2-4 classes shared
    # their strongest filter (last-layer top-k 1 fidelity 54 % vs 66 %, mean of seeds 0-2).
    assert names["features.15"].out_channels > 10
    with pytest.raises(ValueError):
        ShapesNet(widths=(8,))


def test_classifier_reads_the_spatial_mean_of_the_last_conv_layer():
    """Global average pooling: the logits are a linear function of the last layer's
    per-filter spatial means, the very values FilTag ranks filters by."""
    torch.manual_seed(0)
    model = build_shapes_net().eval()
    x = torch.randn(3, 3, shapes.DEFAULT_SIZE, shapes.DEFAULT_SIZE)
    seen = {}
    last_relu = model.features[-1]
    assert isinstance(last_relu, nn.ReLU) and isinstance(model.features[-3], nn.Conv2d)
    handle = last_relu.register_forward_hook(lambda _m, _i, out: seen.update(act=out.clone()))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    act = seen["act"]
    assert act.shape[2:] == (2, 2)  # four 2x2 max-pools: 32 -> 2
    spatial_mean = act.mean(dim=(2, 3))
    torch.testing.assert_close(logits, model.classifier(spatial_mean))


def test_training_input_matches_image_folder_and_preprocess(tmp_path):
    from torchvision.datasets import ImageFolder

    root = make_shapes_dataset(tmp_path, per_class=2, seed=0)
    x, y = shapes._load_image_folder(root)
    folder = ImageFolder(str(root), transform=SHAPES_PREPROCESS.transform())
    # Output i of the network is folder class i, as in any ImageFolder pipeline.
    assert folder.class_to_idx == {w: i for i, w in enumerate(SHAPES_OUTPUT_WNIDS)}
    assert set(SHAPES_OUTPUT_WNIDS) == set(WNIDS)
    size = shapes.DEFAULT_SIZE
    assert x.shape == (20, 3, size, size) and y.tolist() == folder.targets
    for i in (0, 7, 19):
        image, target = folder[i]
        assert target == y[i] and torch.equal(image, x[i])
    assert SHAPES_PREPROCESS.resize is None and SHAPES_PREPROCESS.crop is None


def test_short_training_learns_and_is_deterministic(tmp_path):
    # The average-pooled network needs a few hundred steps to take off on the
    # full dataset; this short run only has to show the loss going down.
    splits = make_shapes_splits(tmp_path, train_per_class=30, heldout_per_class=2, seed=1)
    rng_state = torch.get_rng_state()
    model, metrics = train_shapes_net(
        splits["train"],
        heldout_dir=splits["heldout"],
        epochs=10,
        seed=0,
        batch_size=32,
        progress=False,
    )
    assert torch.equal(torch.get_rng_state(), rng_state)  # caller's RNG untouched
    assert not model.training
    history = metrics["loss_history"]
    assert len(history) == 10
    assert history[-1] < history[0] - 0.15
    assert metrics["train_accuracy"] >= 0.2  # chance is 0.1
    assert metrics["train_images"] == 300 and metrics["heldout_images"] == 20
    assert 0.0 <= metrics["heldout_accuracy"] <= 1.0
    assert metrics["seed"] == 0 and metrics["epochs"] == 10
    assert metrics["weight_decay"] == 0.05 and metrics["label_smoothing"] == 0.1
    assert metrics["classes"] == list(SHAPES_OUTPUT_WNIDS)

    again, metrics2 = train_shapes_net(
        splits["train"], epochs=10, seed=0, batch_size=32, progress=False
    )
    _assert_same_state(model, again)
    assert metrics2["loss_history"] == history
    assert metrics2["heldout_accuracy"] is None


# --------------------------------------------------------------------------- cache


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FILTAG_KG_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("FILTAG_KG_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "filtag-kg"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "filtag-kg"


class _CountingTrainer:
    """Wraps ``train_shapes_net`` and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return train_shapes_net(*args, **kwargs)


def test_cache_reuses_data_and_weights(monkeypatch, tmp_path):
    trainer = _CountingTrainer()
    monkeypatch.setattr(shapes, "train_shapes_net", trainer)

    model, metrics, data = load_or_train_shapes_net(tmp_path, seed=3, progress=False, **TINY)
    assert trainer.calls == 1
    run_dir = data.parent
    assert run_dir.parent == tmp_path
    assert run_dir.name.startswith(f"shapes-{shapes.CACHE_VERSION}-seed3")
    assert len(_digests(data / "train")) == 40 and len(_digests(data / "heldout")) == 20
    weights = run_dir / "weights.pt"
    stamp = weights.stat().st_mtime_ns
    data_before = _digests(data)
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no temp files

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model must not be retrained")

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached dataset must not be regenerated")

    monkeypatch.setattr(shapes, "train_shapes_net", no_training)
    monkeypatch.setattr(shapes, "make_shapes_splits", no_generation)
    model2, metrics2, data2 = load_or_train_shapes_net(tmp_path, seed=3, progress=False, **TINY)
    assert data2 == data
    assert metrics2 == metrics
    assert weights.stat().st_mtime_ns == stamp
    assert _digests(data) == data_before
    assert not model2.training
    _assert_same_state(model, model2)


def test_cache_name_depends_on_config_and_default_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FILTAG_KG_CACHE", str(tmp_path))
    _, _, data = load_or_train_shapes_net(seed=0, progress=False, **TINY)
    assert data.parent.parent == tmp_path
    assert data.parent.name == f"shapes-{shapes.CACHE_VERSION}-seed0-t4-h2-e1"
    assert data.name == "data"


def test_cache_retrains_on_damaged_weights(monkeypatch, tmp_path):
    model, metrics, data = load_or_train_shapes_net(tmp_path, progress=False, **TINY)
    weights = data.parent / "weights.pt"
    weights.write_bytes(b"not a torch file")

    trainer = _CountingTrainer()
    monkeypatch.setattr(shapes, "train_shapes_net", trainer)
    model2, metrics2, _ = load_or_train_shapes_net(tmp_path, progress=False, **TINY)
    assert trainer.calls == 1
    _assert_same_state(model, model2)  # deterministic retraining
    assert metrics2["loss_history"] == metrics["loss_history"]
    torch.load(weights, weights_only=True)  # rewritten and loadable


def test_cache_regenerates_incomplete_data_without_retraining(monkeypatch, tmp_path):
    _, _, data = load_or_train_shapes_net(tmp_path, progress=False, **TINY)
    before = _digests(data)
    (data / "train" / WNIDS[2] / "0001.png").unlink()

    def no_training(*args, **kwargs):
        raise AssertionError("valid weights must be kept")

    monkeypatch.setattr(shapes, "train_shapes_net", no_training)
    load_or_train_shapes_net(tmp_path, progress=False, **TINY)
    assert _digests(data) == before


def test_interrupted_first_run_leaves_no_cache(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes, "train_shapes_net", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_or_train_shapes_net(tmp_path, progress=False, **TINY)
    run_dir = next(tmp_path.iterdir())
    assert not (run_dir / "weights.pt").exists()
    assert not (run_dir / "training.json").exists()

    monkeypatch.undo()
    _, metrics, data = load_or_train_shapes_net(tmp_path, progress=False, **TINY)
    assert (data.parent / "weights.pt").is_file() and metrics["epochs"] == 1
    assert not [p.name for p in data.parent.iterdir() if p.name.startswith(".")]
