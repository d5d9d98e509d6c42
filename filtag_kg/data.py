"""Image datasets: ImageFolder layouts, file lists, decoding and bad files.

A dataset is a deterministic, ordered list of samples (path, class index), so
a profile pass can stop and resume at any sample. Decoding never raises: an
unreadable, truncated or non-image file becomes a *bad sample* that the
profile pass skips, counts and lists. Grayscale, palette, RGBA and CMYK images
are converted to RGB.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import DataError
from .models import WNID_RE, ClassInfo


@dataclass(frozen=True)
class Sample:
    """One image: its path (as found or listed) and its class index in the dataset."""

    path: str
    label: int


@dataclass
class ImageSet:
    """An ordered list of labelled images and the dataset's classes.

    Attributes:
        source: ``"folder"``, ``"file-list"`` or ``"files"``.
        root: the data folder or file list the set came from.
        samples: images in a fixed order (class folder, then file name).
        classes: the dataset's classes; ``samples[i].label`` indexes them.
        warnings: things a user should know (empty class folders, stray files).
    """

    source: str
    root: str
    samples: list[Sample]
    classes: list[ClassInfo]
    warnings: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """SHA-256 of the ordered (path, class id) list: identifies the data for resume."""
        h = hashlib.sha256()
        for s in self.samples:
            cls = self.classes[s.label].id if s.label >= 0 else ""
            h.update(f"{s.path}\t{cls}\n".encode())
        return h.hexdigest()

    def record(self) -> dict[str, Any]:
        """Plain-JSON description for artifacts.

        ``root`` is absolute, and ``cwd`` is the folder that relative sample paths
        (kept as given, so queries take them as typed) are relative to: a reader in
        another folder (``filtag-kg report``) still finds the images.
        """
        return {
            "source": self.source,
            "root": os.path.abspath(self.root) if self.root else self.root,
            "cwd": os.getcwd(),
            "images": len(self.samples),
            "classes": len(self.classes),
            "fingerprint": self.fingerprint(),
        }


def class_info(name: str, known: Sequence[ClassInfo] | None = None) -> ClassInfo:
    """The class a folder or list name stands for.

    A wnid keeps its id and gets its label from ``known`` (the model's classes),
    else from the ImageNet-1k table, else it is its own label. A label that one
    of ``known`` carries maps to that class's id; any other label is its own id.
    """
    known = list(known or [])
    for c in known:
        if name == c.id:
            return c
    if WNID_RE.match(name):
        from .imagenet import imagenet_by_wnid

        hit = imagenet_by_wnid().get(name)
        return ClassInfo(name, hit.label if hit else name)
    matches = [c for c in known if c.label == name]
    if len(matches) == 1:
        return matches[0]
    return ClassInfo(name, name)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def image_folder(root: str | os.PathLike[str], known: Sequence[ClassInfo] | None = None) -> ImageSet:
    """Scan an ImageFolder layout: ``root/CLASS/IMAGE`` (``CLASS`` a wnid or a label).

    Every non-hidden file in a class folder (subfolders included) is a sample;
    files that are not images are reported as bad when decoded, never dropped.

    Raises:
        DataError: the folder is missing, has no class folders or no files.
    """
    rootp = Path(root).expanduser()
    if not rootp.is_dir():
        raise DataError(
            f"data folder {root} does not exist; pass --data DIR with one subfolder per class"
        )
    class_dirs = sorted(p for p in rootp.iterdir() if p.is_dir() and not _is_hidden(p.name))
    if not class_dirs:
        raise DataError(
            f"data folder {root} holds no class folders; expected DIR/CLASS/IMAGE (CLASS a wnid "
            "such as n02085620, or a label), or use --file-list"
        )
    notes = []
    stray = [p.name for p in rootp.iterdir() if p.is_file() and not _is_hidden(p.name)]
    if stray:
        notes.append(f"{len(stray)} file(s) directly in {root} are not in a class folder and are ignored")
    samples: list[Sample] = []
    classes: list[ClassInfo] = []
    for ci, d in enumerate(class_dirs):
        classes.append(class_info(d.name, known))
        files = []
        for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
            dirnames[:] = sorted(n for n in dirnames if not _is_hidden(n))
            files += [os.path.join(dirpath, f) for f in filenames if not _is_hidden(f)]
        if not files:
            notes.append(f"class folder {d} is empty; the class is kept with no images and no tags")
        samples += [Sample(f, ci) for f in sorted(files)]
    if not samples:
        raise DataError(f"data folder {root} holds no image files in its class folders")
    return ImageSet("folder", str(rootp), samples, classes, notes)


def image_files(paths: Sequence[str | os.PathLike[str]]) -> ImageSet:
    """Single images given on the command line, in the order given (no classes).

    Raises:
        DataError: no path is given or a path is not a file.
    """
    if not paths:
        raise DataError("no image given; pass image files, --data DIR or --file-list FILE")
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"image file {missing[0]} does not exist")
    return ImageSet("files", "", [Sample(str(p), -1) for p in paths], [])


def file_list(path: str | os.PathLike[str], known: Sequence[ClassInfo] | None = None) -> ImageSet:
    """Read a file list: one ``PATH<TAB>CLASS`` (or ``PATH CLASS``) per line.

    Relative paths are relative to the list's folder; blank lines and ``#``
    comments are skipped. Classes are ordered by name.

    Raises:
        DataError: the list is missing, empty, or a line has no class.
    """
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read file list {path}: {exc.strerror or exc}") from None
    entries: list[tuple[str, str]] = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit("\t", 1) if "\t" in line else line.rsplit(None, 1)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise DataError(f"{path}:{n}: expected 'PATH<TAB>CLASS', got {line!r}")
        img, cls = parts[0].strip(), parts[1].strip()
        if not os.path.isabs(img):
            img = str(p.parent / img)
        entries.append((img, cls))
    if not entries:
        raise DataError(f"file list {path} lists no images")
    names = sorted({c for _, c in entries})
    index = {c: i for i, c in enumerate(names)}
    samples = [Sample(img, index[c]) for img, c in entries]
    return ImageSet("file-list", str(p), samples, [class_info(c, known) for c in names])


def load_rgb(path: str | io.BytesIO) -> Any:
    """Decode an image file (a path or its bytes) completely, as a PIL RGB image.

    Raises:
        OSError, ValueError, ...: whatever PIL raises for a bad file.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # palette-transparency and EXIF chatter
        with Image.open(path) as img:
            img.load()  # forces full decoding: truncated files fail here
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                img = img.point(lambda v: v / 256).convert("L")
            return img.convert("RGB")


class ImageDataset(Dataset):
    """Decodes and transforms samples; a bad file yields an error instead of a tensor.

    ``dataset[i]`` is ``(i, tensor | None, label, error | None)``; with
    ``with_sha256`` the SHA-256 of the file's bytes follows as a fifth item.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Any], torch.Tensor],
        *,
        with_sha256: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.with_sha256 = with_sha256

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        s = self.samples[i]
        digest = None
        try:
            if self.with_sha256:
                with open(s.path, "rb") as fh:
                    data = fh.read()
                digest = hashlib.sha256(data).hexdigest()
                x = self.transform(load_rgb(io.BytesIO(data)))
            else:
                x = self.transform(load_rgb(s.path))
        except Exception as exc:  # noqa: BLE001 - any decoding failure marks a bad file
            msg = str(exc).splitlines()[0][:200] if str(exc) else ""
            item: tuple[Any, ...] = (i, None, s.label, f"{type(exc).__name__}: {msg}".rstrip(": "))
        else:
            item = (i, x, s.label, None)
        return (*item, digest) if self.with_sha256 else item


@dataclass
class Batch:
    """A collated batch: good images stacked, bad ones listed by dataset index."""

    indices: torch.Tensor
    images: torch.Tensor | None
    labels: torch.Tensor
    bad: list[tuple[int, str]]
    count: int
    sha256: list[str | None] | None = None

    def pin_memory(self) -> Batch:
        """Called by the DataLoader when pinning memory for CUDA transfers."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        self.labels = self.labels.pin_memory()
        return self


def collate(items: list[tuple[Any, ...]]) -> Batch:
    """Stack the good images of a batch; keep (index, reason) of the bad ones."""
    good = [it for it in items if it[1] is not None]
    bad = [(it[0], it[3] or "unreadable") for it in items if it[1] is None]
    return Batch(
        indices=torch.tensor([it[0] for it in good], dtype=torch.long),
        images=torch.stack([it[1] for it in good]) if good else None,
        labels=torch.tensor([it[2] for it in good], dtype=torch.long),
        bad=bad,
        count=len(items),
        sha256=[it[4] for it in good] if items and len(items[0]) > 4 else None,
    )


def make_loader(
    dataset: ImageDataset,
    *,
    start: int = 0,
    batch_size: int = 32,
    workers: int = 0,
    pin_memory: bool = False,
    batch_sampler: Any = None,
) -> DataLoader:
    """An in-order loader over ``dataset[start:]`` (no shuffling: resume needs the order),
    or over the batches of ``batch_sampler`` (see :class:`filtag_kg.distributed.RoundSampler`)."""
    common = dict(num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
                  prefetch_factor=4 if workers > 0 else None)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    subset = torch.utils.data.Subset(dataset, range(start, len(dataset)))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, **common)
