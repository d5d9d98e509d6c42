"""Atomic file writing: a file is either absent, the old version, or complete.

Artifacts are written to a temporary file in the same folder and renamed over
the target, so a crash (even SIGKILL) never leaves a half-written artifact.
Temporary files are named ``.TARGET.filtag-tmp.HOST.PID.RANDOM.EXT``, so the
next writer of the same target recognises those of a killed writer (its process
is gone) and removes them. A finished file gets the permissions the umask
allows (``mkstemp`` alone would leave it readable by its owner only), and a
full disk is one :class:`~filtag_kg.errors.OutputError`, never a traceback.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import DataError, OutputError

#: marks a temporary file of :func:`make_temp` (and so of :func:`atomic_open`)
TEMP_MARK = "filtag-tmp"
#: a temporary file whose writer runs on another machine (a shared file system) is
#: only taken for abandoned after this long without a write
FOREIGN_TEMP_AGE_S = 24 * 3600
#: errors meaning "the disk (or quota) is full": reported as one line
_FULL = {errno.ENOSPC, errno.EDQUOT} if hasattr(errno, "EDQUOT") else {errno.ENOSPC}


def current_umask() -> int:
    """The process's umask (read without changing it where ``/proc`` tells it)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: some other user's live process
        return True
    return True


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files that killed writers of ``path`` left beside it.

    A temporary file is stale when its writer ran on this machine and its process
    is gone, or ran elsewhere and has not written for :data:`FOREIGN_TEMP_AGE_S`.
    A live writer's file is never touched.

    Returns:
        The files removed.
    """
    path = Path(path)
    pattern = re.compile(
        re.escape(f".{path.name}.{TEMP_MARK}.") + r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[^/]*$"
    )
    removed: list[Path] = []
    host, now = _host(), time.time()
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for e in entries:
        m = pattern.match(e.name)
        if not m or int(m["pid"]) == os.getpid() and m["host"] == host:
            continue
        try:
            if m["host"] == host:
                stale = not _pid_alive(int(m["pid"]))
            else:
                stale = now - e.stat(follow_symlinks=False).st_mtime > FOREIGN_TEMP_AGE_S
            if stale:
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:
            continue
    return removed


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _FULL


def write_error(path: str | os.PathLike[str], exc: OSError) -> OutputError:
    """The one-line error for a failed write of ``path``."""
    if disk_full(exc):
        return OutputError(
            f"no space left on the device of {path} while writing it; free some space (or "
            "write elsewhere with --out) and rerun; nothing partial was left in its place"
        )
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def make_temp(path: str | os.PathLike[str], suffix: str = ".tmp") -> tuple[int, str]:
    """Create a recognisable temporary file beside ``path`` (see :func:`remove_stale_temps`),
    after removing the stale ones of killed writers.

    Returns:
        ``(fd, name)`` as :func:`tempfile.mkstemp` does.

    Raises:
        OutputError: the folder cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        return tempfile.mkstemp(
            prefix=f".{path.name}.{TEMP_MARK}.{_host()}.{os.getpid()}.", suffix=suffix, dir=path.parent
        )
    except OSError as exc:
        raise OutputError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None


def publish_mode(fd: int) -> None:
    """Give a file made by ``mkstemp`` (mode 0600) the mode a plain ``open`` would: 0666 less the umask."""
    os.fchmod(fd, 0o666 & ~current_umask())


def sync_filesystem(path: str | os.PathLike[str]) -> None:
    """Flush to disk everything written to the file system that holds ``path``.

    One call makes many files durable at once (one journal commit instead of an fsync
    each). Linux's ``syncfs`` flushes only that file system, not every mounted one as
    ``os.sync`` does; where there is no ``syncfs``, ``os.sync``.

    Raises:
        OutputError: the flush failed (a write-back error: files written before may be
            lost, so nothing may name them yet).
    """
    import ctypes
    import errno

    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        syncfs = None
    if syncfs is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if syncfs(fd) == 0:
                return
            err = ctypes.get_errno()
        finally:
            os.close(fd)
        if err != errno.ENOSYS:
            raise OutputError(f"cannot flush {path} to disk: {os.strerror(err)}")
    if hasattr(os, "sync"):
        os.sync()


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, durable: bool = True, **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` on success.

    Args:
        path: the final file.
        mode: ``"w"`` (text, UTF-8 unless given) or ``"wb"``.
        durable: fsync the file before the rename; ``False`` for writers of many small
            files that make them durable together (one :func:`sync_filesystem`) before
            anything names them.

    Raises:
        OutputError: the folder cannot be written, or the disk is full (the
            target then keeps its old content or stays absent).
    """
    path = Path(path)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "\n")
    fd, tmp = make_temp(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
            publish_mode(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if disk_full(exc):
            raise write_error(path, exc) from None  # type: ignore[arg-type]
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-ordered UTF-8 JSON, atomically."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False, allow_nan=False)
        fh.write("\n")


def write_png(path: str | os.PathLike[str], image: Any, *, durable: bool = True, **save: Any) -> None:
    """Write a PIL image as a PNG through :func:`atomic_open` (no half file after a crash);
    ``durable`` and the folder's creation as there, ``save`` goes to ``Image.save``."""
    with atomic_open(path, "wb", durable=durable) as fh:
        image.save(fh, format="PNG", **save)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_table_rows(
    path: str | os.PathLike[str], columns: Sequence[str], what: str, fix: str
) -> list[dict[str, str]]:
    """The rows of a tab-separated table of filters that filtag-kg wrote (``tags.tsv``,
    ``human_labels.tsv``), as strings by column, checked: every one of ``columns`` in the
    header, no row cut short, each ``filter`` a whole number.

    Args:
        what: the table's kind for the message (``"tag table"``).
        fix: how to write it again, ending the message.

    Raises:
        DataError: the file is not such a table (not UTF-8, a column or a cell missing),
            naming it and ``fix``.
    """
    def bad(detail: object) -> DataError:
        return DataError(f"{path} is not a filtag-kg {what} ({detail}); {fix}")

    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise bad(f"no {', '.join(missing)} column")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise bad(f"{type(exc).__name__}: {exc}") from None
    for n, row in enumerate(rows, start=2):
        if None in row.values() or not (row["filter"].isascii() and row["filter"].isdecimal()):
            raise bad(f"line {n} is cut short or a filter there is not a whole number")
    return rows


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and check that files can be created in it.

    Raises:
        OutputError: naming the folder, when it cannot be created or written.
    """
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise OutputError(f"output folder {path} is a file; choose a folder with --out")
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".write-test.{TEMP_MARK}.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"cannot write to output folder {path}: {exc.strerror or exc}; choose another with --out"
        ) from None
    return path


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
