"""Pinned network namespaces, checked from outside with iproute2 and /proc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ctr_remote.profile.netns import NetnsError, create_netns, is_netns_mounted, remove_netns
from tests.cni.conftest import in_netns
from tests.conftest import ROOT


def test_create_gives_a_fresh_namespace_with_loopback_up(tmp_path: Path) -> None:
    path = tmp_path / "ns" / "one"
    create_netns(path)
    try:
        assert is_netns_mounted(path)
        assert os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino  # not the host's namespace
        links = json.loads(in_netns(path, "ip", "-j", "link", "show").stdout)
        assert [link["ifname"] for link in links] == ["lo"]
        assert "UP" in links[0]["flags"]
        in_netns(path, "busybox", "ping", "-c", "1", "-W", "5", "127.0.0.1")
    finally:
        remove_netns(path)
    assert not path.exists()
    assert not is_netns_mounted(path)
    # The pin is gone: joining the removed path fails.
    assert subprocess.run(["nsenter", f"--net={path}", "true"], capture_output=True).returncode != 0


def test_two_namespaces_are_distinct(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    create_netns(a)
    try:
        create_netns(b)
        try:
            assert os.stat(a).st_ino != os.stat(b).st_ino
        finally:
            remove_netns(b)
    finally:
        remove_netns(a)


def test_an_existing_path_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "taken"
    path.write_text("someone else's")
    with pytest.raises(NetnsError, match=r"^cannot create network namespace file .*/taken: File exists$"):
        create_netns(path)
    assert path.read_text() == "someone else's"


def test_remove_is_idempotent(tmp_path: Path) -> None:
    remove_netns(tmp_path / "never-created")
    path = tmp_path / "twice"
    create_netns(path)
    remove_netns(path)
    remove_netns(path)
    assert not path.exists()


def test_removal_reaches_copies_in_other_mount_namespaces(tmp_path: Path) -> None:
    """A mount namespace made while the pin exists (a container, a service) gets a private copy of it.

    Unlinking the pin file detaches those copies too, so the namespace cannot outlive the run there.
    """
    path = tmp_path / "copied"
    create_netns(path)
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "echo ready; exec cat"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        their_mounts = Path(f"/proc/{holder.pid}/mountinfo")
        assert str(path) in their_mounts.read_text()
        remove_netns(path)
        assert str(path) not in their_mounts.read_text()
    finally:
        remove_netns(path)
        holder.kill()
        holder.wait()


def test_an_unprivileged_caller_gets_a_one_line_error_and_no_leftover_file() -> None:
    """Without CAP_SYS_ADMIN unshare fails: the placeholder file must not stay behind."""
    shared = Path(tempfile.mkdtemp(prefix="ctrt-netns-"))
    try:
        shared.chmod(0o777)  # nobody must be able to create the placeholder file
        code = (
            "import sys; from pathlib import Path\n"
            "from ctr_remote.profile.netns import NetnsError, create_netns\n"
            "try:\n"
            "    create_netns(Path(sys.argv[1]))\n"
            "except NetnsError as e:\n"
            "    print(e)\n"
        )
        p = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
             sys.executable, "-c", code, str(shared / "ns")],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
        expected = (
            f"cannot create network namespace {shared / 'ns'}: unshare(CLONE_NEWNET): Operation not permitted"
        )
        assert p.stdout == expected + "\n", p.stderr
        assert list(shared.iterdir()) == []
    finally:
        shutil.rmtree(shared)
