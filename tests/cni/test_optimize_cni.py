"""`ctr-remote image optimize --cni` end to end: two runs at the same time share the test bridge with
different addresses and both clean up; an interrupted run releases its network."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ctr_remote.image import open_store, parse_reference
from ctr_remote.profile.cni import DEFAULT_NETNS_DIR
from tests.cni.conftest import HELLO, PLUGIN_DIR, CniPlayground
from tests.conftest import ROOT, Oracle
from tests.helpers.images import BUSYBOX_APPLETS, LayerBuilder, image_config
from tests.helpers.oci import push
from tests.helpers.sample import runnable_image


def _netns_pins() -> set[str]:
    return set(p.name for p in DEFAULT_NETNS_DIR.iterdir()) if DEFAULT_NETNS_DIR.exists() else set()


def _held_image(pg: CniPlayground) -> Path:
    """An OCI layout whose workload fetches from the test host, prints its address and "fetched", then
    holds its network until the test publishes go.txt on the test host, and reads /data/after.txt."""
    go_url = pg.url.replace("hello.txt", "go.txt")
    script = (
        "#!/bin/sh\nset -e\n"
        "ip -o -4 addr show eth0\n"
        f"wget -q -O /tmp/page {pg.url}\n"
        f"grep -qx '{HELLO.strip()}' /tmp/page\n"
        "echo fetched\n"
        # Hold the network until the test releases it (by then, concurrent runs overlap for sure).
        f"until wget -q -O /dev/null {go_url} 2>/dev/null; do sleep 0.05; done\n"
        "cat /data/after.txt\n"
    )
    base = LayerBuilder().busybox(applets=(*BUSYBOX_APPLETS, "wget"))
    app = LayerBuilder().file("app/run.sh", script.encode(), mode=0o755).file("data/after.txt", b"after\n")
    source = pg.tmp / "source"
    push(
        open_store(parse_reference(f"local://{source}")),
        runnable_image([base, app], image_config(cmd=["/app/run.sh"])),
        pg.tmp / "push",
    )
    return source


def _start_optimize(pg: CniPlayground, source: Path, name: str, **popen: Any) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "ctr_remote", "image", "optimize", "--period", "120",
        "--cni", "--cni-plugin-conf-dir", str(pg.conf_dir), "--cni-plugin-dir", str(PLUGIN_DIR),
        "--record-out", str(pg.tmp / f"record-{name}.json"),
        f"local://{source}", f"local://{pg.tmp / f'out-{name}'}",
    ]  # fmt: skip
    with (pg.tmp / f"stderr-{name}").open("w") as stderr:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, **popen
        )


def _stderr(pg: CniPlayground, names: str = "ab") -> str:
    return "".join((pg.tmp / f"stderr-{name}").read_text() for name in names)


def test_two_optimize_runs_with_cni_at_once(playground: CniPlayground, oracle: Oracle) -> None:
    pg = playground
    pg.write_bridge_conf()
    source = _held_image(pg)
    pins_before = _netns_pins()
    runs = [_start_optimize(pg, source, name) for name in ("a", "b")]
    try:
        outputs: list[list[str]] = []
        for proc in runs:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(2)]
            assert lines[1] == "fetched\n", (lines, _stderr(pg))
            outputs.append(lines)
        (pg.tmp / "www" / "go.txt").write_text("go\n")  # both containers are up: release them
        for proc, lines in zip(runs, outputs, strict=True):
            rest, _ = proc.communicate(timeout=300)
            lines.append(rest)
            assert proc.returncode == 0, _stderr(pg)
    finally:
        for proc in runs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
    # `ip -o -4 addr` inside each container: "2: eth0    inet 10.x.y.z/24 brd ..."
    addresses = [ipaddress.ip_interface(lines[0].split(" inet ")[1].split()[0]) for lines in outputs]
    assert addresses[0] != addresses[1]
    assert all(a.network == pg.subnet for a in addresses)
    for name, lines in zip("ab", outputs, strict=True):
        assert lines[2].startswith("after\n")  # then the CLI prints the target's digest
        recorded = [
            json.loads(line)["path"] for line in (pg.tmp / f"record-{name}.json").read_text().splitlines()
        ]
        assert recorded[-1] == "data/after.txt"
        assert "app/run.sh" in recorded
        oracle.check_image(pg.tmp / f"out-{name}")
    assert _netns_pins() - pins_before == set()
    pg.assert_clean()


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_optimize_run_releases_its_cni_network(
    playground: CniPlayground, signum: signal.Signals, exit_code: int
) -> None:
    """Ctrl-C (to the whole process group, as a terminal does) or SIGTERM while the container is on the
    network: the run ends with the usual status and DEL, namespace removal and IPAM release all happen."""
    pg = playground
    pg.write_bridge_conf()
    source = _held_image(pg)
    pins_before = _netns_pins()
    proc = _start_optimize(pg, source, "a", start_new_session=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[1] == "fetched\n", (lines, _stderr(pg, "a"))
        assert len(pg.allocations()) == 1
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == exit_code, _stderr(pg, "a")
    assert _netns_pins() - pins_before == set()
    assert not (pg.tmp / "out-a" / "index.json").exists()
    pg.assert_clean()
