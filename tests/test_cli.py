"""The command line end to end: outputs, help, and one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from tiny_models import build_tiny

from filtag_kg.cli import build_parser, main

TINY = ["--model", "tiny_models:build_tiny", "--image-size", "16", "--quiet"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"run", "profile", "tag", "layers", "demo"} <= set(sub.choices)
    for name, p in sub.choices.items():
        text = p.format_help()
        assert p.description, name
        assert "usage:" in text and len(text) > 200, name


def test_run_then_retag(capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys,
        "run",
        *TINY,
        "--data",
        str(image_dir),
        "--k",
        "1",
        "--percent",
        "50",
        "--above-average",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "layer conv2: 8 filters, measured at bn2 (relu applied in the hook)" in stdout
    assert "top-k 1: 3 tags" in stdout
    rows = list(csv.DictReader((out / "tags.tsv").open(), delimiter="\t"))
    assert {r["method"] for r in rows} == {"top-k", "top-percent", "above-average"}
    # top-k 1: one filter per class and layer; 3 classes x 3 layers
    assert sum(r["method"] == "top-k" for r in rows) == 9
    # top-percent 50 on widths 6, 8, 5: round(3), round(4), round(2.5)=2 per class
    assert sum(r["method"] == "top-percent" for r in rows) == 3 * (3 + 4 + 2)
    assert {r["label"] for r in rows} == {"Chihuahua", "tabby", "violin"}

    code, stdout, err = run_cli(capsys, "tag", str(out), "--k", "2", "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader((out / "tags.tsv").open(), delimiter="\t"))
    assert {(r["method"], r["param"]) for r in rows} == {("top-k", "2")}
    assert len(rows) == 18


def test_python_dash_m_and_layers_command(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "filtag_kg", "layers", "tiny_models:build_tiny", "--image-size", "8"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "conv1" in res.stdout and "act1 (ReLU)" in res.stdout and "conv3 (conv output)" in res.stdout
    assert "3 conv layers, 19 filters" in res.stdout


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("filtag-kg: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    msg = _error(capsys, "run", *TINY, "--data", str(tmp_path / "nope"), "--out", out)
    assert "nope" in msg and "does not exist" in msg
    (tmp_path / "empty").mkdir()
    msg = _error(capsys, "run", *TINY, "--data", str(tmp_path / "empty"), "--out", out)
    assert "no class folders" in msg
    (tmp_path / "hollow" / "n02085620").mkdir(parents=True)
    msg = _error(capsys, "run", *TINY, "--data", str(tmp_path / "hollow"), "--out", out)
    assert "no image files" in msg
    msg = _error(capsys, "run", "--model", "vgg61", "--data", str(image_dir), "--out", out)
    assert "vgg61" in msg and "vgg16" in msg
    msg = _error(capsys, "run", "--model", "nosuchpkg.mod:fn", "--data", str(image_dir), "--out", out)
    assert "nosuchpkg" in msg
    msg = _error(capsys, "run", *TINY, "--layers", "conv9*", "--data", str(image_dir), "--out", out)
    assert "conv9*" in msg and "filtag-kg layers" in msg
    msg = _error(capsys, "run", *TINY, "--layers", "pool", "--data", str(image_dir), "--out", out)
    assert "not a Conv2d" in msg
    msg = _error(capsys, "run", *TINY, "--k", "0", "--data", str(image_dir), "--out", out)
    assert "k" in msg
    msg = _error(capsys, "run", *TINY, "--k", "7", "--data", str(image_dir), "--out", out)
    assert "conv1" in msg and "6 filters" in msg  # names the narrowest layer, before profiling
    assert not (tmp_path / "out" / "profile.json").exists()
    msg = _error(capsys, "run", *TINY, "--percent", "150", "--data", str(image_dir), "--out", out)
    assert "percent" in msg
    blocker = tmp_path / "file"
    blocker.write_text("x")
    msg = _error(capsys, "run", *TINY, "--data", str(image_dir), "--out", str(blocker / "sub"))
    assert "cannot write" in msg and "--out" in msg
    msg = _error(capsys, "tag", str(tmp_path / "nothing-here"))
    assert "run folder" in msg and "nothing-here" in msg and "does not exist" in msg
    msg = _error(capsys, "tag", str(tmp_path))
    assert "holds no profile" in msg


def test_weights_file_that_does_not_fit(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    sd = build_tiny().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["fc.bias"]
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    msg = _error(
        capsys,
        "run",
        *TINY,
        "--weights-file",
        str(bad),
        "--data",
        str(image_dir),
        "--out",
        str(tmp_path / "o"),
    )
    assert "does not fit" in msg and "fc.bias" in msg and "extra.weight" in msg
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    msg = _error(
        capsys,
        "run",
        *TINY,
        "--weights-file",
        str(tmp_path / "junk.pt"),
        "--data",
        str(image_dir),
        "--out",
        str(tmp_path / "o"),
    )
    assert "junk.pt" in msg


def test_offline_weights_download_suggests_weights_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, image_dir: Path, tmp_path: Path
) -> None:
    import torchvision.models._api as api

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    msg = _error(
        capsys,
        "run",
        "--model",
        "resnet18",
        "--weights",
        "DEFAULT",
        "--data",
        str(image_dir),
        "--out",
        str(tmp_path / "o"),
    )
    assert "--weights-file" in msg and "resnet18" in msg.lower()
    msg = _error(
        capsys,
        "run",
        "--model",
        "resnet18",
        "--weights",
        "IMAGENET9K",
        "--data",
        str(image_dir),
        "--out",
        str(tmp_path / "o"),
    )
    assert "IMAGENET1K_V1" in msg


def test_run_is_deterministic(capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        code, _, err = run_cli(
            capsys, "run", *TINY, "--data", str(image_dir), "--k", "2", "--out", str(tmp_path / name)
        )
        assert code == 0, err
    assert (tmp_path / "a" / "tags.tsv").read_bytes() == (tmp_path / "b" / "tags.tsv").read_bytes()
    assert (tmp_path / "a" / "tags.json").read_bytes() == (tmp_path / "b" / "tags.json").read_bytes()


def test_wordnet_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "wordnet", "show", "n02085620", "--source", "slice")
    assert code == 0, err
    assert out.startswith("chihuahua.n.03  n02085620")
    assert "dog.n.01 > toy_dog.n.01 > chihuahua.n.03" in out
    code, out, err = run_cli(capsys, "wordnet", "status", "--source", "slice", "--json")
    assert code == 0, err
    import json

    assert json.loads(out)["active"]["source"] == "slice"
    msg = _error(capsys, "wordnet", "show", "n0208", "--source", "slice")
    assert "n0208" in msg


def test_run_writes_abstractions(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from conftest import write_images

    # two dog breeds and a violin: filters tagged with both breeds abstract to toy_dog.n.01
    data = write_images(tmp_path / "data", classes=["n02085620", "n02085936", "n04536866"])
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys, "run", *TINY, "--data", str(data), "--above-average", "--out", str(out)
    )
    assert code == 0, err
    assert "linked 3/3 classes" in stdout
    rows = list(csv.DictReader((out / "abstract_tags.tsv").open(), delimiter="\t"))
    tags = list(csv.DictReader((out / "tags.tsv").open(), delimiter="\t"))
    both = {(t["layer"], t["filter"]) for t in tags if t["class_id"] == "n02085620"} & {
        (t["layer"], t["filter"]) for t in tags if t["class_id"] == "n02085936"
    }
    got = {(r["layer"], r["filter"]) for r in rows if r["synset"] == "toy_dog.n.01"}
    assert both and got == both
    code, stdout, err = run_cli(capsys, "abstract", str(out), "--depth", "3")
    assert code == 0, err
    assert "abstract tags on" in stdout and (out / "hypernym_histogram.tsv").exists()


def test_import_filtag_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "tags.txt"
    f.write_text("filter tags k=1\n0:[' tench ', \" potter's_wheel \"]\n1:[' goldfish ']\n")
    out = tmp_path / "imp"
    code, stdout, err = run_cli(
        capsys, "import-filtag", str(f), "--model", "vgg16", "--layer", "features.28", "--out", str(out)
    )
    assert code == 0, err
    rows = list(csv.DictReader((out / "tags.tsv").open(), delimiter="\t"))
    assert [(r["filter"], r["class_id"], r["label"]) for r in rows] == [
        ("0", "n01440764", "tench"),
        ("0", "n03992509", "potter's_wheel"),
        ("1", "n01443537", "goldfish"),
    ]
    f.write_text("filter tags k=1\n0:[' crane ']\n")
    code, _, err = run_cli(
        capsys, "import-filtag", str(f), "--model", "vgg16", "--layer", "features.28", "--out", str(out)
    )
    assert code == 2 and "crane" in err and "n02012849" in err and "n03126707" in err


def test_export_command(capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path) -> None:
    from filtag_kg import cli, rdf

    assert cli.DEFAULT_BASE_IRI == rdf.DEFAULT_BASE_IRI
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "run", *TINY, "--data", str(image_dir), "--out", str(out))
    assert code == 0, err
    assert (out / "kg.trig").is_file() and "knowledge graph:" in stdout
    code, stdout, err = run_cli(
        capsys,
        "export",
        str(out),
        "--format",
        "nq",
        "--out",
        str(tmp_path / "a.nq"),
        "--base-iri",
        "https://example.org/kg/",
    )
    assert code == 0, err
    import pyoxigraph

    quads = list(pyoxigraph.parse(path=str(tmp_path / "a.nq"), format=pyoxigraph.RdfFormat.N_QUADS))
    assert f"wrote {tmp_path / 'a.nq'}: {len(quads)} statements" in stdout
    assert all(
        q.subject.value.startswith("https://example.org/kg/") or "ontology" in q.subject.value
        for q in quads
        if isinstance(q.subject, pyoxigraph.NamedNode)
    )
    msg = _error(capsys, "export", str(out), "--base-iri", "not an iri")
    assert "not an iri" in msg


def test_light_imports_and_public_api() -> None:
    code = (
        "import sys, filtag_kg, filtag_kg.cli, filtag_kg.tagging, filtag_kg.evaluation; "
        "print('torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "False", res.stderr  # the CLI and step-2 code start without torch
    import filtag_kg

    for name in filtag_kg.__all__:
        assert getattr(filtag_kg, name) is not None


def test_load_query_and_queries_commands(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert run_cli(capsys, "run", *TINY, "--data", str(image_dir), "--k", "1", "--out", str(out))[0] == 0
    code, stdout, err = run_cli(capsys, "load", str(out / "kg.trig"), "--store", str(tmp_path / "store"))
    assert code == 0, err
    code, stdout, err = run_cli(
        capsys,
        "query",
        "filters-for-concept",
        "--store",
        str(tmp_path / "store"),
        "--param",
        "concept=n02085620",
        "--format",
        "csv",
    )
    assert code == 0, err
    tags = list(csv.DictReader((out / "tags.tsv").open(), delimiter="\t"))
    expected = {(t["layer"], t["filter"]) for t in tags if t["class_id"] == "n02085620"}
    rows = list(csv.DictReader(stdout.splitlines()))
    assert {(r["layer"], r["filter"]) for r in rows} == expected
    code, stdout, _ = run_cli(
        capsys,
        "query",
        "filters-for-concept",
        "--graph",
        str(out / "kg.trig"),
        "--param",
        "concept=n02085620",
        "--format",
        "csv",
    )
    assert code == 0 and {(r["layer"], r["filter"]) for r in csv.DictReader(stdout.splitlines())} == expected
    code, stdout, _ = run_cli(capsys, "queries")
    assert code == 0 and "filters-for-concept" in stdout
    msg = _error(capsys, "query", "no-such-query", "--graph", str(out / "kg.trig"))
    assert "no-such-query" in msg


def _all_parsers(
    parser: argparse.ArgumentParser, name: str = "filtag-kg"
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command's parser, nested ones (``wordnet show``) included."""
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found += _all_parsers(sub, f"{name} {sub_name}")
    return found


def test_every_command_help_has_an_example_and_described_arguments() -> None:
    for name, p in _all_parsers(build_parser())[1:]:
        assert "example" in p.format_help(), f"`{name} --help` shows no example"
        for action in p._actions:
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"`{name}`: positional {action.metavar or action.dest} has no help"


def test_option_typo_suggests_the_closest_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--model", "m", "--data", "d", "--out", "o", "--kk", "3"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("usage: filtag-kg run ")
    assert "--kk: did you mean --k?" in err
    with pytest.raises(SystemExit):
        main(["wordnet", "show", "dog.n.01", "--jsn"])
    err = capsys.readouterr().err
    assert err.startswith("usage: filtag-kg wordnet show ") and "did you mean --json?" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_fails_before_creating_the_output_folder(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "new-run"
    msg = _error(capsys, "run", *TINY, "--device", "cuda", "--data", str(image_dir), "--out", str(out))
    assert "CUDA is not available" in msg and "--device cpu" in msg
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["load", "nosuch.trig", "--store", "st"],
        ["tag", "no-run"],
        ["explain", "no-run", "--data", "imgs"],
        ["export", "no-run"],
        ["report", "no-run"],
        ["run", "--model", "vgg16", "--data", "no-data", "--out", "o"],
        ["run", "--model", "vgg16", "--weights-file", "no.pth", "--data", ".", "--out", "o"],
        ["import-filtag", "no-tags.txt", "--model", "vgg16", "--layer", "features.28", "--out", "o"],
    ],
)
def test_a_missing_input_fails_before_heavy_imports(tmp_path: Path, argv: list[str]) -> None:
    """A mistyped path is reported without importing torch, nltk or rdflib (so in well under a second)."""
    code = (
        "import sys; from filtag_kg.cli import main; rc = main(sys.argv[1:]); "
        "print(rc, sorted(m for m in ('torch', 'nltk', 'rdflib') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env=cli_env())
    assert res.stdout.split("\n")[0] == "2 []", (res.stdout, res.stderr)
    assert "does not exist" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_numeric_options_out_of_range_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tiny_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """explain --batch-size 0 and --workers -1 (and run --workers -2) stopped with a ValueError
    traceback; explain --batch-size -3, --checkpoint-every -1, --max-pixels -5 (every image
    "could not be decoded"), sag --batch-size 0, serve --timeout -1 and --max-results 0,
    evaluate --top-concepts -5 and sentences --limit -1 were taken as they came. Each is now
    refused up front, naming the option and what it takes."""
    run, held = tiny_run
    explain = ["explain", str(run), "--data", str(held), "--quiet"]
    cases = [
        ([*explain, "--batch-size", "0"], "--batch-size 0", ">= 1"),
        ([*explain, "--batch-size", "-3"], "--batch-size -3", ">= 1"),
        ([*explain, "--workers", "-1"], "--workers -1", ">= 0"),
        ([*explain, "--checkpoint-every", "-1"], "--checkpoint-every -1", ">= 0"),
        ([*explain, "--max-pixels", "-5"], "--max-pixels -5", ">= 0"),
        (["run", *TINY, "--data", str(held), "--out", str(tmp_path / "r"), "--workers", "-2"], "--workers -2",
         ">= 0"),
        (["run", *TINY, "--data", str(held), "--out", str(tmp_path / "r"), "--top-images", "-1"],
         "--top-images -1", ">= 0"),
        (["sag", str(run), str(next(held.rglob("*.png"))), "--batch-size", "0"], "--batch-size 0", ">= 1"),
        (["serve", "--store", str(tmp_path / "none"), "--timeout", "-1"], "--timeout -1", "> 0"),
        (["serve", "--store", str(tmp_path / "none"), "--timeout", "nan"], "--timeout nan", "> 0"),
        (["serve", "--store", str(tmp_path / "none"), "--max-results", "0"], "--max-results 0", ">= 1"),
        (["evaluate", str(run), "--top-concepts", "-5"], "--top-concepts -5", ">= 0"),
        (["sentences", str(run), "--limit", "-1"], "--limit -1", ">= 0"),
    ]
    for argv, option, rule in cases:
        msg = _error(capsys, *argv)
        assert option in msg and rule in msg, (argv, msg)
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_no_decodable_image_among_files_given_says_so(
    capsys: pytest.CaptureFixture[str], tiny_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """With image files on the command line the message read "no file in  could be decoded"."""
    run, _ = tiny_run
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    msg = _error(capsys, "explain", str(run), str(bad), "--quiet")
    assert "none of the 1 image file(s) given could be decoded" in msg and " in  " not in msg
