"""Synthetic run folders in the exact file formats of a real run, for tests and benchmarks.

:func:`write_synthetic_run` writes ``profile.json``, ``tags.tsv`` and, if
asked, ``explanations.json`` + ``explanations.jsonl`` (streamed, so millions
of images need no memory) for a model of any shape, by default VGG16's 13
conv layers over the first ImageNet-1k classes. No model is run: tags and
explanations follow FilTag's rules on random filter values, which is all the
export cares about.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["VGG16_LAYERS", "write_synthetic_run"]

#: VGG16's conv layers (module path, width): 4224 filters.
VGG16_LAYERS: tuple[tuple[str, int], ...] = (
    ("features.0", 64), ("features.2", 64), ("features.5", 128), ("features.7", 128),
    ("features.10", 256), ("features.12", 256), ("features.14", 256), ("features.17", 512),
    ("features.19", 512), ("features.21", 512), ("features.24", 512), ("features.26", 512),
    ("features.28", 512),
)


def _classes(n: int) -> list[tuple[str, str]]:
    from ..imagenet import imagenet1k_classes

    return [(c.wnid, c.label) for c in imagenet1k_classes()[:n]]


def write_synthetic_run(
    run_dir: str | os.PathLike[str],
    *,
    layers: Sequence[tuple[str, int]] = VGG16_LAYERS,
    classes: Sequence[tuple[str, str]] | int = 100,
    images: int = 0,
    k: int = 1,
    spec: str = "vgg16",
    seed: int = 0,
    weighting: str | None = None,
    perturbation: dict[str, Any] | None = None,
    image_name: str | Callable[[int], str] = "img {i:06d}.jpg",
) -> Path:
    """Write a synthetic run folder and return it.

    Args:
        run_dir: folder to create.
        layers: ``(name, width)`` of the conv layers.
        classes: ``(class id, label)`` pairs, or how many ImageNet-1k classes to use.
        images: explanations to write (one line each, top-k ``k``); 0 writes none.
        k: the top-k parameter of tags and explanations.
        spec: the model spec recorded.
        seed: random seed (same seed, same files).
        weighting: ``"gradcam"`` adds a weight to every active filter.
        perturbation: a perturbation record added to every explanation.
        image_name: format of image paths, with ``{i}`` the image index, or a function of it.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    cls = _classes(classes) if isinstance(classes, int) else list(classes)
    weights = hashlib.sha256(f"{spec}/{seed}".encode()).hexdigest()
    model = {
        "spec": spec, "kind": "torchvision", "architecture": "VGG", "weights": "IMAGENET1K_V1",
        "weights_file": None, "weights_sha256": weights, "num_classes": len(cls),
    }
    profile = {
        "format": "filtag-kg profile",
        "format_version": 1,
        "model": model,
        "model_classes": [{"id": c, "label": lab} for c, lab in cls],
        "preprocess": {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406],
                       "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"},
        "dataset": {"source": "folder", "root": "data/train", "images": 10 * len(cls) + 1,
                    "classes": len(cls), "fingerprint": _fingerprint("train", seed),
                    "images_used": 10 * len(cls), "skipped_count": 1, "skipped": [], "warnings": []},
        "options": {"measure": "activation", "amp": "off", "batch_size": 32, "device": "cpu", "workers": 0},
        "fingerprint": {"model": spec, "weights_sha256": weights, "seed": seed},
        "software": {"filtag_kg": "0.1.0", "numpy": "2.0", "python": "3.11"},
        "started_at": "2026-01-02T03:04:05+00:00",
        "finished_at": "2026-01-02T04:05:06+00:00",
        "classes": [{"id": c, "label": lab, "images": 10} for c, lab in cls],
        "layers": [
            {"index": i, "name": name, "width": w, "measured_at": f"{name} (ReLU)", "kind": "activation"}
            for i, (name, w) in enumerate(layers)
        ],
    }
    (run / "profile.json").write_text(json.dumps(profile, indent=2, ensure_ascii=False), encoding="utf-8")

    # tags: each class tags k distinct random filters per layer (ranks 1..k), written as tagging does
    tagged: dict[str, dict[int, list[str]]] = {name: {} for name, _ in layers}
    with open(run / "tags.tsv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(("method", "param", "layer", "filter", "class_id", "label", "score", "rank", "share"))
        for name, width in layers:
            for cid, label in cls:
                for r, f in enumerate(rng.sample(range(width), min(k, width)), 1):
                    tagged[name].setdefault(f, []).append(cid)
                    score = round(rng.random(), 6)
                    w.writerow(("top-k", k, name, f, cid, label, repr(score), r, repr(score / 10)))
    if images <= 0:
        return run

    last = layers[-1][0]
    meta = {
        "format": "filtag-kg explanations", "format_version": 1, "file": "explanations.jsonl",
        "settings": [{"method": "top-k", "param": k}],
        "perturbations": [perturbation] if perturbation else [],
        "weighting": weighting, "model": model, "layers": [n for n, _ in layers],
        "dataset": {"source": "folder", "root": "data/val", "images": images, "classes": len(cls),
                    "fingerprint": _fingerprint("val", seed), "skipped_count": 0},
        "images": images, "software": {"filtag_kg": "0.1.0"},
        "started_at": "2026-01-03T00:00:00+00:00", "finished_at": "2026-01-03T01:00:00+00:00",
    }
    (run / "explanations.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    with open(run / "explanations.jsonl", "w", encoding="utf-8") as fh:
        for i in range(images):
            fh.write(json.dumps(_explanation(rng, i, cls, layers, tagged, last, k, weighting, perturbation,
                                             image_name), ensure_ascii=False))
            fh.write("\n")
    return run


def _fingerprint(name: str, seed: int) -> str:
    return hashlib.sha256(f"{name}/{seed}".encode()).hexdigest()


def _explanation(
    rng: random.Random,
    i: int,
    cls: list[tuple[str, str]],
    layers: Sequence[tuple[str, int]],
    tagged: dict[str, dict[int, list[str]]],
    last: str,
    k: int,
    weighting: str | None,
    perturbation: dict[str, Any] | None,
    image_name: str | Callable[[int], str],
) -> dict[str, Any]:
    true = cls[i % len(cls)][0]
    top = rng.sample(range(len(cls)), min(5, len(cls)))
    probs = sorted((rng.random() for _ in top), reverse=True)
    total = sum(probs) * 1.25
    active: dict[str, list[dict[str, Any]]] = {}
    votes: dict[str, float] = {}
    counts: dict[str, int] = {}
    last_votes: dict[str, float] = {}
    for name, width in layers:
        rows = []
        for r, f in enumerate(rng.sample(range(width), min(k, width)), 1):
            row: dict[str, Any] = {"filter": f, "value": rng.random(), "rank": r}
            w = rng.random() if weighting else 1.0
            if weighting:
                row["weight"] = w
            rows.append(row)
            for cid in tagged[name].get(f, ()):
                votes[cid] = votes.get(cid, 0.0) + w
                counts[cid] = counts.get(cid, 0) + 1
                if name == last:
                    last_votes[cid] = last_votes.get(cid, 0.0) + w
        active[name] = rows
    prediction = max(votes, key=lambda c: (votes[c], c)) if votes else None
    last_pred = max(last_votes, key=lambda c: (last_votes[c], c)) if last_votes else None
    return {
        "index": i,
        "image": image_name(i) if callable(image_name) else image_name.format(i=i),
        "sha256": hashlib.sha256(f"image {i}".encode()).hexdigest(),
        "true_class": true,
        "model_top": [
            {"class_id": cls[j][0], "label": cls[j][1], "prob": p / total} for j, p in zip(top, probs)
        ],
        "method": "top-k",
        "param": str(k),
        "active_filters": active,
        "votes": votes,
        "vote_counts": counts,
        "votes_last_layer": last_votes,
        "prediction": prediction,
        "prediction_last_layer": last_pred,
        "perturbation": perturbation,
        "weighting": weighting,
    }
