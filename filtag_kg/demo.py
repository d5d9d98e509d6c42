"""``filtag-kg demo``: the whole pipeline offline, on CPU, on synthetic shapes.

The dataset's class folders are WordNet 3.0 noun synsets (circle, ellipse,
...), so the demo exercises the same linking as ImageNet. The dataset and the
trained network are cached (see :func:`filtag_kg.shapes.default_cache_dir`):
the first run generates and trains, later runs reuse both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from .models import ClassInfo, load_model
from .pipeline import RunResult, run, summarize
from .profile import ProfileOptions
from .tagging import TagSetting

DEMO_MODEL = "filtag_kg.shapes:build_shapes_net"


def run_demo(
    *,
    out: str | os.PathLike[str] = "filtag-demo",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> RunResult:
    """Generate (or reuse) the shapes data and network, profile, tag and summarise.

    Args:
        out: the run folder to write.
        cache_dir: where data and weights are cached (default: the user cache).
        progress: show progress bars.
        echo: where the summary lines go (``print`` in the CLI).

    Returns:
        The run's profile and tags (also written to ``out``).
    """
    from .data import image_folder
    from .shapes import SHAPE_CLASSES, SHAPES_PREPROCESS, default_cache_dir, load_or_train_shapes_net

    t0 = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    _, metrics, folder = load_or_train_shapes_net(cache, progress=progress)
    classes = [ClassInfo(wnid, label) for wnid, label in SHAPE_CLASSES]
    loaded = load_model(
        DEMO_MODEL, weights_file=folder / "weights.pt", preprocess=SHAPES_PREPROCESS, classes=classes
    )
    imageset = image_folder(folder / "data" / "train", classes)
    result = run(
        loaded, imageset, out, settings=[TagSetting("top-k", 1)],
        options=ProfileOptions(batch_size=64, device="cpu", workers=0, progress=progress,
                               checkpoint_every=0),
    )
    echo(f"filtag-kg demo: synthetic plane shapes, {len(classes)} classes named by WordNet synsets")
    echo(
        f"network {DEMO_MODEL}: held-out accuracy {100 * metrics['heldout_accuracy']:.1f}% "
        f"on {metrics.get('heldout_images', '?')} images"
        + (" (trained now" if not metrics.get("cached") else " (cached")
        + f", weights in {folder / 'weights.pt'})"
    )
    echo(summarize(result.profile, result.tags, max_filters=10))
    echo(f"outputs in {Path(out).resolve()}: profile.json, profile.npz, tags.tsv, tags.json")
    echo(f"done in {time.perf_counter() - t0:.1f} s")
    return result
