"""Step 1 (profile pass) against a straightforward per-image float64 reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, cli_env, kill_when_done, sigint_in_bookkeeping, write_images
from tiny_models import build_module_act, build_shared, build_tiny

from filtag_kg.activations import FilterProbe, scaled_filter_values
from filtag_kg.data import image_folder
from filtag_kg.errors import ProfileError
from filtag_kg.measure import find_measure_points
from filtag_kg.models import load_model
from filtag_kg.preprocess import Preprocess
from filtag_kg.profile import CHECKPOINT, Profile, ProfileOptions, profile_dataset
from filtag_kg.tagging import TagSetting, tag_profile

PRE = Preprocess(resize=20, crop=16)


def reference_profile(model: torch.nn.Module, root: Path) -> dict[str, np.ndarray]:
    """Per image, batch of one: capture full activations at the known measure points,
    copy them to the host, scale in float64 numpy, average per class."""
    from filtag_kg.data import load_rgb

    acts: dict[str, np.ndarray] = {}
    taps = {
        "conv1": (model.act1, lambda a: a),  # conv1 -> ReLU module
        "conv2": (model.bn2, lambda a: np.maximum(a, 0.0)),  # conv2 -> bn2 -> F.relu
        "conv3": (model.conv3, lambda a: a),  # conv3 -> max pool: the conv output
    }
    handles = [
        m.register_forward_hook(
            lambda mod, i, o, n=n, f=f: acts.__setitem__(n, f(o.detach().double().numpy()[0]))
        )
        for n, (m, f) in taps.items()
    ]
    transform = PRE.transform()
    sums: dict[str, np.ndarray] = {}
    counts = np.zeros(len(CLASSES))
    try:
        for ci, c in enumerate(CLASSES):
            for f in sorted((root / c).iterdir()):
                with torch.no_grad():
                    model(transform(load_rgb(str(f))).unsqueeze(0))
                for n, a in acts.items():
                    lo, hi = a.min(), a.max()
                    s = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
                    sums.setdefault(n, np.zeros((len(CLASSES), a.shape[0])))[ci] += s.mean(axis=(1, 2))
                counts[ci] += 1
    finally:
        for h in handles:
            h.remove()
    return {n: s / counts[:, None] for n, s in sums.items()}


def test_profile_matches_reference(image_dir: Path, tmp_path: Path, device: str) -> None:
    loaded = load_model("tiny_models:build_tiny", preprocess=PRE)
    ref = reference_profile(build_tiny(), image_dir)
    prof = profile_dataset(
        loaded, image_folder(image_dir), tmp_path / "run",
        ProfileOptions(batch_size=5, progress=False, device=device),
    )
    assert [lp.name for lp in prof.layers] == ["conv1", "conv2", "conv3"]
    for lp in prof.layers:
        np.testing.assert_allclose(lp.means, ref[lp.name], rtol=1e-5, atol=1e-7)
    assert prof.counts.tolist() == [4, 4, 4]
    # the tags follow from the same numbers: top-k of the reference means
    for t in tag_profile(prof, [TagSetting("top-k", 2)]):
        row = ref[t.layer][prof.class_ids.index(t.class_id)]
        assert t.filter in np.argsort(-row, kind="stable")[:2]


def test_measure_points_of_known_structures() -> None:
    tiny = build_tiny()
    pts = {p.layer: p for p in find_measure_points(tiny, ["conv1", "conv2", "conv3"],
                                                   torch.zeros(1, 3, 8, 8))}
    assert (pts["conv1"].hook_module, pts["conv1"].kind, pts["conv1"].apply) == ("act1", "activation", None)
    assert (pts["conv2"].hook_module, pts["conv2"].activation) == ("bn2", "relu")
    assert pts["conv2"].apply is not None and pts["conv2"].through == ["bn2"]
    assert (pts["conv3"].hook_module, pts["conv3"].kind) == ("conv3", "conv")

    shared = build_shared()
    layers = ["stem", "block.conv_a", "block.conv_b", "head"]
    pts = {p.layer: p for p in find_measure_points(shared, layers, torch.zeros(1, 3, 8, 8))}
    assert pts["stem"].activation == "tanh"
    # the ReLU module runs twice per pass: conv_a is measured at its first call
    a = pts["block.conv_a"]
    assert (a.hook_module, a.activation, a.call_index, a.calls_per_forward) == ("block.relu", "ReLU", 0, 2)
    assert a.apply is None and a.through == ["block.bn_a"]
    # bn_b's output is changed in place by `out += x` before the ReLU: no activation follows
    assert pts["block.conv_b"].kind == "conv"
    assert pts["head"].activation == "leaky_relu"
    # applied activations equal the real ones
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(pts["head"].apply(x), torch.nn.functional.leaky_relu(x, 0.2))

    forced = find_measure_points(tiny, ["conv1"], torch.zeros(1, 3, 8, 8), measure="conv")
    assert forced[0].kind == "conv" and forced[0].hook_module == "conv1"


def test_recording_a_pass_keeps_no_tensor_alive() -> None:
    """The recorder names tensors by serial numbers and weak references, not by holding
    them, so recording a real batch (the explanation pass's first) needs no more memory
    than the pass itself; the points found are still those of a ResNet-style block."""
    import weakref

    model = build_module_act()
    outs: list[weakref.ref[torch.Tensor]] = []
    model.block.bn_a.register_forward_hook(lambda m, i, o: outs.append(weakref.ref(o)))
    alive: list[bool] = []  # bn_a's output is freed once conv_b has read it
    model.fc.register_forward_pre_hook(lambda m, i: alive.append(outs[-1]() is not None))
    layers = ["conv1", "block.conv_a", "block.conv_b", "conv3"]
    pts = find_measure_points(model, layers, torch.zeros(2, 3, 8, 8))
    assert alive == [False]
    assert [p.describe() for p in pts] == [
        "relu1 (ReLU)", "block.relu (ReLU, call 1 of 2)", "block.conv_b (conv output)", "conv3 (conv output)"]


def test_a_recorded_pass_that_raises_leaves_no_mode_behind() -> None:
    """The recorder leaves the function-mode stack while a hooked module runs; a module that
    raises never returns to it, yet the block ends with the stack as it found it and the
    next recorded pass finds the same points."""
    from torch.overrides import _get_current_function_mode

    from filtag_kg.measure import RecordedPass

    model = build_module_act()
    layers = ["conv1", "block.conv_a", "block.conv_b", "conv3"]
    handle = model.block.conv_b.register_forward_hook(lambda m, i, o: 1 / 0)  # inside: before its post-hook
    with pytest.raises(ZeroDivisionError), torch.no_grad(), RecordedPass(model):
        model(torch.zeros(1, 3, 8, 8))
    assert _get_current_function_mode() is None
    handle.remove()
    again = find_measure_points(model, layers, torch.zeros(1, 3, 8, 8))
    assert [p.describe() for p in again][:2] == ["relu1 (ReLU)", "block.relu (ReLU, call 1 of 2)"]


def test_measure_points_on_torchvision_models() -> None:
    import torchvision

    r18 = torchvision.models.resnet18().eval()
    pts = {p.layer: p for p in find_measure_points(
        r18, ["conv1", "layer1.0.conv1", "layer1.0.conv2"], torch.zeros(1, 3, 64, 64))}
    assert pts["conv1"].hook_module == "relu" and pts["conv1"].through == ["bn1"]
    assert (pts["layer1.0.conv1"].hook_module, pts["layer1.0.conv1"].call_index) == ("layer1.0.relu", 0)
    assert pts["layer1.0.conv2"].kind == "conv"  # bn2 -> += identity -> relu
    vgg = torchvision.models.vgg11().eval()
    pts = find_measure_points(vgg, ["features.0", "features.3"], torch.zeros(1, 3, 32, 32))
    assert [p.hook_module for p in pts] == ["features.1", "features.4"]


def test_scaled_values_layouts_and_constant_maps() -> None:
    x = torch.randn(3, 4, 5, 6)
    x[1] = 2.0  # a constant image tensor scales to all zeros
    ref = []
    for img in x.double().numpy():
        lo, hi = img.min(), img.max()
        ref.append(((img - lo) / (hi - lo)).mean(axis=(1, 2)) if hi > lo else np.zeros(4))
    for t in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3)):
        np.testing.assert_allclose(scaled_filter_values(t).numpy(), np.stack(ref), rtol=1e-6, atol=1e-7)
    got = scaled_filter_values(x.bfloat16())
    assert got.dtype == torch.float64 and got.shape == (3, 4)


class Boom(Exception):
    pass


def test_hooks_removed_and_mode_restored_after_failing_forward() -> None:
    model = build_tiny()
    model.train()
    pts = find_measure_points(model, ["conv1", "conv2", "conv3"], torch.zeros(1, 3, 8, 8))
    assert model.training  # the dry run restored the mode too

    def explode(module, inputs, output):
        raise Boom

    bomb = model.conv3.register_forward_hook(explode)
    with pytest.raises(Boom), FilterProbe(model, pts):
        assert not model.training
        model(torch.zeros(1, 3, 8, 8))
    bomb.remove()
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class Repeats(torch.nn.Module):
    """Runs its shared ReLU once more when the input's mean is positive: not a static pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.relu = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        if x.mean() > 0:
            y = self.relu(y - 0.5)
        return y.mean(dim=(2, 3))


def test_a_forward_pass_unlike_the_dry_run_is_refused() -> None:
    model = Repeats().eval()
    pts = find_measure_points(model, ["conv"], -torch.ones(1, 3, 8, 8))
    assert (pts[0].hook_module, pts[0].calls_per_forward) == ("relu", 1)
    with FilterProbe(model, pts) as probe, torch.inference_mode():
        model(-torch.ones(2, 3, 8, 8))
        first = probe.take_flat()
        model(torch.ones(2, 3, 8, 8))  # relu runs twice: values could be the wrong call's
        with pytest.raises(RuntimeError, match="different number of times"):
            probe.take()
        model(-torch.ones(2, 3, 8, 8))  # the counts were reset: a static pass works again
        assert torch.equal(probe.take_flat(), first)


def test_bad_files_are_skipped_and_listed(messy_dir: Path, tmp_path: Path) -> None:
    loaded = load_model("tiny_models:build_tiny", preprocess=PRE)
    imageset = image_folder(messy_dir)
    assert any("empty" in w and "n01440764" in w for w in imageset.warnings)
    prof = profile_dataset(loaded, imageset, tmp_path / "run", ProfileOptions(progress=False))
    skipped = {Path(s["path"]).name for s in prof.meta["dataset"]["skipped"]}
    assert skipped == {"truncated.jpg", "notes.png"}
    assert prof.meta["dataset"]["skipped_count"] == 2
    # gray, palette, RGBA and CMYK images were converted and counted
    assert dict(zip(prof.class_ids, prof.counts.tolist())) == {
        "n01440764": 0, CLASSES[0]: 7, CLASSES[1]: 3, CLASSES[2]: 3}
    tags = tag_profile(prof, [TagSetting("top-k", 1)])
    assert {t.class_id for t in tags} == set(CLASSES)  # the empty class has no tags
    meta = json.loads((tmp_path / "run" / "profile.json").read_text())
    for key in ("model", "preprocess", "dataset", "software", "started_at", "finished_at", "layers"):
        assert key in meta
    assert meta["model"]["weights_sha256"] == loaded.weights_sha256


def test_profile_is_deterministic(image_dir: Path, tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        loaded = load_model("tiny_models:build_tiny", preprocess=PRE)
        outs.append(profile_dataset(loaded, image_folder(image_dir), tmp_path / name,
                                    ProfileOptions(batch_size=3, progress=False)))
    for la, lb in zip(outs[0].layers, outs[1].layers):
        assert np.array_equal(la.means, lb.means)


def _profile_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "filtag_kg", "profile", "--model", "tiny_models:build_slow",
            "--image-size", "16", "--data", str(data), "--out", str(out), "--batch-size", "2",
            "--checkpoint-every", "1", "--top-images", "2", "--quiet", *extra]


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path: Path) -> None:
    data = write_images(tmp_path / "data", per_class=6, seed=5)
    env = cli_env()
    env["TINY_SLEEP"] = "0"
    done = subprocess.run(_profile_cmd(data, tmp_path / "full"), env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    env["TINY_SLEEP"] = "0.4"
    run_dir = tmp_path / "killed"
    ckpt = run_dir / CHECKPOINT

    def checkpoint_done() -> int:
        if not ckpt.exists():
            return 0
        with np.load(ckpt) as z:
            return int(json.loads(z["state"].tobytes())["done"])

    kill_when_done(_profile_cmd(data, run_dir), env, checkpoint_done, 6)  # third checkpoint: 6 of 18 done
    assert ckpt.exists() and not (run_dir / "profile.json").exists()

    again = subprocess.run(_profile_cmd(data, run_dir), env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr  # refuses to silently restart

    env["TINY_SLEEP"] = "0"
    res = subprocess.run(_profile_cmd(data, run_dir, "--resume"), env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert not ckpt.exists()
    full, resumed = Profile.load(tmp_path / "full"), Profile.load(run_dir)
    assert full.counts.tolist() == resumed.counts.tolist() == [6, 6, 6]
    for a, b in zip(full.layers, resumed.layers):
        np.testing.assert_allclose(a.means, b.means, rtol=1e-12, atol=0)
        for f in range(a.width):  # the running top images survive the kill too
            assert resumed.top_images(a.name, f) == full.top_images(a.name, f)


def test_checkpoint_of_other_data_is_refused(tmp_path: Path) -> None:
    data = write_images(tmp_path / "data", per_class=2)
    loaded = load_model("tiny_models:build_tiny", preprocess=PRE)
    run_dir = tmp_path / "run"
    profile_dataset(loaded, image_folder(data), run_dir, ProfileOptions(progress=False))
    # fake an interrupted pass of different data
    other = write_images(tmp_path / "other", per_class=3, seed=9)
    from filtag_kg.profile import _save_checkpoint

    state = {"fingerprint": {"data": "x", "layers": ["a"]}, "done": 1, "skipped": [],
             "started_at": "", "seconds": 0}
    _save_checkpoint(run_dir / CHECKPOINT, state, [torch.zeros(3, 6, dtype=torch.float64)],
                     torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ProfileError, match="different"):
        profile_dataset(loaded, image_folder(other), run_dir,
                        ProfileOptions(progress=False, resume=True))
    # the folder holds a finished run of other data: replacing it takes --overwrite
    with pytest.raises(ProfileError, match="--overwrite"):
        profile_dataset(loaded, image_folder(other), run_dir, ProfileOptions(progress=False, restart=True))
    profile_dataset(loaded, image_folder(other), run_dir,
                    ProfileOptions(progress=False, restart=True, overwrite=True))
    assert Profile.load(run_dir).counts.tolist() == [3, 3, 3]


def test_probe_values_on_shared_modules_match_reference() -> None:
    """Values at a shared ReLU (called twice per pass) and applied functions, against
    activations captured independently and transformed in numpy."""
    model = build_shared()
    layers = ["stem", "block.conv_a", "block.conv_b", "head"]
    x = torch.randn(3, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    raw: dict[str, np.ndarray] = {}
    taps = {"stem": model.stem, "block.conv_a": model.block.bn_a, "block.conv_b": model.block.conv_b,
            "head": model.head}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: raw.__setitem__(n, o.double().numpy().copy()))
               for n, m in taps.items()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    post = {"stem": np.tanh, "block.conv_a": lambda a: np.maximum(a, 0), "block.conv_b": lambda a: a,
            "head": lambda a: np.where(a > 0, a, 0.2 * a)}
    points = find_measure_points(model, layers, x[:1])
    with FilterProbe(model, points) as probe, torch.inference_mode():
        model(x)
        got = probe.take()
    for name, values in zip(layers, got):
        a = post[name](raw[name])
        lo = a.min(axis=(1, 2, 3), keepdims=True)
        hi = a.max(axis=(1, 2, 3), keepdims=True)
        ref = ((a - lo) / (hi - lo)).mean(axis=(2, 3))
        np.testing.assert_allclose(values.numpy(), ref, rtol=1e-5, atol=1e-7, err_msg=name)


def test_torchscript_model_profiles_like_the_eager_one(
    image_dir: Path, tmp_path: Path, scripted_tiny: Path
) -> None:
    pytest.importorskip("torch._export.converter", reason="TorchScript conversion needs torch >= 2.4")
    scripted = load_model(str(scripted_tiny), preprocess=PRE)
    assert scripted.kind == "torchscript"
    a = profile_dataset(scripted, image_folder(image_dir), tmp_path / "ts",
                        ProfileOptions(progress=False, batch_size=5))
    b = profile_dataset(load_model("tiny_models:build_tiny", preprocess=PRE), image_folder(image_dir),
                        tmp_path / "eager", ProfileOptions(progress=False, batch_size=5))
    assert [lp.measure["kind"] for lp in a.layers] == ["activation", "activation", "conv"]
    for x, y in zip(a.layers, b.layers):
        np.testing.assert_allclose(x.means, y.means, rtol=1e-6, atol=1e-9)


def test_bf16_autocast_stays_close_to_float32(image_dir: Path, tmp_path: Path) -> None:
    runs = {}
    for amp in ("off", "bf16"):
        loaded = load_model("tiny_models:build_tiny", preprocess=PRE)
        runs[amp] = profile_dataset(loaded, image_folder(image_dir), tmp_path / amp,
                                    ProfileOptions(progress=False, amp=amp))
    assert runs["bf16"].meta["options"]["amp"] == "bf16"
    for a, b in zip(runs["off"].layers, runs["bf16"].layers):
        assert a.means.dtype == b.means.dtype == np.float64
        np.testing.assert_allclose(b.means, a.means, atol=0.02)
        assert not np.array_equal(a.means, b.means)  # autocast really ran in bf16


def test_background_checkpoints_are_snapshots_and_report_failures(tmp_path: Path) -> None:
    from filtag_kg.errors import OutputError
    from filtag_kg.profile import _checkpoint_arrays, _CheckpointWriter, _load_checkpoint

    sums = [torch.arange(6, dtype=torch.float64).view(2, 3)]
    counts = torch.tensor([1, 2])
    state = {"fingerprint": {"layers": ["conv1"]}, "done": 3}
    writer = _CheckpointWriter(tmp_path / CHECKPOINT)
    writer.submit(_checkpoint_arrays(state, sums, counts))
    sums[0] += 100.0  # the pass goes on while the file is written
    counts += 5
    writer.submit(_checkpoint_arrays(state, sums, counts))  # waits for the first write
    writer.wait()
    got_state, got_sums, got_counts, _ = _load_checkpoint(tmp_path / CHECKPOINT)
    assert got_state == state
    np.testing.assert_array_equal(got_sums[0], np.arange(6.0).reshape(2, 3) + 100.0)
    assert got_counts.tolist() == [6, 7]
    # the copy taken at submit time is what lands, whatever happens to the tensors later
    arrays = _checkpoint_arrays(state, sums, counts)
    sums[0].zero_()
    assert arrays["sums_0000"][0, 1] == 101.0
    (tmp_path / "file").write_text("")
    broken = _CheckpointWriter(tmp_path / "file" / CHECKPOINT)  # its folder is a file
    broken.submit(arrays)
    with pytest.raises(OutputError):
        broken.wait()
    broken.wait()  # reported once


def test_batched_scaling_equals_the_per_layer_function_exactly() -> None:
    """take()/take_flat() scale all layers at once; each layer equals scaled_filter_values."""
    model = build_tiny().eval()
    x = torch.randn(4, 3, 16, 16)
    pts = find_measure_points(model, ["conv1", "conv2", "conv3"], x[:1])
    outputs: dict[str, torch.Tensor] = {}
    taps = [model.act1.register_forward_hook(lambda m, i, o: outputs.__setitem__("conv1", o.clone())),
            model.bn2.register_forward_hook(lambda m, i, o: outputs.__setitem__("conv2", torch.relu(o))),
            model.conv3.register_forward_hook(lambda m, i, o: outputs.__setitem__("conv3", o.clone()))]
    try:
        with FilterProbe(model, pts) as probe, torch.inference_mode():
            model(x)
            per_layer = probe.take()
            model(x)
            flat = probe.take_flat()
    finally:
        for t in taps:
            t.remove()
    assert flat.shape == (4, 6 + 8 + 5) and flat.dtype == torch.float64
    for p, got in zip(pts, per_layer):
        assert torch.equal(got, scaled_filter_values(outputs[p.layer]))
    assert torch.equal(torch.cat(per_layer, dim=1), flat)


def test_ctrl_c_during_a_batchs_bookkeeping_neither_loses_nor_repeats_it(
    messy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C that lands after a batch's sums were added but before the batch was counted
    as done: before the fix the checkpoint held the sums without the count, and --resume
    added the batch (and its skipped files) a second time."""
    from filtag_kg.profile import Interrupted

    loaded = load_model("tiny_models:build_tiny", preprocess=PRE)
    opts = {"batch_size": 3, "checkpoint_every": 0, "progress": False}
    full = profile_dataset(loaded, image_folder(messy_dir), tmp_path / "full", ProfileOptions(**opts))
    for at in (1, 2, 4):
        run_dir = tmp_path / f"cut{at}"
        with sigint_in_bookkeeping(monkeypatch, at), pytest.raises(Interrupted):
            profile_dataset(loaded, image_folder(messy_dir), run_dir, ProfileOptions(**opts))
        resumed = profile_dataset(loaded, image_folder(messy_dir), run_dir,
                                  ProfileOptions(**opts, resume=True))
        assert resumed.counts.tolist() == full.counts.tolist(), at
        assert resumed.meta["dataset"]["skipped"] == full.meta["dataset"]["skipped"], at
        for a, b in zip(full.layers, resumed.layers):
            np.testing.assert_allclose(a.means, b.means, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name, damage", [
    ("profile.json", "half"), ("profile.json", "garbage"), ("profile.json", "list"),
    ("profile.json", "entries"),
    ("profile.npz", "half"), ("profile.npz", "empty"), ("profile.npz", "garbage"),
])
def test_a_damaged_profile_is_a_one_line_error_in_every_reader(
    tiny_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, damage: str
) -> None:
    """A cut, emptied or overwritten profile.json or profile.npz made evaluate, sentences,
    report, tag and explain stop with a json, zipfile or NumPy traceback (EOFError,
    BadZipFile, pickled data); each now names the file and how to make it again."""
    from filtag_kg.cli import main
    from filtag_kg.explain import ExplainOptions, explain_dataset

    run, held = tiny_run
    explain_dataset(run, image_folder(held), ExplainOptions(progress=False, batch_size=4))
    path = run / name
    data = path.read_bytes()
    path.write_bytes({"half": data[: len(data) // 2], "empty": b"", "garbage": b"x\x00y{]\n",
                      "list": b"[1, 2]", "entries": b'{"classes": [1], "layers": []}'}[damage])
    readers = [["sentences", str(run)], ["report", str(run), "--out", str(tmp_path / "report"), "--quiet"],
               ["tag", str(run), "--k", "1"], ["explain", str(run), "--data", str(held), "--quiet"]]
    if name == "profile.json":  # these read only the class and layer lists
        readers += [["evaluate", str(run)], ["labels", "export", str(run)]]
    for argv in readers:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("filtag-kg: error: "), (argv, err)
        assert str(path) in err[0] and "`filtag-kg profile`" in err[0], (argv, err)


@pytest.mark.parametrize("damage", ["half", "empty"])
def test_a_damaged_checkpoint_is_refused_with_the_fix(tmp_path: Path, damage: str) -> None:
    """A checkpoint cut short raised zipfile.BadZipFile or EOFError past the error handling."""
    from filtag_kg.profile import _load_checkpoint

    ckpt = tmp_path / CHECKPOINT
    with open(ckpt, "wb") as fh:
        np.savez(fh, state=np.frombuffer(b'{"done": 1}', dtype=np.uint8), counts=np.zeros(3))
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "half" else b"")
    with pytest.raises(ProfileError, match=r"checkpoint .* is unreadable .*; rerun with --restart"):
        _load_checkpoint(ckpt)
