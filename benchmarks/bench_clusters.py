"""explain --clusters: faithfulness of the top cluster's map, and the cost of the clustered pass.

On the demo's network and held-out shapes (taken from the demo cache, trained there if
missing; a run folder is profiled and tagged on other held-out images than those explained):

* deletion and insertion AUC (docs/saliency-method.md, ``filtag_kg.saliency.deletion_insertion``)
  of the rank-1 cluster's map on the last measured conv layer (the PNG the pass wrote,
  as the report shows it) against Grad-CAM on the last conv layer and a seeded uniform
  random map, on one grid with the blurred baseline (deletion lower, insertion higher is
  better), means over the images;
* the cost: wall time of the explanation pass plain, with ``--weighting gradcam`` and with
  ``--clusters``, in paired repeats (the three passes back to back, order rotated per
  repeat), medians of the per-repeat ratios; and per layer the time of the clustering
  itself on a batch (``filtag_kg.clusters.cluster_batch``) against its width and size.

Usage (run benchmarks one at a time):
    flock /tmp/bench.lock python benchmarks/bench_clusters.py --images 200
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def demo_model(cache: Path | None) -> tuple[object, Path]:
    """The demo network and its data folder, from the cache (trained there when missing)."""
    from filtag_kg.shapes import default_cache_dir, load_or_train_shapes_net, load_shapes_model

    _, _, data = load_or_train_shapes_net(cache or default_cache_dir(), progress=False)
    return load_shapes_model(data.parent / "weights.pt"), data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="held-out images explained (default 200)")
    ap.add_argument("--profile-images", type=int, default=500, help="other held-out images profiled (500)")
    ap.add_argument("--cache", default=None, help="demo cache folder (default: the user cache)")
    ap.add_argument("--grid", type=int, default=8, help="deletion / insertion grid side (default 8)")
    ap.add_argument("--threshold", type=float, default=0.5, help="--cluster-threshold (default 0.5)")
    ap.add_argument("--repeats", type=int, default=5, help="paired timing repeats (default 5)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import numpy as np
    import torch

    from filtag_kg.cluster_atlas import load_map, split_map_ref
    from filtag_kg.clusters import ClusterOptions, cluster_batch
    from filtag_kg.data import ImageSet, Sample, load_rgb
    from filtag_kg.explain import ExplainOptions, TagIndex, explain_dataset, read_explanations
    from filtag_kg.profile import ProfileOptions, profile_dataset
    from filtag_kg.saliency import blur_baseline, class_probability, deletion_insertion, gradcam
    from filtag_kg.shapes import SHAPES_OUTPUT_WNIDS
    from filtag_kg.tagging import TagSetting, write_tags

    torch.set_num_threads(args.threads)
    loaded, data = demo_model(Path(args.cache) if args.cache else None)
    files = sorted((data / "heldout").rglob("*.png"))
    explained = files[0::2][:: max(1, len(files[0::2]) // args.images)][: args.images]
    profiled = files[1::2][:: max(1, len(files[1::2]) // args.profile_images)][: args.profile_images]

    def imageset(paths: list[Path]) -> ImageSet:
        classes = list(loaded.classes)
        samples = [Sample(str(p), SHAPES_OUTPUT_WNIDS.index(p.parent.name)) for p in paths]
        return ImageSet("files", str(data / "heldout"), samples, classes)

    run = Path(tempfile.mkdtemp(prefix="bench-clusters-")) / "run"
    prof = profile_dataset(loaded, imageset(profiled), run,
                           ProfileOptions(batch_size=64, device=args.device, workers=0, progress=False,
                                          checkpoint_every=0))
    settings = [TagSetting("top-k", 1), TagSetting("top-k", 3)]
    write_tags(run, prof, settings)
    held = imageset(explained)

    def options(mode: str, **extra: object) -> ExplainOptions:
        return ExplainOptions(device=args.device, batch_size=args.batch_size, workers=0, progress=False,
                              checkpoint_every=0, weighting="gradcam" if mode == "gradcam" else None,
                              clusters=ClusterOptions(args.threshold, 1) if mode == "clusters" else None,
                              **extra)

    # --- faithfulness: the pass's rank-1 map of the last layer
    explain_dataset(run, held, options("clusters"), profile=prof, loaded=loaded)
    last = prof.layers[-1].name
    maps, missing = {}, 0
    for rec in read_explanations(run):
        if rec["perturbation"] is None and rec["index"] not in maps:
            top = rec["clusters"][last][0]
            if top["map"] is None:
                missing += 1
                maps[rec["index"]] = None
            else:
                file, region = split_map_ref(top["map"])
                maps[rec["index"]] = load_map(run / file, region).astype(np.float32) / 255
    module = loaded.module.to(args.device).eval()
    tf = loaded.preprocess.transform()
    x_all = torch.stack([tf(load_rgb(str(f))) for f in explained]).to(args.device)
    with torch.no_grad():
        targets = module(x_all).argmax(dim=1)
    shape = next(m for m in maps.values() if m is not None).shape
    cluster_maps = torch.stack([torch.from_numpy(maps[i]) if maps[i] is not None else torch.zeros(shape)
                                for i in range(len(explained))])
    last_conv = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)][-1]
    score = class_probability(module)
    sums = {"top cluster (last layer)": [0.0, 0.0], "Grad-CAM (last conv)": [0.0, 0.0], "random": [0.0, 0.0]}
    gen = torch.Generator().manual_seed(0)
    for s in range(0, len(explained), 50):
        x, t = x_all[s:s + 50], targets[s:s + 50]
        base = blur_baseline(x)
        cam = gradcam(module, last_conv, x, t)
        rand = torch.rand((len(x), args.grid, args.grid), generator=gen)
        for name, h in zip(sums, (cluster_maps[s:s + 50], cam, rand)):
            d, i = deletion_insertion(score, x, t, h, grid=args.grid, baselines=base)
            sums[name][0] += float(d.sum())
            sums[name][1] += float(i.sum())
    n = len(explained)
    print(f"{n} held-out demo images explained (profile and tags from {len(profiled)} other held-out "
          "images), "
          f"device {args.device}, {args.threads} threads, --cluster-threshold {args.threshold}")
    print(f"last measured layer {last} ({shape[0]}x{shape[1]} maps); images whose last layer had no cluster "
          f"with weight > 0 (map counted as all zero): {missing}")
    print(f"deletion / insertion AUC on a {args.grid}x{args.grid} grid, blurred baseline "
          "(mean over images; deletion lower is better, insertion higher):")
    print("| map | deletion AUC | insertion AUC |")
    print("|---|---|---|")
    for name, (d, i) in sums.items():
        print(f"| {name} | {d / n:.3f} | {i / n:.3f} |")

    # --- cost: paired repeats of the three passes
    modes = ["plain", "gradcam", "clusters"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    for m in modes:  # warm-up: first calls pay for imports and allocator growth
        explain_dataset(run, held, options(m), profile=prof, loaded=loaded)
    for r in range(args.repeats):
        for m in modes[r % 3:] + modes[:r % 3]:
            t0 = time.perf_counter()
            explain_dataset(run, held, options(m), profile=prof, loaded=loaded)
            times[m].append(time.perf_counter() - t0)
    ratio = {
        "clusters / gradcam": [c / g for c, g in zip(times["clusters"], times["gradcam"])],
        "clusters / plain": [c / p for c, p in zip(times["clusters"], times["plain"])],
        "gradcam / plain": [g / p for g, p in zip(times["gradcam"], times["plain"])],
    }
    print(f"explanation pass over {n} images, settings top-k 1 and 3, batch {args.batch_size}, "
          f"{args.repeats} paired repeats (median seconds: "
          + ", ".join(f"{m} {statistics.median(v):.2f}" for m, v in times.items()) + ")")
    print("| ratio | median | min | max |")
    print("|---|---|---|---|")
    for name, v in ratio.items():
        print(f"| {name} | {statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f} |")

    # --- the clustering alone, per layer, on one batch
    from filtag_kg.activations import FilterProbe
    from filtag_kg.explain import _class_gradients
    from filtag_kg.profile import Engine

    engine = Engine.build(loaded, x_all[:1].cpu(), layers=[lp.name for lp in prof.layers],
                          measure="activation", device=torch.device(args.device))
    index = TagIndex.build(prof, settings)
    x = x_all[: args.batch_size]
    with FilterProbe(engine.module, engine.points, keep_outputs=True) as probe, torch.enable_grad():
        logits = engine.module(x.detach().requires_grad_(True))
        values = probe.take_flat()
        grads = _class_gradients(probe.outputs, logits.float())
        acts = [o.detach() if p.apply is None else p.apply(o.detach())
                for o, p in zip(probe.outputs, engine.points)]
    print(f"clustering alone, one batch of {len(x)} images, median of 5 (milliseconds):")
    print("| layer | filters | map size | ms per batch |")
    print("|---|---|---|---|")
    widths = [a.shape[1] for a in acts]
    starts = np.concatenate([[0], np.cumsum(widths)])
    for li, (lp, a, g) in enumerate(zip(prof.layers, acts, grads)):
        inc = [[torch.from_numpy(per[li]).to(a.device, torch.float64)] for per in index.incidence]
        v = values[:, starts[li]:starts[li + 1]]
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            with torch.no_grad():
                cluster_batch([a], [g], v, inc, ClusterOptions(args.threshold, 1))
            if a.device.type == "cuda":
                torch.cuda.synchronize()
            runs.append((time.perf_counter() - t0) * 1000)
        print(f"| {lp.name} | {a.shape[1]} | {a.shape[2]}x{a.shape[3]} | {statistics.median(runs):.1f} |")


if __name__ == "__main__":
    main()
