"""Step 2 against a straightforward reference: sorted() with (−value, index) keys."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from filtag_kg.errors import TaggingError
from filtag_kg.profile import LayerProfile, Profile
from filtag_kg.tagging import (
    TagSetting,
    active_filters,
    class_shares,
    filter_entropy,
    read_tags_tsv,
    tag_profile,
    write_tags,
)


def reference_active(values: list[float], method: str, param: float | None) -> list[int]:
    order = sorted(range(len(values)), key=lambda f: (-values[f], f))
    if method == "top-k":
        return order[: int(param)]
    if method == "top-percent":
        n = round(param / 100 * len(values))  # Python's round: half to even
        return order[: max(1, n)]
    mean = math.fsum(values) / len(values)
    return [f for f in order if values[f] > mean]


def make_profile(means: dict[str, np.ndarray], counts: list[int]) -> Profile:
    layers = [LayerProfile(n, m.shape[1], f"{n} (test)", m) for n, m in means.items()]
    ids = [f"c{i}" for i in range(len(counts))]
    return Profile(layers, ids, [f"label {i}" for i in ids], np.array(counts), {})


@pytest.mark.parametrize(
    "method,param",
    [("top-k", 1), ("top-k", 3), ("top-percent", 25), ("top-percent", 35), ("top-percent", 1),
     ("top-percent", 100), ("above-average", None)],
)
def test_active_sets_match_reference(method: str, param: float | None) -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        values = np.round(rng.random(10), 1)  # rounding to 0.1 makes ties frequent
        got = active_filters(values, TagSetting(method, param), "L").tolist()
        assert got == reference_active(values.tolist(), method, param)


def test_top_percent_rounds_half_to_even() -> None:
    values = np.arange(10, dtype=float)
    assert len(active_filters(values, TagSetting("top-percent", 25))) == 2  # 2.5 -> 2
    assert len(active_filters(values, TagSetting("top-percent", 35))) == 4  # 3.5 -> 4
    assert len(active_filters(values, TagSetting("top-percent", 0.1))) == 1  # at least one


def test_ties_go_to_the_lower_filter_index() -> None:
    values = np.array([0.5, 0.9, 0.9, 0.1, 0.9])
    assert active_filters(values, TagSetting("top-k", 2)).tolist() == [1, 2]
    assert active_filters(values, TagSetting("top-k", 4)).tolist() == [1, 2, 4, 0]


def test_above_average_is_strict() -> None:
    values = np.array([1.0, 1.0, 1.0])  # all equal to the mean: none strictly above
    assert active_filters(values, TagSetting("above-average")).tolist() == []


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_invalid_k_is_rejected(k: object) -> None:
    with pytest.raises(TaggingError, match="k"):
        TagSetting("top-k", k)  # type: ignore[arg-type]


@pytest.mark.parametrize("q", [0, -5, 100.5])
def test_invalid_percent_is_rejected(q: float) -> None:
    with pytest.raises(TaggingError, match="percent"):
        TagSetting("top-percent", q)


def test_k_wider_than_a_layer_names_the_layer() -> None:
    p = make_profile({"features.0": np.ones((2, 4))}, [1, 1])
    with pytest.raises(TaggingError, match="features.0"):
        tag_profile(p, [TagSetting("top-k", 5)])


def test_tags_scores_ranks_shares() -> None:
    means = np.array([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.9, 0.9, 0.9]])
    p = make_profile({"conv": means}, [2, 5, 0])  # class c2 has no images: no tags
    tags = tag_profile(p, [TagSetting("top-k", 2)])
    got = [(t.class_id, t.filter, t.rank, round(t.score, 12), round(t.share, 12)) for t in tags]
    # shares: column sums over classes with images: [0.3, 0.8, 0.9]
    assert got == [
        ("c0", 1, 1, 0.6, round(0.6 / 0.8, 12)),
        ("c0", 2, 2, 0.3, round(0.3 / 0.9, 12)),
        ("c1", 2, 1, 0.6, round(0.6 / 0.9, 12)),
        ("c1", 0, 2, 0.2, round(0.2 / 0.3, 12)),  # 0.2 ties with filter 1: lower index wins
    ]
    assert all(t.method == "top-k" and t.param == "2" and t.layer == "conv" for t in tags)


def test_shares_and_entropy() -> None:
    means = np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 0.0], [0.0, 0.5, 0.0], [0.0, 0.5, 0.0]])
    shares = class_shares(means, np.array([1, 1, 1, 1]))
    np.testing.assert_allclose(shares.sum(axis=0), [1.0, 1.0, 0.0])
    ent = filter_entropy(shares)
    np.testing.assert_allclose(ent, [0.0, 2.0, 0.0])  # one-hot, uniform over 4, silent


def test_write_and_read_back(tmp_path) -> None:
    rng = np.random.default_rng(0)
    p = make_profile({"a.b": rng.random((4, 6)), "c": rng.random((4, 3))}, [3, 1, 2, 4])
    settings = [TagSetting("top-k", 1), TagSetting("top-percent", 50), TagSetting("above-average")]
    tags = write_tags(tmp_path, p, settings)
    back = read_tags_tsv(tmp_path / "tags.tsv")
    assert back == tags
    header = (tmp_path / "tags.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["method", "param", "layer", "filter", "class_id", "label", "score", "rank",
                      "share"]
    import json

    doc = json.loads((tmp_path / "tags.json").read_text())
    assert [s["method"] for s in doc["settings"]] == ["top-k", "top-percent", "above-average"]
    assert sum(len(s["tags"]) for s in doc["settings"]) == len(tags)
    ent = doc["layers"][0]["entropy_bits"]
    assert len(ent) == 6 and all(0 <= e <= math.log2(4) + 1e-12 for e in ent)
    # deterministic: the same profile writes byte-identical files
    first = (tmp_path / "tags.tsv").read_bytes()
    write_tags(tmp_path, p, settings)
    assert (tmp_path / "tags.tsv").read_bytes() == first


@pytest.mark.parametrize("damage", ["not utf-8", "cut row", "no header", "bad filter"])
def test_a_damaged_tag_table_is_a_one_line_error_in_every_reader(
    tiny_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """tags.tsv with bytes that are not UTF-8 made sentences, abstract and labels export stop
    with a UnicodeDecodeError traceback (the export alone named the file); a row cut short or
    a filter that is not a number went through unnoticed or as a traceback. Every reader now
    names the file and how to write it again."""
    from filtag_kg.cli import main

    run, _ = tiny_run
    path = run / "tags.tsv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if damage == "not utf-8":
        path.write_bytes("".join(lines).encode() + b"\xff\xfe\n")
    elif damage == "cut row":
        path.write_text("".join(lines[:3]) + lines[3].split("\t")[0] + "\n", encoding="utf-8")
    elif damage == "no header":
        path.write_text("".join(lines[1:]), encoding="utf-8")
    else:
        cells = lines[2].split("\t")
        cells[3] = "x"
        path.write_text("".join([*lines[:2], "\t".join(cells), *lines[3:]]), encoding="utf-8")
    for argv in (["sentences", str(run)], ["abstract", str(run)], ["labels", "export", str(run)],
                 ["export", str(run), "--out", str(tmp_path / "kg.nq")],
                 ["report", str(run), "--out", str(tmp_path / "report"), "--quiet"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = [e for e in capsys.readouterr().err.splitlines() if not e.startswith("filtag-kg: warning:")]
        assert len(err) == 1 and err[0].startswith("filtag-kg: error: "), (argv, err)
        assert str(path) in err[0] and "`filtag-kg tag`" in err[0], (argv, err)
