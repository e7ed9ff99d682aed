"""A host that cannot run the workload says why in one line, before anything is pulled: /dev/fuse that
is not the FUSE device, no `mount` binary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ctr_remote.image import open_store, parse_reference
from tests.helpers.sample import app_layers, publish, runnable_image


@pytest.fixture
def source(workdir: Path) -> str:
    with open_store(parse_reference(f"local://{workdir / 'src'}")) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    return f"local://{workdir / 'src'}"


def optimize_cmd(workdir: Path, source: str) -> list[str]:
    return [sys.executable, "-m", "ctr_remote", "--log-format", "json", "image", "optimize", "--period", "5",
            source, f"local://{workdir / 'dst'}"]  # fmt: skip


def error_of(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert [e["level"] for e in events] == ["info", "error"], events  # the index line, then the error
    return str(events[-1]["event"])


def test_dev_fuse_that_is_not_the_fuse_device(workdir: Path, source: str) -> None:
    # In a mount namespace of its own, a regular file is bind-mounted over /dev/fuse: the host's
    # /dev/fuse is never touched.
    fake = workdir / "not-fuse"
    fake.write_bytes(b"")
    tmp = workdir / "tmp"
    tmp.mkdir()
    script = f'mount --bind "{fake}" /dev/fuse && exec "$@"'
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         *optimize_cmd(workdir, source)],
        env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert error_of(done) == (
        "/dev/fuse is a regular file, not the FUSE device (character device 10:229): "
        "FUSE is required to record file accesses"
    )
    assert list(tmp.iterdir()) == [] and not (workdir / "dst").exists()


def test_no_mount_binary(workdir: Path, source: str) -> None:
    path = workdir / "bin"  # what a run needs from PATH, except `mount`
    path.mkdir()
    for tool in ("runc", "rm", "touch"):
        found = shutil.which(tool)
        assert found
        (path / tool).symlink_to(found)
    tmp = workdir / "tmp"
    tmp.mkdir()
    done = subprocess.run(
        optimize_cmd(workdir, source),
        env={**os.environ, "PATH": str(path), "TMPDIR": str(tmp)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        error_of(done)
        == "no `mount` binary on PATH (util-linux): it mounts the image's layers with overlayfs"
    )
    assert list(tmp.iterdir()) == [] and not (workdir / "dst").exists()
