"""Feature-map clusters in the report: on each explanation page the layers input side first, each
with its strongest clusters' maps drawn over the image and labelled with linked concepts; per
predicted class a page of the aggregated cluster concepts per layer; all rendering in Chromium.

The clusters are given to a real (tiny) explained run by hand, in the form of the explanation
pass (see tests/test_cluster_rdf.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_images
from test_cluster_rdf import add_clusters
from test_profile import PRE
from test_report import _chromium, assert_pages_render, check_site

from filtag_kg.data import image_folder
from filtag_kg.explain import ExplainOptions, explain_dataset
from filtag_kg.models import load_model
from filtag_kg.profile import ProfileOptions, profile_dataset
from filtag_kg.rdf.mint import DEFAULT_BASE_IRI, Minter
from filtag_kg.report import write_report
from filtag_kg.report.cluster_pages import CLUSTERS_SHOWN
from filtag_kg.report.htmlkit import esc, file_key
from filtag_kg.tagging import TagSetting, write_tags
from filtag_kg.wordnet import load_wordnet


@pytest.fixture(scope="module")
def clustered_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, Any]]]:
    """A tiny profiled, tagged and explained run (JSON Lines, with a perturbation), its records given
    clusters, map files and clusters.json, and its report."""
    root = tmp_path_factory.mktemp("cluster-report")
    data = write_images(root / "train", per_class=4)
    held = write_images(root / "held", per_class=2, seed=11)
    run = root / "run"
    prof = profile_dataset(load_model("tiny_models:build_tiny", preprocess=PRE), image_folder(data), run,
                           ProfileOptions(progress=False))
    write_tags(run, prof, [TagSetting("top-k", 2)])
    explain_dataset(run, image_folder(held),
                    ExplainOptions(progress=False, batch_size=4, perturb=["gaussian:0.2"], jsonl=True))
    records = add_clusters(run)
    out = root / "site"
    write_report(run, out, wordnet=load_wordnet(source="slice"), progress=False, max_images=3,
                 max_misexplained=0, heatmaps=False)
    return run, out, records


def cut_region(run: Path, ref: str) -> np.ndarray:
    """The map a stored reference names, cut by hand: ``PATH#xywh=x,y,w,h`` -> that rectangle of
    the atlas PATH, a reference without a fragment -> the whole file."""
    from PIL import Image

    rel, _, frag = ref.partition("#")
    with Image.open(run / rel) as im:
        grey = np.asarray(im.convert("L"))
    if not frag:
        return grey
    x, y, w, h = (int(v) for v in frag.removeprefix("xywh=").split(","))
    assert x + w <= grey.shape[1] and y + h <= grey.shape[0]
    return grey[y:y + h, x:x + w]


def _clean(records: list[dict[str, Any]], index: int) -> dict[str, Any]:
    return next(r for r in records if r["index"] == index and not r.get("perturbation"))


def test_explanation_pages_show_each_layers_strongest_clusters(clustered_site: tuple) -> None:
    from PIL import Image

    run, out, records = clustered_site
    profile = json.loads((run / "profile.json").read_text(encoding="utf-8"))
    layers = [lr["name"] for lr in profile["layers"]]
    pages = sorted((out / "explanations").glob("[0-9]*.html"))
    assert len(pages) == 3
    mint = Minter(DEFAULT_BASE_IRI)  # only for the path of a cluster IRI under its classification
    drawn_maps = 0
    for page in pages:
        html = page.read_text(encoding="utf-8")
        rec = _clean(records, int(page.stem))
        section = html.split('<h2 id="clusters">', 1)[1].split("<h2>", 1)[0]
        # the layers top to bottom in the network's order, each with its strongest clusters
        at = [section.index(f">{esc(layer)}</a>") for layer in layers]
        assert at == sorted(at)
        for layer in layers:
            strong = sorted((r for r in rec["clusters"][layer] if r["weight"] > 0), key=lambda r: r["rank"])
            shown = strong[:CLUSTERS_SHOWN]
            alts = re.findall(rf'alt="{re.escape(esc(layer))} cluster (\d+)"', section)
            assert [int(a) for a in alts] == [r["rank"] for r in shown if r["map"]]
            for row in shown:
                best = row["concepts"][0]["class_id"]
                assert f'href="../concepts/{best}.html"' in section  # labelled, linked to its concept
                cluster = mint.cluster(f"/classification/{rec['index']}", layer, row["rank"])
                assert f'{cluster}"' in section  # the cluster's IRI, as the export mints it
            for row in shown:
                if not row["map"]:
                    continue
                alt = f'alt="{esc(layer)} cluster {row["rank"]}"'
                src = re.search(rf'src="([^"]+)" {re.escape(alt)}', section)
                assert src is not None
                drawn_maps += 1
                drawn = page.parent / src.group(1)
                with Image.open(drawn) as im:  # the map over the image: coloured where the map is bright
                    arr = np.asarray(im.convert("RGB"), dtype=np.int16)
                assert np.abs(arr[..., 0] - arr[..., 2]).max() > 60
                # the hottest cell of the map (its region of the atlas) is the most coloured
                grey = cut_region(run, row["map"]).astype(np.float32)
                hy, hx = np.unravel_index(int(grey.argmax()), grey.shape)
                h, w = arr.shape[:2]
                hot = arr[int((hy + 0.5) * h / grey.shape[0]), int((hx + 0.5) * w / grey.shape[1])]
                cy, cx = np.unravel_index(int(grey.argmin()), grey.shape)
                cold = arr[int((cy + 0.5) * h / grey.shape[0]), int((cx + 0.5) * w / grey.shape[1])]
                assert abs(int(hot[0]) - int(hot[2])) > abs(int(cold[0]) - int(cold[2]))
    assert drawn_maps >= 3 * len(layers)  # two maps per layer and page
    check_site(out)  # every image and link of the site resolves


def test_each_predicted_class_has_a_page_of_its_cluster_concepts(clustered_site: tuple) -> None:
    run, out, _ = clustered_site
    doc = json.loads((run / "clusters.json").read_text(encoding="utf-8"))
    index = (out / "clusters" / "index.html").read_text(encoding="utf-8")
    classes = {e["class_id"] for e in doc["classes"]}
    assert classes
    for cid in classes:
        name = f"{file_key(cid)}.html"
        assert f'href="{name}"' in index
        html = (out / "clusters" / name).read_text(encoding="utf-8")
        entries = [e for e in doc["classes"] if e["class_id"] == cid]
        assert html.count('class="aggregate"') == sum(1 for e in entries if e["concepts"])
        for e in entries:
            block = html.split(f">{esc(e['layer'])}</a>", 1)[1].split("</table>", 1)[0]
            rows = re.findall(r"<tr><td>(\d+)</td><td>(.*?)</td><td>(.*?)</td>", block)
            assert len(rows) == min(len(e["concepts"]), 10)
            for r, ((rank, concept, images), c) in enumerate(zip(rows, e["concepts"]), 1):
                assert int(rank) == r
                assert f"concepts/{c['class_id']}.html" in concept
                assert f"{c['count']} of {e['images']}" in images
        # the predicted class's concept page links here
        concept = (out / "concepts" / f"{cid}.html").read_text(encoding="utf-8")
        assert f'href="../clusters/{name}"' in concept


def test_cluster_links_are_the_exported_iris(clustered_site: tuple) -> None:
    from filtag_kg.rdf import export_run

    run, out, _ = clustered_site
    linked = {i for page in check_site(out).values() for i in page}
    nq = export_run(run, fmt="nq", out=run.parent / "kg.nq", wordnet=load_wordnet(source="slice"))
    subjects = {line.split(" ", 1)[0][1:-1] for line in nq.read_text(encoding="utf-8").splitlines()}
    clusters = {i for i in linked if "/cluster/" in i or "/cluster-aggregate/" in i}
    assert any("/cluster/" in i for i in clusters) and any("/cluster-aggregate/" in i for i in clusters)
    assert clusters <= subjects, sorted(clusters - subjects)[:3]


def test_runs_without_clusters_have_no_cluster_section(tmp_path: Path) -> None:
    from test_rdf_support import make_run

    run = make_run(tmp_path / "run", images=2)
    out = tmp_path / "site"
    summary = write_report(run, out, wordnet=load_wordnet(source="slice"), progress=False, heatmaps=False)
    assert "clusters" not in summary.pages and not (out / "clusters").exists()
    for page in (out / "explanations").glob("[0-9]*.html"):
        assert 'id="clusters"' not in page.read_text(encoding="utf-8")
    # with clusters but no readable images, the grey maps themselves are shown: each cut from the
    # image variant's atlas; maps stored one file each (runs before the atlas) as whole files
    from PIL import Image

    for atlas in (True, False):
        records = add_clusters(run, atlas=atlas)
        summary = write_report(run, out, wordnet=load_wordnet(source="slice"), progress=False, heatmaps=False)
        assert summary.pages["clusters"] >= 2
        html = (out / "explanations" / "0.html").read_text(encoding="utf-8")
        assert 'id="clusters"' in html
        src = re.search(r'src="\.\./(maps/c/0/[^"]+\.png)" alt="features.0 cluster 1"', html)
        assert src is not None
        row = next(r for r in _clean(records, 0)["clusters"]["features.0"] if r["rank"] == 1)
        assert ("#xywh=" in row["map"]) == atlas
        with Image.open(out / src.group(1)) as im:
            assert np.array_equal(np.asarray(im), cut_region(run, row["map"]))
        check_site(out)


def test_a_malformed_aggregate_entry_is_a_one_line_error(tmp_path: Path) -> None:
    from test_rdf_support import make_run

    from filtag_kg.rdf import RunFolderError, export_run
    from filtag_kg.rdf.cluster_graph import read_cluster_aggregates

    run = make_run(tmp_path / "run", images=2)
    add_clusters(run)
    doc = json.loads((run / "clusters.json").read_text(encoding="utf-8"))
    wn, site = load_wordnet(source="slice"), tmp_path / "site"
    for bad, why in [({"images": "many"}, "ValueError"), ({"concepts": [{"class_id": "x"}]}, "'count'"),
                     ({"setting": "top-k"}, "TypeError")]:
        broken = {**doc, "classes": [doc["classes"][0], {**doc["classes"][1], **bad}]}
        (run / "clusters.json").write_text(json.dumps(broken), encoding="utf-8")
        for build in (lambda: write_report(run, site, wordnet=wn, progress=False, heatmaps=False),
                      lambda: export_run(run, fmt="nq", out=site.parent / "kg.nq", wordnet=wn),
                      lambda: read_cluster_aggregates(run)):
            with pytest.raises(RunFolderError, match=f"clusters.json: entry 2 of classes is not a cluster "
                                                     f"aggregate .*{why}") as info:
                build()
            assert "\n" not in str(info.value)


@pytest.mark.skipif(_chromium() is None,
                    reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_cluster_pages_render_in_headless_chromium(clustered_site: tuple, tmp_path: Path) -> None:

    _, out, _ = clustered_site
    pages = [sorted((out / "explanations").glob("[0-9]*.html"))[0], out / "clusters" / "index.html"]
    pages.append(next(p for p in sorted((out / "clusters").glob("*.html")) if p.name != "index.html"))
    assert_pages_render(pages, tmp_path)


def test_hostile_names_in_cluster_sections_are_escaped(tmp_path: Path) -> None:
    from test_rdf_hostile import CLASSES as HOSTILE_CLASSES
    from test_rdf_hostile import LAYERS as HOSTILE_LAYERS
    from test_rdf_support import make_run

    run = make_run(tmp_path / "run", images=2, layers=HOSTILE_LAYERS, classes=HOSTILE_CLASSES)
    add_clusters(run)
    out = tmp_path / "site"
    write_report(run, out, wordnet=load_wordnet(source="slice"), progress=False, heatmaps=False)
    check_site(out)  # every map copied, every link resolves, whatever the names
    html = (out / "explanations" / "0.html").read_text(encoding="utf-8")
    section = html.split('<h2 id="clusters">', 1)[1].split("<h2>", 1)[0]
    assert "<angle>" not in section and esc("<angle>{brace}|pipe^`") in section
    assert section.count("<img ") >= len(HOSTILE_LAYERS)
    for page in (out / "clusters").glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "<b>bold" not in text and "<angle>" not in text
