"""CNI networking for the profiling container: the CNI plugin protocol, spoken directly.

`cni_network` is what the runner uses for `--cni`: it creates a network namespace for the run, loads the
first network configuration of the conf dir in lexical order (as upstream's go-cni `WithDefaultConf`),
runs the plugin chain's ADD into it, and on every exit path (success, error, Ctrl-C) runs DEL in reverse
order and removes the namespace.

Protocol (CNI spec 0.3.0 through 1.x, results as in 0.4.0 / 1.0.0): each plugin is an executable named by
the `type` field, found in the plugin dir, run with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
`CNI_IFNAME` and `CNI_PATH` in its environment and its configuration (the list's `name` and `cniVersion`
injected, plus `prevResult`) on stdin. It answers with a result or an error object on stdout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from pathlib import Path
from typing import Any

import structlog

from ctr_remote.errors import CtrRemoteError
from ctr_remote.profile.netns import NetnsError, create_netns, remove_netns
from ctr_remote.profile.workload import CniConfig
from ctr_remote.signals import signals_deferred

DEFAULT_NETNS_DIR = Path("/run/ctr-remote/netns")
DEBIAN_PLUGIN_DIR = Path("/usr/lib/cni")
CONF_EXTENSIONS = (".conf", ".conflist", ".json")  # as go-cni
DEFAULT_IFNAME = "eth0"  # go-cni names the first network's interface "eth" + index
PLUGIN_TIMEOUT_SECONDS = 60.0

_log = structlog.get_logger(__name__)
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # the spec's rule for CNI_CONTAINERID
_MIN_VERSION = (0, 3, 0)  # results with `interfaces`/`ips`; older ones used ip4/ip6
_CHECK_VERSION = (0, 4, 0)  # CHECK and prevResult on DEL exist from here on

IPInterface = IPv4Interface | IPv6Interface
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class CniError(CtrRemoteError):
    """A CNI configuration is unusable or a plugin failed; the message names the plugin or file."""


# --- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkConfigList:
    """One network: a chain of plugin configurations (a `.conf` file is a chain of one)."""

    name: str
    cni_version: str
    plugins: tuple[Mapping[str, Any], ...]
    source: Path
    disable_check: bool = False

    @property
    def version(self) -> tuple[int, ...]:
        return _parse_version(self.cni_version)


def _parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _bad_conf(path: Path, why: str) -> CniError:
    return CniError(f"invalid CNI network configuration {path}: {why}")


def parse_network_file(path: Path) -> NetworkConfigList:
    """Read a `.conf`/`.json` (one plugin) or `.conflist` (a chain) network configuration."""
    try:
        doc = json.loads(path.read_bytes())
    except OSError as e:
        raise CniError(f"cannot read CNI network configuration {path}: {e.strerror}") from e
    except ValueError as e:
        raise _bad_conf(path, f"not JSON ({e})") from e
    if not isinstance(doc, dict):
        raise _bad_conf(path, "not a JSON object")
    if "plugins" in doc:  # a list, whatever the extension
        plugins = doc["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise _bad_conf(path, '"plugins" must be a non-empty list')
        disable_check = doc.get("disableCheck", False) in (True, "true")
    elif path.suffix == ".conflist":
        raise _bad_conf(path, 'no "plugins" list')
    else:
        plugins = [doc]
        disable_check = False
    name, version = doc.get("name"), doc.get("cniVersion")
    if not isinstance(name, str) or not name:
        raise _bad_conf(path, 'missing network "name"')
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise _bad_conf(path, f'missing or malformed "cniVersion" ({version!r})')
    if _parse_version(version) < _MIN_VERSION:
        raise _bad_conf(path, f"cniVersion {version} is not supported (0.3.0 or later is)")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise _bad_conf(path, f"plugin {i} is not a JSON object")
        kind = plugin.get("type")
        if not isinstance(kind, str) or not kind:
            raise _bad_conf(path, f'plugin {i} has no "type"')
        ipam = plugin.get("ipam")
        ipam_kind = ipam.get("type") if isinstance(ipam, dict) else None
        # Plugin names are looked up in the plugin dir; a path would run something from elsewhere.
        for k in (kind, ipam_kind):
            if isinstance(k, str) and ("/" in k or k in (".", "..")):
                raise _bad_conf(path, f"plugin type {k!r} is not a plain name")
    return NetworkConfigList(name, version, tuple(plugins), path, disable_check)


def load_default_network(conf_dir: Path) -> NetworkConfigList:
    """The first `.conf`/`.conflist`/`.json` file of `conf_dir` in lexical order (upstream's rule)."""
    try:
        files = sorted(p for p in conf_dir.iterdir() if p.suffix in CONF_EXTENSIONS and p.is_file())
    except FileNotFoundError:
        raise CniError(f"CNI configuration directory {conf_dir} does not exist") from None
    except OSError as e:
        raise CniError(f"cannot read CNI configuration directory {conf_dir}: {e.strerror}") from e
    if not files:
        raise CniError(f"no CNI network configuration (*.conf, *.conflist, *.json) found in {conf_dir}")
    return parse_network_file(files[0])


def find_plugin(plugin_dir: Path, kind: str) -> Path:
    """The executable for plugin `kind`; the error points at Debian's plugin dir, where they usually are."""
    path = plugin_dir / kind
    if path.is_file() and os.access(path, os.X_OK):
        return path
    hint = ""
    if plugin_dir != DEBIAN_PLUGIN_DIR and (DEBIAN_PLUGIN_DIR / kind).is_file():
        hint = f" (it is in {DEBIAN_PLUGIN_DIR}: use --cni-plugin-dir {DEBIAN_PLUGIN_DIR})"
    elif plugin_dir != DEBIAN_PLUGIN_DIR:
        hint = f" (Debian's containernetworking-plugins installs plugins in {DEBIAN_PLUGIN_DIR})"
    where = f"in {plugin_dir}" if plugin_dir.is_dir() else f"({plugin_dir} does not exist)"
    raise CniError(f'CNI plugin "{kind}" not found {where}{hint}')


def _required_plugins(network: NetworkConfigList) -> list[str]:
    """Plugin types the chain executes, including IPAM plugins that its plugins delegate to."""
    kinds: list[str] = []
    for plugin in network.plugins:
        kinds.append(plugin["type"])
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and isinstance(ipam.get("type"), str) and ipam["type"]:
            kinds.append(ipam["type"])
    return list(dict.fromkeys(kinds))


# --- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CniInterface:
    name: str
    mac: str | None = None
    sandbox: str | None = None  # the netns path for interfaces inside the container


@dataclass(frozen=True)
class CniIp:
    address: IPInterface  # address with prefix length, e.g. 10.99.0.2/24
    gateway: IPAddress | None = None
    interface: int | None = None  # index into `interfaces`


@dataclass(frozen=True)
class CniRoute:
    dst: IPNetwork
    gw: IPAddress | None = None


@dataclass(frozen=True)
class CniDns:
    nameservers: tuple[str, ...] = ()
    domain: str | None = None
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class CniResult:
    """A plugin chain's final ADD result (the spec's Result type, 0.3.0 through 1.x)."""

    cni_version: str
    interfaces: tuple[CniInterface, ...] = ()
    ips: tuple[CniIp, ...] = ()
    routes: tuple[CniRoute, ...] = ()
    dns: CniDns = CniDns()

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> CniResult:
        """Parse a result object; raises ValueError/KeyError/TypeError when malformed."""
        dns = doc.get("dns") or {}
        return cls(
            cni_version=str(doc.get("cniVersion", "")),
            interfaces=tuple(
                CniInterface(i["name"], i.get("mac"), i.get("sandbox")) for i in doc.get("interfaces") or ()
            ),
            ips=tuple(
                CniIp(
                    ip_interface(i["address"]),
                    ip_address(i["gateway"]) if i.get("gateway") else None,
                    int(i["interface"]) if i.get("interface") is not None else None,
                )
                for i in doc.get("ips") or ()
            ),
            routes=tuple(
                CniRoute(ip_network(r["dst"], strict=False), ip_address(r["gw"]) if r.get("gw") else None)
                for r in doc.get("routes") or ()
            ),
            dns=CniDns(
                tuple(dns.get("nameservers") or ()),
                dns.get("domain"),
                tuple(dns.get("search") or ()),
                tuple(dns.get("options") or ()),
            ),
        )


# --- executing plugins ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeConf:
    """What identifies one attachment to the plugins."""

    container_id: str
    netns: Path
    ifname: str = DEFAULT_IFNAME


_MAX_MESSAGE = 500  # a plugin's Go panic can run to pages; its head says what happened


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 1] + "…"


def _plugin_error(
    kind: str, command: str, network: NetworkConfigList, rc: int, out: bytes, err: bytes
) -> str:
    """The plugin's own message: its CNI error object if it printed one, else its stderr."""
    message = ""
    try:
        doc = json.loads(out)
        if isinstance(doc, dict) and doc.get("msg"):
            message = str(doc["msg"])
            if doc.get("details"):
                message += f": {doc['details']}"
            if doc.get("code") is not None:
                message += f" (code {doc['code']})"
    except ValueError:
        pass
    if not message:
        message = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
    if not message:
        message = f"exit status {rc}"
    return f'CNI plugin "{kind}" failed {command} on network "{network.name}": {_one_line(message)}'


def _wait_killing_after(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, bool]:
    """Wait for `proc`, killing it after `timeout` seconds; returns (exit status, whether it was killed).

    A blocking wait plus a timer, because `Popen.wait(timeout=)` polls with growing sleeps, which
    added up to tens of milliseconds to every plugin run.
    """
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        rc = proc.wait()
    finally:
        timer.cancel()
    # The timer may fire just as the plugin exits by itself: only a SIGKILL death counts as ours.
    return rc, killed.is_set() and rc == -signal.SIGKILL


def exec_plugin(
    plugin_dir: Path,
    network: NetworkConfigList,
    plugin: Mapping[str, Any],
    command: str,
    rt: RuntimeConf,
    prev_result: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Run one plugin of `network` with `command` (ADD, CHECK or DEL); returns its parsed stdout, if any."""
    kind = plugin["type"]
    binary = find_plugin(plugin_dir, kind)
    conf = {**plugin, "name": network.name, "cniVersion": network.cni_version}
    conf.pop("prevResult", None)
    if prev_result is not None:
        conf["prevResult"] = prev_result
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID=rt.container_id,
        CNI_NETNS=str(rt.netns),
        CNI_IFNAME=rt.ifname,
        CNI_PATH=str(plugin_dir),
    )
    # Files, not pipes: no deadlock whatever the sizes, and no reader threads.
    with (
        tempfile.TemporaryFile() as stdin,
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
    ):
        stdin.write(json.dumps(conf).encode())
        stdin.seek(0)
        with signals_deferred():
            # Own session: a terminal's Ctrl-C goes to our process group, and must not kill the plugin.
            proc = subprocess.Popen(
                [str(binary)], stdin=stdin, stdout=stdout, stderr=stderr, env=env, start_new_session=True
            )
            started = time.monotonic()
            rc, timed_out = _wait_killing_after(proc, PLUGIN_TIMEOUT_SECONDS)
            if timed_out:
                raise CniError(
                    f'CNI plugin "{kind}" did not finish {command} on network "{network.name}" '
                    f"within {PLUGIN_TIMEOUT_SECONDS:g} s"
                )
        _log.debug(
            "CNI plugin ran",
            plugin=kind,
            command=command,
            rc=rc,
            seconds=round(time.monotonic() - started, 3),
        )
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if rc != 0:
        raise CniError(_plugin_error(kind, command, network, rc, out, err))
    if not out.strip():
        return None
    try:
        doc = json.loads(out)
    except ValueError:
        raise CniError(
            f'CNI plugin "{kind}" printed a non-JSON result for {command} on network "{network.name}"'
        ) from None
    if not isinstance(doc, dict):
        raise CniError(f'CNI plugin "{kind}" printed a non-object result for {command}')
    return doc


def add_network(plugin_dir: Path, network: NetworkConfigList, rt: RuntimeConf) -> dict[str, Any]:
    """ADD each plugin in order, each getting the previous one's result; the last result is the chain's."""
    result: dict[str, Any] | None = None
    for plugin in network.plugins:
        result = exec_plugin(plugin_dir, network, plugin, "ADD", rt, result)
        if result is None:
            raise CniError(f'CNI plugin "{plugin["type"]}" printed no result for ADD on "{network.name}"')
    assert result is not None  # plugins is never empty
    return result


def check_network(
    plugin_dir: Path, network: NetworkConfigList, rt: RuntimeConf, result: Mapping[str, Any]
) -> None:
    """CHECK each plugin in order against the chain's ADD result (spec 0.4.0 and later)."""
    if network.version < _CHECK_VERSION:
        raise CniError(f'CNI network "{network.name}" has cniVersion {network.cni_version}, without CHECK')
    if network.disable_check:
        return
    for plugin in network.plugins:
        exec_plugin(plugin_dir, network, plugin, "CHECK", rt, result)


def del_network(
    plugin_dir: Path, network: NetworkConfigList, rt: RuntimeConf, result: Mapping[str, Any] | None
) -> None:
    """DEL every plugin in reverse order, even after a failure, so that each releases what it holds.

    Plugins must accept DEL for things they never added, so this is also the cleanup of a partial ADD.
    Raises the first failure once all plugins have run.
    """
    prev = result if network.version >= _CHECK_VERSION else None
    first: CniError | None = None
    for plugin in reversed(network.plugins):
        try:
            exec_plugin(plugin_dir, network, plugin, "DEL", rt, prev)
        except CniError as e:
            _log.warning("CNI DEL failed", error=str(e))
            first = first or e
    if first is not None:
        raise first


# --- the runner's entry point ------------------------------------------------------------------------


@dataclass(frozen=True)
class CniAttachment:
    """A network namespace configured by CNI, alive for the `cni_network` block."""

    netns_path: Path  # the namespace the container joins (OCI linux.namespaces network path)
    container_id: str
    ifname: str
    network: NetworkConfigList
    result: CniResult  # parsed final ADD result
    raw_result: Mapping[str, Any]  # as the last plugin printed it (prevResult for CHECK/DEL)

    @property
    def interfaces(self) -> tuple[CniInterface, ...]:
        return self.result.interfaces

    @property
    def ips(self) -> tuple[CniIp, ...]:
        return self.result.ips

    @property
    def runtime_conf(self) -> RuntimeConf:
        return RuntimeConf(self.container_id, self.netns_path, self.ifname)


def check_attachment(config: CniConfig, attachment: CniAttachment) -> None:
    """Run CHECK for a live attachment; raises CniError if a plugin finds it broken."""
    check_network(config.plugin_dir, attachment.network, attachment.runtime_conf, attachment.raw_result)


def check_config(config: CniConfig) -> NetworkConfigList:
    """The network `config` selects, with every plugin it needs found; raises CniError otherwise."""
    network = load_default_network(config.conf_dir)
    for kind in _required_plugins(network):
        find_plugin(config.plugin_dir, kind)
    return network


@contextmanager
def cni_network(
    config: CniConfig, container_id: str, *, netns_dir: Path = DEFAULT_NETNS_DIR
) -> Iterator[CniAttachment]:
    """A fresh network namespace at `netns_dir/container_id`, loopback up, configured by CNI.

    Uses the first configuration of `config.conf_dir` and the plugins of `config.plugin_dir`. Everything
    is checked before anything is created, so configuration errors leave nothing behind. On leaving the
    block, however (normally, by an exception or by Ctrl-C), every plugin's DEL runs in reverse order
    and the namespace is removed. A DEL failure is raised only if the block itself succeeded.
    """
    if not _CONTAINER_ID.fullmatch(container_id):
        raise CniError(f"invalid CNI container id {container_id!r}")
    network = check_config(config)
    # Absolute: the OCI spec requires it for the namespace path, and plugins may run elsewhere.
    config = replace(config, plugin_dir=config.plugin_dir.absolute())
    rt = RuntimeConf(container_id, (netns_dir / container_id).absolute())
    created = False
    raw: dict[str, Any] | None = None
    try:
        with signals_deferred():
            try:
                create_netns(rt.netns)
            except NetnsError as e:
                raise CniError(str(e)) from e
            created = True
        raw = add_network(config.plugin_dir, network, rt)
        try:
            result = CniResult.parse(raw)
        except (ValueError, KeyError, TypeError) as e:
            raise CniError(f'malformed CNI result from network "{network.name}": {e}') from e
        yield CniAttachment(rt.netns, container_id, rt.ifname, network, result, raw)
    except BaseException:
        if created:
            with signals_deferred():
                _teardown(config, network, rt, raw, quiet=True)
        raise
    else:
        with signals_deferred():
            _teardown(config, network, rt, raw, quiet=False)


def _teardown(
    config: CniConfig, network: NetworkConfigList, rt: RuntimeConf, raw: Mapping[str, Any] | None, quiet: bool
) -> None:
    """DEL, then remove the namespace whatever DEL said; `quiet` when another error is already on its way."""
    errors: list[CtrRemoteError] = []
    try:
        del_network(config.plugin_dir, network, rt, raw)
    except CniError as e:
        errors.append(e)
    try:
        remove_netns(rt.netns)
    except NetnsError as e:
        errors.append(e)
    if errors:
        if quiet:
            for error in errors:
                _log.warning("CNI teardown incomplete", error=str(error))
        else:
            raise CniError(str(errors[0]))


__all__ = [
    "DEFAULT_NETNS_DIR",
    "CniAttachment",
    "CniDns",
    "CniError",
    "CniInterface",
    "CniIp",
    "CniResult",
    "CniRoute",
    "NetworkConfigList",
    "RuntimeConf",
    "add_network",
    "check_attachment",
    "check_network",
    "cni_network",
    "del_network",
    "exec_plugin",
    "find_plugin",
    "load_default_network",
    "parse_network_file",
]
