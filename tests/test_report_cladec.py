"""The report's ClaDec pages: per decoded layer, original | ClaDec | reference with the image's
active tagged filters of the layer, links valid, rendering in Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import write_images
from test_report import _chromium, assert_pages_render, check_site, parse

from filtag_kg.cladec import CladecOptions, run_cladec
from filtag_kg.data import image_folder
from filtag_kg.explain import ExplainOptions, explain_dataset, read_explanations
from filtag_kg.models import load_model
from filtag_kg.preprocess import Preprocess
from filtag_kg.profile import ProfileOptions, profile_dataset
from filtag_kg.report import ReportSummary, write_report
from filtag_kg.report.htmlkit import file_key
from filtag_kg.tagging import TagSetting, write_tags
from filtag_kg.wordnet import load_wordnet

PRE = Preprocess(resize=None, crop=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ReportSummary]:
    root = tmp_path_factory.mktemp("report-cladec")
    data = write_images(root / "train", per_class=4)
    held = write_images(root / "held", per_class=2, seed=3)
    run = root / "run"
    prof = profile_dataset(load_model("tiny_models:build_tiny", preprocess=PRE), image_folder(data), run,
                           ProfileOptions(progress=False, layers=["conv1", "conv2"]))
    write_tags(run, prof, [TagSetting("top-k", 2)])
    explain_dataset(run, image_folder(held), ExplainOptions(progress=False))
    run_cladec(run, ["conv2", "conv3"], data=data, eval_data=held,  # conv3 is not profiled
               options=CladecOptions(epochs=1, batch_size=4, progress=False, reconstructions=2, device="cpu"))
    summary = write_report(run, root / "site", wordnet=load_wordnet(source="slice"), progress=False,
                           max_images=2, max_misexplained=0)
    return run, root / "site", summary


def _page(out: Path, layer: str) -> Path:
    return out / "cladec" / f"{file_key('cladec/' + layer)}.html"


def test_cladec_pages_show_reconstructions_and_active_tagged_filters(
    site: tuple[Path, Path, ReportSummary]
) -> None:
    run, out, summary = site
    assert summary.pages["cladec"] == 3  # the index and two layers
    check_site(out)
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'id="cladec"' in index and "cladec/" in index
    doc = json.loads((run / "cladec" / "conv2" / "evaluation.json").read_text())
    html = _page(out, "conv2").read_text(encoding="utf-8")
    srcs = [u for tag, u in parse(_page(out, "conv2")).urls if tag == "img"]
    assert len(srcs) == 2 and all(u.endswith(".png") for u in srcs)
    for u in srcs:  # the run's PNGs, copied
        copied = (_page(out, "conv2").parent / u).read_bytes()
        assert copied in {(run / "cladec" / "conv2" / r["file"]).read_bytes() for r in doc["reconstructions"]}
    # the first image's active tagged filters of conv2, as its explanation lists them
    first = doc["reconstructions"][0]
    rec = next(r for r in read_explanations(run) if r["image"] == first["image"])
    rows = [line.split("\t") for line in (run / "tags.tsv").read_text().splitlines()[1:]]
    tags = {(r[2], int(r[3])) for r in rows}
    active = [int(a["filter"]) for a in rec["active_filters"]["conv2"] if ("conv2", int(a["filter"])) in tags]
    cell = html.split("<tr>")[2].split('<ul class="active">', 1)[1].split("</ul>", 1)[0]
    assert [int(x) for x in re.findall(r">filter (\d+)</a>", cell)] == active
    assert "not profiled" in _page(out, "conv3").read_text(encoding="utf-8")


@pytest.mark.skipif(_chromium() is None,
                    reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_cladec_pages_render_in_headless_chromium(
    site: tuple[Path, Path, ReportSummary], tmp_path: Path
) -> None:

    _, out, _ = site
    assert_pages_render([out / "cladec" / "index.html", _page(out, "conv2")], tmp_path)
