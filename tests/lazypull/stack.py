"""The real lazy-pulling stack: docker-registry, containerd, and the stargz snapshotter of
`tests/lazypull/stargz-grpc` (built by `script/setup.sh stargz-grpc build`) as containerd's proxy
snapshotter `stargz`, all under one test-owned directory, the registry on a free port.

    with start_stack(base) as stack:
        stack.ctr("image", "rpull", "--plain-http", stack.ref("app:esgz"))
        mark = stack.mark()
        ...                                   # run something
        stack.blob_fetches("app", digest, since=mark)

containerd and the snapshotter run in a mount namespace of their own whose /run is `base/run`:
containerd 1.6 puts its shim sockets under /run/containerd/s whatever its config says, `ctr` its
stdio FIFOs under /run/containerd/fifo, runc its state under /run/containerd/runc. The FUSE and
overlay mounts of the snapshots live only in that namespace and go with it. `ctr()` runs upstream
`ctr-remote` in that namespace too, so the FIFOs it creates are the ones the shim opens.

On exit, pass or fail, everything is stopped by process id (what containerd cannot stop any more,
through runc's cgroups and the mount namespace), it is asserted that nothing is left (no process,
no mount namespace, no mount, no cgroup), and the state is deleted; only `base/logs` stays.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ctr_remote.runstate import start_time
from tests.conftest import ROOT
from tests.helpers.registry import RegistryServer, start_registry

STARGZ_GRPC = Path(os.environ.get("STARGZ_GRPC", ROOT / "build" / "stargz-grpc"))
CTR_REMOTE = "/usr/bin/ctr-remote"  # upstream v0.12 (Debian's stargz-snapshotter package)
CONTAINERD = "/usr/bin/containerd"
COMMAND_TIMEOUT = 120.0
START_TIMEOUT = 60.0  # the snapshotter re-mounts nothing here, but containerd loads ~40 plugins
STOP_TIMEOUT = 30.0
LOG_TIMEOUT = 30.0
POLL = 0.05  # interval of the readiness, exit and log probes below

# Combined log format of the registry's access log:
# 127.0.0.1 - - [date] "GET /v2/app/blobs/sha256:... HTTP/1.1" 206 1000000 "" "Go-http-client/1.1"
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)')
# The snapshotter's debug line when a layer's prefetch is done (logrus text format, fields sorted).
_PREFETCH = re.compile(
    r'prefetch_size=(?P<size>\d+) bytes" layer_sha="(?P<layer>sha256:[0-9a-f]{64})".*operation=prefetch_total'
)

# Runs as the first process of the new mount namespace (`unshare --mount --propagation private`),
# then becomes the snapshotter ("$@"). The namespace starts with copies of all host mounts. The
# copies of mounts other users of the machine own (FUSE and overlay filesystems, network namespaces
# bound under /run/netns, anything under /run or /tmp) are detached first: a copy held here would
# keep their filesystem or network namespace alive after they unmount it on the host. Deepest
# first, so a parent is never detached before its children.
_NAMESPACE_INIT = r"""
set -eu
run=$1
shift
awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { print $5, $(i + 1); break } }' /proc/self/mountinfo |
  sort -r |
  while read -r mountpoint fstype; do
    case "$fstype" in fuse* | overlay | nsfs) umount -l "$mountpoint" 2>/dev/null || true; continue ;; esac
    case "$mountpoint" in /run | /run/* | /tmp/*) umount -l "$mountpoint" 2>/dev/null || true ;; esac
  done
mount --bind "$run" /run
exec "$@"
"""

_CONTAINERD_CONFIG = """\
version = 2
root = "{base}/containerd/root"
state = "{base}/containerd/state"
# No CRI (it would want CNI and a sandbox image), no /opt/containerd, no snapshotters that cannot
# work here, no tracing.
disabled_plugins = [
  "io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{base}/containerd.sock"

[proxy_plugins.stargz]
  type = "snapshot"
  address = "{base}/stargz.sock"
"""

# Background fetch off: only the prefetch range and what is read is fetched, so that the registry's
# access log shows exactly what lazy pulling fetched.
_STARGZ_CONFIG = """\
no_background_fetch = true
"""


class StackError(AssertionError):
    """A stack command failed; the message carries its output and the end of the stack's logs."""


@dataclass(frozen=True)
class Fetch:
    """One GET of a blob, as the registry logged it."""

    status: int
    size: int


@dataclass
class StargzStack:
    base: Path
    registry_server: RegistryServer
    namespace: str  # containerd namespace, also the name of runc's parent cgroups
    snapshotter: subprocess.Popen[bytes] | None = None
    containerd: subprocess.Popen[bytes] | None = None
    mount_namespace: str = ""  # "mnt:[inode]" of the stack's mount namespace

    @property
    def registry(self) -> str:
        return self.registry_server.host

    def ref(self, repo_tag: str) -> str:
        """As upstream `ctr-remote` and `estargz-check` take it (no scheme)."""
        return f"{self.registry}/{repo_tag}"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def socket(self) -> Path:
        return self.base / "containerd.sock"

    def ctr(self, *args: str) -> str:
        """Upstream `ctr-remote` inside the stack's mount namespace; returns its stdout."""
        assert self.containerd is not None, "containerd is not running"
        return self._run(
            "nsenter", "--mount", "--target", str(self.containerd.pid), "--",
            CTR_REMOTE, "--address", str(self.socket), "--namespace", self.namespace, *args,
        )  # fmt: skip

    def _run(self, *argv: str) -> str:
        p = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL
        )
        if p.returncode != 0:
            raise StackError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr}{p.stdout}\n{self.tails()}")
        return p.stdout

    def tails(self, lines: int = 15) -> str:
        out = []
        for log in [self.registry_server.log, *sorted(self.logs.glob("*.log"))]:
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # --- start -------------------------------------------------------------------------------------

    def _start(self) -> None:
        for d in ("run", "logs", "containerd", "stargz/root"):
            (self.base / d).mkdir(parents=True)
        (self.base / "containerd" / "config.toml").write_text(_CONTAINERD_CONFIG.format(base=self.base))
        (self.base / "stargz" / "config.toml").write_text(_STARGZ_CONFIG)

        # The snapshotter first: containerd's proxy plugin only connects on first use, but a
        # containerd without its snapshotter would fail the first rpull, far from the cause.
        with (self.logs / "stargz.log").open("wb") as log:
            self.snapshotter = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--",
                 "sh", "-c", _NAMESPACE_INIT, "namespace-init", str(self.base / "run"),
                 str(STARGZ_GRPC), "--address", str(self.base / "stargz.sock"),
                 "--root", str(self.base / "stargz" / "root"),
                 "--config", str(self.base / "stargz" / "config.toml"), "--log-level", "debug"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self._wait("stargz-grpc", self.snapshotter, lambda: _accepts(self.base / "stargz.sock"))
        self.mount_namespace = os.readlink(f"/proc/{self.snapshotter.pid}/ns/mnt")
        assert self.mount_namespace != os.readlink("/proc/self/ns/mnt"), "no mount namespace of its own"

        with (self.logs / "containerd.log").open("wb") as log:
            self.containerd = subprocess.Popen(
                ["nsenter", "--mount", "--target", str(self.snapshotter.pid), "--",
                 CONTAINERD, "--config", str(self.base / "containerd" / "config.toml")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self._wait("containerd", self.containerd, lambda: _accepts(self.socket))
        # Through containerd to the snapshotter and back: the proxy plugin works.
        self.ctr("snapshot", "--snapshotter", "stargz", "ls")

    def _wait(self, name: str, process: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if process.poll() is not None:
                raise StackError(f"{name} exited ({process.returncode}) while starting\n{self.tails()}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} not ready after {START_TIMEOUT}s\n{self.tails()}")
            time.sleep(POLL)

    # --- the registry's access log -----------------------------------------------------------

    def _access_lines(self) -> list[str]:
        return self.registry_server.log.read_text(errors="replace").splitlines()

    def mark(self) -> int:
        """A point in the access log: everything the registry served before this call is logged above it.

        Sends a request with a unique path and waits until the registry logged it, so requests that
        completed earlier are not counted as later ones.
        """
        token = uuid.uuid4().hex
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://{self.registry}/v2/mark-{token}/tags/list", timeout=10).close()
        deadline = time.monotonic() + LOG_TIMEOUT
        while True:
            for i, line in enumerate(self._access_lines()):
                if f"mark-{token}" in line:
                    return i + 1
            if time.monotonic() > deadline:
                raise StackError(f"registry never logged the marker request\n{self.tails()}")
            time.sleep(POLL)

    def blob_fetches(self, repo: str, digest: str, since: int, until: int | None = None) -> list[Fetch]:
        """GETs of blob `digest` of `repo` logged between two marks."""
        path = f"/v2/{repo}/blobs/{digest}"
        fetches = []
        for line in self._access_lines()[since:until]:
            m = _ACCESS.search(line)
            if m and m["method"] == "GET" and m["path"] == path:
                fetches.append(Fetch(int(m["status"]), 0 if m["bytes"] == "-" else int(m["bytes"])))
        return fetches

    # --- the snapshotter's log -----------------------------------------------------------------

    def wait_prefetched(self, layers: set[str]) -> dict[str, int]:
        """Wait until the snapshotter logged `prefetch_total` for every layer; its `prefetch_size` each."""
        deadline = time.monotonic() + LOG_TIMEOUT
        while True:
            text = (self.logs / "stargz.log").read_text(errors="replace")
            sizes = {m["layer"]: int(m["size"]) for m in _PREFETCH.finditer(text) if m["layer"] in layers}
            if sizes.keys() == layers:
                return sizes
            if time.monotonic() > deadline:
                raise StackError(f"no prefetch logged for {sorted(layers - sizes.keys())}\n{self.tails()}")
            time.sleep(POLL)

    def fuse_mounts(self) -> list[str]:
        """Mount points of the snapshotter's FUSE filesystems (in the stack's mount namespace)."""
        assert self.snapshotter is not None and self.snapshotter.poll() is None, "stargz-grpc is not running"
        mounts = []
        for line in Path(f"/proc/{self.snapshotter.pid}/mountinfo").read_text().splitlines():
            pre, _, post = line.partition(" - ")
            if post.startswith("fuse"):
                mounts.append(pre.split()[4])
        return mounts

    # --- stop ----------------------------------------------------------------------------------

    def _stop(self) -> None:
        """Stop everything by process id, in an order that lets each part shut down cleanly. Every
        step runs even if an earlier one failed; their errors are raised together at the end."""
        errors = []
        for step in (
            self._delete_tasks,
            lambda: _terminate("containerd", self.containerd),
            self._kill_leftovers,
            self._remove_cgroups,
            # SIGTERM: the snapshotter unmounts its FUSE filesystems before it exits.
            lambda: _terminate("stargz-grpc", self.snapshotter),
        ):
            try:
                step()
            except Exception as e:  # collected, raised below
                errors.append(e)
        if errors:
            raise ExceptionGroup(f"stopping the stack under {self.base}", errors)

    def _delete_tasks(self) -> None:
        """A test that failed half way may have left a container running: kill it through containerd."""
        if self.containerd is None or self.containerd.poll() is not None:
            return
        for task in self.ctr("task", "ls", "-q").split():
            self.ctr("task", "delete", "--force", task)
        for container in self.ctr("container", "ls", "-q").split():
            self.ctr("container", "delete", container)

    def _kill_leftovers(self) -> None:
        """What a dead containerd could not stop: container processes (found by runc's cgroups, named
        after our containerd namespace; a container has a mount namespace of its own) and shims
        (they are not containerd's children; found in our mount namespace, where only they and the
        snapshotter remain). Their state is deleted anyway: SIGKILL."""
        procs = [f for cgroup in self.cgroups() for f in cgroup.glob("**/cgroup.procs")]
        _kill({pid for f in procs for pid in _cgroup_members(f)})
        if self.snapshotter is not None:
            _kill(set(_pids_in_namespace(self.mount_namespace)) - {self.snapshotter.pid})

    def _remove_cgroups(self) -> None:
        """runc (cgroup v1) removes a container's cgroups but not their parent, named after the
        containerd namespace. Deepest first: a cgroup with children cannot be removed."""
        deadline = time.monotonic() + STOP_TIMEOUT
        for cgroup in self.cgroups():
            for d in sorted(cgroup.glob("**/"), key=lambda p: len(p.parts), reverse=True):
                # EBUSY for a moment after its last process was killed: the kernel releases a
                # cgroup only once the process is reaped, and init reaps orphans when it gets to it.
                while True:
                    try:
                        d.rmdir()
                        break
                    except OSError as e:
                        if e.errno != errno.EBUSY or time.monotonic() > deadline:
                            raise
                    time.sleep(POLL)

    def cgroups(self) -> list[Path]:
        cgroups = list(Path("/sys/fs/cgroup").glob(f"*/{self.namespace}"))
        return cgroups + [p for p in [Path("/sys/fs/cgroup") / self.namespace] if p.exists()]

    def _check_and_delete(self) -> None:
        """Assert that the stopped stack left nothing behind, then delete its state."""
        pids = [p.pid for p in (self.snapshotter, self.containerd, self.registry_server.process) if p]
        left = [pid for pid in pids if running(pid)]
        left += _pids_with(str(self.base))
        assert not left, f"processes of the stack still running: {left}"
        # Not by the namespace's inode number: the kernel gives a freed one to the next new
        # namespace, someone else's container. Any process left in the stack's mount namespace, or
        # in a container's namespace made from it, sees mounts below `base`; no other one does.
        seeing = pids_seeing_mounts_below(self.base)
        assert not seeing, f"processes still in the stack's mount namespaces: {seeing}"
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        mounts = [line for line in mountinfo if str(self.base) in line]
        assert not mounts, f"mounts left below {self.base}: {mounts}"
        assert not self.cgroups(), f"cgroups left behind: {self.cgroups()}"
        # Snapshot directories hold files owned by other uids and read-only directories: as root,
        # rmtree removes them all.
        for state in ("containerd", "stargz", "run", "registry"):
            shutil.rmtree(self.base / state, ignore_errors=True)
            assert not (self.base / state).exists(), f"{self.base / state} not deleted"
        for sock in self.base.glob("*.sock*"):  # containerd leaves its sockets
            sock.unlink()


def _accepts(path: Path) -> bool:
    """Whether a server is accepting connections on the unix socket `path`."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True


def _terminate(name: str, process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, and SIGKILL if it has not exited after STOP_TIMEOUT."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise StackError(f"{name} ({process.pid}) ignored SIGTERM for {STOP_TIMEOUT}s") from None


def _kill(pids: set[int]) -> None:
    """SIGKILL processes that are not our children, and poll until they are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive := [p for p in pids if running(p)]:
        if time.monotonic() > deadline:
            raise StackError(f"processes {alive} survived SIGKILL for {STOP_TIMEOUT}s")
        time.sleep(POLL)


def _cgroup_members(procs: Path) -> list[int]:
    """The processes in a cgroup, none if a shim has just removed it (its container exited)."""
    try:
        return [int(pid) for pid in procs.read_text().split()]
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENODEV):
            return []
        raise


def running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (an exited shim waits for init to reap it)."""
    return start_time(pid) is not None


def _processes() -> Iterator[Path]:
    return (p for p in Path("/proc").iterdir() if p.name.isdigit())


def _pids_with(text: str) -> list[int]:
    """Live processes whose command line contains `text`."""
    found = []
    for proc in _processes():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and running(int(proc.name)):
            found.append(int(proc.name))
    return found


def pids_seeing_mounts_below(directory: Path) -> list[int]:
    """Processes with a mount below `directory` in their mount namespace, or whose root is an overlay
    of directories below it (a container's: it does not see the mount points of its layers)."""
    found = []
    for proc in _processes():
        with contextlib.suppress(OSError):  # gone, or a zombie (no namespace any more)
            if f"{directory}/" in (proc / "mountinfo").read_text():
                found.append(int(proc.name))
    return found


def _pids_in_namespace(namespace: str) -> list[int]:
    """Processes in mount namespace `namespace` ("mnt:[inode]"); only meaningful while it exists."""
    found = []
    for proc in _processes():
        with contextlib.suppress(OSError):
            if os.readlink(proc / "ns" / "mnt") == namespace:
                found.append(int(proc.name))
    return found


@contextlib.contextmanager
def start_stack(base: Path) -> Iterator[StargzStack]:
    """Start the stack under `base` (an empty directory with a short path: unix socket paths below it
    must fit in 108 bytes); stopped, deleted and checked on exit."""
    if not STARGZ_GRPC.exists():
        raise StackError(f"{STARGZ_GRPC} missing: run `make install` (builds the stargz snapshotter)")
    stack = None
    try:
        with start_registry(base / "registry", access_log=True) as registry:
            stack = StargzStack(base, registry, namespace=f"ctr-remote-lazypull-{os.getpid()}")
            try:
                stack._start()
                yield stack
            finally:
                stack._stop()
    finally:
        if stack is not None:
            stack._check_and_delete()
