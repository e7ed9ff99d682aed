"""A full disk, where we pull to ($TMPDIR) and where we write a `local://` target: one line naming the
file and the cause, exit 1, nothing left in $TMPDIR. The full disk is a real small filesystem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctr_remote.image import open_store, parse_reference
from tests.helpers.images import LayerBuilder
from tests.helpers.sample import app_layers, publish, runnable_image


@pytest.fixture
def source(workdir: Path) -> str:
    """An image with a 6 MB layer that does not compress."""
    layers = [*app_layers(), LayerBuilder().file("big.bin", os.urandom(6_000_000))]
    with open_store(parse_reference(f"local://{workdir / 'src'}")) as store:
        publish(store, runnable_image(layers), workdir / "push")
    return f"local://{workdir / 'src'}"


@pytest.fixture
def small_disk(workdir: Path) -> Iterator[Path]:
    path = workdir / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def optimize(tmpdir: Path, source: str, target: str) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "ctr_remote", "--log-format", "json", "image", "optimize", "--no-optimize",
         source, target],
        env={**os.environ, "TMPDIR": str(tmpdir)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    last = json.loads(done.stderr.splitlines()[-1])  # every line is JSON
    return done.returncode, last


def test_tmpdir_full_while_pulling(workdir: Path, source: str, small_disk: Path) -> None:
    code, last = optimize(small_disk, source, f"local://{workdir / 'dst'}")
    assert code == 1 and last["level"] == "error"
    assert (
        last["event"].startswith(f"cannot write {small_disk}/") and "No space left on device" in last["event"]
    )
    assert list(small_disk.iterdir()) == []


def test_local_target_on_a_full_disk(workdir: Path, source: str, small_disk: Path) -> None:
    tmp = workdir / "tmp"
    tmp.mkdir()
    code, last = optimize(tmp, source, f"local://{small_disk / 'dst'}")
    assert code == 1 and last["level"] == "error"
    assert last["event"].startswith(f"cannot write {small_disk}/dst/") and "No space left" in last["event"]
    assert list(tmp.iterdir()) == []
