"""Load-test ``filtag-kg serve`` on loopback: dereferencing and ``filters-for-concept``.

Builds a synthetic VGG16-sized run (tags over ``--classes`` ImageNet classes and
``--images`` explanations), exports and loads it into an Oxigraph store, starts
the real server process on a free loopback port, and runs ``--clients``
concurrent clients for ``--seconds`` seconds (bounded: both the number of
clients and the duration are fixed, and only 127.0.0.1 is contacted). Half the
requests dereference a random filter or concept IRI (HTML or Turtle), half run
``queries/filters-for-concept.rq`` through ``/sparql`` for dog.n.01 (all of
ImageNet's dog breeds below it) or a random tagged class, with the tag graph as
the default graph (``default-graph-uri``, as the query's ``Graphs: tags`` header
asks and as the query library runs it). Prints throughput,
p50/p99 latency per kind, errors, and the server's resident memory before and
after.

Usage:
    python benchmarks/bench_serve.py --clients 8 --seconds 30
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=300)
    args = ap.parse_args()

    import pyoxigraph as ox

    from filtag_kg.rdf import export_run
    from filtag_kg.rdf.synthetic import write_synthetic_run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = write_synthetic_run(tmp / "run", classes=args.classes, images=args.images, k=3)
        nq = export_run(run, fmt="nq", out=tmp / "kg.nq")
        store = ox.Store(str(tmp / "store"))
        store.bulk_load(path=str(nq), format=ox.RdfFormat.N_QUADS)
        store.flush()
        filters = [
            q.subject.value
            for q in store.quads_for_pattern(
                None,
                ox.NamedNode("http://www.w3.org/1999/02/22-rdf-syntax-ns#type"),
                ox.NamedNode("https://w3id.org/filtag-kg/ontology#Filter"),
                None,
            )
        ]
        concepts = [
            (q.subject.value, q.object.value)
            for q in store.quads_for_pattern(
                None, ox.NamedNode("https://w3id.org/filtag-kg/ontology#wnid"), None, None
            )
        ]
        triples = len(store)
        from filtag_kg.sparql.store import tag_graphs

        tag_graph_iris = [g.value for g in tag_graphs(store) or [] if isinstance(g, ox.NamedNode)]
        class_wnids = sorted(
            {line.split("\t")[4] for line in (run / "tags.tsv").read_text().splitlines()[1:]}
        )
        del store
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        server = subprocess.Popen(
            [sys.executable, "-m", "filtag_kg", "serve", "--store", str(tmp / "store"), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(url + "/", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.2)
            before = rss_mib(server.pid)
            text = (REPO / "queries" / "filters-for-concept.rq").read_text()
            head, sep, tail = text.partition("WHERE {")
            lat: dict[str, list[float]] = {"deref": [], "query": []}
            errors = [0]
            lock = threading.Lock()
            stop = time.monotonic() + args.seconds

            def client(seed: int) -> None:
                rng = random.Random(seed)
                while time.monotonic() < stop:
                    if rng.random() < 0.5:
                        kind = "deref"
                        iri = rng.choice(filters if rng.random() < 0.7 else [c for c, _ in concepts])
                        path = urllib.parse.urlsplit(iri).path
                        req = urllib.request.Request(
                            url + path, headers={"Accept": rng.choice(["text/html", "text/turtle"])}
                        )
                    else:
                        kind = "query"
                        wnid = "n02084071" if rng.random() < 0.5 else rng.choice(class_wnids)
                        q = f'{head}{sep} VALUES ?concept {{ "{wnid}" }} {tail}'
                        req = urllib.request.Request(
                            url + "/sparql?" + urllib.parse.urlencode(
                                [("query", q)] + [("default-graph-uri", g) for g in tag_graph_iris]
                            ),
                            headers={"Accept": "application/sparql-results+json"},
                        )
                    t0 = time.perf_counter()
                    try:
                        with urllib.request.urlopen(req, timeout=30) as r:
                            r.read()
                        ok = True
                    except (urllib.error.URLError, OSError):
                        ok = False
                    dt = time.perf_counter() - t0
                    with lock:
                        if ok:
                            lat[kind].append(dt)
                        else:
                            errors[0] += 1

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            after = rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
        done = sum(len(v) for v in lat.values())
        print(
            f"store: {triples} quads ({args.images} explanations, {len(filters)} filters, "
            f"{len(concepts)} concepts); {args.clients} clients for {args.seconds:g} s on loopback"
        )
        print(f"throughput {done / wall:.1f} requests/s ({done} requests, {errors[0]} errors)")
        for kind, xs in lat.items():
            if xs:
                xs.sort()
                p99 = xs[min(len(xs) - 1, int(0.99 * len(xs)))]
                print(
                    f"  {kind:6} n={len(xs):6}  p50 {1000 * statistics.median(xs):7.1f} ms  "
                    f"p99 {1000 * p99:7.1f} ms"
                )
        print(f"server memory (with query workers): {before:.0f} MiB before, {after:.0f} MiB after")


if __name__ == "__main__":
    main()
