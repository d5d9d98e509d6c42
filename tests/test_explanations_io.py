"""The stored form of explanations: values rounded to 2^-K (``--value-bits``), compact
encodings, and files of the earlier format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from filtag_kg.cli import main
from filtag_kg.data import image_folder
from filtag_kg.errors import ProfileError
from filtag_kg.explain import ExplainOptions, explain_dataset, explain_tensors, read_explanations
from filtag_kg.explanations_io import (
    FORMAT_VERSION,
    ParquetParts,
    encode_rows,
    iter_parquet_records,
    names_metadata,
    value_codes,
    values_from_codes,
)
from filtag_kg.tagging import TagSetting


def _descending_segments(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """Random values in [0, 1], descending within each segment (as rank order is)."""
    return np.concatenate([np.sort(rng.random(m))[::-1] for m in lengths.reshape(-1)] or [np.zeros(0)])


@pytest.mark.parametrize("bits", [0, 4, 10, 24])
def test_value_codes_round_trip_within_half_a_step(bits: int) -> None:
    rng = np.random.default_rng(bits)
    lengths = rng.integers(0, 6, size=(7, 4))
    lengths[2] = 0  # an image without active filters
    values = _descending_segments(rng, lengths)
    values[:3] = values[0]  # ties
    coded = value_codes(values, lengths, bits)
    assert coded is not None
    tops, gaps = coded
    assert tops.shape == (lengths.size,) and gaps.shape == values.shape and (gaps >= 0).all()
    back = values_from_codes(tops, gaps, lengths.reshape(-1), bits)
    assert back.tolist() == (np.rint(values * 2.0**bits) / 2.0**bits).tolist()
    assert np.abs(back - values).max() <= 2.0 ** -(bits + 1)


def test_values_that_cannot_be_coded_are_stored_unrounded() -> None:
    lengths = np.array([[2]])
    assert value_codes(np.array([np.nan, 0.1]), lengths, 10) is None
    assert value_codes(np.array([2.0e6, 1.0]), lengths, 10) is None  # codes beyond 2^30
    assert value_codes(np.array([0.1, 0.2]), lengths, 10) is None  # not in rank order
    with pytest.raises(ValueError, match="0..24"):
        value_codes(np.array([0.2, 0.1]), lengths, 25)


def _above_average_rows(n: int, bits: int | None) -> object:
    """Rows of ``n`` images explained above-average on VGG16-like widths (about half of
    each layer active) with 1000 classes, as one record batch."""
    import torch

    rng = np.random.default_rng(0)
    widths = [64, 128, 256, 512, 512]
    names = [f"l{i}" for i in range(len(widths))]
    incidence = [(rng.random((f, 1000)) < 0.4).astype(np.float32) for f in widths]
    values = torch.from_numpy(rng.beta(2, 5, size=(n, sum(widths))))
    ex = explain_tensors(values, widths, incidence, TagSetting("above-average"), names)
    return encode_rows(
        indices=range(n), images=[f"img{i}.jpg" for i in range(n)], sha256=[None] * n,
        true_classes=[None] * n,
        top_class=np.zeros((n, 5), dtype=np.int64), top_prob=np.zeros((n, 5), dtype=np.float32),
        method="above-average", param="", explained=ex, perturbation=None, weighting=None, value_bits=bits,
    ), names


def _column_bytes(folder: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    md = pq.ParquetFile(next(folder.glob("part-*.parquet"))).metadata
    group = md.row_group(0)
    return {group.column(c).path_in_schema.split(".")[0]: group.column(c).total_compressed_size
            for c in range(group.num_columns)}


def test_rounded_values_make_above_average_rows_small(tmp_path: Path) -> None:
    """Issue 16: above-average rows took 9.2 KiB per image, 5.1 KiB of it float32 values and
    2.4 KiB filter indices; with ``value_bits`` (and dictionary-coded filters) far less."""
    sizes = {}
    for bits in (None, 10):
        batch, names = _above_average_rows(128, bits)
        ids = [f"c{i}" for i in range(1000)]
        parts = ParquetParts(tmp_path / str(bits), 0, names_metadata(names, ids, ids, ids))
        parts.write(batch)
        parts.commit()
        sizes[bits] = {k: v / 128 for k, v in _column_bytes(tmp_path / str(bits)).items()}
        active = sum(len(r) for rec in iter_parquet_records(tmp_path / str(bits))
                     for r in rec["active_filters"].values()) / 128
    assert 600 < active < 900  # about half of the 1,472 filters
    per_filter = {k: v / active for k, v in sizes[None].items()}
    assert per_filter["filter"] < 1.2  # dictionary indices, 1.15 bytes here (1.28 as deltas)
    assert per_filter["vote_count"] * active < 880  # 1000 counts: 845 bytes (916 as deltas)
    assert 2.5 < per_filter["value"] < 3.0  # float32 values: random low bytes
    coded = (sizes[10]["value_gap"] + sizes[10]["value_top"]) / active
    assert sizes[10]["value"] < 5 and coded < 0.6  # rank-ordered gaps of 2^-10 steps


def test_rounded_forms_agree_and_keep_ranks_votes_predictions(
    tiny_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, held = tiny_run
    imageset = image_folder(held)
    common = dict(progress=False, batch_size=4, checkpoint_every=1, perturb=["gaussian:0.2"])
    explain_dataset(run, imageset, ExplainOptions(**common))
    exact = list(read_explanations(run))
    rounded = {}
    for jsonl in (False, True):
        other = tmp_path / f"rounded-{jsonl}"
        shutil.copytree(run, other)
        meta = explain_dataset(other, imageset, ExplainOptions(jsonl=jsonl, value_bits=6, **common))
        assert meta["value_bits"] == 6
        rounded[jsonl] = list(read_explanations(other))
    assert rounded[False] == rounded[True]  # the two forms agree exactly, image by image
    assert len(exact) == len(rounded[False]) == 9 * 2 * 2
    step = 2.0**-6
    for e, r in zip(exact, rounded[False]):
        assert {k: v for k, v in e.items() if k != "active_filters"} == {
            k: v for k, v in r.items() if k != "active_filters"}
        for layer, got in r["active_filters"].items():
            want = e["active_filters"][layer]
            assert [(a["filter"], a["rank"]) for a in got] == [(a["filter"], a["rank"]) for a in want]
            for a, b in zip(got, want):
                assert a["value"] / step == round(a["value"] / step)
                assert abs(a["value"] - b["value"]) <= step / 2 + 1e-7  # b is float32-rounded


def _explicit_classes(table: object) -> object:
    """``table`` as a writer before format 3 stored it: every row's classes listed, also
    when they are 0..k-1 (format 3 leaves such lists null)."""
    import pyarrow as pa

    for cls, counts in (("vote_class", ("vote_count",)), ("last_class", ("last_count", "last_vote"))):
        rows = table.column(cls).to_pylist()
        sizes = [next((len(v) for v in (table.column(c)[r].as_py() for c in counts) if v is not None), 0)
                 for r in range(table.num_rows)]
        full = [list(range(k)) if row is None else row for row, k in zip(rows, sizes)]
        table = table.set_column(table.schema.get_field_index(cls), cls, pa.array(full, pa.list_(pa.int32())))
    return table


@pytest.mark.parametrize("version", [1, 2])
def test_files_of_earlier_formats_still_read_and_newer_ones_are_refused(tmp_path: Path, version: int) -> None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    batch, names = _above_average_rows(4, None)
    ids = [f"c{i}" for i in range(1000)]
    doc = json.loads(names_metadata(names, ids, ids, ids)[b"filtag.explanations"])
    assert doc.pop("format") == FORMAT_VERSION == 3
    old = _explicit_classes(pa.Table.from_batches([batch]))
    if version == 1:
        old = old.drop_columns(["value_bits", "value_top", "value_gap"])
    else:
        doc["format"] = 2
    folder = tmp_path / "old"
    folder.mkdir()
    pq.write_table(old.replace_schema_metadata({b"filtag.explanations": json.dumps(doc).encode()}),
                   folder / "part-000000.parquet")
    parts = ParquetParts(tmp_path / "new", 0, names_metadata(names, ids, ids, ids))
    parts.write(batch)
    parts.commit()
    assert list(iter_parquet_records(folder)) == list(iter_parquet_records(tmp_path / "new"))
    doc["format"] = FORMAT_VERSION + 1
    pq.write_table(old.replace_schema_metadata({b"filtag.explanations": json.dumps(doc).encode()}),
                   folder / "part-000000.parquet")
    with pytest.raises(ProfileError, match="newer than this filtag-kg reads"):
        list(iter_parquet_records(folder))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_rows_voting_for_classes_0_to_k_store_no_class_list(
    tmp_path: Path, weighted: bool, backend: str
) -> None:
    """Issue 16: above-average rows vote for every class, and writing their 1,000 class
    numbers (twice: all layers and the last) took a fifth of the Parquet writing. Such
    rows store a null list; other rows, and rows without votes, keep theirs."""
    import torch

    rng = np.random.default_rng(1)
    widths, n, classes = [8, 16, 32], 9, 50
    names = ["a", "b", "c"]
    incidence = [(rng.random((f, classes)) < 0.5).astype(np.float32) for f in widths]
    for inc in incidence:
        inc[:, 0] = 0  # class 0 is tagged to one filter only: a's filter 0 ...
        inc[:, 1:][inc[:, 1:].sum(axis=1) == 0, 1] = 1
    incidence[0][0, 0] = 1
    incidence[2][0, 0] = 1  # ... and c's filter 0 (the last layer)
    values = rng.random((n, sum(widths)))
    values[0::2, 0] = values[0::2, widths[0] + widths[1]] = 2.0  # filter 0 active: every class
    values[1::2, 0] = values[1::2, widths[0] + widths[1]] = -1.0  # not: class 0 missing
    values[8] = 0.5  # nothing above the mean: no votes at all
    weights = torch.from_numpy(rng.random((n, sum(widths)))) if weighted else None
    ex = explain_tensors(torch.from_numpy(values), widths, incidence, TagSetting("above-average"), names,
                         weights=weights, backend=backend)
    batch = encode_rows(
        indices=range(n), images=[f"img{i}.jpg" for i in range(n)], sha256=[None] * n,
        true_classes=[None] * n,
        top_class=np.zeros((n, 5), dtype=np.int64), top_prob=np.zeros((n, 5), dtype=np.float32),
        method="above-average", param="", explained=ex, perturbation=None,
        weighting="gradcam" if weighted else None)
    every = [r % 2 == 0 and r < 8 for r in range(n)]
    assert batch.column("vote_class").is_null().to_pylist() == every
    assert batch.column("last_class").is_null().to_pylist() == every
    assert batch.column("vote_class")[8].as_py() == []  # no votes: an empty list, not null
    ids = [f"k{i}" for i in range(classes)]
    parts = ParquetParts(tmp_path / "rows", 0, names_metadata(names, ids, ids, ids))
    parts.write(batch)
    parts.commit()
    records = list(iter_parquet_records(tmp_path / "rows"))
    for r, rec in enumerate(records):  # against the pairs explain_tensors computed
        pairs = slice(ex.count_offsets[r], ex.count_offsets[r + 1])
        want = dict(zip((ids[c] for c in ex.count_classes[pairs]), ex.counts[pairs].tolist()))
        assert rec["vote_counts"] == want
        assert len(want) == classes if every[r] else ids[0] not in want
        last = slice(ex.last_offsets[r], ex.last_offsets[r + 1])
        want_last = dict(zip((ids[c] for c in ex.last_classes[last]), ex.last[last].tolist()))
        assert rec["votes_last_layer"] == want_last
        assert set(want_last) == set(ids) if every[r] else ids[0] not in want_last
    assert records[8]["vote_counts"] == {} and records[8]["votes_last_layer"] == {}


def test_value_bits_out_of_range_is_one_error(
    tiny_run: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    run, held = tiny_run
    with pytest.raises(ProfileError, match="0..24"):
        ExplainOptions(value_bits=30)
    assert main(["explain", str(run), "--data", str(held), "--value-bits", "-1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("filtag-kg: error: --value-bits -1 is out of range") and err.count("\n") == 1


def _damage(run: Path, how: str) -> str:
    """Damage the run's explanations as a full disk, a bad copy or a hand edit would, and
    return the place the error must name."""
    if how == "parquet cut":
        part = sorted((run / "explanations.parquet").glob("part-*.parquet"))[0]
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
        return str(part)
    if how == "parquet without names":
        import pyarrow.parquet as pq

        part = sorted((run / "explanations.parquet").glob("part-*.parquet"))[0]
        pq.write_table(pq.read_table(part).replace_schema_metadata({}), part)
        return str(part)
    path = run / "explanations.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    # "jsonl cut in a character": the first byte of a two-byte UTF-8 character ends the line
    lines[1] = {"jsonl cut": lines[1][:40] + b"\n", "jsonl cut in a character": lines[1][:40] + b"\xc3\n",
                "jsonl not an object": b"[1, 2]\n"}[how]
    path.write_bytes(b"".join(lines))
    return f"{path}:2"


@pytest.mark.parametrize("how", ["parquet cut", "parquet without names", "jsonl cut",
                                 "jsonl cut in a character", "jsonl not an object"])
def test_damaged_explanations_are_one_line_errors_in_every_reader(
    tiny_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """A damaged explanations file made evaluate, report and sentences stop with a pyarrow
    or json traceback (export alone said which file and what to do); now every reader
    names the file (and line) and the command that rewrites it."""
    run, held = tiny_run
    explain_dataset(run, image_folder(held), ExplainOptions(progress=False, batch_size=4,
                                                            jsonl=how.startswith("jsonl")))
    where = _damage(run, how)
    for argv in (["evaluate", str(run)], ["report", str(run), "--out", str(tmp_path / "report"), "--quiet"],
                 ["sentences", str(run)], ["export", str(run), "--out", str(tmp_path / "kg.nq")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.splitlines()
        assert len(err) - sum(e.startswith("filtag-kg: warning:") for e in err) == 1, (argv, err)
        assert err[-1].startswith("filtag-kg: error: ") and where in err[-1], (argv, err)
        assert err[-1].endswith("regenerate it with `filtag-kg explain`"), (argv, err)


@pytest.mark.parametrize("edit", ["drop method", "votes a list", "model_top strings"])
def test_evaluate_names_a_hand_edited_record(
    tiny_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str], edit: str
) -> None:
    """A JSON line that parses but lacks what the evaluation reads stopped evaluate with a
    KeyError traceback (export and the report already coped)."""
    import json

    run, held = tiny_run
    explain_dataset(run, image_folder(held), ExplainOptions(progress=False, batch_size=4, jsonl=True))
    path = run / "explanations.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    rec = json.loads(lines[2])
    if edit == "drop method":
        del rec["method"]
    elif edit == "votes a list":
        rec["votes"] = list(rec["votes"])
    else:
        rec["model_top"] = ["n01"]
    lines[2] = json.dumps(rec) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"filtag-kg: error: {path}: record 3 ({rec['image']}) is not"), err
    assert err[0].endswith("regenerate it with `filtag-kg explain`"), err


def test_damaged_run_files_of_the_explanation_pass_are_one_line_errors(
    tiny_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged tags.json (read for the settings) or resume state stopped explain with a json
    traceback; a damaged explanations.json of a finished pass stopped explain --resume. Now the
    first two are named with what to do, and the third just explains again."""
    run, held = tiny_run
    explain = ["explain", str(run), "--data", str(held), "--quiet", "--batch-size", "4"]
    tags = run / "tags.json"
    good = tags.read_bytes()
    for text in (good[: len(good) // 2], b'{"settings": 3}'):
        tags.write_bytes(text)
        capsys.readouterr()
        assert main(explain) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and str(tags) in err[0] and "`filtag-kg tag`" in err[0], err
    tags.write_bytes(good)
    assert main(explain) == 0
    meta = run / "explanations.json"
    meta.write_text("{cut", encoding="utf-8")
    assert main([*explain, "--resume"]) == 0  # not a finished pass's record: explained again
    assert json.loads(meta.read_text(encoding="utf-8"))["file"] == "explanations.parquet"
    state = run / "explanations.state.json"
    state.write_text('{"done": 1}', encoding="utf-8")
    capsys.readouterr()
    assert main([*explain, "--resume"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(state) in err[0] and "--restart" in err[0], err
