"""Progress bars: tqdm on a terminal, a plain line now and then anywhere else.

On a terminal a bar redraws itself in place with carriage returns. Written to a
file or pipe (a CI log, ``nohup``, Slurm's output file) those redraws become
thousands of ``\\r`` updates glued into one enormous line. So off a terminal
the same bar prints one ordinary line when it starts, at most one every
:data:`LOG_INTERVAL_S` seconds while it runs, and one when it ends.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

LOG_INTERVAL_S = 30.0
"""Least seconds between two progress lines when the output is not a terminal."""


class _Lines:
    """A stream for tqdm that turns its in-place redraws into whole lines."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    initial: float = 0,
    leave: bool = False,
    file: IO[str] | None = None,
) -> Any:
    """A tqdm bar on ``file`` (stderr): in place on a terminal, as log lines elsewhere.

    Args:
        iterable: what to iterate over, as ``tqdm(iterable)``; or ``None`` and call ``update``.
        total: the expected count.
        desc: what is being done (the line's prefix).
        unit: what is counted (``img``, ``step``, ``page``).
        enabled: ``False`` shows nothing.
        initial: the count already done (a resumed pass).
        leave: keep the finished bar on a terminal (off a terminal the last line always stays).
        file: the stream (default ``sys.stderr``).

    Returns:
        A ``tqdm`` object (iterable, ``update``, ``set_postfix``, context manager).
    """
    from tqdm import tqdm

    stream = file if file is not None else sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream,
                    dynamic_ncols=True, leave=leave)
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=_Lines(stream),
                mininterval=LOG_INTERVAL_S, miniters=1, ncols=100, ascii=True, leave=True)
