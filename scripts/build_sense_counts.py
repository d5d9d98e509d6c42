"""Build ``filtag_kg/resources/wordnet30-noun-counts.tsv.gz`` from a WordNet 3.0 database.

WordNet's ``index.sense`` gives, per sense key, the synset offset, the sense number and
the tag count (how often that sense was tagged in the semantic concordance; the same
numbers as ``cntlist``). The file written keeps every noun sense with a count above 0
as ``offset<TAB>lemma<TAB>count`` lines, sorted, so :mod:`filtag_kg.sentences` names
concepts by the same frequencies whichever WordNet source is active (the bundled slice
has sense numbers but no counts).

Usage: ``python scripts/build_sense_counts.py /usr/share/wordnet``
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "filtag_kg" / "resources" / "wordnet30-noun-counts.tsv.gz"


def main(db: str) -> None:
    """Read ``DB/index.sense`` and write the counts file."""
    rows = set()
    with open(Path(db) / "index.sense", encoding="utf-8") as fh:
        for line in fh:
            key, offset, _sense, count = line.split()
            lemma, _, lex = key.partition("%")
            if lex.startswith("1:") and int(count) > 0:
                rows.add((int(offset), lemma, int(count)))
    with gzip.GzipFile(OUT, "wb", mtime=0) as fh:
        fh.write(b"offset\tlemma\tcount\n")
        for offset, lemma, count in sorted(rows):
            fh.write(f"{offset:08d}\t{lemma}\t{count}\n".encode())
    print(f"{len(rows)} noun senses with a tag count > 0 -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/wordnet")
