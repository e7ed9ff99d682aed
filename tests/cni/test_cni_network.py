"""`cni_network` with the real Debian plugins (bridge, host-local, tuning) on a test-owned bridge."""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from pathlib import Path

import pytest

from ctr_remote.profile.cni import CniAttachment, CniError, check_attachment, cni_network
from ctr_remote.profile.netns import is_netns_mounted
from ctr_remote.profile.workload import CniConfig
from tests.cni.conftest import HELLO, PLUGIN_DIR, CniPlayground, in_netns


def _sandbox_ip(pg: CniPlayground, att: CniAttachment) -> ipaddress.IPv4Interface:
    (ip,) = att.ips
    assert ip.interface is not None
    assert att.interfaces[ip.interface].name == "eth0"
    assert att.interfaces[ip.interface].sandbox == str(att.netns_path)
    assert isinstance(ip.address, ipaddress.IPv4Interface)
    assert ip.address.network == pg.subnet
    assert ip.gateway == pg.subnet[1]
    return ip.address


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_namespace_reaches_test_host_and_is_torn_down(playground: CniPlayground, version: str) -> None:
    pg = playground
    pg.write_bridge_conf(version)
    with cni_network(pg.config(), "ctrt-one", netns_dir=pg.netns_dir) as att:
        assert att.netns_path == pg.netns_dir / "ctrt-one"
        assert is_netns_mounted(att.netns_path)
        assert att.result.cni_version == version
        address = _sandbox_ip(pg, att)
        assert pg.allocations() == [str(address.ip)]
        lo = json.loads(in_netns(att.netns_path, "ip", "-j", "link", "show", "lo").stdout)[0]
        assert "UP" in lo["flags"]
        assert pg.fetch(att.netns_path) == HELLO
        check_attachment(pg.config(), att)
    pg.assert_clean()


def test_conflist_chain_passes_prev_result_to_tuning(playground: CniPlayground) -> None:
    pg = playground
    tuning = {"type": "tuning", "mtu": 1280, "sysctl": {"net.ipv4.conf.eth0.arp_filter": "1"}}
    pg.write_chain(tuning, version="0.4.0")
    with cni_network(pg.config(), "ctrt-chain", netns_dir=pg.netns_dir) as att:
        # tuning echoes the bridge's result (it has no IPAM of its own), so the IP came through prevResult.
        _sandbox_ip(pg, att)
        assert in_netns(att.netns_path, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_filter").stdout == "1\n"
        eth0 = json.loads(in_netns(att.netns_path, "ip", "-j", "link", "show", "eth0").stdout)[0]
        assert eth0["mtu"] == 1280
        assert pg.fetch(att.netns_path) == HELLO
        check_attachment(pg.config(), att)
    pg.assert_clean()


def test_check_reports_a_broken_attachment(playground: CniPlayground) -> None:
    pg = playground
    pg.write_bridge_conf()
    with cni_network(pg.config(), "ctrt-check", netns_dir=pg.netns_dir) as att:
        in_netns(att.netns_path, "ip", "addr", "flush", "dev", "eth0")
        with pytest.raises(CniError, match=r'^CNI plugin "bridge" failed CHECK on network "ctrt-\w+": ') as e:
            check_attachment(pg.config(), att)
        assert "\n" not in str(e.value)
    pg.assert_clean()


def test_a_failing_add_releases_the_ip_and_the_namespace(playground: CniPlayground) -> None:
    """tuning fails after bridge allocated an IP and a veth: DEL of the whole chain must undo both."""
    pg = playground
    pg.write_chain({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_knob": "1"}})
    with pytest.raises(CniError) as e, cni_network(pg.config(), "ctrt-fail", netns_dir=pg.netns_dir):
        pytest.fail("the block must not run when ADD failed")
    message = str(e.value)
    assert message.startswith(f'CNI plugin "tuning" failed ADD on network "{pg.tag}": ')
    assert "no_such_knob" in message
    assert "\n" not in message
    pg.assert_clean()


def test_an_error_in_the_block_still_tears_down(playground: CniPlayground) -> None:
    pg = playground
    pg.write_bridge_conf()
    with (
        pytest.raises(RuntimeError, match="workload failed"),
        cni_network(pg.config(), "ctrt-err", netns_dir=pg.netns_dir) as att,
    ):
        assert pg.allocations() != []
        assert is_netns_mounted(att.netns_path)
        raise RuntimeError("workload failed")
    pg.assert_clean()


def test_two_attachments_at_once_get_different_addresses(playground: CniPlayground) -> None:
    """Two runs in parallel threads: both ADDs race on host-local and the bridge, both reach the host."""
    pg = playground
    pg.write_bridge_conf()
    both_up = threading.Barrier(2, timeout=60)
    seen: dict[str, tuple[ipaddress.IPv4Interface, str]] = {}
    failures: list[BaseException] = []

    def attach(cid: str) -> None:
        try:
            with cni_network(pg.config(), cid, netns_dir=pg.netns_dir) as att:
                seen[cid] = (_sandbox_ip(pg, att), pg.fetch(att.netns_path))
                both_up.wait()  # both namespaces exist at the same time
        except BaseException as e:
            failures.append(e)
            both_up.abort()

    threads = [threading.Thread(target=attach, args=(cid,)) for cid in ("ctrt-a", "ctrt-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    assert seen["ctrt-a"][1] == seen["ctrt-b"][1] == HELLO
    assert seen["ctrt-a"][0] != seen["ctrt-b"][0]
    pg.assert_clean()


def test_nested_attachments_see_each_other(playground: CniPlayground) -> None:
    pg = playground
    pg.write_bridge_conf()
    with (
        cni_network(pg.config(), "ctrt-x", netns_dir=pg.netns_dir) as x,
        cni_network(pg.config(), "ctrt-y", netns_dir=pg.netns_dir) as y,
    ):
        x_ip, y_ip = _sandbox_ip(pg, x), _sandbox_ip(pg, y)
        assert x_ip != y_ip
        assert sorted(pg.allocations()) == sorted([str(x_ip.ip), str(y_ip.ip)])
        in_netns(x.netns_path, "busybox", "ping", "-c", "1", "-W", "5", str(y_ip.ip))
    pg.assert_clean()


def test_a_container_id_in_use_is_refused_without_touching_it(playground: CniPlayground) -> None:
    pg = playground
    pg.write_bridge_conf()
    with cni_network(pg.config(), "ctrt-dup", netns_dir=pg.netns_dir) as att:
        with (
            pytest.raises(CniError, match=r"cannot create network namespace file .*/ctrt-dup: File exists"),
            cni_network(pg.config(), "ctrt-dup", netns_dir=pg.netns_dir),
        ):
            pytest.fail("a second attachment with the same id must not start")
        assert is_netns_mounted(att.netns_path)
        assert pg.fetch(att.netns_path) == HELLO
    pg.assert_clean()


def test_an_invalid_container_id_is_refused(playground: CniPlayground) -> None:
    playground.write_bridge_conf()
    with (
        pytest.raises(CniError, match=r"invalid CNI container id '\.\./x'"),
        cni_network(playground.config(), "../x", netns_dir=playground.netns_dir),
    ):
        pytest.fail("must not start")
    playground.assert_clean()


def test_relative_dirs_give_an_absolute_namespace_path(
    playground: CniPlayground, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OCI wants an absolute namespace path; plugins get an absolute CNI_PATH to find IPAM plugins."""
    pg = playground
    pg.write_bridge_conf()
    monkeypatch.chdir(pg.tmp)
    config = CniConfig(Path("net.d"), Path(os.path.relpath(PLUGIN_DIR)))
    with cni_network(config, "ctrt-rel", netns_dir=Path("netns")) as att:
        assert att.netns_path == pg.netns_dir / "ctrt-rel"
        assert pg.fetch(att.netns_path) == HELLO
    pg.assert_clean()
