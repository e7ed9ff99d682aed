"""Stop conditions (period, early exit, --wait-on-line, --wait-on-signal, StopSignal) and cleanup when
the profiler itself is interrupted (SIGINT, SIGTERM) or cancelled in the middle of a workload."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ctr_remote.cancel import CancelToken
from ctr_remote.errors import Cancelled
from ctr_remote.profile import Workload, profile
from ctr_remote.profile.workload import RecorderKind
from tests.helpers.images import LayerBuilder, image_config
from tests.helpers.processes import signal_a_thread
from tests.profile.conftest import (
    RECORDERS,
    SENTINEL,
    start_driver,
    start_sleeping_workload,
    wait_for_line,
)

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def workload_output(out: str) -> list[str]:
    """Captured stdout without the profiler's own log lines."""
    return [line for line in out.splitlines() if not _LOG_LINE.match(line)]


def test_period_ends_a_running_workload(run) -> None:
    started = time.monotonic()
    result = run(f"cat /etc/group; sleep {SENTINEL}", period=1)
    assert result.exit_code is None
    assert time.monotonic() - started < 1 + 5 + 10  # the period, plus start-up and kill allowances
    assert "bin/busybox" in result.accessed[0]


def test_workload_exiting_early_ends_the_run(run) -> None:
    started = time.monotonic()
    result = run("exit 0", period=600)
    assert result.exit_code == 0
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("recorder", RECORDERS)
def test_wait_on_line_stops_at_the_first_matching_stdout_line(run, capfd) -> None:
    started = time.monotonic()
    script = f"echo starting; cat /etc/group >/dev/null; echo server READY now; sleep {SENTINEL}"
    result = run(script, wait_on_line="READY", period=600)
    assert result.exit_code is None
    assert time.monotonic() - started < 60
    assert workload_output(capfd.readouterr().out) == ["starting", "server READY now"]  # still shown
    assert result.accessed[0] == ["etc/passwd", "etc/group", "bin/busybox"]


def test_image_stop_signal_is_sent_first(run, capfd) -> None:
    config = image_config(
        cmd=["/bin/sh", "-c", f"trap 'echo GOT-TERM; exit 0' TERM; echo up; sleep {SENTINEL} & wait"],
        stop_signal="SIGTERM",
    )
    result = run(None, config=config, wait_on_line="up")
    assert result.exit_code is None
    assert workload_output(capfd.readouterr().out) == ["up", "GOT-TERM"]


@pytest.fixture
def data_layer(tmp_path: Path) -> Path:
    return (
        LayerBuilder()
        .file("data/before.txt", b"b")
        .file("data/after.txt", b"a")
        .write(tmp_path / "data.tar.gz")
    )


@pytest.mark.parametrize("to_a_thread", [False, True], ids=["to-the-process", "to-a-thread"])
def test_wait_on_signal_ignores_the_period_and_stops_on_sigint(
    tmp_path: Path, work: Path, busybox_layer: Path, data_layer: Path, to_a_thread: bool
) -> None:
    # The workload outlives its 1 s period (it prints LATER after 2 s), then waits to be stopped.
    script = "cat /data/before.txt; echo; echo READY; sleep 2; echo LATER; cat /data/after.txt; echo; "
    script += f"sleep {SENTINEL}"
    proc, result_file = start_driver(
        tmp_path,
        work,
        [busybox_layer, data_layer],
        image_config(cmd=["/bin/sh", "-c", script]),
        {"wait_on_signal": True, "period": 1},
        stdout=subprocess.PIPE,
    )
    try:
        wait_for_line(proc, "LATER")
        wait_for_line(proc, "a")
        if to_a_thread:  # the kernel may pick any thread; only the main one runs Python's handlers
            signal_a_thread(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    result = json.loads(result_file.read_text())
    assert result["exit_code"] is None
    assert result["accessed"][1] == ["data/before.txt", "data/after.txt"]


@pytest.mark.parametrize("recorder", RECORDERS)
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupting_the_profiler_mid_workload_cleans_up(
    tmp_path: Path,
    work: Path,
    busybox_layer: Path,
    data_layer: Path,
    sig: signal.Signals,
    status: int,
    recorder: str,
) -> None:
    """The `work` fixture then checks: no mounts (a fanotify event's descriptor would keep the overlay
    busy), no processes (FUSE, runc, the workload), no files."""
    proc, result_file = start_sleeping_workload(tmp_path, work, [busybox_layer, data_layer], recorder)
    try:
        assert any(str(work) in line for line in Path("/proc/mounts").read_text().splitlines())
        (state_root,) = work.glob("ctr-remote-profile-*/runc")
        running = subprocess.run(
            ["runc", "--root", str(state_root), "list", "-q"], capture_output=True, text=True
        )
        assert running.stdout.startswith("ctr-remote-profile-")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == status, err
    assert not state_root.exists()
    assert (
        "ctr-remote-profile-"
        not in subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout
    )
    if sig is signal.SIGTERM:
        assert err.decode().splitlines()[-1] == "ctr-remote: terminated by SIGTERM"
    assert not result_file.exists()


@pytest.mark.parametrize("recorder", RECORDERS)
def test_cancel_kills_a_running_workload_and_raises_cancelled(
    work: Path, busybox_layer: Path, recorder: str
) -> None:
    """The token of a batch (another job failed under --fail-fast, or the batch was interrupted) set
    from another thread while the workload runs: the container goes at once, not at the end of its
    600 s period, and the record cut short is not returned. The `work` fixture checks the cleanup."""
    cancel, done = CancelToken(), threading.Event()

    def cancel_once_running() -> None:
        deadline = time.monotonic() + 60
        while not list(work.glob("ctr-remote-profile-*/bundle/started")):  # runc's poststart hook
            if done.wait(0.01) or time.monotonic() > deadline:  # condition poll
                return
        cancel.cancel()

    canceller = threading.Thread(target=cancel_once_running)
    canceller.start()
    started = time.monotonic()
    try:
        with pytest.raises(Cancelled):
            profile(
                [busybox_layer],
                image_config(cmd=["/bin/sh", "-c", f"sleep {SENTINEL}"]),
                Workload(period=600, recorder=RecorderKind(recorder)),
                workdir=work,
                cancel=cancel,
            )
    finally:
        done.set()
        canceller.join()
    assert cancel.cancelled  # not a failure before the workload ran
    assert time.monotonic() - started < 60
