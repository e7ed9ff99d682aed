"""`ctr-remote image optimize --gpus` / `--device` end to end, without a GPU: a fake `nvidia.com/gpu`
CDI spec whose createContainer hook reads the image's /etc/ld.so.conf (as NVIDIA's ldconfig hook does,
upstream #2128): that file is prioritized, the driver files read through the injected mount are not."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from ctr_remote.image import open_store, parse_reference
from tests.conftest import Oracle
from tests.helpers.images import LayerBuilder, image_config
from tests.helpers.sample import publish, runnable_image
from tests.optimize.conftest import Cli
from tests.optimize.test_optimize import layers_of, prioritized

# Reads the rootfs' /etc/ld.so.conf from the OCI state on stdin, and the driver library through the mount.
LDCONFIG_HOOK = """
import json, os, sys
state = json.load(sys.stdin)
with open(os.path.join(state["bundle"], "config.json")) as f:
    root = json.load(f)["root"]["path"]
for name in ("etc/ld.so.conf", "usr/lib/nvidia-fake/libcuda.so"):
    with open(os.path.join(root, name)) as f:
        f.read()
"""
APP = (
    b"#!/bin/sh\nls /dev | grep nvidia\ncat /usr/lib/nvidia-fake/libcuda.so\ncat /app/data.txt\n"
    b"echo visible=$NVIDIA_VISIBLE_DEVICES\n"
)


def nvidia_spec(tmp_path: Path) -> dict[str, Any]:
    driver = tmp_path / "driver"
    driver.mkdir()
    (driver / "libcuda.so").write_text("host-driver\n")
    return {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "mounts": [
                {
                    "hostPath": str(driver),
                    "containerPath": "/usr/lib/nvidia-fake",
                    "options": ["ro", "nosuid", "nodev", "bind"],
                }
            ],
            "hooks": [
                {
                    "hookName": "createContainer",
                    "path": os.path.realpath(sys.executable),
                    "args": ["nvidia-ctk", "-I", "-c", LDCONFIG_HOOK],
                }
            ],
        },
        "devices": [
            {
                "name": str(i),
                "containerEdits": {"deviceNodes": [{"path": f"/dev/nvidia{i}", "hostPath": "/dev/null"}]},
            }
            for i in range(2)
        ],
    }


def publish_app(workdir: Path) -> Path:
    src = workdir / "src"
    base = LayerBuilder().busybox()
    app = (
        LayerBuilder()
        .file("app/run.sh", APP, mode=0o755)
        .file("app/data.txt", b"data\n")
        .file("etc/ld.so.conf", b"include /etc/ld.so.conf.d/*.conf\n")
        .file("usr/lib/nvidia-fake/libcuda.so", b"image copy, hidden by the mount\n")
    )
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image([base, app], image_config(cmd=["/app/run.sh"])), workdir / "push")
    return src


@pytest.mark.parametrize("recorder", ["fuse", "fanotify"])
def test_gpus_all_prioritizes_what_the_hook_reads(
    cli: Cli, workdir: Path, oracle: Oracle, recorder: str
) -> None:
    (workdir / "cdi").mkdir()
    (workdir / "cdi" / "nvidia.json").write_text(json.dumps(nvidia_spec(workdir)))
    src, dst = publish_app(workdir), workdir / "dst"
    run = cli.optimize(
        "--gpus", "all", "--cdi-spec-dir", str(workdir / "cdi"), "--recorder", recorder,
        f"local://{src}", f"local://{dst}",
    )  # fmt: skip
    assert run.stdout.splitlines()[:5] == ["nvidia0", "nvidia1", "host-driver", "data", "visible=void"]
    files = prioritized(layers_of(oracle.check_image(dst))[1])
    assert "etc/ld.so.conf" in files and "app/data.txt" in files
    assert files.index("etc/ld.so.conf") < files.index("app/data.txt")  # read by the hook, first
    assert "usr/lib/nvidia-fake/libcuda.so" not in files


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--gpus", "0,1"], 1, "unknown CDI device nvidia.com/gpu=1 (CDI specs searched in {cdi})"),
        (
            ["--device", "vendor.test/x=y"],
            1,
            "unknown CDI device vendor.test/x=y (CDI specs searched in {cdi})",
        ),
        (["--device", "nvidia.com/gpu=0", "--device", "bad"], 2, "'bad' is not a qualified CDI device name"),
        (["--gpus", "first"], 1, "unknown CDI device nvidia.com/gpu=first"),
        (["--gpus", "0;1"], 2, "neither 'all' nor a list of GPU indices"),
        (["--device", "broken.test/x=0"], 1, "malformed CDI spec {cdi}/zz-broken.yaml: "),
    ],
)
def test_device_errors_are_one_line_before_anything_is_written(
    cli: Cli, workdir: Path, flags: list[str], code: int, message: str
) -> None:
    cdi = workdir / "cdi"
    cdi.mkdir()
    spec = nvidia_spec(workdir)
    spec["devices"] = spec["devices"][:1]
    (cdi / "nvidia.json").write_text(json.dumps(spec))
    if "broken" in flags[-1]:
        (cdi / "zz-broken.yaml").write_text("cdiVersion: 0.3.0\nkind: broken.test/x\ndevices: {}\n")
    src, dst = publish_app(workdir), workdir / "dst"
    run = cli.optimize(*flags, "--cdi-spec-dir", str(cdi), f"local://{src}", f"local://{dst}", check=False)
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr
    if code == 1:
        assert message.format(cdi=cdi) in run.error
        assert "waiting for 20s ..." not in [e["event"] for e in run.events]  # refused before the run
    else:
        assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not dst.exists()
