"""Stopping a batch: Ctrl-C stops the running jobs' conversions at once (exit 130, nothing left);
under --fail-fast the first failure stops the job converting beside it. A job whose workload is
running under runc is stopped at once too, not at the end of its period; and an interrupted batch
still writes its --report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ctr_remote.image import open_store, parse_reference
from tests.conftest import Oracle
from tests.helpers.images import LayerBuilder, image_config
from tests.helpers.processes import signal_a_thread
from tests.helpers.sample import publish, runnable_image
from tests.profile.conftest import SENTINEL, assert_no_leftovers

WAIT_SECONDS = 60.0
# ~50 MB of text per layer: about a second to convert, more under load; a stopped job does not log
# `converted` for it.
TEXT = b"".join(b"%08d the quick brown fox jumps over the lazy dog\n" % i for i in range(1_000_000))


def _slow_image(workdir: Path, name: str) -> tuple[str, set[str]]:
    image = runnable_image([LayerBuilder().file(f"{name}/{i}.txt", TEXT) for i in range(2)])
    with open_store(parse_reference(f"local://{workdir / name}")) as store:
        publish(store, image, workdir / f"push-{name}")
    return f"local://{workdir / name}", {b.desc.digest for b in image.layers}


def _batch(workdir: Path, jobs: list[dict[str, Any]], *args: str) -> subprocess.Popen[str]:
    file = workdir / "batch.yaml"
    file.write_text(yaml.safe_dump({"defaults": {"no_optimize": True}, "jobs": jobs}))
    return subprocess.Popen(
        [sys.executable, "-m", "ctr_remote", "--log-format", "json", "batch", *args, str(file)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(workdir / "tmp")},
    )  # fmt: skip


def _events(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines()]


def test_ctrl_c_stops_every_running_job(workdir: Path) -> None:
    (workdir / "tmp").mkdir()
    a, big_a = _slow_image(workdir, "a")
    b, big_b = _slow_image(workdir, "b")
    jobs = [{"optimize": {"source": src, "target": f"{src}-out:x"}} for src in (a, b)]
    p = _batch(workdir, jobs, "--jobs", "2")
    deadline = time.monotonic() + WAIT_SECONDS
    while not list((workdir / "tmp").glob("*/out/layer-*")):  # a conversion has started
        assert time.monotonic() < deadline and p.poll() is None, "no conversion started"
        time.sleep(0.01)  # condition poll
    signal_a_thread(p.pid, signal.SIGINT)  # not the main thread: it must still stop at once
    _, err = p.communicate(timeout=WAIT_SECONDS)
    assert p.returncode == 130, err
    events = _events(err)
    assert events[-1]["event"] == "interrupted"
    # Under load a layer may finish between the check above and the signal; not all four, which
    # would take the jobs to their end.
    converted = {e["source"] for e in events if e["event"] == "converted"}
    assert len(converted & (big_a | big_b)) < len(big_a | big_b), events
    assert list((workdir / "tmp").iterdir()) == []


def test_fail_fast_stops_the_job_converting_beside_the_failed_one(workdir: Path) -> None:
    (workdir / "tmp").mkdir()
    slow, big = _slow_image(workdir, "slow")
    bad = LayerBuilder().add(tarfile.TarInfo("bad-\udcff-name"), b"x")  # non-UTF-8: the writer refuses it
    with open_store(parse_reference(f"local://{workdir / 'bad'}")) as store:
        publish(store, runnable_image([bad]), workdir / "push-bad")
    jobs = [
        {"optimize": {"name": "slow", "source": slow, "target": f"{slow}-out:x"}},
        {
            "optimize": {
                "name": "bad",
                "source": f"local://{workdir / 'bad'}",
                "target": f"local://{workdir}/o:x",
                "require_converted": True,  # else the layer is copied unconverted, with a warning
            }
        },
    ]
    report = workdir / "report.json"
    p = _batch(workdir, jobs, "--jobs", "2", "--fail-fast", "--report", str(report))
    _, err = p.communicate(timeout=WAIT_SECONDS)
    assert p.returncode == 1, err
    statuses = {j["name"]: j["status"] for j in json.loads(report.read_text())["jobs"]}
    assert statuses["bad"] == "failed" and statuses["slow"] in ("cancelled", "skipped"), statuses
    converted = {e["source"] for e in _events(err) if e["event"] == "converted"}
    assert len(converted & big) < len(big)  # the slow job stopped halfway, or never started
    assert list((workdir / "tmp").iterdir()) == []


# Far longer than a stopped job may take: without being stopped it would run to the end of it.
PERIOD = 60
PROMPTLY = 30.0


def _publish(workdir: Path, name: str, layers: list[LayerBuilder], cmd: list[str]) -> str:
    with open_store(parse_reference(f"local://{workdir / name}")) as store:
        publish(store, runnable_image(layers, image_config(cmd=cmd)), workdir / f"push-{name}")
    return f"local://{workdir / name}"


def _sleeper(workdir: Path) -> str:
    """An image whose workload sleeps through any period (the sentinel: none may survive)."""
    return _publish(workdir, "sleeper", [LayerBuilder().busybox()], ["/bin/sh", "-c", f"sleep {SENTINEL}"])


def _started(tmp: Path) -> list[Path]:
    """The jobs' containers that runc has started (the poststart hook's marker)."""
    return list(tmp.glob("*/ctr-remote-profile-*/bundle/started"))


def _wait_for(p: subprocess.Popen[str], condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert p.poll() is None, f"the batch ended before {what}: {p.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # condition poll


def _assert_nothing_left(workdir: Path, state_roots: list[Path]) -> None:
    """No temp file, mount, runc or workload process, nor any of the runs' runc state roots."""
    assert [r for r in state_roots if r.exists()] == []
    assert_no_leftovers(workdir, workdir / "tmp")


def test_fail_fast_stops_a_running_workload_at_once(workdir: Path) -> None:
    """The failing job fails while the other job's workload runs (60 s period): that container is
    killed at once and the job reported `cancelled`, not run to the end of its period."""
    tmp, sync = workdir / "tmp", workdir / "sync"
    tmp.mkdir()
    sync.mkdir()
    sleeper = _sleeper(workdir)
    # Its workload ends once the test says so, then its conversion fails: the failure comes while
    # the sleeper's workload is running.
    bad = _publish(
        workdir,
        "bad",
        [LayerBuilder().busybox(), LayerBuilder().add(tarfile.TarInfo("bad-\udcff-name"), b"x")],
        ["/bin/sh", "-c", "while [ ! -e /sync/go ]; do sleep 0.05; done"],
    )
    workload = {"no_optimize": False, "period": PERIOD}
    jobs = [
        {"optimize": {"name": "sleeper", "source": sleeper, "target": f"local://{workdir}/o1:x", **workload}},
        {
            "optimize": {
                "name": "bad",
                "source": bad,
                "target": f"local://{workdir}/o2:x",
                "require_converted": True,  # else the layer is copied unconverted, with a warning
                "mount": [f"type=bind,src={sync},dst=/sync,options=rbind:ro"],
                **workload,
            }
        },
    ]
    report = workdir / "report.json"
    p = _batch(workdir, jobs, "--jobs", "2", "--fail-fast", "--report", str(report))
    _wait_for(p, lambda: len(_started(tmp)) == 2, "both workloads to run")
    state_roots = list(tmp.glob("*/ctr-remote-profile-*/runc"))
    assert len(state_roots) == 2
    started = time.monotonic()
    (sync / "go").touch()
    _, err = p.communicate(timeout=PERIOD + WAIT_SECONDS)
    elapsed = time.monotonic() - started
    assert p.returncode == 1, err
    assert elapsed < PROMPTLY, f"the batch took {elapsed:.1f}s after the failure"
    jobs_ = {j["name"]: j for j in json.loads(report.read_text())["jobs"]}
    assert jobs_["bad"]["status"] == "failed" and "UTF-8" in jobs_["bad"]["error"], jobs_
    assert jobs_["sleeper"]["status"] == "cancelled", jobs_
    _assert_nothing_left(workdir, state_roots)


@pytest.mark.parametrize(
    ("sig", "status", "message"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated by SIGTERM")],
    ids=["SIGINT", "SIGTERM"],
)
def test_interrupt_stops_a_running_workload_and_writes_the_report(
    workdir: Path, oracle: Oracle, sig: signal.Signals, status: int, message: str
) -> None:
    """One job done, one with its workload running (60 s period), one not started (--jobs 1): the
    signal ends the batch at once with its usual exit code and last line, and the report says so."""
    tmp = workdir / "tmp"
    tmp.mkdir()
    sleeper = _sleeper(workdir)
    jobs = [
        {
            "convert": {
                "name": "done",
                "source": sleeper,
                "target": f"local://{workdir}/o1:x",
                "estargz": True,
            }
        },
        {
            "optimize": {
                "name": "running",
                "source": sleeper,
                "target": f"local://{workdir}/o2:x",
                "no_optimize": False,
                "period": PERIOD,
            }
        },
        {
            "convert": {
                "name": "queued",
                "source": sleeper,
                "target": f"local://{workdir}/o3:x",
                "estargz": True,
            }
        },
    ]
    report = workdir / "report.json"
    p = _batch(workdir, jobs, "--jobs", "1", "--report", str(report))
    _wait_for(p, lambda: len(_started(tmp)) == 1, "the workload to run")
    state_roots = list(tmp.glob("*/ctr-remote-profile-*/runc"))
    started = time.monotonic()
    p.send_signal(sig)
    out, err = p.communicate(timeout=PERIOD + WAIT_SECONDS)
    elapsed = time.monotonic() - started
    assert p.returncode == status, err
    assert elapsed < PROMPTLY, f"the batch took {elapsed:.1f}s after {sig.name}"
    events = _events(err)
    assert events[-1]["event"] == message and events[-1]["exit_code"] == status, events[-1]
    assert not [e for e in events if e.get("level") == "error" and e is not events[-1]], events
    rep = json.loads(report.read_text())
    assert rep["interrupted"] == sig.name and rep["ok"] is False, rep
    statuses = {j["name"]: j["status"] for j in rep["jobs"]}
    assert statuses == {"done": "ok", "running": "cancelled", "queued": "skipped"}, rep
    assert rep["jobs"][0]["digest"] == out.split()[1]  # as printed when it finished
    oracle.check_batch(rep)  # the job that finished wrote a whole image
    _assert_nothing_left(workdir, state_roots)
