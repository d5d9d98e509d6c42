"""Benchmark the explanation pass against plain inference, and the cost of gradcam.

On the same synthetic JPEGs, device and batch size, in one run, prints images/s
of plain inference (same loader and model, no hooks), of the explanation pass
(``filtag_kg.explain.explain_dataset`` end to end: hooks, active filters,
votes, Parquet rows written), and of the pass with ``--weighting gradcam`` (a
forward and a backward pass), with the ratios; ``--clusters`` adds the pass with
``explain --clusters`` (issue 18's target: at most 2x the gradcam pass) and a table per
layer shape (filters x resolution) of what the clustering costs per image against that
layer's share of the gradcam pass. Plain and explain passes
alternate ``--repeats`` times (plain first in odd-numbered repeats, explain first in the
others); the headline ratio is the median of each repeat's paired ratio (see
``bench_profile.py``). Target (issue 16): explain >= 0.95x
plain on CPU without weighting.

``--synthetic`` needs no model and no images: it times the work of the pass
after the forward pass alone (what the writer thread does for each batch) on
random filter values of VGG16's 13 conv layers (4,224 filters) and 1,000
classes, for top-k 1, top-k 3, top-percent 1 and above-average, in two parts:
``explain`` (active filters and votes, ``explain_tensors``: on the CPU here, on
the device beside a GPU; ``--backend torch`` times the GPU code on the CPU) and
``host`` (the rows from its compact result, and writing them: all the host does
beside a GPU); and the bytes per image of ``explanations.parquet`` (and, with
``--jsonl``, of ``explanations.jsonl``). Above-average is also timed with values
rounded to multiples of 2^-K (``--value-bits K``, default 10; ``explain
--value-bits``). ``--columns`` adds where the bytes go: each Parquet column's
compressed bytes per image. Targets: host < 0.1 ms per image for every setting,
above-average <= 5 KiB per image.

Usage:
    python benchmarks/bench_explain.py --model resnet50 --images 64 --batch-size 8
    python benchmarks/bench_explain.py --model resnet50 --images 64 --batch-size 8 --clusters
    python benchmarks/bench_explain.py --synthetic --images 2048 --batch-size 128 --jsonl
    python benchmarks/bench_explain.py --synthetic --images 1024 --batch-size 128 --columns
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
from bench_profile import add_common_arguments, make_jpegs, paired_ratio, time_plain

from filtag_kg.data import ImageDataset, image_folder, make_loader
from filtag_kg.explain import ExplainOptions, explain_dataset
from filtag_kg.models import load_model
from filtag_kg.profile import Engine, ProfileOptions, first_good_image, profile_dataset, resolve_device
from filtag_kg.tagging import TagSetting, write_tags

VGG16_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
SYNTHETIC_SETTINGS = [TagSetting("top-k", 1), TagSetting("top-k", 3), TagSetting("top-percent", 1),
                      TagSetting("above-average")]


def synthetic_host_cost(
    images: int, batch_size: int, *, classes: int = 1000, widths: list[int] | None = None,
    jsonl: bool = False, seed: int = 0, out: Path | None = None, repeats: int = 3, backend: str | None = None,
    value_bits: int | None = 10,
) -> list[dict[str, Any]]:
    """Host-side cost and output size per image for each setting, on random values.

    Filter values are Beta(2, 5) per image and filter (skewed like real mean
    activations: about 40% above their layer's mean); each class's profile is
    such a vector too, tagged with the same setting, so each setting's tag
    matrix has the density real tags have. Each setting is timed ``repeats``
    times and the fastest kept (the machine's noise only ever adds time).
    Returns one dict per setting (and form): ``ms_per_image`` (all of it),
    ``explain_ms_per_image`` (active filters and votes: ``explain_tensors``, on the CPU
    here, on the device in a GPU pass), ``rows_ms_per_image`` (the rows from those),
    ``host_ms_per_image`` (rows and writing: all the host does when a GPU explains) and
    ``bytes_per_image`` (and ``columns``: Parquet column -> compressed bytes per image;
    ``value_bits``: the rounding, ``None`` for float values). ``backend``:
    ``explain_tensors``' backend (default: NumPy on the CPU). ``value_bits``: also run
    above-average with values rounded to multiples of 2^-``value_bits`` (``None``: don't).
    """
    from filtag_kg.explain import _active_batch
    from filtag_kg.tagging import order_filters

    widths = widths or VGG16_WIDTHS
    rng = np.random.default_rng(seed)
    names = [f"features.{i}" for i in range(len(widths))]
    class_ids = [f"n{i:08d}" for i in range(classes)]
    names_doc = {"layers": names, "class_ids": class_ids, "model_ids": class_ids, "model_labels": class_ids}
    profiles = [rng.beta(2, 5, size=(classes, f)) for f in widths]
    batches = []
    for start in range(0, images, batch_size):
        b = min(batch_size, images - start)
        values = [rng.beta(2, 5, size=(b, f)) for f in widths]
        probs = np.sort(rng.dirichlet(np.ones(classes), size=b), axis=1)[:, ::-1][:, :5].astype(np.float32)
        top = rng.integers(0, classes, size=(b, 5))
        info = {"indices": list(range(start, start + b)),
                "images": [f"/data/val/ILSVRC2012_val_{start + i:08d}.JPEG" for i in range(b)],
                "sha256": [f"{rng.integers(1 << 62):064x}" for _ in range(b)],
                "true_classes": [class_ids[i % classes] for i in range(start, start + b)]}
        batches.append((info, [(None, values, None, probs, top)]))
    rows = []
    variants = [(s, None) for s in SYNTHETIC_SETTINGS]
    if value_bits is not None:
        variants.append((TagSetting("above-average"), value_bits))
    for setting, bits in variants:
        incidence = []
        for prof, name in zip(profiles, names):
            cols, lengths = _active_batch(prof, order_filters(prof), setting, name)
            inc = np.zeros((prof.shape[1], classes), dtype=np.float32)
            inc[cols, np.repeat(np.arange(classes), lengths)] = 1.0
            incidence.append(inc)
        for form in ["parquet", "jsonl"] if jsonl else ["parquet"]:
            best: dict[str, float] | None = None
            for _ in range(repeats):
                run = _time_host_work(batches, setting, incidence, names, names_doc, form, out, backend, bits)
                if best is None or run["seconds"] < best["seconds"]:
                    best = run
            assert best is not None
            rows.append({"setting": str(setting), "form": form, "value_bits": bits,
                         "columns": {k: v / images for k, v in best["columns"].items()},
                         "ms_per_image": 1000 * best["seconds"] / images,
                         "explain_ms_per_image": 1000 * best["explain"] / images,
                         "rows_ms_per_image": 1000 * best["rows"] / images,
                         "host_ms_per_image": 1000 * (best["seconds"] - best["explain"]) / images,
                         "bytes_per_image": best["bytes"] / images})
    return rows


def _time_host_work(
    batches: list[Any], setting: TagSetting, incidence: list[np.ndarray], names: list[str],
    names_doc: dict[str, Any], form: str, out: Path | None, backend: str | None, value_bits: int | None,
) -> dict[str, Any]:
    """One timed pass over ``batches`` (after one untimed batch): the explain stage, the
    rows and the writing, each timed on its own."""
    from filtag_kg.explain import encode_explained, explain_results
    from filtag_kg.explanations_io import JsonlLines, ParquetParts, names_metadata

    value_type = "float32" if form == "parquet" else "float64"

    def stage(info: dict[str, Any], results: list[Any]) -> list[Any]:
        return explain_results(results, [setting], [incidence], names, backend=backend)

    def encode(info: dict[str, Any], explained: list[Any]) -> Any:
        return encode_explained(info, explained, weighting=None, value_type=value_type, value_bits=value_bits)

    encode(batches[0][0], stage(*batches[0]))  # warm-up
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        folder = Path(tmp) / "explanations.parquet"
        sink = (ParquetParts(folder, 0, names_metadata(**names_doc)) if form == "parquet"
                else JsonlLines(Path(tmp) / "explanations.jsonl", 0, names_doc))
        explain = rows = 0.0
        t0 = time.perf_counter()
        for info, results in batches:
            t1 = time.perf_counter()
            explained = stage(info, results)
            t2 = time.perf_counter()
            rows_batch = encode(info, explained)
            t3 = time.perf_counter()
            explain += t2 - t1
            rows += t3 - t2
            sink.write(rows_batch)
        sink.commit()
        seconds = time.perf_counter() - t0
        sink.close()
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        columns = _column_bytes(folder) if form == "parquet" else {}
    return {"seconds": seconds, "explain": explain, "rows": rows, "bytes": size, "columns": columns}


def _column_bytes(folder: Path) -> dict[str, int]:
    """Compressed bytes of each column over the part files of ``folder``, and ``(footer)``:
    the rest of the files (schema with the names, column and page metadata)."""
    import pyarrow.parquet as pq

    sizes: dict[str, int] = {}
    total = 0
    for path in sorted(folder.glob("part-*.parquet")):
        md = pq.ParquetFile(path).metadata
        total += path.stat().st_size
        for g in range(md.num_row_groups):
            group = md.row_group(g)
            for c in range(group.num_columns):
                chunk = group.column(c)
                name = chunk.path_in_schema.removesuffix(".list.element")
                sizes[name] = sizes.get(name, 0) + chunk.total_compressed_size
    sizes["(footer)"] = total - sum(sizes.values())
    return sizes


def capture_cluster_inputs(run: Path, imageset: Any, opts: dict[str, Any], profile: Any, loaded: Any,
                           batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The maps and gradients one clustered pass hands to ``cluster_layer`` for its first
    batch (each layer's [B, F, H, W]), recorded by wrapping the function for one pass."""
    import dataclasses

    import filtag_kg.clusters as clusters

    first = dataclasses.replace(imageset, samples=imageset.samples[:batch_size])
    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    real = clusters.cluster_layer

    def recording(acts: torch.Tensor, grads: torch.Tensor | None, *a: Any, **k: Any) -> Any:
        seen.append((acts.clone(), None if grads is None else grads.clone()))
        return real(acts, grads, *a, **k)

    clusters.cluster_layer = recording
    try:
        explain_dataset(run, first, ExplainOptions(clusters=clusters.ClusterOptions(), **opts),
                        profile=profile, loaded=loaded)
    finally:
        clusters.cluster_layer = real
    return seen


def conv_macs(loaded: Any, engine: Engine, x: torch.Tensor) -> list[int]:
    """Multiply-adds per image of each measured conv layer (output cells x weights)."""
    modules = dict(loaded.module.named_modules())
    macs: list[int] = []
    hooks = [modules[p.layer].register_forward_hook(
        lambda m, i, o: macs.append(o.shape[2] * o.shape[3] * m.weight.numel())) for p in engine.points]
    try:
        with torch.no_grad():
            loaded.module(x[:1].to(engine.device))
    finally:
        for h in hooks:
            h.remove()
    return macs


def cluster_cost_by_width(
    inputs: list[tuple[torch.Tensor, torch.Tensor | None]], macs: list[int], gradcam_ms: float,
    classes: int = 1000, repeats: int = 3,
) -> tuple[list[dict[str, Any]], float]:
    """Per distinct layer shape (width x resolution): milliseconds per image of the clustering
    (``cluster_layer`` with the float32 screen, and with float64 similarities of every pair,
    the method before the screen), the labels under one setting (``cluster_concepts``, a
    top-k 1 tag matrix of ``classes`` classes), summed over the layers of that shape, best of
    ``repeats`` (the pass labels all layers in one ``batch_concepts`` call: that is the
    second figure); and the shape's share of the gradcam pass (its conv multiply-adds' share of
    the model's, times the gradcam pass's ms per image: forward and backward cost about in
    proportion). Second: ms per image of labelling every layer as the pass does
    (``batch_concepts``, the same tag matrices). Third: ms per image of writing the maps as
    the pass does (``write_maps``: one atlas PNG per image holding its maps of every layer,
    so not split by shape), best of ``repeats``, each repeat into a new folder (the pass
    writes new files)."""
    from filtag_kg.clusters import (
        ClusterOptions,
        batch_concepts,
        cluster_concepts,
        cluster_layer,
        to_host,
        write_maps,
    )

    threshold, n_maps = ClusterOptions().threshold, ClusterOptions().maps
    rng = np.random.default_rng(0)
    total_macs = sum(macs)
    groups: dict[tuple[int, int, int], list[int]] = {}
    for li, (acts, _) in enumerate(inputs):
        groups.setdefault(tuple(acts.shape[1:]), []).append(li)

    def best(fn: Any, *args: Any, **kwargs: Any) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            times.append(time.perf_counter() - t0)
        return min(times)

    rows = []
    clustered: list[Any] = [None] * len(inputs)
    tags: list[Any] = [None] * len(inputs)
    values_of: list[Any] = [None] * len(inputs)
    with tempfile.TemporaryDirectory() as tmp:
        for shape, layers in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
            n = inputs[layers[0]][0].shape[0]
            inc = np.zeros((shape[0], classes))
            inc[rng.integers(0, shape[0], size=classes), np.arange(classes)] = 1
            inc_t = torch.from_numpy(inc)
            values = torch.rand(n, shape[0], dtype=torch.float64)
            screen = float64 = labels = 0.0
            for li in layers:
                acts, grads = inputs[li]
                screen += best(cluster_layer, acts, grads, threshold, n_maps)
                float64 += best(cluster_layer, acts, grads, threshold, n_maps, screen=False)
                lc = clustered[li] = cluster_layer(acts, grads, threshold, n_maps)
                tags[li], values_of[li] = inc_t, values
                labels += best(cluster_concepts, lc, values, inc_t)
            share = gradcam_ms * sum(macs[li] for li in layers) / total_macs
            rows.append({"shape": shape, "layers": len(layers), "screen": 1000 * screen / n,
                         "float64": 1000 * float64 / n, "labels": 1000 * labels / n, "gradcam_share": share})
        n = inputs[0][0].shape[0] if inputs else 1
        all_labels = best(batch_concepts, clustered, torch.cat(values_of, dim=1), tags) if inputs else 0.0
        host = to_host({"layers": clustered, "concepts": []})
        runs = iter(range(repeats))
        maps = best(lambda: write_maps(Path(tmp) / f"maps-{next(runs)}", host, list(range(n)), [None] * n,
                                       None))
    return rows, 1000 * all_labels / n, 1000 * maps / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--clusters", action="store_true", help="also time explain --clusters (default options)")
    ap.add_argument("--synthetic", action="store_true",
                    help="time the host-side work alone on random values of VGG16 widths, 1000 classes")
    ap.add_argument("--jsonl", action="store_true", help="with --synthetic: also time explanations.jsonl")
    ap.add_argument("--backend", choices=["numpy", "torch"], default=None,
                    help="with --synthetic: explain_tensors' backend (default: NumPy on the CPU)")
    ap.add_argument("--value-bits", type=int, default=10, metavar="K",
                    help="with --synthetic: also above-average with values rounded to 2^-K (default 10)")
    ap.add_argument("--columns", action="store_true",
                    help="with --synthetic: print each Parquet column's compressed bytes per image")
    args = ap.parse_args()
    if args.synthetic:
        print(f"host-side work per image: {args.images} synthetic images, batch {args.batch_size}, "
              f"VGG16 widths ({sum(VGG16_WIDTHS)} filters), 1000 classes, one Python thread "
              f"(NumPy's BLAS may use more), best of {args.repeats}")
        print(f"  {'setting':<20} {'form':<8} {'all':>8} {'explain':>8} {'host':>8} {'(rows':>8} "
              f"{'write)':>8}  ms/image;  KiB/image")
        results = synthetic_host_cost(args.images, args.batch_size, jsonl=args.jsonl, repeats=args.repeats,
                                      backend=args.backend, value_bits=args.value_bits)
        for r in results:
            write = r["host_ms_per_image"] - r["rows_ms_per_image"]
            label = r["setting"] + ("" if r["value_bits"] is None else f" 2^-{r['value_bits']}")
            print(f"  {label:<20} {r['form']:<8} {r['ms_per_image']:8.4f} "
                  f"{r['explain_ms_per_image']:8.4f} {r['host_ms_per_image']:8.4f} "
                  f"{r['rows_ms_per_image']:8.4f} {write:8.4f}  {r['bytes_per_image'] / 1024:9.2f}")
        print("all = explain + host; explain = active filters and votes (explain_tensors: on this CPU "
              "here, on the device in a GPU pass); host = rows + writing (what the host does beside a GPU)")
        print("targets: < 0.1 ms per image for every setting; above-average <= 5 KiB per image")
        if args.columns:
            shown = [r for r in results if r["form"] == "parquet"]
            names = sorted({k for r in shown for k in r["columns"]}, key=lambda k: -max(
                r["columns"].get(k, 0) for r in shown))
            print("bytes per image by Parquet column (compressed; footer: schema, names, page metadata):")
            print(f"  {'column':<22}" + "".join(
                f"{r['setting'] + ('' if r['value_bits'] is None else '/' + str(r['value_bits'])):>16}"
                for r in shown))
            for k in names:
                print(f"  {k:<22}" + "".join(f"{r['columns'].get(k, 0):16.1f}" for r in shown))
        return
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
        example = first_good_image(imageset, dataset)
        engine = Engine.build(
            loaded, example, layers=None, measure="activation", device=device
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
            # odd repeats time the explain pass first: a drift of the machine's speed during the
            # run then favours neither side of the pairs' median
            if r % 2 == 0:
                plain.append(time_plain(engine, loader))
            t0 = time.perf_counter()
            meta = explain_dataset(run, imageset, ExplainOptions(**opts), profile=profile, loaded=loaded)
            expl.append(args.images / (time.perf_counter() - t0))
            loop.append(meta["images_per_second"])
            if r % 2 == 1:
                plain.append(time_plain(engine, loader))
            print(f"  repeat {r + 1}: plain {plain[-1]:.2f} img/s, explain {expl[-1]:.2f} img/s "
                  f"(batch loop {loop[-1]:.2f}); ratio {expl[-1] / plain[-1]:.3f}")
        t0 = time.perf_counter()
        explain_dataset(
            run, imageset, ExplainOptions(weighting="gradcam", **opts), profile=profile, loaded=loaded
        )
        grad = args.images / (time.perf_counter() - t0)
        clus = None
        if args.clusters:
            from filtag_kg.clusters import ClusterOptions

            t0 = time.perf_counter()
            explain_dataset(run, imageset, ExplainOptions(clusters=ClusterOptions(), **opts), profile=profile,
                            loaded=loaded)
            clus = args.images / (time.perf_counter() - t0)
            inputs = capture_cluster_inputs(run, imageset, opts, profile, loaded, args.batch_size)
            macs = conv_macs(loaded, engine, example)
            by_width, labels_ms, maps_ms = cluster_cost_by_width(inputs, macs, 1000 / grad)
        med_plain, med_expl, med_loop = (statistics.median(v) for v in (plain, expl, loop))
        print(f"plain inference        {med_plain:9.2f} images/s (median of {args.repeats})")
        print(f"explain pass           {med_expl:9.2f} images/s  (whole call: setup, tag index and "
              "the first batch's check of the measure points included)")
        print(f"  its batch loop       {med_loop:9.2f} images/s")
        print(f"explain with gradcam   {grad:9.2f} images/s")
        ratio, loop_ratio = paired_ratio(expl, plain), paired_ratio(loop, plain)
        print(f"ratio explain/plain    {ratio:.3f}  (median of the paired ratios; target >= 0.95 on CPU)")
        print(f"ratio batch loop/plain {loop_ratio:.3f}  (the ratio a large dataset tends to)")
        print(f"gradcam cost           {med_expl / grad:.2f}x the time of the unweighted pass")
        if clus is not None:
            print(f"explain with clusters  {clus:9.2f} images/s (threshold 0.5, 3 maps per layer)")
            print(f"clusters cost          {grad / clus:.2f}x the time of the gradcam pass (target <= 2), "
                  f"{med_expl / clus:.2f}x the unweighted pass")
            print(f"clustering per layer shape, ms per image (this run's maps and gradients of one batch of "
                  f"{args.batch_size}, all layers of a shape summed, best of 3; labels: one setting, top-k 1 "
                  "tags of 1000 classes; maps: writing one atlas PNG per image with its 3 maps per layer "
                  "of every layer, so only in the 'all' row; gradcam share: the layers' conv "
                  "multiply-adds' share of the gradcam pass):")
            print(f"  {'filters x cells':<16} {'layers':>6} {'screen':>8} {'float64':>8} {'labels':>8} "
                  f"{'maps':>8} {'gradcam share':>14}")
            for r in by_width:
                f, h, w = r["shape"]
                print(f"  {f'{f} x {h}x{w}':<16} {r['layers']:>6} {r['screen']:8.2f} {r['float64']:8.2f} "
                      f"{r['labels']:8.2f} {'-':>8} {r['gradcam_share']:14.2f}")
            tot = {k: sum(r[k] for r in by_width)
                   for k in ("screen", "float64", "labels", "gradcam_share")}
            print(f"  {'all':<16} {sum(r['layers'] for r in by_width):>6} {tot['screen']:8.2f} "
                  f"{tot['float64']:8.2f} {tot['labels']:8.2f} {maps_ms:8.2f} "
                  f"{tot['gradcam_share']:14.2f}")
            print(f"  labels of all layers in one batch_concepts call, as the pass runs them: "
                  f"{labels_ms:.2f} ms per image (the column above: cluster_concepts layer by layer)")
            print("  screen: cluster_layer as the pass runs it (float32 screen, float64 recheck); float64: "
                  "cluster_layer(screen=False), float64 similarities of every pair (same clusters)")


if __name__ == "__main__":
    main()
