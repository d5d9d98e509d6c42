"""Generated sentences on the report's image, filter and class pages; concept phrases linked
to heatmaps of the filters that voted for them; checked in headless Chromium."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from test_report import _chromium, parse, render, site, tiny_run, wordnet  # noqa: F401 - fixtures

from filtag_kg.explain import read_explanations
from filtag_kg.report import ReportSummary
from filtag_kg.sentences import SentenceContext, class_sentences, filter_sentences, image_sentence

_SENTENCE = re.compile(r'<p class="sentence" lang="en">(.*?)</p>', re.S)


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def _primary(records: list[dict]) -> dict:
    clean = [r for r in records if not r.get("perturbation")]
    return next((r for r in clean if not r.get("weighting")), clean[0])


def test_image_pages_say_the_sentence_with_phrases_linked_to_heatmaps(
    site: tuple[Path, ReportSummary], tiny_run: Path, wordnet  # noqa: F811
) -> None:
    out, _ = site
    ctx = SentenceContext.from_run(tiny_run, wordnet=wordnet)
    by_index: dict[int, list[dict]] = {}
    for r in read_explanations(tiny_run):
        by_index.setdefault(r["index"], []).append(r)
    pages = [p for p in sorted((out / "explanations").rglob("*.html")) if p.name != "index.html"]
    assert pages
    linked = 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        idx = int(re.search(r"<title>image (\d+):", text).group(1))
        expected = image_sentence(ctx, _primary(by_index[idx]))
        got = _SENTENCE.findall(text)
        assert len(got) == 1 and _text(got[0]) == expected.text
        hrefs = re.findall(r'<a class="phrase" href="([^"]+)"', got[0])
        assert len(hrefs) <= len(expected.phrases)
        for h in hrefs:
            assert (page.parent / html.unescape(h)).resolve().is_file() and h.endswith(".jpg")
        linked += len(hrefs)
    assert linked > 0  # with heatmaps, the concept phrases point to them


def test_filter_and_class_pages_say_their_sentences(
    site: tuple[Path, ReportSummary], tiny_run: Path, wordnet  # noqa: F811
) -> None:
    out, _ = site
    ctx = SentenceContext.from_run(tiny_run, wordnet=wordnet)
    site_text = {p: p.read_text(encoding="utf-8") for p in out.rglob("*.html")}
    filters = [p for p in site_text if p.parent.name != "explanations" and "/filters/" in str(p)]
    assert filters
    said = {html.unescape(m) for t in site_text.values()
            for m in re.findall(r'<span class="sentence" lang="en">(.*?)</span>', t)}
    written = {s.text for s in filter_sentences(ctx)}
    assert said & written and len(said & written) == len(filters)  # one per filter page
    classes = {s.text for s in class_sentences(ctx, list(read_explanations(tiny_run)))}
    assert classes and classes <= said
    parse(out / "index.html")  # the site still parses


PROBE = """<script>
window.addEventListener('load', function () {
  var p = document.querySelector('p.sentence');
  console.log('FILTAG-SENTENCE ' + (p ? p.innerText : '(none)'));
  console.log('FILTAG-PHRASES ' + document.querySelectorAll('a.phrase').length);
});
</script>"""


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_sentence_renders_in_chromium(site: tuple[Path, ReportSummary], tmp_path: Path) -> None:  # noqa: F811
    out, _ = site
    page = next(p for p in sorted((out / "explanations").rglob("*.html"))
                if p.name != "index.html" and 'class="phrase"' in p.read_text(encoding="utf-8"))
    text = page.read_text(encoding="utf-8")
    copy = page.with_name("_sentence_" + page.name)
    copy.write_text(text.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    try:
        messages = render(_chromium() or "", copy, tmp_path / "shot.png", tmp_path / "profile")
    finally:
        copy.unlink()
    assert not [m for m in messages if m.startswith("FILTAG-ERROR")], messages
    shown = next(m for m in messages if m.startswith("FILTAG-SENTENCE "))[len("FILTAG-SENTENCE "):]
    assert shown == _text(_SENTENCE.search(text).group(1))
    phrases = int(next(m for m in messages if m.startswith("FILTAG-PHRASES ")).split()[1])
    assert phrases == len(re.findall(r'class="phrase"', text)) > 0


def test_phrase_voters_pick_the_layer_with_most_voters_and_their_gradcam_weights(
    tmp_path: Path, wordnet  # noqa: F811
) -> None:
    from filtag_kg.rdf.synthetic import write_synthetic_run
    from filtag_kg.report.sentence_view import phrase_voters

    run = write_synthetic_run(tmp_path / "run", layers=[("a", 6), ("b", 6)], classes=5, images=6, k=2,
                              weighting="gradcam")
    ctx = SentenceContext.from_run(run, wordnet=wordnet)
    checked = 0
    for rec in read_explanations(run):
        for p in image_sentence(ctx, rec).phrases:
            li, fs, ws = phrase_voters(ctx, rec, p, ["a", "b"])
            per_layer = {}
            for layer in ("a", "b"):
                per_layer[layer] = {
                    r["filter"]: r["weight"] for r in rec["active_filters"][layer]
                    if set(p.members) & set(ctx.tags.get(("top-k", "2", layer, r["filter"]), ()))
                }
            layer = "b" if len(per_layer["b"]) >= len(per_layer["a"]) else "a"
            assert ["a", "b"][li] == layer and dict(zip(fs, ws)) == pytest.approx(per_layer[layer])
            checked += 1
    assert checked


def test_label_sheet_lists_the_top_images_of_a_profile_with_them(tiny_run: Path, tmp_path: Path) -> None:  # noqa: F811
    import csv

    from filtag_kg.labels import export_sheet

    with open(export_sheet(tiny_run, tmp_path / "sheet.csv"), encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    tops = [r["top_images"].split("; ") for r in rows if r["top_images"]]
    assert rows and len(tops) == len(rows)  # profiled with top_images=3: every tagged filter has them
    assert all(1 <= len(t) <= 3 and all(p.endswith(".png") for p in t) for t in tops)
