"""Synthetic run folders in the exact file formats of a real run, for tests and benchmarks.

:func:`write_synthetic_run` writes ``profile.json``, ``tags.tsv`` and, if
asked, ``explanations.json`` + the explanations (``explanations.jsonl``, or with
``form="parquet"`` the columnar ``explanations.parquet/`` a real pass writes by default;
both streamed, so millions of images need no memory) for a model of any shape, by default VGG16's 13
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
from collections.abc import Callable, Iterator, Sequence
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
    form: str = "jsonl",
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
        form: ``"jsonl"`` (``explanations.jsonl``) or ``"parquet"`` (``explanations.parquet/``,
            the same records as an explanation pass stores them: values as float32).
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
    if form not in ("jsonl", "parquet"):
        raise ValueError(f"form must be 'jsonl' or 'parquet', not {form!r}")
    meta = {
        "format": "filtag-kg explanations", "format_version": 1,
        "file": "explanations.jsonl" if form == "jsonl" else "explanations.parquet",
        "settings": [{"method": "top-k", "param": k}],
        "perturbations": [perturbation] if perturbation else [],
        "weighting": weighting, "model": model, "layers": [n for n, _ in layers],
        "dataset": {"source": "folder", "root": "data/val", "images": images, "classes": len(cls),
                    "fingerprint": _fingerprint("val", seed), "skipped_count": 0},
        "images": images, "software": {"filtag_kg": "0.1.0"},
        "started_at": "2026-01-03T00:00:00+00:00", "finished_at": "2026-01-03T01:00:00+00:00",
    }
    (run / "explanations.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    records = (
        _explanation(rng, i, cls, layers, tagged, last, k, weighting, perturbation, image_name)
        for i in range(images)
    )
    if form == "parquet":
        _write_parquet(run, records, [n for n, _ in layers], cls, images)
        return run
    with open(run / "explanations.jsonl", "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False))
            fh.write("\n")
    return run


def _write_parquet(
    run: Path, records: Iterator[dict[str, Any]], layers: list[str], cls: list[tuple[str, str]], images: int,
    *, rows_per_part: int = 10_000,
) -> None:
    """Store explanation records as ``explanations.parquet/`` parts, column by column."""
    import pyarrow as pa

    from ..explanations_io import EXPLANATIONS_DIR, ParquetParts, names_metadata, row_schema

    ids = [c for c, _ in cls]
    col = {c: j for j, c in enumerate(ids)}
    schema = row_schema("float32")
    parts = ParquetParts(run / EXPLANATIONS_DIR, 0, names_metadata(layers, ids, ids, [lab for _, lab in cls]))
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        rows: dict[str, list[Any]] = {f.name: [] for f in schema}
        for rec in batch:
            act = rec["active_filters"]
            flat = [r for name in layers for r in act.get(name, ())]
            weighted = rec["weighting"] is not None
            pert = rec["perturbation"] or {}
            votes, counts, last = rec["votes"], rec["vote_counts"], rec["votes_last_layer"]
            for key, value in (
                ("index", rec["index"]), ("image", rec["image"]), ("sha256", rec["sha256"]),
                ("true_class", rec["true_class"]),
                ("top_class", [col[t["class_id"]] for t in rec["model_top"]]),
                ("top_prob", [t["prob"] for t in rec["model_top"]]),
                ("method", rec["method"]), ("param", rec["param"]),
                ("layer_active", [len(act.get(name, ())) for name in layers]),
                ("filter", [r["filter"] for r in flat]), ("value", [r["value"] for r in flat]),
                ("weight", [r["weight"] for r in flat] if weighted else None),
                ("vote_class", [col[c] for c in counts]), ("vote_count", list(counts.values())),
                ("vote", [votes[c] for c in counts] if weighted else None),
                ("last_class", [col[c] for c in last]),
                ("last_count", None if weighted else [round(v) for v in last.values()]),
                ("last_vote", list(last.values()) if weighted else None),
                ("prediction", None if rec["prediction"] is None else col[rec["prediction"]]),
                ("prediction_last_layer",
                 None if rec["prediction_last_layer"] is None else col[rec["prediction_last_layer"]]),
                ("perturb_kind", pert.get("kind")), ("perturb_param", pert.get("param")),
                ("perturb_seed", pert.get("seed")), ("weighting", rec["weighting"]),
                ("value_bits", None), ("value_top", None), ("value_gap", None),  # float32 values
            ):
                rows[key].append(value)
        arrays = [pa.array(rows[f.name], type=f.type) for f in schema]
        parts.write(pa.RecordBatch.from_arrays(arrays, schema=schema))
        parts.commit()
        batch.clear()

    for rec in records:
        batch.append(rec)
        if len(batch) >= rows_per_part:
            flush()
    if batch:
        flush()


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
