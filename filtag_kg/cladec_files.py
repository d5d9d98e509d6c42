"""Reading a run's ClaDec results without torch: for ``evaluate``, the RDF export and the report.

:mod:`filtag_kg.cladec` writes, per decoded layer, ``RUN/cladec/<folder>/training.json``
and ``evaluation.json`` (with its reconstruction PNGs); this module finds them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._io import write_json
from .runfolder import json_object_or_none

CLADEC_DIR = "cladec"


def read_cladec(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The run's evaluated ClaDec layers, in folder order: each the layer's ``evaluation.json``
    with its training record under ``"training"``. Unfinished folders, and folders whose files
    do not read as JSON objects (cut short, overwritten), are left out: ``filtag-kg cladec``
    trains such a layer again."""
    out = []
    root = Path(run_dir) / CLADEC_DIR
    for folder in sorted(p for p in root.glob("*") if p.is_dir()):
        doc = json_object_or_none(folder / "evaluation.json")
        training = json_object_or_none(folder / "training.json")
        if doc is not None and training is not None:
            out.append({**doc, "training": training})
    return out


def claim_holds(doc: dict[str, Any]) -> bool | None:
    """Whether a layer's evaluation bears out the ClaDec paper's claim: the model is more accurate
    on ClaDec's reconstructions than on the reference's, although the reference's pixel error is
    lower (``None``: no labelled held-out image)."""
    acc, mse = doc.get("accuracy") or {}, doc.get("mse") or {}
    if acc.get("cladec") is None or acc.get("reference") is None:
        return None
    return acc["cladec"] > acc["reference"] and mse["reference"] < mse["cladec"]


def run_section(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``cladec`` section of the run's ``evaluation.json`` (``None``: no evaluated layer)."""
    docs = read_cladec(run_dir)
    if not docs:
        return None
    keys = ("layer", "alpha", "folder", "images", "labelled_images", "heldout", "accuracy",
            "agreement_with_original", "mse")
    return {"layers": [{k: d.get(k) for k in keys} for d in docs]}


def update_run_evaluation(run_dir: str | os.PathLike[str]) -> None:
    """Write the ``cladec`` section into ``RUN/evaluation.json``, leaving its other keys as they are
    (a run without an evaluation gets a file holding that section only)."""
    path = Path(run_dir) / "evaluation.json"
    doc = json_object_or_none(path) or {"format": "filtag-kg evaluation", "format_version": 1}
    section = run_section(run_dir)
    if section is None:
        doc.pop("cladec", None)
    else:
        doc["cladec"] = section
    write_json(path, doc)


__all__ = ["CLADEC_DIR", "claim_holds", "read_cladec", "run_section", "update_run_evaluation"]
