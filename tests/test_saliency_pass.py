"""``filtag-kg sag``: the artifact, regions named by concepts (against a hand-written hook,
scaling and vote count), and one-line errors for user mistakes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from test_profile import PRE
from tiny_models import build_tiny

from filtag_kg.cli import main
from filtag_kg.data import image_folder, load_rgb
from filtag_kg.models import load_model
from filtag_kg.profile import ProfileOptions, profile_dataset
from filtag_kg.saliency import IgosOptions, SagOptions, region_positions
from filtag_kg.saliency_pass import SaliencyOptions, explain_saliency, read_saliency
from filtag_kg.tagging import TagSetting, write_tags

FAST = SaliencyOptions(
    sag=SagOptions(grid=4, beam=3, roots=2, overlap=1, depth=1, max_nodes=8, threshold=0.995, max_size=6),
    igos=IgosOptions(size=4, iterations=2, ig_steps=2),
    device="cpu",
    thumbnail=32,
)


@pytest.fixture(scope="module")
def sag_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("sag")
    data = write_images(root / "train", per_class=4)
    held = write_images(root / "held", per_class=2, seed=11)
    run = root / "run"
    prof = profile_dataset(
        load_model("tiny_models:build_tiny", preprocess=PRE),
        image_folder(data),
        run,
        ProfileOptions(progress=False),
    )
    write_tags(run, prof, [TagSetting("top-k", 2)])
    return run, sorted(held.rglob("*.png"))


def _reference_regions(run: Path, image: Path, roots: list[list[int]], grid: int) -> list[dict[str, int]]:
    """The concepts of each region, by a forward hook on conv3 (measured at its output),
    the method's min-max scaling, the region mean, top-2 and tags.tsv's tags."""
    model = build_tiny()
    kept = {}
    h = model.conv3.register_forward_hook(lambda m, i, o: kept.update(a=o.detach()[0]))
    try:
        with torch.no_grad():
            model(PRE.transform()(load_rgb(str(image))).unsqueeze(0))
    finally:
        h.remove()
    a = kept["a"].numpy()
    s = (a - a.min()) / (a.max() - a.min())
    tags: dict[int, list[str]] = {}
    with open(run / "tags.tsv", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["layer"] == "conv3" and row["method"] == "top-k" and row["param"] == "2":
                tags.setdefault(int(row["filter"]), []).append(row["class_id"])
    out = []
    for patches in roots:
        inside = region_positions(patches, grid, (16, 16), s.shape[1:])
        values = s[:, inside].mean(axis=1)
        active = sorted(range(len(values)), key=lambda f: (-values[f], f))[:2]
        votes: dict[str, int] = {}
        for f in active:
            for c in tags.get(f, []):
                votes[c] = votes.get(c, 0) + 1
        out.append(votes)
    return out


def test_sag_artifact_and_regions_named_by_concepts(sag_run: tuple[Path, list[Path]]) -> None:
    run, images = sag_run
    doc = explain_saliency(run, images[:3], FAST)
    assert read_saliency(run) == json.loads(json.dumps(doc))
    assert len(doc["images"]) == 3 and doc["options"]["region_layers"] == ["conv3"]
    with_roots = 0
    for rec, path in zip(doc["images"], images[:3]):
        assert rec["igos"]["size"] == 4 and np.asarray(rec["igos"]["heatmap"]).shape == (4, 4)
        assert (run / "saliency" / rec["igos"]["png"]).is_file()
        g = rec["sag"]
        assert all((run / "saliency" / n["png"]).is_file() for n in g["nodes"])
        roots = [g["nodes"][r]["patches"] for r in g["roots"]]
        assert [r["node"] for r in rec["regions"]] == g["roots"]
        want = _reference_regions(run, path, roots, 4)
        got = [{v["class_id"]: v["count"] for v in r["votes"]} for r in rec["regions"]]
        assert got == want
        with_roots += bool(roots)
        for region in rec["regions"]:
            assert len(region["layers"][0]["active"]) == 2
    assert with_roots  # the check above compared something


def test_sag_cli_prints_roots_and_concepts(
    sag_run: tuple[Path, list[Path]], capsys: pytest.CaptureFixture
) -> None:
    run, images = sag_run
    code = main(
        [
            "sag",
            str(run),
            str(images[0]),
            "--grid",
            "4",
            "--beam",
            "2",
            "--depth",
            "1",
            "--no-igos",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "minimal sufficient explanation" in out and "saliency.json" in out
    assert read_saliency(run)["images"][0]["igos"] is None


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--grid", "0"], "invalid SAG grid 0"),
        (["--grid", "40"], "finer than the 16x16 image"),
        (["--threshold", "2"], "threshold"),
        (["--igos-size", "0"], "iGOS++ size"),
    ],
)
def test_sag_cli_one_line_errors(
    sag_run: tuple[Path, list[Path]], capsys: pytest.CaptureFixture, extra: list[str], words: str
) -> None:
    run, images = sag_run
    code = main(["sag", str(run), str(images[0]), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_sag_cli_missing_image(sag_run: tuple[Path, list[Path]], capsys: pytest.CaptureFixture) -> None:
    run, _ = sag_run
    assert main(["sag", str(run), str(run / "nope.jpg")]) == 2
    assert "image file" in capsys.readouterr().err
