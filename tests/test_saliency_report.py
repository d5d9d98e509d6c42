"""The report's iGOS++ / SAG pages: one per image, the SAG as SVG with a node per graph node
(its masked image copied into the site), root concepts linked, and rendering in Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_report import _chromium, assert_pages_render
from test_saliency_pass import FAST, sag_run  # noqa: F401 - the fixture

from filtag_kg.report import write_report
from filtag_kg.saliency_pass import explain_saliency
from filtag_kg.wordnet import load_wordnet


@pytest.fixture(scope="module")
def site(sag_run: tuple[Path, list[Path]]) -> tuple[Path, dict]:  # noqa: F811
    run, images = sag_run
    doc = explain_saliency(run, images[:3], FAST)
    out = run.parent / "site"
    summary = write_report(run, out, wordnet=load_wordnet(source="slice"), progress=False, heatmaps=False)
    assert summary.pages["saliency"] == 1 + len(doc["images"])
    return out, doc


def test_saliency_pages_draw_every_node_and_edge(site: tuple[Path, dict]) -> None:
    out, doc = site
    index = (out / "saliency" / "index.html").read_text(encoding="utf-8")
    for rec in doc["images"]:
        key = f"{rec['index']:04d}"
        assert f'href="{key}.html"' in index
        html = (out / "saliency" / f"{key}.html").read_text(encoding="utf-8")
        sag = rec["sag"]
        assert html.count('<g class="node') == len(sag["nodes"])
        assert html.count('<line class="edge"') == len(sag["edges"])
        assert html.count('class="node root"') == len(sag["roots"])
        for href in re.findall(r'<image href="([^"]+)"', html):
            assert (out / "saliency" / href).is_file()
        assert len(re.findall(r'<image href="', html)) == len(sag["nodes"])
        assert (out / "saliency" / key / "igos.png").is_file() and 'alt="iGOS++ heatmap"' in html
        for region in rec["regions"]:
            for v in region["votes"]:
                assert v["label"] in html
        assert "/sag/" in html  # the SAG's RDF IRI


@pytest.mark.skipif(
    _chromium() is None, reason="Chromium is not installed (Debian: apt-get install chromium)"
)
def test_saliency_pages_render_in_headless_chromium(site: tuple[Path, dict], tmp_path: Path) -> None:

    out, doc = site
    pages = [out / "saliency" / "index.html"]
    pages += [out / "saliency" / f"{r['index']:04d}.html" for r in doc["images"] if r["sag"]["nodes"]][:1]
    assert len(pages) == 2
    assert_pages_render(pages, tmp_path)
