"""`--cni`: the profiling container joins a network namespace configured by real CNI plugins."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctr_remote.profile import CniConfig, NetworkMode
from ctr_remote.profile.cni import DEFAULT_NETNS_DIR
from tests.profile.conftest import RECORDERS

PLUGIN_DIR = Path("/usr/lib/cni")


@pytest.fixture
def cni_conf(tmp_path: Path) -> Iterator[tuple[CniConfig, str]]:
    """A bridge network of our own (no gateway: no host-wide ip_forward change); the bridge is
    removed afterwards, as the bridge plugin's DEL leaves it."""
    bridge = "crp" + secrets.token_hex(4)
    subnet_octet = secrets.randbelow(200) + 20
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-test.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": f"{bridge}-net",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": bridge,
                        "isGateway": False,
                        "ipMasq": False,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": f"10.231.{subnet_octet}.0/24"}]],
                            "dataDir": str(tmp_path / "ipam"),
                        },
                    }
                ],
            }
        )
    )
    try:
        yield CniConfig(conf_dir=conf_dir, plugin_dir=PLUGIN_DIR), f"10.231.{subnet_octet}."
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


@pytest.mark.parametrize("recorder", RECORDERS)
def test_cni_network_is_joined_and_released(run, capfd, cni_conf: tuple[CniConfig, str]) -> None:
    config, prefix = cni_conf
    result = run("ls /sys/class/net; ip -4 addr show eth0", network=NetworkMode.CNI, cni=config)
    assert result.exit_code == 0
    out = capfd.readouterr().out
    lines = out.splitlines()
    assert "eth0" in lines and "lo" in lines
    assert f"inet {prefix}" in out
    mine = f"ctr-remote-profile-{os.getpid()}-"
    assert not [p for p in DEFAULT_NETNS_DIR.glob(f"{mine}*")], "the CNI network namespace was left behind"
