"""stdout or stderr closed, or stdout a pipe whose reader is gone: the run does its work, never a
traceback, and the digest of what was written is said on stderr when stdout cannot take it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ctr_remote.image import open_store, parse_reference
from tests.conftest import Oracle
from tests.helpers.sample import app_layers, publish, runnable_image


@pytest.fixture
def source(workdir: Path) -> str:
    with open_store(parse_reference(f"local://{workdir / 'src'}")) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    return f"local://{workdir / 'src'}"


def optimize(workdir: Path, source: str, *flags: str, **popen: object) -> subprocess.CompletedProcess[bytes]:
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "ctr_remote", "--log-format", "json", "image", "optimize", *flags,
         source, f"local://{workdir / 'dst'}"],
        env={**os.environ, "TMPDIR": str(tmp)}, stdin=subprocess.DEVNULL, timeout=300, **popen,
    )  # fmt: skip
    assert list(tmp.iterdir()) == []
    return done


def written(workdir: Path, oracle: Oracle) -> str:
    """The digest of the image the run wrote, which the oracle checks."""
    index = json.loads((workdir / "dst" / "index.json").read_text())
    digest = str(index["manifests"][0]["digest"])
    assert oracle.check_image(workdir / "dst")["manifests"][0]["digest"] == digest
    return digest


def closing(fd: int) -> Callable[[], None]:
    return lambda: os.close(fd)


def test_stdout_closed(workdir: Path, source: str, oracle: Oracle) -> None:
    done = optimize(workdir, source, "--no-optimize", stderr=subprocess.PIPE, preexec_fn=closing(1))
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.decode().splitlines()]
    said = [e for e in events if e["event"].startswith("the image was written")]
    assert said and said[0]["digest"] == written(workdir, oracle)


def test_stderr_closed(workdir: Path, source: str, oracle: Oracle) -> None:
    done = optimize(workdir, source, "--no-optimize", stdout=subprocess.PIPE, preexec_fn=closing(2))
    assert done.returncode == 0
    assert done.stdout.decode().splitlines()[-1] == written(workdir, oracle)


def test_stdout_a_pipe_whose_reader_is_gone(workdir: Path, source: str, oracle: Oracle) -> None:
    # The reader is gone before anything is written (`| head -1` at its earliest): the workload's
    # output and the digest both meet EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = optimize(workdir, source, "--period", "30", stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    events = [json.loads(line) for line in stderr.splitlines()]
    said = [e for e in events if e["event"].startswith("the image was written")]
    assert said and said[0]["digest"] == written(workdir, oracle)
