"""Ctrl-C that waits for a batch's bookkeeping to finish.

A resumable pass keeps two things in step: what it has accumulated (sums,
rows handed to the writer, skipped files) and how many images it has counted
as done. A KeyboardInterrupt raised between the two would save a state that
counts a batch's results but not the batch, and ``--resume`` would then
process that batch a second time. :func:`held_interrupt` wraps the few
statements that update both, so Ctrl-C during them takes effect right after
them: the forward pass itself stays interruptible at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def held_interrupt() -> Iterator[None]:
    """Delay SIGINT (Ctrl-C) until the block ends, then raise KeyboardInterrupt.

    Outside the main thread (where Python cannot install signal handlers) or
    when SIGINT is not handled by Python's default handler, the block runs
    unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield
        return
    caught: list[Any] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
