"""The OCI runtime spec of the profiling container, from the image config and the `Workload`.

Defaults follow upstream (moby's default spec, which the FUSE-era ctr-remote used): Docker's default
capabilities, no `noNewPrivileges` (setuid binaries work), every device denied except runc's defaults,
/etc/hosts and /etc/resolv.conf generated and bind-mounted (or the host's with --net-host).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctr_remote.profile.errors import ProfileError
from ctr_remote.profile.rootfs import DEFAULT_PATH, User, env_value
from ctr_remote.profile.workload import NetworkMode, Workload

DEFAULT_CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
# moby's libnetwork/etchosts defaults, as upstream writes them.
DEFAULT_HOSTS = [
    ("127.0.0.1", "localhost"),
    ("::1", "localhost ip6-localhost ip6-loopback"),
    ("fe00::0", "ip6-localnet"),
    ("ff00::0", "ip6-mcastprefix"),
    ("ff02::1", "ip6-allnodes"),
    ("ff02::2", "ip6-allrouters"),
]
MASKED_PATHS = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
HOST_HOSTS = Path("/etc/hosts")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")


@dataclass(frozen=True)
class Command:
    """What the container process runs, after merging the image config and the workload."""

    args: list[str]
    env: list[str]
    cwd: str
    user: str  # unresolved `user[:group]`


def command_of(config: dict, workload: Workload) -> Command:
    image = config.get("config") or {}
    entrypoint = list(
        workload.entrypoint if workload.entrypoint is not None else image.get("Entrypoint") or []
    )
    cmd = list(workload.args if workload.args is not None else image.get("Cmd") or [])
    args = entrypoint + cmd
    if not args:
        raise ProfileError("no command to run: the image has no Entrypoint or Cmd and none was given")
    env = merge_env(list(image.get("Env") or []), list(workload.env))
    if env_value(env, "PATH") is None:
        env.insert(0, f"PATH={DEFAULT_PATH}")
    if workload.terminal and env_value(env, "TERM") is None:
        env.append("TERM=xterm")
    cwd = workload.cwd or image.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise ProfileError(f"working directory {cwd!r} is not an absolute path")
    user = workload.user if workload.user is not None else image.get("User") or ""
    return Command(args, env, cwd, user)


def merge_env(base: list[str], overrides: list[str]) -> list[str]:
    """`overrides` replace the values of keys already in `base` (in place) and append the others."""
    merged = list(base)
    index = {item.partition("=")[0]: i for i, item in enumerate(merged)}
    for item in overrides:
        key = item.partition("=")[0]
        if key in index:
            merged[index[key]] = item
        else:
            index[key] = len(merged)
            merged.append(item)
    return merged


def hosts_text(workload: Workload) -> str:
    lines = [f"{ip}\t{host}" for ip, host in DEFAULT_HOSTS]
    lines += [f"{ip}\t{host}" for host, ip in workload.add_hosts]
    return "".join(line + "\n" for line in lines)


def resolv_conf_text(workload: Workload) -> str:
    dns = workload.dns
    text = "".join(f"nameserver {ns}\n" for ns in dns.nameservers)
    if dns.search_domains:
        text += f"search {' '.join(dns.search_domains)}\n"
    if dns.options:
        text += f"options {' '.join(dns.options)}\n"
    return text


def _user_mounts(workload: Workload) -> list[dict[str, Any]]:
    result = []
    for m in workload.mounts:
        if not m.destination.startswith("/"):
            raise ProfileError(f"mount destination {m.destination!r} is not an absolute path")
        options = list(m.options)
        source = m.source
        if m.type == "bind":
            if not {"bind", "rbind"} & set(options):
                options.append("rbind")
            source = str(Path(source).absolute())
            if not Path(source).exists():
                raise ProfileError(f"mount source {m.source!r} does not exist")
        result.append({"destination": m.destination, "type": m.type, "source": source, "options": options})
    return result


def build_spec(
    command: Command,
    user: User,
    workload: Workload,
    *,
    rootfs: Path,
    hosts: Path,
    resolv_conf: Path,
    hostname: str,
    netns_path: Path | None = None,
    started_hook: list[str] | None = None,
) -> dict[str, Any]:
    """The runtime spec (config.json). `hosts`/`resolv_conf` are the files to bind-mount (ignored
    with host networking); `netns_path` is a namespace to join (CNI); `started_hook` a command the
    runtime runs on the host once the container has started (a poststart hook)."""
    caps = list(DEFAULT_CAPABILITIES)
    effective = caps if user.uid == 0 else []
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]
    namespaces: list[dict[str, str]] = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    if workload.network is NetworkMode.HOST:
        # The host's files, read-only: the container must not edit the host's name service config.
        mounts.append(
            {
                "destination": "/etc/hosts",
                "type": "bind",
                "source": str(HOST_HOSTS),
                "options": ["rbind", "ro"],
            }
        )
        mounts.append(
            {
                "destination": "/etc/resolv.conf",
                "type": "bind",
                "source": str(HOST_RESOLV_CONF),
                "options": ["rbind", "ro"],
            }
        )
    else:
        # No path: runc creates the namespace and brings its loopback up.
        namespaces.append({"type": "network", "path": str(netns_path)} if netns_path else {"type": "network"})
        mounts.append(
            {
                "destination": "/etc/resolv.conf",
                "type": "bind",
                "source": str(resolv_conf),
                "options": ["bind"],
            }
        )
        mounts.append(
            {"destination": "/etc/hosts", "type": "bind", "source": str(hosts), "options": ["bind"]}
        )
    mounts += _user_mounts(workload)
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if workload.pids_limit is not None:
        resources["pids"] = {"limit": workload.pids_limit}
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": workload.terminal,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
            "args": command.args,
            "env": command.env,
            "cwd": posixpath.normpath(command.cwd),
            "capabilities": {
                "bounding": caps,
                "effective": effective,
                "permitted": effective,
                "inheritable": [],
                "ambient": [],
            },
            "noNewPrivileges": False,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "resources": resources,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }
    if started_hook:
        spec["hooks"] = {"poststart": [{"path": started_hook[0], "args": started_hook}]}
    return spec
