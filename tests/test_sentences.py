"""Generated sentences: checked against the votes, shares and WordNet links they describe."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import cli_env

from filtag_kg.explain import read_explanations
from filtag_kg.imagenet import imagenet1k_classes
from filtag_kg.rdf.synthetic import write_synthetic_run
from filtag_kg.sentences import (
    READER_MIN_COUNT,
    TEMPLATE_IMAGE,
    SentenceContext,
    SentenceError,
    class_sentences,
    filter_sentences,
    image_sentence,
    plural,
    run_sentences,
)
from filtag_kg.wordnet import MIN_ABSTRACT_DEPTH, WordNet, load_wordnet

LABELS = ["Eskimo_dog", "malamute", "Siberian_husky", "beagle", "basset", "tabby", "violin",
          "cornet", "trombone", "ski", "dogsled", "tench", "goldfish"]


@pytest.fixture(scope="module")
def wordnet() -> WordNet:
    return load_wordnet(source="slice")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    by_label = {c.label: (c.wnid, c.label) for c in imagenet1k_classes()}
    return write_synthetic_run(
        tmp_path_factory.mktemp("sentences") / "run",
        layers=[("features.24", 12), ("features.26", 12), ("features.28", 12)],
        classes=[by_label[x] for x in LABELS], images=40, k=2, seed=3,
    )


@pytest.fixture(scope="module")
def ctx(run: Path, wordnet: WordNet) -> SentenceContext:
    return SentenceContext.from_run(run, wordnet=wordnet)


def _wnid(label: str) -> str:
    return next(c.wnid for c in imagenet1k_classes() if c.label == label)


def test_reader_level_names_breed_groups_not_top_or_rare_concepts(ctx: SentenceContext) -> None:
    reader = ctx.reader
    assert reader is not None
    dog = {ctx.key_of(_wnid(x)) for x in ("Eskimo_dog", "malamute", "Siberian_husky")}
    assert dog == {"dog.n.01"}  # not sled_dog.n.01, working_dog.n.01 or canine.n.02 (tag count 0)
    assert ctx.key_of(_wnid("beagle")) == "hound.n.01"
    assert ctx.key_of(_wnid("tabby")) == "cat.n.01"
    assert reader.familiarity("dog.n.01") >= READER_MIN_COUNT > reader.familiarity("canine.n.02")
    for cid in ctx.class_labels:
        key = ctx.key_of(cid)
        if not key.startswith("class:"):
            assert reader.depth(key) >= MIN_ABSTRACT_DEPTH
            assert key in reader.hierarchy.ancestors_or_self(ctx.synsets[cid]) - {ctx.synsets[cid]}


def test_image_sentence_of_a_known_record(ctx: SentenceContext) -> None:
    husky, mal, sled, violin = (_wnid(x) for x in ("Siberian_husky", "malamute", "dogsled", "violin"))
    tagged = {k[2:]: v for k, v in ctx.tags.items()}
    # active filters chosen so that their tags give the votes below
    layer, f_husky = next(key for key, v in sorted(tagged.items()) if husky in v)
    rec = {
        "index": 7, "image": "a.jpg", "method": "top-k", "param": "2",
        "model_top": [{"class_id": mal, "label": "malamute", "prob": 0.613}],
        "prediction": mal,
        "votes": {mal: 2.0, husky: 1.0, sled: 1.0, violin: 0.0},
        "vote_counts": {mal: 2, husky: 1, sled: 1},
        "active_filters": {layer: [{"filter": f_husky, "value": 0.9, "rank": 1}]},
    }
    s = image_sentence(ctx, rec)
    assert s.template == TEMPLATE_IMAGE
    assert s.text == (
        f"Predicted malamute (61%); the filters' votes agree. Filters in layer {layer} respond "
        "to dogs (malamute, Siberian husky) and to dogsled; 1 of the 1 most active tagged filters "
        "points to dogs."
    )
    assert "violin" not in s.text  # no votes, never named


def test_every_image_sentence_names_the_prediction_and_only_voted_concepts(
    run: Path, ctx: SentenceContext
) -> None:
    records = list(read_explanations(run))
    assert records
    reader = ctx.reader
    assert reader is not None
    for rec in records:
        s = image_sentence(ctx, rec)
        assert ctx.label(rec["model_top"][0]["class_id"]) in s.text
        if rec["prediction"] != rec["model_top"][0]["class_id"]:
            assert ctx.label(rec["prediction"]) in s.text
        assert s.phrases
        for p in s.phrases:
            assert p.text in s.text
            assert all(rec["vote_counts"].get(c, 0) > 0 for c in p.members)
            assert p.amount == pytest.approx(sum(rec["votes"][c] for c in p.members))
            if p.concept is not None:
                assert len(p.members) >= 2
                assert reader.depth(p.concept) >= MIN_ABSTRACT_DEPTH
                for c in p.members:
                    assert p.concept in reader.hierarchy.ancestors_or_self(ctx.synsets[c])
            else:
                assert p.head == ctx.label(p.members[0])
        # every class named in the sentence's phrases has votes; leading group first
        assert [p.amount for p in s.phrases] == sorted((p.amount for p in s.phrases), reverse=True)


def test_filter_sentences_sum_the_shares_of_tags_tsv(run: Path, ctx: SentenceContext) -> None:
    shares: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    with open(run / "tags.tsv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            shares[(row["layer"], int(row["filter"]))][row["class_id"]] = float(row["share"])
    got = list(filter_sentences(ctx))
    assert len(got) == len(shares)
    for s in got:
        mine = shares[(s.subject["layer"], s.subject["filter"])]
        best = max(mine.values())
        assert s.phrases[0].amount >= best - 1e-12  # the leading concept holds at least the top class
        for p in s.phrases:
            assert p.amount == pytest.approx(sum(mine[c] for c in p.members))
            assert f"{round(p.amount * 100)}%" in s.text
        assert s.text.startswith(f"Filter {s.subject['filter']} of {s.subject['layer']} responds most to ")


def test_class_sentences_share_of_votes(run: Path, ctx: SentenceContext) -> None:
    records = list(read_explanations(run))
    votes: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in records:
        for c, v in r["votes"].items():
            votes[r["true_class"]][c] += v
    got = {s.subject["class_id"]: s for s in class_sentences(ctx, records)}
    assert set(got) == set(votes)
    for cid, s in got.items():
        total = sum(votes[cid].values())
        assert s.text.startswith(f"Images of {ctx.label(cid)} (")
        for p in s.phrases:
            assert p.amount == pytest.approx(sum(votes[cid][c] for c in p.members))
            assert f"{round(p.amount / total * 100)}%" in s.text


def test_plural() -> None:
    assert [plural(w) for w in ("dog", "sled dog", "goldfish", "box", "butterfly", "fireman", "toy")] == [
        "dogs", "sled dogs", "goldfish", "boxes", "butterflies", "firemen", "toys"]


def test_run_sentences_errors(tmp_path: Path, run: Path, wordnet: WordNet) -> None:
    with pytest.raises(SentenceError, match="profile.json.*tagged run"):
        list(run_sentences(tmp_path, wordnet=wordnet))
    with pytest.raises(SentenceError, match="unknown sentence kind"):
        list(run_sentences(run, kinds=["page"], wordnet=wordnet))
    bare = write_synthetic_run(tmp_path / "bare", layers=[("l", 4)], classes=3)
    with pytest.raises(SentenceError, match="no explanations"):
        list(run_sentences(bare, kinds=["image"], wordnet=wordnet))
    assert list(run_sentences(bare, kinds=["filter"], wordnet=wordnet))


def test_cli_sentences_json(run: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "filtag_kg", "sentences", str(run), "--kind", "image", "--limit", "3",
         "--json"], capture_output=True, text=True, env=cli_env(), timeout=120, check=True,
    ).stdout.splitlines()
    docs = [json.loads(line) for line in out]
    assert [d["index"] for d in docs] == [0, 1, 2]
    assert all(d["template"] == TEMPLATE_IMAGE and d["text"].startswith("Predicted ") for d in docs)
    bad = subprocess.run([sys.executable, "-m", "filtag_kg", "sentences", str(run.parent)],
                         capture_output=True, text=True, env=cli_env(), timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("filtag-kg: error: ")
    assert "profile.json" in bad.stderr
