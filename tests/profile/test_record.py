"""What gets recorded: real runc on overlayfs over the recording FUSE layers, busybox workloads."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from ctr_remote.profile import Mount, ProfileResult, Workload, profile
from ctr_remote.profile.workload import RecorderKind
from ctr_remote.record import record_lines
from tests.helpers.images import LayerBuilder, image_config
from tests.profile.conftest import RECORDERS

# Every test here runs with each recorder: both must record the same files in the same layers.
pytestmark = pytest.mark.parametrize("recorder", RECORDERS)

# runc itself reads these two in every container (user lookup in `runc init`), before the workload.
RUNC_READS = ["etc/passwd", "etc/group"]


def test_reads_in_order_and_attributed_to_the_topmost_layer(run, tmp_path: Path) -> None:
    mid = (
        LayerBuilder()
        .file("data/one.txt", b"1 mid")
        .file("data/two.txt", b"2 mid")
        .file("data/three.txt", b"3")
        .file("data/unread.txt", b"never")
        .file("data/deleted.txt", b"deleted above")
        .file("opt/hidden.txt", b"hidden by opaque")
        .file("data/append.txt", b"append to me")
        .write(tmp_path / "mid.tar.gz")
    )
    top = (
        LayerBuilder()
        .file("data/two.txt", b"2 top")  # overrides mid's copy
        .whiteout("data/deleted.txt")
        .opaque("opt")
        .file("opt/visible.txt", b"visible")
        .write(tmp_path / "top.tar.zst", compression="zstd")
    )
    script = (
        "cat /data/three.txt /data/two.txt /data/one.txt /opt/visible.txt > /dev/null; "
        "cat /opt/hidden.txt /data/deleted.txt 2>/dev/null; "
        "echo more >> /data/append.txt; "  # copy-up reads the lower file
        "echo created > /tmp/new.txt; cat /tmp/new.txt > /dev/null; "  # the container's own file
        "cat /etc/hosts /etc/resolv.conf /proc/self/status > /dev/null; "  # not layer files
        "ls /data /opt > /dev/null; "  # listing is not an access
        "test -e /data/unread.txt"  # neither is stat
    )

    result = run(script, mid, top)

    assert result.exit_code == 0
    base, middle, upper = result.accessed
    assert base == [*RUNC_READS, "bin/busybox"]
    assert middle == ["data/three.txt", "data/one.txt", "data/append.txt"]
    assert upper == ["data/two.txt", "opt/visible.txt"]

    lines = list(record_lines(result.accessed, "sha256:" + "ab" * 32))
    assert lines[0] == {"path": "etc/passwd", "manifestDigest": "sha256:" + "ab" * 32, "layerIndex": 0}
    assert [(x["layerIndex"], x["path"]) for x in lines][-2:] == [(2, "data/two.txt"), (2, "opt/visible.txt")]
    json.dumps(lines)


def test_non_zero_exit_still_records(run) -> None:
    result = run("cat /etc/passwd >/dev/null; cat /no/such/file; exit 7")
    assert result.exit_code == 7
    assert result.accessed == [[*RUNC_READS, "bin/busybox"]]


def test_bind_mounts_are_not_recorded(run, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "host.txt").write_text("from the host\n")
    layer = LayerBuilder().file("mnt/data/layer.txt", b"under the mount").write(tmp_path / "l.tar.gz")
    result = run(
        "cat /mnt/data/host.txt",
        layer,
        mounts=(Mount("bind", str(shared), "/mnt/data", ("ro",)),),
    )
    assert result.exit_code == 0
    assert result.accessed[1] == []
    assert all("host.txt" not in p for layer_paths in result.accessed for p in layer_paths)


def test_layers_with_hardlinks_devices_and_setuid(run, tmp_path: Path, capfd) -> None:
    layer = (
        LayerBuilder()
        .file("app/real.txt", b"real", mode=0o640)
        .hardlink("app/alias.txt", "app/real.txt")
        .device("app/mem", 1, 1)  # /dev/mem: kept as a node, but the device cgroup denies it
        .file("app/suid", b"x", mode=0o4755)
        .write(tmp_path / "l.tar")
    )
    script = (
        "cat /app/alias.txt; echo; head -c1 /app/mem >/dev/null 2>&1 && echo MEM-OPEN || echo MEM-DENIED; "
        "stat -c '%n %a %i %h' /app/real.txt /app/alias.txt /app/suid"
    )
    result = run(script, layer)
    assert result.exit_code == 0
    out = capfd.readouterr().out.splitlines()
    assert out[:2] == ["real", "MEM-DENIED"]
    real, alias, suid = (line.split() for line in out[2:5])
    assert real[2] == alias[2] and real[3] == "2"  # one inode, two names
    assert suid[1] == "4755"
    # Reading through the second name records that name, as it appears in the tar.
    assert result.accessed[1] == ["app/alias.txt"]


def test_image_without_proc_dev_sys(work: Path, busybox_layer: Path, tmp_path: Path, recorder: str) -> None:
    """A FROM-scratch image: runc creates its mount points in the overlay's upper dir."""
    only = (
        LayerBuilder()
        .file("true", Path("/bin/busybox").read_bytes(), mode=0o755)
        .write(tmp_path / "scratch.tar.gz")
    )
    result: ProfileResult = profile(
        [only],
        image_config(entrypoint=["/true"]),
        Workload(period=30, recorder=RecorderKind(recorder)),
        workdir=work,
    )
    assert result.exit_code == 0
    assert result.accessed == [["true"]]


def test_non_utf8_names_are_recorded_as_the_tar_spells_them(run, tmp_path: Path) -> None:
    name = b"data/caf\xe9.txt".decode("utf-8", "surrogateescape")
    layer = LayerBuilder().file(name, b"latin-1 name").write(tmp_path / "l.tar")
    with tarfile.open(tmp_path / "l.tar") as tf:
        assert name in tf.getnames()
    result = run("cat /data/caf*.txt", layer)
    assert result.exit_code == 0
    assert result.accessed[1] == [name]


def test_permissions_are_enforced_and_denied_opens_are_not_recorded(run, tmp_path: Path, capfd) -> None:
    """default_permissions: a non-root workload cannot read the image's root-only files."""
    layer = (
        LayerBuilder()
        .file("secret", b"root only", mode=0o600)
        .file("public", b"for everyone", mode=0o644)
        .write(tmp_path / "l.tar")
    )
    result = run("cat /secret 2>/dev/null || echo DENIED; cat /public", layer, user="alice")
    assert result.exit_code == 0
    assert capfd.readouterr().out.splitlines()[-2:] == ["DENIED", "for everyone"]
    assert result.accessed[1] == ["public"]


def test_docker_maximum_of_127_layers(run, tmp_path: Path) -> None:
    """127 layers (plus busybox): one overlay mount, one FUSE mount each, every file in its own layer."""
    layers = [
        LayerBuilder()
        .file(f"layers/{i}.txt", b"%d" % i)
        .file("shared.txt", b"%d" % i)
        .write(tmp_path / f"{i}.tar")
        for i in range(127)
    ]
    result = run("cat /layers/*.txt /shared.txt > /dev/null", *layers)
    assert result.exit_code == 0
    assert len(result.accessed) == 128
    assert [paths[:1] for paths in result.accessed[1:-1]] == [[f"layers/{i}.txt"] for i in range(126)]
    assert result.accessed[-1] == ["layers/126.txt", "shared.txt"]  # the topmost copy only
