"""The two recorders side by side: both record every file a start-up opens before `--wait-on-line`
stops it, and the same files in the same layers for the corner cases where they observe differently
(FUSE sees the layer's open, fanotify the container's open of the merged path)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ctr_remote.image import open_store, parse_reference
from tests.conftest import Oracle
from tests.helpers.images import LayerBuilder, image_config
from tests.helpers.sample import app_layers, publish, runnable_image
from tests.profile.conftest import DRIVER_ENV, RECORDERS, ROOT, SENTINEL, driver_command

MANY = 5000


@pytest.fixture(scope="session")
def many_files_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5,000 small files in 50 nested directories."""
    path = tmp_path_factory.mktemp("many") / "many.tar"
    with tarfile.open(path, "w") as tf:
        for i in range(MANY):
            data = b"%d\n" % i
            info = tarfile.TarInfo(f"many/d{i % 50}/e{i % 7}/f{i}.js")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("recorder", "max_queued"),
    [
        ("fuse", None),
        ("fanotify", None),
        pytest.param("fanotify", 4096, id="fanotify-draining-during-the-run"),
    ],
)
def test_a_start_up_opening_5000_files_is_recorded_whole_before_the_line(
    run, many_files_layer: Path, monkeypatch: pytest.MonkeyPatch, max_queued: int | None
) -> None:
    if max_queued is not None:  # the reader names events while the workload runs, not only at the end
        monkeypatch.setenv("CTR_REMOTE_FANOTIFY_MAX_QUEUED", str(max_queued))
    script = f"find /many -type f | xargs cat > /dev/null; echo STARTED; sleep {SENTINEL}"
    result = run(script, many_files_layer, wait_on_line="STARTED", period=600)
    assert result.exit_code is None  # stopped at the line, not by the period
    recorded = result.accessed[1]
    assert len(recorded) == MANY and len(set(recorded)) == MANY
    assert set(recorded) == {f"many/d{i % 50}/e{i % 7}/f{i}.js" for i in range(MANY)}


@pytest.mark.parametrize("recorder", RECORDERS)
def test_opened_files_count_whatever_happens_to_them_after(run, tmp_path: Path) -> None:
    """Opened and never read, removed after the open, renamed over, opened only to be written: each is
    recorded by the name the workload opened. Device nodes and FIFOs of the image are not layer
    files to prioritize (their drivers serve them), and are not recorded by either."""
    layer = (
        LayerBuilder()
        .file("app/empty", b"")
        .file("app/never-read", b"opened only")
        .file("app/removed", b"removed after reading")
        .file("app/written", b"appended to")
        .file("app/with (deleted) in its name", b"a real name")
        .device("app/null", 1, 3)
        .fifo("app/fifo")
        .write(tmp_path / "l.tar")
    )
    script = (
        "cat /app/empty; exec 3< /app/never-read; exec 3<&-; cat /app/removed > /dev/null; rm /app/removed; "
        "echo x >> /app/written; cat '/app/with (deleted) in its name' > /dev/null; "
        "cat /app/null; (echo to-fifo > /app/fifo &); cat /app/fifo > /dev/null"
    )
    result = run(script, layer)
    assert result.exit_code == 0
    assert result.accessed[1] == [
        "app/empty",
        "app/never-read",
        "app/removed",
        "app/written",
        "app/with (deleted) in its name",
    ]


def test_cli_records_the_same_with_either_recorder(tmp_path: Path, oracle: Oracle) -> None:
    """`ctr-remote image optimize --recorder ...` end to end: the same --record-out, nothing left."""
    src = tmp_path / "src"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image(app_layers()), tmp_path / "push")
    records = {}
    for recorder in RECORDERS:
        tmpdir = tmp_path / f"tmp-{recorder}"
        tmpdir.mkdir()
        record = tmp_path / f"record-{recorder}.json"
        done = subprocess.run(
            [
                *(sys.executable, "-m", "ctr_remote", "--log-format", "json", "image", "optimize"),
                *("--recorder", recorder, "--record-out", str(record), "--period", "20"),
                *(f"local://{src}", f"local://{tmp_path / ('dst-' + recorder)}"),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"TMPDIR": str(tmpdir), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        assert list(tmpdir.iterdir()) == []
        oracle.check_image(tmp_path / ("dst-" + recorder))
        summary = [json.loads(line) for line in done.stderr.splitlines()]
        (ran,) = [e for e in summary if e["event"] == "workload recorded"]
        assert ran["recorder"] == recorder and ran["workload_seconds"] > 0
        records[recorder] = [json.loads(line) for line in record.read_text().splitlines()]
        assert ran["files_per_layer"] == [
            sum(1 for r in records[recorder] if r["layerIndex"] == i) for i in range(3)
        ]
    assert records["fanotify"] == records["fuse"]
    assert {"path": "app/run.sh", "layerIndex": 2} in [
        {k: r[k] for k in ("path", "layerIndex")} for r in records["fuse"]
    ]


def test_without_fuse_passthrough_the_daemon_serves_the_reads(
    run, tmp_path: Path, capfd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a kernel before 6.9: reads (and the page faults of an mmap: the binary itself) go
    through the daemon, and the same files are recorded."""
    monkeypatch.setenv("CTR_REMOTE_FUSE_PASSTHROUGH", "0")
    big = bytes(range(256)) * 1024  # several READ requests
    layer = LayerBuilder().file("app/big", big).file("app/empty", b"").write(tmp_path / "l.tar")
    result = run("busybox md5sum /app/big; cat /app/empty", layer)
    assert result.exit_code == 0
    assert capfd.readouterr().out.split()[0] == hashlib.md5(big).hexdigest()
    assert result.accessed == [["etc/passwd", "etc/group", "bin/busybox"], ["app/big", "app/empty"]]


def test_fanotify_unavailable_is_a_one_line_error(tmp_path: Path, work: Path, busybox_layer: Path) -> None:
    """In a user namespace (root there, not in the initial one) fanotify groups are refused."""
    cmd, _ = driver_command(
        tmp_path, work, [busybox_layer], image_config(cmd=["true"]), {"recorder": "fanotify"}
    )
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", *cmd],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=DRIVER_ENV,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "ctr-remote: cannot use fanotify (Operation not permitted): --recorder fanotify needs root in the "
        "initial user namespace and a kernel with fanotify"
    ]


@pytest.mark.parametrize("recorder", RECORDERS)
def test_times_before_1970_and_far_ahead_are_served_as_the_layer_has_them(run, tmp_path: Path, capfd) -> None:
    layer = (
        LayerBuilder()
        .file("old", b"o", mtime=-86400 * 365)
        .file("new", b"n", mtime=1 << 33)
        .write(tmp_path / "l.tar")
    )
    result = run("cat /old /new > /dev/null; stat -c %Y /old /new", layer)
    assert result.exit_code == 0
    assert capfd.readouterr().out.split() == [str(-86400 * 365), str(1 << 33)]
    assert result.accessed[1] == ["old", "new"]
