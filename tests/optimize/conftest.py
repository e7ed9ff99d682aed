"""End-to-end fixtures: the real CLI in a subprocess, a private TMPDIR that must be empty after each
run, and the registry fixtures of the image tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.fixtures import registry, registry_factory, workdir

__all__ = ["registry", "registry_factory", "workdir"]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list[dict[str, object]]:
        """The JSON log lines on stderr (`--log-format json`), which must be all of stderr."""
        return [json.loads(line) for line in self.stderr.splitlines()]

    @property
    def error(self) -> str:
        """The one error message of a failed `--log-format json` run."""
        errors = [str(e["event"]) for e in self.events if e["level"] == "error"]
        assert len(errors) == 1, self.stderr
        return errors[0]

    @property
    def digest(self) -> str:
        lines = [line for line in self.stdout.splitlines() if line.startswith("sha256:")]
        assert lines, f"no digest printed; stdout={self.stdout!r} stderr={self.stderr!r}"
        return lines[-1]


class Cli:
    """Runs `ctr-remote` as a user would, with TMPDIR pointed at a directory that must stay clean."""

    def __init__(self, tmpdir: Path, docker_config: Path) -> None:
        self.tmpdir = tmpdir
        self.env = {**os.environ, "TMPDIR": str(tmpdir), "DOCKER_CONFIG": str(docker_config)}

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> Run:
        p = subprocess.run(
            [sys.executable, "-m", "ctr_remote", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        run = Run(p.returncode, p.stdout, p.stderr)
        if check:
            assert p.returncode == 0, f"ctr-remote {' '.join(args)} failed: {p.stderr}"
        assert not list(self.tmpdir.iterdir()), f"temp files left behind: {list(self.tmpdir.iterdir())}"
        mounts = [m for m in Path("/proc/mounts").read_text().splitlines() if str(self.tmpdir) in m]
        assert not mounts, f"mounts left behind: {mounts}"
        return run

    def optimize(self, *args: str, check: bool = True) -> Run:
        return self(
            "--log-format", "json", "image", "optimize", "--plain-http", "--period", "20", *args, check=check
        )


@pytest.fixture
def cli(workdir: Path) -> Iterator[Cli]:
    tmp = workdir / "tmpdir"
    tmp.mkdir()
    (workdir / "docker-config").mkdir()
    yield Cli(tmp, workdir / "docker-config")
