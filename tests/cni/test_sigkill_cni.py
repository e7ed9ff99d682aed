"""SIGKILL of a run with --cni: its janitor runs the plugins' DEL (the address goes back to IPAM, the
veth leaves the bridge) and removes the netns pin under /run/ctr-remote/netns."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ctr_remote.profile.cni import DEFAULT_NETNS_DIR
from tests.cni.conftest import PLUGIN_DIR, CniPlayground
from tests.helpers.images import LayerBuilder, image_config
from tests.helpers.processes import children, janitors_of, still_running, wait_gone
from tests.profile.conftest import DRIVER_ENV, SENTINEL, start_driver, wait_for_line


def test_sigkill_with_cni_leaves_no_netns_pin_nor_address(playground: CniPlayground, tmp_path: Path) -> None:
    pg = playground
    pg.write_bridge_conf()
    base = LayerBuilder().busybox().write(tmp_path / "base.tar.gz")
    work = tmp_path / "work"
    work.mkdir()
    cni = {"conf_dir": str(pg.conf_dir), "plugin_dir": str(PLUGIN_DIR)}
    proc, _ = start_driver(
        tmp_path, work, [base], image_config(cmd=["/bin/sh", "-c", f"echo READY; sleep {SENTINEL}"]),
        {"period": 600, "network": "cni", "cni": cni},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**DRIVER_ENV, "CTR_REMOTE_RUNS_DIR": str(tmp_path / "runs")},
    )  # fmt: skip
    try:
        wait_for_line(proc, "READY")
        pins = list(DEFAULT_NETNS_DIR.glob(f"ctr-remote-profile-{proc.pid}-*"))
        assert len(pins) == 1 and pg.allocations(), (pins, pg.allocations())
        helpers = children(proc.pid)
        janitors = janitors_of(helpers)
        assert len(janitors) == 1, helpers
    finally:
        proc.kill()
        proc.communicate()
    wait_gone(janitors[0])
    assert not pins[0].exists()
    assert not still_running(helpers)
    assert list(work.iterdir()) == []
    pg.assert_clean()  # no allocation left, no veth of ours on the bridge
