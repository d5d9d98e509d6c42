"""Shared fixtures: tiny models, small image folders with awkward files, devices."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # tiny_models importable in-process

CLASSES = ["n02085620", "n02123045", "n04536866"]  # Chihuahua, tabby, violin


import nltk.data  # noqa: E402

PRISTINE_NLTK_PATH = list(nltk.data.path)


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Keep every test's caches (WordNet, demo) out of the user's home, and let no
    test see WordNet sources or nltk data roots that an earlier test set up."""
    from filtag_kg.wordnet import clear_cache

    monkeypatch.setenv("FILTAG_KG_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setattr(nltk.data, "path", list(PRISTINE_NLTK_PATH))
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request: pytest.FixtureRequest) -> str:
    """Run a test on the CPU, and on CUDA when a GPU is present."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    return request.param


def write_images(root: Path, per_class: int = 4, seed: int = 0, classes: list[str] | None = None) -> Path:
    """Random RGB PNGs of varied sizes in ``root/CLASS/``; returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes or CLASSES:
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(24, 48, size=2)
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"img{i:02d}.png")
    return root


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Three wnid class folders with 4 random images each."""
    return write_images(tmp_path / "data")


@pytest.fixture
def messy_dir(tmp_path: Path) -> Path:
    """An image folder with every kind of awkward file: other colour modes,
    a truncated JPEG, a text file with an image suffix, and an empty class."""
    from PIL import Image

    root = write_images(tmp_path / "messy", per_class=3)
    rng = np.random.default_rng(7)
    d = root / CLASSES[0]
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), "L").save(d / "gray.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).convert("P").save(d / "pal.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).convert("CMYK").save(d / "cmyk.jpg")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / CLASSES[1] / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / CLASSES[2] / "notes.png").write_text("this is not an image\n")
    (root / "n01440764").mkdir()  # tench: an empty class folder
    return root


@pytest.fixture(scope="session")
def scripted_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a TorchScript file, scripted in a fresh process.

    Scripting in a separate interpreter keeps the test process's TorchScript
    state (its builtin-function table) independent of what earlier tests did.
    """
    import subprocess

    path = tmp_path_factory.mktemp("torchscript") / "tiny.pt"
    code = ("import torch, tiny_models; "
            f"torch.jit.save(torch.jit.script(tiny_models.build_tiny()), {str(path)!r})")
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=cli_env(), check=True, timeout=300)
    return path


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: the tests folder on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


@contextlib.contextmanager
def sigint_in_bookkeeping(monkeypatch: pytest.MonkeyPatch, at: int) -> Iterator[None]:
    """Inside the block, a pass's ``at``-th count of finished rounds (``done_after``) first
    sends the process a real SIGINT, as a terminal's Ctrl-C does: the moment after a batch's
    results were taken in but before the batch is counted as done."""
    import signal

    from filtag_kg.distributed import RoundSampler

    original = RoundSampler.done_after
    calls = [0]

    def interrupting(self: RoundSampler, rounds: int) -> int:
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, rounds)

    monkeypatch.setattr(RoundSampler, "done_after", interrupting)
    try:
        yield
    finally:
        monkeypatch.setattr(RoundSampler, "done_after", original)


def kill_when_done(
    cmd: list[str], env: dict[str, str], done: Callable[[], int], at: int, timeout: float = 60.0
) -> None:
    """Run ``cmd`` and SIGKILL it (no chance to clean up, as a crash or OOM kill gives)
    once ``done()`` (the pass's count of finished images, read from its checkpoint) reaches
    ``at``, or after ``timeout`` seconds."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and done() < at:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def state_done(path: Path) -> int:
    """Images a JSON pass state (``explanations.state``) counts as done; 0 before it exists."""
    import json

    try:
        return int(json.loads(path.read_text())["done"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.fixture
def tiny_run(tmp_path: Path) -> tuple[Path, Path]:
    """A profiled and tagged run of the tiny model, and held-out images to explain."""
    from test_profile import PRE

    from filtag_kg.data import image_folder
    from filtag_kg.models import load_model
    from filtag_kg.profile import ProfileOptions, profile_dataset
    from filtag_kg.tagging import TagSetting, write_tags

    data = write_images(tmp_path / "train", per_class=5)
    held = write_images(tmp_path / "held", per_class=3, seed=11)
    run = tmp_path / "run"
    prof = profile_dataset(load_model("tiny_models:build_tiny", preprocess=PRE), image_folder(data), run,
                           ProfileOptions(progress=False))
    write_tags(run, prof, [TagSetting("top-k", 2), TagSetting("above-average")])
    return run, held
