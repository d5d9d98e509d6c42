"""Load-test ``filtag-kg serve`` on loopback: dereferences and library queries while slow
queries run.

Builds a synthetic VGG16-sized run (tags over ``--classes`` ImageNet classes and as
many explanations as it takes to reach ``--quads`` quads; the issue's target is at
least 10 M, ImageNet-validation-sized), exports and loads it into an Oxigraph store
(``--keep DIR`` keeps it for the next run), starts the real server process on a free
loopback port, and runs ``--clients`` concurrent clients for ``--seconds`` seconds
(bounded: both are fixed, and only 127.0.0.1 is contacted):

* ``--slow`` of them (default 2) send slow queries (a four-way cross product) back to
  back, each stopped by the server's ``--timeout``;
* the others mix dereferences of filter and concept IRIs (HTML or Turtle: the 303 and
  the document it points to, as a client sees them) with the library queries the
  pages run (``filters-for-concept`` for dog.n.01 or a random tagged class,
  ``concepts-of-filter`` for a random filter), over the tag graphs as their
  ``Graphs: tags`` header asks.

Prints p50/p99 latency per kind, errors per kind (with their HTTP statuses), how many
library requests and dereferences repeated an earlier identical one (the server's answer
cache answers those: queries, and the documents a dereference fetches; ``--cache-mib 0``
turns it off), and the server's resident memory (with its
query workers) before, at peak and after.
Targets (issue 13): library query p50 < 100 ms and dereference p50 < 50 ms while the
slow queries run, at >= 10 M quads.

Usage:
    python benchmarks/bench_serve.py --quads 10000000 --clients 8 --seconds 60 --keep /tmp/bench-serve
    python benchmarks/bench_serve.py --quads 200000 --seconds 10     # a small smoke run
    python benchmarks/bench_serve.py ... --cache-mib 0               # every query runs (no answer cache)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SLOW = "SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f . ?g ?h ?i . ?j ?k ?l }"


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the query workers), in MiB."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _export_quads(run_dir: Path, classes: int, images: int, out: Path) -> int:
    """Quads of the export of a synthetic run with that many classes and explanations."""
    from filtag_kg.rdf import export_run
    from filtag_kg.rdf.synthetic import write_synthetic_run

    run = write_synthetic_run(run_dir, classes=classes, images=images, k=3)
    nq = export_run(run, fmt="nq", out=out)
    with open(nq, "rb") as fh:
        return sum(1 for _ in fh)


def build_store(base: Path, quads: int, classes: int) -> Path:
    """An Oxigraph store of about ``quads`` quads in ``base/store`` (kept if present)."""
    import pyoxigraph as ox

    store_dir = base / "store"
    if store_dir.is_dir():
        print(f"reusing the store in {store_dir}", flush=True)
        return store_dir
    # calibrate: how many quads the tags take, and how many each explanation adds
    small, large = (_export_quads(base / f"cal{n}", classes, n, base / f"cal{n}.nq") for n in (10, 60))
    per_image = max(1.0, (large - small) / 50)
    images = max(0, round((quads - (small - 10 * per_image)) / per_image))
    for n in (10, 60):
        shutil.rmtree(base / f"cal{n}", ignore_errors=True)
        (base / f"cal{n}.nq").unlink(missing_ok=True)
    print(f"building {images} explanations ({per_image:.0f} quads each) over {classes} classes", flush=True)
    from filtag_kg.rdf import export_run
    from filtag_kg.rdf.synthetic import write_synthetic_run

    run = write_synthetic_run(base / "run", classes=classes, images=images, k=3)
    nq = export_run(run, fmt="nq", out=base / "kg.nq")
    store = ox.Store(str(store_dir))
    store.bulk_load(path=str(nq), format=ox.RdfFormat.N_QUADS)
    store.flush()
    del store
    nq.unlink()
    return store_dir


def targets(store_dir: Path) -> dict[str, Any]:
    """Filters, concepts and tag graphs of the store, for the clients to pick from."""
    import pyoxigraph as ox

    from filtag_kg.rdf.vocab import FK, RDF
    from filtag_kg.sparql.store import tag_graphs

    store = ox.Store.read_only(str(store_dir))
    N = ox.NamedNode
    filters = []
    for q in store.quads_for_pattern(None, N(str(RDF.type)), N(str(FK.Filter)), None):
        layer = next(store.quads_for_pattern(q.subject, N(str(FK.inLayer)), None, None)).object
        name = next(store.quads_for_pattern(layer, N(str(FK.layerName)), None, None)).object
        index = next(store.quads_for_pattern(q.subject, N(str(FK.filterIndex)), None, None)).object
        filters.append((q.subject.value, name, index))
    wnids = store.quads_for_pattern(None, N(str(FK.wnid)), None, None)
    concepts = [(q.subject.value, q.object) for q in wnids]
    return {
        "quads": len(store),
        "filters": filters,
        "concepts": concepts,
        "tag_graphs": [g.value for g in tag_graphs(store) or [] if isinstance(g, ox.NamedNode)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quads", type=int, default=10_000_000, help="store size to build (default 10 M)")
    ap.add_argument("--classes", type=int, default=1000, help="ImageNet classes tagged (default 1000)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--slow", type=int, default=2, help="of them, clients sending slow queries (default 2)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--timeout", type=float, default=10.0, metavar="S",
                    help="the server's query time limit (default 10 s)")
    ap.add_argument("--cache-mib", type=float, default=64.0, metavar="MIB",
                    help="the server's answer cache (default 64, as serve's; 0: none, every query runs)")
    ap.add_argument("--keep", metavar="DIR", help="build in DIR and keep it (reused if it holds a store)")
    args = ap.parse_args()

    from filtag_kg.serve import _with_values
    from filtag_kg.sparql.library import find_query

    with contextlib.ExitStack() as stack:
        if args.keep:
            base = Path(args.keep)
            base.mkdir(parents=True, exist_ok=True)
        else:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        t0 = time.perf_counter()
        store_dir = build_store(base, args.quads, args.classes)
        t = targets(store_dir)
        print(f"store ready in {time.perf_counter() - t0:.0f} s: {t['quads']} quads", flush=True)
        library = {name: find_query(name) for name in ("filters-for-concept", "concepts-of-filter")}
        dog = next((c for c in t["concepts"] if c[1].value == "n02084071"), t["concepts"][0])

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        server = subprocess.Popen(
            [sys.executable, "-m", "filtag_kg", "serve", "--store", str(store_dir), "--port", str(port),
             "--timeout", str(args.timeout), "--cache-mib", str(args.cache_mib)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        lat: dict[str, list[float]] = {"deref": [], "library": [], "slow": []}
        errors: dict[str, Counter[str]] = {k: Counter() for k in lat}
        by_sub: dict[tuple[str, str], list[float]] = {}  # answered, by page or query
        lock = threading.Lock()
        peak = [0.0]
        # library requests and dereferences (URL and Accept) sent so far: a repeat may come
        # from the server's answer cache
        seen: dict[str, set[str]] = {"library": set(), "deref": set()}
        repeats = {"library": [0, 0], "deref": [0, 0]}  # answered: repeating an earlier one, all
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(url + "/sparql?query=ASK%7B%7D", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.2)
            before = rss_mib(server.pid)
            stop = time.monotonic() + args.seconds

            def request(rng: random.Random, slow: bool) -> tuple[str, str, urllib.request.Request]:
                """(kind, sub-kind, request): the sub-kind says which page or query it is."""
                if slow:
                    # each slow request's own text (a comment), so the server's answer cache
                    # neither answers it nor lets two slow clients share one run
                    q = urllib.parse.urlencode({"query": f"{SLOW} # {rng.random()}"})
                    return "slow", "slow", urllib.request.Request(url + "/sparql?" + q)
                if rng.random() < 0.5:
                    what = "filter" if rng.random() < 0.7 else "concept"
                    iri = rng.choice(t["filters"] if what == "filter" else t["concepts"])[0]
                    accept = rng.choice(["text/html", "text/turtle"])
                    return "deref", f"{what} page {accept.split('/')[1]}", urllib.request.Request(
                        url + urllib.parse.urlsplit(iri).path, headers={"Accept": accept}
                    )
                if rng.random() < 0.5:
                    info = library["filters-for-concept"]
                    is_dog = rng.random() < 0.5
                    concept = dog if is_dog else rng.choice(t["concepts"])
                    sub = "filters-for-concept " + ("dog.n.01" if is_dog else "(random concept)")
                    text = _with_values(info.text, {"concept": concept[1]})
                else:
                    info = library["concepts-of-filter"]
                    sub = "concepts-of-filter"
                    _, layer, index = rng.choice(t["filters"])
                    text = _with_values(info.text, {"layer": layer, "filter": index})
                graphs = t["tag_graphs"] if info.graphs == "tags" else []
                q = urllib.parse.urlencode([("query", text)] + [("default-graph-uri", g) for g in graphs])
                return "library", sub, urllib.request.Request(
                    url + "/sparql?" + q, headers={"Accept": "application/sparql-results+json"}
                )

            def client(seed: int, slow: bool) -> None:
                rng = random.Random(seed)
                while time.monotonic() < stop:
                    kind, sub, req = request(rng, slow)
                    request_id = f"{req.full_url} {req.get_header('Accept')}"
                    t0 = time.perf_counter()
                    try:
                        with urllib.request.urlopen(req, timeout=args.timeout + 30) as r:
                            r.read()
                        why = None
                    except urllib.error.HTTPError as exc:
                        text = exc.read().decode("utf-8", "replace")
                        known = ("time limit", "slow queries", "busy", "crashed")
                        reason = next((r for r in known if r in text), "")
                        why = f"{exc.code} {reason}".strip()
                    except OSError as exc:
                        why = type(exc).__name__
                    dt = time.perf_counter() - t0
                    with lock:
                        if why is None:
                            lat[kind].append(dt)
                            by_sub.setdefault((kind, sub), []).append(dt)
                            if kind in seen:
                                repeats[kind][0] += request_id in seen[kind]
                                repeats[kind][1] += 1
                        else:
                            errors[kind][why] += 1
                        if kind in seen:
                            seen[kind].add(request_id)

            def sample() -> None:
                while time.monotonic() < stop:
                    peak[0] = max(peak[0], rss_mib(server.pid))
                    time.sleep(0.5)

            threads = [threading.Thread(target=client, args=(i, i < args.slow)) for i in range(args.clients)]
            threads.append(threading.Thread(target=sample))
            wall0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - wall0
            after = rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)

    done = sum(len(v) for v in lat.values())
    failed = sum(sum(c.values()) for c in errors.values())
    print(
        f"store: {t['quads']} quads ({len(t['filters'])} filters, {len(t['concepts'])} concepts); "
        f"{args.clients} clients ({args.slow} sending slow queries) for {args.seconds:g} s on loopback, "
        f"server --timeout {args.timeout:g} --cache-mib {args.cache_mib:g}"
    )
    print(f"throughput {done / wall:.1f} answers/s ({done} answered, {failed} errors)")
    for kind, xs in lat.items():
        errs = ", ".join(f"{n}x {why}" for why, n in sorted(errors[kind].items())) or "none"
        if xs:
            xs.sort()
            p99 = xs[min(len(xs) - 1, int(0.99 * len(xs)))]
            print(
                f"  {kind:8} n={len(xs):6}  p50 {1000 * statistics.median(xs):8.1f} ms  "
                f"p99 {1000 * p99:8.1f} ms  errors: {errs}"
            )
        else:
            print(f"  {kind:8} n=     0  errors: {errs}")
        for (k, sub), ys in sorted(by_sub.items()):
            if k == kind and kind != "slow":
                print(f"      {sub:34} n={len(ys):5}  p50 {1000 * statistics.median(ys):8.1f} ms  "
                      f"max {1000 * max(ys):8.1f} ms")
    for kind, what in (("library", "library requests"), ("deref", "dereferences")):
        print(
            f"{what} repeating an earlier identical one: {repeats[kind][0]} of {repeats[kind][1]} "
            "answered (the server answers those from its cache unless --cache-mib 0)"
        )
    print(
        f"server memory (with query workers): {before:.0f} MiB before, {peak[0]:.0f} MiB peak, "
        f"{after:.0f} MiB after"
    )
    print("(slow queries are expected to end in 503 at the time limit: they measure nothing but load)")


if __name__ == "__main__":
    main()
