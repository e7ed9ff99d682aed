"""Fixtures of the lazy pull test: the real stargz stack in a temp dir, the registry-side helpers."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fixtures import workdir
from tests.lazypull.stack import StargzStack, start_stack

__all__ = ["stack", "workdir"]


@pytest.fixture
def stack() -> Iterator[StargzStack]:
    """docker-registry + containerd + stargz snapshotter, stopped and purged after the test.

    Its own short directory under /tmp: containerd's socket paths must stay under the unix limit.
    """
    with tempfile.TemporaryDirectory(prefix="ctr-remote-lazy-") as d, start_stack(Path(d)) as s:
        yield s
