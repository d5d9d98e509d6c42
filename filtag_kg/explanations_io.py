"""The stored form of per-image explanations: columnar (Parquet) or JSON Lines.

An explanation pass writes one row per image, tagging setting and input
variant. By default the rows go to ``explanations.parquet/``, a folder of
Parquet files (``part-000000.parquet``, ...), one per flushed chunk, read in
name order. Each column holds one field for many rows, so the bulky parts
stay compact and cheap to write:

- active filters: three list columns over all layers, in layer order and, in
  each layer, rank order: ``filter`` (index in its layer), ``value`` (float32:
  the network computes in float32 or less, so the stored value is the JSON
  value rounded to float32) and ``weight`` (gradcam only); ``layer_active``
  holds how many of a row's filters belong to each layer;
- votes as sparse pairs: ``vote_class`` (class index in the profile's class
  order) with ``vote_count``, and ``vote`` only when votes are weighted
  (unweighted votes equal the counts); the same for the last layer
  (``last_class`` / ``last_count`` / ``last_vote``). A row whose k pairs are
  the classes 0, 1, ..., k-1 (above-average tags give every class votes) has
  ``vote_class`` (``last_class``) null instead (format version 3): a list of
  1,000 numbers that say nothing cost a fifth of the writing;
- the model's top-5 as output indices (``top_class``) and float32 probabilities;
- with ``explain --clusters`` only, the clusters (``cluster_*`` columns, float64
  weights and scores; see docs/cluster-method.md and :mod:`filtag_kg.clusters`).
- with ``value_bits`` K (``explain --value-bits K``, format version 2), values rounded
  to multiples of 2^-K instead of float32: ``value`` is null and, per layer, ``value_top``
  holds the first (largest) value's integer code and ``value_gap`` each active filter's
  code difference to the one ranked above it (0 for a layer's first), so the codes of a
  layer read back as ``top - cumsum(gap)``. Values are min-max scaled to [0, 1], so the
  error is at most 2^-(K+1) absolute; ranks, votes and predictions come from the
  full-precision values before rounding and do not change. Rank-ordered gaps are small
  numbers, which is what makes above-average rows small (they hold thousands of values).

Names that rows share (layers, class ids, the model's class ids and labels)
are written once per file, in the Parquet schema metadata.

A part file is written beside its final name and renamed into place after an
fsync, before the pass's resume state names it; a resumed pass deletes the
parts its state does not name, so rows are neither lost nor repeated after a
kill. ``--jsonl`` writes the older ``explanations.jsonl`` instead (one JSON
object per row); both forms come out of one encoder, and
:func:`iter_explanations` reads either back as the same dicts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._io import read_json
from .errors import ProfileError

EXPLANATIONS_JSONL = "explanations.jsonl"
EXPLANATIONS_DIR = "explanations.parquet"
EXPLANATIONS_META = "explanations.json"
FORMAT_PARQUET = "parquet"
FORMAT_JSONL = "jsonl"
_META_KEY = b"filtag.explanations"
_PART = re.compile(r"^part-(\d{6})\.parquet$")
#: version 2 added ``value_bits`` / ``value_top`` / ``value_gap`` (files without them read as
#: version 1); version 3, null ``vote_class`` / ``last_class`` for a row's classes 0..k-1
FORMAT_VERSION = 3
_ENCODINGS = {
    **{f"{c}.list.element": "DELTA_BINARY_PACKED" for c in (
        "layer_active", "vote_class", "last_class", "last_count", "top_class", "value_top",
        "cluster_layer", "cluster_size", "cluster_filter", "cluster_concepts", "cluster_concept")},
    **{f"{c}.list.element": "BYTE_STREAM_SPLIT" for c in (
        "value", "weight", "top_prob", "cluster_weight", "cluster_score")},
}


def _pa() -> Any:
    try:
        import pyarrow
    except ImportError:  # pragma: no cover - a dependency; named for broken installs
        raise ProfileError(
            "reading or writing explanations.parquet needs pyarrow: pip install pyarrow "
            "(or explain with --jsonl)"
        ) from None
    return pyarrow


def row_schema(value_type: str = "float32", clusters: bool = False) -> Any:
    """The Arrow schema of explanation rows; ``value_type`` (``"float32"`` or ``"float64"``)
    is the type of active filters' values and weights; ``clusters``: with the columns of
    ``explain --clusters`` (rows of a pass without clusters have none, as before)."""
    pa = _pa()
    i32 = pa.int32()
    value_type = pa.float32() if value_type == "float32" else pa.float64()
    fields = (
        [
            ("index", pa.int64()),
            ("image", pa.string()),
            ("sha256", pa.string()),
            ("true_class", pa.string()),
            ("top_class", pa.list_(i32)),
            ("top_prob", pa.list_(pa.float32())),
            ("method", pa.string()),
            ("param", pa.string()),
            ("layer_active", pa.list_(i32)),
            ("filter", pa.list_(i32)),
            ("value", pa.list_(value_type)),
            ("weight", pa.list_(value_type)),
            ("vote_class", pa.list_(i32)),
            ("vote_count", pa.list_(i32)),
            ("vote", pa.list_(pa.float64())),
            ("last_class", pa.list_(i32)),
            ("last_count", pa.list_(i32)),
            ("last_vote", pa.list_(pa.float64())),
            ("prediction", i32),
            ("prediction_last_layer", i32),
            ("perturb_kind", pa.string()),
            ("perturb_param", pa.float64()),
            ("perturb_seed", pa.int64()),
            ("weighting", pa.string()),
            ("value_bits", pa.int8()),
            ("value_top", pa.list_(i32)),
            ("value_gap", pa.list_(i32)),
        ]
        + [
            # explain --clusters: per layer the cluster count; per cluster, in
            # rank order, its size, weight, map path (null: no file), number of concepts;
            # members grouped by cluster (every filter of every layer once); concepts
            ("cluster_layer", pa.list_(i32)),
            ("cluster_size", pa.list_(i32)),
            ("cluster_filter", pa.list_(i32)),
            ("cluster_weight", pa.list_(pa.float64())),
            ("cluster_map", pa.list_(pa.string())),
            ("cluster_concepts", pa.list_(i32)),
            ("cluster_concept", pa.list_(i32)),
            ("cluster_score", pa.list_(pa.float64())),
        ]
        * clusters
    )
    return pa.schema(fields)


def _list(offsets: np.ndarray, values: np.ndarray, typ: Any) -> Any:
    pa = _pa()
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=typ))


def _class_list(offsets: np.ndarray, classes: np.ndarray) -> Any:
    """``vote_class`` / ``last_class``: each row's classes (ascending, distinct), null for
    a row whose k classes are 0..k-1 (k >= 1), which its k counts (or votes) then imply."""
    pa = _pa()
    offsets = np.asarray(offsets, dtype=np.int64)
    k = np.diff(offsets)
    dense = k > 0
    # ascending and distinct: the last class is k - 1 only when the classes are 0..k-1
    dense[dense] = classes[offsets[1:][dense] - 1] == k[dense] - 1
    if not dense.any():
        return _list(offsets, classes, pa.int32())
    kept = np.zeros_like(offsets)
    np.cumsum(np.where(dense, 0, k), out=kept[1:])
    # all rows dense (above-average): skip the mask over every pair
    values = classes[np.repeat(~dense, k)] if kept[-1] else classes[:0]
    return pa.ListArray.from_arrays(pa.array(kept.astype(np.int32)), pa.array(values, type=pa.int32()),
                                    mask=pa.array(dense))


def encode_rows(
    *,
    indices: Sequence[int],
    images: Sequence[str],
    sha256: Sequence[str | None],
    true_classes: Sequence[str | None],
    top_class: np.ndarray,
    top_prob: np.ndarray,
    method: str,
    param: str,
    explained: Any,
    perturbation: dict[str, Any] | None,
    weighting: str | None,
    value_type: str = "float32",
    clusters: dict[str, tuple[np.ndarray, Any]] | None = None,
    value_bits: int | None = None,
) -> Any:
    """The rows of one batch under one setting and input variant, as an Arrow record batch.

    ``explained`` (a :class:`filtag_kg.explain.Explained`) already holds the active
    filters one image after the other and the votes as sparse pairs, so the columns
    are views of its arrays: no loop over images or layers, no [B, C] matrix.

    Args:
        value_type: ``"float32"`` (the columnar form) or ``"float64"`` (exact,
            for JSON Lines).
        clusters: ``explain --clusters``: per cluster column, ``(row offsets, flat
            values)`` (:func:`filtag_kg.clusters.cluster_columns`); ``None``: no such columns.
        value_bits: round values to multiples of 2^-``value_bits`` and store them as
            per-layer gaps (see the module's docstring); ``None``: float32 / float64.
            If any value of the batch (one setting and input variant) is not finite, too large
            for 30-bit codes or out of rank order, the whole batch is stored unrounded (float32),
            as the rows then say (``value_bits`` null).

    Returns:
        A ``pyarrow.RecordBatch`` of B rows.
    """
    pa = _pa()
    ex = explained
    n = len(indices)
    vt = pa.float32() if value_type == "float32" else pa.float64()
    lengths = ex.lengths
    row_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths.sum(axis=1), out=row_start[1:])
    k = top_class.shape[1] if top_class.ndim == 2 else 0
    top_off = np.arange(n + 1, dtype=np.int64) * k

    def floats(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32) if value_type == "float32" else x

    cols: dict[str, Any] = {
        "index": pa.array(np.asarray(indices, dtype=np.int64)),
        "image": pa.array(list(images), type=pa.string()),
        "sha256": pa.array(list(sha256), type=pa.string()),
        "true_class": pa.array(list(true_classes), type=pa.string()),
        "top_class": _list(top_off, top_class.reshape(-1).astype(np.int32), pa.int32()),
        "top_prob": _list(top_off, top_prob.reshape(-1).astype(np.float32), pa.float32()),
        "method": pa.array([method] * n, type=pa.string()),
        "param": pa.array([param] * n, type=pa.string()),
        "layer_active": _list(
            np.arange(n + 1, dtype=np.int64) * lengths.shape[1],
            lengths.reshape(-1).astype(np.int32),
            pa.int32(),
        ),
        "filter": _list(row_start, ex.filters.astype(np.int32, copy=False), pa.int32()),
        "vote_class": _class_list(ex.count_offsets, ex.count_classes),
        "vote_count": _list(ex.count_offsets, ex.counts, pa.int32()),
        "last_class": _class_list(ex.last_offsets, ex.last_classes),
    }
    nulls = pa.nulls(n)
    coded = None if value_bits is None else value_codes(ex.values, lengths, value_bits)
    if coded is None:
        cols["value"] = _list(row_start, floats(ex.values), vt)
        cols["value_bits"] = nulls.cast(pa.int8())
        cols["value_top"] = cols["value_gap"] = nulls.cast(pa.list_(pa.int32()))
    else:
        cols["value"] = nulls.cast(pa.list_(vt))
        cols["value_bits"] = pa.array(np.full(n, value_bits, dtype=np.int8))
        cols["value_top"] = _list(np.arange(n + 1, dtype=np.int64) * lengths.shape[1], coded[0], pa.int32())
        cols["value_gap"] = _list(row_start, coded[1], pa.int32())
    if ex.weights is None:
        cols["weight"] = nulls.cast(pa.list_(vt))
        cols["vote"] = nulls.cast(pa.list_(pa.float64()))
        cols["last_count"] = _list(ex.last_offsets, np.rint(ex.last).astype(np.int32), pa.int32())
        cols["last_vote"] = nulls.cast(pa.list_(pa.float64()))
    else:
        cols["weight"] = _list(row_start, floats(ex.weights), vt)
        cols["vote"] = _list(ex.count_offsets, ex.votes, pa.float64())
        cols["last_count"] = nulls.cast(pa.list_(pa.int32()))
        cols["last_vote"] = _list(ex.last_offsets, ex.last, pa.float64())
    pred, pred_last = ex.prediction, ex.prediction_last
    cols["prediction"] = pa.array(pred.astype(np.int32), mask=pred < 0)
    cols["prediction_last_layer"] = pa.array(pred_last.astype(np.int32), mask=pred_last < 0)
    p = perturbation or {}
    cols["perturb_kind"] = pa.array([p.get("kind")] * n, type=pa.string())
    cols["perturb_param"] = pa.array([p.get("param")] * n, type=pa.float64())
    cols["perturb_seed"] = pa.array([p.get("seed")] * n, type=pa.int64())
    cols["weighting"] = pa.array([weighting] * n, type=pa.string())
    schema = row_schema(value_type, clusters=clusters is not None)
    for f in schema:
        if f.name.startswith("cluster_"):
            off, flat = clusters[f.name]  # type: ignore[index]
            flat = flat if isinstance(flat, list) else np.asarray(flat)
            cols[f.name] = _list(off, flat, f.type.value_type)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def value_codes(values: np.ndarray, lengths: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(tops, gaps)``: ``values`` (all rows' active filters, per row and layer in rank
    order, ``lengths`` [B, L] of them per layer) as codes ``rint(value * 2**bits)``: per
    (row, layer) the first code (0 for a layer without active filters), and per value its
    code's difference to the previous one in its layer (0 for a layer's first).

    Returns ``None`` when the values cannot be coded: not finite, codes of 2^30 or more,
    or a layer not in descending order (rank order is by value, so that means a caller bug).
    """
    if not 0 <= bits <= 24:
        raise ValueError(f"value_bits must be 0..24, got {bits}")
    codes = np.multiply(values, float(1 << bits), dtype=np.float64)
    # min and max are NaN when any value is, so one comparison each also rejects NaN and inf
    if codes.size and not (codes.min() > -(2.0**30) and codes.max() < 2.0**30):
        return None
    codes = np.rint(codes, out=codes).astype(np.int32)
    seg = np.asarray(lengths, dtype=np.int64).reshape(-1)
    starts = np.cumsum(seg) - seg
    first = starts[seg > 0]
    gaps = np.empty_like(codes)
    np.subtract(codes[:-1], codes[1:], out=gaps[1:])
    gaps[first] = 0  # also gaps[0]: the first nonempty layer starts at 0
    if gaps.size and gaps.min() < 0:
        return None
    tops = np.zeros(len(seg), dtype=np.int32)
    tops[seg > 0] = codes[first]
    return tops, gaps


def values_from_codes(tops: np.ndarray, gaps: np.ndarray, lengths: np.ndarray, bits: int) -> np.ndarray:
    """The values :func:`value_codes` coded (float64, exact multiples of 2^-``bits``);
    ``tops`` and ``lengths`` one entry per layer, ``gaps`` one per value."""
    seg = np.asarray(lengths, dtype=np.int64)
    gaps = np.asarray(gaps, dtype=np.int64)
    before = np.concatenate([[0], np.cumsum(gaps)])  # sum of the gaps before each position
    starts = np.cumsum(seg) - seg
    codes = np.repeat(np.asarray(tops, dtype=np.int64) + before[starts], seg) - before[1:]
    return codes / float(1 << bits)


def names_metadata(
    layers: Sequence[str], class_ids: Sequence[str], model_ids: Sequence[str], model_labels: Sequence[str]
) -> dict[bytes, bytes]:
    """The names rows refer to by position, as Parquet schema metadata."""
    doc = {
        "format": FORMAT_VERSION,
        "layers": list(layers),
        "class_ids": list(class_ids),
        "model_ids": list(model_ids),
        "model_labels": list(model_labels),
    }
    return {_META_KEY: json.dumps(doc, ensure_ascii=False).encode()}


def _list_parts(arr: Any) -> tuple[np.ndarray, list[Any], np.ndarray]:
    """Offsets, values (as Python objects) and validity of a list array (a slice
    converts only its own values)."""
    offsets = arr.offsets.to_numpy()
    first = int(offsets[0]) if len(offsets) else 0
    child = arr.values.slice(first, int(offsets[-1]) - first if len(offsets) else 0)
    values = child.to_numpy(zero_copy_only=False).tolist()
    valid = ~arr.is_null().to_numpy(zero_copy_only=False)
    return offsets - first, values, valid


def _coded_values(col: dict[str, Any]) -> tuple[np.ndarray, list[Any], np.ndarray] | None:
    """The ``value`` column's ``(offsets, values, validity)`` with the rows stored as codes
    (``value_bits`` set) decoded; ``None`` when no row is (or the file predates codes)."""
    if "value_bits" not in col or col["value_bits"].null_count == len(col["value_bits"]):
        return None
    bits = col["value_bits"].to_pylist()
    off, vals, valid = _list_parts(col["value"])
    la_off, la, _ = _list_parts(col["layer_active"])
    top_off, tops, _ = _list_parts(col["value_top"])
    gap_off, gaps, _ = _list_parts(col["value_gap"])
    rows: list[list[Any]] = []
    for r, b in enumerate(bits):
        if b is None:
            rows.append(vals[off[r] : off[r + 1]] if valid[r] else [])
        else:
            top, gap = tops[top_off[r] : top_off[r + 1]], gaps[gap_off[r] : gap_off[r + 1]]
            rows.append(values_from_codes(top, gap, la[la_off[r] : la_off[r + 1]], b).tolist())
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in rows], out=offsets[1:])
    return offsets, [v for x in rows for v in x], valid | np.array([b is not None for b in bits], dtype=bool)


def records_from_batch(batch: Any, names: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The JSON-form dicts of the rows of one record batch (see :func:`iter_explanations`)."""
    layers, class_ids = names["layers"], names["class_ids"]
    model_ids, model_labels = names["model_ids"], names["model_labels"]
    col = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
    plain = {
        k: col[k].to_pylist()
        for k in (
            "index",
            "image",
            "sha256",
            "true_class",
            "method",
            "param",
            "prediction",
            "prediction_last_layer",
            "perturb_kind",
            "perturb_param",
            "perturb_seed",
            "weighting",
        )
    }
    coded = _coded_values(col)
    lists = {
        k: _list_parts(col[k])
        for k in (
            "top_class",
            "top_prob",
            "layer_active",
            "filter",
            "value",
            "weight",
            "vote_class",
            "vote_count",
            "vote",
            "last_class",
            "last_count",
            "last_vote",
        )
    }
    clustered = "cluster_layer" in col
    if clustered:
        lists.update({k: _list_parts(col[k]) for k in (
            "cluster_layer", "cluster_size", "cluster_filter", "cluster_weight", "cluster_map",
            "cluster_concepts", "cluster_concept", "cluster_score")})

    def row_clusters(r: int) -> dict[str, list[dict[str, Any]]] | None:
        counts = row_list("cluster_layer", r) if clustered else None
        if counts is None:
            return None
        sizes, members, weights, maps, n_con, con, score = (row_list(k, r) or [] for k in (
            "cluster_size", "cluster_filter", "cluster_weight", "cluster_map", "cluster_concepts",
            "cluster_concept", "cluster_score"))
        out, c, at, k = {}, 0, 0, 0
        for name, m in zip(layers, counts):
            layer = []
            for j in range(m):
                nc = n_con[c]
                concepts = [{"class_id": class_ids[con[i]], "score": score[i]} for i in range(k, k + nc)]
                layer.append({"rank": j + 1, "filters": members[at : at + sizes[c]], "weight": weights[c],
                              "map": maps[c], "concepts": concepts})
                at, k, c = at + sizes[c], k + nc, c + 1
            out[name] = layer
        return out

    if coded is not None:
        lists["value"] = coded

    def row_list(key: str, r: int) -> list[Any] | None:
        off, vals, valid = lists[key]
        return vals[off[r] : off[r + 1]] if valid[r] else None

    def label(j: int, table: list[str]) -> str:
        return table[j] if j < len(table) else str(j)

    for r in range(batch.num_rows):
        per_layer = row_list("layer_active", r) or []
        filters, vals, wts = row_list("filter", r) or [], row_list("value", r) or [], row_list("weight", r)
        active: dict[str, list[dict[str, Any]]] = {}
        at = 0
        for name, m in zip(layers, per_layer):
            if wts is None:
                active[name] = [
                    {"filter": filters[at + j], "value": vals[at + j], "rank": j + 1} for j in range(m)
                ]
            else:
                active[name] = [
                    {"filter": filters[at + j], "value": vals[at + j], "rank": j + 1, "weight": wts[at + j]}
                    for j in range(m)
                ]
            at += m
        v_cnt, v_w = row_list("vote_count", r) or [], row_list("vote", r)
        v_cls = row_list("vote_class", r)
        if v_cls is None:  # the classes 0..k-1 (format 3)
            v_cls = range(len(v_cnt))
        counts = {class_ids[c]: n for c, n in zip(v_cls, v_cnt)}
        if v_w is None:
            votes = {class_ids[c]: float(n) for c, n in zip(v_cls, v_cnt)}
        else:
            votes = {class_ids[c]: w for c, w in zip(v_cls, v_w) if w != 0}
        l_cnt = row_list("last_count", r)
        l_val = [float(n) for n in l_cnt] if l_cnt is not None else row_list("last_vote", r) or []
        l_cls = row_list("last_class", r)
        last = {class_ids[c]: w for c, w in zip(range(len(l_val)) if l_cls is None else l_cls, l_val)}
        top = zip(row_list("top_class", r) or [], row_list("top_prob", r) or [])
        pred, pred_last, kind = (
            plain["prediction"][r],
            plain["prediction_last_layer"][r],
            plain["perturb_kind"][r],
        )
        yield {
            "index": plain["index"][r],
            "image": plain["image"][r],
            "sha256": plain["sha256"][r],
            "true_class": plain["true_class"][r],
            "model_top": [
                {"class_id": label(j, model_ids), "label": label(j, model_labels), "prob": p} for j, p in top
            ],
            "method": plain["method"][r],
            "param": plain["param"][r],
            "active_filters": active,
            "votes": votes,
            "vote_counts": counts,
            "votes_last_layer": last,
            "prediction": None if pred is None else class_ids[pred],
            "prediction_last_layer": None if pred_last is None else class_ids[pred_last],
            "perturbation": None
            if kind is None
            else {"kind": kind, "param": plain["perturb_param"][r], "seed": plain["perturb_seed"][r]},
            "weighting": plain["weighting"][r],
            "clusters": row_clusters(r),
        }


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def part_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The committed part files of an ``explanations.parquet`` folder, in row order."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _PART.match(p.name))


class ParquetParts:
    """Appends record batches to ``explanations.parquet/``, one part file per :meth:`commit`.

    Batches wait in memory until :meth:`commit`, which writes them as the next
    part file (written under a temporary name, fsynced, renamed) and returns
    how many parts are final: the number the resume state records.
    """

    def __init__(self, folder: Path, parts: int, metadata: dict[bytes, bytes]) -> None:
        """Open ``folder`` keeping its first ``parts`` part files (later ones, and
        temporary files of a killed pass, are deleted)."""
        self.folder, self.parts, self.metadata = folder, parts, metadata
        folder.mkdir(parents=True, exist_ok=True)
        for p in folder.iterdir():
            m = _PART.match(p.name)
            if (m and int(m.group(1)) >= parts) or (p.name.startswith(".") and p.name.endswith(".tmp")):
                p.unlink()
        self.pending: list[Any] = []
        self.pending_rows = 0

    def write(self, batch: Any) -> None:
        self.pending.append(batch)
        self.pending_rows += batch.num_rows

    def commit(self) -> int:
        """Write the pending rows as one part file (none if there are none)."""
        if not self.pending:
            return self.parts
        pa = _pa()
        import pyarrow.parquet as pq

        table = pa.Table.from_batches(self.pending).replace_schema_metadata(self.metadata)
        name = f"part-{self.parts:06d}.parquet"
        tmp = self.folder / f".{name}.tmp"
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            compression_level=1,
            use_dictionary=["image", "sha256", "true_class", "method", "param", "perturb_kind", "weighting",
                            # few distinct small numbers: dictionary indices bit-packed (9 bits for
                            # filters of a 512-wide layer) beat deltas of unordered numbers
                            *(f"{c}.list.element" for c in ("filter", "vote_count", "value_gap"))],
            write_statistics=False,
            # small integers as bit-packed deltas, floats split by byte (sorted values per
            # layer share their high bytes): above-average rows 20% smaller, written faster
            column_encoding=_ENCODINGS,
        )
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.folder / name)
        _fsync_dir(self.folder)
        self.pending, self.pending_rows = [], 0
        self.parts += 1
        return self.parts

    def close(self) -> None:
        self.pending = []


class JsonlLines:
    """Appends record batches to ``explanations.jsonl`` as JSON lines; remembers the final size."""

    def __init__(self, path: Path, offset: int, names: dict[str, Any]) -> None:
        self.fh = open(path, "r+b" if path.exists() else "wb")  # noqa: SIM115 - closed in close()
        self.fh.truncate(offset)
        self.fh.seek(offset)
        self.names = names

    def write(self, batch: Any) -> None:
        self.fh.write(
            b"".join(
                json.dumps(rec, ensure_ascii=False, allow_nan=False).encode() + b"\n"
                for rec in records_from_batch(batch, self.names)
            )
        )

    def commit(self) -> int:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        return self.fh.tell()

    def close(self) -> None:
        self.fh.close()


def explanations_format(run_dir: str | os.PathLike[str]) -> str | None:
    """Which form holds the run's explanations: ``"parquet"``, ``"jsonl"`` or ``None``.

    The finished pass's ``explanations.json`` names its file; without it, a
    ``explanations.parquet`` folder with parts wins over ``explanations.jsonl``.
    """
    run = Path(run_dir)
    meta_path = run / EXPLANATIONS_META
    if meta_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            meta = read_json(meta_path)
            if (
                isinstance(meta, dict)
                and meta.get("file") == EXPLANATIONS_DIR
                and (run / EXPLANATIONS_DIR).is_dir()
            ):
                return FORMAT_PARQUET
            if (
                isinstance(meta, dict)
                and meta.get("file") == EXPLANATIONS_JSONL
                and (run / EXPLANATIONS_JSONL).is_file()
            ):
                return FORMAT_JSONL
    if part_files(run / EXPLANATIONS_DIR):
        return FORMAT_PARQUET
    if (run / EXPLANATIONS_JSONL).is_file():
        return FORMAT_JSONL
    return None


def _damaged(where: object, what: object) -> ProfileError:
    """The one-line error for explanations that cannot be read (``where``: a file, or
    ``file:line``), with the command that writes them again."""
    return ProfileError(f"cannot read {where}: {what}; regenerate it with `filtag-kg explain`")


def _batches(
    folder: str | os.PathLike[str], batch_size: int
) -> Iterator[tuple[Any, dict[str, Any], Path]]:
    """``(record batch, names, part file)`` of every part of an ``explanations.parquet``
    folder, in order.

    Raises:
        ProfileError: a part is damaged (cut short, not Parquet, without the names), or newer
            than this version reads.
    """
    pa = _pa()
    import pyarrow.parquet as pq

    for path in part_files(folder):
        try:
            f = pq.ParquetFile(path)
            names = json.loads((f.schema_arrow.metadata or {}).get(_META_KEY, b"null"))
        except (OSError, ValueError, pa.lib.ArrowException) as exc:
            raise _damaged(path, exc) from None
        if not isinstance(names, dict) or not isinstance(names.get("format", 1), int):
            raise _damaged(path, "it has no filtag-kg names in its metadata")
        if names.get("format", 1) > FORMAT_VERSION:
            raise ProfileError(
                f"{path} is in explanations format {names['format']}, newer than this filtag-kg "
                f"reads ({FORMAT_VERSION}); upgrade filtag-kg"
            )
        batches = f.iter_batches(batch_size=batch_size)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (OSError, ValueError, pa.lib.ArrowException) as exc:
                raise _damaged(path, exc) from None
            yield batch, names, path


def decode_batch(batch: Any, names: dict[str, Any], where: object) -> list[dict[str, Any]]:
    """:func:`records_from_batch` of one batch as a list.

    Raises:
        ProfileError: a row does not decode (a column missing or of another type), naming
            ``where`` (the part file) and the command that writes it again.
    """
    pa = _pa()
    try:
        return list(records_from_batch(batch, names))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, pa.lib.ArrowException) as exc:
        raise _damaged(where, f"a row does not decode ({exc!r})") from None


def jsonl_record(path: str | os.PathLike[str], n: int, line: str | bytes) -> dict[str, Any]:
    """Line ``n`` (from 1) of ``explanations.jsonl`` as its record (``line`` as read, in text or
    in bytes: bytes that are not UTF-8, say a line cut inside a character, are then named here).

    Raises:
        ProfileError: the line is not a JSON object (naming file and line).
    """
    try:
        rec = json.loads(line)
    except ValueError as exc:  # also UnicodeDecodeError
        raise _damaged(f"{path}:{n}", f"not valid JSON ({exc})") from None
    if not isinstance(rec, dict):
        raise _damaged(f"{path}:{n}", "not a JSON object")
    rec.setdefault("clusters", None)  # written before explain --clusters existed
    return rec


def iter_parquet_records(
    folder: str | os.PathLike[str], *, batch_size: int = 1024
) -> Iterator[dict[str, Any]]:
    """The records of an ``explanations.parquet`` folder, streamed batch by batch.

    Raises:
        ProfileError: a part is damaged (see :func:`_batches`) or a row does not decode.
    """
    for batch, names, path in _batches(folder, batch_size):
        yield from decode_batch(batch, names, path)


def iter_parquet_rows(folder: str | os.PathLike[str], *, batch_size: int = 1024) -> Iterator[tuple[Any, Any]]:
    """``(index, decode)`` per row of an ``explanations.parquet`` folder, where ``decode()``
    gives the row's record: readers that skip most rows (the report) decode only the batches
    they look into, each batch once."""
    import functools

    for batch, names, path in _batches(folder, batch_size):
        records = functools.cache(functools.partial(decode_batch, batch, names, path))
        if "index" not in batch.schema.names:
            raise _damaged(path, "it has no index column")
        for row, index in enumerate(batch.column("index").to_pylist()):
            yield index, functools.partial(lambda r, row: r()[row], records, row)


def iter_explanations(run_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Stream a run's explanations, one dict per row, from whichever form the run holds.

    The dicts are the JSON Lines records (``explain --jsonl``, or a run made
    before the columnar form), except that values and weights read from
    ``explanations.parquet`` are float32 roundings of the JSON ones.

    Raises:
        ProfileError: the run has no explanations.
    """
    run = Path(run_dir)
    form = explanations_format(run)
    if form == FORMAT_PARQUET:
        yield from iter_parquet_records(run / EXPLANATIONS_DIR)
    elif form == FORMAT_JSONL:
        path = run / EXPLANATIONS_JSONL
        with open(path, "rb") as fh:  # bytes: a line that is not UTF-8 is named, not a traceback
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    yield jsonl_record(path, n, line)
    else:
        raise ProfileError(
            f"{run} holds no {EXPLANATIONS_DIR} or {EXPLANATIONS_JSONL}; create it with `filtag-kg explain`"
        )


def iter_parquet_batches(
    folder: str | os.PathLike[str], *, batch_size: int = 1024
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """``(record batch, names)`` of every part of an ``explanations.parquet`` folder, in row
    order, undecoded: for readers that hand whole batches to other processes (the export's
    ``--jobs``) and decode them there with :func:`records_from_batch`."""
    for batch, names, _ in _batches(folder, batch_size):
        yield batch, names


__all__ = [
    "EXPLANATIONS_DIR",
    "EXPLANATIONS_JSONL",
    "JsonlLines",
    "ParquetParts",
    "encode_rows",
    "explanations_format",
    "iter_explanations",
    "iter_parquet_batches",
    "iter_parquet_records",
    "iter_parquet_rows",
    "decode_batch",
    "jsonl_record",
    "names_metadata",
    "part_files",
    "records_from_batch",
    "row_schema",
]
