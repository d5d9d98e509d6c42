"""Human labels: normalisation to WordNet on tricky inputs, the annotation sheet, import,
agreement with the tags, and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_rdf_support import make_run, wordnet

from filtag_kg.labels import (
    LABEL_COLUMNS,
    LABELS_FILE,
    SHEET_COLUMNS,
    LabelError,
    agreement,
    export_sheet,
    import_labels,
    normalise_label,
    read_labels,
)

CHIHUAHUA, MALTESE, SHIH_TZU, VIOLIN, TABBY = "n02085620", "n02085936", "n02086240", "n04536866", "n02123045"


@pytest.mark.parametrize(
    ("text", "synset"),
    [
        ("violin", "violin.n.01"),
        ("Violins", "violin.n.01"),  # plural, capitalised
        ("a musical instrument", "musical_instrument.n.01"),  # article, multiword
        ("The Musical Instruments.", "musical_instrument.n.01"),  # plural of the last word
        ("brass instruments", "brass.n.02"),
        ("toy dogs", "toy_dog.n.01"),
    ],
)
def test_normalise_plurals_articles_and_multiwords(text: str, synset: str) -> None:
    r = normalise_label(text, wordnet=wordnet())
    assert (r.status, r.synset) == ("linked", synset)
    assert r.wnid == wordnet().synset(synset).wnid


def test_unknown_words_are_kept_and_reported() -> None:
    for text in ("blorptastic", "furry texture zz", ""):
        r = normalise_label(text, wordnet=wordnet())
        assert r.synset is None and r.status in ("unknown", "empty")


def test_ambiguous_lemmas_need_the_filters_tags() -> None:
    wn = wordnet()
    r = normalise_label("crane", wordnet=wn)  # the bird and the machine are both ImageNet classes
    assert r.status == "ambiguous" and set(r.candidates) >= {"crane.n.04", "crane.n.05"}
    dog = normalise_label("dogs", wordnet=wn)  # 7 senses in WordNet
    assert dog.status == "ambiguous"
    # on a filter tagged with dog breeds, only the animal sense is related
    in_context = normalise_label("dogs", wordnet=wn, context=[CHIHUAHUA, MALTESE])
    assert (in_context.status, in_context.synset) == ("linked", "dog.n.01")
    # a filter tagged with a violin does not settle it
    assert normalise_label("dog", wordnet=wn, context=[VIOLIN]).status == "ambiguous"
    bird = wn.synset("crane.n.05").name if "bird" in wn.synset("crane.n.05").definition else "crane.n.04"
    crane_ctx = [p for p in wn.ancestors(bird) if p.startswith("wading_bird")] or [bird]
    assert normalise_label("crane", wordnet=wn, context=crane_ctx).synset == bird


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", images=4)


def _tags(run: Path) -> dict[tuple[str, int], set[str]]:
    out: dict[tuple[str, int], set[str]] = {}
    with open(run / "tags.tsv", encoding="utf-8") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            out.setdefault((r["layer"], int(r["filter"])), set()).add(r["class_id"])
    return out


def test_sheet_lists_every_tagged_filter_with_its_tags(run: Path) -> None:
    path = export_sheet(run)
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == SHEET_COLUMNS and SHEET_COLUMNS[: len(LABEL_COLUMNS)] == LABEL_COLUMNS
    tags = _tags(run)
    assert {(r["layer"], int(r["filter"])) for r in rows} == set(tags)
    assert all(r["label"] == r["annotator"] == r["time"] == "" and r["tags"] for r in rows)


def _fill(run: Path, path: Path, labels: dict[tuple[str, int], str], extra: list[list[str]] = ()) -> Path:
    sheet = export_sheet(run, path)
    with open(sheet, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with open(sheet, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SHEET_COLUMNS)
        for r in rows:
            label = labels.get((r["layer"], int(r["filter"])), "")
            w.writerow([r["run"], r["layer"], r["filter"], label, "ann1" if label else "",
                        "2026-01-01T00:00:00Z" if label else "", r["tags"], "", ""])
        for e in extra:
            w.writerow(e)
    return sheet


def test_import_normalises_reports_and_agree_counts(run: Path, tmp_path: Path) -> None:
    tags = _tags(run)
    dog_filter = next(k for k, v in tags.items() if v & {CHIHUAHUA, MALTESE, SHIH_TZU} and VIOLIN not in v)
    violin_filter = next(k for k, v in tags.items() if VIOLIN in v and k != dog_filter)
    odd = next(k for k in tags if k not in (dog_filter, violin_filter))
    chosen = {dog_filter: "dogs", violin_filter: "a musical instrument", odd: "blorptastic"}
    sheet = _fill(run, tmp_path / "sheet.csv", chosen,
                  extra=[["vgg16", "features.99", "1", "dog", "ann1", "", "", "", ""],
                         ["other-model", dog_filter[0], str(dog_filter[1]), "dog", "ann1", "", "", "", ""]])
    res = import_labels(sheet, run, wordnet=wordnet())
    assert len(res.labels) == 3 and (run / LABELS_FILE).is_file()
    assert any("features.99" in p for p in res.problems) and any("other-model" in p for p in res.problems)
    got = {(lab.layer, lab.filter): lab.resolution for lab in read_labels(run)}
    assert got[dog_filter].synset == "dog.n.01"  # the tags settle "dogs"
    assert got[violin_filter].synset == "musical_instrument.n.01"
    assert got[odd].status == "unknown" and "blorptastic" in res.summary()
    # importing the same file again adds nothing
    import_labels(sheet, run, wordnet=wordnet())
    assert len(read_labels(run)) == 3
    rep = agreement(run, wordnet=wordnet())
    assert rep.setting == "top-k 2"
    kinds = {(r["layer"], r["filter"]): r["labels"][0]["agreement"] for r in rep.filters}
    assert kinds[dog_filter] in ("abstract tag", "hypernym of a tag")  # dog is above the breeds
    assert kinds[violin_filter] == "hypernym of a tag" or kinds[violin_filter] == "abstract tag"
    assert kinds[odd] == "unlinked"
    assert sum(rep.counts.values()) == 3 and rep.counts["unlinked"] == 1
    # a label that is one of the filter's own tags counts as "tag"; an unrelated one as "none"
    sheet2 = _fill(run, tmp_path / "sheet2.csv", {violin_filter: "violin", dog_filter: "violin"})
    import_labels(sheet2, run, wordnet=wordnet())
    rep = agreement(run, wordnet=wordnet())
    by = {(r["layer"], r["filter"]): {x["label"]: x["agreement"] for x in r["labels"]} for r in rep.filters}
    assert by[violin_filter]["violin"] == "tag" and by[dog_filter]["violin"] == "none"


def test_label_errors(run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("layer,filter,label\nfeatures.0,1,dog\n", encoding="utf-8")
    with pytest.raises(LabelError, match="lacks the column"):
        import_labels(bad, run, wordnet=wordnet())
    empty = export_sheet(run, tmp_path / "empty.csv")
    with pytest.raises(LabelError, match="holds no label"):
        import_labels(empty, run, wordnet=wordnet())
    with pytest.raises(LabelError, match="no human labels"):
        agreement(run, wordnet=wordnet())


def test_labels_cli(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from filtag_kg.cli import main

    assert main(["labels", "export", str(run), "--out", str(tmp_path / "s.csv")]) == 0
    tags = _tags(run)
    first = next(iter(tags))
    sheet = _fill(run, tmp_path / "s.csv", {first: "violin"})
    assert main(["labels", "import", str(sheet), str(run)]) == 0
    assert "imported 1 labels" in capsys.readouterr().out
    assert main(["labels", "agree", str(run), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sum(doc["counts"].values()) == 1
    assert main(["labels", "agree", str(run), "--setting", "top-k 9"]) == 2
    assert "unknown setting" in capsys.readouterr().err


def test_labels_belong_to_their_run_and_go_with_it(run: Path, tmp_path: Path) -> None:
    import os
    import time

    from filtag_kg.rdf import export_run
    from filtag_kg.runfolder import clear_run, stale_reason

    kg = export_run(run, fmt="nq", wordnet=wordnet())
    for p in run.rglob("*"):  # everything made a minute ago, the export half a minute ago
        os.utime(p, (time.time() - 60, time.time() - 60))
    os.utime(kg, (time.time() - 30, time.time() - 30))
    assert stale_reason(kg) is None
    first = next(iter(_tags(run)))
    import_labels(_fill(run, tmp_path / "s.csv", {first: "violin"}), run, wordnet=wordnet())
    assert "than human_labels.tsv of its run" in (stale_reason(kg) or "")  # the export lacks the label
    assert "human_labels.tsv" in {p.name for p in clear_run(run)}  # --overwrite: labels of the old run
    assert not (run / LABELS_FILE).exists()


@pytest.mark.parametrize("damage", ["cut", "not utf-8", "no header"])
def test_a_damaged_label_table_is_a_one_line_error(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """human_labels.tsv cut short or with bytes that are not UTF-8 stopped labels agree and the
    export with AttributeError or UnicodeDecodeError tracebacks."""
    from filtag_kg.cli import main

    sheet = _fill(run, tmp_path / "s.csv", {k: "violin" for k in list(_tags(run))[:3]})
    import_labels(sheet, run, wordnet=wordnet())
    path = run / LABELS_FILE
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    path.write_bytes({"cut": data[: len(lines[0]) + len(lines[1]) // 2], "not utf-8": data + b"\xff\xfe\n",
                      "no header": b"".join(lines[1:])}[damage])
    for argv in (["labels", "agree", str(run)], ["export", str(run), "--out", str(tmp_path / "kg.nq")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = [e for e in capsys.readouterr().err.splitlines() if not e.startswith("filtag-kg: warning:")]
        assert len(err) == 1 and str(path) in err[0] and "filtag-kg labels import" in err[0], (argv, err)
