"""More hostile layers: links across layers and in chains, hardlinks to symlinks, whiteouts and opaque
markers in odd places, names that are overlayfs option syntax, overlay xattrs planted in the tar,
non-regular or huge user databases, and millions-of-entries layers. Asserted on the host filesystem
(nothing outside the work directory changes) and in real runs under runc."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ctr_remote.profile import ProfileError
from ctr_remote.profile.unpack import MAX_DEPTH, MAX_REFUSALS_KEPT, OPAQUE_XATTR, unpack_layer
from tests.helpers.images import LayerBuilder
from tests.profile.conftest import RECORDERS, ROOT
from tests.profile.test_failures import _mem_available
from tests.profile.test_stop import workload_output

ODD_NAMES = ["names/a,b", "names/c:d", "names/lowerdir=x,upperdir=y", "names/g\\h", "names/e\nf"]


def _raw(name: str, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for k, v in attrs.items():
        setattr(info, k, v)
    return info


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path below `root` (not following links): type, mode, content digest or target, xattrs."""
    out: dict[str, tuple] = {".": (sorted(os.listxattr(root)),)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = None
            xattrs = [] if stat.S_ISLNK(st.st_mode) else sorted(os.listxattr(p))
            out[str(p.relative_to(root))] = (st.st_mode, st.st_nlink, what, xattrs)
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    (host / "sub").mkdir(parents=True)
    (host / "victim.txt").write_bytes(b"original")
    (host / "sub" / "keep").write_bytes(b"keep")
    return host


def odd_layer(host: Path) -> LayerBuilder:
    b = LayerBuilder()
    # Symlink chains to the host, then entries below the first link of each chain.
    b.symlink("chain1", "chain2").symlink("chain2", "chain3").symlink("chain3", str(host))
    b.symlink("relchain", "chain1")
    b.add(_raw("chain1/victim.txt"), b"pwned", parents=False)
    b.add(_raw("relchain/sub/keep"), b"pwned", parents=False)
    # A hardlink to a symlink (links the link itself), then writes through the hardlink's name.
    b.symlink("tohost", str(host / "victim.txt"))
    b.hardlink("hl-to-symlink", "tohost")
    b.add(_raw("hl-to-symlink/x"), b"pwned", parents=False)
    b.hardlink("hl-through-chain", "chain1/victim.txt")
    # Whiteouts that name nothing, "." or "..", or sit below a link to the host.
    for name in (".wh..", "dir/.wh..", ".wh...", ".wh./", "chain1/.wh.victim.txt", "chain1/.wh.sub"):
        b.add(_raw(name), b"", parents=name.startswith("dir/"))
    # Opaque markers: at the root, and inside a directory that is a symlink to the host.
    b.add(_raw(".wh..wh..opq"), b"", parents=False)
    b.add(_raw("chain1/.wh..wh..opq"), b"", parents=False)
    b.add(_raw("tohost/.wh..wh..opq"), b"", parents=False)
    # overlayfs' own xattrs planted in the tar: never set, never served.
    overlay_xattrs = {
        "trusted.overlay.opaque": b"y",
        "trusted.overlay.redirect": b"/chain1",
        "trusted.overlay.origin": b"\x00",
        "trusted.overlay.whiteout": b"",
        "trusted.overlay.metacopy": b"",
        "user.overlay.opaque": b"y",
    }
    b.dir("data")
    opaque_dir = _raw("data", type=tarfile.DIRTYPE, mode=0o755)
    opaque_dir.pax_headers = {f"SCHILY.xattr.{k}": v.decode("latin-1") for k, v in overlay_xattrs.items()}
    b.add(opaque_dir, parents=False)
    b.file("data/planted", b"p", xattrs=overlay_xattrs)
    for name in ODD_NAMES:
        b.file(name, name.encode())
    b.file("usr/bin/setuid", b"s", mode=0o6755)
    b.device("dev-sda", 8, 0, block=True)
    return b


def test_odd_entries_stay_inside_the_layer(tmp_path: Path, victim: Path) -> None:
    before = _snapshot(victim)
    before_tmp = sorted(p.name for p in tmp_path.iterdir())
    blob = odd_layer(victim).write(tmp_path / "odd.tar")

    layer = unpack_layer(blob, tmp_path / "out")

    assert _snapshot(victim) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before_tmp, "odd.tar", "out"])
    out = tmp_path / "out"
    # Entries below links were refused, each chain left as the links it is.
    assert os.readlink(out / "chain1") == "chain2" and os.readlink(out / "relchain") == "chain1"
    assert os.readlink(out / "hl-to-symlink") == str(victim / "victim.txt")
    assert (out / "hl-to-symlink").lstat().st_ino == (out / "tohost").lstat().st_ino
    assert not (out / "hl-through-chain").exists()
    # No whiteout device named "." or "..", nor the dir one: only "dir" itself.
    assert sorted(p.name for p in (out / "dir").iterdir()) == []
    assert not any(".wh." in p for p in _snapshot(out))
    # The root opaque marker is on the layer's own root, and in the table the recorder serves.
    assert os.getxattr(out, OPAQUE_XATTR) == b"y" and layer.xattrs[""] == {OPAQUE_XATTR: b"y"}
    for path in ("data", "data/planted"):
        assert os.listxattr(out / path) == [], path
        assert path not in layer.xattrs
    for name in ODD_NAMES:
        assert (out / name).read_bytes() == name.encode()
    assert stat.S_IMODE((out / "usr/bin/setuid").stat().st_mode) == 0o6755
    assert stat.S_ISBLK((out / "dev-sda").lstat().st_mode)
    assert layer.refused_count == len(layer.refused) >= 12


@pytest.mark.parametrize("recorder", RECORDERS)
def test_links_in_a_lower_layer_written_through_in_an_upper_one(
    run, tmp_path: Path, victim: Path, capfd
) -> None:
    """Each layer is unpacked on its own, so the upper layer's `up/...` makes a real directory; the
    merged view inside the container follows links inside the rootfs only. Planted overlay xattrs
    hide nothing; odd names are read and recorded as spelled."""
    before = _snapshot(victim)
    lower = (
        LayerBuilder()
        .symlink("up", str(victim))
        .symlink("c1", "c2")
        .symlink("c2", "../../../../../../../.." + str(victim))
        .file("data/keep.txt", b"keep")
        .write(tmp_path / "lower.tar.gz")
    )
    upper = (
        odd_layer(victim)
        .file("up/victim.txt", b"pwned")
        .file("c1/victim.txt", b"pwned")
        .add(_raw("c2/sub/keep"), b"pwned")
        .write(tmp_path / "upper.tar.gz")
    )
    reads = " ".join(f"cat '/{n}';" for n in ODD_NAMES if "\n" not in n)
    script = (
        f"cat /data/keep.txt; {reads} cat \"$(printf '/names/e\\nf')\"; echo; "
        "echo pwned > /up/victim.txt; echo pwned > /c1/victim.txt; echo pwned > /chain1/victim.txt; "
        "echo pwned > /tohost; ls /data"
    )
    result = run(script, lower, upper)
    assert result.exit_code == 0
    assert _snapshot(victim) == before
    out = "\n".join(workload_output(capfd.readouterr().out))
    assert "keep" + "".join(ODD_NAMES) + "\n" in out  # each file holds its own name
    assert out.splitlines()[-2:] == ["keep.txt", "planted"]  # no opaque from the tar's xattrs
    assert result.accessed[1] == ["data/keep.txt"]
    assert result.accessed[2][: len(ODD_NAMES)] == ODD_NAMES


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("fifo", "the image's /etc/passwd is not a regular file"),
        ("zero-device", "the image's /etc/passwd is not a regular file"),
        ("directory", "the image's /etc/passwd is not a regular file"),
        ("huge", f"the image's /etc/passwd is larger than {16 << 20} bytes"),
    ],
)
@pytest.mark.parametrize("recorder", RECORDERS)
def test_user_database_that_is_not_a_small_regular_file(run, tmp_path: Path, kind: str, message: str) -> None:
    """A fifo would block the lookup forever, /dev/zero (the host's, through the mounts) never ends."""
    b = LayerBuilder()
    if kind == "fifo":
        b.fifo("etc/passwd")
    elif kind == "zero-device":
        b.device("etc/passwd", 1, 5)
    elif kind == "directory":
        b.dir("etc/passwd")
    else:
        b.file("etc/passwd", b"root:x:0:0::/:/bin/sh\n" + b"#" * (16 << 20))
    with pytest.raises(ProfileError) as e:
        run("id", b.write(tmp_path / "l.tar.gz"), user="alice")
    assert str(e.value) == message


_PROBE = """
import json, resource, sys
from pathlib import Path
from ctr_remote.profile.unpack import unpack_layer
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
layer = unpack_layer(Path(sys.argv[1]), Path(sys.argv[2]))
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"grown_kib": grown, "count": layer.refused_count, "kept": len(layer.refused)}))
"""


def test_a_layer_of_many_entries_unpacks_in_constant_memory(tmp_path: Path) -> None:
    """60,000 entries, half of them refused (below a symlink): memory and refusals kept stay bounded
    (tarfile alone would keep ~450 bytes per entry: ~27 MB here, gigabytes for a hostile blob)."""
    n = 60_000
    blob = tmp_path / "many.tar.gz"
    with tarfile.open(blob, "w:gz", compresslevel=1) as tf:
        link = _raw("link", type=tarfile.SYMTYPE, linkname="/")
        tf.addfile(link)
        for i in range(n // 2):
            tf.addfile(_raw(f"d{i % 50}/f{i}"))
            tf.addfile(_raw(f"link/f{i}"))
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(blob), str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    probe = json.loads(done.stdout.splitlines()[-1])
    assert probe["count"] == n // 2 and probe["kept"] == MAX_REFUSALS_KEPT
    assert probe["grown_kib"] < 8 * 1024, probe
    assert sum(1 for _ in (tmp_path / "out").rglob("f*")) == n // 2


def _special_header_blob(path: Path, kind: str, size: int) -> Path:
    """A gzip blob holding one PAX header or GNU long name of `size` bytes (compresses to ~0.5%)."""
    info = tarfile.TarInfo("././@PaxHeader" if kind == "pax" else "././@LongLink")
    info.type = tarfile.XHDTYPE if kind == "pax" else tarfile.GNUTYPE_LONGNAME
    info.size = size
    record = b"9 a=1234\n" if kind == "pax" else b"a"
    block = (record * ((1 << 20) // len(record) + 1))[: 1 << 20]
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(info.tobuf(format=tarfile.USTAR_FORMAT if kind == "pax" else tarfile.GNU_FORMAT))
        for offset in range(0, size, len(block)):
            f.write(block[: size - offset])
        f.write(b"\0" * (-size % 512))
        f.write(tarfile.TarInfo("x").tobuf() + b"\0" * 1024)
    return path


@pytest.mark.parametrize(("kind", "what"), [("pax", "PAX header"), ("long", "GNU long name")])
def test_huge_pax_header_or_long_name_is_refused_before_it_is_read(
    tmp_path: Path, kind: str, what: str
) -> None:
    """tarfile would read it whole into memory: 2 GB for a 1.4 MB blob with a 300 MB long name."""
    blob = _special_header_blob(tmp_path / "l.tar.gz", kind, 64 << 20)
    with pytest.raises(ProfileError) as e:
        unpack_layer(blob, tmp_path / "out", what="layer 3")
    assert str(e.value) == (
        f"layer 3: not a valid tar archive: a {what} of {64 << 20} bytes, more than the limit of {1 << 20}"
    )


def test_long_names_within_the_limit_still_unpack_and_errors_stay_short(tmp_path: Path) -> None:
    deep = "/".join(["d" * 200] * 15) + "/file"  # 3,000+ characters: a GNU long name / PAX path
    ok = LayerBuilder().file(deep, b"deep").write(tmp_path / "ok.tar.gz")
    unpack_layer(ok, tmp_path / "ok")
    assert (tmp_path / "ok" / deep).read_bytes() == b"deep"

    too_long = LayerBuilder().file("n" * 4000, b"x").write(tmp_path / "long.tar.gz")  # NAME_MAX is 255
    with pytest.raises(ProfileError) as e:
        unpack_layer(too_long, tmp_path / "out")
    assert len(str(e.value)) < 500 and str(e.value).endswith("File name too long")


def test_names_too_deep_or_too_long_are_refused_without_recursion(tmp_path: Path) -> None:
    """Directories were opened recursively, one frame per level: 1,000 levels was a RecursionError."""
    ok = "d/" * (MAX_DEPTH - 1) + "file"
    deep = "d/" * MAX_DEPTH + "file"
    blob = (
        LayerBuilder()
        .add(_raw(ok), b"ok")
        .add(_raw(deep), b"deep")
        .add(
            _raw("e/" * 1500 + "file"), b"deeper", parents=False
        )  # 3,000+ characters: under PATH_MAX, too deep
        .add(_raw("n" * 500_000), b"long", parents=False)
        .write(tmp_path / "deep.tar.gz")
    )
    layer = unpack_layer(blob, tmp_path / "out")
    assert (tmp_path / "out" / ok).read_bytes() == b"ok"
    assert not (tmp_path / "out" / deep).exists() and not (tmp_path / "out" / "e").exists()
    assert layer.refused_count == 3
    assert layer.refused[0].endswith(f"more than {MAX_DEPTH} directories deep")
    assert layer.refused[2].endswith("longer than PATH_MAX, no path could reach it")
    assert max(len(r) for r in layer.refused) < 500


@pytest.mark.parametrize("recorder", RECORDERS)
def test_a_workload_building_a_very_deep_tree_is_cleaned_up(run, work: Path, tmp_path: Path) -> None:
    """The upper dir (on the work directory's disk) gets a tree deeper than shutil.rmtree can remove."""
    blob = LayerBuilder().file("data/x", b"x").write(tmp_path / "d.tar", compression=None)
    with open(blob, "r+b") as f:  # holes after the archive: large enough to unpack on disk, not tmpfs
        f.truncate(f.seek(0, os.SEEK_END) + _mem_available())
    script = (
        "cd /tmp; i=0; while [ $i -lt 1500 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; pwd | wc -c"
    )
    result = run(script, blob)
    assert result.exit_code == 0
    assert not [line for line in Path("/proc/mounts").read_text().splitlines() if str(work) in line]
    assert os.listdir(work) == []
