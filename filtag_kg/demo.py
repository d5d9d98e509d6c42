"""``filtag-kg demo``: the whole pipeline offline, on CPU, on synthetic shapes.

The dataset's class folders are WordNet 3.0 noun synsets (circle, ellipse,
...), so the demo exercises the same linking as ImageNet. The dataset and the
trained network are cached (see :func:`filtag_kg.shapes.default_cache_dir`):
the first run generates and trains, later runs reuse both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .pipeline import RunResult, run, summarize
from .profile import ProfileOptions
from .shapes import SHAPES_MODEL
from .tagging import TagSetting

DEMO_MODEL = SHAPES_MODEL
#: the layers ``filtag-kg demo --cladec`` decodes (4 x 4 x 64 and 2 x 2 x 10 activations of 32 px images)
DEMO_CLADEC_LAYERS = ("features.11", "features.15")
#: ClaDec training epochs of the demo (see benchmarks/bench_cladec.py)
DEMO_CLADEC_EPOCHS = 3


def _holds_a_demo_run(out: str | os.PathLike[str]) -> bool:
    """Whether ``out`` holds an earlier demo run (replaced without asking, e.g. after retraining);
    any other run there is refused, as ``filtag-kg run`` refuses it."""
    from ._io import read_json

    try:
        return read_json(Path(out) / "profile.json")["model"]["spec"].endswith(DEMO_MODEL.split(":")[-1])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def run_demo(
    *,
    out: str | os.PathLike[str] = "filtag-demo",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    cladec: bool = False,
    cladec_epochs: int = DEMO_CLADEC_EPOCHS,
) -> RunResult:
    """Generate (or reuse) the shapes data and network, profile, tag and summarise.

    Args:
        out: the run folder to write.
        cache_dir: where data and weights are cached (default: the user cache).
        progress: show progress bars.
        echo: where the summary lines go (``print`` in the CLI).
        sizes: smaller ``train_per_class`` / ``heldout_per_class`` / ``epochs`` for
            quick checks (the defaults make the real demo).
        seed: seed of the dataset and the training run (0 is the demo; others show
            how much the figures owe to the draw, see ``benchmarks/bench_demo.py``).
        cladec: also train and evaluate ClaDec decoders for :data:`DEMO_CLADEC_LAYERS`
            (``filtag-kg demo --cladec``), before the graph and report are written.
        cladec_epochs: their training epochs.

    Returns:
        The run's profile and tags (also written to ``out``).
    """
    from .data import image_folder
    from .evaluation import evaluate_run, format_table
    from .explain import ExplainOptions, explain_dataset
    from .shapes import default_cache_dir, load_or_train_shapes_net, load_shapes_model
    from .wordnet import load_wordnet, write_abstractions

    t0 = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    before = {p: p.stat().st_mtime_ns for p in cache.glob("shapes-*/weights.pt")}
    _, metrics, data_root = load_or_train_shapes_net(cache, seed=seed, progress=progress,
                                                       **(sizes or {}))
    weights = data_root.parent / "weights.pt"
    cached = before.get(weights) == weights.stat().st_mtime_ns
    loaded = load_shapes_model(weights)
    classes = loaded.classes  # logit order
    imageset = image_folder(data_root / "train", classes)
    options = ProfileOptions(batch_size=64, device="cpu", workers=0, progress=progress, checkpoint_every=0,
                             top_images=6, overwrite=_holds_a_demo_run(out))
    result = run(loaded, imageset, out, settings=[TagSetting("top-k", 1), TagSetting("top-k", 3)],
                 options=options)
    report = write_abstractions(out, tags=result.tags, wordnet=load_wordnet())
    explain_dataset(
        out, image_folder(data_root / "heldout", classes),
        ExplainOptions(device="cpu", batch_size=64, workers=0, progress=progress, checkpoint_every=0),
        profile=result.profile, loaded=loaded,
    )
    evaluation = evaluate_run(out)
    cladec_lines = _cladec(out, data_root, cladec_epochs, progress) if cladec else []
    from .rdf import export_run_stats

    graph = export_run_stats(out, wordnet=load_wordnet())
    from .sparql import demo_answers

    answers = demo_answers(out, wordnet=load_wordnet())
    from .report import write_report

    site = write_report(out, Path(out) / "report", wordnet=load_wordnet(), progress=progress,
                        max_images=20, max_misexplained=20)

    echo(f"filtag-kg demo: synthetic plane shapes, {len(classes)} classes named by WordNet 3.0 synsets")
    echo(
        f"network {DEMO_MODEL}: held-out accuracy {100 * metrics['heldout_accuracy']:.1f}% on "
        f"{metrics.get('heldout_images', '?')} images ({'cached' if cached else 'trained now'}; "
        f"weights {weights})"
    )
    echo(f"training: {_training_line(metrics)}{' (when it was cached)' if cached else ''}")
    echo("")
    echo(summarize(result.profile, [t for t in result.tags if t.param == "1"], max_filters=10))
    echo("")
    echo("what filters represent, by WordNet hypernyms (top-k 3, filters with 2+ tags):")
    echo(_abstract_lines(out))
    echo("")
    echo(f"explanations of the {evaluation['groups'][0]['images']} held-out images:")
    echo(format_table(evaluation))
    echo("")
    for line in cladec_lines:
        echo(line)
    echo("in words (filtag-kg sentences):")
    echo(_sentence_lines(out, load_wordnet()))
    from .labels import export_sheet

    echo(f"label sheet for people to fill in (filtag-kg labels import): {export_sheet(out)}")
    echo("")
    echo(report.summary().splitlines()[0])
    echo(f"knowledge graph {graph.path.name}: {graph.quads} statements, {graph.explanations} "
         "explanation graphs (see ontology/README.md)")
    echo("")
    echo(answers)
    echo(f"outputs in {Path(out).resolve()}: profile, tags, abstract tags, explanations, evaluation, "
         "knowledge graph")
    echo(f"report: {site.index.resolve()} ({site.total_pages} pages; open it in a browser)")
    echo(f"done in {time.perf_counter() - t0:.1f} s")
    return result


def _cladec(out: str | os.PathLike[str], data_root: Path, epochs: int, progress: bool) -> list[str]:
    """Train and evaluate ClaDec for the demo's layers; the lines the demo prints about it."""
    from .cladec import CladecOptions, claim_line, format_evaluation, run_cladec

    t0 = time.perf_counter()
    results = run_cladec(out, DEMO_CLADEC_LAYERS, data=data_root / "train", eval_data=data_root / "heldout",
                         options=CladecOptions(epochs=epochs, device="cpu", progress=progress))
    docs = [r.evaluation for r in results if r.evaluation]
    return [f"ClaDec (decoded layers vs a reference autoencoder of the same size, {epochs} epochs, "
            f"{time.perf_counter() - t0:.1f} s):", format_evaluation(docs),
            *[claim_line(d) for d in docs], ""]


def _training_line(metrics: dict[str, Any]) -> str:
    """How long training took, in wall and CPU seconds and steps (what a slower machine scales)."""
    parts = [f"{metrics['seconds']:.1f} s"]
    if metrics.get("cpu_seconds") is not None:
        parts.append(f"{metrics['cpu_seconds']:.1f} s CPU")
    if metrics.get("steps") is not None:
        parts.append(f"{metrics['steps']} steps of {metrics.get('batch_size', '?')} images")
    return ", ".join(parts) + f", {metrics.get('epochs', '?')} epochs"


def _sentence_lines(run_dir: str | os.PathLike[str], wordnet: Any, count: int = 2) -> str:
    """Example sentences: the first held-out image the votes explain, and the first they do not
    (or the next one)."""
    from .evaluation import explains_model
    from .explain import read_explanations
    from .sentences import SentenceContext, image_sentence

    ctx = SentenceContext.from_run(run_dir, wordnet=wordnet)
    good, bad = [], []
    for rec in read_explanations(run_dir):
        if rec.get("perturbation") or rec.get("weighting") or rec.get("param") != "1":
            continue
        (good if explains_model(rec) else bad).append(rec)
        if len(good) >= count and bad:
            break
    chosen = (good[:1] + bad[:1] + good[1:] + bad[1:])[:count]
    return "\n".join(f"  {'/'.join(Path(str(rec.get('image'))).parts[-2:])}: {image_sentence(ctx, rec).text}"
                     for rec in chosen)


def _abstract_lines(run_dir: str | os.PathLike[str], limit: int = 8) -> str:
    """The demo's most telling abstract tags: the broadest coverage first."""
    import csv

    with open(Path(run_dir) / "abstract_tags.tsv", encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["param"] == "3"]
    rows.sort(key=lambda r: (-int(r["cover"]), -int(r["depth"]), r["layer"], int(r["filter"])))
    lines = [
        f"  {r['layer']} filter {r['filter']}: {r['covered_labels'].replace(',', ', ')} -> "
        f"{r['synset']} ({r['lemma']}, covers {r['cover']})"
        for r in rows[:limit]
    ]
    return "\n".join(lines) if lines else "  (no filter carries two related tags)"
