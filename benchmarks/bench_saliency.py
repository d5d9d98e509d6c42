"""iGOS++ against Grad-CAM and a random map, and how many minimal sufficient explanations SAGs find.

On the demo's held-out shapes (the demo network, trained or taken from the cache):

* deletion and insertion AUC (docs/saliency-method.md) of iGOS++, Grad-CAM (last conv
  layer) and a seeded uniform random map, all evaluated on the same grid with the same
  blurred baseline (lower deletion, higher insertion is better), means over the images;
* per image a SAG: how many images have 1, 2, 3 (the --roots cap) diverse minimal
  sufficient explanations (roots), and how many minimal sets the search found;
* seconds per image of iGOS++ and of the SAG (wall time; noisy on a shared machine).

Usage (run benchmarks one at a time):
    flock /tmp/bench.lock python benchmarks/bench_saliency.py --images 200
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="held-out images (default 200)")
    ap.add_argument("--cache", default=None, help="demo cache folder (default: the user cache)")
    ap.add_argument("--igos-size", type=int, default=8, help="iGOS++ mask side and the AUC grid (default 8)")
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--ig-steps", type=int, default=20)
    ap.add_argument("--grid", type=int, default=7)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--roots", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--sag-images", type=int, default=50,
                    help="SAGs for the first N images (default 50: a SAG of a demo image takes seconds)")
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    from filtag_kg.data import load_rgb
    from filtag_kg.models import load_model
    from filtag_kg.saliency import (
        IgosOptions,
        SagOptions,
        blur_baseline,
        class_probability,
        deletion_insertion,
        gradcam,
        igos,
        sag,
    )
    from filtag_kg.shapes import (
        SHAPES_OUTPUT_WNIDS,
        SHAPES_PREPROCESS,
        default_cache_dir,
        load_or_train_shapes_net,
    )

    torch.set_num_threads(args.threads)
    cache = Path(args.cache) if args.cache else default_cache_dir()
    _, _metrics, data_root = load_or_train_shapes_net(cache, progress=False)
    loaded = load_model("filtag_kg.shapes:build_shapes_net", weights_file=data_root.parent / "weights.pt",
                        preprocess=SHAPES_PREPROCESS)
    device = torch.device(args.device)
    module = loaded.module.to(device).eval()
    last_conv = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)][-1]
    files = sorted((data_root / "heldout").rglob("*.png"))
    step = max(1, len(files) // args.images)
    files = files[::step][: args.images]  # every class, evenly
    tf = SHAPES_PREPROCESS.transform()
    x_all = torch.stack([tf(load_rgb(str(f))) for f in files]).to(device)
    score = class_probability(module)
    with torch.no_grad():
        targets = module(x_all).argmax(dim=1)
    opts = IgosOptions(size=args.igos_size, iterations=args.iterations, ig_steps=args.ig_steps)
    sums = {"iGOS++": [0.0, 0.0], "Grad-CAM": [0.0, 0.0], "random": [0.0, 0.0]}
    t_igos = t_cam = 0.0
    gen = torch.Generator().manual_seed(0)
    for s in range(0, len(files), args.batch_size):
        x, t = x_all[s:s + args.batch_size], targets[s:s + args.batch_size]
        base = blur_baseline(x)
        t0 = time.perf_counter()
        heat = igos(score, x, t, opts, baselines=base)
        t_igos += time.perf_counter() - t0
        t0 = time.perf_counter()
        cam = gradcam(module, last_conv, x, t)
        t_cam += time.perf_counter() - t0
        rand = torch.rand((len(x), args.igos_size, args.igos_size), generator=gen).to(device)
        for name, h in (("iGOS++", heat), ("Grad-CAM", cam), ("random", rand)):
            d, i = deletion_insertion(score, x, t, h, grid=args.igos_size, baselines=base)
            sums[name][0] += float(d.sum())
            sums[name][1] += float(i.sum())
    n = len(files)
    truth = torch.tensor([SHAPES_OUTPUT_WNIDS.index(f.parent.name) for f in files])
    acc = float((targets.cpu() == truth).float().mean())
    print(f"{n} held-out demo images (32 px, model accuracy on them {acc:.3f}), device {args.device}, "
          f"{args.threads} threads")
    print(f"deletion / insertion AUC on a {args.igos_size}x{args.igos_size} grid, blurred baseline "
          f"(mean over images; deletion lower is better, insertion higher):")
    print("| map | deletion AUC | insertion AUC |")
    print("|---|---|---|")
    for name, (d, i) in sums.items():
        print(f"| {name} | {d / n:.3f} | {i / n:.3f} |")
    print(f"seconds per image: iGOS++ {t_igos / n:.3f} ({args.iterations} iterations, {args.ig_steps} "
          f"integration steps), Grad-CAM {t_cam / n:.4f}", flush=True)
    roots, minimal, levels = Counter(), Counter(), []
    t0 = time.perf_counter()
    sag_opts = SagOptions(grid=args.grid, beam=args.beam, roots=args.roots, threshold=args.threshold)
    m = min(n, args.sag_images)
    for k in range(m):
        g = sag(score, x_all[k], int(targets[k]), sag_opts)
        roots[min(len(g.roots), args.roots)] += 1
        minimal[min(len(g.minimal), 3)] += 1
        levels.append(g.levels)
    t_sag = time.perf_counter() - t0
    print(f"{m} images, SAG grid {args.grid}x{args.grid}, beam {args.beam}, threshold {args.threshold}, "
          f"at most {args.roots} roots sharing <= 1 patch:")
    print("| roots (diverse minimal sufficient explanations) | images |")
    print("|---|---|")
    for r in range(0, args.roots + 1):
        print(f"| {r}{'+' if r == args.roots else ''} | {roots.get(r, 0)} |")
    found = ", ".join(f"{k}{'+' if k == 3 else ''}: {minimal[k]}" for k in range(4))
    print(f"minimal sufficient sets found: {found}; search levels median {sorted(levels)[len(levels) // 2]}")
    print(f"SAG seconds per image: {t_sag / m:.3f} (over {m} images)")


if __name__ == "__main__":
    main()
