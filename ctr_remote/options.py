"""How to optimize: plain typed data, parsed once by the CLI and read by the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ctr_remote.estargz import BuildOptions
from ctr_remote.image import Platform, Reference
from ctr_remote.prefetch_list import PrefetchList
from ctr_remote.record import Record


@dataclass(frozen=True)
class OptimizeOptions:
    """What `image optimize` and `image convert` do; convert is optimize with `optimize=False` and,
    optionally, a record to replay."""

    source: Reference
    target: Reference
    platforms: tuple[Platform, ...] = ()  # empty: the host platform
    all_platforms: bool = False
    optimize: bool = True  # False with --no-optimize
    prefetch: PrefetchList | None = None  # prioritize these paths/globs instead of running the workload
    record_in: Record | None = None  # prioritize what this record lists (convert --estargz-record-in)
    record_out: Path | None = None
    reuse: bool = False
    oci: bool = False
    # How every converted layer is written; the prioritized files are filled in per layer.
    layer: BuildOptions = field(default_factory=BuildOptions)
    uncompressed: bool = False  # convert --uncompress: plain tar layers instead of eStargz
    # --require-converted: a layer the format cannot represent fails the run instead of being copied
    # unconverted (with a warning naming it and why).
    require_converted: bool = False

    @property
    def runs_workload(self) -> bool:
        return self.optimize and self.prefetch is None and self.record_in is None
