"""Import tag files written by the original FilTag code.

The reference implementation (Nguyen et al., AIMLAI@CIKM'22) writes one text
file per layer and setting, e.g. ``EXAMPLE_FilterTags_VGG16_conv5-3_k1.txt``::

    filter tags k=1
    0:[' chiton ', ' soccer_ball ']
    1:[' cornet ', ' French_horn ', ' trombone ']
    3:[]
    44:[' jellyfish ', " jack-o'-lantern ", ' stove ']

The first line names the setting (``k=N``: top-k, ``k=0``: the reference's
above-average rule; ``k%=Q`` / ``q=Q%``: top-percent). Each further line is
``FILTER:LIST``, a Python list literal of ImageNet class names padded with a
space on each side (``repr`` of the strings, so a name with an apostrophe is
double-quoted). The reference appends tags class by class, so a line lists
its classes in class-index order; it records no score and no rank.

Names are ImageNet-1k labels (:mod:`filtag_kg.imagenet`). Two labels name two
classes each (``crane``: bird n02012849 / machine n03126707; ``maillot``:
n03710637 / n03710721); such a name is ambiguous and is reported with its
candidates, never guessed. Opt-in remedies: ``resolve_by_order=True`` uses the
class-index order of the line when it leaves exactly one candidate (e.g.
``crane`` between ``prairie_chicken`` (83) and ``bustard`` (138) can only be
the bird, 134), and ``on_problem="keep"`` keeps unresolved tags with the
name as class id, unlinked.

Resolution by elimination needs no option, as it is a deduction: under top-k
``K`` every class tags exactly ``K`` filters of the layer, so once a class is
seen ``K`` times in the file (by a unique name or a resolved one), no other
occurrence can be it. In the public VGG16 ``k=1`` example the ``crane`` on line
374 is the bird by class order, so the lone ``crane`` on line 426 can only be
the machine. A file that misses lines never makes this wrong (only classes
already seen ``K`` times are ruled out).
"""

from __future__ import annotations

import ast
import hashlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._io import write_json
from .errors import DataError, FiltagError
from .imagenet import WNID_PATTERN, imagenet1k_classes, imagenet_by_label
from .tagging import ABOVE_AVERAGE, TOP_K, TOP_PERCENT, Tag, write_tags_tsv

__all__ = [
    "AmbiguousLabelError",
    "FiltagFileError",
    "ImportResult",
    "LabelProblem",
    "import_filtag",
    "parse_filtag_file",
]

_LINE_RE = re.compile(r"\s*(\d+)\s*:\s*(\[.*\])\s*")
_K_RE = re.compile(r"\bk\s*=\s*(\d+)\s*$", re.IGNORECASE)
_PCT_RE = re.compile(r"\b(?:k\s*%\s*=\s*|q\s*=\s*)(\d+(?:\.\d+)?)\s*%?\s*$", re.IGNORECASE)

ON_PROBLEM = ("error", "keep")


class FiltagFileError(DataError):
    """A FilTag tag file is missing or malformed (the message names file and line)."""


class AmbiguousLabelError(FiltagError):
    """Tag names that are ambiguous or unknown as ImageNet-1k labels.

    Attributes:
        problems: every problem found in the file, in file order.
    """

    def __init__(self, path: str, problems: Sequence[LabelProblem]) -> None:
        self.problems = list(problems)
        head = (
            f"{path}: {len(self.problems)} tag name(s) cannot be linked to one ImageNet-1k "
            f"class"
        )
        shown = [f"  {p.describe()}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            shown.append(f"  ... and {len(self.problems) - 20} more")
        hint = (
            "resolve with --resolve-by-order (uses the class order of each line) or keep them "
            "unlinked with --keep-unresolved"
        )
        super().__init__("\n".join([head, *shown, hint]))


@dataclass(frozen=True)
class LabelProblem:
    """One tag name that does not identify exactly one ImageNet-1k class.

    Attributes:
        line: 1-based line number in the file.
        filter: the filter index of that line.
        name: the (stripped) tag name.
        kind: ``"ambiguous"`` (several classes have this label) or
            ``"unknown"`` (no class has it).
        candidates: wnids of the classes with this label.
        resolved: the wnid chosen by class order or elimination, or ``None``.
        resolved_by: ``"class order"`` or ``"elimination"`` (``None`` when unresolved).
    """

    line: int
    filter: int
    name: str
    kind: str
    candidates: tuple[str, ...] = ()
    resolved: str | None = None
    resolved_by: str | None = None

    def describe(self) -> str:
        """One line for the user."""
        where = f"line {self.line} (filter {self.filter})"
        if self.kind == "unknown":
            return f"{where}: {self.name!r} is not an ImageNet-1k class name"
        text = f"{where}: {self.name!r} is ambiguous: {' or '.join(self.candidates)}"
        return text + (f"; resolved to {self.resolved} by {self.resolved_by}" if self.resolved else "")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "line": self.line,
            "filter": self.filter,
            "name": self.name,
            "kind": self.kind,
            "candidates": list(self.candidates),
            "resolved": self.resolved,
            "resolved_by": self.resolved_by,
        }


@dataclass
class ImportResult:
    """Tags read from a FilTag file, with what could not be resolved."""

    tags: list[Tag]
    method: str
    param: str
    filters: int
    problems: list[LabelProblem] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def unresolved(self) -> list[LabelProblem]:
        """Problems left without a resolution."""
        return [p for p in self.problems if p.resolved is None]


def _parse_header(line: str, path: str) -> tuple[str, str]:
    text = line.strip()
    m = _PCT_RE.search(text)
    if m:
        q = float(m.group(1))
        if not 0 < q <= 100:
            raise FiltagFileError(f"{path}:1: percentage {q:g} in {text!r} is not in (0, 100]")
        return TOP_PERCENT, f"{q:g}"
    m = _K_RE.search(text)
    if m:
        k = int(m.group(1))
        return (ABOVE_AVERAGE, "") if k == 0 else (TOP_K, str(k))
    raise FiltagFileError(
        f"{path}:1: expected a header such as 'filter tags k=1' (k=0 for above-average, "
        f"'k%=5' for top-percent), got {text!r}"
    )


def _parse_line(text: str, number: int, path: str) -> tuple[int, list[str]]:
    m = _LINE_RE.fullmatch(text)
    if m is None:
        raise FiltagFileError(
            f"{path}:{number}: expected 'FILTER:[names...]' (e.g. \"3:[' cornet ']\"), "
            f"got {text.strip()[:80]!r}"
        )
    try:
        value = ast.literal_eval(m.group(2))
    except (ValueError, SyntaxError) as exc:
        raise FiltagFileError(
            f"{path}:{number}: the list {m.group(2)[:80]!r} is not a Python literal ({exc})"
        ) from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FiltagFileError(f"{path}:{number}: expected a list of strings, got {value!r}")
    return int(m.group(1)), [v.strip() for v in value]


def _feasible(cands: list[list[int]]) -> list[list[int]]:
    """Per position, the candidate indices that some strictly increasing choice uses.

    Greedy lowest choices from the left and highest from the right bound
    every feasible choice; with them a value is feasible exactly when it
    lies between both bounds. Empty lists mean no increasing choice exists.
    """
    n = len(cands)
    lo: list[float] = []
    prev = -math.inf
    for c in cands:
        nxt = min((v for v in c if v > prev), default=math.inf)
        lo.append(nxt)
        prev = nxt
    hi: list[float] = [0.0] * n
    after = math.inf
    for i in range(n - 1, -1, -1):
        nxt = max((v for v in cands[i] if v < after), default=-math.inf)
        hi[i] = nxt
        after = nxt
    if any(math.isinf(x) for x in lo + hi):
        return [[] for _ in cands]
    return [[v for v in c if lo[i] <= v <= hi[i]] for i, c in enumerate(cands)]


def _eliminate(problems: list[LabelProblem], tags: list[Tag], k: int) -> list[LabelProblem]:
    """Resolve ambiguous names whose other candidates already tag ``k`` filters (top-k ``k``).

    Repeats until nothing changes, as one resolution can settle another. A
    class already on the same line is ruled out too (a line lists a class once).
    """
    seen: dict[str, int] = {}
    for t in tags:
        seen[t.class_id] = seen.get(t.class_id, 0) + 1
    on_line = {(t.filter, t.class_id) for t in tags}
    problems = list(problems)
    changed = True
    while changed:
        changed = False
        for i, prob in enumerate(problems):
            if prob.kind != "ambiguous" or prob.resolved is not None:
                continue
            left = [w for w in prob.candidates if seen.get(w, 0) < k and (prob.filter, w) not in on_line]
            if len(left) == 1:
                problems[i] = replace(prob, resolved=left[0], resolved_by="elimination")
                seen[left[0]] = seen.get(left[0], 0) + 1
                on_line.add((prob.filter, left[0]))
                changed = True
    return problems


def parse_filtag_file(
    path: str | os.PathLike[str],
    *,
    layer: str,
    on_problem: str = "error",
    resolve_by_order: bool = False,
) -> ImportResult:
    """Read a FilTag tag file into :class:`~filtag_kg.tagging.Tag` objects.

    Tags have ``class_id`` = the class's wnid, ``label`` = its ImageNet
    label, ``score``/``share`` NaN and ``rank`` 0 (the reference records
    neither), and the method and parameter of the header line.

    Args:
        path: the file.
        layer: the layer name to record (a ``named_modules()`` path such as
            ``features.28``).
        on_problem: ``"error"`` (default) raises :class:`AmbiguousLabelError`
            listing every ambiguous or unknown name; ``"keep"`` keeps those
            tags with the bare name as class id and label (unlinked).
        resolve_by_order: resolve an ambiguous name when the class-index
            order of its line allows only one candidate.

    Raises:
        FiltagFileError: the file is missing or a line is malformed.
        AmbiguousLabelError: unresolved names with ``on_problem="error"``.
    """
    if on_problem not in ON_PROBLEM:
        raise ValueError(f"on_problem must be one of {ON_PROBLEM}, got {on_problem!r}")
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise FiltagFileError(f"cannot read FilTag file {str(p)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise FiltagFileError(f"FilTag file {str(p)!r} is not UTF-8 text: {exc}") from None
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        raise FiltagFileError(f"FilTag file {str(p)!r} is empty")
    method, param = _parse_header(lines[first], str(p))

    by_label = imagenet_by_label()
    by_wnid = {c.wnid: c for c in imagenet1k_classes()}
    seen: dict[int, int] = {}
    lines_read: list[tuple[int, list[tuple[str, str | int]]]] = []  # per line: (name, wnid | problem #)
    problems: list[LabelProblem] = []
    for idx in range(first + 1, len(lines)):
        text = lines[idx]
        if not text.strip():
            continue
        number = idx + 1
        filt, names = _parse_line(text, number, str(p))
        if filt in seen:
            raise FiltagFileError(
                f"{p}:{number}: filter {filt} already listed on line {seen[filt]}"
            )
        seen[filt] = number
        cands = []
        for name in names:
            if WNID_PATTERN.fullmatch(name) and name in by_wnid:
                cands.append([by_wnid[name].index])
            else:
                cands.append([c.index for c in by_label.get(name, [])])
        feasible = _feasible(cands) if resolve_by_order else cands
        entries = []
        for name, cand, feas in zip(names, cands, feasible):
            if len(cand) == 1:
                entries.append((name, imagenet1k_classes()[cand[0]].wnid))
                continue
            kind = "unknown" if not cand else "ambiguous"
            wnids = tuple(imagenet1k_classes()[i].wnid for i in cand)
            resolved = None
            if kind == "ambiguous" and resolve_by_order and len(feas) == 1:
                resolved = imagenet1k_classes()[feas[0]].wnid
            entries.append((name, len(problems)))
            problems.append(LabelProblem(number, filt, name, kind, wnids, resolved,
                                         "class order" if resolved else None))
        lines_read.append((filt, entries))

    def tag(filt: int, cid: str, name: str) -> Tag:
        label = by_wnid[cid].label if cid in by_wnid else name
        return Tag(method=method, param=param, layer=layer, filter=filt, class_id=cid, label=label,
                   score=math.nan, rank=0, share=math.nan)

    if method == TOP_K:  # every class tags exactly k filters: rule out classes seen k times
        definite = [tag(f, e, n) for f, es in lines_read for n, e in es if isinstance(e, str)]
        definite += [tag(pr.filter, pr.resolved, pr.name) for pr in problems if pr.resolved is not None]
        problems = _eliminate(problems, definite, int(param))
    tags: list[Tag] = []
    for filt, entries in lines_read:
        used: set[str] = set()
        for name, entry in entries:
            cid = entry if isinstance(entry, str) else problems[entry].resolved
            if cid is None and on_problem == "keep":
                cid = name
            if cid is None or cid in used:
                continue
            used.add(cid)
            tags.append(tag(filt, cid, name))
    result = ImportResult(tags=tags, method=method, param=param, filters=len(seen), problems=problems)
    if on_problem == "error" and result.unresolved:
        raise AmbiguousLabelError(str(p), result.unresolved)
    return result


def import_filtag(
    file: str | os.PathLike[str],
    *,
    model: str,
    layer: str,
    out_dir: str | os.PathLike[str],
    on_problem: str = "error",
    resolve_by_order: bool = False,
) -> ImportResult:
    """Import a FilTag tag file into a run folder (``filtag-kg import-filtag``).

    Writes ``OUT_DIR/tags.tsv`` (the usual tag table) and ``OUT_DIR/import.json``
    (source file and its SHA-256, model, layer, setting, counts and every
    name problem with its resolution).

    Args:
        file: the FilTag tag file.
        model: the model the tags belong to (recorded, e.g. ``"vgg16"``).
        layer: the layer name to record.
        out_dir: the run folder (created if needed).
        on_problem: see :func:`parse_filtag_file`.
        resolve_by_order: see :func:`parse_filtag_file`.

    Returns:
        The parsed result, with ``files`` set to the written paths.

    Raises:
        FiltagFileError, AmbiguousLabelError: see :func:`parse_filtag_file`.
    """
    result = parse_filtag_file(
        file, layer=layer, on_problem=on_problem, resolve_by_order=resolve_by_order
    )
    out = Path(out_dir)
    src = Path(file)
    files = {"tags": out / "tags.tsv", "import": out / "import.json"}
    write_tags_tsv(files["tags"], result.tags)
    write_json(
        files["import"],
        {
            "format": "filtag-kg import",
            "format_version": 1,
            "importer": "filtag-original",
            "source_file": str(src.resolve()),
            "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
            "model": model,
            "layer": layer,
            "method": result.method,
            "param": result.param,
            "filters": result.filters,
            "tags": len(result.tags),
            "on_problem": on_problem,
            "resolve_by_order": resolve_by_order,
            "problems": [pr.as_dict() for pr in result.problems],
            "notes": "scores, shares and ranks are not recorded by the reference (NaN / 0)",
        },
    )
    result.files = files
    return result
