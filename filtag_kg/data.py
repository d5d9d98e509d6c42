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
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import DataError
from .models import WNID_RE, ClassInfo

#: images with more pixels than this are not decoded but skipped (``--max-pixels``): a
#: 144-megapixel PNG would take over 1 GB to decode, and a crafted one far more
DEFAULT_MAX_PIXELS = 100_000_000
#: a Python object's repr with its address, as some decoders' messages hold one
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


class ImageTooLargeError(ValueError):
    """An image has more pixels than the decoding cap allows (a bad sample, not fatal)."""


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
        max_pixels: images over this many pixels are skipped, not decoded (``None``: no cap).
    """

    source: str
    root: str
    samples: list[Sample]
    classes: list[ClassInfo]
    warnings: list[str] = field(default_factory=list)
    max_pixels: int | None = DEFAULT_MAX_PIXELS

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
            "max_pixels": self.max_pixels,
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


def printable_path(path: str | os.PathLike[str]) -> str:
    """A path as text that any UTF-8 output can hold: bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of the file system name (surrogate escapes)
        return False
    return True


def _listed(kind: str, paths: Sequence[str], why: str) -> str:
    shown = ", ".join(printable_path(p) for p in paths[:5])
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    return f"{len(paths)} {kind} {why}: {shown}{more}"


def _walk_class(folder: Path, notes: list[str]) -> list[str]:
    """The files under one class folder, each real file and folder once.

    Links are followed, but a folder reached a second time (a symlink loop such as
    ``loop -> .``, or two links to one folder) is not scanned again, and a file
    reached through two names is listed once; both are reported in ``notes``.
    Names that are not valid UTF-8 are skipped and listed (outputs are UTF-8).
    """
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    files: list[str] = []
    again: list[str] = []
    twice: list[str] = []
    not_utf8: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            again.append(dirpath)
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        keep = sorted(n for n in dirnames if not _is_hidden(n))
        not_utf8 += [os.path.join(dirpath, n) for n in keep if not _utf8(n)]
        dirnames[:] = [n for n in keep if _utf8(n)]
        for f in filenames:
            if _is_hidden(f):
                continue
            path = os.path.join(dirpath, f)
            if not _utf8(f):
                not_utf8.append(path)
                continue
            try:
                fst = os.stat(path)
            except OSError:  # a broken link: kept, and reported as unreadable when decoded
                files.append(path)
                continue
            if (fst.st_dev, fst.st_ino) in seen_files:
                twice.append(path)
                continue
            seen_files.add((fst.st_dev, fst.st_ino))
            files.append(path)
    if again:
        notes.append(_listed("folder(s)", again, "lead back to a folder already scanned (a symlink "
                             "loop or a second link) and were not scanned again"))
    if twice:
        notes.append(_listed("file(s)", twice, "are another name (a link) of a file already listed "
                             "and are counted once"))
    if not_utf8:
        notes.append(_listed("file(s) or folder(s)", not_utf8, "have names that are not valid UTF-8 and "
                             "are skipped; rename them to include them"))
    return files


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
    if not _utf8(str(rootp)):
        raise DataError(f"the path of data folder {printable_path(rootp)} is not valid UTF-8; rename it "
                        "(or link it under a UTF-8 name) and pass that")
    class_dirs = sorted(p for p in rootp.iterdir() if p.is_dir() and not _is_hidden(p.name))
    notes = []
    bad_names = [str(p) for p in class_dirs if not _utf8(p.name)]
    if bad_names:
        notes.append(_listed("class folder(s)", bad_names, "have names that are not valid UTF-8 and "
                             "are skipped; rename them to include them"))
        class_dirs = [p for p in class_dirs if _utf8(p.name)]
    if not class_dirs:
        raise DataError(
            f"data folder {root} holds no class folders; expected DIR/CLASS/IMAGE (CLASS a wnid "
            "such as n02085620, or a label), or use --file-list"
        )
    stray = [p.name for p in rootp.iterdir() if p.is_file() and not _is_hidden(p.name)]
    if stray:
        notes.append(f"{len(stray)} file(s) directly in {root} are not in a class folder and are ignored")
    samples: list[Sample] = []
    classes: list[ClassInfo] = []
    for ci, d in enumerate(class_dirs):
        classes.append(class_info(d.name, known))
        files = _walk_class(d, notes)
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
        raise DataError(f"image file {printable_path(missing[0])} does not exist")
    good = [str(p) for p in paths if _utf8(str(p))]
    bad = [str(p) for p in paths if not _utf8(str(p))]
    notes = [_listed("file(s)", bad, "have names that are not valid UTF-8 and are skipped; rename "
                     "them to include them")] if bad else []
    if not good:
        raise DataError(notes[0])
    return ImageSet("files", "", [Sample(p, -1) for p in good], [], notes)


def file_list(path: str | os.PathLike[str], known: Sequence[ClassInfo] | None = None) -> ImageSet:
    """Read a file list: one ``PATH<TAB>CLASS`` (or ``PATH CLASS``) per line.

    Relative paths are relative to the list's folder; blank lines and ``#``
    comments are skipped. Classes are ordered by name.

    Raises:
        DataError: the list is missing, empty, or a line has no class.
    """
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise DataError(f"cannot read file list {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line_no = exc.object[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line_no}: not UTF-8; save the file list as UTF-8 (and rename files "
                        "whose names are not)") from None
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


def _open_capped(path: str | io.BytesIO, max_pixels: int | None) -> Any:
    """``Image.open`` with PIL's decompression-bomb limit set to our own cap."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    # PIL refuses at twice its limit; ours is checked exactly below, from the header
    Image.MAX_IMAGE_PIXELS = max_pixels if max_pixels else None
    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{exc}".split(" could be")[0] + f"; over the cap of {max_pixels} "
                                 "pixels (--max-pixels)") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def load_rgb(path: str | io.BytesIO, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Any:
    """Decode an image file (a path or its bytes) completely, as a PIL RGB image.

    Args:
        path: the file, or its bytes.
        max_pixels: refuse (before decoding) an image with more pixels; ``None``: no cap.

    Raises:
        ImageTooLargeError: the image is over ``max_pixels``.
        OSError, ValueError, ...: whatever PIL raises for a bad file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # palette-transparency, EXIF and decompression-bomb chatter
        with _open_capped(path, max_pixels) as img:
            w, h = img.size
            if max_pixels and w * h > max_pixels:
                raise ImageTooLargeError(
                    f"{w} x {h} = {w * h} pixels, over the cap of {max_pixels} (--max-pixels)"
                )
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
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.with_sha256 = with_sha256
        self.max_pixels = max_pixels

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
                x = self.transform(load_rgb(io.BytesIO(data), max_pixels=self.max_pixels))
            else:
                x = self.transform(load_rgb(s.path, max_pixels=self.max_pixels))
        except Exception as exc:  # noqa: BLE001 - any decoding failure marks a bad file
            # PIL names the in-memory copy it read ("<_io.BytesIO object at 0x7f…>"): say the
            # file instead, so the reason is the same in every run and in every pass
            text = _OBJECT_REPR.sub(lambda _: repr(str(s.path)), str(exc))
            msg = text.splitlines()[0][:200] if text else ""
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
