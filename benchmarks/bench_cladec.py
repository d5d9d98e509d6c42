"""ClaDec on the demo's shapes: does the paper's claim hold for the demo's layers?

Trains, for each layer, the ClaDec decoder (from the frozen demo network's
activations) and the reference autoencoder of the same size on the demo's
training images, and evaluates both on its held-out images: the network's
accuracy on the originals, on ClaDec's and on the reference's reconstructions,
and both reconstructions' pixel MSE. The paper's claim: ClaDec's reconstructions
keep more class-relevant information (higher accuracy) although the reference
keeps more pixels (lower error). Uses the demo's cached network and data (trains
them first when the cache is empty); the run folder is temporary. Prints the
table, the claim per layer and the wall and CPU seconds per layer.

Usage:
    flock /tmp/bench.lock python benchmarks/bench_cladec.py [--layers features.11 features.15]
        [--epochs 8] [--alpha 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", nargs="+", default=None, help="default: the demo's ClaDec layers")
    ap.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    ap.add_argument("--alpha", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = ap.parse_args()
    import torch

    from filtag_kg.cladec import CladecOptions, claim_line, format_evaluation, run_cladec
    from filtag_kg.demo import DEMO_CLADEC_EPOCHS, DEMO_CLADEC_LAYERS
    from filtag_kg.pipeline import load_images, run
    from filtag_kg.profile import ProfileOptions
    from filtag_kg.shapes import load_or_train_shapes_net, load_shapes_model
    from filtag_kg.tagging import TagSetting

    torch.set_num_threads(args.threads)
    layers = args.layers or list(DEMO_CLADEC_LAYERS)
    epochs = args.epochs or DEMO_CLADEC_EPOCHS
    _, metrics, data_root = load_or_train_shapes_net(progress=False)
    loaded = load_shapes_model(data_root.parent / "weights.pt")
    classes = loaded.classes
    docs, times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        run(loaded, load_images(data=data_root / "train", known=classes), out,
            settings=[TagSetting("top-k", 1)],
            options=ProfileOptions(device="cpu", progress=False, checkpoint_every=0))
        for layer in layers:
            wall, cpu = time.perf_counter(), time.process_time()
            res = run_cladec(out, [layer], data=data_root / "train", eval_data=data_root / "heldout",
                             options=CladecOptions(epochs=epochs, alpha=args.alpha, seed=args.seed,
                                                   device="cpu", progress=False))[0]
            times.append((layer, time.perf_counter() - wall, time.process_time() - cpu,
                          res.training["steps"], res.training["activation_shape"]))
            docs.append(res.evaluation)
    print(f"demo network (held-out accuracy {100 * metrics['heldout_accuracy']:.1f}% when trained), "
          f"{epochs} epochs, alpha {args.alpha:g}, seed {args.seed}, {args.threads} threads, "
          f"{docs[0]['images']} held-out images")
    print(format_evaluation(docs))
    for d in docs:
        print(claim_line(d))
    for layer, wall, cpu, steps, shape in times:
        print(f"  {layer} ({'x'.join(map(str, shape))} activations): {steps} steps, {wall:.1f} s wall, "
              f"{cpu:.1f} s CPU (both networks, and the evaluation)")


if __name__ == "__main__":
    main()
