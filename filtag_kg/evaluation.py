"""Evaluate explanations as the reference does, plus perturbation and class views.

Per tagging setting (and perturbation and weighting), for all layers and for
the last layer alone: fidelity (the explanation's prediction equals the
model's top-1), how often the model's top-1 is among the explanation's
top-1/3/5 voted classes, and the explanation's and the model's accuracy
against the true class where it is known. Every share comes with its counts.

Reads the explanations (``explanations.parquet/`` or ``explanations.jsonl``) as a stream;
needs no model and no torch.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._io import atomic_open, write_json
from .errors import ProfileError, check_whole

EVALUATION = "evaluation.json"
PERTURBATION_EFFECTS = "perturbation_effects.jsonl"
SCOPES = (("all_layers", "votes", "prediction"), ("last_layer", "votes_last_layer", "prediction_last_layer"))
TOP_N = (1, 3, 5)


def ranked_classes(votes: dict[str, float], class_order: dict[str, int]) -> list[str]:
    """Voted classes, most votes first; ties by the profile's class order."""
    return sorted(votes, key=lambda c: (-votes[c], class_order.get(c, len(class_order)), c))


def explains_model(record: dict[str, Any], prediction_field: str = "prediction") -> bool:
    """Whether an explanation record predicts the model's top-1 class (it is faithful).

    This is the one definition of "misexplained" (its negation) that the
    evaluation's fidelity, the demo's summary, the report's choice of pages and
    the ``misexplained-images`` query share: an explanation without a
    prediction (no active filter carried a tag, ``prediction`` is null) does
    not explain the model, so it counts as misexplained.

    Args:
        record: one line of ``explanations.jsonl``.
        prediction_field: ``prediction`` (all layers) or ``prediction_last_layer``.
    """
    top = record["model_top"][0]["class_id"] if record.get("model_top") else None
    pred = record.get(prediction_field)
    return pred is not None and pred == top


def _perturbation_key(p: dict[str, Any] | None) -> str:
    return "none" if not p else f"{p['kind']}:{p['param']:g}"


def _group_key(rec: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        rec["method"],
        rec["param"],
        _perturbation_key(rec.get("perturbation")),
        rec.get("weighting") or "none",
    )


def _record_flaw(rec: Any) -> str | None:
    """What keeps ``rec`` from being evaluated, or ``None``."""
    if not isinstance(rec, dict):
        return f"a {type(rec).__name__}, not an object"
    missing = [k for k in ("image", "method", "param", "votes", "votes_last_layer", "prediction",
                           "prediction_last_layer") if k not in rec]
    if missing:
        return f"missing field {missing[0]!r}"
    if not all(isinstance(rec[v], dict) for _, v, _ in SCOPES):
        return "votes are not a class -> count object"
    top = rec.get("model_top")
    if top and not (isinstance(top, list) and isinstance(top[0], dict) and "class_id" in top[0]):
        return "model_top is not a list of classes"
    return None


def _check_record(rec: Any, n: int, source: str | None) -> None:
    """Refuse record ``n`` (from 1, counting records, not blank lines) of ``source`` (the
    explanations file, for the message) when it lacks what the evaluation reads (a
    hand-edited or foreign file), naming it, before a KeyError deep in the sums would."""
    what = _record_flaw(rec)
    if what is not None:
        image = rec.get("image") if isinstance(rec, dict) else None
        raise ProfileError(f"{f'{source}: ' if source else ''}record {n}{f' ({image})' if image else ''} is "
                           f"not an explanation record ({what}); regenerate it with `filtag-kg explain`")


def _share(n: int, d: int) -> float | None:
    return round(n / d, 6) if d else None


def evaluate_records(
    records: Iterable[dict[str, Any]],
    class_ids: Sequence[str],
    *,
    top_concepts: int = 5,
    effects_out: Any = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Aggregate explanation records into the evaluation document.

    Args:
        records: explanation dicts in file order (perturbed copies after their clean image).
        class_ids: the profile's classes, in order (for tie-breaking).
        top_concepts: how many concepts to list per class and per perturbation.
        effects_out: a text file receiving one JSON line per perturbed explanation
            (concepts that gained or lost votes, prediction flips), or ``None``.
        source: where the records come from, named when one is not an explanation record.

    Returns:
        ``{"groups": [...], "by_class": [...], "perturbations": [...]}``.
    """
    order = {c: i for i, c in enumerate(class_ids)}
    groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    by_class: dict[tuple[str, str, str], dict[str, Any]] = {}
    pert: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    clean: dict[tuple[str, str, str], dict[str, Any]] = {}
    current = None
    for number, rec in enumerate(records, start=1):
        _check_record(rec, number, source)
        key = _group_key(rec)
        model_top1 = rec["model_top"][0]["class_id"] if rec.get("model_top") else None
        true = rec.get("true_class")
        g = groups.setdefault(
            key,
            {
                "images": 0,
                "with_true_class": 0,
                "model_correct": 0,
                **{scope: Counter() for scope, _, _ in SCOPES},
            },
        )
        g["images"] += 1
        if true is not None:
            g["with_true_class"] += 1
            g["model_correct"] += int(model_top1 == true)
        for scope, votes_field, pred_field in SCOPES:
            s = g[scope]
            ranking = ranked_classes(rec[votes_field], order)
            pred = rec[pred_field]
            s["fidelity"] += int(explains_model(rec, pred_field))
            for n in TOP_N:
                s[f"model_top1_in_top{n}"] += int(model_top1 in ranking[:n])
            if true is not None:
                s["explanation_correct"] += int(pred == true)

        if rec.get("index") != current:
            current, clean = rec.get("index"), {}
        pair = (rec["method"], rec["param"], rec.get("weighting") or "none")
        if rec.get("perturbation") is None:
            clean[pair] = rec
            cls = true if true is not None else model_top1
            if cls is not None:
                bc = by_class.setdefault(
                    (rec["method"], rec["param"], cls), {"images": 0, "votes": Counter()}
                )
                bc["images"] += 1
                bc["votes"].update(rec["votes"])
        elif pair in clean:
            base = clean[pair]
            diff = Counter(rec["votes"])
            diff.subtract(base["votes"])
            gained = {c: v for c, v in diff.items() if v > 0}
            lost = {c: v for c, v in diff.items() if v < 0}
            model_flip = base["model_top"][0]["class_id"] != model_top1
            expl_flip = base["prediction"] != rec["prediction"]
            pg = pert.setdefault(
                key,
                {
                    "images": 0,
                    "model_flips": 0,
                    "explanation_flips": 0,
                    "gained": Counter(),
                    "lost": Counter(),
                },
            )
            pg["images"] += 1
            pg["model_flips"] += int(model_flip)
            pg["explanation_flips"] += int(expl_flip)
            pg["gained"].update(gained)
            pg["lost"].update({c: -v for c, v in lost.items()})
            if effects_out is not None:
                effects_out.write(
                    json.dumps(
                        {
                            "index": rec.get("index"),
                            "image": rec["image"],
                            "method": rec["method"],
                            "param": rec["param"],
                            "perturbation": rec["perturbation"],
                            "model_top1": base["model_top"][0]["class_id"],
                            "model_top1_perturbed": model_top1,
                            "model_flip": model_flip,
                            "prediction": base["prediction"],
                            "prediction_perturbed": rec["prediction"],
                            "explanation_flip": expl_flip,
                            "gained": gained,
                            "lost": lost,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )

    out_groups = []
    for (method, param, perturbation, weighting), g in groups.items():
        row: dict[str, Any] = {
            "method": method,
            "param": param,
            "perturbation": perturbation,
            "weighting": weighting,
            "images": g["images"],
            "with_true_class": g["with_true_class"],
            "model_correct": g["model_correct"],
            "model_accuracy": _share(g["model_correct"], g["with_true_class"]),
        }
        for scope, _, _ in SCOPES:
            s = g[scope]
            counts = {
                "fidelity": s["fidelity"],
                "misexplained": g["images"] - s["fidelity"],
                "explanation_correct": s["explanation_correct"],
                **{f"model_top1_in_top{n}": s[f"model_top1_in_top{n}"] for n in TOP_N},
            }
            row[scope] = {
                "counts": counts,
                "fidelity": _share(s["fidelity"], g["images"]),
                **{f"model_top1_in_top{n}": _share(s[f"model_top1_in_top{n}"], g["images"]) for n in TOP_N},
                "explanation_accuracy": _share(s["explanation_correct"], g["with_true_class"]),
            }
        out_groups.append(row)

    def top(counter: Counter[str]) -> list[dict[str, Any]]:
        items = sorted(counter.items(), key=lambda kv: (-kv[1], order.get(kv[0], len(order)), kv[0]))
        return [{"class_id": c, "votes": v} for c, v in items[:top_concepts]]

    out_classes = [
        {"method": m, "param": p, "class_id": c, "images": v["images"], "top_concepts": top(v["votes"])}
        for (m, p, c), v in sorted(
            by_class.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 1e9))
        )
    ]
    out_pert = [
        {
            "method": m,
            "param": p,
            "perturbation": k,
            "weighting": w,
            "images": v["images"],
            "model_flips": v["model_flips"],
            "model_flip_rate": _share(v["model_flips"], v["images"]),
            "explanation_flips": v["explanation_flips"],
            "explanation_flip_rate": _share(v["explanation_flips"], v["images"]),
            "concepts_gaining": top(v["gained"]),
            "concepts_losing": top(v["lost"]),
        }
        for (m, p, k, w), v in pert.items()
    ]
    return {"groups": out_groups, "by_class": out_classes, "perturbations": out_pert}


def evaluate_run(run_dir: str | os.PathLike[str], *, top_concepts: int = 5) -> dict[str, Any]:
    """Evaluate the run's explanations; write ``evaluation.json`` (and the
    per-image perturbation effects, when there are perturbations).

    Raises:
        ProfileError: the run has no profile or no explanations.
    """
    from .explain import read_explanations
    from .explanations_io import EXPLANATIONS_DIR, EXPLANATIONS_JSONL, FORMAT_PARQUET, explanations_format
    from .runfolder import partial_explanations, read_profile_meta

    check_whole("--top-concepts", top_concepts, 0)
    run = Path(run_dir)
    if not (run / "profile.json").is_file():
        raise ProfileError(f"{run} holds no profile.json; evaluate a run folder")
    classes = read_profile_meta(run)["classes"]
    class_ids = [c["id"] for c in classes]
    form = explanations_format(run)
    source = str(run / (EXPLANATIONS_DIR if form == FORMAT_PARQUET else EXPLANATIONS_JSONL))
    with atomic_open(run / PERTURBATION_EFFECTS) as fh:
        doc = evaluate_records(read_explanations(run), class_ids, top_concepts=top_concepts, effects_out=fh,
                               source=source)
    if not doc["perturbations"]:
        (run / PERTURBATION_EFFECTS).unlink()
    cut = partial_explanations(run)  # an interrupted pass: say that only part was evaluated
    labels = {c["id"]: c["label"] for c in classes if c.get("label") and c["label"] != c["id"]}
    doc = {"format": "filtag-kg evaluation", "format_version": 1,
           "explanation_pass": {"complete": cut is None, **(cut or {})}, **doc, "labels": labels}
    from .cladec_files import run_section

    if (cladec := run_section(run)) is not None:  # `filtag-kg cladec`'s figures stay
        doc["cladec"] = cladec
    write_json(run / EVALUATION, doc)
    return doc


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def format_table(doc: dict[str, Any], *, by_class: bool = False) -> str:
    """The evaluation as a readable table (shares with their counts).

    Classes are shown as ``wnid (label)`` where ``doc["labels"]`` knows a label.
    """
    labels = doc.get("labels") or {}

    def name(class_id: str) -> str:
        return f"{class_id} ({labels[class_id]})" if class_id in labels else class_id

    lines = [
        f"{'setting':<18} {'perturbation':<16} {'layers':<6} {'images':>6}  {'fidelity':>15}  "
        f"{'top1':>6} {'top3':>6} {'top5':>6}  {'expl acc':>8} {'model acc':>9}"
    ]
    for g in doc["groups"]:
        setting = f"{g['method']} {g['param']}".strip() + (" gradcam" if g["weighting"] == "gradcam" else "")
        for scope, label in (("all_layers", "all"), ("last_layer", "last")):
            s = g[scope]
            lines.append(
                f"{setting:<18} {g['perturbation']:<16} {label:<6} {g['images']:>6}  "
                f"{_pct(s['fidelity'])} ({s['counts']['fidelity']:>5})  "
                f"{_pct(s['model_top1_in_top1'])} {_pct(s['model_top1_in_top3'])} "
                f"{_pct(s['model_top1_in_top5'])}  {_pct(s['explanation_accuracy']):>8} "
                f"{_pct(g['model_accuracy']):>9}"
            )
    for p in doc["perturbations"]:
        lines.append(
            f"{p['perturbation']} ({p['method']} {p['param']}): model flipped on {p['model_flips']}/"
            f"{p['images']}, explanation on {p['explanation_flips']}/{p['images']}; gaining: "
            + ", ".join(f"{name(c['class_id'])} +{c['votes']:g}" for c in p["concepts_gaining"])
            + "; losing: "
            + ", ".join(f"{name(c['class_id'])} -{c['votes']:g}" for c in p["concepts_losing"])
        )
    if by_class:
        lines.append("class-level explanations (most voted concepts over each class's images):")
        for c in doc["by_class"]:
            concepts = ", ".join(f"{name(t['class_id'])}: {t['votes']:g}" for t in c["top_concepts"])
            lines.append(
                f"  {c['method']} {c['param']} {name(c['class_id'])}, {c['images']} images: {concepts}"
            )
    return "\n".join(lines)
