"""Datasets: folder and list layouts, class naming, decoding of awkward files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from filtag_kg.data import ImageDataset, Sample, class_info, file_list, image_folder, load_rgb
from filtag_kg.errors import DataError
from filtag_kg.models import ClassInfo
from filtag_kg.preprocess import Preprocess


def test_folder_layout_and_order(messy_dir: Path) -> None:
    s = image_folder(messy_dir)
    assert [c.id for c in s.classes] == ["n01440764", "n02085620", "n02123045", "n04536866"]
    assert [c.label for c in s.classes] == ["tench", "Chihuahua", "tabby", "violin"]
    paths = [x.path for x in s.samples]
    assert paths == sorted(paths)  # class folders and files in name order: resumable
    assert len(s.samples) == 3 * 3 + 4 + 2  # three per class + 4 other modes + 2 bad files
    assert s.fingerprint() == image_folder(messy_dir).fingerprint()


def test_modes_convert_to_rgb_and_bad_files_report(messy_dir: Path) -> None:
    for name in ("gray.png", "pal.png", "rgba.png", "cmyk.jpg"):
        img = load_rgb(str(messy_dir / "n02085620" / name))
        assert img.mode == "RGB" and img.size == (30, 30)
    ds = ImageDataset(image_folder(messy_dir).samples, Preprocess(resize=None, crop=8).transform())
    errors = {Path(ds.samples[i].path).name: ds[i][3] for i in range(len(ds)) if ds[i][1] is None}
    assert set(errors) == {"truncated.jpg", "notes.png"}
    assert all(errors.values())


def test_file_list(tmp_path: Path, image_dir: Path) -> None:
    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    files = sorted(image_dir.glob("*/*.png"))
    rel = [Path("..") / "data" / f.parent.name / f.name for f in files[:2]]
    lst.write_text(
        "# path<TAB>class\n"
        f"{rel[0]}\tviolin\n"
        f"{files[2]}   n02085620\n"
        f"{rel[1]}\tviolin\n"
    )
    s = file_list(lst, [ClassInfo("n04536866", "violin")])
    assert [c.id for c in s.classes] == ["n02085620", "n04536866"]  # label mapped to the model's wnid
    assert [Path(x.path).resolve() for x in s.samples] == [files[0], files[2], files[1]]
    assert [x.label for x in s.samples] == [1, 0, 1]
    lst.write_text("only-a-path\n")
    with pytest.raises(DataError, match="train.txt:1"):
        file_list(lst)


def test_class_info_rules() -> None:
    known = [ClassInfo("n02012849", "crane"), ClassInfo("n03126707", "crane")]
    assert class_info("n03126707", known).label == "crane"
    assert class_info("crane", known) == ClassInfo("crane", "crane")  # ambiguous: not guessed
    assert class_info("n01443537") == ClassInfo("n01443537", "goldfish")
    assert class_info("n99999999") == ClassInfo("n99999999", "n99999999")


def test_preprocess_round_trip() -> None:
    p = Preprocess(resize=40, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), source="x")
    assert Preprocess.from_dict(p.to_dict()) == p
    from PIL import Image

    img = Image.fromarray(np.full((50, 60, 3), 128, dtype=np.uint8))
    x = p.transform()(img)
    assert tuple(x.shape) == (3, 32, 32)
    np.testing.assert_allclose(x.numpy(), (128 / 255 - 0.5) / 0.25, atol=1e-6)


def test_a_symlink_loop_counts_each_file_once(image_dir: Path) -> None:
    d = image_dir / "n02085620"
    (d / "loop").symlink_to(".", target_is_directory=True)  # loop -> .
    (d / "sub").mkdir()
    (d / "sub" / "up").symlink_to("..", target_is_directory=True)
    (d / "again.png").symlink_to("img00.png")  # a second name of one file
    s = image_folder(image_dir)
    assert len(s.samples) == 12  # 4 per class, as without the links
    assert sum(x.label == 1 for x in s.samples) == 4
    notes = " ".join(s.warnings)
    assert "symlink loop" in notes and "loop" in notes and "counted once" in notes


def test_names_that_are_not_utf8_are_skipped_and_listed(image_dir: Path, tmp_path: Path) -> None:
    import json
    import os

    d = image_dir / "n02085620"
    bad = os.fsdecode(bytes(d) + b"/caf\xe9.png")
    (d / "img00.png").rename(bad)
    os.mkdir(os.fsdecode(bytes(image_dir) + b"/n0\xff"))
    s = image_folder(image_dir)
    assert len(s.samples) == 11 and len(s.classes) == 3
    notes = "\n".join(s.warnings)
    assert "caf\\xe9.png" in notes and "n0\\xff" in notes and "not valid UTF-8" in notes
    json.dumps(s.record()).encode("utf-8")  # every artifact can be written
    (tmp_path / "w.tsv").write_text(s.fingerprint() + "\n" + notes, encoding="utf-8")
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"a.png\tn02085620\ncaf\xe9.png\tn02085620\n")
    with pytest.raises(DataError, match="list.txt:2: not UTF-8"):
        file_list(lst)


def test_images_over_the_pixel_cap_are_skipped_with_the_reason(tmp_path: Path) -> None:
    from PIL import Image

    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new("RGB", (60, 50)).save(big)
    Image.new("RGB", (20, 20)).save(small)
    with pytest.raises(ValueError, match=r"60 x 50 = 3000 pixels, over the cap of 2000 \(--max-pixels\)"):
        load_rgb(str(big), max_pixels=2000)
    # far over the cap: PIL's own decompression-bomb check answers first, in the same words
    with pytest.raises(ValueError, match=r"over the cap of 1000 pixels \(--max-pixels\)"):
        load_rgb(str(big), max_pixels=1000)
    assert load_rgb(str(big), max_pixels=None).size == (60, 50)
    ds = ImageDataset([Sample(str(big), 0), Sample(str(small), 0)],
                      Preprocess(resize=None, crop=8).transform(), max_pixels=2000)
    assert ds[0][1] is None and "ImageTooLargeError" in ds[0][3] and "--max-pixels" in ds[0][3]
    assert ds[1][1] is not None


def test_run_records_images_over_the_cap_as_skipped(
    capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path
) -> None:
    import json

    from PIL import Image

    from filtag_kg.cli import main

    Image.new("RGB", (80, 80)).save(image_dir / "n02085620" / "huge.png")
    out = tmp_path / "run"
    code = main(["run", "--model", "tiny_models:build_tiny", "--image-size", "16", "--quiet", "--no-export",
                 "--max-pixels", "5000", "--data", str(image_dir), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    ds = json.loads((out / "profile.json").read_text())["dataset"]
    assert ds["images_used"] == 12 and ds["max_pixels"] == 5000
    assert [Path(s["path"]).name for s in ds["skipped"]] == ["huge.png"]
    assert "6400 pixels, over the cap of 5000" in ds["skipped"][0]["reason"]


@pytest.mark.parametrize("name", ["cat\xa0photo.jpg", "tab\there.png", "back\\slash.png", "plain.png"])
def test_bad_file_reasons_name_the_file_whatever_its_name(tmp_path: Path, name: str) -> None:
    """The reason of a file that is not an image names the file, the same with and without
    checksums (explain reads through an in-memory copy, profile from the path); a name whose
    repr holds a backslash escape (NBSP, tab) once crashed the pass instead of being skipped."""
    d = tmp_path / "n02085620"
    d.mkdir()
    (d / name).write_text("not an image\n")
    samples = image_folder(tmp_path).samples
    pre = Preprocess(resize=None, crop=8).transform()
    hashed, plain = ImageDataset(samples, pre, with_sha256=True)[0], ImageDataset(samples, pre)[0]
    assert hashed[1] is None and plain[1] is None
    assert hashed[3] == plain[3]
    assert repr(str(d / name)) in hashed[3] and "0x" not in hashed[3]
