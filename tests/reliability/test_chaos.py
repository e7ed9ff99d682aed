"""The chaos test: a signal in each phase of a run (pull, workload, conversion, push): SIGINT, SIGTERM,
SIGINT then SIGTERM 50 ms later, and SIGKILL followed by a normal run. After each: no temp dir, mount,
run record, netns pin, container or helper process (runc, FUSE daemon, janitor) is left, the exit
code and message are the first signal's, and the target is unchanged unless the run completed.
Each case keeps its run records in a directory of its own (CTR_REMOTE_RUNS_DIR): another suite
starting a run at the same time would otherwise sweep a killed run's record itself, racing the
janitor the test waits for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ctr_remote.image import open_store
from tests.conftest import Oracle
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.images import LayerBuilder
from tests.helpers.processes import children, cmdline, janitors_of, still_running, wait_gone
from tests.helpers.registry import RegistryServer
from tests.helpers.sample import app_layers, publish, runnable_image

WAIT_SECONDS = 120.0
NETNS_DIR = Path("/run/ctr-remote/netns")
# The workload phase's sleep: unique to this pytest process, so no other suite's workload matches it.
SENTINEL = f"97{os.getpid() % 10_000:04d}"
# ~20 MB of text: converting it takes long enough to be caught in the middle.
BIG_TEXT = b"".join(b"%08d the quick brown fox jumps over the lazy dog\n" % i for i in range(400_000))
ACCEPT = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Outcome:
    code: int
    event: str


OUTCOMES = {
    "INT": Outcome(130, "interrupted"),
    "TERM": Outcome(143, "terminated by SIGTERM"),
    "INT+TERM": Outcome(130, "interrupted"),  # the first signal's, whatever follows
}


def poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # condition poll


class Case:
    def __init__(self, registry: RegistryServer, proxy: FaultProxy, workdir: Path, phase: str) -> None:
        self.registry, self.proxy, self.phase = registry, proxy, phase
        self.tmp = workdir / "tmp"
        self.tmp.mkdir()
        self.env = {**os.environ, "TMPDIR": str(self.tmp), "CTR_REMOTE_RUNS_DIR": str(workdir / "runs")}
        self.runs = workdir / "runs"
        layers = app_layers()
        if phase == "conversion":
            layers.append(LayerBuilder().file("data/big.txt", BIG_TEXT))
        with open_store(registry.reference("app:src"), registry.options()) as store:
            publish(store, runnable_image(layers), workdir / "push")
        with open_store(registry.reference("app:out"), registry.options()) as store:
            self.before = publish(store, runnable_image(app_layers()), workdir / "push").digest

    def args(self, *, via_proxy: bool, sleep: bool) -> list[str]:
        host = self.proxy.host if via_proxy else self.registry.host
        script = "cat /app/data.txt" + (f"; echo READY; sleep {SENTINEL}" if sleep else "")
        return [
            sys.executable, "-m", "ctr_remote", "--log-format", "json", "image", "optimize", "--plain-http",
            "--period", "600", "--entrypoint", '["/bin/sh", "-c"]', "--args", json.dumps([script]),
            f"http://{host}/app:src", f"http://{host}/app:out",
        ]  # fmt: skip

    def start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.args(via_proxy=True, sleep=self.phase == "workload"), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
        )  # fmt: skip

    def reach_phase(self, p: subprocess.Popen[bytes]) -> Fault | None:
        """Return once `p` is in the phase (a held request, the workload's line, a layer converting)."""
        if self.phase in ("pull", "push"):
            fault = self.proxy.add(
                Fault("hold", path=r"/v2/app/blobs/sha256:", method="GET", times=-1, timeout=WAIT_SECONDS)
                if self.phase == "pull"
                else Fault("hold", path=r"/blobs/uploads/", method="PUT", times=-1, timeout=WAIT_SECONDS)
            )
            assert fault.wait_hits(1, WAIT_SECONDS), f"no request of the {self.phase} phase"
            return fault
        if self.phase == "workload":
            assert p.stdout is not None
            seen = b""
            while b"READY" not in seen:
                line = p.stdout.readline()
                assert line, f"ended before the workload was ready: {p.stderr.read() if p.stderr else ''}"
                seen += line
            return None
        poll(lambda: any(self.tmp.glob("*/out/layer-*")), "a conversion to start")
        return None

    def target(self) -> str:
        head = httpx.head(self.registry.url("/v2/app/manifests/out"), headers={"Accept": ACCEPT})
        return head.headers["Docker-Content-Digest"]

    def assert_nothing_left(self, pid: int, helpers: list[tuple[int, int]]) -> None:
        assert list(self.tmp.iterdir()) == [], "temp files left behind"
        mounts = [m for m in Path("/proc/mounts").read_text().splitlines() if str(self.tmp) in m]
        assert not mounts, f"mounts left behind: {mounts}"
        assert not list(self.runs.glob(f"{pid}-*")), "run record left behind"
        pins = list(NETNS_DIR.glob(f"ctr-remote-profile-{pid}-*")) if NETNS_DIR.exists() else []
        assert not pins, f"netns pins left behind: {pins}"
        alive = still_running(helpers)
        assert not alive, f"processes left behind: {alive}"
        sleepers = [
            e for e in os.listdir("/proc") if e.isdigit() and cmdline(int(e)).startswith(f"sleep {SENTINEL}")
        ]
        assert not sleepers, "the workload was left running"


@pytest.mark.parametrize("how", ["INT", "TERM", "INT+TERM", "KILL"])
@pytest.mark.parametrize("phase", ["pull", "workload", "conversion", "push"])
def test_signal_in_each_phase_leaves_nothing(
    registry: RegistryServer, workdir: Path, oracle: Oracle, phase: str, how: str
) -> None:
    with FaultProxy(registry.host) as proxy:
        case = Case(registry, proxy, workdir, phase)
        p = case.start()
        try:
            fault = case.reach_phase(p)
            helpers = children(p.pid)  # runc, the recorder's process (in the workload), the janitor
            janitors = janitors_of(helpers)
            if how == "KILL":
                p.send_signal(signal.SIGKILL)
            else:
                p.send_signal(signal.SIGINT if how.startswith("INT") else signal.SIGTERM)
                if how == "INT+TERM":
                    time.sleep(0.05)  # the second signal, 50 ms after the first (not a synchronisation)
                    p.send_signal(signal.SIGTERM)
            if fault is not None:
                fault.release()
            _, err = p.communicate(timeout=WAIT_SECONDS)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
    if how == "KILL":
        assert len(janitors) == 1, helpers
        wait_gone(janitors[0])
    else:
        lines = err.decode().splitlines()
        assert p.returncode == OUTCOMES[how].code, err
        assert json.loads(lines[-1])["event"] == OUTCOMES[how].event, lines[-1]
        assert "Traceback" not in err.decode()
    case.assert_nothing_left(p.pid, helpers)
    assert case.target() == case.before, "the target changed although the run did not complete"
    if how == "KILL":
        done = subprocess.run(
            case.args(via_proxy=False, sleep=False),
            capture_output=True, env=case.env, timeout=WAIT_SECONDS,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert list(case.tmp.iterdir()) == []
        assert case.target() != case.before
        oracle.check_image(f"{registry.host}/app:out")  # nothing the killed run left got in
