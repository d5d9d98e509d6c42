"""A small hand-made ``saliency/saliency.json`` for a run that has explanations, so RDF and
query tests need no model: three images with 2, 1 and 3 minimal sufficient explanations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from filtag_kg.explain import read_explanations


def write_saliency_fixture(run: Path) -> dict[str, Any]:
    """Write ``run/saliency/saliency.json`` for the first three explained images; return it."""
    recs = [r for r in read_explanations(run) if not r.get("perturbation")]
    images, seen = [], set()
    for r in recs:
        if r["sha256"] not in seen:
            seen.add(r["sha256"])
            images.append(r)
    minimal_sets = [[[0, 1], [5]], [[2, 3, 4]], [[0], [4], [6, 7]]]
    out = []
    for i, (r, minimal) in enumerate(zip(images, minimal_sets)):
        top = r["model_top"][0]
        nodes = [{"patches": m, "probability": 0.9 - 0.01 * k} for k, m in enumerate(minimal)]
        edges = []
        first = minimal[0]
        if len(first) > 1:  # the first root's one-patch removals
            for j in first:
                nodes.append({"patches": [p for p in first if p != j], "probability": 0.3})
                edges.append({"parent": 0, "child": len(nodes) - 1, "removed": j})
        layer = json.loads((run / "profile.json").read_text(encoding="utf-8"))["layers"][0]["name"]
        out.append(
            {
                "index": i,
                "image": r["image"],
                "sha256": r["sha256"],
                "target": 0,
                "class_id": top["class_id"],
                "label": top.get("label") or top["class_id"],
                "model_top": [],
                "igos": {"size": 2, "heatmap": [[0.0, 0.5], [1.0, 0.25]], "png": "x.png"},
                "sag": {
                    "grid": 3,
                    "target": 0,
                    "probability": 0.95,
                    "baseline_probability": 0.1,
                    "nodes": nodes,
                    "roots": list(range(len(minimal))),
                    "edges": edges,
                    "minimal": [{"patches": m, "probability": 0.9} for m in minimal],
                    "levels": 3,
                    "evaluated": 40,
                },
                "regions": [
                    {
                        "node": k,
                        "layers": [
                            {
                                "layer": layer,
                                "active": [{"filter": 0, "value": 0.5, "tags": [top["class_id"]]}],
                            }
                        ],
                        "votes": [
                            {"class_id": top["class_id"], "label": top.get("label") or "x", "count": 1}
                        ],
                    }
                    for k in range(len(minimal))
                ],
            }
        )
    doc = {"method": "docs/saliency-method.md", "options": {}, "images": out}
    (run / "saliency").mkdir(exist_ok=True)
    (run / "saliency" / "saliency.json").write_text(json.dumps(doc), encoding="utf-8")
    return doc
