"""Removing what a run created on the host: its container, its network namespace, every mount below
its temp dirs and the dirs themselves. Used by the run's own cleanup (`remove_tree`) and, through a
run record, by the janitor, the next run and `ctr-remote cleanup` after a run that died."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import structlog

from ctr_remote.profile import mounts
from ctr_remote.runstate import RecordedContainer, RecordedNetwork, RunState

log = structlog.get_logger()


def remove_leftovers(state: RunState) -> list[str]:
    """Remove what `state` lists, in the order that lets each part go (the container holds the rootfs
    and the netns, the mounts hold the dirs); returns one line per thing that was there and removed."""
    removed: list[str] = []
    for container in state.containers:
        if _remove_container(container):
            removed.append(f"container {container.container_id}")
    for network in state.networks:
        if _remove_network(network):
            removed.append(f"network namespace {network.netns}")
    for name in state.temp_files:
        with contextlib.suppress(FileNotFoundError):  # renamed into place: the run got that far
            Path(name).unlink()
            removed.append(f"file {name}")
    for temp in state.temp_dirs:
        path = Path(temp)
        for point in mounts.mountpoints_under(path):
            removed.append(f"mount {point}")
        if path.exists():
            remove_tree(path)
            removed.append(f"directory {path}")
    return removed


def _remove_container(container: RecordedContainer) -> bool:
    from ctr_remote.profile.runtime import Container

    if not (Path(container.state_root) / container.container_id).exists():
        return False  # never created, or already deleted with its state
    # `delete --force` kills every process of the container (it is alone in its pid namespace).
    Container(container.runtime, Path(container.state_root), container.container_id, Path("/")).delete()
    return True


def _remove_network(network: RecordedNetwork) -> bool:
    from ctr_remote.profile.cni import CniError, RuntimeConf, check_config, del_network
    from ctr_remote.profile.netns import NetnsError, is_netns_mounted, remove_netns
    from ctr_remote.profile.workload import CniConfig

    pin = Path(network.netns)
    if not pin.exists():
        return False
    # DEL first, as the run would have: plugins release addresses and host-side interfaces.
    with contextlib.suppress(CniError):
        config = CniConfig(conf_dir=Path(network.conf_dir), plugin_dir=Path(network.plugin_dir))
        rt = RuntimeConf(network.container_id, pin, network.ifname)
        del_network(config.plugin_dir, check_config(config), rt, None)
    try:
        remove_netns(pin)
    except NetnsError as e:
        log.warning("could not remove a network namespace", path=str(pin), error=str(e))
    return not is_netns_mounted(pin)


def remove_tree(work: Path) -> None:
    """Nothing mounted below `work` survives, then `work` goes.

    `rm -rf --one-file-system`, not shutil.rmtree: the workload may have built a tree in the upper
    dir deeper than rmtree's recursion allows, and a mount that would not go is not descended into.
    """
    for point in mounts.mountpoints_under(work):
        with contextlib.suppress(OSError):
            mounts.umount(point, lazy=True)
    try:
        done = subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", str(work)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        error = done.stderr.strip()[-300:] if done.returncode else ""
    except OSError as e:  # no `rm` on PATH
        error = e.strerror or str(e)
    if error:
        log.warning("could not remove the work directory", path=str(work), error=error)
