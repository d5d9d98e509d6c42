"""Progress bars: in place on a terminal, whole log lines elsewhere."""

from __future__ import annotations

import io

import pytest

from filtag_kg import _progress
from filtag_kg._progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_bar_writes_a_few_whole_lines() -> None:
    log = io.StringIO()
    with progress(total=2000, desc="profile", unit="img", file=log) as bar:
        for _ in range(2000):
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 3, lines  # started, (maybe one on the way,) finished
    assert lines[0].startswith("profile:") and "2000/2000" in lines[-1]


def test_off_a_terminal_a_line_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "LOG_INTERVAL_S", 0.0)
    log = io.StringIO()
    for _ in progress(range(5), total=5, desc="pages", file=log):
        pass
    lines = log.getvalue().splitlines()
    assert len(lines) >= 6 and all(line.startswith("pages:") for line in lines)  # 0/5 ... 5/5


def test_on_a_terminal_the_bar_redraws_in_place_and_disabled_shows_nothing() -> None:
    tty = _Terminal()
    with progress(total=3, desc="train", file=tty) as bar:
        bar.update(3)
    assert "\r" in tty.getvalue()
    quiet = io.StringIO()
    with progress(total=3, desc="train", enabled=False, file=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""
