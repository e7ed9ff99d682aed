"""End to end: `profile()` with `NetworkMode.CNI` runs a real runc container on the recording FUSE layers
in a CNI namespace; it fetches from the test host, and its file accesses are still recorded."""

from __future__ import annotations

from pathlib import Path

from ctr_remote.profile import NetworkMode, Workload, profile
from ctr_remote.profile.cni import DEFAULT_NETNS_DIR
from tests.cni.conftest import HELLO, CniPlayground
from tests.helpers.images import BUSYBOX_APPLETS, LayerBuilder, image_config


def _netns_pins() -> set[str]:
    return set(p.name for p in DEFAULT_NETNS_DIR.iterdir()) if DEFAULT_NETNS_DIR.exists() else set()


def test_profiled_container_fetches_over_cni_and_is_recorded(
    playground: CniPlayground, tmp_path: Path
) -> None:
    pg = playground
    pg.write_bridge_conf()
    base = LayerBuilder().busybox(applets=(*BUSYBOX_APPLETS, "wget")).write(tmp_path / "base.tar.gz")
    top = (
        LayerBuilder()
        .file("data/before.txt", b"read before the fetch\n")
        .file("data/fetched.txt", b"read only once the fetch worked\n")
        .file("data/never.txt", b"not read\n")
        .write(tmp_path / "top.tar.gz")
    )
    script = (
        "set -e; cat /data/before.txt; "
        f"wget -q -O /tmp/page {pg.url}; grep -qx '{HELLO.strip()}' /tmp/page; "
        "cat /data/fetched.txt"
    )
    work = tmp_path / "work"
    work.mkdir()
    pins_before = _netns_pins()
    result = profile(
        [base, top],
        image_config(cmd=["/bin/sh", "-c", script]),
        Workload(period=60, network=NetworkMode.CNI, cni=pg.config()),
        workdir=work,
    )
    assert result.exit_code == 0  # `set -e`: the fetch and the content check succeeded in the container
    assert result.accessed[1] == ["data/before.txt", "data/fetched.txt"]
    assert "bin/busybox" in result.accessed[0]
    assert _netns_pins() - pins_before == set()
    assert list(work.iterdir()) == []
    pg.assert_clean()
