"""Time a fresh-cache ``filtag-kg demo``: generation, training and the rest, with steps.

Runs the demo once into a temporary cache (never the user's) and prints the
wall and CPU seconds of the whole run and of training alone (from
``training.json``), the training steps, and the fidelity table. CPU seconds
count every thread of this process, so a busy machine inflates them less than
wall time (OpenMP threads that spin while waiting still count). The demo's
budget is 120 s on any 2-core x86 machine.

Usage:
    python benchmarks/bench_demo.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = ap.parse_args()
    import torch

    from filtag_kg.demo import run_demo

    torch.set_num_threads(args.threads)
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        run_demo(out=Path(tmp) / "out", cache_dir=Path(tmp) / "cache", progress=False, echo=lines.append)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        metrics = json.loads(next(Path(tmp, "cache").glob("shapes-*/training.json")).read_text())["metrics"]
    print(f"demo, fresh cache, {args.threads} threads: {wall:.1f} s wall, {cpu:.1f} s CPU")
    print(f"training: {metrics['steps']} steps, {metrics['seconds']:.1f} s wall, "
          f"{metrics['cpu_seconds']:.1f} s CPU, held-out accuracy {metrics['heldout_accuracy']:.3f}")
    print("\n".join(line for line in lines if line.startswith(("setting", "top-k"))))


if __name__ == "__main__":
    main()
