"""WordNet 3.0 noun synsets to the Collaborative Interlingual Index (CILI), offline.

CILI (https://github.com/globalwordnet/cili, CC BY 4.0) gives each concept a
version-independent id (dog.n.01 is ``i46360``) and maps WordNet 3.0 offsets to
those ids in ``ili-map-pwn30.tab`` (lines ``iNNN<TAB>XXXXXXXX-p``). The export
links each synset with ``skos:exactMatch`` to ``http://globalwordnet.org/ili/iNNN``
when it has the map: given explicitly (``export --ili-map FILE``), or shipped in
the package as :data:`ILI_RESOURCE`, which :func:`build_ili_resource` writes
(``scripts/build_ili_map.py``) after checking the source against known ids, so
that a renumbered copy of the file never becomes identity links.
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
    "load_ili_resource",
    "parse_ili_map",
]

#: The noun map shipped with the package (wnid<TAB>ILI id, gzip), when it was built.
ILI_RESOURCE = Path(__file__).resolve().parent.parent / "resources" / "ili-map-pwn30-nouns.tsv.gz"

#: Ids a genuine CILI map must give (published by CILI and Wikidata P5063): dog.n.01 = i46360.
ILI_CHECKS: dict[str, str] = {"n02084071": "i46360"}


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


def build_ili_resource(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str] = ILI_RESOURCE,
    *,
    checks: Mapping[str, str] = ILI_CHECKS,
) -> int:
    """Write the shipped noun map from CILI's ``ili-map-pwn30.tab``; return how many synsets it maps.

    Raises:
        IliMapError: the source is malformed, or gives another id than CILI's published one for
            a checked synset (e.g. a copy numbered by offset order gives dog.n.01 ``i10816``).
    """
    mapping = parse_ili_map(source)
    for wnid, want in checks.items():
        got = mapping.get(wnid)
        if got != want:
            raise IliMapError(
                f"{source} maps {wnid} to {got!r}, but CILI's id is {want!r}: not a genuine "
                "ili-map-pwn30.tab; take the file from https://github.com/globalwordnet/cili"
            )
    text = "".join(f"{w}\t{mapping[w]}\n" for w in sorted(mapping))
    target = Path(out)
    tmp = target.with_name(target.name + ".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as fh:  # mtime 0: the same input gives the same bytes
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
