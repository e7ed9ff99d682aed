"""Errors of the profiling runner: each message is one line naming what went wrong."""

from __future__ import annotations

from ctr_remote.errors import CtrRemoteError


class ProfileError(CtrRemoteError):
    """The workload could not be profiled (missing runtime or /dev/fuse, bad layer, bad workload...)."""
