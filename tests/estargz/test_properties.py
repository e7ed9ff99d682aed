"""Property tests: random layers in, and whatever they hold, the blob is valid eStargz that says
exactly what the layer says.

Each example is a random tree of directories, files (sizes around a small chunk size), symlinks,
hardlinks, devices and fifos, with duplicates, `./` and `/` prefixes, long and non-ASCII names,
xattrs, in PAX, GNU or USTAR format, plain, gzip or zstd, with a random prioritized list drawn
from its names plus missing ones. `ESTARGZ_PROPERTY_EXAMPLES=N` multiplies the example counts for a
longer local run, and `ESTARGZ_PROPERTY_RANDOM=1` draws new examples (with `--hypothesis-seed`);
by default examples are derandomized so CI runs are repeatable.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctr_remote.estargz import BuildResult, EstargzError, open_estargz
from tests.estargz.layers import Entry, compress, convert, make_tar, pattern, toc_names, upstream_layer

pytestmark = pytest.mark.unit

CHUNK = 64
_SCALE = int(os.environ.get("ESTARGZ_PROPERTY_EXAMPLES", "1"))
_SETTINGS = {
    "deadline": None,
    "database": None,
    "derandomize": not os.environ.get("ESTARGZ_PROPERTY_RANDOM"),
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
}
GENERATED = {"stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark"}
FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}
# What USTAR's fields hold (no PAX or GNU extensions): 7 octal digits of id, 11 of mtime (>= 0), a
# link name of 100 bytes. Names always fit: at most 3 components of up to 70 bytes split into USTAR's
# prefix (155) and name (100). Examples draw each format's values from what that format can write,
# at its limits, so the stdlib writes every example and none is dropped unchecked.
USTAR_MAX_ID = 0o7777777
USTAR_MAX_MTIME = 8**11 - 1
USTAR_MAX_LINK = 100

_component = st.sampled_from(["a", "b", "cc", "d.d", "\u00e9t\u00e9", "L" * 70, "sp ace", ".", ".."])
_path = st.lists(_component, min_size=1, max_size=3).map("/".join)
_prefix = st.sampled_from(["", "", "./", "/"])
_size = st.one_of(
    st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 7]), st.integers(0, 5 * CHUNK)
)


def clean(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


@dataclass
class Layer:
    entries: list[Entry]
    fmt: str
    compression: str
    prioritized: list[str]

    def tar(self) -> bytes:
        return make_tar(self.entries, FORMATS[self.fmt])


@st.composite
def layers(draw: st.DrawFn, fmt: str, upstream_safe: bool = False) -> Layer:
    """A random layer in tar format `fmt`. `upstream_safe`: every parent directory has an entry and
    hardlinks point at earlier files that are never replaced (where upstream's builder aborts or
    loops otherwise)."""
    ustar = fmt == "ustar"
    ids = [0, 1, 1000, 70000, USTAR_MAX_ID if ustar else 3_000_000]
    mtimes = [0, 1, 1_700_000_000, USTAR_MAX_MTIME, 1_700_000_000.5]
    mtimes += [USTAR_MAX_MTIME - 1, 2] if ustar else [-1, USTAR_MAX_MTIME + 1]
    long_link = "L" * (USTAR_MAX_LINK if ustar else 150)
    entries: list[Entry] = []
    files: list[str] = []
    for i in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["dir", "file", "file", "file", "symlink", "hardlink", "char", "fifo"]))
        name = draw(_prefix) + draw(_path)
        meta: dict[str, Any] = {
            "mode": draw(st.sampled_from([0o644, 0o755, 0o4755, 0o1777, 0o600])),
            "uid": draw(st.sampled_from(ids)),
            "gid": draw(st.sampled_from([0, 2, 1000])),
            "uname": draw(st.sampled_from(["", "root", "u\u00fc"])),
            "mtime": draw(st.sampled_from(mtimes)),
        }
        if fmt == "pax" and draw(st.booleans()):
            meta["pax"] = {
                "SCHILY.xattr.user.k" + str(i % 2): draw(st.sampled_from(["v", "", "\u00e9" * 50]))
            }
        if kind == "dir":
            entries.append(Entry(name + draw(st.sampled_from(["", "/"])), tarfile.DIRTYPE, **meta))
        elif kind == "file":
            entries.append(Entry(name, tarfile.REGTYPE, pattern(draw(_size), i), **meta))
            files.append(name)
        elif kind == "symlink":
            target = draw(st.sampled_from(["x", "../a", "/etc/passwd", long_link, "cc/d.d"]))
            entries.append(Entry(name, tarfile.SYMTYPE, linkname=target, **meta))
        elif kind == "hardlink" and (targets := [n for n in files if not ustar or _fits_link(n)]):
            entries.append(Entry(name, tarfile.LNKTYPE, linkname=draw(st.sampled_from(targets)), **meta))
        elif kind == "char":
            kind_flag = draw(st.sampled_from([tarfile.CHRTYPE, tarfile.BLKTYPE]))
            major, minor = draw(st.integers(0, 300)), draw(st.integers(0, 300))
            entries.append(Entry(name, kind_flag, devmajor=major, devminor=minor, **meta))
        elif kind == "fifo":
            entries.append(Entry(name, tarfile.FIFOTYPE, **meta))
    entries = _resolvable_hardlinks(entries)
    if upstream_safe:
        entries = _upstream_safe(entries)
    names = [e.name for e in entries]
    listed = draw(st.lists(st.one_of(st.sampled_from(names), _path), max_size=6)) if names else []
    listed = [draw(_prefix) + clean(p) for p in listed] + draw(st.lists(st.just("missing/file"), max_size=1))
    compression = draw(st.sampled_from(["none", "gzip", "zstd"]))
    return Layer(entries, fmt, compression, listed)


def _fits_link(name: str) -> bool:
    return len(name.encode()) <= USTAR_MAX_LINK


def _resolvable_hardlinks(entries: list[Entry]) -> list[Entry]:
    """Without hardlinks whose target ends up as anything but a regular file (replaced by a later
    duplicate): cycles are an error (test_order), and the oracle rejects chains."""
    final = {clean(e.name): e.type for e in entries}
    return [
        e
        for e in entries
        if e.type != tarfile.LNKTYPE
        or (final[clean(e.linkname)] == tarfile.REGTYPE and clean(e.linkname) != clean(e.name))
    ]


def _upstream_safe(entries: list[Entry]) -> list[Entry]:
    # No name is both a directory and something else.
    ancestors = {"", *(a for e in entries for a in _ancestors(clean(e.name)))}
    entries = [e for e in entries if e.type == tarfile.DIRTYPE or clean(e.name) not in ancestors]
    entries = [
        e
        for e in entries
        if e.type != tarfile.DIRTYPE
        or clean(e.name) not in {clean(x.name) for x in entries if x.type != tarfile.DIRTYPE}
    ]
    counts: dict[str, int] = {}
    for e in entries:
        counts[clean(e.name)] = counts.get(clean(e.name), 0) + 1
    out: list[Entry] = []
    dirs: set[str] = set()
    for e in entries:
        key = clean(e.name)
        if e.type == tarfile.LNKTYPE and counts.get(clean(e.linkname)) != 1:
            continue
        if e.type != tarfile.DIRTYPE and counts[key] != 1:
            continue
        for i in range(key.count("/")):
            parent = "/".join(key.split("/")[: i + 1])
            if parent not in dirs:
                dirs.add(parent)
                out.append(Entry(parent + "/", tarfile.DIRTYPE, mode=0o755))
        if e.type == tarfile.DIRTYPE:
            dirs.add(key)
        out.append(e)
    return out


def _ancestors(key: str) -> set[str]:
    parts = key.split("/")
    return {"/".join(parts[:i]) for i in range(1, len(parts))}


def final_tree(blob: bytes) -> dict[str, tuple]:
    """What extracting the tar (plain, gzip or zstd) leaves, entry by entry: the last one wins."""
    import zstandard

    if blob[:4] == b"\x28\xb5\x2f\xfd":
        blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    tree: dict[str, tuple] = {}
    with tarfile.open(fileobj=io.BytesIO(blob), encoding="utf-8", errors="surrogateescape") as tar:
        for m in tar:
            key = clean(m.name)
            data = b""
            if m.isreg():
                fh = tar.extractfile(m)
                assert fh is not None
                data = fh.read()
            link = clean(m.linkname) if m.islnk() else m.linkname
            dev = (m.devmajor, m.devminor) if m.ischr() or m.isblk() else (0, 0)
            xattrs = {k: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            tree[key] = (
                m.type,
                data,
                link,
                m.mode,
                m.uid,
                m.gid,
                m.uname,
                m.gname,
                int(m.mtime),
                dev,
                xattrs,
            )
    return tree


def check_blob(oracle, path: Path, result: BuildResult, layer_tar: bytes) -> None:  # type: ignore[no-untyped-def]
    # (a) the upstream reader accepts it, strictly
    oracle.check_blob(path, result.toc_digest)
    # (b) it extracts to the input's tree; only generated files and parent directories are added
    blob = path.read_bytes()
    want, got = final_tree(layer_tar), final_tree(blob)
    for key in set(got) - set(want):
        assert key in GENERATED or (
            got[key][0] == tarfile.DIRTYPE and any(k.startswith(key + "/") for k in want)
        ), f"{key!r} appeared"
        del got[key]
    assert got == want
    # (d) our reader verifies it and reads every file back
    with path.open("rb") as fh:
        reader = open_estargz(fh)
        reader.verify(result.toc_digest)
        for e in reader.entries:
            if e.type == "reg" and e.name not in GENERATED:
                assert (reader.read_file(e.name) if e.size else b"") == want[clean(e.name)][1], e.name


# Each tar format gets its share of the examples (drawn from one strategy, USTAR got 1 of 60 here).
@pytest.mark.parametrize("fmt", sorted(FORMATS))
@settings(max_examples=20 * _SCALE, **_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_random_layers_convert_to_valid_estargz_of_the_same_tree(
    oracle, tmp_path_factory, fmt: str, data: st.DataObject
) -> None:
    layer = data.draw(layers(fmt), label="layer")
    tmp = tmp_path_factory.mktemp("prop")
    layer_tar = layer.tar()  # every drawn example is writable in its format (see `layers`)
    try:
        path, result = convert(
            tmp, compress(layer_tar, layer.compression), chunk_size=CHUNK, prioritized_files=layer.prioritized
        )
    except EstargzError as e:
        # The one refusal a layer of these entries can earn: a hardlink under which entries are.
        final = {clean(e.name): e.type for e in layer.entries}
        under = {a for k in final for a in _ancestors(k)} | {""}
        assert "under a non-directory" in str(e) and any(
            final.get(a) not in (None, tarfile.DIRTYPE) for a in under
        ), e
        return
    check_blob(oracle, path, result, layer_tar)
    # Missing: what is not in the layer, but for the parents of what is (they are added).
    present = {clean(e.name) for e in layer.entries}
    parents = {posixpath.dirname(k) for k in present}
    parents |= {k for p in parents for k in _ancestors(p)}
    missing = {clean(p) for p in result.missing_prioritized}
    assert {clean(p) for p in layer.prioritized if clean(p) not in present | parents | {""}} <= missing
    assert not missing & present
    # Already eStargz (ours): converts again to the same tree, with or without the list.
    again, result2 = convert(
        tmp, path.read_bytes(), "again.esgz", chunk_size=CHUNK * 2, prioritized_files=None
    )
    check_blob(oracle, again, result2, layer_tar)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@settings(max_examples=4 * _SCALE, **_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_random_layers_order_like_upstream_and_reconvert(
    oracle, oracle_gen: Path, tmp_path_factory, fmt: str, data: st.DataObject
) -> None:
    """(c) The prioritized order is upstream's; upstream's blob converts to the same order."""
    layer = data.draw(layers(fmt, upstream_safe=True), label="layer")
    tmp = tmp_path_factory.mktemp("up")
    layer_tar = layer.tar()
    # The generator's list is comma-separated: a name with a comma, or an empty one, has no spelling.
    listed = [p for p in layer.prioritized if p and "," not in p]
    ours, result = convert(tmp, layer_tar, chunk_size=CHUNK, prioritized_files=listed)
    check_blob(oracle, ours, result, layer_tar)
    theirs, their_toc_digest = upstream_layer(oracle_gen, tmp, layer_tar, listed)
    with theirs.open("rb") as fh:  # our reader accepts upstream's blob as it is
        open_estargz(fh).verify(their_toc_digest)
    mine, upstream = toc_names(ours), toc_names(theirs)
    again, result2 = convert(
        tmp, theirs.read_bytes(), "again.esgz", chunk_size=CHUNK, prioritized_files=listed
    )
    check_blob(oracle, again, result2, layer_tar)
    reconverted = toc_names(again)
    if ".no.prefetch.landmark" in mine and ".prefetch.landmark" in upstream:
        # Where nothing (or only the root) is found, upstream still writes `.prefetch.landmark`
        # (see order.py): the same entries, but for the landmark and the root's position.
        assert {clean(n) for n in upstream[: upstream.index(".prefetch.landmark")]} <= {""}
        mine, upstream, reconverted = (
            [n for n in names if clean(n) not in {"", *GENERATED}] for names in (mine, upstream, reconverted)
        )
    assert mine == upstream == reconverted
