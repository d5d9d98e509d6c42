"""The shipped ImageNet-1k class table (index, wnid, label)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from filtag_kg.imagenet import (
    ImageNetClass,
    imagenet1k_classes,
    imagenet_by_label,
    imagenet_by_wnid,
)

# CI installs Debian's wordnet-base + wordnet-sense-index; the variable lets a
# run point elsewhere (or at nothing, to exercise the skips).
DEBIAN = Path(os.environ.get("FILTAG_KG_TEST_WORDNET_DIR", "/usr/share/wordnet"))


def test_thousand_classes_in_index_order():
    classes = imagenet1k_classes()
    assert len(classes) == 1000
    assert [c.index for c in classes] == list(range(1000))
    assert all(isinstance(c, ImageNetClass) for c in classes)


def test_wnids_are_unique_sorted_wordnet_noun_ids():
    wnids = [c.wnid for c in imagenet1k_classes()]
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert len(set(wnids)) == 1000
    # the classifiers' output order is the sorted synset order
    assert wnids == sorted(wnids)


@pytest.mark.parametrize(
    ("index", "wnid", "label"),
    [
        (0, "n01440764", "tench"),
        (134, "n02012849", "crane"),
        (151, "n02085620", "Chihuahua"),
        (268, "n02113978", "Mexican_hairless"),
        (517, "n03126707", "crane"),
        (566, "n03394916", "French_horn"),
        (607, "n03590841", "jack-o'-lantern"),
        (638, "n03710637", "maillot"),
        (639, "n03710721", "maillot"),
        (739, "n03992509", "potter's_wheel"),
        (999, "n15075141", "toilet_tissue"),
    ],
)
def test_known_entries(index, wnid, label):
    assert imagenet1k_classes()[index] == ImageNetClass(index, wnid, label)
    assert imagenet_by_wnid()[wnid].index == index


def test_only_crane_and_maillot_are_shared_labels():
    shared = {k: [c.wnid for c in v] for k, v in imagenet_by_label().items() if len(v) > 1}
    assert shared == {
        "crane": ["n02012849", "n03126707"],
        "maillot": ["n03710637", "n03710721"],
    }
    assert len(imagenet_by_label()) == 998


def test_results_are_copies():
    a = imagenet1k_classes()
    a.clear()
    imagenet_by_label()["tench"].clear()
    assert len(imagenet1k_classes()) == 1000
    assert len(imagenet_by_label()["tench"]) == 1


def test_index_alignment_with_torchvision_category_names():
    """Independent source: torchvision's weights metadata (human names, index order)."""
    models = pytest.importorskip("torchvision.models")
    names = models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(names) == 1000
    differing = [
        c.index
        for c in imagenet1k_classes()
        if c.label.replace("_", " ").lower() != names[c.index].lower()
    ]
    # torchvision disambiguates the two shared labels ("crane bird", "maillot tank suit")
    assert differing == [134, 639]


def test_every_label_is_a_lemma_of_its_synset_in_the_slice():
    from filtag_kg.wordnet import load_wordnet

    wn = load_wordnet(source="slice")
    for c in imagenet1k_classes():
        info = wn.synset(c.wnid)
        assert c.label.lower() in {lem.lower() for lem in info.lemmas}, c


@pytest.mark.skipif(
    not (DEBIAN / "data.noun").is_file(),
    reason="Debian WordNet database absent (apt-get install wordnet-base wordnet-sense-index)",
)
def test_every_wnid_resolves_in_the_debian_database(tmp_path, monkeypatch):
    """Independent of the slice: read data.noun at each offset directly."""
    with open(DEBIAN / "data.noun", "rb") as fh:
        for c in imagenet1k_classes():
            fh.seek(int(c.wnid[1:]))
            line = fh.readline().decode("utf-8")
            fields = line.split()
            assert fields[0] == c.wnid[1:], c
            n_words = int(fields[3], 16)
            words = {fields[4 + 2 * i].lower() for i in range(n_words)}
            assert c.label.lower() in words, c
