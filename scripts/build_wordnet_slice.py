#!/usr/bin/env python3
"""Build ``filtag_kg/resources/wordnet30-slice.json.gz`` from full WordNet 3.0.

The slice lets filtag-kg link tags and reason over hypernyms with no WordNet
installed: it holds every noun synset on the hypernym paths (hypernym and
instance-hypernym edges, up to ``entity.n.01``) of the 1000 ImageNet-1k
classes and of the demo's shape classes, each with its lemmas, the sense
number of each lemma, its definition and its parent edges. For every lemma
in the slice it also records how many noun senses that lemma has in full
WordNet, so that a look-up on the slice can still tell an ambiguous lemma
from an unambiguous one.

Usage::

    python scripts/build_wordnet_slice.py [--wordnet-dir /usr/share/wordnet]
        [--extra WNID ...] [--out PATH]

The output is deterministic (sorted, gzip with a zero timestamp), so
rebuilding from the same WordNet gives the same bytes. WordNet's license
(``resources/WORDNET-LICENSE.txt``) applies to the slice.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from filtag_kg.imagenet import imagenet1k_classes  # noqa: E402
from filtag_kg.wordnet.source import (  # noqa: E402
    SHAPE_CLASSES,
    SLICE_FORMAT,
    WORDNET_VERSION,
    load_wordnet,
    slice_path,
    synset_closure,
)


def build(wordnet_dir: str | None, extra: list[str]) -> dict:
    """The slice document, from a complete WordNet source."""
    wn = load_wordnet(wordnet_dir=wordnet_dir) if wordnet_dir else load_wordnet()
    if not wn.complete:
        raise SystemExit(
            "full WordNet 3.0 is needed to build the slice (found only the slice itself); "
            "pass --wordnet-dir /usr/share/wordnet or install nltk's wordnet corpus"
        )
    seeds = [c.wnid for c in imagenet1k_classes()] + list(SHAPE_CLASSES) + list(extra)
    names = synset_closure(wn, seeds)
    rows = []
    lemma_totals: dict[str, int] = {}
    for name in names:
        info = wn.synset(name)
        senses = []
        for lemma in info.lemmas:
            found = wn.lemma_senses(lemma)
            lemma_totals[found.lemma] = found.total
            numbers = [n for n, s in found.senses if s == name]
            if len(numbers) != 1:
                raise SystemExit(f"lemma {lemma!r} of {name} has no unique sense number")
            senses.append(numbers[0])
        rows.append(
            [
                info.offset,
                info.name,
                list(info.lemmas),
                senses,
                info.definition,
                [wn.synset(h).offset for h in info.hypernyms],
                [wn.synset(h).offset for h in info.instance_hypernyms],
            ]
        )
    return {
        "format": SLICE_FORMAT,
        "format_version": 1,
        "wordnet_version": WORDNET_VERSION,
        "license": "WordNet 3.0 license, see WORDNET-LICENSE.txt",
        "built_from": wn.source,
        "seeds": {
            "imagenet1k": 1000,
            "shapes": sorted(SHAPE_CLASSES),
            "extra": sorted(extra),
        },
        "columns": [
            "offset", "name", "lemmas", "sense_numbers", "definition", "hypernyms",
            "instance_hypernyms",
        ],
        "synsets": rows,
        "lemma_totals": dict(sorted(lemma_totals.items())),
    }


def write(doc: dict, out: Path) -> None:
    """Write ``doc`` as gzipped JSON with stable bytes."""
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(text.encode("utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wordnet-dir", help="WordNet 3.0 database folder (default: auto)")
    ap.add_argument("--extra", nargs="*", default=[], help="more wnids to include")
    ap.add_argument("--out", type=Path, default=slice_path(), help="output file")
    args = ap.parse_args(argv)
    doc = build(args.wordnet_dir, args.extra)
    write(doc, args.out)
    print(
        f"wrote {args.out}: {len(doc['synsets'])} synsets, {len(doc['lemma_totals'])} lemmas, "
        f"{args.out.stat().st_size} bytes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
