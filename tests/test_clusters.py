"""explain --clusters (docs/cluster-method.md) against a plain per-image implementation."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CLASSES, cli_env, kill_when_done, state_done, write_images
from test_profile import PRE
from tiny_models import build_tiny

from filtag_kg.cli import main
from filtag_kg.clusters import (
    ClusterOptions,
    aggregate_records,
    class_aggregates,
    cluster_concepts,
    cluster_layer,
)
from filtag_kg.data import image_folder, load_rgb
from filtag_kg.explain import STATE, ExplainOptions, explain_dataset, read_explanations

LAYERS = ["conv1", "conv2", "conv3"]


# ---------------------------------------------------------------- the plain reference


def plain_maps(model: torch.nn.Module, file: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One image: per layer the measured maps [F, H, W] and d (predicted class logit) / d map,
    by the tiny model's forward pass written out by hand."""
    x = PRE.transform()(load_rgb(str(file))).unsqueeze(0)
    a1 = F.relu(model.conv1(x))
    a2 = F.relu(model.bn2(model.conv2(a1)))
    c3 = model.conv3(a2)
    logits = model.fc(torch.flatten(model.pool(c3), 1))
    kept = [a1, a2, c3]
    grads = torch.autograd.grad(logits[0, int(logits.argmax())], kept)
    return {n: (a[0].detach().double().numpy(), g[0].double().numpy())
            for n, a, g in zip(LAYERS, kept, grads)}


def plain_cluster(acts: np.ndarray, grads: np.ndarray, threshold: float) -> list[dict]:
    """docs/cluster-method.md steps 1-5 for one image and layer, filter by filter."""
    n = len(acts)
    scaled = []
    for a in acts:
        a = a.reshape(-1)
        lo, hi = a.min(), a.max()
        scaled.append((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a))

    def cos(f: int, g: int) -> float:
        nf, ng = np.linalg.norm(scaled[f]), np.linalg.norm(scaled[g])
        if nf == 0 and ng == 0:
            return 1.0
        if nf == 0 or ng == 0:
            return 0.0
        return float(scaled[f] @ scaled[g] / (nf * ng))

    alpha = [float(g.mean()) for g in grads]
    importance = [alpha[f] * float(acts[f].mean()) for f in range(n)]
    order = sorted(range(n), key=lambda f: (-importance[f], f))
    parent = {}
    for i, f in enumerate(order):
        best, best_sim = f, None
        for g in order[:i]:
            s = cos(f, g)
            if s >= threshold and (best_sim is None or s > best_sim):
                best, best_sim = g, s
        parent[f] = best
    groups = defaultdict(list)
    for f in range(n):
        r = f
        while parent[r] != r:
            r = parent[r]
        groups[r].append(f)
    out = []
    for root, members in groups.items():
        weight = max(0.0, sum(alpha[f] for f in members))
        if scaled[root].max() == 0:
            weight = 0.0
        merged = sum(scaled[f] for f in members) / len(members)
        out.append({"filters": members, "weight": weight, "merged": merged, "alpha": alpha})
    out.sort(key=lambda c: (-c["weight"], min(c["filters"])))
    for k, c in enumerate(out):
        c["rank"] = k + 1
    return out


def plain_concepts(cluster: dict, values: np.ndarray, tagged: dict[int, set[str]]) -> list[tuple[str, float]]:
    """Step 6: relu(alpha) x value weighted share of the cluster's tag mass per class."""
    if cluster["weight"] <= 0:
        return []
    g = {f: max(0.0, cluster["alpha"][f]) * values[f] for f in cluster["filters"]}
    total = sum(g.values())
    if total <= 0:
        return []
    score = {c: sum(g[f] for f in cluster["filters"] if c in tagged.get(f, ())) / total for c in CLASSES}
    ranked = sorted(((c, s) for c, s in score.items() if s > 0),
                    key=lambda cs: (-cs[1], CLASSES.index(cs[0])))
    return ranked[:5]


def layer_values(acts: np.ndarray) -> np.ndarray:
    """FilTag values: the layer min-max scaled to [0, 1] as a whole, spatial means."""
    lo, hi = acts.min(), acts.max()
    return ((acts - lo) / (hi - lo)).mean(axis=(1, 2)) if hi > lo else np.zeros(len(acts))


def read_tags(run: Path) -> dict[tuple[str, str, str], dict[int, set[str]]]:
    """(method, param, layer) -> filter -> tagging classes, from tags.tsv."""
    out: dict[tuple[str, str, str], dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for t in csv.DictReader((run / "tags.tsv").open(), delimiter="\t"):
        out[(t["method"], t["param"], t["layer"])][int(t["filter"])].add(t["class_id"])
    return out


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("jsonl", [False, True], ids=["parquet", "jsonl"])
def test_pass_equals_plain_per_image_implementation(tiny_run: tuple[Path, Path], jsonl: bool) -> None:
    from PIL import Image

    run, held = tiny_run
    opts = ExplainOptions(progress=False, batch_size=4, jsonl=jsonl, clusters=ClusterOptions(0.8, 2))
    meta = explain_dataset(run, image_folder(held), opts)
    assert meta["clusters"]["threshold"] == 0.8
    records = list(read_explanations(run))
    assert len(records) == 9 * 2
    files = sorted(held.glob("*/*.png"))
    model = build_tiny()
    tags = read_tags(run)
    seen_concepts = seen_maps = 0
    for rec in records:
        plain = plain_maps(model, files[rec["index"]])
        assert list(rec["clusters"]) == LAYERS
        # the atlas of the image: one row per layer (as high as its maps), 2 slots of its width each
        shapes = [plain[layer][0].shape[1:] for layer in LAYERS]
        tops = dict(zip(LAYERS, np.cumsum([0] + [h for h, _ in shapes])))
        atlas_file = run / f"clusters/maps/{rec['sha256']}/clean.png"
        with Image.open(atlas_file) as im:
            atlas = np.asarray(im, dtype=np.float64)
            assert im.mode == "L" and im.size == (2 * max(w for _, w in shapes), sum(h for h, _ in shapes))
        covered = np.zeros(atlas.shape, dtype=bool)
        for layer in LAYERS:
            acts, grads = plain[layer]
            want = plain_cluster(acts, grads, 0.8)
            got = rec["clusters"][layer]
            assert [c["rank"] for c in got] == list(range(1, len(want) + 1))
            assert [c["filters"] for c in got] == [sorted(c["filters"]) for c in want]
            np.testing.assert_allclose([c["weight"] for c in got], [c["weight"] for c in want],
                                       rtol=1e-4, atol=1e-9)
            values = layer_values(acts)
            for g, w in zip(got, want):
                concepts = plain_concepts(w, values, tags[(rec["method"], rec["param"], layer)])
                assert [c["class_id"] for c in g["concepts"]] == [c for c, _ in concepts]
                np.testing.assert_allclose([c["score"] for c in g["concepts"]], [s for _, s in concepts],
                                           rtol=1e-5)
                seen_concepts += bool(concepts)
                if w["rank"] <= 2 and w["weight"] > 0:
                    h, wd = acts.shape[1:]
                    x, y = (w["rank"] - 1) * wd, int(tops[layer])
                    assert g["map"] == f"clusters/maps/{rec['sha256']}/clean.png#xywh={x},{y},{wd},{h}"
                    png = atlas[y:y + h, x:x + wd]
                    covered[y:y + h, x:x + wd] = True
                    expect = np.round(w["merged"] / w["merged"].max() * 255).reshape(png.shape)
                    assert np.abs(png - expect).max() <= 1
                    seen_maps += 1
                else:
                    assert g["map"] is None
        assert not atlas[~covered].any()  # slots without a map stay 0
    assert seen_concepts > 5 and seen_maps > 5, (seen_concepts, seen_maps)  # labels and maps were compared


def test_clusters_partition_every_layer(tiny_run: tuple[Path, Path]) -> None:
    run, held = tiny_run
    explain_dataset(run, image_folder(held), ExplainOptions(progress=False, clusters=ClusterOptions(0.7, 1),
                                                           perturb=["gaussian:0.2"]))
    widths = {"conv1": 6, "conv2": 8, "conv3": 5}
    sizes = set()
    for rec in read_explanations(run):
        for layer, clusters in rec["clusters"].items():
            members = [f for c in clusters for f in c["filters"]]
            assert sorted(members) == list(range(widths[layer]))  # each filter exactly once
            assert all(c["filters"] == sorted(c["filters"]) and c["weight"] >= 0 for c in clusters)
            keys = [(-c["weight"], c["filters"][0]) for c in clusters]
            assert keys == sorted(keys)  # rank order: weight descending, ties by smallest member
            sizes.update(len(c["filters"]) for c in clusters)
    assert max(sizes) > 1 and min(sizes) == 1  # the clustering did group maps, and not all of them


def test_generalised_gradcam_weights_by_hand(device: str) -> None:
    # three 2x2 maps: 0 and 1 are the same pattern at different scales (cosine 1 once scaled),
    # 2 is its mirror image; a constant map 3 and a dead map 4 (the flat cluster)
    acts = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[3.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 2.0]],
                         [[5.0, 5.0], [5.0, 5.0]], [[0.0, 0.0], [0.0, 0.0]]])[None]
    # gradients: spatial means 0.25, 0.5, -0.75, 1.0, 2.0
    grads = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]], [[-3.0, 0.0], [0.0, 0.0]],
                          [[4.0, 0.0], [0.0, 0.0]], [[8.0, 0.0], [0.0, 0.0]]])[None]
    lc = cluster_layer(acts.to(device), grads.to(device), threshold=0.9, n_maps=3)
    # scaled maps: 0 -> [1,0,0,0], 1 -> [1,0,0,0], 2 -> [0,0,0,1], 3 and 4 -> zeros
    # clusters {0, 1} (weight 0.25 + 0.5), {3, 4} (flat: 0), {2} (relu(-0.75) = 0)
    assert int(lc.count[0]) == 3
    assert lc.members[0].tolist() == [0, 1, 2, 3, 4]  # rank 1: {0, 1}; ties at 0: {2} before {3, 4}
    assert lc.sizes[0, :3].tolist() == [2, 1, 2]
    assert lc.weights[0, :3].tolist() == [0.75, 0.0, 0.0]
    assert lc.rank_of[0].tolist() == [0, 0, 1, 2, 2]
    assert lc.maps[0, 0].tolist() == [[255, 0], [0, 0]] and lc.has_map[0].tolist() == [True, False, False]
    # a lower threshold cannot join 2 to {0, 1}: the cosine of [1,0,0,0] and [0,0,0,1] is 0
    assert int(cluster_layer(acts, grads, threshold=1e-9).count[0]) == 3


def test_labels_follow_the_documented_rule(device: str) -> None:
    acts = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]], [[4.0, 0.0], [0.0, 1.0]],
                         [[0.0, 0.0], [0.0, 3.0]]])[None]
    grads = torch.tensor([0.4, -0.2, 0.8, 0.4]).view(1, 4, 1, 1).expand(1, 4, 2, 2).contiguous()
    lc = cluster_layer(acts.to(device), grads.to(device), threshold=0.9)
    # scaled maps: 0, 1 -> [1,0,0,0]; 2 -> [1,0,0,0.25] (cosine 0.970 with 0); 3 -> [0,0,0,1]
    # importance alpha x mean map: 0.1, -0.1, 1.0, 0.3 -> order 2, 3, 0, 1; 0 links to 2; 1 links to 0
    # (its most similar more important map: cosine 1.0 with 0 beats 0.970 with 2): {0, 1, 2} and {3}
    assert lc.members[0].tolist() == [0, 1, 2, 3] and lc.sizes[0, :2].tolist() == [3, 1]
    assert lc.weights[0, :2].tolist() == pytest.approx([1.0, 0.4])
    values = torch.tensor([[0.5, 0.25, 1.0, 0.2]], dtype=torch.float64)
    # classes 0..6: filter 0 tags 0 and 1; filter 1 tags 1; filter 2 tags 1, 2, 3, 4, 5, 6; filter 3 tags 0
    inc = torch.zeros(4, 7, dtype=torch.float64)
    inc[0, [0, 1]] = inc[1, 1] = inc[3, 0] = 1
    inc[2, 1:] = 1
    classes, scores = cluster_concepts(lc, values.to(device), inc.to(device))
    # cluster 1: g = relu(alpha) x value = 0.2, 0 (negative gradient), 0.8 -> total 1.0
    # class 1: 0.2 + 0.8; classes 2..6: 0.8 each (top 5 keeps 2..5, ties by class index); class 0: 0.2
    assert classes[0, 0].tolist() == [1, 2, 3, 4, 5]
    assert scores[0, 0].tolist() == pytest.approx([1.0, 0.8, 0.8, 0.8, 0.8])
    # cluster 2: filter 3 alone, tagged 0
    assert classes[0, 1, 0].item() == 0 and scores[0, 1].tolist() == pytest.approx([1.0, 0, 0, 0, 0])


def test_records_equal_between_parquet_and_jsonl_and_old_files_read(tiny_run: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    import shutil

    run, held = tiny_run
    other = tmp_path / "other"
    shutil.copytree(run, other)
    for folder, jsonl in ((run, False), (other, True)):
        explain_dataset(folder, image_folder(held), ExplainOptions(progress=False, batch_size=3, jsonl=jsonl,
                                                                  clusters=ClusterOptions(0.5, 3),
                                                                  perturb=["blur:1"]))
    columnar, lines = list(read_explanations(run)), list(read_explanations(other))
    assert len(columnar) == len(lines) == 9 * 2 * 2
    assert [r["clusters"] for r in columnar] == [r["clusters"] for r in lines]
    assert any(c["map"] and "/blur-1.0.png#xywh=" in c["map"] for r in columnar
               for cl in r["clusters"].values() for c in cl)
    aggregates = [json.loads((f / "clusters.json").read_text()) for f in (run, other)]
    assert aggregates[0] == aggregates[1] and aggregates[0]["classes"]
    # a pass without --clusters removes the maps and aggregates, and its records say None
    for folder, jsonl in ((run, False), (other, True)):
        explain_dataset(folder, image_folder(held), ExplainOptions(progress=False, jsonl=jsonl))
        assert not (folder / "clusters").exists() and not (folder / "clusters.json").exists()
        assert {r["clusters"] is None for r in read_explanations(folder)} == {True}
    # a JSON Lines file written before clusters existed has no such key
    path = other / "explanations.jsonl"
    old = [{k: v for k, v in json.loads(line).items() if k != "clusters"}
           for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert {r["clusters"] is None for r in read_explanations(other)} == {True}


def test_resume_after_kill_gives_the_same_clusters(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, held = tiny_run
    more = write_images(tmp_path / "more", per_class=4, seed=3)
    env = cli_env()
    cmd = [sys.executable, "-m", "filtag_kg", "explain", str(run), "--data", str(more), "--batch-size", "2",
           "--checkpoint-every", "1", "--quiet", "--clusters", "--cluster-maps", "2"]
    env["TINY_SLEEP"] = "0"
    ref = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr
    assert f"class aggregates in {run / 'clusters.json'}" in ref.stdout
    expected = list(read_explanations(run))
    maps = {p.relative_to(run): p.read_bytes() for p in (run / "clusters").rglob("*.png")}
    aggregates = (run / "clusters.json").read_bytes()
    assert len(expected) == 12 * 2 and maps
    prof = json.loads((run / "profile.json").read_text())
    prof["model"]["spec"] = "tiny_models:build_slow"
    (run / "profile.json").write_text(json.dumps(prof))
    env["TINY_SLEEP"] = "0.4"
    kill_when_done([*cmd, "--restart"], env, lambda: state_done(run / STATE), 4)
    assert (run / STATE).exists() and not (run / "clusters.json").exists()
    # other clustering options are a different pass
    res = subprocess.run([*cmd[:-1], "3", "--resume"], env={**env, "TINY_SLEEP": "0"}, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "clusters" in res.stderr
    env["TINY_SLEEP"] = "0"
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert list(read_explanations(run)) == expected
    assert {p.relative_to(run): p.read_bytes() for p in (run / "clusters").rglob("*.png")} == maps
    assert (run / "clusters.json").read_bytes() == aggregates


@pytest.mark.parametrize(("args", "words"), [
    (["--cluster-threshold", "0"], "--cluster-threshold 0.0 is not in (0, 1]"),
    (["--cluster-threshold", "1.5"], "--cluster-threshold 1.5 is not in (0, 1]"),
    (["--cluster-threshold", "nan"], "is not in (0, 1]"),
    (["--cluster-threshold", "high"], "--cluster-threshold 'high' is not a number"),
    (["--cluster-maps", "-1"], "--cluster-maps -1 must be a whole number >= 0"),
    (["--cluster-maps", "two"], "--cluster-maps 'two' is not a whole number"),
])
def test_cli_rejects_bad_cluster_parameters(tiny_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                            args: list[str], words: str) -> None:
    run, held = tiny_run
    code = main(["explain", str(run), "--data", str(held), "--quiet", "--clusters", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("filtag-kg: error: ") and words in err and err.count("\n") == 1
    assert not (run / "explanations.json").exists()


def _rec(cls: str, clusters: dict, *, perturbed: bool = False, method: str = "top-k",
         param: str = "2") -> dict:
    """A hand-made explanation record with only what the aggregates read."""
    return {"model_top": [{"class_id": cls, "label": cls, "prob": 0.9}], "method": method, "param": param,
            "perturbation": {"kind": "blur", "param": 1.0, "seed": 0} if perturbed else None,
            "clusters": clusters}


def _cl(weight: float, concepts: list[tuple[str, float]]) -> dict:
    return {"rank": 0, "filters": [], "weight": weight, "map": None,
            "concepts": [{"class_id": c, "score": s} for c, s in concepts]}


def test_class_aggregates_by_hand(tmp_path: Path) -> None:
    a = {"L": [_cl(2.0, [("x", 0.5), ("y", 0.25)]), _cl(1.0, [("x", 1.0)]), _cl(0.5, [("z", 1.0)]),
               _cl(0.25, [("w", 1.0)]), _cl(0.0, [])]}
    b = {"L": [_cl(4.0, [("y", 1.0)]), _cl(0.0, [("x", 1.0)])]}
    c = {"L": [_cl(8.0, [("x", 1.0)])]}
    records = [_rec("n1", a), _rec("n1", b), _rec("n2", c), _rec("n1", c, perturbed=True),
               _rec("n1", c, method="above-average", param=""), {**_rec("n1", a), "clusters": None}]
    run = tmp_path / "run"
    run.mkdir()
    (run / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = {"file": "explanations.jsonl", "clusters": {"maps": 3}}
    (run / "explanations.json").write_text(json.dumps(meta))
    got = class_aggregates(run)
    assert got == aggregate_records(records)
    assert got["format"] == "filtag-kg cluster aggregates" and got["top_clusters"] == 3
    # image a: top clusters (weight > 0) 2.0, 1.0, 0.5 -> x: 2*0.5 + 1*1 = 2 (one image), y: 0.5, z: 0.5;
    # w is in the fourth cluster; image b: y 4 (the weight-0 cluster does not count); c is n2's
    assert got["classes"] == [
        {"setting": {"method": "above-average", "param": None}, "class_id": "n1", "layer": "L", "images": 1,
         "concepts": [{"class_id": "x", "count": 1, "weight": 8.0}]},
        {"setting": {"method": "top-k", "param": 2}, "class_id": "n1", "layer": "L", "images": 2,
         "concepts": [{"class_id": "y", "count": 2, "weight": 4.5},
                      {"class_id": "x", "count": 1, "weight": 2.0},
                      {"class_id": "z", "count": 1, "weight": 0.5}]},
        {"setting": {"method": "top-k", "param": 2}, "class_id": "n2", "layer": "L", "images": 1,
         "concepts": [{"class_id": "x", "count": 1, "weight": 8.0}]},
    ]
    assert aggregate_records(records, top_clusters=4)["classes"][1]["concepts"][-1] == {
        "class_id": "w", "count": 1, "weight": 0.25}
    # layers keep the records' (profile) order, not the alphabet's
    two_layers = [_rec("n1", {"features.3": c["L"], "features.11": c["L"]})]
    assert [e["layer"] for e in aggregate_records(two_layers)["classes"]] == ["features.3", "features.11"]
    (run / "explanations.json").write_text(json.dumps({"file": "explanations.jsonl", "clusters": None}))
    with pytest.raises(Exception, match="without clusters"):
        class_aggregates(run)



def test_two_gloo_processes_give_the_clusters_of_one(tmp_path: Path) -> None:
    from test_distributed import TINY, _env, _run, single, torchrun

    data = write_images(tmp_path / "data", per_class=4, seed=4)
    held = write_images(tmp_path / "held", per_class=3, seed=9)
    common = [*TINY, "--data", str(data), "--k", "2", "--explain-data", str(held), "--clusters",
              "--cluster-threshold", "0.8", "--cluster-maps", "2"]
    env = _env()
    _run(torchrun("run", *common, "--out", str(tmp_path / "two"), "--checkpoint-every", "1"), env)
    _run(single("run", *common, "--out", str(tmp_path / "one")), env)
    two, one = list(read_explanations(tmp_path / "two")), list(read_explanations(tmp_path / "one"))
    assert len(two) == len(one) == 9
    for a, b in zip(two, one):
        for layer in LAYERS:
            ca, cb = a["clusters"][layer], b["clusters"][layer]
            assert [(c["filters"], c["map"]) for c in ca] == [(c["filters"], c["map"]) for c in cb]
            np.testing.assert_allclose([c["weight"] for c in ca], [c["weight"] for c in cb], rtol=1e-6)
    maps = [sorted(p.relative_to(r) for p in (r / "clusters").rglob("*.png"))
            for r in (tmp_path / "two", tmp_path / "one")]
    assert maps[0] == maps[1] and maps[0]
    assert (tmp_path / "two" / "clusters.json").is_file()


def test_copies_of_a_file_keep_their_own_noisy_maps(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    """Noise is drawn from the seed and the image's position, so two copies of one file get
    different noisy inputs: their noisy maps were named by the checksum alone (one file, the
    last writer's, for both records). Clean maps of copies are the same and are shared."""
    import shutil

    run, held = tiny_run
    data = tmp_path / "copies"
    for name in ("a.png", "b.png"):
        (data / CLASSES[0]).mkdir(parents=True, exist_ok=True)
        shutil.copy(next((held / CLASSES[0]).iterdir()), data / CLASSES[0] / name)
    explain_dataset(run, image_folder(data), ExplainOptions(
        progress=False, perturb=["gaussian:0.3"], clusters=ClusterOptions(0.5, 3)))
    top = {}
    for rec in read_explanations(run):
        if rec["method"] != "top-k":
            continue
        kind = (rec["perturbation"] or {}).get("kind", "clean")
        maps = [c["map"] for cs in rec["clusters"].values() for c in cs if c["map"]]
        top[(Path(rec["image"]).name, kind)] = maps
        for m in maps:
            assert (run / m.split("#")[0]).is_file() and "#xywh=" in m
    assert top[("a.png", "clean")] == top[("b.png", "clean")]
    assert top[("a.png", "gaussian")] and top[("b.png", "gaussian")]
    assert set(top[("a.png", "gaussian")]).isdisjoint(top[("b.png", "gaussian")])


@pytest.mark.parametrize(("width", "side"), [(40, 3), (6, 7)], ids=["many-small-maps", "few-large-maps"])
def test_cluster_layer_equals_the_plain_rule_for_both_product_orders(width: int, side: int) -> None:
    """The similarities are put in importance order before the product when the layer has
    more filters than map cells, after it otherwise: both give the plain rule's clusters
    (random maps with flat ones and ties, several thresholds)."""
    gen = torch.Generator().manual_seed(width)
    for trial in range(4):
        acts = torch.relu(torch.randn(3, width, side, side, generator=gen, dtype=torch.float64))
        acts[:, : width // 4] = 0  # flat maps
        if trial % 2:
            acts = torch.round(acts * 2) / 2  # tied maps and importances
        grads = torch.randn(3, width, side, side, generator=gen, dtype=torch.float64)
        for threshold in (0.3, 0.6, 1.0):
            lc = cluster_layer(acts, grads, threshold)
            for b in range(3):
                want = plain_cluster(acts[b].numpy(), grads[b].numpy(), threshold)
                members = lc.members[b].tolist()
                got, at = [], 0
                for k in range(int(lc.count[b])):
                    size = int(lc.sizes[b, k])
                    got.append((sorted(members[at:at + size]), float(lc.weights[b, k])))
                    at += size
                assert [(sorted(c["filters"]), pytest.approx(c["weight"])) for c in want] == got


def test_a_batch_writes_one_map_file_per_image_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cluster map was a file of its own (3 per layer: 159 per image variant on ResNet-50,
    each file's creation costing more than the clustering); now one atlas per image variant,
    whose regions hold exactly the per-cluster maps, where a layout fixed by the layer shapes
    and --cluster-maps alone puts them."""
    import tempfile

    from PIL import Image

    from filtag_kg.clusters import cluster_batch, cluster_columns, to_host, variant_columns, write_maps

    gen = torch.Generator().manual_seed(5)
    shapes = [(6, 5, 7), (4, 9, 3), (2, 2, 2)]  # (filters, H, W); the third has fewer filters than slots
    acts = [torch.rand(3, f, h, w, generator=gen) for f, h, w in shapes]
    grads = [torch.randn(3, f, h, w, generator=gen) + 0.5 for f, h, w in shapes]
    for a in acts:
        a[2] = 0.0  # image 2: all maps flat, so no cluster has weight > 0 and no map
    values = torch.rand(3, sum(f for f, _, _ in shapes), generator=gen)
    incidence = [[(torch.rand(f, 4, generator=gen) > 0.5).to(torch.float64) for f, _, _ in shapes]]
    batch = cluster_batch(acts, grads, values, incidence, ClusterOptions(0.6, 3))
    host = to_host(batch)
    made: list[str] = []
    real_mkstemp = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp",
                        lambda *a, **k: made.append(k.get("prefix", "")) or real_mkstemp(*a, **k))
    scans: list[Path] = []  # each folder is scanned for stale temporary files once per batch
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: scans.append(Path(p)) or real_scandir(p))
    indices, sha = [10, 11, 12], ["s0", None, "s2"]
    write_maps(tmp_path, host, indices, sha, {"kind": "blur", "param": 2.0})
    monkeypatch.setattr(os, "scandir", real_scandir)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["clusters/maps/index-11/blur-2.0.png", "clusters/maps/s0/blur-2.0.png"]
    assert len(made) == 2  # one file created per image variant with maps
    assert len(scans) == 2 and len(set(scans)) == 2
    blur = {"kind": "blur", "param": 2.0}
    col_off, paths = cluster_columns(host, 0, variant_columns(host, indices, sha, blur))["cluster_map"]
    tops = [0, 5, 14]  # rows of the layers: heights 5, 9, 2
    seen = 0
    for b in range(3):
        rows = paths[col_off[b]:col_off[b + 1]]
        at = 0
        for li, (lc, (_, h, w)) in enumerate(zip(batch["layers"], shapes)):
            count = int(lc.count[b])
            for k, ref in enumerate(rows[at:at + count]):
                if k < 3 and bool(lc.weights[b, k] > 0):
                    atlas, _, frag = ref.partition("#")
                    assert frag == f"xywh={k * w},{tops[li]},{w},{h}"
                    with Image.open(tmp_path / atlas) as im:
                        assert im.mode == "L" and im.size == (3 * 7, 16)
                        region = np.asarray(im.crop((k * w, tops[li], k * w + w, tops[li] + h)))
                    assert np.array_equal(region, lc.maps[b, k].numpy())
                    seen += 1
                else:
                    assert ref is None
            at += count
        assert at == len(rows)
    assert seen == sum(int(h["has_map"].sum()) for h in host["layers"]) and seen > 3
