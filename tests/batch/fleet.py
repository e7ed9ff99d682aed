"""A fleet of images for batch tests: each on two shared base layers plus one of its own, published
to a real registry, and the batch file that converts them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ctr_remote.image import open_store
from tests.helpers.images import LayerBuilder
from tests.helpers.registry import RegistryServer
from tests.helpers.sample import publish, runnable_image

SHARED = 2  # base layers every image has


def base_layers() -> list[LayerBuilder]:
    os_ = LayerBuilder().file("etc/os-release", b"ID=fleet\n")
    os_.file("usr/lib/libbig.so", bytes(range(256)) * 2048)
    runtime = LayerBuilder().file("usr/lib/runtime/core.py", b"print('core')\n" * 2000)
    return [os_, runtime]


def publish_fleet(registry: RegistryServer, workdir: Path, count: int) -> list[str]:
    """`count` images app0..app{count-1}:src; their plain-HTTP references."""
    refs = []
    for i in range(count):
        app = LayerBuilder().file(f"app/app{i}.sh", f"#!/bin/sh\necho app {i}\n".encode(), mode=0o755)
        with open_store(registry.reference(f"app{i}:src"), registry.options()) as store:
            publish(store, runnable_image([*base_layers(), app]), workdir / f"push{i}")
        refs.append(registry.ref(f"app{i}:src"))
    return refs


def batch_file(path: Path, sources: list[str], tag: str) -> Path:
    """Half the jobs `convert --estargz`, half `optimize --no-optimize`: the same layer options, so
    the same converted base layers."""
    jobs: list[dict[str, Any]] = []
    for i, src in enumerate(sources):
        job = {"name": f"app{i}", "source": src, "target": src.replace(":src", f":{tag}")}
        if i % 2:
            jobs.append({"optimize": {**job, "no_optimize": True}})
        else:
            jobs.append({"convert": {**job, "estargz": True}})
    path.write_text(yaml.safe_dump({"defaults": {"plain_http": True, "oci": True}, "jobs": jobs}))
    return path
