"""Cleanup when a part of the run fails under it: the FUSE daemon or the runtime killed outright, the
work directory's filesystem full. Each is a one-line error, and the `work` fixture then checks that
no mount, process or file was left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import tarfile
from pathlib import Path

import pytest

from ctr_remote.profile import ProfileError, Workload, profile
from tests.helpers.images import LayerBuilder, image_config
from tests.profile.conftest import RECORDERS, start_sleeping_workload


def _descendant(root: int, needle: str) -> int:
    """The pid of a process below `root` whose command line contains `needle`."""
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        parents[int(entry)], cmdlines[int(entry)] = ppid, cmdline

    def below(pid: int) -> bool:
        while pid in parents and pid != root:
            pid = parents[pid]
        return pid == root

    found = [pid for pid, cmd in cmdlines.items() if needle in cmd and pid != root and below(pid)]
    assert len(found) == 1, (needle, found)
    return found[0]


@pytest.fixture
def data_layer(tmp_path: Path) -> Path:
    return (
        LayerBuilder().file("data/before.txt", b"b").file("data/after.txt", b"a").write(tmp_path / "d.tar.gz")
    )


_DAEMON_KILLED = (
    "the FUSE daemon recording the layers died during the run (killed by SIGKILL); "
    "the recorded accesses would be incomplete"
)
_RUNC_KILLED = "runc was killed by SIGKILL while running the workload"
_READER_KILLED = (
    "the fanotify reader died during the run (killed by SIGKILL); the recorded accesses would be incomplete"
)


@pytest.mark.parametrize(
    ("needle", "message", "recorder"),
    [
        pytest.param("fuse_daemon.py", _DAEMON_KILLED, "fuse", id="fuse-daemon"),
        pytest.param("fanotify_reader.py", _READER_KILLED, "fanotify", id="fanotify-reader"),
        *(pytest.param(" run --bundle ", _RUNC_KILLED, r, id=f"runc-{r}") for r in RECORDERS),
    ],
)
def test_a_part_killed_mid_run_is_a_one_line_error_and_cleaned_up(
    tmp_path: Path,
    work: Path,
    busybox_layer: Path,
    data_layer: Path,
    needle: str,
    message: str,
    recorder: str,
) -> None:
    proc, result_file = start_sleeping_workload(tmp_path, work, [busybox_layer, data_layer], recorder)
    try:
        os.kill(_descendant(proc.pid, needle), signal.SIGKILL)
        _, err = proc.communicate(timeout=90)  # well under the 600 s period: the run ended at once
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert err.decode().splitlines()[-1] == f"ctr-remote: {message}"
    assert not result_file.exists()


def _sparse_tail(blob: Path, size: int) -> None:
    """Append `size` bytes of holes after the archive's end: tar readers stop at the end marker, but
    the file looks large enough that the runner unpacks on the work directory's disk, not in memory."""
    with open(blob, "r+b") as f:
        f.truncate(f.seek(0, os.SEEK_END) + size)


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable")


def test_full_work_directory_is_a_one_line_error(run, work: Path, tmp_path: Path) -> None:
    """The workload fills the work directory's filesystem (its writes land in the overlay's upper dir
    there), then opens a file: that access can no longer be logged, and the profile must not silently
    miss it."""
    blob = LayerBuilder().file("data/after.txt", b"a").write(tmp_path / "d.tar", compression=None)
    with tarfile.open(blob) as tf:
        assert [m.name for m in tf] == ["data", "data/after.txt"]  # the holes are not entries
    _sparse_tail(blob, _mem_available())
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(work)], check=True)
    try:
        script = "dd if=/dev/zero of=/fill bs=64k 2>/dev/null; cat /data/after.txt"
        with pytest.raises(ProfileError) as e:
            run(script, blob)
        assert (
            str(e.value) == "layer 1: the FUSE recorder cannot write its access log: No space left on device"
        )
        assert os.listdir(work) == []
    finally:
        subprocess.run(["umount", str(work)], check=True)


def test_work_directory_full_from_the_start(run, work: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k,nr_inodes=2", "tmpfs", str(work)], check=True)
    try:
        (work / "filler").write_bytes(b"x" * 4096)  # the last inode and block
        with pytest.raises(ProfileError) as e:
            run("true")
        assert "\n" not in str(e.value) and "No space left on device" in str(e.value)
        assert os.listdir(work) == ["filler"]
    finally:
        subprocess.run(["umount", str(work)], check=True)


def test_more_layers_than_overlayfs_stacks_is_refused_up_front(work: Path, busybox_layer: Path) -> None:
    """Before anything is started: each layer would cost a FUSE mount and a daemon thread first."""
    with pytest.raises(ProfileError) as e:
        profile([busybox_layer] * 501, image_config(cmd=["true"]), Workload(), workdir=work)
    assert str(e.value) == "the image has 501 layers; overlayfs stacks at most 500"


def test_a_runtime_hanging_in_cleanup_is_given_up_on(run, tmp_path: Path) -> None:
    """`delete` never answers: the run still returns its result, and the rest is cleaned up."""
    wrapper = tmp_path / "hanging-runtime"
    wrapper.write_text('#!/bin/sh\ncase "$*" in *" delete "*) exec sleep 600;; esac\nexec runc "$@"\n')
    wrapper.chmod(0o755)
    result = run("cat /etc/group", runtime=str(wrapper))
    assert result.exit_code == 0 and "etc/group" in result.accessed[0]
