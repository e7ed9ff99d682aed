"""Tar headers, read the way Go's archive/tar reads them, and written for the few entries we make.

The writer copies every input header byte for byte, so readers of the output see exactly what
they would see in the input; the TOC must then describe the entries the way those readers (all
Go: the snapshotter, containerd, the oracle) interpret them. Hence this parser follows Go's
rules: GNU long names, PAX records, the USTAR prefix, base-256 numbers, `\\0` type flags.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Protocol

from ctr_remote.estargz.errors import EstargzError, UnrepresentableLayerError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

REG, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO = "0", "1", "2", "3", "4", "5", "6"
#: Tar type flag -> TOC entry type, for the types eStargz can hold.
TOC_TYPES = {REG: "reg", HARDLINK: "hardlink", SYMLINK: "symlink", CHAR: "char", BLOCKDEV: "block",
             DIR: "dir", FIFO: "fifo"}  # fmt: skip
_UNSUPPORTED = {
    "7": "contiguous file",
    "S": "GNU sparse file",
    "V": "tape volume label",
    "M": "multi-volume continuation",
    "D": "GNU dump directory",
}
#: Types whose header carries no payload even when its size field says otherwise (Go's rule).
_HEADER_ONLY = {HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO}
PAX_XATTR = "SCHILY.xattr."
MAX_EXTENSION_SIZE = 1 << 20  # PAX and GNU long-name headers: Go's archive/tar refuses larger ones
# Linux's PATH_MAX: no longer name or link target can be created by an unpacker, and a layer of
# entries with megabyte names (Go allows them) would otherwise hold megabytes per entry in memory.
MAX_PATH_BYTES = 4096


class Reader(Protocol):
    def read(self, n: int, /) -> bytes: ...


@dataclass(slots=True)
class TarHeader:
    """One tar entry's metadata after its PAX / GNU extension headers are applied."""

    name: str
    typeflag: str
    linkname: str = ""
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime_ns: int = 0
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, bytes] = field(default_factory=dict)

    @property
    def payload_size(self) -> int:
        """Bytes of payload that follow the header in the stream (before padding)."""
        return 0 if self.typeflag in _HEADER_ONLY else self.size

    @property
    def xattrs(self) -> dict[str, bytes]:
        return {k[len(PAX_XATTR) :]: v for k, v in self.pax.items() if k.startswith(PAX_XATTR)}


def padding(size: int) -> int:
    return -size % BLOCK


def _cstr(b: bytes) -> bytes:
    i = b.find(0)
    return b if i < 0 else b[:i]


def _num(b: bytes, what: str) -> int:
    if b and b[0] & 0x80:  # GNU base-256, two's complement when bit 6 is set
        value = int.from_bytes(bytes([b[0] & 0x7F]) + b[1:], "big")
        if b[0] & 0x40:
            value -= 1 << (len(b) * 8 - 1)
    else:
        s = _cstr(b.strip(b" \x00"))  # Go trims spaces and NULs, then stops at a NUL
        if s and not _OCTAL.fullmatch(s):  # Python's int() would take `0o7`, `1_0` and `+7`; Go does not
            raise UnrepresentableLayerError(f"invalid tar header: bad {what} field {bytes(b)!r}")
        value = int(s, 8) if s else 0
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise UnrepresentableLayerError(
            f"invalid tar header: {what} field {bytes(b)!r} is out of the 64-bit range"
        )
    return value


def _text(b: bytes, what: str) -> str:
    # A TOC is JSON, which cannot carry bytes that are not UTF-8 (upstream writes U+FFFD there and
    # so produces a TOC that names a file which is not in the tar).
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise UnrepresentableLayerError(
            f"tar {what} {b!r} is not UTF-8; an eStargz TOC cannot represent it"
        ) from None


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = int(block[148:156].strip(b" \x00") or b"-", 8)
    except ValueError:
        return False
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32  # the field itself counts as spaces
    if stored == unsigned:
        return True
    # Some old writers summed signed chars.
    high = sum(1 for c in block[:148] + block[156:] if c > 127)
    return stored == unsigned - 256 * high


_OCTAL = re.compile(rb"[0-7]+")
_DECIMAL = re.compile(rb"[+-]?[0-9]+")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_NUL_FREE_VALUES = {b"path", b"linkpath", b"uname", b"gname"}


def _parse_pax(data: bytes) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise EstargzError("invalid tar PAX header: bad record length") from None
        rec = data[sp + 1 : pos + length]
        if length < 5 or pos + length > len(data) or not rec.endswith(b"\n") or b"=" not in rec:
            raise EstargzError("invalid tar PAX header: malformed record")
        key, _, value = rec[:-1].partition(b"=")
        # Go's archive/tar refuses these records (and so would every reader of the blob).
        if not key or b"\0" in (value if key in _NUL_FREE_VALUES else key):
            raise EstargzError(f"invalid tar PAX record {key!r}: empty key or NUL byte")
        records[_text(key, "PAX record key")] = value
        pos += length
    return records


def _pax_time(v: bytes, key: str = "mtime") -> int:
    secs, _, frac = v.partition(b".")
    if frac and not frac.isdigit():
        raise UnrepresentableLayerError(f"invalid tar PAX {key} {v!r}")
    sec = _pax_int(secs, key)
    nsec = int((frac + b"000000000")[:9]) if frac else 0
    return sec * 1_000_000_000 + (-nsec if secs.startswith(b"-") else nsec)


def _pax_int(v: bytes, key: str) -> int:
    """A decimal PAX value the way Go's strconv.ParseInt(v, 10, 64) reads it."""
    if not _DECIMAL.fullmatch(v):
        raise UnrepresentableLayerError(f"invalid tar PAX {key} {v!r}")
    value = int(v)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise UnrepresentableLayerError(f"invalid tar PAX {key} {v!r}: out of the 64-bit range")
    return value


def _read_exact(r: Reader, n: int, what: str) -> bytes:
    data = r.read(n)
    if len(data) != n:
        raise EstargzError(f"truncated tar: stream ended inside {what}")
    return data


def _read_ext_data(r: Reader, size: int) -> bytes:
    data = _read_exact(r, size + padding(size), "an extension header")
    return data[:size]


@dataclass(slots=True)
class RawEntry:
    """A header as it appears in the stream: the parsed header and its exact bytes."""

    header: TarHeader
    raw: bytes  # all header blocks of the entry, extension headers included


def read_header(r: Reader) -> RawEntry | None:
    """Read the next entry's header blocks from `r`; None at the end of the archive.

    The payload is not read. PAX global headers are skipped: Go returns them as entries and
    upstream then fails; their only common use (git archive's `comment`) means nothing to a layer.
    """
    raw = bytearray()
    pax: dict[str, bytes] = {}
    long_name = long_link = None
    while True:
        block = r.read(BLOCK)
        if not block:
            if raw:
                raise EstargzError("truncated tar: stream ended after an extension header")
            return None  # Go treats a stream ending on a block boundary as a complete archive
        if len(block) != BLOCK:
            raise EstargzError("truncated tar: stream ended inside a header")
        if block == ZERO_BLOCK:
            if raw:
                raise EstargzError("invalid tar: end-of-archive marker after an extension header")
            return None
        if not _checksum_ok(block):
            raise EstargzError("not a tar archive (or a corrupt tar header: checksum mismatch)")
        flag = chr(block[156])
        size = _num(block[124:136], "size")
        if flag in ("x", "g", "L", "K"):
            _parse_main_numbers(block)  # Go parses (and checks) these in every header block
            if size > MAX_EXTENSION_SIZE:
                raise EstargzError(f"invalid tar: extension header of {size} bytes (Go's limit is 1 MiB)")
            data = _read_ext_data(r, size)
            if flag == "g":
                records = _parse_pax(data)
                if set(records) - {"comment"}:
                    raise EstargzError(f"unsupported PAX global header with records {sorted(records)}")
                continue
            raw += block
            raw += data + bytes(padding(size))
            if flag == "x":
                pax = _parse_pax(data)
            elif flag == "L":
                long_name = _cstr(data)
            else:
                long_link = _cstr(data)
            continue
        raw += block
        return RawEntry(_parse_main(block, flag, pax, long_name, long_link), bytes(raw))


def parse_headers(raw: bytes) -> TarHeader:
    """Parse the header blocks `read_header` returned earlier (the writer keeps only offsets)."""
    entry = read_header(io.BytesIO(raw))
    assert entry is not None
    return entry.header


def _parse_main_numbers(block: bytes) -> tuple[int, int]:
    """Check the numeric fields Go parses in every header block (an error there fails the whole
    entry for Go); the device numbers, which only USTAR, PAX, GNU and STAR blocks have."""
    for what, raw in (("size", block[124:136]), ("mode", block[100:108]), ("uid", block[108:116]),
                      ("gid", block[116:124]), ("mtime", block[136:148])):  # fmt: skip
        _num(raw, what)
    magic = block[257:263]
    if magic != b"ustar\x00" and not (magic == b"ustar " and block[263:265] == b" \x00"):
        return 0, 0
    if magic == b"ustar\x00" and block[508:512] == b"tar\x00":  # STAR: access and change times
        _num(block[476:488], "atime")
        _num(block[488:500], "ctime")
    return _num(block[329:337], "devmajor"), _num(block[337:345], "devminor")


def _gnu_times_ok(block: bytes) -> bool:
    """Whether a GNU header's atime and ctime fields (when set) parse."""
    try:
        for field in (block[345:357], block[357:369]):
            if field[0]:
                _num(field, "time")
    except EstargzError:
        return False
    return True


def _parse_main(
    block: bytes, flag: str, pax: dict[str, bytes], long_name: bytes | None, long_link: bytes | None
) -> TarHeader:
    magic, version = block[257:263], block[263:265]
    name = _cstr(block[0:100])
    link = _cstr(block[157:257])
    uname = gname = b""
    devmajor = devminor = 0
    if magic == b"ustar\x00" or (magic == b"ustar " and version == b" \x00"):
        uname, gname = _cstr(block[265:297]), _cstr(block[297:329])
        devmajor, devminor = _parse_main_numbers(block)
        prefix = b""
        if magic == b"ustar\x00":
            star = block[508:512] == b"tar\x00"
            prefix = _cstr(block[345:476] if star else block[345:500])
        elif not _gnu_times_ok(block) and _cstr(block[345:500]).isascii():
            # Go's reading of files from its pre-1.8 writer, which put a prefix in GNU headers.
            prefix = _cstr(block[345:500])
        if prefix:
            name = prefix + b"/" + name
    h = TarHeader(
        name="",
        typeflag=flag,
        size=_num(block[124:136], "size"),
        mode=_num(block[100:108], "mode"),
        uid=_num(block[108:116], "uid"),
        gid=_num(block[116:124], "gid"),
        mtime_ns=_num(block[136:148], "mtime") * 1_000_000_000,
        devmajor=devmajor,
        devminor=devminor,
        pax=pax,
    )
    # PAX records override the header fields (an empty value keeps the header's, as in Go).
    if pax.get("path"):
        name = pax["path"]
    if pax.get("linkpath"):
        link = pax["linkpath"]
    if pax.get("uname"):
        uname = pax["uname"]
    if pax.get("gname"):
        gname = pax["gname"]
    if pax.get("uid"):
        h.uid = _pax_int(pax["uid"], "uid")
    if pax.get("gid"):
        h.gid = _pax_int(pax["gid"], "gid")
    if pax.get("size"):
        h.size = _pax_int(pax["size"], "size")
    if pax.get("mtime"):
        h.mtime_ns = _pax_time(pax["mtime"])
    for key in ("atime", "ctime"):  # unused, but Go refuses the entry when they do not parse
        if pax.get(key):
            _pax_time(pax[key], key)
    if long_name:
        name = long_name
    if long_link:
        link = long_link
    for what, value in (("name", name), ("link target", link)):
        if len(value) > MAX_PATH_BYTES:
            raise UnrepresentableLayerError(
                f"tar entry {what} of {len(value)} bytes ({value[:40]!r}...) is longer than Linux's "
                f"PATH_MAX ({MAX_PATH_BYTES})"
            )
    h.name = _text(name, "entry name")
    h.linkname = _text(link, f"link target of {h.name!r}")
    h.uname = _text(uname, f"user name of {h.name!r}")
    h.gname = _text(gname, f"group name of {h.name!r}")
    if flag == "\x00":  # pre-POSIX regular file; a trailing slash marked directories
        h.typeflag = DIR if h.name.endswith("/") else REG
    if any(k.startswith("GNU.sparse.") for k in pax):
        raise EstargzError(f"unsupported tar entry {h.name!r}: GNU sparse file")
    if h.typeflag not in TOC_TYPES:
        kind = _UNSUPPORTED.get(h.typeflag, "unknown kind (sockets and others have no eStargz form)")
        raise EstargzError(f"unsupported tar entry {h.name!r}: type {h.typeflag!r} ({kind})")
    if h.size < 0:
        raise EstargzError(f"invalid tar header for {h.name!r}: negative size")
    return h


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def encode_header(name: str, typeflag: str, size: int = 0, mode: int = 0) -> bytes:
    """Header blocks for an entry we create (TOC, landmark, implied directory): root-owned,
    mtime 0, USTAR, with a PAX `path` record when the name does not fit."""
    bname = name.encode("utf-8")
    pax = b""
    if len(bname) > 100 or not bname.isascii():
        body = b" path=" + bname + b"\n"
        n = len(body) + len(str(len(body)))
        while len(str(n)) + len(body) != n:
            n = len(str(n)) + len(body)
        pax_data = str(n).encode() + body
        pax = _ustar_block(b"././@PaxHeader", "x", len(pax_data), 0)
        pax += pax_data + bytes(padding(len(pax_data)))
        bname = name.encode("ascii", "replace")[:100]  # the PAX path is what readers use
    return pax + _ustar_block(bname, typeflag, size, mode)


def _ustar_block(bname: bytes, typeflag: str, size: int, mode: int) -> bytes:
    b = bytearray(BLOCK)
    b[0 : len(bname)] = bname[:100]
    b[100:108] = _octal(mode, 8)
    b[108:116] = _octal(0, 8)
    b[116:124] = _octal(0, 8)
    b[124:136] = _octal(size, 12)
    b[136:148] = _octal(0, 12)
    b[156] = ord(typeflag)
    b[257:265] = b"ustar\x0000"
    b[329:337] = _octal(0, 8)
    b[337:345] = _octal(0, 8)
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\x00 " % sum(b)
    return bytes(b)
