"""Layer unpacking into overlay form, and the hostile-layer corpus (asserted on the host filesystem)."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from ctr_remote.layer.compression import CorruptLayerError
from ctr_remote.profile import ProfileError
from ctr_remote.profile.unpack import OPAQUE_XATTR, unpack_layer
from tests.helpers.images import LayerBuilder

# vfs_cap_data v2 with the effective flag: permitted = CAP_NET_RAW (13)
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def _tree(root: Path) -> dict[str, tuple]:
    """Everything below root: path -> (type, mode, uid, gid, size or target or rdev, mtime)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            detail: object = st.st_size
            if stat.S_ISLNK(st.st_mode):
                detail = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                detail,
                st.st_mtime,
            )
    return out


def test_overlay_form_keeps_metadata(tmp_path: Path) -> None:
    layer = (
        LayerBuilder()
        .file("usr/bin/su", b"setuid", mode=0o4755, uid=0, gid=0)
        .file("home/alice/notes", b"n", mode=0o600, uid=1000, gid=1000)
        .file("bin/ping", b"p", mode=0o755, xattrs={"security.capability": CAP_NET_RAW})
        .hardlink("bin/ping2", "bin/ping")
        .symlink("bin/sh", "busybox")
        .device("dev/null", 1, 3)
        .device("dev/loop0", 7, 0, block=True, mode=0o660)
        .fifo("run/fifo", mode=0o640)
        .whiteout("etc/removed")
        .opaque("var/cache")
        .dir("var/cache/keep", mode=0o750)
        .write(tmp_path / "layer.tar.gz")
    )
    unpacked = unpack_layer(layer, tmp_path / "out")
    root = tmp_path / "out"
    tree = _tree(root)

    assert tree["usr/bin/su"][:4] == (stat.S_IFREG, 0o4755, 0, 0)
    assert tree["home/alice/notes"][:4] == (stat.S_IFREG, 0o600, 1000, 1000)
    assert tree["usr/bin/su"][5] == 1_600_000_000 and tree["var/cache/keep"][5] == 1_600_000_000
    assert (root / "bin/ping").stat().st_ino == (root / "bin/ping2").stat().st_ino
    assert os.getxattr(root / "bin/ping", "security.capability") == CAP_NET_RAW
    assert tree["bin/sh"][0] == stat.S_IFLNK and tree["bin/sh"][4] == "busybox"
    assert tree["dev/null"][0] == stat.S_IFCHR and tree["dev/null"][4] == (1, 3)
    assert tree["dev/loop0"][0] == stat.S_IFBLK and tree["dev/loop0"][4] == (7, 0)
    assert tree["run/fifo"][:2] == (stat.S_IFIFO, 0o640)
    # Overlay whiteout and opaque dir; the marker files themselves are not there.
    assert tree["etc/removed"][0] == stat.S_IFCHR and tree["etc/removed"][4] == (0, 0)
    assert os.getxattr(root / "var/cache", OPAQUE_XATTR) == b"y"
    assert not any(".wh." in p for p in tree)
    # The recorder serves xattrs from this table.
    assert unpacked.xattrs["var/cache"] == {OPAQUE_XATTR: b"y"}
    assert unpacked.xattrs["bin/ping"]["security.capability"] == CAP_NET_RAW


@pytest.mark.parametrize("compression", ["gzip", "zstd", None])
def test_compressions_unpack_alike(tmp_path: Path, compression: str | None) -> None:
    builder = LayerBuilder().file("a/b/c.txt", b"hello" * 1000).symlink("a/l", "b/c.txt")
    blob = builder.write(tmp_path / "layer", compression=compression)
    unpack_layer(blob, tmp_path / "out")
    assert (tmp_path / "out/a/b/c.txt").read_bytes() == b"hello" * 1000
    assert os.readlink(tmp_path / "out/a/l") == "b/c.txt"


def test_corrupt_layer_is_one_line_error(tmp_path: Path) -> None:
    blob = LayerBuilder().file("a", b"x" * 100000).write(tmp_path / "layer.tar.gz")
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptLayerError) as e:
        unpack_layer(blob, tmp_path / "out")
    assert "\n" not in str(e.value)
    (tmp_path / "garbage").write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(ProfileError, match="not a valid tar archive"):
        unpack_layer(tmp_path / "garbage", tmp_path / "out2")


def _digest_tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath, name)
            out[str(p)] = (
                hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "-"
            )
    return out


def hostile_layer(host: Path) -> LayerBuilder:
    """Every way a layer tar could try to write outside its directory. `host` is the victim dir."""

    def raw(name: str, data: bytes = b"pwned", **attrs: object) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        for k, v in attrs.items():
            setattr(info, k, v)
        return info

    b = LayerBuilder()
    b.add(raw("../../../../" + str(host).lstrip("/") + "/victim.txt"), b"pwned", parents=False)
    b.add(raw(str(host) + "/victim.txt"), b"pwned", parents=False)  # absolute path
    b.add(raw("./../escape-dotdot"), b"pwned", parents=False)
    # A symlinked parent: the directory is a link to the victim dir (and to /), then a file below it.
    b.symlink("hostdir", str(host))
    b.add(raw("hostdir/victim.txt"), b"pwned", parents=False)
    b.add(raw("hostdir/new-file"), b"pwned", parents=False)
    b.symlink("etc", "/")
    b.add(raw("etc/passwd-pwned"), b"pwned", parents=False)
    b.symlink("rel", "../../../../../../" + str(host).lstrip("/"))
    b.add(raw("rel/victim.txt"), b"pwned", parents=False)
    # Hardlinks to things outside the layer.
    b.add(raw("hl-abs", type=tarfile.LNKTYPE, linkname=str(host / "victim.txt")), parents=False)
    b.add(
        raw("hl-rel", type=tarfile.LNKTYPE, linkname="../../../../" + str(host).lstrip("/") + "/victim.txt")
    )
    b.add(raw("hl-shadow", type=tarfile.LNKTYPE, linkname="/etc/shadow"), parents=False)
    b.add(raw("hl-via-link", type=tarfile.LNKTYPE, linkname="hostdir/victim.txt"), parents=False)
    # Then a regular file written "through" each hardlink name must not reach the target.
    b.add(raw("hl-via-link"), b"pwned", parents=False)
    # Device nodes are kept (as nodes), overlay-significant xattrs are not.
    b.device("disk", 8, 0, block=True)
    b.file("redirect", b"x", xattrs={"trusted.overlay.redirect": b"/etc", "user.ok": b"1"})
    b.file("badcap", b"x", xattrs={"security.capability": b"\x01\x02"})
    b.file("dir/.wh.", b"")  # a whiteout without a name
    return b


def test_hostile_layer_cannot_escape(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "victim.txt").write_bytes(b"original")
    before_host = _digest_tree(host)
    before_etc = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in ("/etc/passwd", "/etc/shadow")}
    blob = hostile_layer(host).write(tmp_path / "hostile.tar")

    layer = unpack_layer(blob, tmp_path / "out")

    assert _digest_tree(host) == before_host
    assert (host / "victim.txt").read_bytes() == b"original"
    assert not (host / "new-file").exists()
    assert {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in before_etc} == before_etc
    assert not Path("/passwd-pwned").exists() and not Path("/etc/passwd-pwned").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host", "hostile.tar", "out"]
    assert not (tmp_path / "escape-dotdot").exists()
    out = tmp_path / "out"
    # Neutralised names land inside the layer, as upstream's estargz cleans them.
    assert (out / str(host).lstrip("/") / "victim.txt").read_bytes() == b"pwned"
    assert (out / "escape-dotdot").read_bytes() == b"pwned"
    # Refused: entries below symlinks and hardlinks to outside targets.
    assert os.readlink(out / "hostdir") == str(host)
    assert not (out / "hl-shadow").exists()
    assert len(layer.refused) >= 5
    # Hardlink targets are cleaned like names: they link the neutralised copy inside the layer.
    inside = (out / str(host).lstrip("/") / "victim.txt").stat()
    assert (out / "hl-rel").stat().st_ino == inside.st_ino == (out / "hl-abs").stat().st_ino
    assert (host / "victim.txt").stat().st_nlink == 1
    assert (out / "hl-via-link").read_bytes() == b"pwned" and (out / "hl-via-link").stat().st_nlink == 1
    assert stat.S_ISBLK((out / "disk").lstat().st_mode)
    assert os.listxattr(out / "redirect") == ["user.ok"]
    assert (out / "badcap").read_bytes() == b"x" and "badcap" not in layer.xattrs


def test_hostile_layer_under_runc_cannot_touch_the_host(run, tmp_path: Path, capfd) -> None:
    """The same corpus as the image of a real run, with a workload that tries to use what it planted."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "victim.txt").write_bytes(b"original")
    before_etc = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in ("/etc/passwd", "/etc/shadow")}
    blob = hostile_layer(host).write(tmp_path / "hostile.tar.gz")
    script = (
        "echo pwned > /hostdir/victim.txt; echo pwned > /rel/victim.txt; echo pwned > /etc/passwd-pwned; "
        "echo pwned >> /hl-abs; head -c1 /disk >/dev/null 2>&1 && echo DISK-OPEN || echo DISK-DENIED"
    )
    result = run(script, blob)
    assert result.exit_code == 0
    assert capfd.readouterr().out.splitlines()[-1] == "DISK-DENIED"
    assert (host / "victim.txt").read_bytes() == b"original"
    assert sorted(p.name for p in host.iterdir()) == ["victim.txt"]
    assert {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in before_etc} == before_etc
    assert not Path("/passwd-pwned").exists() and not Path("/etc/passwd-pwned").exists()
    # Inside the container the symlinks lead to the neutralised copy; writing copies it up, which reads
    # the layer's file (recorded), then the append through the hardlink name does the same.
    assert result.accessed[1] == [str(host / "victim.txt").lstrip("/"), "hl-abs"]


def test_later_entries_replace_earlier_ones(tmp_path: Path) -> None:
    layer = (
        LayerBuilder()
        .file("a/x", b"first")
        .file("a/x", b"second")  # same name twice: the last one wins, as with tar
        .file("b", b"a file")
        .dir("b")  # a directory replaces the file
        .file("b/inside", b"i")
        .dir("c")
        .file("c/old", b"o")
        .file("c", b"file replaces dir")  # a file replaces the whole directory
        .symlink("d", "/nowhere")
        .file("d", b"file replaces symlink")
        .write(tmp_path / "dup.tar", compression=None)
    )
    unpack_layer(layer, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "a/x").read_bytes() == b"second"
    assert (out / "b").is_dir() and (out / "b/inside").read_bytes() == b"i"
    assert (out / "c").read_bytes() == b"file replaces dir"
    assert not (out / "d").is_symlink() and (out / "d").read_bytes() == b"file replaces symlink"


def test_out_of_space_is_a_one_line_error(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        blob = LayerBuilder().file("big", b"x" * (1 << 20)).write(tmp_path / "big.tar.gz")
        with pytest.raises(ProfileError, match=r"cannot unpack 'big': No space left on device") as e:
            unpack_layer(blob, small / "out", what="layer 0")
        assert "\n" not in str(e.value)
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.parametrize("how", ["absolute", "relative-chain", "etc-dir", "in-upper-via-lower-link"])
def test_user_lookup_never_follows_image_symlinks_to_the_host(run, tmp_path: Path, how: str) -> None:
    """The image's /etc/passwd leads, through symlinks, to a host file naming a user: it must not be
    found there (links resolve inside the rootfs, as the container would see them)."""
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "passwd").write_text("mallory:x:4242:4242::/:/bin/sh\n")
    (host / "group").write_text("mallory:x:4242:\n")
    b = LayerBuilder()
    layers = []
    if how == "absolute":
        b.symlink("etc/passwd", str(host / "passwd"))
    elif how == "relative-chain":
        b.symlink("etc/passwd", "hop1").symlink("etc/hop1", "../hop2")
        b.symlink("hop2", "../../../../../../../../.." + str(host / "passwd"))
    elif how == "etc-dir":
        b.symlink("etc", str(host))
    else:  # a lower layer makes /etc a link; an upper one adds a link beside it
        layers.append(LayerBuilder().symlink("etc", "real-etc").write(tmp_path / "lower.tar"))
        b.symlink("real-etc", "../../../../../../.." + str(host))
    layers.append(b.write(tmp_path / "l.tar"))
    with pytest.raises(ProfileError, match="user 'mallory' not found"):
        run("id", *layers, user="mallory")
