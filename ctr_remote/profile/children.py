"""Helper processes of a run die with it: runc, the FUSE daemon and the fanotify reader get SIGKILL
when the process that started them dies, even by SIGKILL (the janitor then removes what they held)."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it


def die_with_parent() -> None:
    """A `preexec_fn`: runs in the child between fork and exec. The parent-death signal is bound to
    the thread that forked; our helpers are started from the main thread, which lives as long as
    the process."""
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
