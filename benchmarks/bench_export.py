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

Usage:
    python benchmarks/bench_export.py                      # 10,000 images, rdflib on 1,000
    python benchmarks/bench_export.py --images 20000 --rdflib-images 10000
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
    ap.add_argument("--images", type=int, default=10_000, help="explanations (default 10,000)")
    ap.add_argument("--classes", type=int, default=1000, help="ImageNet classes tagged (default 1000)")
    ap.add_argument("--rdflib-images", type=int, default=1000,
                    help="explanations for the rdflib route (default 1,000; 0 = all)")
    ap.add_argument("--keep", metavar="DIR", help="write the synthetic run here and keep it")
    ap.add_argument("--child", nargs=3, metavar=("ROUTE", "RUN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

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
