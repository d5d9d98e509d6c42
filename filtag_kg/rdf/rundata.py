"""Read what a run folder holds, with json and csv only (no torch, no model).

A run folder made by ``filtag-kg run`` holds ``profile.json`` (model, layers,
dataset, provenance), ``tags.tsv``, and after ``filtag-kg abstract``
``abstract_tags.tsv`` and ``class_links.tsv``; after ``filtag-kg explain``
also ``explanations.json`` + ``explanations.jsonl``. A folder made by
``filtag-kg import-filtag`` holds ``tags.tsv`` + ``import.json`` and no
profile. The export describes whatever is there; only ``tags.tsv`` is
required.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, ProfileError
from ..runfolder import REPROFILE, RETAG
from ..tagging import Tag, read_tags_tsv
from .errors import RunFolderError

__all__ = [
    "AbstractRow",
    "ClassRecord",
    "LayerRecord",
    "RowBatch",
    "RunData",
    "explanation_batches",
    "iter_explanation_records",
    "read_ili_map",
    "read_run",
]

TAGS_TSV = "tags.tsv"
TAGS_JSON = "tags.json"
PROFILE_JSON = "profile.json"
IMPORT_JSON = "import.json"
ABSTRACT_TSV = "abstract_tags.tsv"
CLASS_LINKS_TSV = "class_links.tsv"
EXPLANATIONS_JSONL = "explanations.jsonl"
EXPLANATIONS_JSON = "explanations.json"

KIND_PROFILE = "profile"
KIND_IMPORT = "import"
KIND_TAGS = "tags"


@dataclass(frozen=True)
class LayerRecord:
    """A measured layer: name, position, width and where it was measured (unknowns ``None``)."""

    name: str
    index: int | None = None
    width: int | None = None
    measured_at: str | None = None
    measure_kind: str | None = None


@dataclass(frozen=True)
class ClassRecord:
    """A class: id (wnid or label), label, and images profiled (``None`` when unknown)."""

    id: str
    label: str
    images: int | None = None


@dataclass(frozen=True)
class AbstractRow:
    """One row of ``abstract_tags.tsv``: a common hypernym of some of a filter's tags."""

    method: str
    param: str
    layer: str
    filter: int
    synset: str
    wnid: str
    depth: int | None
    cover: int
    linked_tags: int
    covered_ids: tuple[str, ...]


@dataclass
class RunData:
    """Everything the export needs from a run folder.

    Attributes:
        run_dir: the folder.
        kind: ``"profile"`` (profiled and tagged here), ``"import"``
            (tags imported from the original FilTag code) or ``"tags"``
            (a bare ``tags.tsv``).
        model: model record (``spec``, ``architecture``, ``weights``,
            ``weights_sha256``, ``num_classes``; missing keys absent).
        layers: measured layers in model order (only the tags' layers when
            there is no profile).
        classes: the dataset classes (from the profile, else from the tags).
        model_classes: the model's output classes ``(id, label)``, if known.
        tags: the tags of ``tags.tsv``.
        settings: ``(method, param)`` of every tagging setting, in order.
        abstract: rows of ``abstract_tags.tsv`` (empty if absent).
        links: class id -> linked wnid, from ``class_links.tsv``.
        dataset: the profiled dataset's record, if any.
        started_at, finished_at: ISO times of the run, if known.
        software: package name -> version.
        parameters: run options as ``name -> scalar``.
        identity: what identifies the run (hashed into its IRI): the profile and
            the tagging (the SHA-256 of ``tags.tsv``), so a retag is a new run IRI.
        tags_sha256: SHA-256 of ``tags.tsv``.
        import_info: ``import.json`` of an imported run.
        explanations_meta: ``explanations.json``, if present.
        explanations_path: the explanations, if present: the ``explanations.parquet`` folder or
            ``explanations.jsonl`` (read them with :func:`explanation_records`).
        explanations_pending: images done by an unfinished explanation pass, if
            there is one (``explanations.state.json``; the export is then partial).
    """

    run_dir: Path
    kind: str
    model: dict[str, Any]
    layers: list[LayerRecord]
    classes: list[ClassRecord]
    model_classes: list[tuple[str, str]]
    tags: list[Tag]
    settings: list[tuple[str, str]]
    abstract: list[AbstractRow] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    dataset: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    software: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    identity: Any = None
    import_info: dict[str, Any] | None = None
    explanations_meta: dict[str, Any] | None = None
    explanations_path: Path | None = None
    explanations_pending: int | None = None
    tags_sha256: str | None = None

    @property
    def spec(self) -> str:
        """The model spec (``"unknown-model"`` when the folder does not say)."""
        return str(self.model.get("spec") or "unknown-model")


#: how each JSON file of a run folder is written again
_REWRITE = {
    PROFILE_JSON: REPROFILE,
    TAGS_JSON: RETAG,
    EXPLANATIONS_JSON: "explain the images again with `filtag-kg explain`",
    "evaluation.json": "evaluate again with `filtag-kg evaluate`",
    IMPORT_JSON: "import the tags again with `filtag-kg import-filtag`",
}


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        fix = _REWRITE.get(path.name, "recreate it with the command that wrote it")
        raise RunFolderError(f"cannot read {path}: {exc}; {fix}") from None


def _tsv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            yield from enumerate(csv.DictReader(fh, delimiter="\t"), start=2)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RunFolderError(f"cannot read {path}: {exc}") from None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _scalar(value: Any) -> Any:
    """A run option as a scalar literal value (lists and dicts as compact JSON text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _read_tags(run: Path) -> list[Tag]:
    path = run / TAGS_TSV
    if not path.is_file():
        raise RunFolderError(
            f"no {TAGS_TSV} in {str(run)!r}: tag the run first (`filtag-kg run` or `filtag-kg tag`) "
            "or import tags (`filtag-kg import-filtag`)"
        )
    try:
        return read_tags_tsv(path)
    except DataError as exc:  # named, with how to write it again
        raise RunFolderError(str(exc)) from None


def _read_abstract(run: Path) -> list[AbstractRow]:
    path = run / ABSTRACT_TSV
    if not path.is_file():
        return []
    rows = []
    for n, r in _tsv_rows(path):
        try:
            rows.append(
                AbstractRow(
                    method=r["method"],
                    param=r["param"] or "",
                    layer=r["layer"],
                    filter=int(r["filter"]),
                    synset=r["synset"],
                    wnid=r["wnid"],
                    depth=_int_or_none(r.get("depth")),
                    cover=int(r["cover"]),
                    linked_tags=int(r["linked_tags"]),
                    covered_ids=tuple(x for x in (r.get("covered_ids") or "").split(",") if x),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RunFolderError(
                f"{path}:{n}: malformed row ({type(exc).__name__}: {exc}); "
                "rewrite it with `filtag-kg abstract`"
            ) from None
    return rows


def _read_links(run: Path) -> dict[str, str]:
    path = run / CLASS_LINKS_TSV
    if not path.is_file():
        return {}
    links = {}
    for n, r in _tsv_rows(path):
        try:
            cid, wnid = r["class_id"], (r.get("wnid") or "").strip()
        except KeyError:
            raise RunFolderError(
                f"{path}:{n}: no class_id column; rewrite it with `filtag-kg abstract`"
            ) from None
        if wnid:
            links[cid] = wnid
    return links


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_run(run_dir: str | os.PathLike[str]) -> RunData:
    """Read a run folder (see the module docstring for what it may hold).

    Raises:
        RunFolderError: the folder is missing, has no ``tags.tsv``, or a
            file in it is unreadable (the message names the file and the fix).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise RunFolderError(f"run folder {str(run)!r} does not exist; give the folder `filtag-kg run` wrote")
    tags = _read_tags(run)
    settings = list(dict.fromkeys((t.method, t.param) for t in tags))
    layer_names = list(dict.fromkeys(t.layer for t in tags))
    data = RunData(
        run_dir=run,
        kind=KIND_TAGS,
        model={},
        layers=[LayerRecord(name) for name in layer_names],
        classes=[ClassRecord(c, lab) for c, lab in dict.fromkeys((t.class_id, t.label) for t in tags)],
        model_classes=[],
        tags=tags,
        settings=settings,
        abstract=_read_abstract(run),
        links=_read_links(run),
    )
    data.tags_sha256 = _file_sha256(run / TAGS_TSV)
    tags_json = run / TAGS_JSON
    if tags_json.is_file():
        doc = _read_json(tags_json)
        for s in doc.get("settings", []) if isinstance(doc, dict) else []:
            param = s.get("param")
            key = (str(s.get("method")), "" if param is None else f"{param:g}")
            if key not in settings:
                settings.append(key)

    profile_json, import_json = run / PROFILE_JSON, run / IMPORT_JSON
    if profile_json.is_file():
        _add_profile(data, _read_json(profile_json), profile_json)
    elif import_json.is_file():
        _add_import(data, _read_json(import_json))
    # a tagging is its own run: retagging a profile (another k) mints new IRIs and graph names
    data.identity = (
        {"tags_sha256": data.tags_sha256}
        if data.identity is None
        else {**data.identity, "tags_sha256": data.tags_sha256}
    )

    meta_path, lines_path = run / EXPLANATIONS_JSON, run / EXPLANATIONS_JSONL
    if meta_path.is_file():
        data.explanations_meta = _read_json(meta_path)
        if not isinstance(data.explanations_meta, dict):
            raise RunFolderError(f"{meta_path} is not a JSON object; rerun `filtag-kg explain`")
    from ..explanations_io import EXPLANATIONS_DIR, FORMAT_PARQUET, explanations_format

    form = explanations_format(run)
    if form is not None:
        data.explanations_path = run / EXPLANATIONS_DIR if form == FORMAT_PARQUET else lines_path
        _check_explained_model(data)
    from ..runfolder import partial_explanations

    cut = partial_explanations(run)
    data.explanations_pending = None if cut is None else cut["done"]
    return data


#: Rows per :class:`RowBatch`: the unit of work of the export's encoder (and of ``--jobs``).
BATCH_ROWS = 128


@dataclass
class RowBatch:
    """Consecutive explanation rows, not yet decoded: small and picklable, so the export can
    hand it to another process and decode it there (:meth:`records`).

    Attributes:
        path: the file or folder the rows come from (named in errors).
        first: the row (Parquet) or line (JSON Lines) number of the first row, from 1.
        batch: the rows as an Arrow record batch (Parquet), with ``names`` its shared names.
        lines: the lines of ``explanations.jsonl`` as bytes (blank ones included, so numbers stay right).
    """

    path: str
    first: int
    batch: Any = None
    names: dict[str, Any] | None = None
    lines: list[bytes] | None = None

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(row or line number, record)`` of each row.

        Raises:
            ExplanationFileError: a row cannot be decoded or a line is not a JSON object.
        """
        from .errors import ExplanationFileError

        if self.lines is None:
            from ..explanations_io import decode_batch

            try:
                yield from enumerate(decode_batch(self.batch, self.names or {}, self.path), start=self.first)
            except ProfileError as exc:
                raise ExplanationFileError(str(exc)) from None
            return
        from ..explanations_io import jsonl_record

        for n, line in enumerate(self.lines, start=self.first):
            if not line.strip():
                continue
            try:
                rec = jsonl_record(self.path, n, line)
            except ProfileError as exc:
                raise ExplanationFileError(str(exc)) from None
            yield n, rec


def explanation_batches(path: str | os.PathLike[str], *, rows: int | None = None) -> Iterator[RowBatch]:
    """The explanations of ``RunData.explanations_path`` as :class:`RowBatch` es of up to ``rows``
    (default :data:`BATCH_ROWS`) rows, streamed: the rows of an ``explanations.parquet`` folder,
    or the lines of ``explanations.jsonl``. The one reader of explanations for the export.

    Raises:
        ExplanationFileError: the file is unreadable.
    """
    from .errors import ExplanationFileError

    rows = rows or BATCH_ROWS
    p = Path(path)
    if p.is_dir():
        from ..explanations_io import iter_parquet_batches

        first = 1
        try:
            for batch, names in iter_parquet_batches(p, batch_size=rows):
                yield RowBatch(str(p), first, batch=batch, names=names)
                first += batch.num_rows
        except ProfileError as exc:  # a damaged part, named with what to do
            raise ExplanationFileError(str(exc)) from None
        return
    try:
        with open(p, "rb") as fh:  # bytes: jsonl_record names a line that is not UTF-8
            first, lines = 1, []
            for line in fh:
                lines.append(line)
                if len(lines) >= rows:
                    yield RowBatch(str(p), first, lines=lines)
                    first, lines = first + len(lines), []
            if lines:
                yield RowBatch(str(p), first, lines=lines)
    except OSError as exc:
        raise ExplanationFileError(f"cannot read {p}: {exc}") from None


def explanation_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number, record)`` for each explanation of ``RunData.explanations_path``, streamed:
    the rows of an ``explanations.parquet`` folder, or the lines of ``explanations.jsonl``.

    Raises:
        ExplanationFileError: the file is unreadable or a line is not a JSON object.
    """
    for b in explanation_batches(path):
        yield from b.records()


def iter_explanation_records(data: RunData) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of each explanation of the run, streamed; none if it has none.

    The one place the export reads explanations from, so that a change of
    their storage changes this function only.

    Raises:
        ExplanationFileError: a record is unreadable (file and line named).
    """
    if data.explanations_path is None:
        return iter(())
    return explanation_records(data.explanations_path)


def _add_profile(data: RunData, meta: Any, path: Path) -> None:
    if not isinstance(meta, dict):
        raise RunFolderError(f"{path} is not a JSON object; rerun `filtag-kg profile`")
    data.kind = KIND_PROFILE
    data.model = dict(meta.get("model") or {})
    try:
        layers = [
            LayerRecord(
                name=str(d["name"]),
                index=_int_or_none(d.get("index", i)),
                width=_int_or_none(d.get("width")),
                measured_at=d.get("measured_at"),
                measure_kind=d.get("kind"),
            )
            for i, d in enumerate(meta.get("layers") or [])
        ]
        classes = [
            ClassRecord(str(c["id"]), str(c.get("label", c["id"])), _int_or_none(c.get("images")))
            for c in meta.get("classes") or []
        ]
    except (KeyError, TypeError) as exc:
        raise RunFolderError(
            f"{path} lacks {exc} in its layers or classes; rerun `filtag-kg profile`"
        ) from None
    known = {lr.name for lr in layers}
    data.layers = layers + [lr for lr in data.layers if lr.name not in known]
    if classes:
        seen = {c.id for c in classes}
        data.classes = classes + [c for c in data.classes if c.id not in seen]
    data.model_classes = [
        (str(c["id"]), str(c.get("label", c["id"])))
        for c in (meta.get("model_classes") or [])
        if isinstance(c, dict) and "id" in c
    ]
    data.dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else None
    data.started_at, data.finished_at = meta.get("started_at"), meta.get("finished_at")
    data.software = {str(k): str(v) for k, v in (meta.get("software") or {}).items() if v is not None}
    params: dict[str, Any] = {}
    for k, v in (meta.get("options") or {}).items():
        params[str(k)] = _scalar(v)
    for k, v in (meta.get("preprocess") or {}).items():
        params[f"preprocess.{k}"] = _scalar(v)
    data.parameters = params
    fingerprint = meta.get("fingerprint")
    data.identity = (
        {"fingerprint": fingerprint, "started_at": meta.get("started_at")}
        if fingerprint
        else {"profile_sha256": _file_sha256(path)}
    )


def _add_import(data: RunData, info: Any) -> None:
    if not isinstance(info, dict):
        raise RunFolderError(
            f"{data.run_dir / IMPORT_JSON} is not a JSON object; rerun `filtag-kg import-filtag`"
        )
    data.kind = KIND_IMPORT
    data.import_info = info
    data.model = {"spec": str(info.get("model") or "unknown-model")}
    data.parameters = {
        k: _scalar(info[k]) for k in ("importer", "on_problem", "resolve_by_order") if k in info
    }
    data.identity = {
        "import": info.get("source_sha256"),
        "model": info.get("model"),
        "layer": info.get("layer"),
        "method": info.get("method"),
        "param": info.get("param"),
        "on_problem": info.get("on_problem"),
        "resolve_by_order": info.get("resolve_by_order"),
    }


def _check_explained_model(data: RunData) -> None:
    meta = data.explanations_meta or {}
    model = meta.get("model") if isinstance(meta.get("model"), dict) else None
    if not model:
        return
    if not data.model:
        data.model = dict(model)
        return
    a, b = data.model.get("weights_sha256"), model.get("weights_sha256")
    if a and b and a != b:
        raise RunFolderError(
            f"{data.run_dir / EXPLANATIONS_JSON} was made with other model weights ({b[:12]}…) than the "
            f"run's profile ({a[:12]}…); explain with the run's own model (`filtag-kg explain`)"
        )


def read_ili_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read CILI's ``ili-map-pwn30.tab`` (``iNNN<TAB>XXXXXXXX-p``) as wnid -> ILI id (nouns only).

    Raises:
        RunFolderError: the file is unreadable or a line is malformed.
    """
    from ..wordnet.ili import IliMapError, parse_ili_map

    try:
        return parse_ili_map(path)
    except IliMapError as exc:
        raise RunFolderError(str(exc)) from None


def finite(x: float) -> bool:
    """Whether ``x`` is a finite number (unknown tag scores are NaN)."""
    return isinstance(x, (int, float)) and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))
