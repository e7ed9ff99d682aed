"""Ctrl-C (SIGINT) in the middle of a run: exit 130 at once, one line, no temp files, the target
untouched. (SIGTERM during conversion: tests/optimize/test_progress.py.)"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ctr_remote.image import open_store, parse_reference
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.images import LayerBuilder
from tests.helpers.processes import signal_a_thread
from tests.helpers.registry import RegistryServer
from tests.helpers.sample import app_layers, publish, runnable_image

WAIT_SECONDS = 60.0


def _start(tmp: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ctr_remote", "--log-format", "json", "image", "optimize", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip


def _wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # condition poll


def _interrupt(p: subprocess.Popen[str], *, to_a_thread: bool = False) -> tuple[str, float]:
    started = time.monotonic()
    if to_a_thread:
        signal_a_thread(p.pid, signal.SIGINT)
    else:
        p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=WAIT_SECONDS)
    return err, time.monotonic() - started


def test_ctrl_c_during_conversion_stops_the_running_layers(workdir: Path) -> None:
    """Layers being converted give up at once rather than converting to the end first, even when the
    kernel hands the signal to a converting thread rather than the main one (CI saw that)."""
    text = b"".join(b"%08d the quick brown fox jumps over the lazy dog\n" % i for i in range(1_000_000))
    layers = [LayerBuilder().busybox(), *(LayerBuilder().file(f"data/{i}.txt", text) for i in range(3))]
    image = runnable_image(layers)
    big = {
        blob.desc.digest for blob in image.layers[1:]
    }  # ~50 MB of text each: ~1 s to convert, more under load
    src, tmp = workdir / "src", workdir / "tmp"
    tmp.mkdir()
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, image, workdir / "push")
    p = _start(tmp, "--no-optimize", f"local://{src}", f"local://{workdir / 'dst'}")
    _wait_for(lambda: any(tmp.glob("*/out/layer-*")), "a conversion to start")
    sent = datetime.datetime.now(datetime.UTC)
    err, _ = _interrupt(p, to_a_thread=True)
    assert p.returncode == 130, err
    events = [json.loads(line) for line in err.splitlines()]  # JSON lines only
    assert events[-1]["event"] == "interrupted"
    # The small busybox layer may have finished, and a big one that was already ending when the
    # signal came (a loaded machine may have delayed the poll above); none converts to the end
    # after it: running conversions stop at their next write, queued ones never start.
    late = [
        e
        for e in events
        if e["event"] == "converted"
        and e["source"] in big
        and datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) - sent
        > datetime.timedelta(seconds=0.25)
    ]
    assert not late, (sent.isoformat(), [(e["event"], e.get("source"), e["timestamp"]) for e in events])
    converted = [e for e in events if e["event"] == "converted" and e["source"] in big]
    assert len(converted) < len(big), converted  # the queued ones never even started
    assert list(tmp.iterdir()) == []
    assert not (workdir / "dst").exists()


def test_ctrl_c_during_push_leaves_the_target_tag(registry: RegistryServer, workdir: Path) -> None:
    with open_store(registry.reference("app:src"), registry.options()) as store:
        before = publish(store, runnable_image(app_layers()), workdir / "push")
    with open_store(registry.reference("app:out"), registry.options()) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    tmp = workdir / "tmp"
    tmp.mkdir()
    with FaultProxy(registry.host) as proxy:
        held = proxy.add(Fault("barrier", path=r"/blobs/uploads/", method="PUT", parties=99, timeout=2))
        p = _start(
            tmp, "--plain-http", "--no-optimize", registry.ref("app:src"), f"http://{proxy.host}/app:out"
        )
        _wait_for(lambda: held.hits > 0, "an upload to reach the registry")
        err, _ = _interrupt(p)
    assert p.returncode == 130, err
    assert json.loads(err.splitlines()[-1])["event"] == "interrupted"
    assert list(tmp.iterdir()) == []
    head = httpx.head(
        registry.url("/v2/app/manifests/out"),
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert head.headers["Docker-Content-Digest"] == before.digest


def test_a_failing_layer_stops_the_others_and_is_the_error_shown(workdir: Path) -> None:
    """The first layer is slow, the second fails at once: the run ends with the second's error and the
    first is not converted to the end."""
    import tarfile

    text = b"".join(b"%08d the quick brown fox jumps over the lazy dog\n" % i for i in range(1_000_000))
    slow = LayerBuilder()
    for i in range(3):
        slow.file(f"data/{i}.txt", text)
    bad = LayerBuilder().add(tarfile.TarInfo("bad-\udcff-name"), b"x")  # non-UTF-8: the writer refuses it
    image = runnable_image([slow, bad])
    src, tmp = workdir / "src", workdir / "tmp"
    tmp.mkdir()
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, image, workdir / "push")
    # --require-converted: such a layer fails the run (without it, it would be copied unconverted).
    p = _start(tmp, "--no-optimize", "--require-converted", f"local://{src}", f"local://{workdir / 'dst'}")
    _, err = p.communicate(timeout=WAIT_SECONDS)
    assert p.returncode == 1, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert not [e for e in events if e["event"] == "converted"], events  # the slow layer gave up
    assert "UTF-8" in events[-1]["event"], events[-1]
    assert list(tmp.iterdir()) == []
