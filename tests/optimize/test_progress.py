"""Progress: one log line per layer step in CI; live per-layer lines on a terminal."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from ctr_remote.image import open_store, parse_reference
from tests.conftest import Oracle
from tests.helpers.sample import app_layers, publish, runnable_image
from tests.optimize.conftest import Cli


def _source(workdir: Path) -> Path:
    src = workdir / "src"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    return src


def _read_terminal(primary: int) -> str:
    """Everything written to the pseudo-terminal until the child closes it."""
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode()


@pytest.mark.unit
def test_ci_gets_one_log_line_per_layer_step(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    src = _source(workdir)
    run = cli.optimize("--no-optimize", f"local://{src}", f"local://{workdir / 'dst'}")
    events = run.events
    for step in ("pull", "converted", "push"):
        assert len([e for e in events if e["event"] == step]) == 3, (step, events)
    report = oracle.check_image(workdir / "dst")
    assert report["manifests"][0]["digest"] == run.digest


@pytest.mark.unit
def test_terminal_gets_live_layer_lines(workdir: Path, oracle: Oracle) -> None:
    src = _source(workdir)
    primary, secondary = pty.openpty()
    p = subprocess.Popen(
        [sys.executable, "-m", "ctr_remote", "image", "optimize", "--no-optimize", f"local://{src}",
         f"local://{workdir / 'dst'}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary,
    )  # fmt: skip
    os.close(secondary)
    screen = _read_terminal(primary)
    out, _ = p.communicate(timeout=120)
    os.close(primary)
    assert p.returncode == 0, screen
    assert out.decode().startswith("sha256:")  # the digest alone on stdout
    assert "\x1b[" in screen  # lines redrawn in place
    assert screen.count("push done") >= 3
    assert oracle.check_image(workdir / "dst")["manifests"][0]["digest"] == out.decode().strip()


@pytest.mark.unit
def test_sigterm_during_conversion_leaves_nothing(workdir: Path) -> None:
    """SIGTERM while a big layer converts: exit 143, one line, temp files removed."""
    import random
    import signal
    import time

    from tests.helpers.images import LayerBuilder

    rng = random.Random(7)
    big = LayerBuilder().busybox()
    for i in range(40):
        big.file(f"data/{i}.bin", rng.randbytes(1 << 20))
    src = workdir / "src"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image([big]), workdir / "push")
    tmp = workdir / "tmp"
    tmp.mkdir()
    p = subprocess.Popen(
        [sys.executable, "-m", "ctr_remote", "--log-format", "json", "image", "optimize", "--no-optimize",
         f"local://{src}", f"local://{workdir / 'dst'}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    assert p.stderr is not None
    for line in p.stderr:  # the pull of the layer is logged once it is done: conversion starts next
        if '"event": "pull"' in line:
            break
    deadline = time.monotonic() + 60
    while not any(tmp.glob("*/out/layer-*")) and time.monotonic() < deadline:
        time.sleep(0.01)  # condition poll: the converted layer's file appears
    if not any(tmp.glob("*/out/layer-*")):  # the deadline passed
        p.kill()
        pytest.fail(f"no layer conversion started within 60 s: {p.communicate(timeout=60)[1]}")
    p.send_signal(signal.SIGTERM)
    rest = p.stderr.read()
    p.wait(timeout=60)
    assert p.returncode == 143, rest
    last = json.loads(rest.splitlines()[-1])
    assert (last["event"], last["level"], last["exit_code"]) == ("terminated by SIGTERM", "error", 143)
    assert "Traceback" not in rest
    assert list(tmp.iterdir()) == []
    assert not (workdir / "dst" / "index.json").exists()


def test_live_lines_never_erase_the_workload_output(workdir: Path, oracle: Oracle) -> None:
    """stdout and stderr on one 60-column terminal: the live block is left in place before the
    workload writes, so no redraw moves the cursor up over the workload's lines, and every live line
    fits in one row (a wrapped one would make the next redraw move up too little)."""
    import fcntl
    import re
    import struct
    import termios

    src = _source(workdir)
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 60, 0, 0))
    p = subprocess.Popen(
        [sys.executable, "-m", "ctr_remote", "image", "optimize", "--period", "20", f"local://{src}",
         f"local://{workdir / 'dst'}"],
        stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary,
    )  # fmt: skip
    os.close(secondary)
    screen = _read_terminal(primary)
    p.wait(timeout=120)
    os.close(primary)
    assert p.returncode == 0, screen
    after = screen.split("workload-done\r\n", 1)[1]
    rows_below = 0  # how far the cursor is below the workload's last line
    for token in re.findall(r"\x1b\[(\d+)F|(\n)", after):
        rows_below += 1 if token[1] else -int(token[0])
        assert rows_below >= 0, "a redraw moved up over the workload's output"
    live = [line for line in re.split(r"\r\n|\x1b\[J", screen) if " done (" in line or line.endswith("...")]
    assert live and all(len(re.sub(r"\x1b\[\d+F", "", line)) < 60 for line in live), live
    oracle.check_image(workdir / "dst")
