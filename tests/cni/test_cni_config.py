"""Which configuration is used, and one-line errors for unusable ones (nothing gets created)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctr_remote.profile.cni import CniError, cni_network, load_default_network
from ctr_remote.profile.workload import DEFAULT_CNI_PLUGIN_DIR, CniConfig
from tests.cni.conftest import PLUGIN_DIR

pytestmark = pytest.mark.unit

BRIDGE = {
    "type": "bridge",
    "bridge": "ctrt-never",
    "ipam": {"type": "host-local", "subnet": "10.254.254.0/24"},
}


def _write(conf_dir: Path, name: str, doc: object) -> Path:
    conf_dir.mkdir(exist_ok=True)
    path = conf_dir / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _attach_fails(tmp_path: Path, config: CniConfig) -> str:
    """The error of a `cni_network` that must fail before creating anything."""
    netns_dir = tmp_path / "netns"
    with pytest.raises(CniError) as e, cni_network(config, "ctrt-cfg", netns_dir=netns_dir):
        pytest.fail("the block must not run")
    message = str(e.value)
    assert "\n" not in message
    assert not netns_dir.exists() or list(netns_dir.iterdir()) == []
    return message


def test_first_file_in_lexical_order_wins(tmp_path: Path) -> None:
    conf = tmp_path / "net.d"
    _write(conf, "20-later.conflist", "{ broken")
    _write(conf, "10-first.conflist", {"cniVersion": "1.0.0", "name": "first", "plugins": [BRIDGE]})
    _write(conf, "05-not-a-conf.txt", "{ broken")
    _write(conf, "099-numbers-sort-as-text.json", {"cniVersion": "0.4.0", "name": "text-order", **BRIDGE})
    network = load_default_network(conf)
    assert (network.name, network.cni_version) == ("text-order", "0.4.0")
    assert network.source == conf / "099-numbers-sort-as-text.json"
    assert [p["type"] for p in network.plugins] == ["bridge"]


def test_conflist_keeps_the_chain_in_order(tmp_path: Path) -> None:
    conf = tmp_path / "net.d"
    chain = {
        "cniVersion": "1.0.0",
        "name": "chain",
        "plugins": [BRIDGE, {"type": "tuning"}, {"type": "portmap"}],
    }
    _write(conf, "10-chain.conflist", chain)
    assert [p["type"] for p in load_default_network(conf).plugins] == ["bridge", "tuning", "portmap"]


@pytest.mark.parametrize(
    ("filename", "content", "why"),
    [
        ("10-x.conf", "{ not json", "not JSON"),
        ("10-x.conf", "[1, 2]", "not a JSON object"),
        ("10-x.conf", {"cniVersion": "1.0.0", "name": "x"}, 'plugin 0 has no "type"'),
        ("10-x.conf", {"cniVersion": "1.0.0", "type": "bridge"}, 'missing network "name"'),
        ("10-x.conf", {"name": "x", "type": "bridge"}, 'missing or malformed "cniVersion"'),
        (
            "10-x.conf",
            {"cniVersion": "0.2.0", "name": "x", "type": "bridge"},
            "cniVersion 0.2.0 is not supported",
        ),
        ("10-x.conflist", {"cniVersion": "1.0.0", "name": "x", "type": "bridge"}, 'no "plugins" list'),
        (
            "10-x.conflist",
            {"cniVersion": "1.0.0", "name": "x", "plugins": []},
            '"plugins" must be a non-empty',
        ),
        (
            "10-x.conflist",
            {"cniVersion": "1.0.0", "name": "x", "plugins": ["bridge"]},
            "plugin 0 is not a JSON",
        ),
        ("10-x.conf", {"cniVersion": "1.0.0", "name": "x", "type": "../../bin/sh"}, "is not a plain name"),
        (
            "10-x.conf",
            {**BRIDGE, "cniVersion": "1.0.0", "name": "x", "ipam": {"type": "/bin/sh"}},
            "'/bin/sh' is",
        ),
    ],
)
def test_broken_configuration_is_a_one_line_error(
    tmp_path: Path, filename: str, content: object, why: str
) -> None:
    path = _write(tmp_path / "net.d", filename, content)
    message = _attach_fails(tmp_path, CniConfig(tmp_path / "net.d", PLUGIN_DIR))
    assert message.startswith(f"invalid CNI network configuration {path}: ")
    assert why in message


def test_missing_or_empty_conf_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert _attach_fails(tmp_path, CniConfig(missing, PLUGIN_DIR)) == (
        f"CNI configuration directory {missing} does not exist"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README").write_text("no configs here")
    assert _attach_fails(tmp_path, CniConfig(empty, PLUGIN_DIR)) == (
        f"no CNI network configuration (*.conf, *.conflist, *.json) found in {empty}"
    )


def test_default_plugin_dir_points_at_debians(tmp_path: Path) -> None:
    """Upstream's default /opt/cni/bin is empty on Debian: the error says where the plugins are."""
    _write(tmp_path / "net.d", "10-x.conf", {"cniVersion": "1.0.0", "name": "x", **BRIDGE})
    message = _attach_fails(tmp_path, CniConfig(tmp_path / "net.d", DEFAULT_CNI_PLUGIN_DIR))
    assert message.startswith('CNI plugin "bridge" not found')
    assert str(DEFAULT_CNI_PLUGIN_DIR) in message
    assert "use --cni-plugin-dir /usr/lib/cni" in message


@pytest.mark.parametrize("where", ["plugin", "ipam"])
def test_missing_plugin_names_it_and_debians_dir(tmp_path: Path, where: str) -> None:
    conf = {"cniVersion": "1.0.0", "name": "x", **BRIDGE}
    if where == "plugin":
        conf["type"] = "no-such-plugin"
    else:
        conf["ipam"] = {"type": "no-such-plugin"}
    _write(tmp_path / "net.d", "10-x.conf", conf)
    plugins = tmp_path / "bin"
    plugins.mkdir()
    (plugins / "bridge").symlink_to(PLUGIN_DIR / "bridge")
    message = _attach_fails(tmp_path, CniConfig(tmp_path / "net.d", plugins))
    assert message == (
        f'CNI plugin "no-such-plugin" not found in {plugins} '
        "(Debian's containernetworking-plugins installs plugins in /usr/lib/cni)"
    )


def test_a_non_executable_plugin_is_not_found(tmp_path: Path) -> None:
    _write(tmp_path / "net.d", "10-x.conf", {"cniVersion": "1.0.0", "name": "x", "type": "plain"})
    plugins = tmp_path / "bin"
    plugins.mkdir()
    (plugins / "plain").write_text("#!/bin/sh\n")
    message = _attach_fails(tmp_path, CniConfig(tmp_path / "net.d", plugins))
    assert message.startswith(f'CNI plugin "plain" not found in {plugins}')
