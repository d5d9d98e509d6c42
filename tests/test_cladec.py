"""ClaDec (filtag_kg.cladec): decoders of a tiny model's layers, training, resume, evaluation, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_images
from PIL import Image

from filtag_kg.cladec import (
    CladecOptions,
    Decoder,
    evaluate_cladec,
    layer_folder,
    run_cladec,
    train_cladec,
)
from filtag_kg.cli import main
from filtag_kg.data import image_files, image_folder
from filtag_kg.errors import UnknownLayerError
from filtag_kg.models import load_model
from filtag_kg.preprocess import Preprocess
from filtag_kg.profile import Interrupted, ProfileOptions, profile_dataset
from filtag_kg.tagging import TagSetting, write_tags

PRE = Preprocess(resize=None, crop=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
FAST = dict(epochs=2, batch_size=4, progress=False, checkpoint_every=2, device="cpu")


@pytest.fixture
def cladec_run(tmp_path: Path) -> tuple[Path, Path]:
    """A profiled and tagged run of the tiny model (16 px inputs) and its images."""
    data = write_images(tmp_path / "train", per_class=4)
    run = tmp_path / "run"
    prof = profile_dataset(load_model("tiny_models:build_tiny", preprocess=PRE), image_folder(data), run,
                           ProfileOptions(progress=False))
    write_tags(run, prof, [TagSetting("top-k", 2)])
    return run, data


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    state = torch.load(folder / "decoders.pt", weights_only=True)
    return {f"{part}.{k}": v for part, sd in state.items() for k, v in sd.items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("z", "image"), [((6, 16, 16), (3, 16, 16)), ((8, 4, 4), (3, 32, 32)),
                                          ((5, 7, 7), (3, 30, 30)), ((64, 1, 1), (3, 24, 20))])
def test_decoder_output_matches_the_image_shape(z: tuple[int, ...], image: tuple[int, ...]) -> None:
    assert tuple(Decoder(z, image)(torch.zeros(2, *z)).shape) == (2, *image)


def test_training_is_deterministic_and_shapes_fit(cladec_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = cladec_run
    first = train_cladec(run, "conv2", image_folder(data), CladecOptions(**FAST))
    w1 = _weights(first.folder)
    nets = first.networks
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        z = nets.encoder(x)
        assert tuple(z.shape) == (3, 8, 16, 16) and first.training["activation_shape"] == [8, 16, 16]
        assert nets.cladec(z).shape == x.shape == nets.ref_decoder(nets.ref_encoder(x)).shape
    # the reference encoder is the architecture up to conv2 (with its BatchNorm), not conv3 or fc
    assert nets.ref_used == ["act1", "bn2", "conv1", "conv2"]
    assert not any(k.startswith("reference_encoder.conv3") for k in w1)
    trained = nets.classifier.state_dict()
    assert not torch.equal(w1["reference_encoder.conv1.weight"], trained["conv1.weight"])  # fresh weights
    again = train_cladec(run, "conv2", image_folder(data), CladecOptions(**FAST, restart=True))
    assert _same(w1, _weights(again.folder))
    assert again.training["history"] == first.training["history"]
    other = train_cladec(run, "conv2", image_folder(data), CladecOptions(**FAST, seed=1, restart=True))
    assert not _same(w1, _weights(other.folder))
    record = json.loads((first.folder / "training.json").read_text())
    assert record["steps"] == 2 * 3 and len(record["history"]) == 2  # 10 training images, batches of 4


def test_resume_after_an_interruption_gives_identical_weights(cladec_run: tuple[Path, Path]) -> None:
    run, data = cladec_run
    full = _weights(train_cladec(run, "conv1", image_folder(data), CladecOptions(**FAST)).folder)
    folder = layer_folder(run, "conv1")
    (folder / "decoders.pt").unlink()
    (folder / "training.json").unlink()

    def stop(step: int) -> None:
        if step == 5:  # mid-way through the second epoch; the checkpoint is from step 4
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="--resume"):
        train_cladec(run, "conv1", image_folder(data), CladecOptions(**FAST), on_step=stop)
    assert (folder / "state.json").is_file() and not (folder / "decoders.pt").exists()
    assert json.loads((folder / "state.json").read_text())["step"] == 4
    with pytest.raises(Exception, match="--resume"):  # never restarts silently
        train_cladec(run, "conv1", image_folder(data), CladecOptions(**FAST))
    resumed = train_cladec(run, "conv1", image_folder(data), CladecOptions(**FAST, resume=True))
    assert _same(full, _weights(resumed.folder))
    assert not (folder / "state.json").exists() and not (folder / "checkpoint.pt").exists()


def test_alpha_adds_the_classifier_loss(cladec_run: tuple[Path, Path]) -> None:
    run, data = cladec_run
    res = train_cladec(run, "conv3", image_folder(data), CladecOptions(**FAST, alpha=0.25))
    assert res.folder.name == "conv3-alpha0.25"
    for h in res.training["history"]:
        assert h["cladec_classification_loss"] > 0
        assert h["cladec_loss"] == pytest.approx(
            0.75 * h["cladec_reconstruction_mse"] + 0.25 * h["cladec_classification_loss"], rel=1e-5)
    plain = train_cladec(run, "conv3", image_folder(data), CladecOptions(**FAST))
    assert all(h["cladec_classification_loss"] == 0 for h in plain.training["history"])


def test_evaluation_compares_both_and_keeps_the_run_evaluation(cladec_run: tuple[Path, Path]) -> None:
    run, data = cladec_run
    (run / "evaluation.json").write_text(json.dumps({"format": "filtag-kg evaluation", "groups": [1]}))
    results = run_cladec(run, ["conv1", "conv3"], data=data,
                         options=CladecOptions(**FAST, reconstructions=2))
    doc = json.loads((run / "evaluation.json").read_text())
    assert doc["groups"] == [1]  # untouched
    layers = doc["cladec"]["layers"]
    assert [layer["layer"] for layer in layers] == ["conv1", "conv3"]
    for layer, res in zip(layers, results):
        assert layer["images"] == 2 == layer["labelled_images"]  # round(20% of 12) held out
        assert set(layer["accuracy"]) == {"original", "cladec", "reference"}
        assert all(0 <= v <= 1 for v in layer["accuracy"].values())
        assert layer["mse"]["cladec"] > 0 and layer["mse"]["reference"] > 0
        rows = res.evaluation["reconstructions"]
        assert len(rows) == 2
        with Image.open(res.folder / rows[0]["file"]) as im:  # original | ClaDec | reference
            f = im.height // 16
            assert im.height >= 128 and im.width == 3 * 16 * f + 2 * 2 * f
        held = {Path(r["image"]).name for r in rows}
        assert held <= {p.name for p in data.rglob("*.png")}


def test_held_out_accuracy_on_originals_is_the_classifiers(cladec_run: tuple[Path, Path]) -> None:
    run, data = cladec_run
    res = train_cladec(run, "conv1", image_folder(data), CladecOptions(**FAST))
    doc = evaluate_cladec(run, res, CladecOptions(**FAST))
    model = load_model("tiny_models:build_tiny", preprocess=PRE).module
    ims = image_folder(data)
    hits = 0
    for i in res.eval_indices:
        s = ims.samples[i]
        with Image.open(s.path) as im:
            x = PRE.transform()(im.convert("RGB")).unsqueeze(0)
        hits += int(model(x).argmax(1).item() == s.label)
    assert doc["accuracy"]["original"] == hits / len(res.eval_indices)


def test_cli_errors_are_one_line(cladec_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run, data = cladec_run
    cases = [(["--layer", "conv9"], "conv9"), (["--layer", "conv*"], "conv*"),
             (["--layer", "conv1", "--alpha", "1.5"], "--alpha 1.5"),
             (["--layer", "conv1", "--epochs", "0"], "--epochs 0"),
             (["--layer", "conv1", "--eval-data", str(run / "nope")], "nope")]
    for extra, named in cases:
        assert main(["cladec", str(run), "--data", str(data), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("filtag-kg: error:") and "\n" not in err and named in err
    assert not (run / "cladec").exists() or not any((run / "cladec").iterdir())
    with pytest.raises(UnknownLayerError, match="did you mean conv3, conv2, conv1"):
        train_cladec(run, "conv", image_folder(data), CladecOptions(**FAST))


def test_cli_trains_evaluates_and_prints(
    cladec_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = cladec_run
    assert main(["cladec", str(run), "--layer", "conv2", "--data", str(data), "--epochs", "1",
                 "--batch-size", "4", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "acc ClaDec" in out and "conv2" in out
    assert (run / "cladec" / "conv2" / "decoders.pt").is_file()


def test_explained_images_come_first_and_evaluate_keeps_the_section(cladec_run: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    from filtag_kg.evaluation import evaluate_run
    from filtag_kg.explain import ExplainOptions, explain_dataset

    run, data = cladec_run
    held = write_images(tmp_path / "held", per_class=2, seed=5)
    tabby = sorted((held / "n02123045").glob("*.png"))
    explain_dataset(run, image_files(tabby), ExplainOptions(progress=False))
    res = run_cladec(run, ["conv1"], data=data, eval_data=held,
                     options=CladecOptions(**FAST, reconstructions=3))[0]
    rows = res.evaluation["reconstructions"]
    assert [r["explained"] for r in rows] == [True, True, False]
    assert res.evaluation["images"] == 6 and res.training["heldout"]["source"] == "--eval-data"
    doc = evaluate_run(run)  # rewrites evaluation.json from the explanations
    assert doc["groups"] and doc["cladec"]["layers"][0]["layer"] == "conv1"
    assert json.loads((run / "evaluation.json").read_text())["cladec"] == doc["cladec"]


def test_demo_cladec_decodes_two_layers_into_every_output(tmp_path: Path) -> None:
    from filtag_kg.demo import DEMO_CLADEC_LAYERS, run_demo

    lines: list[str] = []
    run_demo(out=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, echo=lines.append,
             sizes={"train_per_class": 12, "heldout_per_class": 4, "epochs": 1}, cladec=True, cladec_epochs=1)
    text = "\n".join(lines)
    out = tmp_path / "out"
    assert len(DEMO_CLADEC_LAYERS) == 2
    for layer in DEMO_CLADEC_LAYERS:
        assert (out / "cladec" / layer / "decoders.pt").is_file()
        assert f"{layer}: the paper's claim" in text
    layers = json.loads((out / "evaluation.json").read_text())["cladec"]["layers"]
    assert [d["layer"] for d in layers] == list(DEMO_CLADEC_LAYERS) and layers[0]["images"] == 40
    assert "fk:ClaDecTraining" in (out / "kg.trig").read_text(encoding="utf-8")
    assert (out / "report" / "cladec" / "index.html").is_file()


@pytest.mark.parametrize("name, text", [("training.json", b'{"layer": "conv1", "fing'),
                                        ("training.json", b"[1, 2]"), ("evaluation.json", b"[1, 2]"),
                                        ("state.json", b"\xff\xfe")])
def test_damaged_cladec_files_are_skipped_or_named(
    cladec_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: bytes
) -> None:
    """A cut or overwritten training.json or evaluation.json stopped cladec, evaluate, the export
    and the report with json, AttributeError or TypeError tracebacks. A layer whose files are
    damaged is now left out by the readers (as an unfinished one was) and trained again by
    cladec; a damaged resume state is named, with --restart."""
    run, data = cladec_run
    argv = ["cladec", str(run), "--layer", "conv1", "--data", str(data), "--epochs", "1",
            "--batch-size", "4", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    folder = layer_folder(run, "conv1")
    (folder / name).write_bytes(text)
    for other in (["export", str(run), "--out", str(tmp_path / "kg.nq")],
                  ["report", str(run), "--out", str(tmp_path / "report"), "--quiet"]):
        capsys.readouterr()
        assert main(other) == 0, (other, capsys.readouterr().err)
    capsys.readouterr()
    if name == "state.json":
        assert main([*argv, "--resume"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and str(folder / name) in err[0] and "--restart" in err[0], err
    else:
        assert main(argv) == 0  # trained again
        assert json.loads((folder / name).read_text())["layer"] == "conv1"
