"""Atomic writing: the umask is honoured, a full disk is one error, killed writers' temps go."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from filtag_kg import _io
from filtag_kg.errors import OutputError


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_honour_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        _io.write_json(tmp_path / "a.json", {"x": 1})
        with _io.atomic_open(tmp_path / "b.bin", "wb") as fh:
            fh.write(b"1")
    finally:
        os.umask(old)
    # what open() would give: 0666 less the umask (mkstemp alone makes 0600)
    assert _mode(tmp_path / "a.json") == 0o666 & ~mask
    assert _mode(tmp_path / "b.bin") == 0o666 & ~mask


def test_disk_full_is_one_error_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "kg.json"
    _io.write_json(target, {"old": True})
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="no space left") as info:
        _io.write_json(target, {"new": True})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert "\n" not in str(info.value) and str(target) in str(info.value)
    assert _io.read_json(target) == {"old": True}  # the complete old version, not a partial one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kg.json"]  # no temp left


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temps_of_a_killed_writer_are_removed_by_the_next(tmp_path: Path) -> None:
    host = _io._host()
    target = tmp_path / "kg.trig"
    dead = tmp_path / f".kg.trig.{_io.TEMP_MARK}.{host}.{_dead_pid()}.abc.nq"
    live = tmp_path / f".kg.trig.{_io.TEMP_MARK}.{host}.{os.getppid()}.def.tmp"  # a running process
    foreign_new = tmp_path / f".kg.trig.{_io.TEMP_MARK}.elsewhere.1234.ghi.tmp"
    foreign_old = tmp_path / f".kg.trig.{_io.TEMP_MARK}.elsewhere.1235.jkl.tmp"
    other_target = tmp_path / f".tags.tsv.{_io.TEMP_MARK}.{host}.{_dead_pid()}.x.tmp"
    user_file = tmp_path / ".kg.trig.notes"
    for p in (dead, live, foreign_new, foreign_old, other_target, user_file):
        p.write_bytes(b"partial")
    old = os.path.getmtime(foreign_old) - _io.FOREIGN_TEMP_AGE_S - 10
    os.utime(foreign_old, (old, old))
    with _io.atomic_open(target, "wb") as fh:
        fh.write(b"complete")
    left = {p.name for p in tmp_path.iterdir()}
    assert dead.name not in left and foreign_old.name not in left
    assert {live.name, foreign_new.name, other_target.name, user_file.name, "kg.trig"} == left


def test_temp_names_are_recognisable(tmp_path: Path) -> None:
    fd, name = _io.make_temp(tmp_path / "kg.trig", suffix=".nq")
    os.close(fd)
    assert Path(name).name.startswith(f".kg.trig.{_io.TEMP_MARK}.{_io._host()}.{os.getpid()}.")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")
def test_sync_filesystem_flushes_one_file_system_not_every_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster maps are made durable in one go; on Linux that must be syncfs on the run
    folder's file system, never os.sync (every disk of a shared machine, other programs'
    writes included)."""
    from filtag_kg._io import sync_filesystem

    def whole_machine() -> None:
        raise AssertionError("os.sync called")

    monkeypatch.setattr(os, "sync", whole_machine)
    sync_filesystem(tmp_path)


def test_sync_filesystem_reports_a_write_back_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed syncfs (EIO: written data lost) is an OutputError, not a silent os.sync:
    the pass must not name files that may not be on disk."""
    import ctypes
    import errno

    from filtag_kg._io import sync_filesystem

    class Libc:
        @staticmethod
        def syncfs(fd: int) -> int:
            ctypes.set_errno(errno.EIO)
            return -1

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: Libc())
    with pytest.raises(OutputError, match="cannot flush"):
        sync_filesystem(tmp_path)
