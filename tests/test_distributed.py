"""torchrun with two Gloo processes on the CPU against a single process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_env, write_images

from filtag_kg.explain import read_explanations
from filtag_kg.profile import CHECKPOINT, Profile

TINY = ["--model", "tiny_models:build_tiny", "--image-size", "16", "--quiet", "--batch-size", "2"]


def torchrun(*args: str, env: dict[str, str] | None = None, nproc: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "filtag_kg",
        *args,
    ]


def single(*args: str) -> list[str]:
    return [sys.executable, "-m", "filtag_kg", *args]


@pytest.fixture
def uneven(tmp_path: Path) -> tuple[Path, Path]:
    """17 files (one corrupt) in 3 classes: rounds of 2 x 2 do not divide them."""
    data = write_images(tmp_path / "data", per_class=5, seed=4)
    (data / "n02123045" / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (data / "n04536866" / "extra.png").write_bytes((data / "n04536866" / "img00.png").read_bytes())
    held = write_images(tmp_path / "held", per_class=3, seed=9)
    return data, held


def _env() -> dict[str, str]:
    """torchrun gives each process one thread; the single process gets one too, so the
    per-image float32 arithmetic is identical and only the float64 summation order differs."""
    env = cli_env()
    env["TINY_SLEEP"] = "0"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def _same_profile(a: Profile, b: Profile) -> None:
    assert a.class_ids == b.class_ids
    assert a.counts.tolist() == b.counts.tolist()
    assert a.meta["dataset"]["skipped"] == b.meta["dataset"]["skipped"]
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_allclose(la.means, lb.means, rtol=1e-9, atol=1e-12)
        for f in range(la.width):
            ta, tb = a.top_images(la.name, f), b.top_images(lb.name, f)
            assert [p for p, _ in ta] == [p for p, _ in tb]


def _tag_keys(run: Path) -> list[tuple[str, ...]]:
    lines = (run / "tags.tsv").read_text().splitlines()[1:]
    return [tuple(x.split("\t")[:6]) for x in lines]


def test_two_gloo_processes_equal_one(uneven: tuple[Path, Path], tmp_path: Path) -> None:
    data, held = uneven
    env = _env()
    common = [*TINY, "--data", str(data), "--k", "2", "--top-images", "3", "--explain-data", str(held)]
    res = _run(torchrun("run", *common, "--out", str(tmp_path / "two"), "--checkpoint-every", "1"), env)
    assert res.stdout.count("model tiny_models:build_tiny") == 1  # rank 0 alone prints
    _run(single("run", *common, "--out", str(tmp_path / "one")), env)
    two, one = Profile.load(tmp_path / "two"), Profile.load(tmp_path / "one")
    assert two.meta["options"]["processes"] == 2 and one.meta["options"]["processes"] == 1
    assert int(two.counts.sum()) == 16  # every good image exactly once, the corrupt one skipped
    assert [Path(s["path"]).name for s in two.meta["dataset"]["skipped"]] == ["zz-corrupt.png"]
    _same_profile(two, one)
    assert _tag_keys(tmp_path / "two") == _tag_keys(tmp_path / "one")
    ex2, ex1 = list(read_explanations(tmp_path / "two")), list(read_explanations(tmp_path / "one"))
    assert [(e["index"], e["image"], e["prediction"]) for e in ex2] == [
        (e["index"], e["image"], e["prediction"]) for e in ex1
    ]
    assert [e["vote_counts"] for e in ex2] == [e["vote_counts"] for e in ex1]
    assert not list((tmp_path / "two").glob("explanations.part*"))


def test_killed_distributed_run_resumes_with_one_process(uneven: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = uneven
    env = _env()
    common = [
        "--model",
        "tiny_models:build_slow",
        "--image-size",
        "16",
        "--quiet",
        "--batch-size",
        "2",
        "--data",
        str(data),
        "--top-images",
        "2",
        "--checkpoint-every",
        "1",
    ]
    _run(single("profile", *common, "--out", str(tmp_path / "ref")), env)

    env["TINY_SLEEP"] = "0.5"
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        torchrun("profile", *common, "--out", str(run)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run / CHECKPOINT).exists():
            with np.load(run / CHECKPOINT) as z:
                if json.loads(z["state"].tobytes())["done"] >= 8:
                    break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert (run / CHECKPOINT).exists() and not (run / "profile.json").exists()

    env["TINY_SLEEP"] = "0"
    _run(single("profile", *common, "--out", str(run), "--resume"), env)
    _same_profile(Profile.load(run), Profile.load(tmp_path / "ref"))


@pytest.mark.parametrize(
    "world,batch,start,stop", [(1, 4, 0, 10), (2, 2, 0, 17), (3, 4, 5, 30), (4, 3, 0, 2)]
)
def test_round_sampler_covers_every_position_once(world: int, batch: int, start: int, stop: int) -> None:
    from filtag_kg.distributed import Dist, RoundSampler

    samplers = [RoundSampler(start, stop, batch, Dist(rank, world)) for rank in range(world)]
    per_rank = [list(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1 == len({len(s) for s in samplers})  # same number of rounds
    seen = [i for batches in per_rank for b in batches for i in b]
    assert sorted(seen) == list(range(start, stop))  # no padding, no repeats
    for rounds in range(len(per_rank[0]) + 1):  # after each round, a finished prefix
        done = samplers[0].done_after(rounds)
        finished = sorted(i for batches in per_rank for b in batches[:rounds] for i in b)
        assert finished == list(range(start, done))
