"""The export's batch encoder and ``--jobs``: the same bytes as the graph-by-graph encoder for
any number of processes, from either stored form, with flat memory for the image variants,
and the export's atomic, disk-full-safe publishing kept."""

from __future__ import annotations

import errno
import json
import multiprocessing
import sys
from pathlib import Path

import pytest
from test_rdf_hostile import CLASSES as HOSTILE_CLASSES
from test_rdf_hostile import LAYERS as HOSTILE_LAYERS
from test_rdf_hostile import PATHS_CONTROL, PATHS_PLAIN
from test_rdf_support import make_run, wordnet

import filtag_kg.rdf.rundata as rundata
from filtag_kg.errors import OutputError
from filtag_kg.rdf import ExplanationFileError, RunGraphs, export_run, export_run_stats
from filtag_kg.rdf.explanation_graph import SeenVariants
from filtag_kg.rdf.export import ExportJobsError
from filtag_kg.rdf.synthetic import write_synthetic_run


def _two_settings(run: Path, *, interleaved: bool) -> Path:
    """Give every image a second explanation (another setting) so one image variant's
    classification is shared by rows that land in different batches."""
    path = run / "explanations.jsonl"
    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    other = [{**r, "param": "3"} for r in recs]
    rows = [r for pair in zip(recs, other) for r in pair] if interleaved else recs + other
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return run


def _graph_by_graph(run: Path, *, graphs: bool = True) -> bytes:
    """The export as the graph-by-graph route (the encoder before batches) writes it."""
    return b"".join(
        text.encode("utf-8") for _, text, _ in RunGraphs(run, wordnet=wordnet(), graphs=graphs)
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The existing tests' run folders, and variants whose rows share classifications."""
    base = tmp_path_factory.mktemp("jobs")
    weighted = {"weighting": "gradcam", "perturbation": {"kind": "gaussian", "param": 0.1, "seed": 3}}
    hostile_paths = PATHS_PLAIN + PATHS_CONTROL
    hostile = {
        "layers": HOSTILE_LAYERS, "classes": HOSTILE_CLASSES, "spec": 'my models/net #1 "v2".pt',
        "image_name": lambda i: hostile_paths[i % len(hostile_paths)], "images": len(hostile_paths),
    }
    return {
        "export": make_run(base / "export", images=6, **weighted),
        "parquet": make_run(base / "parquet", images=7, form="parquet", **weighted),
        "hostile": make_run(base / "hostile", **hostile),
        "shared": _two_settings(make_run(base / "shared", images=5), interleaved=True),
        "shared-late": _two_settings(make_run(base / "late", **hostile), interleaved=False),
    }


@pytest.mark.parametrize("name", ["export", "parquet", "hostile", "shared", "shared-late"])
def test_batches_and_jobs_give_the_graph_by_graph_bytes(
    name: str, runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = runs[name]
    want = _graph_by_graph(run)
    monkeypatch.setattr(rundata, "BATCH_ROWS", 3)  # many batches; a variant's rows straddle them
    for jobs in (1, 2, 3):
        got = export_run(run, fmt="nq", out=tmp_path / f"kg{jobs}.nq", wordnet=wordnet(), jobs=jobs)
        data = got.read_bytes()
        assert data == want, f"jobs={jobs}"
        lines = data.decode("utf-8").splitlines()
        assert sorted(lines) == sorted(want.decode("utf-8").splitlines())  # the same set of quads
    nt = export_run(run, fmt="nt", out=tmp_path / "kg.nt", wordnet=wordnet(), jobs=2).read_bytes()
    assert nt == _graph_by_graph(run, graphs=False)
    assert not multiprocessing.active_children()


def test_a_shared_classification_is_written_once_and_counted_once(runs: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rundata, "BATCH_ROWS", 4)
    images = len(PATHS_PLAIN + PATHS_CONTROL)
    s = export_run_stats(runs["shared-late"], fmt="nq", out=tmp_path / "kg.nq", wordnet=wordnet(), jobs=2)
    text = s.path.read_text(encoding="utf-8")
    types = [ln for ln in text.splitlines() if "#ImageClassification>" in ln and "#type>" in ln]
    assert len(types) == len(set(types)) == images
    assert s.explanations == 2 * images and s.quads == len(text.splitlines())


def test_the_parquet_and_json_lines_forms_give_the_same_graphs(tmp_path: Path) -> None:
    kw = {"layers": [("features.0", 6), ("features.2", 5)], "classes": 8, "images": 9, "k": 2}
    a = write_synthetic_run(tmp_path / "a", form="jsonl", **kw)
    b = write_synthetic_run(tmp_path / "b", form="parquet", **kw)
    la = export_run(a, fmt="nq", out=tmp_path / "a.nq", wordnet=wordnet(), jobs=2).read_text(encoding="utf-8")
    lb = export_run(b, fmt="nq", out=tmp_path / "b.nq", wordnet=wordnet(), jobs=2).read_text(encoding="utf-8")

    def shape(text: str) -> list[str]:  # values are float32 in Parquet: compare all but literals
        double = '"^^<http://www.w3.org/2001/XMLSchema#double>'
        return sorted(ln for ln in text.splitlines() if double not in ln and "explanations.json" not in ln)

    assert shape(la) == shape(lb) and len(la.splitlines()) == len(lb.splitlines())


def test_image_variants_seen_take_a_bit_each() -> None:
    run = "https://example.org/kg/run/m-1"
    seen = SeenVariants(run)
    plain = [f"{run}/classification/{i}" for i in range(0, 100_000, 2)]
    blurred = [f"{run}/classification/{i}/blur-1.0-3" for i in range(1, 100_000, 2)]
    odd = [f"{run}/classification/007", f"{run}/classification/a%20b", f"{run}/classification/123456789",
           "https://elsewhere.org/x"]
    for iri in plain + blurred + odd:
        assert iri not in seen
        seen.add(iri)
        assert iri in seen
    assert f"{run}/classification/2/blur-1.0-3" not in seen and f"{run}/classification/1" not in seen
    assert f"{run}/classification/7" not in seen  # "007" is another IRI
    assert f"{run}/classification/100000" not in seen
    # one bit per index and variant (a set of IRIs would hold over 10 MiB here)
    held = sum(sys.getsizeof(b) for b in seen._bits.values()) + sys.getsizeof(seen._other)
    assert held < 64 * 1024


def test_bad_jobs_and_bad_rows_are_one_line_errors(runs: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from filtag_kg.cli import main

    for bad in (0, -1):
        with pytest.raises(ExportJobsError, match="--jobs"):
            export_run(runs["export"], fmt="nq", out=tmp_path / "x.nq", wordnet=wordnet(), jobs=bad)
    out = str(tmp_path / "x.nq")
    code = main(["export", str(runs["export"]), "--allow-local-base", "--jobs", "0", "--out", out])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("filtag-kg: error: bad number of processes 0")
    assert not (tmp_path / "x.nq").exists()

    broken = make_run(tmp_path / "broken", images=8)
    path = broken / "explanations.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[6])
    del rec["method"]
    lines[6] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ExplanationFileError, match=r"jsonl:7: not an explanation record \(missing"):
        export_run(broken, fmt="nq", out=tmp_path / "b.nq", wordnet=wordnet(), jobs=2)
    code = main(["export", str(broken), "--allow-local-base", "--format", "nq", "--jobs", "2"])
    err = capsys.readouterr().err
    assert code == 2 and ":7: not an explanation record" in err and err.count("\n") == 1
    assert not (broken / "kg.nq").exists()
    assert not [p.name for p in broken.iterdir() if p.name.startswith(".")]
    assert not multiprocessing.active_children()


def test_disk_full_with_jobs_keeps_the_old_file_and_stops_the_workers(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import filtag_kg.rdf.export as export

    out = tmp_path / "kg.nq"
    out.write_bytes(b"old\n")
    real = export.write_nquads

    class Full:
        """A file that takes a few writes, then finds the disk full."""

        def __init__(self) -> None:
            self.writes = 0

        def write(self, data: bytes) -> int:
            self.writes += 1
            if self.writes > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(data)

    monkeypatch.setattr(export, "write_nquads", lambda data, fh, **kw: real(data, Full(), **kw))
    monkeypatch.setattr(rundata, "BATCH_ROWS", 1)
    with pytest.raises(OutputError, match="no space left"):
        export_run(runs["export"], fmt="nq", out=out, wordnet=wordnet(), jobs=2)
    assert out.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["kg.nq"]
    assert not multiprocessing.active_children()
