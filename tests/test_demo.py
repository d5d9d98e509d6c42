"""``filtag-kg demo`` end to end, on a small configuration so it runs in seconds."""

from __future__ import annotations

import csv
from pathlib import Path

from filtag_kg.demo import run_demo
from filtag_kg.shapes import SHAPE_CLASSES

SMALL = {"train_per_class": 12, "heldout_per_class": 4, "epochs": 1}


def test_demo_runs_offline_and_reuses_its_cache(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_demo(out=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False,
                      echo=lines.append, sizes=SMALL)
    text = "\n".join(lines)
    assert "trained now" in text and "held-out accuracy" in text
    assert "training: " in text and "s CPU, 2 steps of 64 images, 1 epochs" in text  # 120 images / 64
    for name in ("profile.json", "profile.npz", "tags.tsv", "tags.json", "abstract_tags.tsv",
                 "evaluation.json", "kg.trig"):
        assert (tmp_path / "out" / name).is_file(), name
    assert (tmp_path / "out" / "explanations.parquet").is_dir()
    rows = list(csv.DictReader((tmp_path / "out" / "tags.tsv").open(), delimiter="\t"))
    assert {r["class_id"] for r in rows} == {w for w, _ in SHAPE_CLASSES}
    assert {r["label"] for r in rows} == {lab for _, lab in SHAPE_CLASSES}
    # top-k 1: one tag per class and layer
    assert sum(r["param"] == "1" for r in rows) == 10 * len(result.profile.layers)
    assert "linked 10/10 classes" in text
    said = text.split("in words (filtag-kg sentences):\n", 1)[1].splitlines()[:2]
    assert len(said) == 2 and all(": Predicted " in s for s in said)
    assert (tmp_path / "out" / "label_sheet.csv").is_file() and "label sheet" in text
    lines.clear()
    run_demo(out=tmp_path / "out2", cache_dir=tmp_path / "cache", progress=False, echo=lines.append,
             sizes=SMALL)
    assert "(cached;" in "\n".join(lines)
    assert (tmp_path / "out2" / "report" / "index.html").is_file()


def test_demo_seed_draws_another_dataset_and_training_run(tmp_path: Path) -> None:
    """``seed`` (default 0, the demo's) lets benchmarks/bench_demo.py measure how much the
    fidelity figures owe to the draw; each seed has its own cache entry."""
    import json

    run_demo(out=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, echo=lambda _: None,
             sizes=SMALL, seed=1)
    (entry,) = (tmp_path / "cache").glob("shapes-*")
    assert "-seed1" in entry.name
    assert json.loads((entry / "training.json").read_text())["metrics"]["seed"] == 1
    assert (tmp_path / "out" / "evaluation.json").is_file()
