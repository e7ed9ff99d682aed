"""`local://` outputs follow the umask, and a file rewritten in place (index.json) keeps its mode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
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


def optimize(source: str, target: Path, umask: int) -> None:
    subprocess.run(
        [sys.executable, "-m", "ctr_remote", "image", "optimize", "--no-optimize", source, f"local://{target}"],
        preexec_fn=lambda: os.umask(umask), capture_output=True, check=True, timeout=120,
    )  # fmt: skip


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_outputs_follow_the_umask(workdir: Path, source: str, oracle: Oracle) -> None:
    target = workdir / "dst"
    optimize(source, target, 0o027)
    oracle.check_image(target)
    found = modes(target)
    assert found.pop(".") == 0o750
    assert found and all(m == (0o750 if (target / p).is_dir() else 0o640) for p, m in found.items()), found


def test_a_rewritten_index_keeps_its_mode(workdir: Path, source: str, oracle: Oracle) -> None:
    target = workdir / "dst"
    optimize(source, target, 0o022)
    (target / "index.json").chmod(0o644)
    (target / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')  # rewritten below
    optimize(source, target, 0o077)
    assert stat.S_IMODE((target / "index.json").stat().st_mode) == 0o644
    oracle.check_image(target)
