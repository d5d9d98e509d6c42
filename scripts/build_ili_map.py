"""Build the CILI noun map shipped in the package from CILI's ``ili-map-pwn30.tab``.

Usage:
    python scripts/build_ili_map.py path/to/ili-map-pwn30.tab

Writes ``filtag_kg/resources/ili-map-pwn30-nouns.tsv.gz`` (wnid<TAB>ILI id for every
WordNet 3.0 noun synset CILI maps; byte-identical for the same input), after checking
that the file gives CILI's published ids (dog.n.01 = i46360); a copy numbered otherwise
is refused. Take the file from https://github.com/globalwordnet/cili (CC BY 4.0) and
add its attribution to ``filtag_kg/resources/WORDNET-LICENSE.txt`` when shipping it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filtag_kg.wordnet.ili import ILI_RESOURCE, IliMapError, build_ili_resource  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        n = build_ili_resource(argv[0])
    except IliMapError as exc:
        print(f"build_ili_map: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {ILI_RESOURCE}: {n} noun synsets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
