"""Peak memory stays flat as layers grow: the layer is spooled to disk, never held in memory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def _peak_rss_mib(mib: int) -> float:
    p = subprocess.run(
        [sys.executable, "-m", "tests.estargz.rss_probe", str(mib), "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return int(p.stdout.split()[1]) / 1024


def test_peak_rss_does_not_grow_with_the_layer() -> None:
    small, large = _peak_rss_mib(16), _peak_rss_mib(256)
    assert large < 150, f"converting a 256 MiB layer peaked at {large:.0f} MiB RSS"
    assert large - small < 60, f"peak RSS grew from {small:.0f} to {large:.0f} MiB with the layer"
