"""How to optimize: plain typed data, parsed once by the CLI and read by the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ctr_remote.estargz import BuildOptions
from ctr_remote.image import Platform, Reference
from ctr_remote.prefetch_list import PrefetchList


@dataclass(frozen=True)
class OptimizeOptions:
    source: Reference
    target: Reference
    platforms: tuple[Platform, ...] = ()  # empty: the host platform
    all_platforms: bool = False
    optimize: bool = True  # False with --no-optimize
    prefetch: PrefetchList | None = None  # prioritize these paths/globs instead of running the workload
    record_out: Path | None = None
    reuse: bool = False
    oci: bool = False
    # How every converted layer is written; the prioritized files are filled in per layer.
    layer: BuildOptions = field(default_factory=BuildOptions)

    @property
    def runs_workload(self) -> bool:
        return self.optimize and self.prefetch is None
