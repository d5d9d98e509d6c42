"""Helpers for the SPARQL tests (no tests here): a small two-model export and its files.

Two synthetic runs in the exact formats of real runs (:mod:`filtag_kg.rdf.synthetic`,
linked to WordNet by the real ``write_abstractions``): a "vgg16" run with 12
explained images and a "resnet18" run without explanations, over the same six
classes (three toy dogs, a violin, a cat, and a class without a synset). Both are
exported to N-Quads and loaded into one Oxigraph store. Expected answers are
computed here from the runs' TSV / JSON / JSON Lines files and the WordNet API,
never from the graph.
"""

from __future__ import annotations

import atexit
import csv
import functools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saliency_support import write_saliency_fixture
from test_rdf_support import make_run, wordnet

from filtag_kg.explain import read_explanations
from filtag_kg.rdf import export_run

SPEC_A, SPEC_B = "vgg16", "resnet18"
LAYERS_B = [("layer1.0.conv1", 4), ("layer4.1.conv2", 5)]
#: The roots of the histogram and of polysemantic-filters, as the queries name them.
ROOTS = {
    "animal.n.01": "animal",
    "plant.n.02": "plant",
    "fungus.n.01": "fungus",
    "person.n.01": "person",
    "food.n.01": "food",
    "food.n.02": "food",
    "artifact.n.01": "artifact",
    "geological_formation.n.01": "geological formation",
    "shape.n.02": "shape",
}


@dataclass(frozen=True)
class KG:
    """The test export: run folders, their files, and the store holding both."""

    run_a: Path
    run_b: Path
    nq_a: Path
    nq_b: Path
    trig_a: Path
    ttl_a: Path
    store: Path


@functools.lru_cache(maxsize=1)
def kg() -> KG:
    """Build the two runs, their exports and the store once per test session."""
    from filtag_kg import sparql

    root = Path(tempfile.mkdtemp(prefix="filtag-sparql-"))
    atexit.register(shutil.rmtree, root, True)
    a = make_run(root / "a", images=12, spec=SPEC_A)
    add_human_labels(a)
    write_saliency_fixture(a)  # SAGs for multiple-explanations
    b = make_run(root / "b", images=0, spec=SPEC_B, layers=LAYERS_B, seed=1)
    wn = wordnet()
    nq_a = export_run(a, fmt="nq", wordnet=wn)
    nq_b = export_run(b, fmt="nq", wordnet=wn)
    trig_a = export_run(a, fmt="trig", wordnet=wn)
    ttl_a = export_run(a, fmt="ttl", wordnet=wn)
    store = root / "store"
    sparql.load([nq_a, nq_b], store)
    return KG(a, b, nq_a, nq_b, trig_a, ttl_a, store)


def add_human_labels(run: Path) -> None:
    """Label a few filters of the run as people might: agreeing, disagreeing and unknown labels."""
    from filtag_kg.labels import LABEL_COLUMNS, import_labels

    rows = tags(run)
    dog_breeds = {"n02085620", "n02085936", "n02086240"}
    dog = next(r for r in rows if r["class_id"] in dog_breeds)
    other = next(r for r in rows if r["class_id"] == "n04536866")  # tagged violin
    unrelated = next(r for r in rows if r["class_id"] not in dog_breeds | {"n04536866"})
    labels = [(dog, "dogs"), (other, "a musical instrument"), (other, "toy dog"), (unrelated, "violin"),
              (unrelated, "blorptastic")]
    path = run / "labels-in.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(LABEL_COLUMNS)
        for i, (r, text) in enumerate(labels):
            w.writerow(["", r["layer"], r["filter"], text, f"ann{i % 2}", "2026-01-02T03:04:05Z"])
    import_labels(path, run, wordnet=wordnet())


def tags(run: Path) -> list[dict[str, str]]:
    """The rows of ``tags.tsv``."""
    with open(run / "tags.tsv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def tsv(path: Path) -> list[dict[str, str]]:
    """The rows of any TSV file with a header."""
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def explanations(run: Path) -> list[dict[str, Any]]:
    """The records of the run's explanations (either stored form)."""
    return list(read_explanations(run))


def profile(run: Path) -> dict[str, Any]:
    """``profile.json``."""
    return json.loads((run / "profile.json").read_text(encoding="utf-8"))


def is_wnid(class_id: str) -> bool:
    """Whether a class id is a wnid (``n`` + 8 digits)."""
    return len(class_id) == 9 and class_id[0] == "n" and class_id[1:].isdigit()


def pref_label(class_id: str, label: str) -> str:
    """The concept label an export writes: the synset's head lemma, else the class label."""
    if is_wnid(class_id):
        info = wordnet().find(class_id)
        if info is not None:
            return info.lemmas[0].replace("_", " ")
    return label


def ancestors_or_self(class_id: str) -> set[str]:
    """Synset names on every hypernym path of a class (empty for a class without a synset)."""
    if not is_wnid(class_id) or wordnet().find(class_id) is None:
        return set()
    return {name for path in wordnet().hypernym_paths(class_id) for name in path}


def setting_label(row: dict[str, str]) -> str:
    """The label of a tag's setting, as the export writes it (``top-k 2``)."""
    return f"{row['method']} {row['param']}".strip()


def split_list(text: Any) -> frozenset[str]:
    """A GROUP_CONCAT cell as a set (engines concatenate in any order)."""
    return frozenset(x for x in str(text or "").split(", ") if x)
