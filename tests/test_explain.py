"""Step 3 (explanations) and the evaluation against straightforward references."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, cli_env, kill_when_done, sigint_in_bookkeeping, state_done, write_images
from test_profile import PRE
from tiny_models import build_tiny

from filtag_kg.cli import main
from filtag_kg.data import image_folder
from filtag_kg.evaluation import evaluate_records
from filtag_kg.explain import STATE, ExplainOptions, Perturbation, explain_dataset, read_explanations
from filtag_kg.models import load_model
from filtag_kg.profile import ProfileOptions, profile_dataset
from filtag_kg.tagging import TagSetting, active_filters, write_tags

REQUIRED = {
    "image",
    "sha256",
    "true_class",
    "model_top",
    "method",
    "param",
    "active_filters",
    "votes",
    "votes_last_layer",
    "prediction",
    "prediction_last_layer",
}


def per_image_values(model: torch.nn.Module, files: list[Path]) -> list[dict[str, np.ndarray]]:
    from filtag_kg.data import load_rgb

    acts: dict[str, np.ndarray] = {}
    taps = {
        "conv1": (model.act1, lambda a: a),
        "conv2": (model.bn2, lambda a: np.maximum(a, 0.0)),
        "conv3": (model.conv3, lambda a: a),
    }
    hs = [
        m.register_forward_hook(lambda mod, i, o, n=n, f=f: acts.__setitem__(n, f(o.double().numpy()[0])))
        for n, (m, f) in taps.items()
    ]
    out = []
    try:
        for f in files:
            with torch.no_grad():
                model(PRE.transform()(load_rgb(str(f))).unsqueeze(0))
            vals = {}
            for n, a in acts.items():
                lo, hi = a.min(), a.max()
                vals[n] = ((a - lo) / (hi - lo)).mean(axis=(1, 2)) if hi > lo else np.zeros(a.shape[0])
            out.append(vals)
    finally:
        for h in hs:
            h.remove()
    return out


@pytest.mark.parametrize("jsonl", [False, True], ids=["parquet", "jsonl"])
def test_explanations_match_reference(tiny_run: tuple[Path, Path], jsonl: bool) -> None:
    run, held = tiny_run
    meta = explain_dataset(run, image_folder(held), ExplainOptions(progress=False, batch_size=4, jsonl=jsonl))
    assert meta["images"] == 9 and [s["method"] for s in meta["settings"]] == ["top-k", "above-average"]
    assert (run / "explanations.jsonl").is_file() == jsonl
    assert (run / "explanations.parquet").is_dir() == (not jsonl)
    lines = list(read_explanations(run))
    assert len(lines) == 9 * 2
    tags = list(csv.DictReader((run / "tags.tsv").open(), delimiter="\t"))
    files = sorted(held.glob("*/*.png"))
    values = per_image_values(build_tiny(), files)
    layers = ["conv1", "conv2", "conv3"]
    for rec in lines:
        assert set(rec) >= REQUIRED
        i = rec["index"]
        assert Path(rec["image"]) == files[i] and rec["true_class"] == files[i].parent.name
        import hashlib

        assert rec["sha256"] == hashlib.sha256(files[i].read_bytes()).hexdigest()
        votes: Counter[str] = Counter()
        for layer in layers:
            v = values[i][layer]
            order = sorted(range(len(v)), key=lambda f: (-v[f], f))
            active = order[:2] if rec["method"] == "top-k" else [f for f in order if v[f] > v.mean()]
            got = rec["active_filters"][layer]
            assert [a["filter"] for a in got] == active
            np.testing.assert_allclose([a["value"] for a in got], v[active], rtol=1e-5, atol=1e-7)
            assert [a["rank"] for a in got] == list(range(1, len(active) + 1))
            layer_votes = Counter(
                t["class_id"]
                for t in tags
                if t["layer"] == layer and t["method"] == rec["method"] and int(t["filter"]) in active
            )
            votes.update(layer_votes)
        assert rec["vote_counts"] == dict(votes)
        assert rec["votes_last_layer"] == {c: float(n) for c, n in layer_votes.items()}
        best = max(votes.values())
        assert rec["prediction"] == next(c for c in CLASSES if votes.get(c) == best)  # ties by class order
        probs = [t["prob"] for t in rec["model_top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5


def _same_records(columnar: list[dict], jsonl: list[dict]) -> None:
    """The columnar form's records equal the JSON form's, image by image; values and
    weights equal the JSON ones rounded to float32 (the stored precision)."""
    assert len(columnar) == len(jsonl) > 0
    for c, j in zip(columnar, jsonl):
        assert list(c) == list(j)  # same fields in the same order
        assert {k: v for k, v in c.items() if k != "active_filters"} == {
            k: v for k, v in j.items() if k != "active_filters"
        }
        assert list(c["active_filters"]) == list(j["active_filters"])
        for layer, got in c["active_filters"].items():
            want = j["active_filters"][layer]
            assert [a["filter"] for a in got] == [a["filter"] for a in want]
            assert [a["rank"] for a in got] == [a["rank"] for a in want]
            for key in ("value", "weight"):
                assert [key in a for a in got] == [key in a for a in want]
                rounded = [float(np.float32(a[key])) for a in want if key in a]
                assert [a[key] for a in got if key in a] == rounded


@pytest.mark.parametrize(
    "options",
    [{"perturb": ["gaussian:0.2", "blur:1"]}, {"weighting": "gradcam"}],
    ids=["perturbed", "gradcam"],
)
def test_columnar_form_equals_json_form(tiny_run: tuple[Path, Path], tmp_path: Path, options: dict) -> None:
    run, held = tiny_run
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run, other)
    imageset = image_folder(held)
    common = dict(progress=False, batch_size=4, checkpoint_every=1, **options)
    explain_dataset(run, imageset, ExplainOptions(**common))
    explain_dataset(other, imageset, ExplainOptions(jsonl=True, **common))
    assert len(list((run / "explanations.parquet").glob("part-*.parquet"))) == 3  # one per checkpoint
    columnar, jsonl = list(read_explanations(run)), list(read_explanations(other))
    assert len(jsonl) == 9 * 2 * (3 if "perturb" in options else 1)
    _same_records(columnar, jsonl)
    from filtag_kg.explanations_io import iter_parquet_rows

    # rows decoded one by one (as the report does) are the same records
    lazily = list(iter_parquet_rows(run / "explanations.parquet", batch_size=5))
    assert [i for i, _ in lazily] == [r["index"] for r in columnar]
    assert [decode() for _, decode in lazily] == columnar
    # a later pass in the other form replaces the first one's rows
    explain_dataset(run, imageset, ExplainOptions(jsonl=True, **common))
    assert not (run / "explanations.parquet").exists()
    assert list(read_explanations(run)) == jsonl


def test_uncommitted_parts_are_dropped(tmp_path: Path) -> None:
    """Parts written after the last state (a kill between a part's rename and the state
    write) and temporary files are deleted when the pass resumes."""
    from filtag_kg.explanations_io import ParquetParts, part_files

    folder = tmp_path / "explanations.parquet"
    folder.mkdir()
    for name in ("part-000000", "part-000001", "part-000002", ".part-000003"):
        (folder / f"{name}.parquet{'.tmp' if name[0] == '.' else ''}").write_bytes(b"x")
    ParquetParts(folder, 2, {})
    assert [p.name for p in part_files(folder)] == ["part-000000.parquet", "part-000001.parquet"]
    assert sorted(p.name for p in folder.iterdir()) == ["part-000000.parquet", "part-000001.parquet"]


@pytest.mark.parametrize("jsonl", [False, True], ids=["parquet", "jsonl"])
def test_explain_resume_after_sigkill(tiny_run: tuple[Path, Path], tmp_path: Path, jsonl: bool) -> None:
    run, held = tiny_run
    more = write_images(tmp_path / "more", per_class=6, seed=3)
    env = cli_env()
    cmd = [
        sys.executable,
        "-m",
        "filtag_kg",
        "explain",
        str(run),
        "--data",
        str(more),
        "--batch-size",
        "2",
        "--checkpoint-every",
        "1",
        "--quiet",
        *(["--jsonl"] if jsonl else []),
    ]
    env["TINY_SLEEP"] = "0"
    # the run's model spec is tiny_models:build_tiny; a slow copy of the same weights for the kill
    ref = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr
    expected = list(read_explanations(run))
    expected_bytes = (run / "explanations.jsonl").read_bytes() if jsonl else None
    assert len(expected) == 18 * 2
    if not jsonl:  # the same pass in the JSON form, to compare the resumed columnar rows with
        import shutil

        shutil.copytree(run, tmp_path / "as-json")
        as_json = [*cmd[:4], str(tmp_path / "as-json"), *cmd[5:], "--jsonl"]
        res = subprocess.run(as_json, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        json_records = list(read_explanations(tmp_path / "as-json"))
    prof = json.loads((run / "profile.json").read_text())
    prof["model"]["spec"] = "tiny_models:build_slow"
    (run / "profile.json").write_text(json.dumps(prof))
    env["TINY_SLEEP"] = "0.4"
    kill_when_done([*cmd, "--restart"], env, lambda: state_done(run / STATE), 6)
    assert (run / STATE).exists()
    env["TINY_SLEEP"] = "0"
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert list(read_explanations(run)) == expected  # no row lost or repeated
    if jsonl:
        assert (run / "explanations.jsonl").read_bytes() == expected_bytes
    else:
        _same_records(list(read_explanations(run)), json_records)
    assert not (run / STATE).exists()


def test_perturbations_are_deterministic() -> None:
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    for text in ("gaussian:0.1", "salt-and-pepper:0.2", "blur:1.5"):
        p = Perturbation.parse(text, seed=3)
        a = p.apply(x, [0, 1, 2, 3], mean, std)
        assert not torch.equal(a, x)
        torch.testing.assert_close(a, p.apply(x, [0, 1, 2, 3], mean, std))
        # an image's perturbation does not depend on its batch
        torch.testing.assert_close(a[2:3], p.apply(x[2:3], [2], mean, std))
        pix = a * 0.25 + 0.5
        assert pix.min() >= -1e-6 and pix.max() <= 1 + 1e-6
    g = Perturbation.parse("gaussian:0.1", seed=3)
    assert not torch.equal(
        g.apply(x, [0], mean, std), Perturbation.parse("gaussian:0.1", seed=4).apply(x, [0], mean, std)
    )
    sp = Perturbation.parse("salt-and-pepper:0.3", seed=1).apply(x, [0, 1, 2, 3], mean, std) * 0.25 + 0.5
    changed = ~torch.isclose(sp, (x * 0.25 + 0.5).clamp(0, 1)).all(dim=1)
    assert 0.15 < changed.float().mean() < 0.45  # about 30% of pixels, all channels together
    from filtag_kg.errors import FiltagError

    for bad in ("noise:1", "gaussian:x", "gaussian:-1", "salt-and-pepper:2"):
        with pytest.raises(FiltagError):
            Perturbation.parse(bad)


def _rec(
    index: int,
    votes: dict[str, float],
    top1: str,
    true: str | None,
    pert: dict | None = None,
    last: dict[str, float] | None = None,
) -> dict:
    from filtag_kg.evaluation import ranked_classes

    order = {"a": 0, "b": 1, "c": 2}
    last = last if last is not None else votes
    pred = ranked_classes(votes, order)[0] if votes else None
    pred_last = ranked_classes(last, order)[0] if last else None
    return {
        "index": index,
        "image": f"{index}.png",
        "method": "top-k",
        "param": "1",
        "true_class": true,
        "model_top": [{"class_id": top1, "label": top1, "prob": 0.9}],
        "votes": votes,
        "votes_last_layer": last,
        "prediction": pred,
        "prediction_last_layer": pred_last,
        "perturbation": pert,
        "weighting": None,
    }


def test_evaluation_counts_by_hand() -> None:
    noise = {"kind": "gaussian", "param": 0.1, "seed": 0}
    records = [
        _rec(0, {"a": 3, "b": 1}, "a", "a", last={"b": 1}),  # fid all yes, last no
        _rec(0, {"b": 2, "a": 1}, "a", "a", noise),  # explanation flips a->b
        _rec(1, {"b": 2, "c": 2}, "c", "b"),  # tie b/c -> b; top1 c in top3
        _rec(1, {"b": 2, "c": 2}, "b", "b", noise),  # model flips c->b
        _rec(2, {"c": 1}, "a", None),  # a not voted at all
    ]
    doc = evaluate_records(records, ["a", "b", "c"])
    clean = next(g for g in doc["groups"] if g["perturbation"] == "none")
    assert clean["images"] == 3 and clean["with_true_class"] == 2
    assert clean["model_correct"] == 1 and clean["model_accuracy"] == 0.5
    s = clean["all_layers"]
    assert s["counts"] == {
        "fidelity": 1,
        "misexplained": 2,  # image 2's explanation has no prediction: misexplained too
        "explanation_correct": 2,
        "model_top1_in_top1": 1,
        "model_top1_in_top3": 2,
        "model_top1_in_top5": 2,
    }
    assert s["fidelity"] == round(1 / 3, 6) and s["explanation_accuracy"] == 1.0
    assert clean["last_layer"]["counts"]["fidelity"] == 0
    (p,) = doc["perturbations"]
    assert (p["images"], p["model_flips"], p["explanation_flips"]) == (2, 1, 1)
    assert {c["class_id"]: c["votes"] for c in p["concepts_gaining"]} == {"b": 1}
    assert {c["class_id"]: c["votes"] for c in p["concepts_losing"]} == {"a": 2}
    by = {c["class_id"]: c for c in doc["by_class"]}
    assert by["a"]["top_concepts"] == [
        {"class_id": "a", "votes": 3},
        {"class_id": "b", "votes": 1},
        {"class_id": "c", "votes": 1},
    ]  # image 2: model top-1 a
    assert by["b"]["images"] == 1


def test_gradcam_weights_match_autograd(tiny_run: tuple[Path, Path]) -> None:
    run, held = tiny_run
    explain_dataset(
        run,
        image_folder(held),
        ExplainOptions(progress=False, weighting="gradcam", settings=[TagSetting("top-k", 2)]),
    )
    rec = next(read_explanations(run))
    from filtag_kg.data import load_rgb

    model = build_tiny()
    x = PRE.transform()(load_rgb(rec["image"])).unsqueeze(0)
    kept = {}
    model.act1.inplace = False
    model.act1.register_forward_hook(lambda m, i, o: kept.__setitem__("a", o))
    logits = model(x)
    (grad,) = torch.autograd.grad(logits[0, logits.argmax()], kept["a"])
    w = torch.relu(grad.mean(dim=(2, 3)) * kept["a"].detach().mean(dim=(2, 3)))[0]
    for a in rec["active_filters"]["conv1"]:
        assert a["weight"] == pytest.approx(float(w[a["filter"]]), rel=1e-4, abs=1e-9)
    assert rec["weighting"] == "gradcam"
    # weighted votes are sums of weights; the unweighted counts stay beside them
    weighted: Counter[str] = Counter()
    tags = list(csv.DictReader((run / "tags.tsv").open(), delimiter="\t"))
    for layer, active in rec["active_filters"].items():
        for a in active:
            for t in tags:
                if t["layer"] == layer and int(t["filter"]) == a["filter"] and t["method"] == "top-k":
                    weighted[t["class_id"]] += a["weight"]
    assert rec["votes"] == pytest.approx({c: v for c, v in weighted.items() if v})
    assert sum(rec["vote_counts"].values()) >= len(rec["votes"])


def test_explain_cli_single_images_and_by_class(
    capsys: pytest.CaptureFixture[str], tiny_run: tuple[Path, Path]
) -> None:
    run, held = tiny_run
    files = sorted(held.glob("*/*.png"))[:2]
    assert main(["explain", str(run), *map(str, files), "--k", "2", "--quiet"]) == 0
    lines = list(read_explanations(run))
    assert [r["true_class"] for r in lines] == [None, None] and lines[0]["param"] == "2"
    assert main(["evaluate", str(run), "--by-class"]) == 0
    out = capsys.readouterr().out
    assert "class-level explanations" in out and "top-k 2" in out
    assert "n02085620 (Chihuahua)" in out  # labels beside wnids
    assert main(["explain", str(run), "--k", "99", str(files[0])]) == 2
    assert "exceeds the width" in capsys.readouterr().err
    assert (run / "explanations.parquet").is_dir() and not (run / "explanations.jsonl").exists()
    assert main(["explain", str(run), *map(str, files), "--k", "2", "--quiet", "--jsonl"]) == 0
    assert "explanations.jsonl" in capsys.readouterr().out
    _same_records(lines, [json.loads(x) for x in (run / "explanations.jsonl").read_text().splitlines()])
    assert not (run / "explanations.parquet").exists()


def test_top_images_match_reference(tmp_path: Path) -> None:
    data = write_images(tmp_path / "data", per_class=4, seed=2)
    prof = profile_dataset(
        load_model("tiny_models:build_tiny", preprocess=PRE),
        image_folder(data),
        tmp_path / "run",
        ProfileOptions(progress=False, batch_size=5, top_images=3),
    )
    files = sorted(data.glob("*/*.png"))
    values = per_image_values(build_tiny(), files)
    for layer in ("conv1", "conv3"):
        for f in range(prof.layer(layer).width):
            v = [values[i][layer][f] for i in range(len(files))]
            best = sorted(range(len(files)), key=lambda i: (-v[i], i))[:3]
            got = prof.top_images(layer, f)
            assert [Path(p) for p, _ in got] == [files[i] for i in best]
            np.testing.assert_allclose([x for _, x in got], [v[i] for i in best], rtol=1e-5, atol=1e-7)
    from filtag_kg.profile import Profile

    again = Profile.load(tmp_path / "run")
    assert again.top_images("conv2", 0) == prof.top_images("conv2", 0)


def test_explain_skips_and_lists_bad_files(tiny_run: tuple[Path, Path], messy_dir: Path) -> None:
    run, _ = tiny_run
    meta = explain_dataset(run, image_folder(messy_dir), ExplainOptions(progress=False))
    assert {Path(s["path"]).name for s in meta["dataset"]["skipped"]} == {"truncated.jpg", "notes.png"}
    lines = list(read_explanations(run))
    assert len(lines) == meta["images"] * 2 == (3 * 3 + 4) * 2
    assert all("truncated" not in x["image"] for x in lines)


def test_torchscript_run_with_explanations(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, scripted_tiny: Path
) -> None:
    pytest.importorskip("torch._export.converter", reason="TorchScript conversion needs torch >= 2.4")
    path = scripted_tiny
    data = write_images(tmp_path / "data", per_class=3)
    held = write_images(tmp_path / "held", per_class=2, seed=8)
    code = main(["run", "--model", str(path), "--image-size", "16", "--data", str(data), "--k", "1",
                 "--out", str(tmp_path / "run"), "--explain-data", str(held), "--quiet"])
    assert code == 0, capsys.readouterr().err
    lines = list(read_explanations(tmp_path / "run"))
    assert len(lines) == 6 and set(lines[0]["active_filters"]) == {"conv1", "conv2", "conv3"}


@pytest.mark.parametrize(
    "setting",
    [
        TagSetting("top-k", 1),
        TagSetting("top-k", 5),
        TagSetting("top-percent", 60),
        TagSetting("above-average"),
    ],
)
@pytest.mark.parametrize("density", [0.3, 0.02], ids=["dense-tags", "sparse-tags"])
def test_batch_votes_equal_a_per_image_loop(setting: TagSetting, density: float) -> None:
    """Every vote path (counting sparse tags, gathering few rows, multiplying many)
    against plain per-image sums."""
    from filtag_kg.explain import explain_batch

    rng = np.random.default_rng(3)
    widths, n_classes, batch = [6, 9, 16], 7 if density > 0.1 else 90, 5
    values = [rng.random((batch, f)) for f in widths]
    values[1][2] = 0.5  # a constant layer: above-average activates nothing there
    weights = [rng.random((batch, f)) for f in widths]
    incidence = [(rng.random((f, n_classes)) < density).astype(np.float32) for f in widths]
    names = ["a", "b", "c"]
    plain = explain_batch(values, incidence, setting, names)
    weighted = explain_batch(values, incidence, setting, names, weights=weights)
    for b in range(batch):
        counts, votes = np.zeros(n_classes), np.zeros(n_classes)
        for li, name in enumerate(names):
            idx = active_filters(values[li][b], setting, name)
            np.testing.assert_array_equal(plain[b]["active"][li], idx)
            layer_counts = np.zeros(n_classes)
            layer_votes = np.zeros(n_classes)
            for f in idx.tolist():
                layer_counts += incidence[li][f]
                layer_votes += incidence[li][f] * weights[li][b, f]
            counts += layer_counts
            votes += layer_votes
        np.testing.assert_array_equal(plain[b]["counts"], counts)
        np.testing.assert_array_equal(plain[b]["votes"], counts)
        np.testing.assert_array_equal(plain[b]["counts_last"], layer_counts)
        np.testing.assert_array_equal(weighted[b]["counts"], counts)
        np.testing.assert_allclose(weighted[b]["votes"], votes, rtol=1e-12)
        np.testing.assert_allclose(weighted[b]["votes_last"], layer_votes, rtol=1e-12)
    if setting.method == "above-average":
        assert len(plain[2]["active"][1]) == 0


@pytest.mark.parametrize(
    "setting",
    [TagSetting("top-k", 1), TagSetting("top-k", 3), TagSetting("top-k", 12), TagSetting("top-percent", 30),
     TagSetting("above-average")],
)
def test_batch_active_sets_keep_tie_order(setting: TagSetting) -> None:
    """The batch selection (argmax passes, packed unstable sort) ranks equal values by the
    lower index, exactly as the per-image reference, on values full of ties."""
    from filtag_kg.explain import _active_batch
    from filtag_kg.tagging import order_filters

    rng = np.random.default_rng(5)
    values = rng.integers(0, 4, size=(40, 16)) / 4.0  # four levels: ties everywhere
    values[3] = 0.25  # a constant row
    for order in (None, order_filters(values)):
        cols, lengths = _active_batch(values, order, setting, "x")
        got = np.split(cols, np.cumsum(lengths)[:-1])
        for b in range(len(values)):
            np.testing.assert_array_equal(got[b], active_filters(values[b], setting, "x"))


def test_writer_thread_error_is_raised_and_no_thread_survives(
    tiny_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import filtag_kg.explain as ex

    run, held = tiny_run
    calls = []
    real = ex.encode_batch

    def failing(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "encode_batch", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        explain_dataset(run, image_folder(held), ExplainOptions(progress=False, batch_size=2))
    assert not [t for t in threading.enumerate() if t.name == "filtag-explain-writer"]
    monkeypatch.setattr(ex, "encode_batch", real)
    explain_dataset(run, image_folder(held), ExplainOptions(progress=False, batch_size=2, restart=True))
    assert not [t for t in threading.enumerate() if t.name == "filtag-explain-writer"]
    assert len(list(read_explanations(run))) == 9 * 2


def test_host_worker_is_bounded_and_reports_errors() -> None:
    import threading

    from filtag_kg.explain import _HostWorker

    gate, done = threading.Event(), []
    w = _HostWorker(depth=2)
    w.submit(lambda: (gate.wait(5), done.append(0)))
    w.submit(lambda: done.append(1))
    w.submit(lambda: done.append(2))  # the first job holds the thread: two wait in the queue
    blocked = threading.Thread(target=w.submit, args=(lambda: done.append(3),))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # a third waiting job blocks the pass
    gate.set()
    blocked.join(5)
    w.drain()
    assert done == [0, 1, 2, 3]
    w.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        w.drain()
    w.close()
    assert not w._thread.is_alive()


def test_misexplained_counts_agree_and_include_explanations_without_prediction(
    tiny_run: tuple[Path, Path],
) -> None:
    """evaluate, the report's page choice and the misexplained-images query count the same images."""
    from filtag_kg import sparql
    from filtag_kg.evaluation import evaluate_run, explains_model
    from filtag_kg.rdf import export_run_stats
    from filtag_kg.report.explanation_pages import ExplanationPages

    run, held = tiny_run
    options = ExplainOptions(progress=False, settings=[TagSetting("top-k", 2)], jsonl=True)
    explain_dataset(run, image_folder(held), options)
    lines = (run / "explanations.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    first = 0
    recs[first].update(votes={}, prediction=None)  # no active filter carried a tag
    (run / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    counts = evaluate_run(run)["groups"][0]["all_layers"]["counts"]
    misexplained = sum(not explains_model(r) for r in recs)
    assert counts["misexplained"] == len(recs) - counts["fidelity"] == misexplained
    assert ExplanationPages._misexplained([recs[first]])
    graph = export_run_stats(run)
    with sparql.open_source(graphs=[graph.path]) as source:
        rows = sparql.query(source, "misexplained-images").dicts()
    assert len(rows) == counts["misexplained"]
    # the graph names images by their path below the dataset root
    assert Path(recs[first]["image"]).relative_to(held).as_posix() in {r["image"] for r in rows}


def test_ctrl_c_during_a_batchs_bookkeeping_neither_loses_nor_repeats_it(
    tiny_run: tuple[Path, Path], messy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C that lands after a batch's rows went to the writer but before the batch was
    counted as done: before the fix the saved state held the rows without the count, and
    --resume wrote the batch's rows (and its skipped files) a second time."""
    import shutil

    from filtag_kg.profile import Interrupted

    run, _ = tiny_run
    opts = {"batch_size": 4, "progress": False, "workers": 0}
    shutil.copytree(run, tmp_path / "pristine")
    explain_dataset(run, image_folder(messy_dir), ExplainOptions(**opts))
    full = list(read_explanations(run))
    full_meta = json.loads((run / "explanations.json").read_text())
    # a reason names the file, never the address of the decoder's in-memory copy
    assert [s["reason"].count("0x") for s in full_meta["dataset"]["skipped"]] == [0, 0]
    assert "notes.png" in full_meta["dataset"]["skipped"][1]["reason"]
    for at in (1, 3):
        cut = tmp_path / f"cut{at}"
        shutil.copytree(tmp_path / "pristine", cut)
        with sigint_in_bookkeeping(monkeypatch, at), pytest.raises(Interrupted):
            explain_dataset(cut, image_folder(messy_dir), ExplainOptions(**opts))
        explain_dataset(cut, image_folder(messy_dir), ExplainOptions(**opts, resume=True))
        assert list(read_explanations(cut)) == full, at
        meta = json.loads((cut / "explanations.json").read_text())
        assert meta["dataset"]["skipped"] == full_meta["dataset"]["skipped"], at


def test_resuming_without_an_option_the_interrupted_pass_had_names_it(
    tiny_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--value-bits is in the fingerprint only when given: resuming without it once said
    'used a different ; rerun' (the difference was looked for in the new pass's keys only)."""
    from filtag_kg.errors import ProfileError
    from filtag_kg.profile import Interrupted

    run, held = tiny_run
    opts = {"batch_size": 2, "progress": False, "workers": 0}
    with sigint_in_bookkeeping(monkeypatch, 2), pytest.raises(Interrupted):
        explain_dataset(run, image_folder(held), ExplainOptions(**opts, value_bits=10))
    with pytest.raises(ProfileError, match=r"used a different value_bits; rerun"):
        explain_dataset(run, image_folder(held), ExplainOptions(**opts, resume=True))


def test_gradients_are_taken_for_the_class_the_rows_record_as_top_1() -> None:
    """With tied scores, argmax took the first class and topk (the recorded top-1) on this
    CPU the last: the gradients (gradcam weights, cluster weights) were then those of
    another class than the one the explanation and the class aggregates name."""
    from filtag_kg.explain import _class_gradients, _model_top

    out = torch.zeros(2, 20, 1, 1)
    out[:, 3] = out[:, 17] = 1.0  # classes 3 and 17 tie
    out.requires_grad_(True)
    logits = out.flatten(1) * 1.0
    top = _model_top(logits)[1][:, 0]
    (grad,) = _class_gradients([out], logits)
    assert grad is not None
    assert grad.flatten(1).argmax(1).tolist() == top.tolist()
    assert grad.sum().item() == 2.0  # one class per image


def test_ctrl_c_is_not_held_while_the_writer_has_no_room() -> None:
    """The pass waits for room in the writer's queue before the part of a batch that holds
    Ctrl-C: a writer stuck on a hung file system must not swallow Ctrl-C."""
    import os
    import threading

    from filtag_kg._interrupt import held_interrupt
    from filtag_kg.explain import _HostWorker

    stuck = threading.Event()
    worker = _HostWorker(depth=1)
    try:
        worker.submit(stuck.wait)  # the writer thread hangs in this job
        worker.submit(lambda: None)  # and the queue is full
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            worker.wait_for_room()
            with held_interrupt():
                worker.submit(lambda: None)
        assert time.monotonic() - t0 < 5
    finally:
        stuck.set()
        worker.close()


def test_resuming_in_another_precision_is_refused(
    tiny_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass interrupted under --amp bf16 and resumed in float32 would mix rows (and
    cluster maps) of two precisions in one pass: the fingerprint now holds the precision."""
    from filtag_kg.errors import ProfileError
    from filtag_kg.profile import Interrupted

    run, held = tiny_run
    opts = {"batch_size": 2, "progress": False, "workers": 0}
    with sigint_in_bookkeeping(monkeypatch, 2), pytest.raises(Interrupted):
        explain_dataset(run, image_folder(held), ExplainOptions(**opts, amp="bf16"))
    with pytest.raises(ProfileError, match=r"used a different amp; rerun"):
        explain_dataset(run, image_folder(held), ExplainOptions(**opts, resume=True))
    explain_dataset(run, image_folder(held), ExplainOptions(**opts, amp="bf16", resume=True))


@pytest.fixture
def module_act_run(tmp_path: Path) -> tuple[Path, Path]:
    """A profiled, tagged run of a model whose measure points the profile's records rebuild."""
    run = tmp_path / "run"
    prof = profile_dataset(load_model("tiny_models:build_module_act", preprocess=PRE),
                           image_folder(write_images(tmp_path / "train", per_class=4)), run,
                           ProfileOptions(progress=False))
    write_tags(run, prof, [TagSetting("top-k", 2)])
    return run, write_images(tmp_path / "held", per_class=3, seed=5)


def _forward_calls(loaded: object) -> list[int]:
    calls: list[int] = []
    loaded.module.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))  # type: ignore[attr-defined]
    return calls


def test_first_batch_is_the_dry_run_with_the_same_rows(
    module_act_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass reuses the profile's measure points and checks them on its first batch: one
    forward pass per batch (no dry run), and the rows of a pass with a dry run, bit for bit."""
    import filtag_kg.explain as ex

    run, held = module_act_run
    opts = ExplainOptions(progress=False, batch_size=4, restart=True)
    loaded = load_model("tiny_models:build_module_act", preprocess=PRE)
    calls = _forward_calls(loaded)
    explain_dataset(run, image_folder(held), opts, loaded=loaded)
    assert calls == [4, 4, 1]  # 9 images: three batches, nothing else
    reused = list(read_explanations(run))
    monkeypatch.setattr(ex, "_reusable_points", lambda *a, **k: None)  # the dry-run path
    del calls[:]
    explain_dataset(run, image_folder(held), opts, loaded=loaded)
    assert calls == [1, 4, 4, 1]
    assert list(read_explanations(run)) == reused and len(reused) == 9


def test_reused_points_on_a_changed_model_are_refused(module_act_run: tuple[Path, Path]) -> None:
    """A model whose conv no longer feeds its ReLU directly (same modules, same calls, same
    values) has other measure points: the first batch's check refuses it, as the dry run did,
    and leaves the run's earlier explanations in place."""
    from filtag_kg.errors import ProfileError

    run, held = module_act_run
    explain_dataset(run, image_folder(held), ExplainOptions(progress=False))
    before = list(read_explanations(run))
    changed = load_model("tiny_models:build_module_act", preprocess=PRE)
    changed.module.scaled = True
    with pytest.raises(ProfileError, match="measure points differ from the profile's"):
        explain_dataset(run, image_folder(held), ExplainOptions(progress=False, restart=True), loaded=changed)
    # refused before anything was removed: the earlier pass's rows stay
    assert list(read_explanations(run)) == before and len(before) == 9


def test_a_set_of_undecodable_files_is_refused(module_act_run: tuple[Path, Path], tmp_path: Path) -> None:
    """Without a dry run, a set in which no file decodes is still refused (no empty pass)."""
    from filtag_kg.errors import ProfileError

    run, _ = module_act_run
    bad = tmp_path / "bad" / CLASSES[0]
    _undecodable(bad, 3)
    with pytest.raises(ProfileError, match="could be decoded"):
        explain_dataset(run, image_folder(bad.parent), ExplainOptions(progress=False, restart=True))


def _undecodable(folder: Path, count: int, prefix: str = "x") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{prefix}{i}.png").write_text("not an image\n")


def test_a_checkpoint_before_the_first_decoded_batch_keeps_the_earlier_rows(
    module_act_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """Checkpoints while no batch has decoded yet (the points unchecked) once opened the sink:
    a set of undecodable files deleted the earlier rows and left a state file behind, which
    --resume then 'finished' with no images. Now nothing is saved or removed before the
    check, and the set is refused both times."""
    from filtag_kg.errors import ProfileError

    run, held = module_act_run
    explain_dataset(run, image_folder(held), ExplainOptions(progress=False))
    before = list(read_explanations(run))
    meta_before = (run / "explanations.json").read_text()
    _undecodable(tmp_path / "bad" / CLASSES[0], 3)
    opts = {"progress": False, "checkpoint_every": 1, "batch_size": 1}
    with pytest.raises(ProfileError, match="could be decoded"):
        explain_dataset(run, image_folder(tmp_path / "bad"), ExplainOptions(**opts, restart=True))
    assert list(read_explanations(run)) == before and len(before) == 9
    assert not (run / STATE).exists()
    with pytest.raises(ProfileError, match="could be decoded"):
        explain_dataset(run, image_folder(tmp_path / "bad"), ExplainOptions(**opts, resume=True))
    assert list(read_explanations(run)) == before
    assert (run / "explanations.json").read_text() == meta_before and not (run / STATE).exists()


def test_undecodable_files_first_then_a_changed_model_keeps_the_earlier_rows(
    module_act_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """Undecodable files before the first image, a checkpoint after each: the changed
    model is refused on the first decoded batch with the earlier rows and no state file."""
    import shutil

    from filtag_kg.errors import ProfileError

    run, held = module_act_run
    explain_dataset(run, image_folder(held), ExplainOptions(progress=False))
    before = list(read_explanations(run))
    mixed = tmp_path / "mixed"
    shutil.copytree(held, mixed)
    _undecodable(mixed / CLASSES[0], 3, prefix="a")  # sorted before img00.png
    changed = load_model("tiny_models:build_module_act", preprocess=PRE)
    changed.module.scaled = True
    with pytest.raises(ProfileError, match="measure points differ"):
        explain_dataset(run, image_folder(mixed),
                        ExplainOptions(progress=False, checkpoint_every=1, batch_size=1, restart=True),
                        loaded=changed)
    assert list(read_explanations(run)) == before and len(before) == 9
    assert not (run / STATE).exists()


def test_ctrl_c_in_the_first_recorded_batch_keeps_the_earlier_rows(module_act_run: tuple[Path, Path]) -> None:
    """Ctrl-C while the first batch (the points' check) runs: the interrupt path once opened
    the sink, removing the earlier rows and saving a state file before any check."""
    from filtag_kg.profile import Interrupted

    run, held = module_act_run
    explain_dataset(run, image_folder(held), ExplainOptions(progress=False))
    before = list(read_explanations(run))
    meta_before = (run / "explanations.json").read_text()
    loaded = load_model("tiny_models:build_module_act", preprocess=PRE)

    def ctrl_c(module: torch.nn.Module, inputs: object) -> None:
        handle.remove()
        raise KeyboardInterrupt

    handle = loaded.module.block.register_forward_pre_hook(ctrl_c)
    with pytest.raises(Interrupted, match="before the first batch's check; the run is as it was"):
        explain_dataset(run, image_folder(held), ExplainOptions(progress=False, batch_size=4, restart=True),
                        loaded=loaded)
    assert list(read_explanations(run)) == before and len(before) == 9
    assert (run / "explanations.json").read_text() == meta_before and not (run / STATE).exists()


def test_a_refused_restart_keeps_the_interrupted_pass_resumable(
    module_act_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--restart removed the interrupted pass's state before the first batch's check: a
    refused restart left that pass's rows beside the finished pass's metadata, and --resume
    then returned the old metadata as 'already finished'. The state now goes only once the
    check passed, so --resume finishes the interrupted pass."""
    from filtag_kg.errors import ProfileError
    from filtag_kg.profile import Interrupted

    run, held = module_act_run
    opts = {"progress": False, "batch_size": 4, "checkpoint_every": 1}
    explain_dataset(run, image_folder(held), ExplainOptions(**opts))  # pass A, finished
    full = list(read_explanations(run))
    with sigint_in_bookkeeping(monkeypatch, 2), pytest.raises(Interrupted):  # pass B, interrupted
        explain_dataset(run, image_folder(held), ExplainOptions(**opts, restart=True))
    state = (run / STATE).read_text()
    changed = load_model("tiny_models:build_module_act", preprocess=PRE)
    changed.module.scaled = True
    with pytest.raises(ProfileError, match="measure points differ"):
        explain_dataset(run, image_folder(held), ExplainOptions(**opts, restart=True), loaded=changed)
    assert (run / STATE).read_text() == state
    loaded = load_model("tiny_models:build_module_act", preprocess=PRE)
    calls = _forward_calls(loaded)
    explain_dataset(run, image_folder(held), ExplainOptions(**opts, resume=True), loaded=loaded)
    assert calls == [1]  # B's last image: the pass was resumed, not taken as finished
    assert list(read_explanations(run)) == full and not (run / STATE).exists()


def test_a_chain_that_depends_on_the_batch_size_is_refused_unless_batches_of_one(
    module_act_run: tuple[Path, Path],
) -> None:
    """As the README says: the profile's dry run ran on one image, so a model whose conv no
    longer feeds its ReLU directly in larger batches is refused on the first batch with the
    profile's error; with --batch-size 1 the checked batch has the dry run's size."""
    from filtag_kg.errors import ProfileError

    run, held = module_act_run
    loaded = load_model("tiny_models:build_module_act", preprocess=PRE)
    loaded.module.register_forward_pre_hook(lambda m, i: setattr(m, "scaled", i[0].shape[0] > 1))
    with pytest.raises(ProfileError, match="measure points differ from the profile's"):
        explain_dataset(run, image_folder(held), ExplainOptions(progress=False, batch_size=4), loaded=loaded)
    ones = ExplainOptions(progress=False, batch_size=1)
    assert explain_dataset(run, image_folder(held), ones, loaded=loaded)["images"] == 9


def test_resuming_where_only_undecodable_files_are_left_checks_the_points_with_a_dry_run(
    module_act_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed pass in which no batch decodes still checks the reused points (a dry run on
    an earlier image) and finishes: only a set where nothing decodes is refused."""
    import shutil

    from filtag_kg.profile import Interrupted

    run, held = module_act_run
    mixed = tmp_path / "mixed"
    shutil.copytree(held, mixed)
    _undecodable(mixed / CLASSES[-1], 3, prefix="z")  # the last three files
    opts = {"progress": False, "batch_size": 3}
    full = explain_dataset(run, image_folder(mixed), ExplainOptions(**opts))
    rows = list(read_explanations(run))
    with sigint_in_bookkeeping(monkeypatch, 3), pytest.raises(Interrupted):  # after 9 of 12
        explain_dataset(run, image_folder(mixed), ExplainOptions(**opts, restart=True))
    assert json.loads((run / STATE).read_text())["done"] == 9
    loaded = load_model("tiny_models:build_module_act", preprocess=PRE)
    calls = _forward_calls(loaded)
    meta = explain_dataset(run, image_folder(mixed), ExplainOptions(**opts, resume=True), loaded=loaded)
    assert calls == [1]  # the dry run only: the last batch did not decode
    assert list(read_explanations(run)) == rows and len(rows) == 9
    assert meta["dataset"]["skipped"] == full["dataset"]["skipped"] and len(full["dataset"]["skipped"]) == 3
