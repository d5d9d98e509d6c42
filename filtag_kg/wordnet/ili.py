"""WordNet 3.0 noun synsets to the Collaborative Interlingual Index (CILI), offline.

CILI (https://github.com/globalwordnet/cili, CC BY 4.0) gives each concept a
version-independent id (dog.n.01 is ``i46360``) and maps WordNet 3.0 offsets to
those ids in ``ili-map-pwn30.tab`` (lines ``iNNN<TAB>XXXXXXXX-p``). The export
links each synset with ``skos:exactMatch`` to ``http://globalwordnet.org/ili/iNNN``
when it has the map: given explicitly (``export --ili-map FILE``), or shipped in
the package as :data:`ILI_RESOURCE`, which :func:`build_ili_resource` writes
(``scripts/build_ili_map.py``) after checking the source against known ids, so
that a renumbered copy of the file never becomes identity links.

CILI numbers the 117,659 synsets of WordNet 3.0 by part of speech, each part in
ascending offset order: adjectives (with satellites) ``i1``-``i18156``, adverbs
``i18157``-``i21777``, verbs ``i21778``-``i35544``, nouns ``i35545``-``i117659``. A
noun's id is therefore ``i(35544 + its rank among the 82,115 noun offsets)``, which
:func:`derive_noun_ili_map` computes from a WordNet 3.0 ``data.noun``; the shipped map
was built that way (``scripts/build_ili_map.py --from-wordnet /usr/share/wordnet``)
and checked against ids published independently of this package (:data:`ILI_CHECKS`:
CILI's own first noun, OMW/OEWN lexicons and Wikidata's P5063), spread over the noun
range.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import DataError

__all__ = [
    "ILI_CHECKS",
    "ILI_RESOURCE",
    "IliMapError",
    "build_ili_resource",
    "derive_noun_ili_map",
    "load_ili_resource",
    "parse_ili_map",
]

#: The noun map shipped with the package (wnid<TAB>ILI id, gzip), when it was built.
ILI_RESOURCE = Path(__file__).resolve().parent.parent / "resources" / "ili-map-pwn30-nouns.tsv.gz"

#: Ids a genuine CILI map must give, as published outside this package: entity.n.01 (CILI's
#: first noun), person.n.01 (Open English WordNet's ILI link), dog.n.01 and cat.n.01
#: (Wikidata P5063), tree.n.01 (a wordnet's ILI link); spread from the first noun to rank 70,026.
ILI_CHECKS: dict[str, str] = {
    "n00001740": "i35545",
    "n00007846": "i35562",
    "n02084071": "i46360",
    "n02121620": "i46593",
    "n13104059": "i105570",
}

#: CILI's id of the first WordNet 3.0 noun (after 18,156 adjective, 3,621 adverb and
#: 13,767 verb synsets).
FIRST_NOUN_ILI = 35545
#: WordNet 3.0's noun synsets.
NOUN_SYNSETS = 82115


class IliMapError(DataError):
    """An ILI map file is unreadable, malformed, or disagrees with CILI's published ids."""


def parse_ili_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read CILI's ``ili-map-pwn30.tab`` as wnid -> ILI id (nouns only; other parts of speech skipped).

    Raises:
        IliMapError: the file is unreadable or a line is malformed (file and line named).
    """
    p = Path(path)
    out: dict[str, str] = {}
    try:
        with open(p, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split("\t")
                if len(parts) < 2 or not parts[0].startswith("i"):
                    raise IliMapError(f"{p}:{n}: expected 'iNNN<TAB>XXXXXXXX-n', got {line[:60]!r}")
                ili, key = parts[0], parts[1]
                if key.endswith("-n") and len(key) == 10 and key[:8].isdigit():
                    out[f"n{key[:8]}"] = ili
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise IliMapError(f"cannot read ILI map {str(p)!r}: {why}") from None
    return out


def derive_noun_ili_map(wordnet_dir: str | os.PathLike[str]) -> dict[str, str]:
    """wnid -> ILI id for every noun of a WordNet 3.0 database folder (its ``data.noun``),
    by CILI's numbering (see the module docstring).

    Raises:
        IliMapError: the folder has no readable ``data.noun``, or not WordNet 3.0's 82,115 nouns.
    """
    path = Path(wordnet_dir) / "data.noun"
    try:
        with open(path, "rb") as fh:
            offsets = sorted(int(line[:8]) for line in fh if line[:1].isdigit())
    except (OSError, ValueError) as exc:
        raise IliMapError(f"cannot read WordNet 3.0 nouns from {path}: {exc}") from None
    if len(offsets) != NOUN_SYNSETS:
        raise IliMapError(
            f"{path} holds {len(offsets)} noun synsets, WordNet 3.0 has {NOUN_SYNSETS}: "
            "give the folder of a WordNet 3.0 database (e.g. /usr/share/wordnet)"
        )
    return {f"n{off:08d}": f"i{FIRST_NOUN_ILI + rank}" for rank, off in enumerate(offsets)}


def build_ili_resource(
    source: str | os.PathLike[str] | Mapping[str, str],
    out: str | os.PathLike[str] = ILI_RESOURCE,
    *,
    checks: Mapping[str, str] = ILI_CHECKS,
) -> int:
    """Write the shipped noun map from CILI's ``ili-map-pwn30.tab`` (or a wnid -> ILI id mapping,
    e.g. from :func:`derive_noun_ili_map`); return how many synsets it maps.

    Raises:
        IliMapError: the source is malformed, or gives another id than CILI's published one for
            a checked synset it maps (e.g. a copy numbered by offset order gives dog.n.01
            ``i10816``), or maps none of them.
    """
    mapping = dict(source) if isinstance(source, Mapping) else parse_ili_map(source)
    if not any(w in mapping for w in checks):
        raise IliMapError(f"{source if not isinstance(source, Mapping) else 'the map'} maps none of "
                          f"the checked synsets {sorted(checks)}: it cannot be verified")
    for wnid, want in checks.items():
        if wnid not in mapping:
            continue
        got = mapping.get(wnid)
        if got != want:
            raise IliMapError(
                f"{'the map' if isinstance(source, Mapping) else source} maps {wnid} to {got!r}, "
                f"but CILI's id is {want!r}: not a genuine "
                "ili-map-pwn30.tab; take the file from https://github.com/globalwordnet/cili"
            )
    text = "".join(f"{w}\t{mapping[w]}\n" for w in sorted(mapping))
    target = Path(out)
    tmp = target.with_name(target.name + ".tmp")
    # no name and mtime 0 in the gzip header: the same input gives the same bytes anywhere
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
        fh.write(text.encode("utf-8"))
    os.replace(tmp, target)
    return len(mapping)


def load_ili_resource(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The shipped noun map (wnid -> ILI id; ``path`` default :data:`ILI_RESOURCE`); empty when
    the package ships none.

    Raises:
        IliMapError: the file exists but is unreadable.
    """
    p = Path(path) if path is not None else ILI_RESOURCE
    if not p.is_file():
        return {}
    try:
        with gzip.open(p, "rt", encoding="utf-8") as fh:
            return dict(line.rstrip("\n").split("\t", 1) for line in fh if line.strip())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise IliMapError(f"cannot read the shipped ILI map {p}: {exc}") from None
