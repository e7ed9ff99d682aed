"""A real runc container joins the CNI namespace (OCI `linux.namespaces` path) and reaches the test host."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path

from ctr_remote.profile.cni import cni_network
from tests.cni.conftest import HELLO, CniPlayground


def _busybox_bundle(bundle: Path, args: list[str], netns: Path) -> None:
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        (rootfs / d).mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    spec["root"] = {"path": "rootfs", "readonly": True}
    spec["linux"]["namespaces"] = [
        {"type": "network", "path": str(netns)} if ns["type"] == "network" else ns
        for ns in spec["linux"]["namespaces"]
    ]
    assert {"type": "network", "path": str(netns)} in spec["linux"]["namespaces"]
    (bundle / "config.json").write_text(json.dumps(spec))


def test_runc_container_in_the_cni_namespace_fetches_from_the_test_host(playground: CniPlayground) -> None:
    pg = playground
    pg.write_bridge_conf()
    state = pg.tmp / "runc-state"
    container = f"ctrt-{secrets.token_hex(4)}"
    with cni_network(pg.config(), container, netns_dir=pg.netns_dir) as att:
        (ip,) = att.ips
        script = f"/bin/busybox ip -o -4 addr show eth0; /bin/busybox wget -q -O - {pg.url}"
        _busybox_bundle(pg.tmp / "bundle", ["/bin/busybox", "sh", "-c", script], att.netns_path)
        try:
            p = subprocess.run(
                ["runc", "--root", str(state), "run", "--bundle", str(pg.tmp / "bundle"), container],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        finally:
            subprocess.run(
                ["runc", "--root", str(state), "delete", "--force", container], capture_output=True
            )
        assert p.returncode == 0, p.stderr
        addr_line, *page = p.stdout.splitlines(keepends=True)
        assert f" {ip.address} " in addr_line  # the container sees the address CNI gave the namespace
        assert "".join(page) == HELLO
    pg.assert_clean()
