"""Holding Ctrl-C and SIGTERM while something must not be cut in half (cleanup, CNI plugin runs)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block is done, then deliver each once, to the handlers that were
    in place before (so a deferred Ctrl-C still interrupts, just not halfway through a teardown).

    Handlers can only be swapped on the main thread; elsewhere signals are not ours to handle anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    # A handler installed outside Python reads as None and could not be put back: leave those alone.
    signums = [s for s in HELD if signal.getsignal(s) is not None]
    previous = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)
