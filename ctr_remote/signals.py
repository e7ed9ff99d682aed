"""Ctrl-C and SIGTERM: the first one aborts the run, those that follow cannot cut its cleanup in half;
and holding them while something must not be cut in half (cleanup, CNI plugin runs)."""

from __future__ import annotations

import atexit
import ctypes
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from contextlib import contextmanager
from typing import Any

from ctr_remote.errors import Terminated

HELD = (signal.SIGINT, signal.SIGTERM)

_aborting: list[signal.Signals] = []  # the signal that aborted the run, once one has

# The kernel may deliver a Ctrl-C to any of our threads (a converting one, say). CPython then only
# flags it for the main thread, and a main thread blocked on a lock (an Event, a Future) is not woken
# by that: it would run the handler when the whole conversion is done. So the main thread never
# blocks longer than this before it looks.
POLL_SECONDS = 0.05


def abort(signum: int, _frame: object = None) -> None:
    """The handler of SIGINT and SIGTERM wherever a signal aborts the run: the first raises where the
    program is (KeyboardInterrupt for SIGINT, Terminated for SIGTERM), so every cleanup on the way out
    runs; a later one (a second Ctrl-C 50 ms after the first) is ignored, so that cleanup finishes and
    the exit code and message are the first signal's."""
    _ignore_held()
    if _aborting:
        return
    _aborting.append(signal.Signals(signum))
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(f"terminated by {signal.Signals(signum).name}")


def _ignore_held() -> None:
    """Have the kernel ignore SIGINT and SIGTERM from now on: the helpers our cleanup starts (`runc
    delete`, `rm -rf`) are in the terminal's process group and inherit that, so a second Ctrl-C
    cannot kill them halfway.

    Not through `signal.signal(s, SIG_IGN)` while a handler runs: when both signals arrived before
    the main thread ran any handler (a busy machine, a Ctrl-C then a SIGTERM), CPython calls the
    SIGINT handler first, then finds SIGTERM flagged with its handler gone and prints a traceback
    ("Signal 15 ignored due to race condition"). Python's own table keeps `abort`, which returns
    at once now; at exit `_ignored_at_exit` records the ignoring there too."""
    for s in HELD:
        if _libc.signal(s, _SIG_IGN) == _SIG_ERR:
            raise OSError(ctypes.get_errno(), f"cannot ignore {s.name}")


_libc = ctypes.CDLL(None, use_errno=True)
_libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
_libc.signal.restype = ctypes.c_void_p
_SIG_IGN = 1
_SIG_ERR = ctypes.c_void_p(-1).value


@atexit.register
def _ignored_at_exit() -> None:
    """Python puts the default action back for its own handlers when the interpreter exits: once a
    run is aborting, a SIGTERM then would kill it with the wrong exit status. Outside a handler (atexit
    runs on the main thread) `signal.signal` first runs what is pending, so there is no race here."""
    if _aborting and threading.current_thread() is threading.main_thread():
        for s in HELD:
            signal.signal(s, signal.SIG_IGN)


def install() -> None:
    """Make `abort` the handler of SIGINT and SIGTERM (Python's default SIGTERM kills on the spot,
    leaving temp dirs behind; its default SIGINT handler would interrupt cleanup a second time)."""
    for s in HELD:
        signal.signal(s, abort)


@contextmanager
def aborting() -> Iterator[None]:
    """`abort` handles SIGINT and SIGTERM in the block (main thread only). Leaving it restores the
    handlers it found; when those were not already `abort` (profile() called as a library), a later
    run in the same process can be aborted again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, abort) for s in HELD}
    try:
        yield
    finally:
        if any(handler is not abort for handler in previous.values()):
            _aborting.clear()
        _restore(previous)


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
        _restore(previous)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


def _restore(previous: dict[signal.Signals, Any]) -> None:
    """Put `previous` handlers back. Once the run is aborting the kernel goes on ignoring the signals
    (putting a Python handler back would have it deliver them again): what a deferred one would
    have done, `abort`, ignores them too."""
    for s, handler in previous.items():
        signal.signal(s, handler)
    if _aborting:
        _ignore_held()


def wait_event(event: threading.Event, timeout: float | None = None) -> bool:
    """`event.wait(timeout)` that a SIGINT or SIGTERM interrupts promptly whichever thread the kernel
    delivered it to (see POLL_SECONDS)."""
    if threading.current_thread() is not threading.main_thread():
        return event.wait(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
        if step <= 0:
            return event.is_set()
        if event.wait(step):
            return True


def wait_futures(futures: Iterable[Future[Any]], *, first_exception: bool = False) -> None:
    """Wait until every future is done (or, `first_exception`, one raised), interruptible like
    `wait_event`."""
    pending = set(futures)
    main = threading.current_thread() is threading.main_thread()
    while pending:
        done, pending = wait(pending, timeout=POLL_SECONDS if main else None, return_when=FIRST_EXCEPTION)
        if first_exception and any(not f.cancelled() and f.exception() is not None for f in done):
            return
