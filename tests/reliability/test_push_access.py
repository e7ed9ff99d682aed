"""Push access to the target is checked before the expensive part: an unwritable target fails with one
line before a single layer of the source is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ctr_remote.image import open_store
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.registry import RegistryServer, write_docker_config
from tests.helpers.sample import app_layers, publish, runnable_image


@pytest.fixture
def source(registry: RegistryServer, workdir: Path) -> Iterator[tuple[str, FaultProxy]]:
    """The source image behind a proxy that counts the requests for its blobs."""
    with open_store(registry.reference("app:src"), registry.options()) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    with FaultProxy(registry.host) as proxy:
        yield f"http://{proxy.host}/app:src", proxy


def optimize(workdir: Path, source: str, target: str) -> tuple[int, list[dict]]:
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    config = write_docker_config(workdir / "docker-config", {"auths": {}})
    done = subprocess.run(
        [sys.executable, "-m", "ctr_remote", "--log-format", "json", "image", "optimize", "--plain-http",
         "--period", "5", source, target],
        env={**os.environ, "TMPDIR": str(tmp), "DOCKER_CONFIG": str(config.parent)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "Traceback" not in done.stderr
    assert list(tmp.iterdir()) == []
    return done.returncode, [json.loads(line) for line in done.stderr.splitlines()]


def blob_requests(proxy: FaultProxy) -> list[str]:
    return [h.path for h in proxy.hits if "/blobs/" in h.path]


def test_a_registry_target_without_push_rights(
    registry_factory: Callable[..., RegistryServer], workdir: Path, source: tuple[str, FaultProxy]
) -> None:
    src, proxy = source
    private = registry_factory("htpasswd")  # and no credentials for it
    code, events = optimize(workdir, src, f"http://{private.host}/app:out")
    assert code == 1
    errors = [e for e in events if e["level"] == "error"]
    assert len(errors) == 1 and private.host in errors[0]["event"], events
    assert blob_requests(proxy) == []


def test_a_local_target_on_a_read_only_filesystem(workdir: Path, source: tuple[str, FaultProxy]) -> None:
    src, proxy = source
    readonly = workdir / "ro"
    readonly.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)], check=True)
    try:
        code, events = optimize(workdir, src, f"local://{readonly}/layout")
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
    assert code == 1
    assert (
        events[-1]["event"] == f"local://{readonly}/layout: cannot write in {readonly}: Read-only file system"
    )
    assert blob_requests(proxy) == []


def test_a_writable_target_is_left_as_it_was_by_the_check(
    registry: RegistryServer, workdir: Path, source: tuple[str, FaultProxy]
) -> None:
    # A source that cannot be resolved stops the run after the check: the target holds nothing new.
    src, _ = source
    code, _ = optimize(workdir, src.replace("app:src", "app:missing"), f"http://{registry.host}/out:v1")
    assert code == 1
    catalog = json.loads(
        subprocess.run(["curl", "-sf", registry.url("/v2/_catalog")], capture_output=True, check=True).stdout
    )
    assert "out" not in catalog["repositories"]
