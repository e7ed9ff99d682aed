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
from ctr_remote.image.errors import ImageError
from ctr_remote.image.files import atomic_file
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
def small_disk(workdir: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    path = workdir / "small"
    path.mkdir()
    size = getattr(request, "param", "4m")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def optimize(
    tmpdir: Path, source: str, target: str, command: tuple[str, ...] = ("optimize", "--no-optimize")
) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "ctr_remote", "--log-format", "json", "image", *command, source, target],
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


@pytest.mark.parametrize("small_disk", ["10m"], indirect=True)  # room for the pull, not the tar
def test_tmpdir_full_while_uncompressing(workdir: Path, source: str, small_disk: Path) -> None:
    code, last = optimize(small_disk, source, f"local://{workdir / 'dst'}", ("convert", "--uncompress"))
    assert code == 1 and last["level"] == "error"
    assert (
        last["event"].startswith(f"cannot write {small_disk}/ctr-remote-") and "/out/layer-" in last["event"]
    )
    assert last["event"].endswith(": No space left on device")
    assert list(small_disk.iterdir()) == []


def test_a_short_write_that_fills_the_disk_is_reported_once(small_disk: Path) -> None:
    """The disk fills 4 KiB before the end of a 1 MiB write: the kernel takes the rest but that tail,
    which the buffered writer keeps and flushes again on close. That second failure must neither hide
    the error naming the file nor leave the temp file (CI once saw a traceback from it)."""
    (small_disk / "pad").write_bytes(b"p" * (3 * (1 << 20) + 4096))  # 1 MiB - 4 KiB free on 4 MiB
    dest = small_disk / "blob"
    no_space = f"^cannot write {dest}: No space left on device$"
    with pytest.raises(ImageError, match=no_space), atomic_file(dest) as f:
        for _ in range(3):
            f.write(os.urandom(1 << 20))
    assert sorted(p.name for p in small_disk.iterdir()) == ["pad"]
