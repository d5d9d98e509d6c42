"""The GPU figures of ``benchmarks/gpu_check.sh``: plain inference, profile and explain
per-batch loops, fp32 and bf16, on synthetic in-memory batches (no data, no weights).

For each model (random weights) and precision it prints images/s of plain
inference (the model alone, channels-last, under ``torch.inference_mode``), of
the profile pass's loop (hooks and the per-class sums on the device) and of
the explanation pass's loop (hooks, one copy of the values to the host, the
model's top-5, and the host-side work: active filters, votes and Parquet
rows of top-k 1, on the pass's writer thread), the ratios to plain, and the
peak GPU memory. Each loop is the pass's own per-batch code on the pass's
own parts (``Engine``, ``FilterProbe``, ``encode_batch``, ``_HostWorker``,
``ParquetParts``) with the data loader left out: the batch is already on the
device, so the GPU, not JPEG decoding, sets the pace. Then, so the CUDA code
paths of the real passes run once too (AMP, channels-last, pinned memory),
``profile_dataset`` and ``explain_dataset`` run end to end on a few small
generated images.

``--smoke`` shrinks everything (ResNet-18, 2 classes, batch 4, 32 px) so the
script runs on a CPU in seconds; tests run it that way.

Usage:
    python benchmarks/gpu_check.py                       # on a GPU machine
    python benchmarks/gpu_check.py --smoke --device cpu  # anywhere
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from filtag_kg.activations import FilterProbe
from filtag_kg.explain import _active_batch, _HostWorker, encode_batch
from filtag_kg.explanations_io import ParquetParts, names_metadata
from filtag_kg.models import load_model
from filtag_kg.profile import Engine
from filtag_kg.tagging import TagSetting, order_filters

SETTING = TagSetting("top-k", 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step: Any, batch: int, iters: int, device: torch.device, finish: Any = None) -> float:
    """Images/s of ``iters`` calls of ``step`` after two warm-up calls; ``finish`` (e.g.
    waiting for queued host work) runs before the clock stops, and after the warm-up."""
    for _ in range(2):  # warm-up (cuDNN autotuning, allocator)
        step()
    if finish is not None:
        finish()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if finish is not None:
        finish()
    _sync(device)
    return batch * iters / (time.perf_counter() - t0)


def _incidence(widths: list[int], classes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Top-k 1 tags of random class profiles: one tagged filter per class and layer."""
    out = []
    for f in widths:
        prof = rng.random((classes, f))
        cols, lengths = _active_batch(prof, order_filters(prof), SETTING, "x")
        inc = np.zeros((f, classes), dtype=np.float32)
        inc[cols, np.repeat(np.arange(classes), lengths)] = 1.0
        out.append(inc)
    return out


def measure(spec: str, amp: str, *, batch: int, size: int, iters: int, device: torch.device,
            classes: int, tmp: Path) -> dict[str, Any]:
    """Plain, profile-loop and explain-loop images/s of one model and precision."""
    loaded = load_model(spec, image_size=size, resize=None, num_classes=classes)
    x_host = torch.randn(batch, 3, size, size)
    engine = Engine.build(loaded, x_host[:1], layers=None, measure="activation", device=device, amp=amp)
    module, points = engine.module, engine.points
    x = engine.to_device(x_host)
    labels = torch.arange(batch, device=device) % classes
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row: dict[str, Any] = {"model": spec, "amp": amp, "batch": batch, "layers": len(points),
                           "filters": sum(p.width for p in points)}

    def plain() -> None:
        with torch.inference_mode(), engine.autocast():
            module(x)

    row["plain"] = _rate(plain, batch, iters, device)
    widths = [p.width for p in points]
    sums = torch.zeros(classes, sum(widths), dtype=torch.float64, device=device)
    counts = torch.zeros(classes, dtype=torch.int64, device=device)
    with FilterProbe(module, points) as probe:

        def profile() -> None:  # profile_dataset's loop body
            with torch.inference_mode():
                with engine.autocast():
                    module(x)
                values = probe.take_flat()
                sums.index_add_(0, labels, values)
                counts.index_add_(0, labels, torch.ones_like(labels))

        row["profile"] = _rate(profile, batch, iters, device)
    names = [p.layer for p in points]
    class_ids = [f"c{i}" for i in range(classes)]
    incidence = _incidence(widths, classes, np.random.default_rng(0))
    splits = np.cumsum(widths)[:-1]
    sink = ParquetParts(tmp / f"{spec.replace(':', '_')}-{amp}", 0,
                        names_metadata(names, class_ids, class_ids, class_ids))
    info = {"indices": list(range(batch)), "images": [f"img{i}.jpg" for i in range(batch)],
            "sha256": [None] * batch, "true_classes": [None] * batch}
    worker = _HostWorker()
    try:
        with FilterProbe(module, points) as probe:

            def explain() -> None:  # explain_dataset's loop body, host work on the writer thread
                with torch.inference_mode(), engine.autocast():
                    logits = module(x)
                    values = probe.take_flat()
                vals = np.split(values.cpu().numpy(), splits, axis=1)
                probs, top = torch.softmax(logits.float(), dim=1).topk(min(5, classes), dim=1)
                results = [(None, vals, None, probs.cpu().numpy(), top.cpu().numpy())]
                worker.submit(lambda: sink.write(encode_batch(
                    info, results, [SETTING], [incidence], names, weighting=None, value_type="float32")))

            row["explain"] = _rate(explain, batch, iters, device, finish=worker.drain)
            sink.commit()
    finally:
        worker.close()
    if device.type == "cuda":
        row["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    row["profile_ratio"] = row["profile"] / row["plain"]
    row["explain_ratio"] = row["explain"] / row["plain"]
    return row


def real_passes(device: torch.device, spec: str, tmp: Path, *, size: int) -> str:
    """profile_dataset + explain_dataset end to end on a few generated images, bf16 on CUDA."""
    from PIL import Image

    from filtag_kg.data import image_folder
    from filtag_kg.evaluation import evaluate_run
    from filtag_kg.explain import ExplainOptions, explain_dataset
    from filtag_kg.profile import ProfileOptions, profile_dataset
    from filtag_kg.tagging import write_tags

    rng = np.random.default_rng(0)
    for split in ("train", "held"):
        for c in ("n01440764", "n01443537"):
            (tmp / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(6):
                px = rng.integers(0, 255, (size + 8, size + 8, 3), dtype=np.uint8)
                Image.fromarray(px).save(tmp / split / c / f"{i}.jpg")
    amp = "bf16" if device.type == "cuda" else "off"
    loaded = load_model(spec, image_size=size, resize=None, num_classes=2)
    run = tmp / "run"
    opts = dict(device=str(device), batch_size=4, workers=2, progress=False, amp=amp)
    prof = profile_dataset(loaded, image_folder(tmp / "train"), run, ProfileOptions(**opts))
    write_tags(run, prof, [SETTING, TagSetting("above-average")])
    held = image_folder(tmp / "held")
    meta = explain_dataset(run, held, ExplainOptions(**opts), profile=prof, loaded=loaded)
    doc = evaluate_run(run)
    return (f"real passes on {device} ({amp}): profiled {int(prof.counts.sum())} images, explained "
            f"{meta['images']} with {len(meta['settings'])} settings, evaluated {len(doc['groups'])} groups")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", help="model specs (default: vgg16 resnet50; --smoke: resnet18)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20, help="timed batches per loop (after 2 warm-up)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes (resnet18, batch 4, 32 px, 2 iterations): a CPU check of this "
                    "script")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch_size, args.iters, args.image_size, args.classes = 4, 1, 32, 2
    models = args.models or (["resnet18"] if args.smoke else ["vgg16", "resnet50"])
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in models:
            for amp in ("off", "bf16"):
                r = measure(spec, amp, batch=args.batch_size, size=args.image_size, iters=args.iters,
                            device=device, classes=args.classes, tmp=Path(tmp))
                rows.append(r)
                mem = r.get("peak_gpu_memory_gib")
                mem = f", peak GPU memory {mem:.1f} GiB" if mem is not None else ""
                print(f"{spec:<24} {'fp32' if amp == 'off' else amp:<5} batch {r['batch']}: plain "
                      f"{r['plain']:9.1f} img/s, profile {r['profile']:9.1f} ({r['profile_ratio']:.3f}), "
                      f"explain {r['explain']:9.1f} ({r['explain_ratio']:.3f}){mem}", flush=True)
        small = models[0] if args.smoke else "resnet18"
        print(real_passes(device, small, Path(tmp) / "real", size=args.image_size if args.smoke else 64),
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
