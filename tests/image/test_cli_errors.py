"""Image errors as the user sees them: `ctr-remote image optimize` exits non-zero with one line
naming the problem (registry, repository, helper), never a traceback or a secret."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ctr_remote.image import open_store
from tests.helpers.oci import build_image, push
from tests.helpers.registry import PASSWORD, USER, RegistryServer, basic_auths, write_docker_config


def _optimize(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctr_remote", "image", "optimize", "--no-optimize", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip


def _assert_one_line_error(p: subprocess.CompletedProcess[str], *must: str) -> None:
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctr-remote: "), p.stderr
    for m in must:
        assert m in lines[0], lines[0]
    assert PASSWORD not in p.stderr + p.stdout and "Traceback" not in p.stderr


@pytest.fixture
def private(registry_factory, workdir: Path) -> RegistryServer:
    reg: RegistryServer = registry_factory("htpasswd")
    with open_store(reg.reference("private/app:v1"), reg.options()) as s:
        push(s, build_image([{"a": b"a"}]), workdir / "build")
    return reg


def test_wrong_password_missing_credentials_and_failing_helper(
    private: RegistryServer, workdir: Path
) -> None:
    src, dst = private.ref("private/app:v1"), f"local://{workdir}/out"
    wrong = write_docker_config(workdir / "wrong", basic_auths(private.host, USER, "not-" + PASSWORD))
    _assert_one_line_error(
        _optimize({"DOCKER_CONFIG": str(wrong)}, "--plain-http", src, dst), private.host, "private/app"
    )
    none = write_docker_config(workdir / "none", {})
    _assert_one_line_error(
        _optimize({"DOCKER_CONFIG": str(none)}, "--plain-http", src, dst),
        "authentication required",
        private.host,
    )
    bindir = workdir / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-flaky"
    helper.write_text("#!/bin/sh\necho 'cannot reach the vault' >&2\nexit 2\n")
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    cfg = write_docker_config(workdir / "helper", {"credHelpers": {private.host: "flaky"}})
    env = {"DOCKER_CONFIG": str(cfg), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    _assert_one_line_error(
        _optimize(env, "--plain-http", src, dst), "docker-credential-flaky", "cannot reach the vault"
    )
    assert not (workdir / "out").exists()


def test_http_reference_needs_plain_http(registry: RegistryServer, workdir: Path) -> None:
    p = _optimize({}, registry.ref("app:v1"), f"local://{workdir}/out")
    _assert_one_line_error(p, "--plain-http", registry.host)
