"""Interrupts and failures stop every transfer promptly, through a real socket: the fault proxy
holds requests, and nothing more reaches it once the run was interrupted or a transfer failed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ctr_remote.image import (
    DigestMismatchError,
    fetch_blobs,
    open_store,
    parse_reference,
    write_image,
)
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.oci import BuiltImage, build_image, push
from tests.helpers.registry import RegistryServer

PROMPT = 2.0  # seconds from the signal (or failure) to the transfer function or process being done


def _img(tag: str, n: int = 2) -> BuiltImage:
    return build_image([{f"{tag}/{i}": os.urandom(50_000)} for i in range(n)])


def _seed(registry: RegistryServer, workdir: Path, repo_tag: str) -> str:
    img = _img("old", 1)
    with open_store(registry.reference(repo_tag), registry.options()) as s:
        return push(s, img, workdir / "seed").digest


def _tag(registry: RegistryServer, repo_tag: str) -> str:
    with open_store(registry.reference(repo_tag), registry.options()) as s:
        return s.resolve().digest


def test_ctrl_c_cuts_off_held_uploads(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    old = _seed(registry, workdir, "cut:v1")
    img = _img("cut")
    blobs = []
    for b in img.blobs:
        (workdir / b.desc.digest[7:]).write_bytes(b.data)
        blobs.append((workdir / b.desc.digest[7:], b.desc))
    hold = fault_proxy.add(Fault("hold", path="/blobs/sha256:", method="HEAD", times=-1, timeout=15))
    at_signal: dict[str, float] = {}

    def interrupt() -> None:
        if hold.wait_hits(len(blobs)):  # every upload is blocked on the proxy
            at_signal.update(arrivals=fault_proxy.arrivals, time=time.monotonic())
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    ref = parse_reference(f"http://{fault_proxy.host}/cut:v1", plain_http=True)
    with open_store(ref, registry.options()) as s, pytest.raises(KeyboardInterrupt):
        write_image(s, blobs, [], (img.manifest.data, img.manifest.desc))
    assert time.monotonic() - at_signal["time"] < PROMPT
    hold.release()
    assert fault_proxy.arrivals == at_signal["arrivals"]  # no request after the signal
    assert _tag(registry, "cut:v1") == old


def test_first_failure_cuts_off_the_other_downloads(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    img = _img("fail")
    with open_store(registry.reference("fail:v1"), registry.options()) as s:
        push(s, img, workdir / "seed")
    held, bad = img.layers
    hold = fault_proxy.add(
        Fault("hold", path=f"/blobs/{held.desc.digest}", method="GET", times=-1, timeout=15)
    )
    fault_proxy.add(Fault("corrupt", path=f"/blobs/{bad.desc.digest}", method="GET", times=-1))
    out = workdir / "out"
    out.mkdir()
    start = time.monotonic()
    ref = parse_reference(f"http://{fault_proxy.host}/fail:v1", plain_http=True)
    with open_store(ref) as s, pytest.raises(DigestMismatchError):
        fetch_blobs(s, [(held.desc, out / "held"), (bad.desc, out / "bad")])
    assert time.monotonic() - start < PROMPT
    assert hold.hits <= 1  # the held download was not retried
    assert list(out.iterdir()) == []  # no temp file of either download left


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_interrupted_while_pushing_exits_at_once(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path, signum: int
) -> None:
    old = _seed(registry, workdir, "dst:v1")
    src = workdir / "src"
    with open_store(parse_reference(f"local://{src}")) as s:
        push(s, _img("cli"), workdir / "build")
    tmp = workdir / "tmp"
    tmp.mkdir()
    hold = fault_proxy.add(Fault("hold", path="/blobs/sha256:", method="HEAD", times=-1, timeout=15))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctr_remote", "image", "optimize", "--no-optimize", "--plain-http",
         f"local://{src}", f"http://{fault_proxy.host}/dst:v1"],
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert hold.wait_hits(3), "the 2 layers and the config were never pushed"
        arrivals = fault_proxy.arrivals
        proc.send_signal(signum)
        start = time.monotonic()
        _, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    hold.release()
    assert elapsed < PROMPT
    assert proc.returncode != 0
    assert err.decode().strip().splitlines()[-1].startswith("ctr-remote: "), err.decode()
    assert fault_proxy.arrivals == arrivals
    assert list(tmp.iterdir()) == []
    assert _tag(registry, "dst:v1") == old
