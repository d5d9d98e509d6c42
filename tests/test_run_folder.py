"""A run folder holds one consistent run: no stale graph, no mixed runs, no silent partial pass."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from conftest import write_images

from filtag_kg._io import read_json, write_json
from filtag_kg.cli import main

TINY = ["--model", "tiny_models:build_tiny", "--image-size", "16", "--quiet"]
BASE = "https://example.org/kg/"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def make_run(capsys: pytest.CaptureFixture[str], data: Path | str, run: Path | str, *extra: str) -> Path:
    """``filtag-kg run`` of the tiny model over ``data`` into ``run``; it must succeed."""
    code, _, err = cli(capsys, "run", *TINY, "--data", str(data), *extra, "--out", str(run))
    assert code == 0, err
    return Path(run)


def test_explain_refreshes_the_runs_graph(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    run = make_run(capsys, image_dir, tmp_path / "run", "--base-iri", BASE)
    code, _, err = cli(capsys, "export", str(run), "--format", "nq", "--base-iri", BASE)
    assert code == 0, err
    code, out, err = cli(capsys, "explain", str(run), "--data", str(image_dir), "--quiet")
    assert code == 0, err
    for name in ("kg.trig", "kg.nq"):  # every export in the run folder, each as it was made
        assert f"knowledge graph refreshed: {name}, " in out
    assert out.count("12 explanation graphs") == 2
    assert BASE in (run / "kg.nq").read_text(encoding="utf-8")
    kg = (run / "kg.trig").read_text(encoding="utf-8")
    assert BASE in kg  # refreshed with the run's own base IRI, not the default
    # the README's flow: load the run's graph, ask how an image was explained
    store = tmp_path / "store"
    code, _, err = cli(capsys, "load", str(run / "kg.trig"), "--store", str(store))
    assert code == 0 and "warning" not in err, err
    # images are named by their path below the dataset root (no machine-local paths)
    image = next((image_dir / "n02085620").iterdir()).relative_to(image_dir).as_posix()
    code, out, err = cli(capsys, "query", "explain-image", "--store", str(store), "--param",
                         f"image={image}", "--format", "csv")
    assert code == 0, err
    assert len(out.strip().splitlines()) > 5 and "explanation" in out


def test_readers_of_a_stale_graph_are_told(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    run = make_run(capsys, image_dir, tmp_path / "run", "--base-iri", BASE)
    later = (run / "kg.trig").stat().st_mtime + 5
    os.utime(run / "tags.tsv", (later, later))  # e.g. `filtag-kg tag` after the export
    for argv in (["load", str(run / "kg.trig"), "--store", str(tmp_path / "s")],
                 ["query", "untagged-filters", "--graph", str(run / "kg.trig")]):
        code, _, err = cli(capsys, *argv)
        assert code == 0
        assert "kg.trig is older than tags.tsv" in err
        assert f"refresh it with `filtag-kg export {run} --base-iri {BASE}`" in err


def test_new_columnar_explanations_make_the_graph_stale(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    """explanations.parquet is a folder: a part written after the export makes it stale."""
    run = make_run(capsys, image_dir, tmp_path / "run", "--explain-data", str(image_dir), "--base-iri", BASE)
    later = (run / "kg.trig").stat().st_mtime + 5
    part = next((run / "explanations.parquet").rglob("*.parquet"))
    os.utime(part, (later, later))
    code, _, err = cli(capsys, "query", "untagged-filters", "--graph", str(run / "kg.trig"))
    assert code == 0
    assert "kg.trig is older than explanations.parquet" in err


def test_a_different_run_is_not_written_over_another(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    run = make_run(capsys, image_dir, tmp_path / "run", "--explain-data", str(image_dir))
    (run / "report").mkdir()
    (run / "report" / "index.html").write_text("old report")
    (run / "mine.txt").write_text("the user's own file")
    old = sorted(p.name for p in run.iterdir())
    assert {"explanations.parquet", "evaluation.json", "kg.trig"} <= set(old)

    # the same run again: fine, nothing of it removed
    code, _, err = cli(capsys, "run", *TINY, "--data", str(image_dir), "--no-export", "--out", str(run))
    assert code == 0, err
    assert (run / "explanations.parquet").is_dir()

    other = write_images(tmp_path / "other", classes=["n02085620", "n04536866"], seed=3)
    code, _, err = cli(capsys, "run", *TINY, "--data", str(other), "--out", str(run))
    assert code == 2
    assert err.count("\n") == 1 and "--overwrite" in err and "different data" in err
    assert sorted(p.name for p in run.iterdir()) == old  # refused before touching anything

    code, _, err = cli(capsys, "run", *TINY, "--data", str(other), "--overwrite", "--out", str(run))
    assert code == 0, err
    left = {p.name for p in run.iterdir()}
    assert not {"explanations.parquet", "explanations.json", "evaluation.json", "report"} & left
    assert {"profile.json", "tags.tsv", "kg.trig", "mine.txt"} <= left
    assert read_json(run / "profile.json")["dataset"]["classes"] == 2


def test_evaluate_says_when_the_explanation_pass_was_cut_off(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    run = make_run(capsys, image_dir, tmp_path / "run", "--explain-data", str(image_dir), "--no-export")
    assert read_json(run / "evaluation.json")["explanation_pass"] == {"complete": True}
    # what a kill leaves: the state file of the pass (as the pass writes it)
    write_json(run / "explanations.state.json", {"fingerprint": {}, "done": 72, "offset": 0,
                                                   "skipped": [], "started_at": "", "total": 400})
    code, _, err = cli(capsys, "evaluate", str(run))
    assert code == 0
    assert "interrupted after 72 of 400 images" in err and "--resume" in err
    assert read_json(run / "evaluation.json")["explanation_pass"] == {
        "complete": False, "done": 72, "total": 400}


def test_recorded_paths_work_from_another_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from tiny_models import build_tiny

    work = tmp_path / "work"
    write_images(work / "data")
    torch.save(build_tiny().state_dict(), work / "w.pth")
    monkeypatch.chdir(work)
    code, _, err = cli(capsys, "run", *TINY, "--weights-file", "w.pth", "--data", "data", "--top-images", "2",
                       "--explain-data", "data", "--no-export", "--out", "runs/r")
    assert code == 0, err
    meta = read_json(work / "runs/r/profile.json")
    assert meta["model"]["weights_file"] == str(work / "w.pth")
    assert meta["dataset"]["root"] == str(work / "data") and meta["dataset"]["cwd"] == str(work)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = cli(capsys, "report", str(work / "runs/r"), "--quiet", "--max-images", "3")
    assert code == 0, err
    assert "could not be read" not in out and "cannot rebuild" not in out

    (work / "w.pth").rename(work / "moved.pth")
    code, out, err = cli(capsys, "report", str(work / "runs/r"), "--quiet", "--max-images", "3")
    assert code == 0, err
    assert f"weights file {work / 'w.pth'}" in out and "profile.json" in out


def test_disk_full_during_export_is_one_line_and_keeps_the_old_graph(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import filtag_kg.rdf.export as export

    run = make_run(capsys, image_dir, tmp_path / "run", "--base-iri", BASE)
    before = (run / "kg.trig").read_bytes()
    real = export.write_nquads

    def fill_disk(data, fh, **kw):  # type: ignore[no-untyped-def]
        real(data, fh, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_nquads", fill_disk)
    for fmt in ("trig", "nq"):
        code, out, err = cli(capsys, "export", str(run), "--format", fmt, "--base-iri", BASE)
        assert code == 2 and err.startswith("filtag-kg: error: no space left") and err.count("\n") == 1
        assert "Traceback" not in err
    assert (run / "kg.trig").read_bytes() == before
    assert not (run / "kg.nq").exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_killed_exports_temps_are_removed_by_the_next(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from filtag_kg._io import TEMP_MARK, _host

    run = make_run(capsys, image_dir, tmp_path / "run", "--no-export")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    big = run / f".kg.trig.{TEMP_MARK}.{_host()}.{gone.pid}.x1y2.nq"
    big.write_bytes(b"<a> <b> <c> .\n" * 1000)
    code, _, err = cli(capsys, "export", str(run))
    assert code == 0, err
    assert not big.exists()


def test_disk_full_during_run_is_one_line(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # every artifact is synced before its rename
    run = tmp_path / "run"
    code, _, err = cli(capsys, "run", *TINY, "--data", str(image_dir), "--out", str(run))
    assert code == 2 and err.startswith("filtag-kg: error: no space left") and err.count("\n") == 1
    assert not [p.name for p in run.iterdir() if p.name != "profile.ckpt.npz"]  # nothing partial


def test_retag_and_new_explanations_refresh_what_was_made_from_them(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    run = make_run(capsys, image_dir, tmp_path / "run", "--explain-data", str(image_dir), "--base-iri", BASE)
    code, out, err = cli(capsys, "tag", str(run), "--k", "2", "--quiet")
    assert code == 0, err
    assert "knowledge graph refreshed" in out
    assert (run / "kg.trig").stat().st_mtime >= (run / "tags.tsv").stat().st_mtime
    before = read_json(run / "evaluation.json")
    one = next((image_dir / "n02085620").iterdir())
    code, out, err = cli(capsys, "explain", str(run), str(one), "--k", "2", "--quiet")
    assert code == 0, err
    assert "evaluation refreshed" in out and "knowledge graph refreshed" in out
    after = read_json(run / "evaluation.json")
    assert after != before  # it now describes the one new explanation, not the 12 old ones
    assert (run / "evaluation.json").stat().st_mtime >= (run / "explanations.json").stat().st_mtime


def test_a_refreshed_export_keeps_every_option_it_was_made_with(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    """`tag` rewrites RUN/kg.nq as `export` made it: licence, materialized triples and all."""
    run = make_run(capsys, image_dir, tmp_path / "run", "--base-iri", BASE)
    licence = "https://creativecommons.org/licenses/by/4.0/"
    code, _, err = cli(capsys, "export", str(run), "--format", "nq", "--base-iri", BASE,
                       "--license", licence, "--materialize")
    assert code == 0, err
    made = (run / "kg.nq").read_text(encoding="utf-8")
    assert licence in made and "#represents>" in made
    code, out, err = cli(capsys, "tag", str(run), "--k", "2", "--quiet")
    assert code == 0 and "knowledge graph refreshed: kg.nq" in out, err
    again = (run / "kg.nq").read_text(encoding="utf-8")
    assert again != made and licence in again and "#represents>" in again


def test_a_name_that_is_not_utf8_never_aborts_a_run(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    d = image_dir / "n02085620"
    os.rename(d / "img00.png", os.fsdecode(bytes(d) + b"/caf\xe9.png"))
    code, out, err = cli(capsys, "run", *TINY, "--data", str(image_dir), "--explain-data", str(image_dir),
                         "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert "caf\\xe9.png" in err and "not valid UTF-8" in err
    ds = read_json(tmp_path / "run" / "profile.json")["dataset"]
    assert ds["images_used"] == 11 and any("caf\\xe9.png" in w for w in ds["warnings"])


def test_the_demo_replaces_only_its_own_earlier_run(tmp_path: Path) -> None:
    from filtag_kg.demo import DEMO_MODEL, _holds_a_demo_run

    assert not _holds_a_demo_run(tmp_path)
    write_json(tmp_path / "profile.json", {"model": {"spec": DEMO_MODEL}})
    assert _holds_a_demo_run(tmp_path)
    write_json(tmp_path / "profile.json", {"model": {"spec": "vgg16"}})
    assert not _holds_a_demo_run(tmp_path)


def test_report_links_to_the_iris_of_the_runs_own_graph(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    run = make_run(capsys, image_dir, tmp_path / "run", "--base-iri", BASE)
    code, _, err = cli(capsys, "report", str(run), "--quiet", "--no-heatmaps", "--max-images", "0")
    assert code == 0, err
    index = (run / "report" / "index.html").read_text(encoding="utf-8")
    assert BASE in index and "http://localhost:8000/filtag-kg/" not in index


def test_retagging_without_the_explanations_setting_says_they_are_stale(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    """Explanations vote with the tags of their own setting; after `tag --k 2` replaced the
    k = 1 tags, the graph would show k = 1 votes beside k = 2 tags: every reader says so."""
    run = make_run(capsys, image_dir, tmp_path / "run", "--explain-data", str(image_dir), "--base-iri", BASE)
    code, out, err = cli(capsys, "tag", str(run), "--k", "2", "--quiet")
    assert code == 0, err
    assert "explanations" in err and "top-k 1" in err and "explain" in err and "--k 2" in err, err
    export = ("export", str(run), "--base-iri", BASE, "--out", str(tmp_path / "g.nq"))
    for argv in (("evaluate", str(run)), export):
        code, _, err = cli(capsys, *argv)
        assert code == 0 and "top-k 1" in err and "tags.json" in err, (argv, err)
    # explaining again with the new setting ends it
    code, out, err = cli(capsys, "explain", str(run), "--data", str(image_dir), "--k", "2", "--quiet")
    assert code == 0 and "top-k 1" not in err, err
    code, _, err = cli(capsys, "evaluate", str(run))
    assert code == 0 and "tags.json" not in err, err
    # tagging with both settings keeps the k = 1 explanations valid: no warning
    code, _, err = cli(capsys, "tag", str(run), "--k", "1", "--k", "2", "--quiet")
    assert code == 0 and "stale" not in err and "top-k" not in err, err


def test_fingerprint_diff_names_a_key_only_one_side_has_even_when_it_is_none() -> None:
    """A key only the new pass's fingerprint has is a difference whatever its value (a new
    option recorded as None once made the refusal read "used a different ; rerun")."""
    from filtag_kg.runfolder import fingerprint_diff

    assert fingerprint_diff({"a": 1}, {"a": 1, "weighting": None}) == ["weighting"]
    assert fingerprint_diff({"a": 1, "clusters": None}, {"a": 1}) == ["clusters"]
    assert fingerprint_diff({"a": 1, "b": None}, {"a": 1, "b": None}) == []
    assert fingerprint_diff(None, {"a": 1}) == ["a"]
