"""The optimize pipeline: resolve SRC, profile, convert every layer, write DST."""

from __future__ import annotations

from ctr_remote.errors import CtrRemoteError
from ctr_remote.options import OptimizeOptions
from ctr_remote.profile.workload import Workload


def optimize(source: str, target: str, options: OptimizeOptions, workload: Workload) -> str:
    """Convert `source` into `target`; returns the digest of what was written."""
    raise CtrRemoteError("optimize: the conversion pipeline is not wired yet")
