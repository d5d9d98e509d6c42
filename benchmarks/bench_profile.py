"""Benchmark the profile pass against plain inference and a reference-style loop.

On the same synthetic JPEG images, device and batch size, in one run, prints
images/s of

* plain inference: the same loader and model, no hooks;
* the profile pass: ``filtag_kg.profile.profile_dataset`` end to end (every
  conv layer hooked, reductions on the device, dry run and artifact writing
  included);
* a reference-style loop: batch size 1, each measured activation copied to the
  host and min-max scaled in numpy (how the published code works);

and the ratios profile/plain and profile/reference. Plain and profile passes
alternate ``--repeats`` times; each repeat's pair gives one ratio, and the
median of those paired ratios is the headline figure (a machine whose speed
drifts between repeats moves both halves of a pair alike, and one fast or
slow repeat does not decide it). Target: profile >= 0.90x plain on CPU (0.95x
on a GPU).

With ``--breakdown`` it prints instead where the time beside the forward pass goes,
on one in-memory batch, every case alternating ``--repeats`` times (medians, ms per
batch): the forward pass plain, with hooks that do nothing, with the probe (hooks and
reductions); the reductions alone on the captured outputs (the three the probe runs,
each on its own, and the fused or two-step forms that give identical results); and the
dry run that finds the measure points (once per call).

With ``--scaling 1,2`` it also runs ``filtag-kg profile`` under ``torchrun`` with
1 and 2 processes (Gloo on CPU, NCCL with ``--device cuda``: one GPU each) on
the same images and prints a scaling table from each run's ``profile.json``.

Usage:
    python benchmarks/bench_profile.py --model vgg16 --images 64 --batch-size 16
    python benchmarks/bench_profile.py --model resnet50 --device cuda --images 2048 --batch-size 128
    python benchmarks/bench_profile.py --model resnet18 --images 64 --scaling 1,2
    python benchmarks/bench_profile.py --model resnet50 --batch-size 8 --breakdown --repeats 11
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from filtag_kg.data import ImageDataset, image_folder, make_loader
from filtag_kg.models import load_model
from filtag_kg.profile import Engine, ProfileOptions, first_good_image, profile_dataset, resolve_device


def make_jpegs(root: Path, n: int, classes: int = 4, size: int = 256) -> Path:
    """``n`` random-texture JPEGs spread over ``classes`` class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        img.save(d / f"{i:05d}.jpg", quality=90)
    return root


def add_common_arguments(ap: argparse.ArgumentParser) -> None:
    """The options bench_profile and bench_explain share (same images, device, repeats)."""
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)


def paired_ratio(num: list[float], den: list[float]) -> float:
    """The median of the per-repeat ratios ``num[i] / den[i]``."""
    return statistics.median(n / d for n, d in zip(num, den))


def time_plain(engine: Engine, loader) -> float:
    module = engine.module
    n = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            with engine.autocast():
                module(engine.to_device(batch.images))
            n += batch.count
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def time_profile(loaded, imageset, out: Path, opts: ProfileOptions) -> tuple[float, float]:
    """Images/s of the whole call, and of its batch loop alone (from ``profile.json``)."""
    t0 = time.perf_counter()
    profile = profile_dataset(loaded, imageset, out, opts)
    if opts.device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(imageset.samples) / (time.perf_counter() - t0), profile.meta["images_per_second"]


def time_reference(engine: Engine, dataset: ImageDataset, n: int) -> float:
    """Batch 1; every measured activation goes to the host and is scaled in numpy."""
    module = engine.module
    modules = dict(module.named_modules())
    acts: list[np.ndarray] = []
    handles = []
    for p in engine.points:
        def hook(m, i, o, p=p):
            a = o if p.apply is None else p.apply(o)
            acts.append(a.float().cpu().numpy())
        handles.append(modules[p.hook_module].register_forward_hook(hook))
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for i in range(n):
                _, x, _, _ = dataset[i]
                acts.clear()
                module(engine.to_device(x.unsqueeze(0)))
                for a in acts:
                    a = a[0].astype(np.float64)
                    lo, hi = a.min(), a.max()
                    ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).mean(axis=(1, 2))
    finally:
        for h in handles:
            h.remove()
    return n / (time.perf_counter() - t0)


def breakdown(engine: Engine, batch: torch.Tensor, example: torch.Tensor, repeats: int) -> None:
    """Median ms per batch of the forward pass with and without hooks and reductions, of
    each reduction alone on the captured outputs, and of the dry run (see the docstring)."""
    from filtag_kg.activations import FilterProbe, PointHooks, _reduce
    from filtag_kg.measure import find_measure_points

    module, points = engine.module, engine.points
    x = engine.to_device(batch)
    captured: dict[int, torch.Tensor] = {}

    class Idle(PointHooks):
        def capture(self, index: int, output: torch.Tensor) -> None:
            pass

    class Keep(PointHooks):
        def capture(self, index: int, output: torch.Tensor) -> None:
            a = output.detach()
            captured[index] = a if points[index].apply is None else points[index].apply(a)

    def forward(probe: type[PointHooks] | None = None) -> Any:
        def run() -> None:
            with torch.inference_mode():
                if probe is None:
                    module(x)
                    return
                with probe(module, points) as p:
                    module(x)
                    if isinstance(p, FilterProbe):
                        p.take_flat()
        return run

    forward(Keep)()
    outputs = [captured[i] for i in sorted(captured)]

    def each(fn: Any) -> Any:
        def run() -> None:
            with torch.inference_mode():
                for a in outputs:
                    fn(a)
        return run

    def two_step(a: torch.Tensor) -> Any:
        return a.amin(dim=(2, 3)).amin(1), a.amax(dim=(2, 3)).amax(1)

    def fused(a: torch.Tensor) -> Any:
        return torch.aminmax(a.reshape(a.shape[0], -1), dim=1)

    names = [p.layer for p in points]
    cases = {
        "forward, no hooks": forward(),
        "forward, idle hooks": forward(Idle),
        "forward, probe (hooks + reductions + scaling)": forward(FilterProbe),
        "reductions as the probe runs them": each(_reduce),
        "  per-filter mean (float32)": each(lambda a: a.mean(dim=(2, 3), dtype=torch.float32)),
        "  layer min": each(lambda a: a.amin(dim=(1, 2, 3))),
        "  layer max": each(lambda a: a.amax(dim=(1, 2, 3))),
        "  min and max per filter, then per layer": each(two_step),
        "  min and max fused (torch.aminmax)": each(fused),
        "dry run (find_measure_points, 1 image)": lambda: find_measure_points(module, names, example),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for f in cases.values():
        f()  # warm-up
    for _ in range(repeats):
        for k, f in cases.items():
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            f()
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(1000 * (time.perf_counter() - t0))
    for a in outputs:  # the alternatives give the probe's results exactly
        lo, hi = _reduce(a)[1:]
        assert torch.equal(two_step(a)[0], lo) and torch.equal(fused(a)[1], hi)
    base = statistics.median(times["forward, no hooks"])
    elements = sum(a[0].numel() for a in outputs)
    print(f"breakdown: batch {len(batch)}, {len(outputs)} measured outputs, {elements / 1e6:.1f} M values "
          f"per image; medians of {repeats} alternating repeats")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"  {k:<48} {m:9.1f} ms  {100 * m / base:6.1f}% of the plain forward pass")


def scaling(args: argparse.Namespace, root: Path, tmp: Path) -> None:
    """Images/s of ``filtag-kg profile`` under torchrun with each process count."""
    import json
    import os
    import subprocess
    import sys

    counts = [int(x) for x in args.scaling.split(",")]
    print(f"scaling ({args.model}, {args.images} images, batch {args.batch_size} per process):")
    print("  processes  threads/process  images/s  speed-up  data wait")
    base = None
    for n in counts:
        out = tmp / f"scale{n}"
        threads = max(1, (os.cpu_count() or 1) // n) if args.device == "cpu" else 1
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "filtag_kg", "profile", "--model", args.model, "--image-size", str(args.image_size),
               "--data", str(root), "--out", str(out), "--batch-size", str(args.batch_size),
               "--device", args.device, "--checkpoint-every", "0", "--quiet"]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        meta = json.loads((out / "profile.json").read_text())
        ips = meta["images_per_second"]
        base = base or ips
        wait = 100 * meta["data_wait_share"]
        print(f"  {n:>9}  {threads:>15}  {ips:8.2f}  {ips / base:7.2f}x  {wait:8.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--amp", default="off")
    ap.add_argument("--reference-images", type=int, default=8)
    ap.add_argument("--scaling", metavar="N,N", help="also time torchrun with these process counts")
    ap.add_argument("--breakdown", action="store_true",
                    help="instead: where the time beside the forward pass goes, on one batch")
    args = ap.parse_args()
    if args.breakdown and args.amp != "off":
        ap.error("--breakdown times float32 passes only; leave out --amp")

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_jpegs(tmp / "data", args.images)
        loaded = load_model(args.model, image_size=args.image_size)
        imageset = image_folder(root)
        dataset = ImageDataset(imageset.samples, loaded.preprocess.transform())
        engine = Engine.build(loaded, first_good_image(imageset, dataset), layers=None,
                              measure="activation", device=device, amp=args.amp)
        loader = make_loader(dataset, batch_size=args.batch_size, workers=args.workers,
                             pin_memory=device.type == "cuda")
        opts = ProfileOptions(device=str(device), batch_size=args.batch_size, workers=args.workers,
                              amp=args.amp, checkpoint_every=0, progress=False)
        threads = torch.get_num_threads()
        if args.breakdown:
            first = first_good_image(imageset, dataset)
            batch = torch.cat([dataset[i][1].unsqueeze(0) for i in range(min(args.batch_size, len(dataset)))])
            print(f"model {args.model}, {args.image_size}px, device {device}, torch threads {threads}")
            breakdown(engine, batch, engine.to_device(first), args.repeats)
            return
        print(f"model {args.model}, {len(engine.points)} conv layers hooked, "
              f"{sum(p.width for p in engine.points)} filters; {args.images} images "
              f"{args.image_size}px, batch {args.batch_size}, device {device}, torch threads {threads}")
        time_plain(engine, make_loader(dataset, batch_size=args.batch_size, workers=0))  # warm-up
        plain, prof, loop = [], [], []
        for r in range(args.repeats):
            plain.append(time_plain(engine, loader))
            whole, batches = time_profile(loaded, imageset, tmp / f"run{r}", opts)
            prof.append(whole)
            loop.append(batches)
            print(f"  repeat {r + 1}: plain {plain[-1]:.2f} img/s, profile {whole:.2f} img/s "
                  f"(batch loop {batches:.2f}); ratio {whole / plain[-1]:.3f} "
                  f"(loop {batches / plain[-1]:.3f})")
        ref = time_reference(engine, dataset, min(args.reference_images, len(dataset)))
        med_plain, med_prof, med_loop = (statistics.median(v) for v in (plain, prof, loop))
        setup = args.images / med_prof - args.images / med_loop
        ratio, loop_ratio = paired_ratio(prof, plain), paired_ratio(loop, plain)
        print(f"plain inference     {med_plain:9.2f} images/s (median of {args.repeats})")
        print(f"profile pass        {med_prof:9.2f} images/s  (whole call: dry run, decoding the "
              "first image and writing the artifact included)")
        print(f"  its batch loop    {med_loop:9.2f} images/s  (fixed costs outside it: {setup:.2f} s)")
        print(f"reference (batch 1) {ref:9.2f} images/s")
        print(f"ratio profile/plain     {ratio:.3f}  (median of the paired ratios; target >= 0.90 on CPU, "
              ">= 0.95 on GPU)")
        print(f"ratio batch loop/plain  {loop_ratio:.3f}  (the ratio a large dataset tends to)")
        print(f"ratio profile/reference {med_prof / ref:.2f}x")
        if args.scaling:
            scaling(args, root, tmp)


if __name__ == "__main__":
    main()
