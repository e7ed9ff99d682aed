"""Stopping a batch: Ctrl-C stops the running jobs' conversions at once (exit 130, nothing left);
under --fail-fast the first failure stops the job converting beside it."""

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

import yaml

from ctr_remote.image import open_store, parse_reference
from tests.helpers.images import LayerBuilder
from tests.helpers.processes import signal_a_thread
from tests.helpers.sample import publish, runnable_image

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
