"""The scripts in examples/ run as their docstrings say."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch
from conftest import cli_env, write_images

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def test_api_tour_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "tour"
    res = subprocess.run(
        [sys.executable, str(EXAMPLES / "api_tour.py"), "--out", str(out), "--cache", str(tmp_path / "cache"),
         "--small"],
        env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("profile.json", "tags.tsv", "abstract_tags.tsv", "evaluation.json", "kg.trig"):
        assert (out / name).is_file(), name
    assert (out / "explanations.parquet").is_dir()
    # the fidelity it prints is the one evaluate wrote
    printed = re.findall(r"fidelity of top-k 1 \((all|last) layers?\): [\d.]+% \((\d+) of (\d+) images\)",
                         res.stdout)
    group = json.loads((out / "evaluation.json").read_text())["groups"][0]
    assert [(int(n), int(m)) for _, n, m in printed] == [
        (group[s]["counts"]["fidelity"], group["images"]) for s in ("all_layers", "last_layer")
    ]
    assert "represent a polygon at top-k 1" in res.stdout


def test_custom_model_example_is_measured_where_its_docstring_says(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import custom_model
    finally:
        sys.path.remove(str(EXAMPLES))
    weights = tmp_path / "weights.pt"
    torch.save(custom_model.build(num_classes=3).state_dict(), weights)
    data = write_images(tmp_path / "data", per_class=2)
    res = subprocess.run(
        [sys.executable, "-m", "filtag_kg", "run", "--model", str(EXAMPLES / "custom_model.py") + ":build",
         "--weights-file", str(weights), "--data", str(data), "--k", "1", "--out", str(tmp_path / "run"),
         "--quiet"],
        env=cli_env(), capture_output=True, text=True, timeout=300,
    )
    # the factory builds 10 outputs: its own weights file for 3 classes does not fit, one line says so
    assert res.returncode == 2 and "head.weight (3, 16) vs (10, 16)" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    torch.save(custom_model.build().state_dict(), weights)
    res = subprocess.run(res.args, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((tmp_path / "run" / "profile.json").read_text())
    assert {d["name"]: d["measured_at"] for d in meta["layers"]} == {
        "stem.0": "stem.2 (ReLU)",
        "conv1": "bn1 (relu applied in the hook)",
        "conv2": "conv2 (conv output)",
    }
    assert meta["preprocess"]["crop"] == 64  # the preprocessing that travels with the model
