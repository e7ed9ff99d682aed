"""A workload cannot hurt the host: its processes are bounded by a pids cgroup, and its writes go to the
work directory's disk, not to memory."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctr_remote.profile import Workload, profile
from ctr_remote.profile.rootfs import User
from ctr_remote.profile.spec import build_spec, command_of
from ctr_remote.profile.workload import DEFAULT_PIDS_LIMIT
from tests.helpers.images import image_config
from tests.profile.conftest import SENTINEL, assert_no_leftovers

FORKS = 400
LIMIT = 64


def test_a_fork_bomb_stops_at_the_pids_limit(run, capfd) -> None:
    # FORKS sleepers from a subshell (the shell gives up at the first fork that fails), then counted
    # from inside the container's pid namespace without forking. The test's own limit is far below
    # the host's, so the host's pid table is never at stake; without a limit all FORKS + 1 would run.
    script = (
        f"(i=0; while [ $i -lt {FORKS} ]; do sleep {SENTINEL} & i=$((i+1)); done) 2>/dev/null; "
        "set -- /proc/[0-9]*; echo COUNT $#"
    )
    result = run(script, pids_limit=LIMIT)
    assert result.exit_code == 0
    counts = [line.split()[1] for line in capfd.readouterr().out.splitlines() if line.startswith("COUNT")]
    assert counts and 0 < int(counts[0]) <= LIMIT, counts


@pytest.mark.unit
def test_the_default_spec_has_the_documented_pids_limit() -> None:
    workload = Workload()
    command = command_of(image_config(cmd=["/bin/true"]), workload)
    spec = build_spec(
        command, User(0, 0, ()), workload, rootfs=Path("/r"), hosts=Path("/h"), resolv_conf=Path("/c"),
        hostname="h",
    )  # fmt: skip
    assert spec["linux"]["resources"]["pids"] == {"limit": DEFAULT_PIDS_LIMIT}
    unlimited = build_spec(
        command, User(0, 0, ()), Workload(pids_limit=None), rootfs=Path("/r"), hosts=Path("/h"),
        resolv_conf=Path("/c"), hostname="h",
    )  # fmt: skip
    assert "pids" not in unlimited["linux"]["resources"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB filesystem as the work directory's disk (a tmpfs of that size: a small real disk)."""
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
        assert list(path.iterdir()) == [], "the work directory was left behind"
    finally:
        subprocess.run(["umount", str(path)], check=True)
    assert_no_leftovers(tmp_path, path)


def test_the_workloads_writes_go_to_the_work_directorys_disk(
    small_disk: Path, busybox_layer: Path, capfd
) -> None:
    # 16 MiB into the rootfs: more than the work directory's disk holds. Had the upper dir been on a
    # tmpfs sized from the host's memory, the write would succeed.
    script = "dd if=/dev/zero of=/big bs=1M count=16 2>/dev/null && echo WROTE || echo FULL"
    config = image_config(cmd=["/bin/sh", "-c", script])
    result = profile([busybox_layer], config, Workload(period=30), workdir=small_disk)
    assert result.exit_code == 0
    assert "FULL" in capfd.readouterr().out
