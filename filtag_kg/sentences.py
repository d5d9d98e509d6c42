"""Short English sentences generated from a run's votes, tags and WordNet links.

Deterministic templates, no language model: the same run and WordNet give the same
sentences. Three kinds (each with a template id recorded beside the text):

* **image** (:data:`TEMPLATE_IMAGE`): per explanation record, the model's predicted
  class with its probability, whether the filters' votes agree, the layers whose
  active filters voted, the concepts they voted for, and how many of the most active
  tagged filters point to the leading concept, e.g. "Predicted Eskimo dog (61%); the
  filters' votes agree. Filters in layers features.24, features.26 and features.28
  respond to dogs (Siberian husky, malamute) and to dogsled; 9 of the 12 most active
  tagged filters point to dogs."
* **filter** (:data:`TEMPLATE_FILTER`): per tagged filter, its class distribution (the
  ``share`` of ``tags.tsv``: each class's profile value over the filter's sum over all
  classes), summed per concept.
* **class** (:data:`TEMPLATE_CLASS`): per class, the concepts its images vote for.

**Reader level.** Classes are named by their own labels; a group of classes is named by
a WordNet concept at the level a reader uses, found by this rule:

1. A synset's *familiarity* is the largest tag count among its lemmas: how often that
   sense was tagged in WordNet's semantic concordance (``index.sense``/``cntlist``,
   shipped as ``resources/wordnet30-noun-counts.tsv.gz`` so every WordNet source,
   the bundled slice included, gives the same answer). ``dog.n.01`` has 42,
   ``canine.n.02``, ``working_dog.n.01`` and ``sled_dog.n.01`` have 0.
2. A class's *reader concept* is its nearest proper hypernym (fewest steps up; among
   equally near ones the most familiar, then the first by name) whose familiarity is
   at least :data:`READER_MIN_COUNT` and whose depth is at least
   :data:`~filtag_kg.wordnet.MIN_ABSTRACT_DEPTH`, so never a top-level concept such as
   ``whole.n.02``. Siberian husky and malamute both give ``dog.n.01``; beagle gives
   ``hound.n.01``; tabby gives ``cat.n.01``.
3. Classes with the same reader concept form one group. A group is named by the
   concept's most frequent lemma in the plural, followed by its member classes in
   parentheses ("dogs (Siberian husky, malamute)"); a group with one member is named
   by that member's label alone. A class with no reader concept is its own group.
"""

from __future__ import annotations

import gzip
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import FiltagError, check_whole
from .runfolder import REPROFILE, load_profile_arrays, read_profile_meta
from .wordnet import MIN_ABSTRACT_DEPTH, Hierarchy, WordNet, load_wordnet, map_classes

__all__ = [
    "GENERATOR_VERSION",
    "KINDS",
    "READER_MIN_COUNT",
    "TEMPLATE_CLASS",
    "TEMPLATE_FILTER",
    "TEMPLATE_IMAGE",
    "Phrase",
    "ReaderLevel",
    "Sentence",
    "SentenceContext",
    "SentenceError",
    "class_sentences",
    "filter_sentences",
    "image_sentence",
    "image_sentences",
    "plural",
    "run_sentences",
    "sense_counts",
]

#: Version of the sentence generator; recorded as provenance beside every sentence.
GENERATOR_VERSION = "1"
TEMPLATE_IMAGE = "image-v1"
TEMPLATE_FILTER = "filter-v1"
TEMPLATE_CLASS = "class-v1"
KINDS = ("image", "filter", "class")
#: Smallest familiarity (tag count) of a concept that names a group of classes.
READER_MIN_COUNT = 2
#: How many of the most active tagged filters the image sentence counts.
TOP_FILTERS = 12
#: How many concept phrases a sentence names at most, and class names per phrase.
MAX_PHRASES = 3
MAX_MEMBERS = 3

COUNTS_FILE = "wordnet30-noun-counts.tsv.gz"


class SentenceError(FiltagError):
    """A run lacks what the sentences need (profile.json, tags.tsv, explanations)."""


@lru_cache(maxsize=1)
def sense_counts() -> Mapping[int, Mapping[str, int]]:
    """Tag counts of WordNet 3.0 noun senses: ``{offset: {lemma: count}}`` (counts > 0 only)."""
    path = Path(__file__).resolve().parent / "resources" / COUNTS_FILE
    out: dict[int, dict[str, int]] = defaultdict(dict)
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            offset, lemma, count = line.rstrip("\n").split("\t")
            out[int(offset)][lemma.lower()] = int(count)
    return dict(out)


_SAME_PLURAL = ("fish", "sheep", "deer", "series", "species", "moose", "swine", "bison")
_IRREGULAR = {"mouse": "mice", "goose": "geese", "person": "people", "child": "children",
              "foot": "feet", "tooth": "teeth", "louse": "lice", "ox": "oxen"}


def plural(noun: str) -> str:
    """English plural of a noun phrase (its last word), by a few regular rules.

    >>> [plural(w) for w in ("dog", "sled dog", "fish", "box", "butterfly", "fireman")]
    ['dogs', 'sled dogs', 'fish', 'boxes', 'butterflies', 'firemen']
    """
    head, _, last = noun.rpartition(" ")
    low = last.lower()
    if low in _SAME_PLURAL or low.endswith("fish") or not low.isalpha():
        out = last
    elif low in _IRREGULAR:
        out = _IRREGULAR[low]
    elif low.endswith("man") and low not in ("human", "shaman", "caiman"):
        out = last[:-3] + "men"
    elif low.endswith(("s", "x", "z", "ch", "sh")):
        out = last + "es"
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return f"{head} {out}" if head else out


class ReaderLevel:
    """Names classes and groups of classes at the level a reader uses (module docstring)."""

    def __init__(self, hierarchy: Hierarchy, wordnet: WordNet) -> None:
        self.hierarchy = hierarchy
        self.wordnet = wordnet
        self._counts = sense_counts()
        self._group: dict[str, str | None] = {}

    def familiarity(self, synset: str) -> int:
        """Largest tag count among the synset's lemmas (0 when none was tagged)."""
        offset = int(self.hierarchy.graph.nodes[synset]["wnid"][1:])
        return max(self._counts.get(offset, {}).values(), default=0)

    def name(self, synset: str) -> str:
        """The synset's most frequent lemma (ties: WordNet's order), spaces for ``_``."""
        info = self.wordnet.synset(synset)
        counts = self._counts.get(info.offset, {})
        best = max(info.lemmas, key=lambda lemma: counts.get(lemma.lower(), 0)) if info.lemmas else info.label
        return best.replace("_", " ")

    def depth(self, synset: str) -> int:
        """Shortest-path depth (``entity.n.01`` = 0)."""
        return self.hierarchy.depth(synset)

    def reader_concept(self, synset: str) -> str | None:
        """The nearest familiar proper hypernym of ``synset`` at depth >= MIN_ABSTRACT_DEPTH."""
        if synset in self._group:
            return self._group[synset]
        graph = self.hierarchy.graph
        frontier = sorted(set(graph.successors(synset)))
        seen = set(frontier)
        found: str | None = None
        while frontier and found is None:
            ok = [p for p in frontier
                  if self.depth(p) >= MIN_ABSTRACT_DEPTH and self.familiarity(p) >= READER_MIN_COUNT]
            if ok:
                found = min(ok, key=lambda p: (-self.familiarity(p), p))
                break
            nxt = sorted({q for p in frontier for q in graph.successors(p)} - seen)
            seen.update(nxt)
            frontier = nxt
        self._group[synset] = found
        return found


@dataclass(frozen=True)
class Phrase:
    """One concept phrase of a sentence.

    Attributes:
        key: the group's reader concept (a synset name), or ``"class:ID"`` for a class
            that is its own group.
        head: the concept's name alone ("dogs", "violin").
        detail: what the parentheses after the head hold ("Siberian husky, malamute",
            "31 classes"; empty for a single class).
        concept: the reader concept's synset name when the phrase names it, else ``None``.
        members: the class ids the phrase covers (those named, and any left unnamed).
        amount: the votes (image, class) or share of mass (filter) the members add up to.
    """

    key: str
    head: str
    detail: str
    concept: str | None
    members: tuple[str, ...]
    amount: float

    @property
    def text(self) -> str:
        """The phrase as written: head, then its detail in parentheses."""
        return f"{self.head} ({self.detail})" if self.detail else self.head

    def with_note(self, note: str) -> str:
        """The phrase with a note (a percentage) before its detail: "dogs (54%: beagle, basset)"."""
        return f"{self.head} ({note}: {self.detail})" if self.detail else f"{self.head} ({note})"


@dataclass(frozen=True)
class Sentence:
    """A generated sentence with what it is about and how it was made.

    Attributes:
        kind: ``"image"``, ``"filter"`` or ``"class"``.
        subject: what it describes: the record's index (image), ``(layer, filter)``
            (filter) or the class id (class), as a dict.
        text: the English sentence.
        template: the template id.
        phrases: the concept phrases it names, in order.
        classes: class ids it names outside the phrases (the prediction).
    """

    kind: str
    subject: dict[str, Any]
    text: str
    template: str
    phrases: tuple[Phrase, ...] = ()
    classes: tuple[str, ...] = ()
    generator_version: str = field(default=GENERATOR_VERSION)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": self.kind, **self.subject, "text": self.text, "template": self.template,
            "generator_version": self.generator_version,
            "concepts": [
                {"key": p.key, "name": p.head, "detail": p.detail, "synset": p.concept,
                 "classes": list(p.members), "amount": p.amount}
                for p in self.phrases
            ],
        }


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _and(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


@dataclass
class SentenceContext:
    """What the sentences of one run need: classes, layers, tags, WordNet groups.

    Build it with :meth:`from_run`; it reads no explanation records itself.
    """

    class_labels: dict[str, str]
    class_order: dict[str, int]
    layers: list[str]
    tags: dict[tuple[str, str, str, int], list[str]]
    shares: dict[tuple[str, int], dict[str, float]]
    reader: ReaderLevel | None
    synsets: dict[str, str]
    run_dir: Path | None = None

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], *, wordnet: WordNet | None = None) -> SentenceContext:
        """Read ``profile.json``, ``tags.tsv`` (and ``profile.npz`` when present) of a run.

        Raises:
            SentenceError: ``profile.json`` or ``tags.tsv`` is missing.
        """
        run = Path(run_dir)
        for name in ("profile.json", "tags.tsv"):
            if not (run / name).is_file():
                raise SentenceError(
                    f"{str(run / name)!r} is missing; sentences need a profiled and tagged run "
                    f"(filtag-kg run, or filtag-kg profile and filtag-kg tag)"
                )
        prof = read_profile_meta(run)
        classes = [(c["id"], c.get("label") or c["id"]) for c in prof["classes"]]
        layers = [layer["name"] for layer in prof["layers"]]
        wn = wordnet if wordnet is not None else load_wordnet()
        mapping = map_classes(classes, wordnet=wn)
        synsets = {cid: link.synset for cid, link in mapping.links.items() if link.synset}
        reader = None
        if synsets:
            reader = ReaderLevel(Hierarchy.build(sorted(set(synsets.values())), wordnet=wn), wn)
        tags: dict[tuple[str, str, str, int], list[str]] = defaultdict(list)
        shares: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
        from .tagging import read_tags_tsv

        for t in read_tags_tsv(run / "tags.tsv"):
            tags[(t.method, t.param, t.layer, t.filter)].append(t.class_id)
            if not math.isnan(t.share):
                shares[(t.layer, t.filter)][t.class_id] = t.share
        ctx = cls(
            class_labels=dict(classes), class_order={c: i for i, (c, _) in enumerate(classes)},
            layers=layers, tags=dict(tags), shares=dict(shares), reader=reader, synsets=synsets,
            run_dir=run,
        )
        ctx._profile_shares(run / "profile.npz")
        return ctx

    def _profile_shares(self, path: Path) -> None:
        """Replace the tagged classes' shares by every class's share when the profile is there."""
        if not path.is_file():
            return
        import numpy as np

        from .tagging import class_shares

        npz = load_profile_arrays(path.parent, ("counts", "means_"))
        counts = npz.get("counts")
        if counts is None:
            raise SentenceError(f"{path} holds no image counts per class; {REPROFILE}")
        ids = list(self.class_labels)
        for i, layer in enumerate(self.layers):
            key = f"means_{i:04d}"
            if key not in npz:
                return
            sh = class_shares(npz[key], counts)
            for f in range(sh.shape[1]):
                if (layer, f) in self.shares:
                    col = sh[:, f]
                    self.shares[(layer, f)] = {ids[c]: float(col[c]) for c in np.nonzero(col > 0)[0]}

    # -- grouping ------------------------------------------------------------
    def key_of(self, class_id: str) -> str:
        """The group a class belongs to: its reader concept, else ``class:ID``."""
        syn = self.synsets.get(class_id)
        if syn is not None and self.reader is not None:
            group = self.reader.reader_concept(syn)
            if group is not None:
                return group
        return f"class:{class_id}"

    def label(self, class_id: str) -> str:
        """The class's label (its id when it has none), with spaces for ``_``."""
        return self.class_labels.get(class_id, class_id).replace("_", " ")

    def phrases(self, amounts: Mapping[str, float], *, limit: int = MAX_PHRASES,
                unit: str = "") -> list[Phrase]:
        """Group classes with an amount > 0 by reader concept; largest groups first.

        Args:
            amounts: per class id, its votes or share.
            limit: how many phrases to return.
            unit: ``""`` lists member labels in parentheses; ``"classes"`` writes
                their count instead (for filters, where groups are large).
        """
        groups: dict[str, list[str]] = defaultdict(list)
        for cid, amount in amounts.items():
            if amount > 0:
                groups[self.key_of(cid)].append(cid)
        order = self.class_order

        def rank(cid: str) -> tuple[float, int, str]:
            return (-amounts[cid], order.get(cid, 1 << 30), cid)

        out = []
        for key, members in groups.items():
            members.sort(key=rank)
            total = float(sum(amounts[c] for c in members))
            if len(members) == 1:
                head, detail, concept = self.label(members[0]), "", None
            else:
                assert self.reader is not None  # only a reader concept groups classes
                head, concept = plural(self.reader.name(key)), key
                if unit:
                    detail = f"{len(members)} {unit}"
                else:
                    named = [self.label(c) for c in members[:MAX_MEMBERS]]
                    more = len(members) - len(named)
                    detail = ", ".join(named) + (f" and {more} more" if more else "")
            out.append(Phrase(key, head, detail, concept, tuple(members), total))
        out.sort(key=lambda p: (-p.amount, min(order.get(c, 1 << 30) for c in p.members), p.key))
        return out[:limit]

    def layer_text(self, layers: Iterable[str]) -> str:
        """"layer A", "layers A and B", or "N layers from A to B" (in model order)."""
        pos = {name: i for i, name in enumerate(self.layers)}
        names = sorted(set(layers), key=lambda n: (pos.get(n, 1 << 30), n))
        if len(names) == 1:
            return f"layer {names[0]}"
        if len(names) <= 3:
            return f"layers {_and(names)}"
        return f"{len(names)} layers from {names[0]} to {names[-1]}"


def setting_key(rec: Mapping[str, Any]) -> tuple[str, str]:
    """The ``(method, param)`` key of an explanation record's tagging setting, as
    :attr:`SentenceContext.tags` is keyed (the sentence and its phrase heatmaps both use it)."""
    return str(rec.get("method")), "" if rec.get("param") is None else str(rec.get("param"))


def _voted(rec: Mapping[str, Any]) -> dict[str, float]:
    """Per class, its votes in the record, for the classes that received a vote."""
    votes = {c: float(v) for c, v in (rec.get("votes") or {}).items()}
    counts = rec.get("vote_counts") or {}
    if counts:
        return {c: votes.get(c, 0.0) if votes.get(c, 0.0) > 0 else 1e-12
                for c, n in counts.items() if n > 0}
    return {c: v for c, v in votes.items() if v > 0}


def image_sentence(ctx: SentenceContext, rec: Mapping[str, Any]) -> Sentence:
    """The sentence of one explanation record (template :data:`TEMPLATE_IMAGE`)."""
    top = rec.get("model_top") or []
    pred = rec.get("prediction")
    named: list[str] = []
    if top:
        cid = top[0]["class_id"]
        named.append(cid)
        head = f"Predicted {ctx.label(cid)} ({_pct(float(top[0].get('prob') or 0.0))})"
        if pred is None:
            head += "."
        elif pred == cid:
            head += "; the filters' votes agree."
        else:
            named.append(pred)
            head += f", but the filters' votes favour {ctx.label(pred)}."
    elif pred is not None:
        named.append(pred)
        head = f"The filters' votes favour {ctx.label(pred)}."
    else:
        head = "No prediction was recorded."
    voted = _voted(rec)
    phrases = ctx.phrases(voted)
    subject = {"index": rec.get("index"), "image": rec.get("image"), "method": rec.get("method"),
               "param": rec.get("param"), "perturbation": rec.get("perturbation"),
               "weighting": rec.get("weighting")}
    if not phrases:
        text = f"{head} None of its active filters is tagged, so no concept explains it."
        return Sentence("image", subject, text, TEMPLATE_IMAGE, (), tuple(named))
    setting = setting_key(rec)
    pos = {name: i for i, name in enumerate(ctx.layers)}
    tagged = []  # (value, layer position, rank, layer, tag classes)
    for layer, rows in (rec.get("active_filters") or {}).items():
        for row in rows:
            classes = ctx.tags.get((*setting, layer, int(row["filter"])))
            if classes:
                tagged.append((-float(row["value"]), pos.get(layer, 1 << 30), int(row.get("rank") or 0),
                               layer, classes))
    tagged.sort(key=lambda t: t[:3])
    keys = {p.key for p in phrases}
    layers = [t[3] for t in tagged if any(ctx.key_of(c) in keys for c in t[4])]
    body = _and(["to " + p.text for p in phrases])
    text = f"{head} Filters in {ctx.layer_text(layers)} respond {body}"
    most = tagged[:TOP_FILTERS]
    lead = phrases[0]
    n = sum(1 for t in most if any(ctx.key_of(c) == lead.key for c in t[4]))
    if most:
        verb = "points" if n == 1 else "point"
        text += f"; {n} of the {len(most)} most active tagged filters {verb} to {lead.head}."
    else:
        text += "."
    return Sentence("image", subject, text, TEMPLATE_IMAGE, tuple(phrases), tuple(named))


def image_sentences(ctx: SentenceContext, records: Iterable[Mapping[str, Any]]) -> Iterator[Sentence]:
    """:func:`image_sentence` of every record."""
    for rec in records:
        yield image_sentence(ctx, rec)


def filter_sentences(ctx: SentenceContext) -> Iterator[Sentence]:
    """One sentence per tagged filter, from its class shares (template :data:`TEMPLATE_FILTER`)."""
    pos = {name: i for i, name in enumerate(ctx.layers)}
    for layer, f in sorted(ctx.shares, key=lambda k: (pos.get(k[0], 1 << 30), k[0], k[1])):
        shares = ctx.shares[(layer, f)]
        phrases = ctx.phrases(shares, limit=2, unit="classes")
        subject = {"layer": layer, "filter": f}
        if not phrases:
            continue
        parts = [p.with_note(_pct(p.amount) + (" of its mass" if i == 0 else ""))
                 for i, p in enumerate(phrases)]
        text = f"Filter {f} of {layer} responds most to {_and(parts)}."
        yield Sentence("filter", subject, text, TEMPLATE_FILTER, tuple(phrases))


def class_of(rec: Mapping[str, Any]) -> str | None:
    """The class a record belongs to: its true class, else the model's top-1."""
    if rec.get("true_class"):
        return str(rec["true_class"])
    top = rec.get("model_top") or []
    return str(top[0]["class_id"]) if top else None


def class_sentences(ctx: SentenceContext, records: Iterable[Mapping[str, Any]]) -> Iterator[Sentence]:
    """Per class, the concepts its clean images vote for (template :data:`TEMPLATE_CLASS`).

    Records under a perturbation are left out; with several settings, the first
    setting met is used, so a class's votes are not counted twice.
    """
    setting: tuple[Any, Any] | None = None
    votes: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    images: dict[str, int] = defaultdict(int)
    for rec in records:
        if rec.get("perturbation"):
            continue
        key = (rec.get("method"), rec.get("param"))
        if setting is None:
            setting = key
        if key != setting:
            continue
        cid = class_of(rec)
        if cid is None:
            continue
        images[cid] += 1
        for c, v in _voted(rec).items():
            votes[cid][c] += v
    for cid in sorted(images, key=lambda c: (ctx.class_order.get(c, 1 << 30), c)):
        total = sum(votes[cid].values())
        phrases = ctx.phrases(votes[cid])
        subject = {"class_id": cid, "method": setting[0] if setting else None,
                   "param": setting[1] if setting else None}
        n = images[cid]
        lead = f"Images of {ctx.label(cid)} ({n} image{'s' if n != 1 else ''})"
        if not phrases or total <= 0:
            text = f"{lead} activate no tagged filter."
        else:
            parts = [p.with_note(_pct(p.amount / total) + (" of their votes" if i == 0 else ""))
                     for i, p in enumerate(phrases)]
            text = f"{lead} vote mostly for {_and(parts)}."
        yield Sentence("class", subject, text, TEMPLATE_CLASS, tuple(phrases), (cid,))


def run_sentences(
    run_dir: str | os.PathLike[str], *, kinds: Sequence[str] = KINDS, wordnet: WordNet | None = None,
    limit: int | None = None,
) -> Iterator[Sentence]:
    """Every sentence of a run, kind by kind (``image``, ``filter``, ``class``).

    Args:
        run_dir: a profiled and tagged run (with explanations for image and class sentences).
        kinds: which kinds to generate.
        wordnet: the WordNet source; default :func:`~filtag_kg.wordnet.load_wordnet`.
        limit: at most this many image sentences (``None``: all).

    Raises:
        SentenceError: an unknown kind, or the run lacks what a kind needs.
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise SentenceError(f"unknown sentence kind {bad[0]!r}; use {', '.join(KINDS)}")
    check_whole("--limit", limit, 0)
    ctx = SentenceContext.from_run(run_dir, wordnet=wordnet)
    needs_records = "image" in kinds or "class" in kinds
    if needs_records:
        from .explanations_io import iter_explanations

        run = Path(run_dir)
        if not any((run / n).exists() for n in ("explanations.parquet", "explanations.jsonl")):
            raise SentenceError(
                f"{str(run)!r} has no explanations; run filtag-kg explain {str(run)!r} first, "
                f"or ask only for --kind filter"
            )
    if "image" in kinds:
        for i, rec in enumerate(iter_explanations(run_dir)):
            if limit is not None and i >= limit:
                break
            yield image_sentence(ctx, rec)
    if "filter" in kinds:
        yield from filter_sentences(ctx)
    if "class" in kinds:
        yield from class_sentences(ctx, iter_explanations(run_dir))
