"""Benchmark the query library at ImageNet-validation scale: Oxigraph store vs rdflib in memory.

Builds a synthetic run folder in the exact formats of a real run (VGG16's 13
conv layers, 4224 filters, 1000 ImageNet classes tagged top-k 1, and
``--images`` explanations, 50,000 by default like the ImageNet validation
set), exports it to N-Quads with the streaming writer (over 10 million
triples at the default size), loads it into an on-disk Oxigraph store with
:func:`filtag_kg.sparql.load` (bulk loader), and prints the p50 / p95 latency
of two library queries, each run ``--repeat`` times after one warm-up run:

* ``filters-for-concept`` with ``concept=dog.n.01`` (the filters tagged with
  any of ImageNet's 118 dog breeds, through ``skos:broader*``);
* ``explain-image`` for a different random image each time;

and, on the Oxigraph sources, two raw queries as any client would send them:

* ``tags-by-concept (union)``: the qualified tags of dog.n.01 and its hyponyms
  through the union default graph (``?tag fk:tagConcept ?c``); since the
  knowledge graph's second edition the tags' concept property is used by tags
  only, so this no longer scans the votes and predictions of every explanation
  (target: under 20 ms p50 at >= 20 M quads);
* ``filters-for-concept (no union)``: the library text with an empty default
  graph (the SPARQL default, Jena TDB's), where it must give the same rows.

Side by side, the same queries run on an rdflib in-memory ``Dataset`` parsed
from the export of the first ``--rdflib-images`` explanations (rdflib holds
every triple as Python objects, about 1 kB each, so the full graph does not
fit in memory), and, for reference, on an in-memory Oxigraph store holding
that same subset. Target: both queries under 100 ms p50 on the Oxigraph store.

Usage:
    python benchmarks/bench_query.py                       # 50,000 images, rdflib on 1,000
    python benchmarks/bench_query.py --images 5000 --repeat 20 --keep /tmp/bench-query
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_export import subset

ROOT = Path(__file__).resolve().parents[1]
DOG = "n02084071"  # dog.n.01
TAGS_BY_CONCEPT = """
PREFIX fk: <https://w3id.org/filtag-kg/ontology#>
PREFIX skos: <http://www.w3.org/2004/02/skos/core#>
SELECT ?tag WHERE { ?dog fk:wnid "n02084071" . ?c skos:broader* ?dog . ?tag fk:tagConcept ?c }
"""


def percentiles(times: list[float]) -> tuple[float, float]:
    """p50 and p95 in milliseconds (nearest rank)."""
    s = sorted(times)
    p95 = s[min(len(s) - 1, max(0, round(0.95 * len(s)) - 1))]
    return statistics.median(s) * 1000, p95 * 1000


def timed(fn: Callable[[], int], repeat: int, budget_s: float) -> tuple[list[float], int]:
    """Run ``fn`` once to warm up, then up to ``repeat`` times within ``budget_s`` seconds."""
    rows = fn()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return times, rows


def _line(label: str, query: str, times: list[float], rows: int) -> str:
    p50, p95 = percentiles(times)
    return f"{label:<34} {query:<30} {p50:>9.1f} {p95:>9.1f} {len(times):>5} {rows:>6}"


def bench(label: str, source: object, images: int, repeat: int, budget_s: float, seed: int) -> list[str]:
    """Latency lines of the queries on one source."""
    from filtag_kg import sparql

    rng = random.Random(seed)
    out = []
    times, rows = timed(
        lambda: len(sparql.query(source, "filters-for-concept", concept=DOG)), repeat, budget_s
    )
    out.append(_line(label, "filters-for-concept dog.n.01", times, rows))

    def explain() -> int:
        return len(sparql.query(source, "explain-image", image=f"img {rng.randrange(images):06d}.jpg"))

    times, rows = timed(explain, repeat, budget_s)
    out.append(_line(label, "explain-image (random image)", times, rows))
    store = getattr(source, "backend", None)
    if store is None or not hasattr(store, "quads_for_pattern"):
        return out  # rdflib: the raw Oxigraph calls below do not apply
    import pyoxigraph as ox

    def raw(text: str, union: bool, **subs: object) -> int:
        bound = {ox.Variable(k): v for k, v in subs.items()} or None
        return sum(1 for _ in store.query(text, substitutions=bound, use_default_graph_as_union=union))

    times, rows = timed(lambda: raw(TAGS_BY_CONCEPT, True), repeat, budget_s)
    out.append(_line(label, "tags-by-concept (union)", times, rows))
    text = sparql.find_query("filters-for-concept").text
    times, rows = timed(lambda: raw(text, False, concept=ox.Literal(DOG)), repeat, budget_s)
    out.append(_line(label, "filters-for-concept (no union)", times, rows))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50_000, help="explanations (default 50,000)")
    ap.add_argument("--classes", type=int, default=1000, help="ImageNet classes tagged (default 1000)")
    ap.add_argument(
        "--rdflib-images",
        type=int,
        default=1000,
        help="explanations in the rdflib graph (default 1,000; 0 skips rdflib)",
    )
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per query (default 50)")
    ap.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds at most per query and engine; fewer runs if slower (default 60)",
    )
    ap.add_argument("--optimize", action="store_true", help="compact the store after loading")
    ap.add_argument("--keep", metavar="DIR", help="build in DIR and keep it (reused if it holds a store)")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from filtag_kg import sparql
    from filtag_kg.rdf import export_run_stats
    from filtag_kg.rdf.synthetic import write_synthetic_run
    from filtag_kg.wordnet import load_wordnet

    wn = load_wordnet(source="slice")  # the same WordNet data on every machine
    tmp = None
    if args.keep:
        base = Path(args.keep)
        base.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-query-")
        base = Path(tmp.name)
    try:
        store_dir = base / "store"
        run = base / "run"
        if not (store_dir / "CURRENT").is_file():
            t0 = time.perf_counter()
            write_synthetic_run(run, classes=args.classes, images=args.images, k=1)
            print(
                f"synthetic run: VGG16 layers (4224 filters), {args.classes} classes, top-k 1, "
                f"{args.images:,} explanations, written in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            t0 = time.perf_counter()
            stats = export_run_stats(run, fmt="nq", wordnet=wn)
            dt = time.perf_counter() - t0
            print(
                f"export: {stats.quads:,} quads ({stats.path.stat().st_size / 2**30:.2f} GiB N-Quads) in "
                f"{dt:.1f} s ({stats.quads / dt:,.0f} quads/s)",
                flush=True,
            )
            t0 = time.perf_counter()
            loaded = sparql.load([stats.path], store_dir, optimize=args.optimize)
            dt = time.perf_counter() - t0
            print(
                f"load (bulk{', optimized' if args.optimize else ''}): {loaded.quads:,} quads in {dt:.1f} s "
                f"({loaded.quads / dt:,.0f} quads/s); store {_du(store_dir) / 2**30:.2f} GiB",
                flush=True,
            )
            if not args.keep:
                stats.path.unlink()
        else:
            print(f"reusing the store in {store_dir}")
        with sparql.open_source(store=store_dir) as src:
            t0 = time.perf_counter()
            quads = len(src)
            print(f"store: {quads:,} quads (counted in {time.perf_counter() - t0:.1f} s)")
            print(
                f"\n{'engine (graph)':<34} {'query':<30} {'p50 ms':>9} {'p95 ms':>9} {'runs':>5} {'rows':>6}"
            )
            for line in bench(
                f"oxigraph store ({quads / 1e6:.1f}M quads)",
                src,
                args.images,
                args.repeat,
                args.budget,
                seed=1,
            ):
                print(line, flush=True)
        if args.rdflib_images > 0:
            n = min(args.rdflib_images, args.images)
            small = subset(run, n, base / f"run{n}") if run.is_dir() else None
            if small is None:
                print("(rdflib skipped: the run folder is gone; rebuild without reusing the store)")
                return
            path = export_run_stats(small, fmt="nq", wordnet=wn).path
            with sparql.open_source(graphs=[path]) as mem:
                for line in bench(
                    f"oxigraph memory ({len(mem) / 1e6:.2f}M quads)", mem, n, args.repeat, args.budget, seed=2
                ):
                    print(line, flush=True)
            import rdflib

            t0 = time.perf_counter()
            ds = rdflib.Dataset(default_union=True)
            ds.parse(str(path), format="nquads")
            triples = sum(1 for _ in ds.quads((None, None, None, None)))
            print(f"(rdflib parsed {triples:,} quads in {time.perf_counter() - t0:.1f} s)", flush=True)
            for line in bench(
                f"rdflib memory ({triples / 1e6:.2f}M quads)", ds, n, args.repeat, args.budget, seed=2
            ):
                print(line, flush=True)
        print(
            f"\ntarget: both library queries under 100 ms p50 and tags-by-concept (union) under 20 ms p50 on "
            f"the Oxigraph store (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)"
        )
    finally:
        if tmp is not None:
            tmp.cleanup()


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


if __name__ == "__main__":
    main()
