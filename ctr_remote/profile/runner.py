"""`profile()`: unpack, mount, run, record, clean up."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ctr_remote.profile.result import ProfileResult
from ctr_remote.profile.workload import Workload


def profile(
    layers: Sequence[Path], config: dict, workload: Workload, *, workdir: Path | None = None
) -> ProfileResult:
    """Run `workload` on the image made of `layers` and record which files it accessed.

    `layers` are local layer blobs (tar, tar+gzip or tar+zstd), bottom layer first. `config` is the
    image config JSON (its "config" object supplies Env, Entrypoint, Cmd, WorkingDir, User,
    StopSignal). Temporary state lives in a fresh directory under `workdir` (default: the system temp
    dir) and is removed, with every mount and the container, before this returns or raises, also
    on SIGINT (re-raised as KeyboardInterrupt) and SIGTERM (raised as ProfileInterrupted).
    Raises ProfileError on anything that prevents the run; a workload that exits non-zero is not an
    error (its exit code is in the result).
    """
    raise NotImplementedError
