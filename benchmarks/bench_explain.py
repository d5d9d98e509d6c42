"""Benchmark the explanation pass against plain inference, and the cost of gradcam.

On the same synthetic JPEGs, device and batch size, in one run, prints images/s
of plain inference (same loader and model, no hooks), of the explanation pass
(``filtag_kg.explain.explain_dataset`` end to end: hooks, active filters,
votes, JSON Lines written), and of the pass with ``--weighting gradcam`` (a
forward and a backward pass), with the ratios. Plain and explain passes
alternate ``--repeats`` times; the headline ratio is the median of each
repeat's paired ratio (see ``bench_profile.py``). Target: explain >= 0.90x
plain on CPU without weighting.

Usage:
    python benchmarks/bench_explain.py --model resnet50 --images 64 --batch-size 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_profile import add_common_arguments, make_jpegs, paired_ratio, time_plain

from filtag_kg.data import ImageDataset, image_folder, make_loader
from filtag_kg.explain import ExplainOptions, explain_dataset
from filtag_kg.models import load_model
from filtag_kg.profile import Engine, ProfileOptions, first_good_image, profile_dataset, resolve_device
from filtag_kg.tagging import TagSetting, write_tags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap)
    ap.add_argument("--k", type=int, default=1)
    args = ap.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_jpegs(tmp / "data", args.images)
        loaded = load_model(args.model, image_size=args.image_size)
        imageset = image_folder(root)
        run = tmp / "run"
        base = ProfileOptions(
            device=str(device), batch_size=args.batch_size, workers=0, checkpoint_every=0, progress=False
        )
        # a profile of a few images gives the tags (the profile pass is benchmarked elsewhere)
        small = image_folder(make_jpegs(tmp / "small", 8))
        profile = profile_dataset(loaded, small, run, base)
        write_tags(run, profile, [TagSetting("top-k", args.k)])
        dataset = ImageDataset(imageset.samples, loaded.preprocess.transform())
        engine = Engine.build(
            loaded, first_good_image(imageset, dataset), layers=None, measure="activation", device=device
        )
        loader = make_loader(dataset, batch_size=args.batch_size, workers=0, pin_memory=device.type == "cuda")
        opts = dict(
            device=str(device),
            batch_size=args.batch_size,
            workers=0,
            checkpoint_every=0,
            progress=False,
            restart=True,
        )
        print(
            f"model {args.model}, {len(profile.layers)} conv layers, {args.images} images "
            f"{args.image_size}px, batch {args.batch_size}, device {device}, top-k {args.k}, "
            f"torch threads {torch.get_num_threads()}"
        )
        time_plain(engine, make_loader(dataset, batch_size=args.batch_size, workers=0))  # warm-up
        plain, expl, loop = [], [], []
        for r in range(args.repeats):
            plain.append(time_plain(engine, loader))
            t0 = time.perf_counter()
            meta = explain_dataset(run, imageset, ExplainOptions(**opts), profile=profile, loaded=loaded)
            expl.append(args.images / (time.perf_counter() - t0))
            loop.append(meta["images_per_second"])
            print(f"  repeat {r + 1}: plain {plain[-1]:.2f} img/s, explain {expl[-1]:.2f} img/s "
                  f"(batch loop {loop[-1]:.2f}); ratio {expl[-1] / plain[-1]:.3f}")
        t0 = time.perf_counter()
        explain_dataset(
            run, imageset, ExplainOptions(weighting="gradcam", **opts), profile=profile, loaded=loaded
        )
        grad = args.images / (time.perf_counter() - t0)
        med_plain, med_expl, med_loop = (statistics.median(v) for v in (plain, expl, loop))
        print(f"plain inference        {med_plain:9.2f} images/s (median of {args.repeats})")
        print(f"explain pass           {med_expl:9.2f} images/s  (whole call: dry run, tag index "
              "and decoding the first image included)")
        print(f"  its batch loop       {med_loop:9.2f} images/s")
        print(f"explain with gradcam   {grad:9.2f} images/s")
        ratio, loop_ratio = paired_ratio(expl, plain), paired_ratio(loop, plain)
        print(f"ratio explain/plain    {ratio:.3f}  (median of the paired ratios; target >= 0.90 on CPU)")
        print(f"ratio batch loop/plain {loop_ratio:.3f}  (the ratio a large dataset tends to)")
        print(f"gradcam cost           {med_expl / grad:.2f}x the time of the unweighted pass")


if __name__ == "__main__":
    main()
