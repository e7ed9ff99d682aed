"""What a profiling run produced, and its upstream `--record-out` form."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ProfileResult:
    """The files the workload accessed, per layer.

    `accessed[i]` belongs to `layers[i]` of the `profile()` call (bottom layer first) and lists
    layer-relative paths in first-access order, without duplicates, spelled as in the layer tar
    (normalised: no leading "./" or "/"). A path is attributed to the topmost layer that provides it.
    `exit_code` is the workload's exit status, or None when it was still running at the end of the
    period (or stopped by --wait-on-signal / --wait-on-line) and had to be killed.
    """

    accessed: list[list[str]]
    exit_code: int | None
