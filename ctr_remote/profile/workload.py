"""What the user asked the profiling container to run: plain data, validated once by the CLI.

The CLI builds a `Workload` from the flags; the profiling runner turns it (plus the image config) into
an OCI runtime spec. Defaults follow upstream `ctr-remote image optimize`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PERIOD_SECONDS = 10.0
DEFAULT_NAMESERVERS: tuple[str, ...] = ("8.8.8.8",)
DEFAULT_CNI_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_CNI_PLUGIN_DIR = Path("/opt/cni/bin")
# The container's pids cgroup limit (`--pids-limit`): a fork bomb in the workload stops there instead
# of filling the host's pid table (uid 0 is not bound by RLIMIT_NPROC). Start-ups that fork a worker
# per core or a thread pool stay far below it; threads count as pids.
DEFAULT_PIDS_LIMIT = 4096
# CDI's static and generated spec directories; a later one has priority.
DEFAULT_CDI_SPEC_DIRS: tuple[Path, ...] = (Path("/etc/cdi"), Path("/var/run/cdi"))


class RecorderKind(enum.Enum):
    """How file accesses are recorded (`--recorder`)."""

    FUSE = "fuse"  # a recording FUSE passthrough under each layer
    FANOTIFY = "fanotify"  # a fanotify mark on the container's overlay, as upstream


class NetworkMode(enum.Enum):
    NONE = "none"  # a fresh network namespace with loopback only (upstream default)
    HOST = "host"  # --net-host
    CNI = "cni"  # --cni


@dataclass(frozen=True)
class Mount:
    """One `--mount type=...,source=...,destination=...,options=a:b`."""

    type: str
    source: str
    destination: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = DEFAULT_NAMESERVERS
    search_domains: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class CniConfig:
    conf_dir: Path = DEFAULT_CNI_CONF_DIR
    plugin_dir: Path = DEFAULT_CNI_PLUGIN_DIR


@dataclass(frozen=True)
class Workload:
    """The container run during profiling.

    `entrypoint` / `args` replace the image's Entrypoint / Cmd independently when not None.
    `env` holds `K=V` pairs (from --env-file, then --env) applied over the image's Env, replacing keys.
    """

    entrypoint: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    user: str | None = None
    cwd: str | None = None
    mounts: tuple[Mount, ...] = ()
    period: float = DEFAULT_PERIOD_SECONDS  # seconds, > 0 (the CLI turns upstream's <= 0 into the default)
    wait_on_signal: bool = False
    wait_on_line: str | None = None
    terminal: bool = False
    stdin: bool = False
    network: NetworkMode = NetworkMode.NONE
    cni: CniConfig = field(default_factory=CniConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    add_hosts: tuple[tuple[str, str], ...] = ()  # (hostname, ip) from --add-hosts host:IP
    runtime: str = "runc"
    recorder: RecorderKind = RecorderKind.FUSE
    pids_limit: int | None = DEFAULT_PIDS_LIMIT  # None: no limit (`--pids-limit -1`)
    # Qualified CDI device names (vendor.com/class=name; --device, and --gpus as nvidia.com/gpu=...).
    devices: tuple[str, ...] = ()
    cdi_spec_dirs: tuple[Path, ...] = DEFAULT_CDI_SPEC_DIRS
