"""The test image builders produce what real tools accept (they are reused by the end-to-end tests)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

from tests.helpers.images import LayerBuilder, image_config, write_oci_layout


def test_oci_layout_is_read_by_skopeo(tmp_path: Path) -> None:
    l0 = LayerBuilder().busybox().write(tmp_path / "l0.tar.gz")
    b1 = LayerBuilder().whiteout("etc/group").opaque("tmp")
    l1 = b1.write(tmp_path / "l1.tar.zst", compression="zstd")
    l2 = LayerBuilder().file("app/data", b"x").write(tmp_path / "l2.tar", compression=None)
    digest = write_oci_layout(tmp_path / "oci", [l0, l1, l2], image_config(cmd=["/bin/sh"]))

    ref = f"oci:{tmp_path / 'oci'}:latest"
    info = json.loads(subprocess.run(["skopeo", "inspect", ref], capture_output=True, check=True).stdout)
    config = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--config", "--raw", ref], capture_output=True, check=True
        ).stdout
    )
    assert info["Digest"] == digest
    assert info["Layers"] == ["sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in (l0, l1, l2)]
    assert config["rootfs"]["diff_ids"][2] == "sha256:" + hashlib.sha256(l2.read_bytes()).hexdigest()
    assert config["config"]["Cmd"] == ["/bin/sh"]
    with tarfile.open(fileobj=io.BytesIO(b1.tar_bytes())) as tf:
        assert sorted(tf.getnames()) == ["etc", "etc/.wh.group", "tmp", "tmp/.wh..wh..opq"]
