"""Benchmark the knowledge-graph export: the streaming N-Quads writer against rdflib.

On one synthetic run folder (VGG16's 13 conv layers, 4224 filters, 1000
ImageNet classes tagged top-k 1, and ``--images`` explanations in the exact
``explanations.jsonl`` format), in one run, prints for each route the
triples written per second (wall clock and CPU time) and the peak memory
added by the export (peak RSS of a fresh process minus its RSS before the
export started):

* **stream**: :func:`filtag_kg.rdf.write_nquads` (reads the JSON Lines file,
  encodes, writes N-Quads), also on 1/4 and 1/2 of the images, to show that
  its peak memory does not grow with the number of images;
* **rdflib**: the same triples added to an rdflib ``Dataset`` with
  ``Graph.add``, then ``Dataset.serialize(format="nquads")``, on the first
  ``--rdflib-images`` explanations of the same file (rdflib holds every
  triple as Python objects, about 1 kB each).

Each measurement runs in its own process so that peak memory is its own.
Target: stream >= 1,000,000 triples/s on this CPU (rdflib: well under 100,000).

``--end-to-end`` measures ``filtag-kg export --format nq`` itself instead: the
:func:`filtag_kg.rdf.export_run_stats` call (reading ``explanations.parquet``,
the form an explanation pass writes, encoding, writing, fsync and atomic
rename) on synthetic runs of ``--images`` and a quarter as many explanations,
for ``--jobs 1`` and each ``--jobs`` given, each in a fresh process with the
imports and WordNet already loaded (their time is printed apart). It prints
quads/s, the peak memory the export added to the main process and the peak of
its worker processes, at both sizes, so that memory can be seen not to grow
with the number of explanations. Targets (issue 16): >= 500,000 quads/s with
one process, >= 1,000,000 with ``--jobs 2``.

Usage:
    python benchmarks/bench_export.py                      # 10,000 images, rdflib on 1,000
    python benchmarks/bench_export.py --images 20000 --rdflib-images 10000
    python benchmarks/bench_export.py --end-to-end         # 30,000 explanations, --jobs 1 and 2
    python benchmarks/bench_export.py --end-to-end --images 30000 --classes 1000 --jobs 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def child(route: str, run: str, out: str) -> dict:
    """One measurement in this (fresh) process; returns its figures."""
    from filtag_kg.rdf import RunGraphs, write_nquads
    from filtag_kg.rdf.graphs import add_triples
    from filtag_kg.wordnet import load_wordnet

    wn = load_wordnet(source="slice")  # the same WordNet data everywhere; loaded before measuring
    import rdflib  # noqa: F401 - imported before measuring for both routes

    _reset_peak()
    before = _rss_kib()
    t0, c0 = time.perf_counter(), time.process_time()
    if route == "stream":
        with open(out, "wb") as fh:
            stats = write_nquads(run, fh, wordnet=wn)
        triples, explanations = stats.quads, stats.explanations
    else:
        from rdflib import Dataset, URIRef

        ds = Dataset()
        explanations = 0
        for graph, text, _ in RunGraphs(run, wordnet=wn, graphs=False):
            add_triples(ds.graph(URIRef(graph)), text)
            explanations += 1
        explanations -= 2  # the tag graph and the VoID graph
        triples = len(ds)
        with open(out, "wb") as fh:
            ds.serialize(destination=fh, format="nquads")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "route": route, "triples": triples, "explanations": explanations, "seconds": wall, "cpu_seconds": cpu,
        "peak_mib": (_peak_kib() - before) / 1024, "bytes": os.path.getsize(out),
    }


def measure(route: str, run: Path, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run(
        [sys.executable, __file__, "--child", route, str(run), str(out)],
        capture_output=True, text=True, env=env, check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"{route} failed:\n{res.stderr}")
    out.unlink(missing_ok=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def child_export(run: str, out: str, jobs: int) -> dict:
    """``export --format nq`` of ``run`` with ``jobs`` processes, in this (fresh) process."""
    t0 = time.perf_counter()
    from filtag_kg.rdf import export_run_stats
    from filtag_kg.wordnet import load_wordnet

    wn = load_wordnet()  # what `filtag-kg export` loads; timed apart
    ready = time.perf_counter() - t0
    _reset_peak()
    before = _rss_kib()
    t0, c0 = time.perf_counter(), time.process_time()
    stats = export_run_stats(run, fmt="nq", out=out, wordnet=wn, jobs=jobs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "jobs": jobs, "quads": stats.quads, "explanations": stats.explanations, "seconds": wall,
        "cpu_seconds": cpu, "worker_cpu_seconds": workers.ru_utime + workers.ru_stime, "ready_seconds": ready,
        "peak_mib": (_peak_kib() - before) / 1024, "worker_peak_mib": workers.ru_maxrss / 1024,
        "bytes": os.path.getsize(out),
    }


def end_to_end(args: argparse.Namespace) -> None:
    """The ``--end-to-end`` mode: see the module docstring."""
    sys.path.insert(0, str(ROOT))
    from filtag_kg.rdf.synthetic import write_synthetic_run

    classes = args.classes or 100
    jobs = sorted({1, *args.jobs})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory(prefix="bench-export-e2e-") as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        sizes = sorted({max(1, args.images // 4), args.images})
        runs = {}
        for n in sizes:
            t0 = time.perf_counter()
            runs[n] = write_synthetic_run(base / f"run{n}", classes=classes, images=n, k=1, form="parquet")
            print(f"synthetic run: VGG16 layers (4224 filters), {classes} classes, top-k 1, {n:,} "
                  f"explanations in explanations.parquet, made in {time.perf_counter() - t0:.1f} s",
                  flush=True)
        print(f"{'explanations':>12} {'jobs':>4} {'quads':>11} {'GiB':>5} {'export s':>8} {'quads/s':>11} "
              f"{'main CPU s':>10} {'workers CPU s':>13} {'main +MiB':>9} {'worker MiB':>10} {'setup s':>7}")
        best: dict[int, float] = {}
        for n in sizes:
            for j in jobs:
                out = base / "out.nq"
                res = subprocess.run(
                    [sys.executable, __file__, "--child-export", str(runs[n]), str(out), str(j)],
                    capture_output=True, text=True, env=env, check=False,
                )
                out.unlink(missing_ok=True)
                if res.returncode != 0:
                    raise SystemExit(f"export --jobs {j} failed:\n{res.stderr}")
                r = json.loads(res.stdout.strip().splitlines()[-1])
                rate = r["quads"] / r["seconds"]
                if n == args.images:
                    best[j] = rate
                print(f"{r['explanations']:>12,} {j:>4} {r['quads']:>11,} {r['bytes'] / 2**30:>5.2f} "
                      f"{r['seconds']:>8.2f} {rate:>11,.0f} {r['cpu_seconds']:>10.2f} "
                      f"{r['worker_cpu_seconds']:>13.2f} {r['peak_mib']:>9.1f} {r['worker_peak_mib']:>10.1f} "
                      f"{r['ready_seconds']:>7.2f}", flush=True)
        load = os.getloadavg()[0]
        for j, target in ((1, 5e5), (2, 1e6)):
            if j in best:
                met = "met" if best[j] >= target else "NOT met"
                print(f"target --jobs {j}: >= {target:,.0f} quads/s -> {met} "
                      f"({best[j]:,.0f}; load average {load:.2f} on {os.cpu_count()} CPUs)")


def subset(run: Path, images: int, dest: Path) -> Path:
    """A copy of ``run`` whose explanations.jsonl holds only its first ``images`` lines."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("profile.json", "tags.tsv", "explanations.json"):
        (dest / name).write_bytes((run / name).read_bytes())
    with open(run / "explanations.jsonl", "rb") as src, open(dest / "explanations.jsonl", "wb") as dst:
        for i, line in enumerate(src):
            if i >= images:
                break
            dst.write(line)
    return dest


def row(r: dict) -> str:
    return (
        f"{r['route']:<7} {r['explanations']:>8,} {r['triples']:>11,} {r['seconds']:>8.2f} "
        f"{r['triples'] / r['seconds']:>12,.0f} {r['triples'] / r['cpu_seconds']:>12,.0f} "
        f"{r['peak_mib']:>9.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=None,
                    help="explanations (default 10,000; 30,000 with --end-to-end)")
    ap.add_argument("--classes", type=int, default=None,
                    help="ImageNet classes tagged (default 1000; 100 with --end-to-end)")
    ap.add_argument("--rdflib-images", type=int, default=1000,
                    help="explanations for the rdflib route (default 1,000; 0 = all)")
    ap.add_argument("--keep", metavar="DIR", help="write the synthetic run here and keep it")
    ap.add_argument("--end-to-end", action="store_true",
                    help="time `export --format nq` of a Parquet run (default 30,000 explanations)")
    ap.add_argument("--jobs", type=int, nargs="+", default=[2],
                    help="with --end-to-end: process counts to time besides 1 (default 2)")
    ap.add_argument("--child", nargs=3, metavar=("ROUTE", "RUN", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--child-export", nargs=3, metavar=("RUN", "OUT", "JOBS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if args.child_export:
        run, out, jobs = args.child_export
        print(json.dumps(child_export(run, out, int(jobs))))
        return
    if args.end_to_end:
        args.images = args.images or 30_000
        end_to_end(args)
        return
    args.images, args.classes = args.images or 10_000, args.classes or 1000

    sys.path.insert(0, str(ROOT))
    from filtag_kg.rdf.synthetic import write_synthetic_run

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        t0 = time.perf_counter()
        run = write_synthetic_run(base / "run", classes=args.classes, images=args.images, k=1)
        size = (run / "explanations.jsonl").stat().st_size
        print(f"synthetic run: VGG16 layers (4224 filters), {args.classes} classes, top-k 1, "
              f"{args.images:,} explanations ({size / 2**20:.0f} MiB JSON Lines), "
              f"made in {time.perf_counter() - t0:.1f} s")
        print(f"{'route':<7} {'images':>8} {'triples':>11} {'wall s':>8} {'triples/s':>12} "
              f"{'per CPU s':>12} {'peak MiB':>9}")
        results = []
        for n in sorted({max(1, args.images // 4), max(1, args.images // 2)}):
            r = measure("stream", subset(run, n, base / f"run{n}"), base / "out.nq")
            print(row(r), flush=True)
        r = measure("stream", run, base / "out.nq")
        results.append(r)
        print(row(r), flush=True)
        n = args.rdflib_images if args.rdflib_images > 0 else args.images
        src = run if n >= args.images else subset(run, n, base / f"run{n}")
        r2 = measure("rdflib", src, base / "out-rdflib.nq")
        results.append(r2)
        print(row(r2), flush=True)
        speed = (r["triples"] / r["seconds"]) / (r2["triples"] / r2["seconds"])
        print(f"stream / rdflib: {speed:.1f}x triples/s; peak memory {r['peak_mib']:.0f} MiB for "
              f"{r['explanations']:,} images vs {r2['peak_mib']:.0f} MiB for {r2['explanations']:,} (rdflib)")
        print(f"target: stream >= 1,000,000 triples/s -> "
              f"{'met' if r['triples'] / r['seconds'] >= 1e6 else 'NOT met'} (wall clock, load average "
              f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
