"""pytest fixtures over the registry helpers; a test area imports the ones it uses in its conftest:

from tests.helpers.fixtures import registry, registry_factory, workdir  # noqa: F401
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faultproxy import FaultProxy
from tests.helpers.registry import RegistryServer, start_registry


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A temp dir removed after the test (pass or fail)."""
    with tempfile.TemporaryDirectory(prefix="ctr-remote-test-") as d:
        yield Path(d)


@pytest.fixture
def registry_factory(workdir: Path) -> Iterator[Callable[..., RegistryServer]]:
    """`registry_factory(mode)` starts a registry (plain/htpasswd/tls/token); all stopped after the test."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(mode: str = "plain", **kw: Any) -> RegistryServer:
            nonlocal count
            count += 1
            return stack.enter_context(start_registry(workdir / f"registry-{count}-{mode}", mode, **kw))

        yield start


@pytest.fixture
def registry(registry_factory: Callable[..., RegistryServer]) -> RegistryServer:
    """A plain-HTTP registry with no auth."""
    return registry_factory("plain")


@pytest.fixture
def fault_proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the `registry` fixture."""
    with FaultProxy(registry.host) as proxy:
        yield proxy
