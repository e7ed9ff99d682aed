"""The real lazy-pulling stack of `../shared/tools/stargz-grpc`: docker-registry, containerd and the
stargz snapshotter (proxy plugin), started by its own scripts under a test-owned directory and port.

    with start_stack(tmp_dir) as stack:
        stack.ctr("image", "rpull", "--plain-http", stack.ref("app:esgz"))
        mark = stack.mark()
        ...                                   # run something
        stack.blob_fetches("app", digest, since=mark)

`stop()` (also on exit, pass or fail) runs `stop.sh --purge-all` and then checks that nothing is
left: no process the stack started, no mount below its directory, no cgroup of its namespace.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT
from tests.helpers.registry import free_port

TOOLS = Path(os.environ.get("STARGZ_TOOLS", ROOT.parent / "shared" / "tools" / "stargz-grpc"))
STARGZ_GRPC = Path(os.environ.get("STARGZ_GRPC", ROOT / "build" / "stargz-grpc"))
COMMAND_TIMEOUT = 120.0
LOG_TIMEOUT = 30.0
POLL = 0.05  # interval of the log/readiness probes below

# Combined log format of the registry's access log:
# 127.0.0.1 - - [date] "GET /v2/app/blobs/sha256:... HTTP/1.1" 206 1000000 "" "Go-http-client/1.1"
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)')
_PREFETCH = re.compile(
    r'prefetch_size=(?P<size>\d+) bytes" layer_sha="(?P<layer>sha256:[0-9a-f]{64})".*operation=prefetch_total'
)


class StackError(AssertionError):
    """A stack script failed; the message carries its output and the end of the stack's logs."""


@dataclass(frozen=True)
class Fetch:
    """One GET of a blob, as the registry logged it."""

    status: int
    size: int


@dataclass
class StargzStack:
    base: Path
    port: int
    namespace: str  # containerd namespace, also the name of runc's parent cgroups
    env: dict[str, str] = field(repr=False)

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ref(self, repo_tag: str) -> str:
        """As upstream `ctr-remote` and `estargz-check` take it (no scheme)."""
        return f"{self.registry}/{repo_tag}"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    def pid(self, name: str) -> int | None:
        f = self.base / "pids" / f"{name}.pid"
        return int(f.read_text()) if f.exists() else None

    def script(self, name: str, *args: str) -> str:
        p = subprocess.run(
            ["sh", str(TOOLS / name), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        if p.returncode != 0:
            what = f"{name} {' '.join(args)} exited {p.returncode}"
            raise StackError(f"{what}: {p.stderr}{p.stdout}\n{self.tails()}")
        return p.stdout

    def ctr(self, *args: str) -> str:
        """Upstream `ctr-remote` inside the stack's mount namespace (ctr.sh); returns its stdout."""
        return self.script("ctr.sh", *args)

    def tails(self, lines: int = 15) -> str:
        out = []
        for log in sorted(self.logs.glob("*.log")) if self.logs.exists() else []:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # --- the registry's access log -----------------------------------------------------------

    def _access_lines(self) -> list[str]:
        return (self.logs / "registry.log").read_text(errors="replace").splitlines()

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
        pid = self.pid("stargz")
        assert pid is not None, "stargz-grpc is not running"
        mounts = []
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
            pre, _, post = line.partition(" - ")
            if post.startswith("fuse"):
                mounts.append(pre.split()[4])
        return mounts

    # --- teardown ------------------------------------------------------------------------------

    def stop(self) -> None:
        """`stop.sh --purge-all`, then assert that the stack left nothing behind."""
        pids = [p for name in ("registry", "ns", "stargz", "containerd") if (p := self.pid(name))]
        self.script("stop.sh", "--purge-all")
        left = [p for p in pids if _alive(p)]
        left += _pids_with(str(self.base))
        assert not left, f"processes of the stack still running: {left}"
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        mounts = [line for line in mountinfo if str(self.base) in line]
        assert not mounts, f"mounts left below {self.base}: {mounts}"
        cgroups = list(Path("/sys/fs/cgroup").glob(f"*/{self.namespace}"))
        cgroups += [p for p in [Path("/sys/fs/cgroup") / self.namespace] if p.exists()]
        assert not cgroups, f"cgroups left behind: {cgroups}"
        for state in ("containerd", "stargz", "run", "registry"):
            assert not (self.base / state).exists(), f"{self.base / state} not purged"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids_with(text: str) -> list[int]:
    """Processes whose command line mentions `text` (shims carry the containerd socket path)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(proc.name))
    return found


@contextlib.contextmanager
def start_stack(base: Path) -> Iterator[StargzStack]:
    """Start the stack under `base` (a fresh directory) on a free port; stopped and purged on exit."""
    if not STARGZ_GRPC.exists():
        raise StackError(f"{STARGZ_GRPC} missing: run `make install` (builds the stargz snapshotter)")
    namespace = f"ctr-remote-lazypull-{os.getpid()}"
    port = free_port()
    env = {
        **os.environ,
        "BASE": str(base),
        "REG_PORT": str(port),
        "CTR_NS": namespace,
        "STARGZ_GRPC": str(STARGZ_GRPC),
    }
    stack = StargzStack(base=base, port=port, namespace=namespace, env=env)
    try:
        stack.script("start.sh")
        yield stack
    finally:
        stack.stop()
