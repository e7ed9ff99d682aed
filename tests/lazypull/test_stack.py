"""The lazy-pull stack itself, with upstream tools only: a lazily pulled container runs on the
snapshotter's FUSE layers inside the stack's own mount namespace, and stopping the stack while that
container still runs, because the test failed, even after containerd died, leaves nothing behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from ctr_remote.image import RegistryOptions, open_store, parse_reference
from tests.helpers.sample import app_layers, publish, runnable_image
from tests.lazypull.stack import StargzStack, pids_seeing_mounts_below, running, start_stack


class _Failed(Exception):
    pass


@pytest.mark.parametrize("containerd_crashed", [False, True], ids=["failed", "containerd-crashed"])
def test_stack_isolates_and_leaves_nothing_after_a_failure(workdir: Path, containerd_crashed: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="ctr-remote-lazy-") as d:
        base = Path(d)
        with pytest.raises(_Failed), start_stack(base) as stack:
            pids, cgroups = _run_a_lazy_container(stack, workdir)
            if containerd_crashed:  # the shim and the container outlive it
                assert stack.containerd is not None
                stack.containerd.kill()
                stack.containerd.wait()
            raise _Failed  # a test failing while its container runs

        # start_stack's exit already checked this; the test must not depend on that check alone.
        assert not [p for p in pids if running(p)]
        assert not pids_seeing_mounts_below(base)
        assert not [c for c in cgroups if c.exists()]
        assert str(base) not in Path("/proc/self/mountinfo").read_text()
        assert [p.name for p in base.iterdir()] == ["logs"]  # kept for the caller to read


def _run_a_lazy_container(stack: StargzStack, workdir: Path) -> tuple[list[int], list[Path]]:
    """Push the sample image, convert it with upstream `ctr-remote`, rpull it and start a container
    on it that keeps running. Returns the processes and cgroups to be cleaned up."""
    with open_store(
        parse_reference(f"http://{stack.ref('app:src')}", plain_http=True),
        RegistryOptions(docker_config=workdir / "docker-config"),
    ) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    src, esgz = stack.ref("app:src"), stack.ref("app:esgz")
    stack.ctr("image", "pull", "--plain-http", src)
    stack.ctr("image", "convert", "--estargz", "--oci", src, esgz)
    stack.ctr("image", "push", "--plain-http", esgz)
    stack.ctr("image", "rm", "--sync", src, esgz)
    stack.ctr("image", "rpull", "--plain-http", esgz)
    stack.ctr("run", "-d", "--snapshotter=stargz", esgz, "sleeper", "/bin/busybox", "sleep", "600")
    assert "RUNNING" in stack.ctr("task", "ls")

    # The three layers are FUSE mounts and the container's rootfs an overlay on them, all in the
    # stack's mount namespace and none in ours.
    assert stack.containerd is not None and stack.snapshotter is not None
    theirs = Path(f"/proc/{stack.containerd.pid}/mountinfo").read_text()
    assert len(stack.fuse_mounts()) == 3, theirs
    assert " - overlay " in theirs and "/sleeper/rootfs " in theirs, theirs
    assert str(stack.base) not in Path("/proc/self/mountinfo").read_text()
    assert os.readlink(f"/proc/{stack.containerd.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")

    # What the stop must end: the snapshotter, containerd, the shim and the container's process see
    # the stack's mounts (the container in a mount namespace made from the stack's).
    seeing = set(pids_seeing_mounts_below(stack.base))
    assert {stack.snapshotter.pid, stack.containerd.pid} < seeing and len(seeing) >= 4, seeing
    cgroups = stack.cgroups()
    assert cgroups, "runc made no cgroup for the container"
    return [*seeing, stack.registry_server.process.pid], cgroups
