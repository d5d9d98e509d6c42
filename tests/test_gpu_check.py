"""benchmarks/gpu_check: its Python part runs (``--smoke`` on the CPU) and its script parses."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_mode_measures_every_loop_and_runs_the_real_passes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "figures.json"
    code = _gpu_check().main(["--smoke", "--device", "cpu", "--models", "tiny_models:build_tiny",
                              "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["amp"]) for r in rows] == [("tiny_models:build_tiny", "off"),
                                                      ("tiny_models:build_tiny", "bf16")]
    for r in rows:
        assert r["plain"] > 0 and r["profile"] > 0 and r["explain"] > 0
        assert r["profile_ratio"] == r["profile"] / r["plain"] and r["layers"] == 3
    text = capsys.readouterr().out
    assert "real passes on cpu" in text and "explained 12 with 2 settings" in text


def test_gpu_check_script_parses_and_refuses_without_cuda() -> None:
    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    import torch

    if not torch.cuda.is_available():
        res = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "sees no CUDA device" in res.stderr
