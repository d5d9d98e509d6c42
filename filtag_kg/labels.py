"""Human labels of filters, beside (never mixed with) the machine tags.

People label filters in a CSV file with the columns :data:`LABEL_COLUMNS`
(``run, layer, filter, label, annotator, time``; the label is free text).
:func:`export_sheet` writes such a file for a run, one row per tagged filter with the
label left empty and, to help, the filter's tags, abstract tags and top images;
:func:`import_labels` reads a filled one into ``RUN/human_labels.tsv``, each label
normalised to WordNet by :func:`normalise_label`; :func:`agreement` compares them
with the tags (the FilTag paper's human evaluation).

**Normalisation** of a label's text:

1. lower case, surrounding punctuation and a leading article (``a``, ``an``, ``the``)
   removed, spaces as ``_``: "A musical instrument." is ``musical_instrument``;
2. looked up as a WordNet noun lemma; if absent, WordNet's noun detachment rules
   (morphy: ``-s``, ``-ses``, ``-xes``, ``-zes``, ``-ches``, ``-shes``, ``-men``,
   ``-ies``) and a few irregular plurals are applied to its last word, and the first
   form WordNet knows is used ("violins" is ``violin``, "brass instruments" is
   ``brass_instrument``);
3. a lemma with one noun sense in WordNet is linked to it; one with several is linked
   only when exactly one of its senses is related to the filter's machine tags (a hypernym
   or hyponym of, or equal to, a tag's synset: "dog" on a filter tagged with dog breeds);
   otherwise the label is kept as text and reported as ``ambiguous`` with its senses;
   a label WordNet does not know is kept and reported as ``unknown``.

Labels are stored apart from the tags and exported as their own resources
(``fk:HumanLabel``, ``prov:wasAttributedTo`` their annotator) in their own named graph.
"""

from __future__ import annotations

import csv
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_open, read_table_rows
from .errors import FiltagError
from .runfolder import load_profile_arrays, read_profile_meta
from .tagging import read_tag_rows
from .wordnet import WordNet, load_wordnet, map_classes

__all__ = [
    "AGREE_KINDS",
    "LABELS_FILE",
    "LABEL_COLUMNS",
    "SHEET_COLUMNS",
    "AgreementReport",
    "HumanLabel",
    "ImportResult",
    "LabelError",
    "Resolution",
    "agreement",
    "export_sheet",
    "format_agreement",
    "import_labels",
    "normalise_label",
    "read_labels",
]

LABEL_COLUMNS = ("run", "layer", "filter", "label", "annotator", "time")
#: The annotation sheet: the label columns, then what helps people label (ignored on import).
SHEET_COLUMNS = LABEL_COLUMNS + ("tags", "abstract_tags", "top_images")
LABELS_FILE = "human_labels.tsv"
SHEET_FILE = "label_sheet.csv"
STORED_COLUMNS = LABEL_COLUMNS + ("lemma", "status", "synset", "wnid", "how", "candidates")
#: How a linked human label relates to the filter's tags, best first.
AGREE_KINDS = ("tag", "abstract tag", "hypernym of a tag", "none")

_ARTICLES = ("a ", "an ", "the ")
_MORPHY = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
           ("men", "man"), ("ies", "y"))
_IRREGULAR = {"mice": "mouse", "geese": "goose", "teeth": "tooth", "feet": "foot", "children": "child",
              "people": "person", "oxen": "ox", "lice": "louse", "women": "woman", "men": "man"}


class LabelError(FiltagError):
    """A label file or sheet cannot be used (missing columns, bad filter numbers, no labels)."""


@dataclass(frozen=True)
class Resolution:
    """What a label's text was normalised to.

    Attributes:
        lemma: the normalised lemma looked up (``musical_instrument``), or the cleaned text.
        status: ``linked``, ``ambiguous``, ``unknown`` or ``empty``.
        synset: the linked synset's name (``None`` unless linked).
        wnid: its wnid.
        how: how it was linked or why not (one line).
        candidates: the lemma's senses when ambiguous.
    """

    lemma: str
    status: str
    synset: str | None = None
    wnid: str | None = None
    how: str = ""
    candidates: tuple[str, ...] = ()


def _clean(text: str) -> str:
    t = " ".join(text.replace("_", " ").split()).lower().strip(" .,;:!?\"'()[]")
    for a in _ARTICLES:
        if t.startswith(a):
            t = t[len(a):]
            break
    return "_".join(t.split())


def _forms(lemma: str) -> list[str]:
    """The lemma, then its last word's base forms by the noun detachment rules."""
    head, _, last = lemma.rpartition("_")
    pre = head + "_" if head else ""
    out = [lemma]
    if last in _IRREGULAR:
        out.append(pre + _IRREGULAR[last])
    for suffix, repl in _MORPHY:
        if last.endswith(suffix) and len(last) > len(suffix):
            out.append(pre + last[: -len(suffix)] + repl)
    return list(dict.fromkeys(out))


def normalise_label(text: str, *, wordnet: WordNet, context: Iterable[str] = ()) -> Resolution:
    """Normalise a free-text label to a WordNet noun synset (module docstring).

    Args:
        text: the label as typed.
        wordnet: the WordNet source.
        context: synsets of the filter's machine tags (names or wnids), to choose among
            the senses of an ambiguous lemma.

    >>> wn = load_wordnet(source="slice")
    >>> normalise_label("A musical instrument", wordnet=wn).synset
    'musical_instrument.n.01'
    >>> normalise_label("violins", wordnet=wn).synset
    'violin.n.01'
    """
    lemma = _clean(text)
    if not lemma:
        return Resolution("", "empty", how="no text")
    for form in _forms(lemma):
        senses = wordnet.lemma_senses(form)
        if not senses.senses:
            continue
        names = senses.names
        if senses.total == 1 and len(names) == 1:
            info = wordnet.synset(names[0])
            return Resolution(form, "linked", info.name, info.wnid,
                              "the lemma's only sense" + ("" if form == lemma else f" (as {form!r})"))
        tags = [wordnet.synset(t).name for t in context]
        related = [n for n in names if _related(wordnet, n, tags)]
        if len(related) == 1:
            info = wordnet.synset(related[0])
            return Resolution(form, "linked", info.name, info.wnid,
                              f"the one of {senses.total} senses related to the filter's tags")
        return Resolution(form, "ambiguous", how=f"{senses.total} noun senses; none or several related "
                          "to the filter's tags", candidates=names)
    return Resolution(lemma, "unknown", how="not a WordNet noun (nor a plural of one)")


def _related(wordnet: WordNet, sense: str, tags: Sequence[str]) -> bool:
    up = wordnet.ancestors(sense) | {sense}
    return any(t in up or sense in wordnet.ancestors(t) for t in tags)


@dataclass(frozen=True)
class HumanLabel:
    """One person's label of one filter, normalised (a row of ``human_labels.tsv``)."""

    run: str
    layer: str
    filter: int
    label: str
    annotator: str
    time: str
    resolution: Resolution

    def row(self) -> dict[str, str]:
        """The stored row (:data:`STORED_COLUMNS`)."""
        r = self.resolution
        return {"run": self.run, "layer": self.layer, "filter": str(self.filter), "label": self.label,
                "annotator": self.annotator, "time": self.time, "lemma": r.lemma, "status": r.status,
                "synset": r.synset or "", "wnid": r.wnid or "", "how": r.how,
                "candidates": " ".join(r.candidates)}


@dataclass
class ImportResult:
    """What :func:`import_labels` read: the labels stored, and the rows it reported."""

    labels: list[HumanLabel]
    path: Path
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Lines for the command line: counts by status, then every problem."""
        by = Counter(lab.resolution.status for lab in self.labels)
        lines = [f"imported {len(self.labels)} labels into {self.path}: "
                 + ", ".join(f"{n} {k}" for k, n in sorted(by.items()))]
        for lab in self.labels:
            r = lab.resolution
            if r.status != "linked":
                extra = f" ({', '.join(r.candidates)})" if r.candidates else ""
                lines.append(f"  {lab.layer} filter {lab.filter}: {lab.label!r} kept as text: "
                             f"{r.status}, {r.how}{extra}")
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _profile(run: Path) -> dict[str, Any]:
    """The run's ``profile.json`` (``{}`` for a run without one, e.g. imported tags)."""
    if not (run / "profile.json").is_file():
        return {}
    return read_profile_meta(run)


def _run_info(run: Path, prof: Mapping[str, Any]) -> tuple[str, list[str], list[tuple[str, str]]]:
    """The run's model spec, layer names and classes, from its profile (:func:`_profile`)
    or, without one, from ``tags.tsv``."""
    if prof:
        return (str((prof.get("model") or {}).get("spec") or run.name), [la["name"] for la in prof["layers"]],
                [(c["id"], c.get("label") or c["id"]) for c in prof["classes"]])
    if not (run / "tags.tsv").is_file():
        raise LabelError(f"{run} holds no tagged run (profile.json or tags.tsv); give the folder "
                         "`filtag-kg run` wrote")
    layers, classes = [], {}
    for t in _tags(run):
        layers.append(t["layer"])
        classes[t["class_id"]] = t["label"]
    return run.name, list(dict.fromkeys(layers)), list(classes.items())


def _tags(run: Path) -> list[dict[str, str]]:
    if not (run / "tags.tsv").is_file():
        return []
    return read_tag_rows(run / "tags.tsv")


def _filter_synsets(
    tags: Sequence[Mapping[str, str]], wordnet: WordNet
) -> dict[tuple[str, int], dict[tuple[str, str], list[str]]]:
    """Per filter, per setting ``(method, param)``, its tags' (rows of ``tags.tsv``) synset
    names (linked tags only)."""
    mapping = map_classes(sorted({(t["class_id"], t["label"]) for t in tags}), wordnet=wordnet)
    out: dict[tuple[str, int], dict[tuple[str, str], list[str]]] = defaultdict(lambda: defaultdict(list))
    for t in tags:
        syn = mapping.synset_of(t["class_id"])
        if syn is not None:
            out[(t["layer"], int(t["filter"]))][(t["method"], t["param"])].append(syn)
    return out


def import_labels(
    file: str | os.PathLike[str], run_dir: str | os.PathLike[str], *, wordnet: WordNet | None = None
) -> ImportResult:
    """Read a filled label CSV into ``RUN/human_labels.tsv`` (added to the labels already there).

    Rows with an empty label are skipped silently (an unfilled sheet row); rows of another
    run, an unknown layer or a filter out of range are skipped and reported. The same
    (layer, filter, annotator, label, time) is stored once.

    Raises:
        LabelError: the file lacks a column, cannot be read, or holds no label at all.
    """
    run, path = Path(run_dir), Path(file)
    wn = wordnet if wordnet is not None else load_wordnet()
    prof = _profile(run)
    spec, layers, _ = _run_info(run, prof)
    widths = _widths(prof)
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelError(f"cannot read the label file {path}: {exc}") from None
    missing = [c for c in LABEL_COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise LabelError(f"label file {path} lacks the column(s) {', '.join(missing)}; it needs "
                         f"{','.join(LABEL_COLUMNS)} (`filtag-kg labels export {run}` writes a sheet)")
    context = _filter_synsets(_tags(run), wn)
    problems: list[str] = []
    new: list[HumanLabel] = []
    for n, row in enumerate(rows, start=2):
        text = (row.get("label") or "").strip()
        if not text:
            continue
        where = f"{path.name} line {n}"
        if row.get("run") and row["run"] not in (spec, run.name):
            problems.append(f"{where}: skipped, run {row['run']!r} is not this run ({spec!r})")
            continue
        layer = (row.get("layer") or "").strip()
        if layer not in layers:
            problems.append(f"{where}: skipped, unknown layer {layer!r} (layers: {', '.join(layers[:8])})")
            continue
        try:
            f = int(str(row.get("filter")).strip())
        except ValueError:
            problems.append(f"{where}: skipped, filter {row.get('filter')!r} is not a number")
            continue
        if f < 0 or (layer in widths and f >= widths[layer]):
            problems.append(f"{where}: skipped, {layer} has no filter {f}")
            continue
        ctx = sorted({s for syns in context.get((layer, f), {}).values() for s in syns})
        who = (row.get("annotator") or "").strip() or "anonymous"
        new.append(HumanLabel(spec, layer, f, text, who, (row.get("time") or "").strip(),
                              normalise_label(text, wordnet=wn, context=ctx)))
    if not new:
        raise LabelError(f"label file {path} holds no label for this run; fill the label column "
                         f"({'; '.join(problems[:3]) or 'every label is empty'})")
    store = run / LABELS_FILE
    kept = read_labels(run) if store.is_file() else []
    seen = {(x.layer, x.filter, x.annotator, x.label, x.time) for x in kept}
    for lab in new:
        key = (lab.layer, lab.filter, lab.annotator, lab.label, lab.time)
        if key not in seen:
            kept.append(lab)
            seen.add(key)
    with atomic_open(store) as fh:
        w = csv.DictWriter(fh, fieldnames=STORED_COLUMNS, delimiter="\t", lineterminator="\n")
        w.writeheader()
        for lab in kept:
            w.writerow(lab.row())
    return ImportResult(new, store, problems)


def _widths(prof: Mapping[str, Any]) -> dict[str, int]:
    """Filters per layer, from a profile (:func:`_profile`; empty without one)."""
    return {la["name"]: int(la["width"]) for la in prof.get("layers", []) if "width" in la}


def read_labels(run_dir: str | os.PathLike[str]) -> list[HumanLabel]:
    """The labels stored in ``RUN/human_labels.tsv`` (``[]`` when there are none).

    Raises:
        DataError: the file is damaged (not UTF-8, a column or a cell missing), named with how
            to write it again.
    """
    path = Path(run_dir) / LABELS_FILE
    if not path.is_file():
        return []
    fix = f"move it away and import the label files again with `filtag-kg labels import FILE {run_dir}`"
    return [
        HumanLabel(r["run"], r["layer"], int(r["filter"]), r["label"], r["annotator"], r["time"],
                   Resolution(r["lemma"], r["status"], r["synset"] or None, r["wnid"] or None, r["how"],
                              tuple(r["candidates"].split())))
        for r in read_table_rows(path, STORED_COLUMNS, "label table", fix)
    ]


def export_sheet(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write an annotation sheet: one row per tagged filter, label columns empty.

    The ``tags`` column lists the filter's tags (all settings), ``abstract_tags`` its
    abstract tags (``abstract_tags.tsv``), ``top_images`` its top images (a run profiled
    with ``--top-images``), each ``; ``-separated.

    Raises:
        LabelError: the run has no tags.
    """
    run = Path(run_dir)
    prof = _profile(run)
    spec, layers, _ = _run_info(run, prof)
    tags = _tags(run)
    if not tags:
        raise LabelError(f"{run} has no tags.tsv; tag the run first (filtag-kg tag {run} --k 1)")
    by_filter: dict[tuple[str, int], list[str]] = defaultdict(list)
    for t in tags:
        by_filter[(t["layer"], int(t["filter"]))].append(t["label"])
    abstract: dict[tuple[str, int], list[str]] = defaultdict(list)
    if (run / "abstract_tags.tsv").is_file():
        with open(run / "abstract_tags.tsv", encoding="utf-8", newline="") as fh:
            for r in csv.DictReader(fh, delimiter="\t"):
                abstract[(r["layer"], int(r["filter"]))].append(r["lemma"].replace("_", " "))
    tops: dict[tuple[str, int], list[str]] = {}
    if prof and (run / "profile.npz").is_file():
        paths = prof.get("top_image_paths") or []
        arrays = load_profile_arrays(run, "top_index_") if paths else {}
        for i, layer in enumerate(layers):
            idx = arrays.get(f"top_index_{i:04d}")
            if idx is not None:
                for f in range(idx.shape[1]):
                    tops[(layer, f)] = [paths[j] for j in idx[:, f] if j >= 0]
    pos = {name: i for i, name in enumerate(layers)}
    target = Path(out) if out is not None else run / SHEET_FILE
    with atomic_open(target) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(SHEET_COLUMNS)
        for layer, f in sorted(by_filter, key=lambda k: (pos.get(k[0], 1 << 30), k[0], k[1])):
            w.writerow([spec, layer, f, "", "", "", "; ".join(dict.fromkeys(by_filter[(layer, f)])),
                        "; ".join(dict.fromkeys(abstract.get((layer, f), []))),
                        "; ".join(tops.get((layer, f), []))])
    return target


@dataclass
class AgreementReport:
    """How often human labels name a machine tag, an abstract tag or a hypernym of a tag.

    Attributes:
        setting: the tagging setting compared with (``top-k 1``).
        filters: per labelled filter, its labels with the kind of agreement each has
            (:data:`AGREE_KINDS`, or ``unlinked`` for a label kept as text).
        counts: over all labels, how many of each kind.
    """

    setting: str
    filters: list[dict[str, Any]]
    counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _kind(label: str, tags: Sequence[str], abstract: set[str], wordnet: WordNet) -> str:
    if label in tags:
        return "tag"
    if label in abstract:
        return "abstract tag"
    if any(label in wordnet.ancestors(t) for t in tags):
        return "hypernym of a tag"
    return "none"


def agreement(
    run_dir: str | os.PathLike[str], *, setting: str | None = None, wordnet: WordNet | None = None
) -> AgreementReport:
    """Compare the run's human labels with its tags under one setting (default: the first).

    The abstract tags are the most specific common hypernyms of the filter's tags
    (:meth:`~filtag_kg.wordnet.Hierarchy.common_hypernyms`, computed here, so
    ``abstract_tags.tsv`` is not needed). A label that is a tag counts as ``tag``; one
    that is an abstract tag as ``abstract tag``; any other hypernym of a tag as
    ``hypernym of a tag`` (the "type of" comparison of the FilTag paper); else ``none``.

    Raises:
        LabelError: the run has no human labels, or ``setting`` is not one of its settings.
    """
    from .wordnet import Hierarchy

    run = Path(run_dir)
    wn = wordnet if wordnet is not None else load_wordnet()
    labels = read_labels(run)
    if not labels:
        raise LabelError(f"{run} has no human labels; import some with `filtag-kg labels import FILE {run}`")
    tags = _tags(run)
    per_filter = _filter_synsets(tags, wn)
    settings = list(dict.fromkeys((t["method"], t["param"]) for t in tags))
    names = {f"{m} {p}".strip(): (m, p) for m, p in settings}
    if setting is None:
        chosen = settings[0] if settings else ("", "")
    elif setting in names:
        chosen = names[setting]
    else:
        raise LabelError(f"unknown setting {setting!r}; this run has {', '.join(names) or 'none'}")
    all_syn = sorted({s for d in per_filter.values() for ss in d.values() for s in ss})
    hier = Hierarchy.build(all_syn, wordnet=wn) if all_syn else None
    grouped: dict[tuple[str, int], list[HumanLabel]] = defaultdict(list)
    for lab in labels:
        grouped[(lab.layer, lab.filter)].append(lab)
    counts: Counter[str] = Counter()
    rows = []
    for (layer, f), labs in grouped.items():
        tags = sorted(set(per_filter.get((layer, f), {}).get(chosen, [])))
        abstract = {a.synset for a in hier.common_hypernyms(tags)} if hier is not None and tags else set()
        items = []
        for lab in labs:
            kind = _kind(lab.resolution.synset, tags, abstract, wn) if lab.resolution.synset else "unlinked"
            counts[kind] += 1
            items.append({"label": lab.label, "annotator": lab.annotator, "synset": lab.resolution.synset,
                          "agreement": kind})
        rows.append({"layer": layer, "filter": f, "tags": tags, "abstract_tags": sorted(abstract),
                     "labels": items})
    return AgreementReport(f"{chosen[0]} {chosen[1]}".strip(), rows,
                           {k: counts.get(k, 0) for k in (*AGREE_KINDS, "unlinked")})


def format_agreement(report: AgreementReport) -> str:
    """The report as a table per filter, then the overall counts and shares."""
    lines = [f"human labels vs tags ({report.setting})"]
    for r in report.filters:
        for lab in r["labels"]:
            lines.append(f"  {r['layer']} filter {r['filter']}: {lab['label']!r} ({lab['annotator']}) -> "
                         f"{lab['synset'] or 'unlinked'}: {lab['agreement']}")
    linked = sum(n for k, n in report.counts.items() if k != "unlinked")
    for k, n in report.counts.items():
        share = f" ({100 * n / linked:.0f}% of linked labels)" if linked and k != "unlinked" else ""
        lines.append(f"{k}: {n}{share}")
    return "\n".join(lines)
