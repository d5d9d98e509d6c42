"""Model specs, weights, class lists, preprocessing and layer selection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny

from filtag_kg.errors import DataError, UnknownLayerError, UnknownModelError, WeightsError
from filtag_kg.models import (
    ClassInfo,
    conv_layer_names,
    load_model,
    read_class_file,
    select_layers,
    state_dict_sha256,
)


def test_factory_and_weights_file(tmp_path: Path) -> None:
    other = build_tiny(seed=5)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": other.state_dict()}, path)  # wrapped checkpoints are unwrapped
    plain = load_model("tiny_models:build_tiny")
    loaded = load_model("tiny_models:build_tiny", weights_file=path)
    assert loaded.kind == "factory" and loaded.weights_file == str(path)
    assert loaded.weights_sha256 == state_dict_sha256(other) != plain.weights_sha256
    torch.testing.assert_close(loaded.module.conv1.weight, other.conv1.weight)
    assert loaded.classes is None  # comes from the data folders
    assert (loaded.preprocess.resize, loaded.preprocess.crop) == (256, 224)
    small = load_model("tiny_models:build_tiny", image_size=64)
    assert (small.preprocess.resize, small.preprocess.crop) == (73, 64)


def test_torchvision_architecture_gets_imagenet_classes() -> None:
    loaded = load_model("resnet18")
    assert loaded.kind == "torchvision" and len(loaded.classes) == 1000
    assert loaded.classes[0] == ClassInfo("n01440764", "tench")
    assert loaded.classes[-1].id == "n15075141"
    ten = load_model("resnet18", num_classes=10)
    assert ten.classes is None


def test_weights_enum_uses_metadata_and_transforms(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision
    import torchvision.models._api as api

    fake = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: fake)
    loaded = load_model("resnet18", weights="DEFAULT")
    assert loaded.weights == "IMAGENET1K_V1"
    assert [c.id for c in loaded.classes[:2]] == ["n01440764", "n01443537"]
    assert (loaded.preprocess.resize, loaded.preprocess.crop) == (256, 224)
    assert "IMAGENET1K_V1" in loaded.preprocess.source


def test_class_file(tmp_path: Path) -> None:
    f = tmp_path / "classes.txt"
    f.write_text("# my classes\nn02085620\tChihuahua\nn02123045\n\nviolin\n")
    assert read_class_file(f) == [ClassInfo("n02085620", "Chihuahua"),
                                  ClassInfo("n02123045", "n02123045"), ClassInfo("violin", "violin")]
    loaded = load_model("tiny_models:build_tiny", classes_file=f)
    assert [c.id for c in loaded.classes] == ["n02085620", "n02123045", "violin"]


def test_bad_specs() -> None:
    with pytest.raises(UnknownModelError, match="resnet50"):
        load_model("resnet05")
    with pytest.raises(UnknownModelError, match="has no attribute"):
        load_model("tiny_models:nope")
    with pytest.raises(UnknownModelError, match="does not exist"):
        load_model("missing/model.pt")
    with pytest.raises(WeightsError, match="either"):
        load_model("resnet18", weights="DEFAULT", weights_file="x.pt")
    with pytest.raises(WeightsError, match="weights-file"):
        load_model("tiny_models:build_tiny", weights="DEFAULT")


def test_layer_selection() -> None:
    import torchvision

    m = torchvision.models.resnet18()
    assert len(conv_layer_names(m)) == 20
    assert select_layers(m, ["layer4.*"]) == [n for n in conv_layer_names(m) if n.startswith("layer4.")]
    assert select_layers(m, ["conv1", "layer1.0.conv2"]) == ["conv1", "layer1.0.conv2"]
    assert select_layers(m, ["layer1.0.conv2", "conv1"]) == ["conv1", "layer1.0.conv2"]  # model order
    with pytest.raises(UnknownLayerError, match="layer4.\\*"):
        select_layers(m, ["layer4"])
    with pytest.raises(UnknownLayerError, match="did you mean layer1.0.conv2, layer1.0.conv1"):
        select_layers(m, ["layer1.0.conv"])


NET_SOURCE = """
from torch import nn


def build():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
"""


def test_factory_from_a_file_or_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    (tmp_path / "netfile_for_test.py").write_text(NET_SOURCE)
    loaded = load_model(f"{tmp_path}/netfile_for_test.py:build")
    assert loaded.kind == "factory" and isinstance(loaded.module[0], torch.nn.Conv2d)
    # recorded with an absolute path, so a later command finds it from any folder
    assert loaded.record()["spec"] == f"{(tmp_path / 'netfile_for_test.py').resolve()}:build"
    monkeypatch.chdir(tmp_path)
    relative = load_model("netfile_for_test.py:build")
    assert relative.spec == loaded.spec
    # a module beside the working folder imports like `python -m` would find it, even from
    # a console script (whose sys.path does not hold the working folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "netmod_for_test.py").write_text(NET_SOURCE)
    assert load_model("netmod_for_test:build").spec == "netmod_for_test:build"
    with pytest.raises(UnknownModelError, match="does not exist"):
        load_model("missing_dir/none.py:build")
    (tmp_path / "broken_for_test.py").write_text("raise ValueError('boom')\n")
    with pytest.raises(UnknownModelError, match="ValueError: boom"):
        load_model("broken_for_test.py:build")
    with pytest.raises(UnknownModelError, match="no_such_module_for_test"):
        load_model("no_such_module_for_test:build")


def test_class_file_lines_end_at_newline_only(tmp_path: Path) -> None:
    f = tmp_path / "classes.txt"
    # U+2028/U+2029 (and \x0c, \x85) are characters of a label, not line ends; CRLF files work
    f.write_text("n02085620\tChi\u2028hua\u2029hua\r\nn02123045 tabby\x0ccat\r\ngolden retriever\nx\x85y\n",
                 encoding="utf-8", newline="")
    assert read_class_file(f) == [
        ClassInfo("n02085620", "Chi\u2028hua\u2029hua"), ClassInfo("n02123045", "tabby\x0ccat"),
        ClassInfo("golden retriever", "golden retriever"), ClassInfo("x\x85y", "x\x85y"),
    ]


def test_class_file_refuses_a_tab_inside_a_label(tmp_path: Path) -> None:
    f = tmp_path / "classes.txt"
    f.write_text("n02085620\tChihuahua\nn02123045\ttabby\tcat\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"classes.txt:2: 2 tabs .*cannot hold a tab"):
        read_class_file(f)
    f.write_bytes(b"n02085620\tChihuahua\nn02123045\ttabby \xff\n")
    with pytest.raises(DataError, match=r"classes.txt:2: not UTF-8"):
        read_class_file(f)


def test_class_list_must_fit_the_models_outputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from conftest import write_images

    from filtag_kg.cli import main

    data = write_images(tmp_path / "data", per_class=1)
    f = tmp_path / "classes.txt"
    f.write_text("n02085620\nn02123045\nn04536866\nn01440764\n", encoding="utf-8")  # 4; the model has 3
    code = main(["run", "--model", "tiny_models:build_tiny", "--image-size", "16", "--quiet",
                 "--classes", str(f), "--data", str(data), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "class list has 4 classes but the model has 3 outputs" in err
    assert not (tmp_path / "run" / "profile.json").exists()


def test_weights_file_that_is_no_state_dict_says_what_it_is(tmp_path: Path) -> None:
    """A whole pickled model, a TorchScript archive or another file is named as such, with what
    --weights-file expects; torch's own message (and its advice to load unsafely) is not quoted."""
    model = build_tiny()
    torch.save(model, tmp_path / "whole.pt")
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 16, 16)), tmp_path / "scripted.pt")
    (tmp_path / "notes.txt").write_text("not weights")
    expected = {
        "whole.pt": "a whole pickled object (tiny_models.TinyNet)",
        "scripted.pt": "a TorchScript archive (pass it as --model FILE",
        "notes.txt": "is not a PyTorch file",
    }
    for name, what in expected.items():
        with pytest.raises(WeightsError) as exc:
            load_model("tiny_models:build_tiny", weights_file=tmp_path / name)
        msg = str(exc.value)
        assert what in msg and "torch.save(model.state_dict(), PATH)" in msg, msg
        assert "weights_only" not in msg and "trust" not in msg.lower(), msg
