"""The HTML report: every page and link present and valid, IRIs as exported, heatmaps
as the model computes them, hostile names escaped, and pages that render in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from conftest import write_images
from test_profile import PRE

from filtag_kg.data import image_folder
from filtag_kg.evaluation import evaluate_run
from filtag_kg.explain import ExplainOptions, explain_dataset, read_explanations
from filtag_kg.models import load_model
from filtag_kg.profile import ProfileOptions, profile_dataset
from filtag_kg.rdf.mint import DEFAULT_BASE_IRI
from filtag_kg.report import ReportError, ReportSummary, write_report
from filtag_kg.report.heatmaps import ImageViews, MapEngine
from filtag_kg.report.htmlkit import esc, file_key
from filtag_kg.report.map_probe import MapProbe
from filtag_kg.tagging import Tag, TagSetting, write_tags, write_tags_tsv
from filtag_kg.wordnet import WordNet, load_wordnet, write_abstractions

KINDS = ("layers", "filters", "concepts", "explanations")


@pytest.fixture(scope="module")
def wordnet() -> WordNet:
    """The bundled WordNet slice: fast to load, and the same everywhere."""
    return load_wordnet(source="slice")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, wordnet: WordNet) -> Path:
    """A profiled (with top images), tagged, abstracted, explained and evaluated tiny run."""
    root = tmp_path_factory.mktemp("report")
    data = write_images(root / "train", per_class=4)
    held = write_images(root / "held", per_class=3, seed=11)
    run = root / "run"
    prof = profile_dataset(
        load_model("tiny_models:build_tiny", preprocess=PRE),
        image_folder(data),
        run,
        ProfileOptions(progress=False, top_images=3),
    )
    write_tags(run, prof, [TagSetting("top-k", 2), TagSetting("above-average")])
    write_abstractions(run, wordnet=wordnet)
    explain_dataset(
        run, image_folder(held), ExplainOptions(progress=False, batch_size=4, perturb=["gaussian:0.2"])
    )
    evaluate_run(run)
    return run


@pytest.fixture(scope="module")
def site(tiny_run: Path, wordnet: WordNet) -> tuple[Path, ReportSummary]:
    out = tiny_run.parent / "site"
    summary = write_report(
        tiny_run, out, wordnet=wordnet, progress=False, max_images=3, max_misexplained=2, batch_size=4
    )
    return out, summary


class _Links(HTMLParser):
    """Collects links, image sources and element ids of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        for key in ("href", "src"):
            if a.get(key) is not None:
                self.urls.append((tag, str(a[key])))
        self._in_title = tag == "title"

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False


def parse(page: Path) -> _Links:
    p = _Links()
    p.feed(page.read_text(encoding="utf-8"))
    p.close()
    return p


def check_site(out: Path, *, base_iri: str = DEFAULT_BASE_IRI) -> dict[str, list[str]]:
    """Assert every local href/src of every page exists (fragments too); return the IRIs linked."""
    pages = sorted(out.rglob("*.html"))
    assert pages, "no pages"
    parsed = {p: parse(p) for p in pages}
    iris: dict[str, list[str]] = {}
    for page, links in parsed.items():
        assert links.title.strip(), f"{page} has no title"
        assert any(u.endswith("index.html") for _, u in links.urls), f"{page} does not link to the index"
        for tag, url in links.urls:
            parts = urlsplit(url)
            if parts.scheme:
                # only RDF IRIs leave the site, and only as links (no external image, style or script)
                assert tag == "a" and url.startswith(base_iri), f"{page}: external {tag} {url}"
                iris.setdefault(str(page.relative_to(out)), []).append(url)
                continue
            if not parts.path:  # a fragment of the page itself
                assert parts.fragment in links.ids, f"{page}: no #{parts.fragment}"
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            assert target.is_file(), f"{page}: broken {tag} {url}"
            assert out.resolve() in target.parents, f"{page}: {url} leaves the site"
            if parts.fragment:
                assert parts.fragment in parsed[target].ids, f"{page}: no #{parts.fragment} in {url}"
    return iris


def test_site_has_every_kind_of_page_and_valid_links(site: tuple[Path, ReportSummary]) -> None:
    from PIL import Image

    out, summary = site
    assert summary.index == out / "index.html" and summary.index.is_file()
    assert (out / "style.css").is_file() and (out / "report.json").is_file()
    for kind in KINDS:
        assert list((out / kind).rglob("*.html")), f"no {kind} pages"
    assert summary.pages["layer"] == 3 and summary.pages["filter"] > 0 and summary.pages["concept"] > 0
    assert summary.total_pages == len(list(out.rglob("*.html")))
    check_site(out)
    # charts, thumbnails and heatmaps are real image files
    assert summary.charts >= 1 + 2 * 3 and summary.heatmaps > 0 and summary.thumbnails > 0
    images = [p for p in out.rglob("*") if p.suffix in (".png", ".jpg")]
    assert len(images) == summary.charts + summary.heatmaps + summary.thumbnails
    for p in images:
        with Image.open(p) as im:
            im.verify()
    # filters with top images show one heatmap per top image
    page = next((out / "filters").rglob("*.html")).read_text(encoding="utf-8")
    assert "Top activating images" in page and page.count("../../maps/") >= 1
    doc = json.loads((out / "report.json").read_text())
    assert doc["complete"] and doc["pages"] == summary.pages


def test_pages_link_the_exported_iris(
    site: tuple[Path, ReportSummary], tiny_run: Path, wordnet: WordNet
) -> None:
    from filtag_kg.rdf import export_run_stats

    out, _ = site
    iris = check_site(out)
    nq = tiny_run.parent / "kg.nq"
    export_run_stats(tiny_run, fmt="nq", out=nq, wordnet=wordnet)
    exported = set(re.findall(r"<([^>]+)>", nq.read_text(encoding="utf-8")))
    linked = {i for page in iris.values() for i in page}
    assert linked and linked <= exported, sorted(linked - exported)[:5]
    kinds = {re.sub(r"^.*?/filtag-kg/([a-z-]+)/.*$", r"\1", i) for i in linked}
    assert {"model", "run", "concept", "image", "dataset"} <= kinds
    flat = " ".join(linked)
    for part in ("/layer/conv2/filter/", "/tag/", "/abstract-tag/", "/explanation/0/top-k-2"):
        assert part in flat


def test_explanation_pages_first_and_misexplained(site: tuple[Path, ReportSummary], tiny_run: Path) -> None:
    out, summary = site
    groups: dict[int, bool] = {}
    for rec in read_explanations(tiny_run):
        bad = rec["perturbation"] is None and rec["prediction"] != rec["model_top"][0]["class_id"]
        groups[rec["index"]] = groups.get(rec["index"], False) or bad
    first = sorted(groups)[:3]
    extra = [i for i in sorted(groups) if i not in first and groups[i]][:2]
    written = sorted(int(p.stem) for p in (out / "explanations").glob("*.html") if p.stem != "index")
    assert written == sorted(first + extra)
    assert summary.explained_images == len(groups) and summary.explanation_pages == len(written)
    page = (out / "explanations" / f"{first[0]}.html").read_text(encoding="utf-8")
    assert "gaussian:0.2" in page and "Where the tagged filters look" in page  # perturbed record shown too
    index = (out / "explanations" / "index.html").read_text(encoding="utf-8")
    assert all(f'href="{i}.html"' in index for i in written)


def _reference_maps(model: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """The tiny model's three measured maps, min-max scaled per layer as the method does."""
    acts: dict[str, torch.Tensor] = {}
    taps = {
        "conv1": (model.act1, lambda a: a),
        "conv2": (model.bn2, torch.relu),
        "conv3": (model.conv3, lambda a: a),
    }
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n, f=f: acts.__setitem__(n, f(o).clone()))
        for n, (m, f) in taps.items()
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for n in taps:
        a = acts[n].double()
        lo = a.flatten(1).min(1).values.view(-1, 1, 1, 1)
        hi = a.flatten(1).max(1).values.view(-1, 1, 1, 1)
        out.append(((a - lo) / (hi - lo)).numpy())
    return out


def test_heatmap_maps_match_the_models_activations(tiny_run: Path, device: str) -> None:
    from tiny_models import build_tiny

    meta = json.loads((tiny_run / "profile.json").read_text())
    views = ImageViews(PRE)
    files = sorted((tiny_run.parent / "held").rglob("*.png"))[:3]
    pics = [views.view(str(f)) for f in files]
    engine = MapEngine(meta, views, batch_size=2, device=device)
    wanted = [{0: {0, 5}, 1: {2}, 2: {4}}, {1: {0, 7}}, {0: {3}, 2: {0, 1}}]
    got = engine.maps(pics, wanted)
    ref = _reference_maps(build_tiny(), torch.stack([views.tensor(p) for p in pics]))
    for b, want in enumerate(wanted):
        for li, filters in want.items():
            for f in filters:
                np.testing.assert_allclose(got[b][li].get(f), ref[li][b, f], rtol=1e-4, atol=1e-5)
    module = engine._engine.module
    assert all(not m._forward_hooks for m in module.modules()), "a hook survived"
    assert engine.forward_passes == 2  # batches of two


def test_heatmaps_of_a_torchscript_model_match_the_eager_ones(
    tiny_run: Path, tmp_path: Path, scripted_tiny: Path
) -> None:
    pytest.importorskip("torch._export.converter", reason="TorchScript conversion needs torch >= 2.4")
    from tiny_models import build_tiny

    run = tmp_path / "ts"
    profile_dataset(
        load_model(str(scripted_tiny), preprocess=PRE),
        image_folder(tiny_run.parent / "train"),
        run,
        ProfileOptions(progress=False),
    )
    views = ImageViews(PRE)
    pics = [views.view(str(f)) for f in sorted((tiny_run.parent / "held").rglob("*.png"))[:2]]
    engine = MapEngine(json.loads((run / "profile.json").read_text()), views)
    wanted = [{0: {1}, 1: {3, 6}, 2: {2}}] * 2
    got = engine.maps(pics, wanted)
    ref = _reference_maps(build_tiny(), torch.stack([views.tensor(p) for p in pics]))
    for b in range(2):
        for li, filters in wanted[b].items():
            for f in filters:
                np.testing.assert_allclose(got[b][li].get(f), ref[li][b, f], rtol=1e-4, atol=1e-5)
    from filtag_kg.torchscript import _ACTIVE

    assert not _ACTIVE  # the graph probe let go


def test_map_probe_removes_hooks_when_the_forward_pass_fails(tiny_run: Path) -> None:
    from tiny_models import build_tiny

    from filtag_kg.measure import MeasurePoint

    model = build_tiny().train()

    def boom(mod: torch.nn.Module, inputs: object) -> None:
        raise RuntimeError("boom")

    model.conv3.register_forward_pre_hook(boom)
    probe = MapProbe(model, [MeasurePoint("conv1", 6, "act1", "activation", "ReLU")])
    probe.wanted[0] = torch.tensor([0])
    with pytest.raises(RuntimeError, match="boom"), probe:
        model(torch.zeros(1, 3, 8, 8))
    assert not model.act1._forward_hooks and model.training


def test_report_without_heatmaps_never_loads_the_model(
    tiny_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    wordnet: WordNet,
) -> None:
    import filtag_kg.models

    def no(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(filtag_kg.models, "load_recorded_model", no)
    s = write_report(
        tiny_run,
        tmp_path / "site",
        heatmaps=False,
        wordnet=wordnet,
        progress=False,
        max_images=1,
        max_misexplained=0,
        top_images=1,
    )
    assert s.heatmaps == 0 and s.thumbnails > 0 and not (tmp_path / "site" / "maps").exists()
    assert s.explanation_pages == 1
    check_site(tmp_path / "site")


def test_output_folder_is_guarded_and_an_old_report_replaced(
    tiny_run: Path, tmp_path: Path, wordnet: WordNet
) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(ReportError, match="not empty"):
        write_report(tiny_run, other, wordnet=wordnet, progress=False)
    assert (other / "mine.txt").read_text() == "keep me"
    with pytest.raises(ReportError, match="not empty"):
        write_report(tiny_run, tiny_run, wordnet=wordnet, progress=False)
    with pytest.raises(ReportError, match="max_images"):
        write_report(tiny_run, tmp_path / "x", max_images=-1, wordnet=wordnet, progress=False)
    out = tmp_path / "site"
    opts = {"wordnet": wordnet, "progress": False, "heatmaps": False, "max_images": 1, "max_misexplained": 0}
    write_report(tiny_run, out, **opts)
    stale = out / "layers" / "stale.html"
    stale.write_text("old")
    (out / "extra.txt").write_text("a file of the user's")
    write_report(tiny_run, out, **opts)
    assert not stale.exists() and (out / "extra.txt").exists()


HOSTILE_LAYER = '<script>alert("x")</script> a/b\\c ../..%2F 層'
HOSTILE_CLASS = 'he said "hi" & <b>bold</b> $x$'


def test_hostile_names_are_escaped_and_file_names_safe(tmp_path: Path, wordnet: WordNet) -> None:
    run = tmp_path / "run"
    run.mkdir()
    tags = [
        Tag("top-k", "1", HOSTILE_LAYER, 0, HOSTILE_CLASS, HOSTILE_CLASS, 0.5, 1, 0.7),
        Tag("top-k", "1", HOSTILE_LAYER, 3, "n02085620", "Chihuahua", 0.4, 1, 0.6),
        Tag("top-k", "1", "Conv1", 1, "猫 & <cat>", "猫 & <cat>", 0.3, 1, 0.5),
        Tag("top-k", "1", "conv1", 1, "n02123045", "tabby", 0.2, 1, 0.4),
    ]
    write_tags_tsv(run / "tags.tsv", tags)
    out = tmp_path / "site"
    s = write_report(run, out, wordnet=wordnet, progress=False, base_iri="urn:x-test:")
    assert s.pages["layer"] == 3 and s.pages["filter"] == 4
    check_site(out)
    names = [str(p.relative_to(out)) for p in out.rglob("*")]
    assert all(re.fullmatch(r"[A-Za-z0-9_./-]+", n) for n in names), names
    assert len({n.lower() for n in names}) == len(names)  # Conv1 and conv1 apart on any file system
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "<script" not in text and "<b>bold" not in text and "<cat>" not in text
    layer_page = (out / "layers" / f"{file_key(HOSTILE_LAYER)}.html").read_text(encoding="utf-8")
    assert esc(HOSTILE_LAYER) in layer_page and esc(HOSTILE_CLASS) in layer_page
    # IRIs under a base that is not http(s) are shown, not linked
    assert "<code>urn:x-test:model/" in layer_page and 'href="urn:' not in layer_page


# -- rendering in a real browser ------------------------------------------------------------------

PROBE = """<script>
window.addEventListener('error', function (e) {
  var t = e.target;
  console.error('FILTAG-ERROR ' + ((t && (t.src || t.href)) || e.message));
}, true);
window.addEventListener('load', function () {
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    if (!im.complete || im.naturalWidth === 0) console.error('FILTAG-ERROR broken image ' + im.src);
  }
  if (!document.styleSheets.length) console.error('FILTAG-ERROR no style sheet');
  console.log('FILTAG-LOADED ' + document.title);
});
</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(browser: str, page: Path, shot: Path, profile: Path) -> list[str]:
    """Load a copy of ``page`` (with an error-reporting script, images not lazy) in headless
    Chromium; return its console messages, and leave a screenshot in ``shot``."""
    html = page.read_text(encoding="utf-8").replace(' loading="lazy"', "")
    probe = page.with_name(f"_probe_{page.name}")
    probe.write_text(html.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    try:
        r = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                "--hide-scrollbars",
                "--window-size=1100,900",
                f"--screenshot={shot}",
                probe.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    finally:
        probe.unlink()
    assert r.returncode == 0, r.stderr[-2000:]
    return [m.group(1) for m in re.finditer(r':CONSOLE[^\]]*\] "(.*)", source:', r.stderr)]


def assert_pages_render(pages: list[Path], tmp_path: Path) -> None:
    """Each page loads in headless Chromium with no console message but the probe's, and its
    screenshot is not blank (one colour)."""
    from PIL import Image

    for i, page in enumerate(pages):
        shot = tmp_path / f"shot{i}.png"
        messages = render(_chromium() or "", page, shot, tmp_path / "profile")
        loaded = [m for m in messages if m.startswith("FILTAG-LOADED")]
        assert loaded, f"{page}: the page did not finish loading ({messages})"
        assert messages == loaded, f"{page}: console messages {messages}"
        with Image.open(shot) as im:
            assert im.convert("RGB").getcolors(1) is None, f"{page}: the screenshot is blank"


@pytest.mark.skipif(
    _chromium() is None, reason="Chromium is not installed (Debian: apt-get install chromium)"
)
def test_pages_render_in_headless_chromium(site: tuple[Path, ReportSummary], tmp_path: Path) -> None:
    out, _ = site
    pages = [out / "index.html", out / "concepts" / "index.html", out / "explanations" / "index.html"]
    pages += [
        next(p for p in sorted((out / kind).rglob("*.html")) if p.name != "index.html") for kind in KINDS
    ]
    assert_pages_render(pages, tmp_path)
