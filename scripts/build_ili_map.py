"""Build the CILI noun map shipped in the package.

Usage:
    python scripts/build_ili_map.py path/to/ili-map-pwn30.tab
    python scripts/build_ili_map.py --from-wordnet /usr/share/wordnet

Writes ``filtag_kg/resources/ili-map-pwn30-nouns.tsv.gz`` (wnid<TAB>ILI id for every
WordNet 3.0 noun synset; byte-identical for the same input). The source is CILI's
``ili-map-pwn30.tab`` (https://github.com/globalwordnet/cili, CC BY 4.0), or a WordNet
3.0 database folder, from whose ``data.noun`` the ids follow by CILI's numbering (see
``filtag_kg/wordnet/ili.py``). Either way the result must give the ids published outside
this package (``ILI_CHECKS``: entity, person, dog, cat, tree), else nothing is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filtag_kg.wordnet.ili import (  # noqa: E402
    ILI_RESOURCE,
    IliMapError,
    build_ili_resource,
    derive_noun_ili_map,
)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--from-wordnet":
        source = argv[1]
    elif len(argv) == 1 and not argv[0].startswith("-"):
        source = argv[0]
    else:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        mapping = derive_noun_ili_map(source) if argv[0] == "--from-wordnet" else source
        n = build_ili_resource(mapping)
    except IliMapError as exc:
        print(f"build_ili_map: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {ILI_RESOURCE}: {n} noun synsets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
