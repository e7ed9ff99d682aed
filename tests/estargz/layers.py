"""Layer tars for the eStargz tests, made with the stdlib tarfile (and a few hand-made headers)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from ctr_remote.estargz import BuildOptions, BuildResult, build, open_estargz
from tests.conftest import Oracle

MTIME = 1_700_000_000
SMALL_CHUNK = 4096  # tests use small chunks so that "many chunks" stays cheap
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"


@dataclass
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: float = MTIME
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)


def make_tar(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = e.type
            ti.size = len(e.data)
            ti.linkname = e.linkname
            ti.mode = e.mode
            ti.uid, ti.gid, ti.uname, ti.gname = e.uid, e.gid, e.uname, e.gname
            ti.mtime = e.mtime
            ti.devmajor, ti.devminor = e.devmajor, e.devminor
            ti.pax_headers = dict(e.pax)
            tar.addfile(ti, io.BytesIO(e.data) if e.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def d(name: str, mode: int = 0o755, **kw: object) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]


def f(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Entry:
    return Entry(name, tarfile.REGTYPE, data, mode=mode, **kw)  # type: ignore[arg-type]


def pattern(n: int, seed: int = 1) -> bytes:
    """Compressible but not trivial bytes."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, i // 64)).digest()[: 8 + i % 24]
        i += 1
    return bytes(out[:n])


def edge_case_entries(chunk: int = SMALL_CHUNK) -> list[Entry]:
    """The upstream suite's edge cases (shared/tools/README.md section 2), in one layer."""
    long_dir = "deep/" + "d" * 60 + "/" + "e" * 60
    return [
        d("./"),
        d("etc/"),
        f("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", uid=0, gid=0, uname="root", gname="root"),
        f("etc/empty"),
        f("etc/one", b"1", uname="root", gname="root"),
        d("./usr"),
        d("./usr/bin"),
        f("./usr/bin/exact", pattern(chunk, 2), mode=0o755),
        f("./usr/bin/many", pattern(chunk * 5 + 123, 3), mode=0o755),
        f("usr/bin/zeros", bytes(chunk * 3)),
        d("/abs"),
        f("/abs/file", b"absolute\n"),
        Entry("usr/bin/link", tarfile.SYMTYPE, linkname="exact", mode=0o777),
        Entry("usr/bin/escape", tarfile.SYMTYPE, linkname="../../../x", mode=0o777),
        Entry("usr/bin/hard", tarfile.LNKTYPE, linkname="./usr/bin/many"),
        Entry("etc/hardone", tarfile.LNKTYPE, linkname="etc/one"),
        d("dev/"),
        Entry("dev/char", tarfile.CHRTYPE, mode=0o600, devmajor=111, devminor=222),
        Entry("dev/block", tarfile.BLKTYPE, mode=0o600, devmajor=123, devminor=456),
        Entry("dev/fifo", tarfile.FIFOTYPE, mode=0o644),
        f(
            "xattr",
            b"with xattrs",
            pax={
                "SCHILY.xattr.user.text": "value",
                "SCHILY.xattr.user.binary": "\udcff\udcfeok",
                "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00",
                "SCHILY.xattr.user.empty": "",
            },
        ),
        f("setuid", b"#!/bin/sh\n", mode=0o4755),
        f("setgid", b"#!/bin/sh\n", mode=0o2755),
        d("sticky", mode=0o1777),
        d("owned/", uid=50, gid=100, uname="user50", gname="group100"),
        f("owned/a", b"a", uid=50, gid=100, uname="user50", gname="group100"),
        f("owned/b", b"b", uid=50, gid=100, uname="user50", gname="group100"),
        f("owned/big-id", b"c", uid=3_000_000, gid=3_000_001, uname="big", gname="big"),
        f(".wh.deleted"),
        d("opaque/"),
        f("opaque/.wh..wh..opq"),
        d("deep/"),
        d("deep/" + "d" * 60),
        d(long_dir),
        f(long_dir + "/" + "f" * 120, b"long name\n"),
        Entry("longlink", tarfile.SYMTYPE, linkname=long_dir + "/" + "f" * 120, mode=0o777),
        f("caf\u00e9/\u65e5\u672c.txt", b"unicode\n"),
        f('esc"aped\\<name>&\u2028\t', b"JSON escapes in the TOC"),
        f("no-mtime", b"epoch", mtime=0),
        f("frac-mtime", b"frac", pax={"mtime": "1700000000.5"}),
    ]


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, 6)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def convert(tmp: Path, layer: bytes, name: str = "layer.esgz", **opts: object) -> tuple[Path, BuildResult]:
    out = tmp / name
    with out.open("wb") as dst:
        result = build(io.BytesIO(layer), dst, BuildOptions(**opts))  # type: ignore[arg-type]
    return out, result


def check_converted(oracle: Oracle, path: Path, result: BuildResult, allowed: tuple[str, ...] = ()) -> dict:
    """The oracle's check of a blob `convert` wrote: against its TOC blob when its TOC is external,
    and by v0.12 too unless v0.12 cannot read it (an external TOC, innerOffset chunks)."""
    toc = None
    if result.external_toc is not None:
        toc = path.with_name(path.name + ".toc")
        toc.write_bytes(result.external_toc)
    with path.open("rb") as fh:
        inner = any(e.inner_offset for e in open_estargz(fh, result.external_toc).entries)
    older = toc is None and not inner
    return oracle.check_blob(path, result.toc_digest, allowed, older_reader=older, external_toc=toc)


def toc_names(path: Path) -> list[str]:
    """Non-chunk TOC entry names, in order."""
    with path.open("rb") as fh:
        return [e.name for e in open_estargz(fh).entries if e.type != "chunk"]


def upstream_layer(gen: Path, tmp: Path, layer_tar: bytes, prioritized: list[str] | None) -> tuple[Path, str]:
    """Build the layer with upstream's estargz.Build (through the oracle generator): the blob's path
    and its TOC digest annotation."""
    mode = "estargz" + (":" + ",".join(prioritized) if prioritized else "")
    path, annotations = upstream_blob(gen, tmp, layer_tar, mode)
    return path, annotations[TOC_DIGEST_ANNOTATION]


def upstream_blob(gen: Path, tmp: Path, layer_tar: bytes, mode: str) -> tuple[Path, dict[str, str]]:
    """The layer upstream's estargz.Build writes for `mode` (estargz-check-gen's KIND[+OPTION][:PATHS],
    e.g. "zstdchunked+minchunk=1000:etc/passwd"): the blob's path and its descriptor's annotations."""
    src = tmp / "upstream-src.tar"
    src.write_bytes(layer_tar)
    out = tmp / "upstream-oci"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(
        [str(gen), "oci-image", str(src), str(out), mode], check=True, capture_output=True, timeout=300
    )
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs" / index["manifests"][0]["digest"].replace(":", "/")).read_text())
    desc = manifest["layers"][0]
    return out / "blobs" / desc["digest"].replace(":", "/"), desc.get("annotations") or {}


def tar_contents(layer: bytes) -> dict[str, bytes]:
    """Regular files of a tar by name (last occurrence wins), read with the stdlib."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(layer), encoding="utf-8", errors="surrogateescape") as tar:
        for m in tar:
            if m.isreg():
                fh = tar.extractfile(m)
                assert fh is not None
                out[m.name] = fh.read()
    return out


def temp_entries() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))
