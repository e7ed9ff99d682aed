"""A private CNI playground per test: a bridge, a subnet, a conf dir, and a test host serving HTTP.

Everything lives on a bridge the test creates (`ctrt-<hex>`) with a random 10.x.y.0/24 that no host
route covers, so no packet leaves the machine. The "test host" is a network namespace of the test's own,
made with iproute2 (independently of the code under test), attached to the bridge by a veth pair and
running `python -m http.server`. Teardown deletes namespace, bridge and server, and puts back the
forwarding sysctls that the bridge plugin flips on with `isGateway`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ctr_remote.profile.workload import CniConfig

PLUGIN_DIR = Path("/usr/lib/cni")
HTTP_PORT = 8080
HELLO = "hello from the CNI test host\n"
FORWARDING_SYSCTLS = (
    Path("/proc/sys/net/ipv4/ip_forward"),
    Path("/proc/sys/net/ipv6/conf/all/forwarding"),
)


def run(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def in_netns(netns: Path, *cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("nsenter", f"--net={netns}", *cmd, check=check)


def links(*selector: str) -> list[dict[str, Any]]:
    return json.loads(run("ip", "-j", "link", "show", *selector).stdout or "[]")


def _free_subnet() -> ipaddress.IPv4Network:
    routes = json.loads(run("ip", "-j", "-4", "route", "show", "table", "all").stdout or "[]")
    taken = [
        ipaddress.ip_network(r["dst"], strict=False)
        for r in routes
        if r.get("dst") not in (None, "default") and ":" not in r["dst"]
    ]
    rng = random.Random(secrets.randbits(64))
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{rng.randrange(200, 255)}.{rng.randrange(256)}.0/24")
        if not any(net.overlaps(t) for t in taken if t.prefixlen > 0):
            return net
    raise AssertionError("no free 10.x.y.0/24 subnet for the test bridge")


@pytest.fixture(autouse=True)
def _forwarding_restored() -> Iterator[None]:
    """The bridge plugin sets ip_forward=1 with isGateway; the host must be left as found."""
    saved = {p: p.read_text() for p in FORWARDING_SYSCTLS if p.exists()}
    yield
    for p, value in saved.items():
        if p.read_text() != value:
            p.write_text(value)


@dataclass
class CniPlayground:
    """One test's network: conf dir, IPAM data dir, netns dir, bridge, subnet and test host."""

    tmp: Path
    tag: str
    bridge: str
    subnet: ipaddress.IPv4Network
    host_netns: str
    host_ip: ipaddress.IPv4Address
    host_veth: str

    @property
    def conf_dir(self) -> Path:
        return self.tmp / "net.d"

    @property
    def ipam_dir(self) -> Path:
        return self.tmp / "ipam"

    @property
    def netns_dir(self) -> Path:
        return self.tmp / "netns"

    @property
    def url(self) -> str:
        return f"http://{self.host_ip}:{HTTP_PORT}/hello.txt"

    def config(self, plugin_dir: Path = PLUGIN_DIR) -> CniConfig:
        return CniConfig(conf_dir=self.conf_dir, plugin_dir=plugin_dir)

    def bridge_plugin(self, **extra: Any) -> dict[str, Any]:
        return {
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                # The test host sits above the pool's end.
                "ranges": [
                    [
                        {
                            "subnet": str(self.subnet),
                            "gateway": str(self.subnet[1]),
                            "rangeEnd": str(self.subnet[199]),
                        }
                    ]
                ],
                "dataDir": str(self.ipam_dir),
            },
            **extra,
        }

    def write_conf(self, filename: str, doc: dict[str, Any] | str) -> Path:
        self.conf_dir.mkdir(exist_ok=True)
        path = self.conf_dir / filename
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return path

    def write_bridge_conf(self, version: str = "1.0.0", filename: str = "10-test.conf") -> Path:
        return self.write_conf(filename, {"cniVersion": version, "name": self.tag, **self.bridge_plugin()})

    def write_chain(self, *more_plugins: dict[str, Any], version: str = "1.0.0") -> Path:
        doc = {"cniVersion": version, "name": self.tag, "plugins": [self.bridge_plugin(), *more_plugins]}
        return self.write_conf("10-test.conflist", doc)

    def allocations(self) -> list[str]:
        """IPs host-local has handed out (it keeps `lock` and `last_reserved_ip.*` files besides)."""
        if not self.ipam_dir.exists():
            return []
        return sorted(
            p.name
            for p in self.ipam_dir.rglob("*")
            if p.is_file() and p.name != "lock" and not p.name.startswith("last_reserved_ip")
        )

    def fetch(self, netns: Path) -> str:
        """GET the test host's page from inside `netns` (busybox wget, as a container would)."""
        # No `-T`: Debian's busybox-static 1.35 wget segfaults with it; run() has a timeout instead.
        return in_netns(netns, "busybox", "wget", "-q", "-O", "-", self.url).stdout

    def bridge_ports(self) -> list[str]:
        return sorted(link["ifname"] for link in links("master", self.bridge))

    def assert_clean(self) -> None:
        """No namespace, mount, IP allocation or veth of ours is left."""
        leftover = sorted(p.name for p in self.netns_dir.iterdir()) if self.netns_dir.exists() else []
        assert leftover == [], f"network namespaces left behind: {leftover}"
        mountinfo = Path("/proc/self/mountinfo").read_text()
        assert str(self.netns_dir) not in mountinfo
        assert self.allocations() == []
        assert self.bridge_ports() == [self.host_veth]


@pytest.fixture
def playground(tmp_path: Path) -> Iterator[CniPlayground]:
    if os.geteuid() != 0:
        pytest.fail("CNI tests need root (network namespaces, bridges)")
    tag = f"ctrt-{secrets.token_hex(3)}"
    subnet = _free_subnet()
    pg = CniPlayground(
        tmp=tmp_path,
        tag=tag,
        bridge=tag,
        subnet=subnet,
        host_netns=f"{tag}-host",
        host_ip=subnet[250],
        host_veth=f"{tag}h",
    )
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_text(HELLO)
    server: subprocess.Popen[str] | None = None
    try:
        run("ip", "link", "add", pg.bridge, "type", "bridge")
        run("ip", "link", "set", pg.bridge, "up")
        run("ip", "netns", "add", pg.host_netns)
        run("ip", "link", "add", pg.host_veth, "type", "veth", "peer", "name", f"{tag}p")
        run("ip", "link", "set", f"{tag}p", "netns", pg.host_netns, "name", "eth0")
        run("ip", "link", "set", pg.host_veth, "master", pg.bridge, "up")
        ns = ("ip", "-n", pg.host_netns)
        run(*ns, "addr", "add", f"{pg.host_ip}/{subnet.prefixlen}", "dev", "eth0")
        run(*ns, "link", "set", "eth0", "up")
        run(*ns, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", pg.host_netns, sys.executable, "-u", "-m", "http.server",
             "--bind", str(pg.host_ip), "--directory", str(www), str(HTTP_PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert server.stdout is not None
        # http.server prints its banner once the socket is bound: that line is the readiness signal.
        banner = server.stdout.readline()
        assert banner.startswith("Serving HTTP"), f"test HTTP server did not start: {banner!r}"
        yield pg
    finally:
        if server is not None:
            server.kill()
            server.wait()
        # Delete the veth pair explicitly: a namespace's own devices vanish asynchronously after `netns del`.
        run("ip", "link", "del", pg.host_veth, check=False)
        run("ip", "netns", "del", pg.host_netns, check=False)
        run("ip", "link", "del", pg.bridge, check=False)
        assert links_named(tag) == [], "test links left behind"


def links_named(prefix: str) -> list[str]:
    return [link["ifname"] for link in links() if link["ifname"].startswith(prefix)]
