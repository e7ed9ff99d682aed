"""What GNU tar writes for a real tree converts and passes the upstream reader. Not in the `unit`
subset: the tree holds a device node, which only root can make."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from ctr_remote.estargz import open_estargz
from tests.estargz.layers import SMALL_CHUNK, convert, pattern
from tests.estargz.test_writer import check


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_gnu_tar_archives_of_a_real_tree(oracle, tmp_path: Path, fmt: str) -> None:
    """What GNU tar writes for a real tree: device nodes, fifo, links, xattrs, PAX a/c/mtimes."""
    root = tmp_path / "tree"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(pattern(3 * SMALL_CHUNK + 7))
    (root / "dir" / "setuid").write_bytes(b"#!/bin/sh\n")
    (root / "dir" / "setuid").chmod(0o4755)
    os.link(root / "dir" / "file", root / "dir" / "hard")
    os.symlink("file", root / "dir" / "sym")
    os.mkfifo(root / "dir" / "fifo")
    os.mknod(root / "dir" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(root / "dir" / "file", "user.bytes", b"\xff\x00value")
    (root / "dir" / ("long-" + "n" * 120)).write_bytes(b"long")
    if fmt == "ustar":
        (root / "dir" / ("long-" + "n" * 120)).unlink()
    layer = tmp_path / "layer.tar"
    tar = ["tar", f"--format={fmt}", "--xattrs", "--sort=name", "-C", str(root), "-cf", str(layer), "."]
    subprocess.run(tar, check=True)
    path, result = convert(tmp_path, layer.read_bytes(), chunk_size=SMALL_CHUNK,
                           prioritized_files=["dir/hard", "./dir/null"])  # fmt: skip
    report = check(oracle, path, result)
    # With names sorted, dir/hard is the hardlink to dir/file, which therefore comes first.
    assert report["prioritized"] == ["dir", "dir/file", "dir/hard", "dir/null"]
    with path.open("rb") as fh:
        entries = {e.name: e for e in open_estargz(fh).entries if e.type != "chunk"}
    assert (entries["./dir/null"].type, entries["./dir/null"].dev_major, entries["./dir/null"].dev_minor) == (
        "char", 1, 3)  # fmt: skip
    if fmt != "ustar":
        assert entries["./dir/file"].xattrs == {"user.bytes": b"\xff\x00value"}
