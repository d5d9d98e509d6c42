"""Link dataset classes to WordNet 3.0 noun synsets.

A class id is linked, in this order:

1. through a synset map (``--synset-map FILE``: label -> wnid or synset name),
   matched on the class id, then on its label;
2. directly, when the class id is a wnid (ImageNet-style folders), an
   offset id (``02084071-n``) or a synset name (``dog.n.01``);
3. by lemma look-up on the class id, then on its label (CIFAR-style folders
   such as ``truck``), exact and case-insensitive, spaces equal to ``_``.

A lemma with one noun sense links to it. A lemma with several senses is
ambiguous: it is reported with its candidate senses and left unlinked,
unless ``first_sense=True`` asks for WordNet's first (most frequent) sense.
A class that cannot be linked keeps its tags without a synset and is listed
in :meth:`ClassMapping.report`. A malformed wnid, or one that full WordNet
does not have, is an error naming it; on the bundled slice a wnid outside
the slice is left unlinked with that reason, since it may still be valid.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError, UnknownSynsetError
from .source import WordNet, load_wordnet, parse_synset_key

if TYPE_CHECKING:
    from ..tagging import Tag

__all__ = [
    "HOW_FIRST_SENSE",
    "HOW_LEMMA",
    "HOW_MAP",
    "HOW_SYNSET",
    "HOW_UNLINKED",
    "ClassLink",
    "ClassMapping",
    "link_class",
    "map_classes",
    "map_tag_classes",
    "read_synset_map",
]

HOW_SYNSET = "synset-id"  # the class id itself is a wnid / synset name
HOW_MAP = "synset-map"  # the user's synset map
HOW_LEMMA = "lemma"  # the only noun sense of the lemma
HOW_FIRST_SENSE = "first-sense"  # first of several senses, because the user asked
HOW_UNLINKED = "unlinked"


@dataclass(frozen=True)
class ClassLink:
    """How one class was linked (or why it was not).

    Attributes:
        class_id: the class id as in the tags (folder name or wnid).
        label: the class's label.
        synset: the linked synset name, ``None`` when unlinked.
        wnid: the linked synset's wnid, ``None`` when unlinked.
        how: ``"synset-id"``, ``"synset-map"``, ``"lemma"``,
            ``"first-sense"`` or ``"unlinked"``.
        candidates: candidate synset names of an ambiguous lemma, in sense
            order (also kept after ``first-sense`` chose the first).
        reason: why the class is unlinked, or a note on the choice.
        senses: for a lemma look-up, how many noun senses the lemma has in
            WordNet 3.0 (0 otherwise).
    """

    class_id: str
    label: str
    synset: str | None
    wnid: str | None
    how: str
    candidates: tuple[str, ...] = ()
    reason: str = ""
    senses: int = 0

    @property
    def linked(self) -> bool:
        """Whether a synset was assigned."""
        return self.synset is not None

    @property
    def ambiguous(self) -> bool:
        """Whether the class matched a lemma with several noun senses."""
        return self.senses > 1


@dataclass(frozen=True)
class ClassMapping:
    """The links of a set of classes, by class id."""

    links: dict[str, ClassLink]
    source: str

    def synset_of(self, class_id: str) -> str | None:
        """The synset linked to ``class_id``, or ``None``."""
        link = self.links.get(class_id)
        return link.synset if link else None

    @property
    def linked(self) -> list[ClassLink]:
        """Links that assigned a synset."""
        return [v for v in self.links.values() if v.linked]

    @property
    def unlinked(self) -> list[ClassLink]:
        """Classes left without a synset."""
        return [v for v in self.links.values() if not v.linked]

    @property
    def ambiguous(self) -> list[ClassLink]:
        """Classes whose lemma had several senses (linked by first sense or not)."""
        return [v for v in self.links.values() if v.ambiguous]

    def report(self) -> list[str]:
        """One line per unlinked class or first-sense choice, for the user."""
        out = []
        for v in self.links.values():
            if not v.linked:
                cands = f" (candidates: {', '.join(v.candidates)})" if v.candidates else ""
                out.append(f"class {v.class_id!r} is not linked: {v.reason}{cands}")
            elif v.how == HOW_FIRST_SENSE:
                out.append(
                    f"class {v.class_id!r} linked to its first sense {v.synset} of "
                    f"{len(v.candidates)} ({', '.join(v.candidates)})"
                )
        return out


def read_synset_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a synset map file: class label (or id) -> wnid or synset name.

    Formats: a JSON object, or text with one ``LABEL<TAB>SYNSET`` per line
    (``#`` starts a comment; blank lines are skipped; a header line
    ``label<TAB>synset`` is allowed). Values are checked for form here and
    for existence when they are used.

    Raises:
        DataError: the file is missing or a line is malformed (file and line
            are named).
        UnknownSynsetError: a value is not a wnid or noun synset name.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read synset map {str(p)!r}: {exc.strerror or exc}") from None
    out: dict[str, str] = {}
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise DataError(f"synset map {str(p)!r} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
        ):
            raise DataError(f"synset map {str(p)!r} must be a JSON object of strings to strings")
        items = [(0, k, v) for k, v in doc.items()]
    else:
        items = []
        rows = csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
        for n, row in enumerate(rows, start=1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if n == 1 and [c.strip().lower() for c in row[:2]] == ["label", "synset"]:
                continue
            if len(row) != 2 or not row[1].strip():
                raise DataError(
                    f"{p}:{n}: expected 'LABEL<TAB>WNID or SYNSET_NAME', got {row!r}"
                )
            items.append((n, row[0].strip(), row[1].strip()))
    for n, label, value in items:
        try:
            parse_synset_key(value)
        except UnknownSynsetError as exc:
            where = f"{p}:{n}" if n else str(p)
            raise UnknownSynsetError(f"{where}: label {label!r}: {exc}") from None
        if label in out and out[label] != value:
            raise DataError(f"{p}:{n}: label {label!r} is mapped twice ({out[label]!r}, {value!r})")
        out[label] = value
    return out


def _as_map(
    synset_map: Mapping[str, str] | str | os.PathLike[str] | None,
) -> Mapping[str, str]:
    if synset_map is None:
        return {}
    if isinstance(synset_map, (str, os.PathLike)):
        return read_synset_map(synset_map)
    return synset_map


def _resolve(
    wn: WordNet, class_id: str, label: str, value: str, how: str, origin: str
) -> ClassLink:
    """Link to an explicit synset reference; unknown -> error (or unlinked on the slice)."""
    info = wn.find(value)  # malformed -> UnknownSynsetError naming the value
    if info is None:
        if wn.complete:
            raise UnknownSynsetError(
                f"{origin} {value!r} for class {class_id!r} is not a WordNet 3.0 noun synset"
            )
        return ClassLink(
            class_id, label, None, None, HOW_UNLINKED,
            reason=f"{value!r} is not in the bundled WordNet slice; install full WordNet",
        )
    return ClassLink(class_id, label, info.name, info.wnid, how)


def _looks_like_id(text: str) -> bool:
    try:
        parse_synset_key(text)
    except UnknownSynsetError:
        return False
    return True


def link_class(
    class_id: str,
    label: str = "",
    *,
    wordnet: WordNet | None = None,
    synset_map: Mapping[str, str] | None = None,
    first_sense: bool = False,
) -> ClassLink:
    """Link one class (see the module docstring for the rules).

    Args:
        class_id: folder name or wnid of the class.
        label: its label (used for the synset map and lemma look-up when
            the class id does not match).
        wordnet: the source; default :func:`load_wordnet`.
        synset_map: label/class id -> wnid or synset name.
        first_sense: resolve an ambiguous lemma to its first sense.

    Raises:
        UnknownSynsetError: a wnid-shaped class id or a map value is
            malformed or not in WordNet 3.0.

    Example:
        >>> link_class("n03394916", wordnet=load_wordnet(source="slice")).synset
        'french_horn.n.01'
    """
    wn = wordnet if wordnet is not None else load_wordnet()
    smap = synset_map or {}
    label = label or class_id
    for key in dict.fromkeys((class_id, label)):
        if key in smap:
            return _resolve(wn, class_id, label, smap[key], HOW_MAP, "synset map entry")
    if class_id[:1] == "n" and class_id[1:].isdigit():
        # wnid-shaped: must be well-formed and known, never a lemma
        return _resolve(wn, class_id, label, class_id, HOW_SYNSET, "wnid")
    if _looks_like_id(class_id):
        return _resolve(wn, class_id, label, class_id, HOW_SYNSET, "synset")
    best = None
    for text in dict.fromkeys((class_id, label)):
        senses = wn.lemma_senses(text)
        if senses.total:
            best = senses
            break
    if best is None:
        where = "" if wn.complete else " in the bundled WordNet slice"
        return ClassLink(
            class_id, label, None, None, HOW_UNLINKED,
            reason=f"no noun synset has the lemma {class_id!r}{where}; "
            f"map it with a synset map (--synset-map)",
        )
    names = best.names
    if best.total == 1 and len(names) == 1:
        info = wn.synset(names[0])
        return ClassLink(class_id, label, info.name, info.wnid, HOW_LEMMA, names, senses=1)
    if len(names) == 0:
        return ClassLink(
            class_id, label, None, None, HOW_UNLINKED,
            reason=f"the lemma {best.lemma!r} has {best.total} noun senses in WordNet 3.0, none "
            f"of them in the bundled slice; install full WordNet or use --synset-map",
            senses=best.total,
        )
    missing = best.total - len(names)
    partial = f" ({missing} more not in the bundled slice)" if missing else ""
    if first_sense:
        number, name = best.senses[0]
        if number == 1:
            info = wn.synset(name)
            return ClassLink(
                class_id, label, info.name, info.wnid, HOW_FIRST_SENSE, names,
                reason=f"first of {best.total} senses, chosen by --first-sense",
                senses=best.total,
            )
        return ClassLink(
            class_id, label, None, None, HOW_UNLINKED, names,
            reason=f"the lemma {best.lemma!r} has {best.total} noun senses and the first is not "
            f"in the bundled slice; install full WordNet or use --synset-map",
            senses=best.total,
        )
    return ClassLink(
        class_id, label, None, None, HOW_UNLINKED, names,
        reason=f"the lemma {best.lemma!r} is ambiguous: {best.total} noun senses{partial}; "
        f"choose one with --synset-map, or pass --first-sense for WordNet's first sense",
        senses=best.total,
    )


def map_classes(
    classes: Iterable[str | tuple[str, str]],
    *,
    wordnet: WordNet | None = None,
    synset_map: Mapping[str, str] | str | os.PathLike[str] | None = None,
    first_sense: bool = False,
) -> ClassMapping:
    """Link many classes.

    Args:
        classes: class ids, or ``(class_id, label)`` pairs.
        wordnet: the source; default :func:`load_wordnet`.
        synset_map: a mapping or the path of a synset map file.
        first_sense: resolve ambiguous lemmas to their first sense.

    Returns:
        The links by class id (first occurrence wins for repeated ids).

    Raises:
        UnknownSynsetError: a wnid class id or map value is malformed or unknown.
    """
    wn = wordnet if wordnet is not None else load_wordnet()
    smap = _as_map(synset_map)
    links: dict[str, ClassLink] = {}
    for c in classes:
        cid, label = (c, c) if isinstance(c, str) else (c[0], c[1])
        if cid not in links:
            links[cid] = link_class(
                cid, label, wordnet=wn, synset_map=smap, first_sense=first_sense
            )
    return ClassMapping(links=links, source=wn.source)


def map_tag_classes(
    tags: Iterable[Tag],
    *,
    wordnet: WordNet | None = None,
    synset_map: Mapping[str, str] | str | os.PathLike[str] | None = None,
    first_sense: bool = False,
) -> ClassMapping:
    """Link the classes that occur in a list of tags (by ``class_id`` and ``label``)."""
    return map_classes(
        ((t.class_id, t.label) for t in tags),
        wordnet=wordnet,
        synset_map=synset_map,
        first_sense=first_sense,
    )
