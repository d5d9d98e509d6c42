"""The 1000 ImageNet-1k classes: output index, WordNet 3.0 wnid and label.

torchvision's weights metadata only carries human-readable category names, so
the index -> wnid link that makes a tag a WordNet concept comes from this
shipped table (``resources/imagenet1k_classes.tsv``). The wnids are the sorted
ImageNet-1k synset ids (the order every torchvision and Keras classifier
uses); the labels are the widely used Keras-style class names (``tench``,
``French_horn``, ``potter's_wheel``). Two labels name two classes each:
``crane`` (the bird n02012849 and the machine n03126707) and ``maillot``
(n03710637, n03710721), so a label alone is not an identifier; use
:func:`imagenet_by_label` and treat more than one match as ambiguous.
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

__all__ = [
    "ImageNetClass",
    "WNID_PATTERN",
    "imagenet1k_classes",
    "imagenet_by_label",
    "imagenet_by_wnid",
]

#: A WordNet 3.0 noun id as ImageNet writes it: ``n`` and an 8-digit offset.
WNID_PATTERN = re.compile(r"n\d{8}")

_TABLE = "imagenet1k_classes.tsv"


@dataclass(frozen=True)
class ImageNetClass:
    """One ImageNet-1k class.

    Attributes:
        index: the classifier's output index (0..999).
        wnid: the WordNet 3.0 noun id, e.g. ``"n02084071"``.
        label: the Keras-style class name, e.g. ``"French_horn"``.
    """

    index: int
    wnid: str
    label: str


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ImageNetClass, ...]:
    text = (Path(__file__).parent / "resources" / _TABLE).read_text(encoding="utf-8")
    reader = csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header != ["index", "wnid", "label"]:
        raise DataError(f"{_TABLE}: expected header ['index', 'wnid', 'label'], got {header!r}")
    out = []
    for n, row in enumerate(reader):
        if len(row) != 3 or not row[0].isdigit() or int(row[0]) != n:
            raise DataError(f"{_TABLE}: malformed row {n + 2}: {row!r}")
        if not WNID_PATTERN.fullmatch(row[1]):
            raise DataError(f"{_TABLE}: row {n + 2} has a malformed wnid {row[1]!r}")
        out.append(ImageNetClass(index=n, wnid=row[1], label=row[2]))
    if len(out) != 1000:
        raise DataError(f"{_TABLE}: expected 1000 classes, found {len(out)}")
    return tuple(out)


def imagenet1k_classes() -> list[ImageNetClass]:
    """The 1000 ImageNet-1k classes in output-index order.

    The table is read once and cached; each call returns a new list, so
    callers may modify it freely.

    Returns:
        1000 :class:`ImageNetClass` records, ``result[i].index == i``.

    Example:
        >>> imagenet1k_classes()[566]
        ImageNetClass(index=566, wnid='n03394916', label='French_horn')
    """
    return list(_load())


@functools.lru_cache(maxsize=1)
def _by_label() -> dict[str, tuple[ImageNetClass, ...]]:
    out: dict[str, list[ImageNetClass]] = {}
    for c in _load():
        out.setdefault(c.label, []).append(c)
    return {k: tuple(v) for k, v in out.items()}


def imagenet_by_label() -> dict[str, list[ImageNetClass]]:
    """Map each label to the classes that carry it (usually one).

    ``crane`` and ``maillot`` map to two classes each; a caller that must
    resolve a label to one class has to report those as ambiguous.

    Example:
        >>> [c.wnid for c in imagenet_by_label()["crane"]]
        ['n02012849', 'n03126707']
    """
    return {k: list(v) for k, v in _by_label().items()}


@functools.lru_cache(maxsize=1)
def _by_wnid() -> dict[str, ImageNetClass]:
    return {c.wnid: c for c in _load()}


def imagenet_by_wnid() -> dict[str, ImageNetClass]:
    """Map each of the 1000 wnids to its class.

    Example:
        >>> imagenet_by_wnid()["n01440764"].label
        'tench'
    """
    return dict(_by_wnid())
