"""Datasets: folder and list layouts, class naming, decoding of awkward files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from filtag_kg.data import ImageDataset, class_info, file_list, image_folder, load_rgb
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
