"""The TOC (`stargz.index.json`) and the footer that points at it."""

from __future__ import annotations

import base64
import datetime
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from ctr_remote.estargz.errors import EstargzError

TOC_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"

# The layer descriptor annotations lazy pulling reads (upstream's estargz/types.go): the sha256 of
# the TOC JSON, which the snapshotter verifies the TOC against, and the size of the plain tar.
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"

FOOTER_SIZE = 51
_FOOTER_HEAD = (
    bytes([0x1F, 0x8B, 8, 4, 0, 0, 0, 0, 0, 0xFF]) + struct.pack("<H", 26) + b"SG" + struct.pack("<H", 22)
)
_FOOTER_TAIL = bytes([1, 0, 0, 0xFF, 0xFF]) + bytes(8)  # empty stored final block, CRC32 0, ISIZE 0
_FOOTER_OFFSET = re.compile(rb"([0-9a-f]{16})STARGZ")

# Keys in the order of upstream's TOCEntry struct, so our JSON reads like upstream's.
_FIELDS = (
    ("name", "name"),
    ("type", "type"),
    ("size", "size"),
    ("modtime", "modtime"),
    ("linkName", "link_name"),
    ("mode", "mode"),
    ("uid", "uid"),
    ("gid", "gid"),
    ("userName", "user_name"),
    ("groupName", "group_name"),
    ("offset", "offset"),
    ("innerOffset", "inner_offset"),
    ("devMajor", "dev_major"),
    ("devMinor", "dev_minor"),
    ("xattrs", "xattrs"),
    ("digest", "digest"),
    ("chunkOffset", "chunk_offset"),
    ("chunkSize", "chunk_size"),
    ("chunkDigest", "chunk_digest"),
)
_INT_FIELDS = {"size", "mode", "uid", "gid", "offset", "inner_offset", "dev_major", "dev_minor",
               "chunk_offset", "chunk_size"}  # fmt: skip


@dataclass(slots=True)
class TOCEntry:
    """One TOC entry; zero values are omitted from the JSON, as upstream does.

    `name` is the raw tar name (`bin/`, `./etc/passwd`); `mode` the raw tar mode field; `type` is
    dir, reg, symlink, hardlink, char, block, fifo or chunk (the second and later chunks of a file).
    """

    name: str
    type: str
    size: int = 0
    modtime: str = ""
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    offset: int = 0
    inner_offset: int = 0
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    digest: str = ""
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""

    def to_json(self, indent: str = "\t\t") -> str:
        """This entry as a JSON object, indented like Go's MarshalIndent at depth 2."""
        inner = indent + "\t"
        parts = []
        for key, attr in _FIELDS:
            value = getattr(self, attr)
            if key in ("name", "type") or value:
                if attr == "xattrs":
                    items = ",\n".join(
                        f"{inner}\t{_js(k)}: {_js(base64.b64encode(v).decode())}"
                        for k, v in sorted(value.items())
                    )
                    parts.append(f'{inner}"xattrs": {{\n{items}\n{inner}}}')
                else:
                    parts.append(f'{inner}"{key}": {value if attr in _INT_FIELDS else _js(value)}')
        return indent + "{\n" + ",\n".join(parts) + "\n" + indent + "}"

    @classmethod
    def from_json(cls, obj: Any) -> TOCEntry:
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("name"), str)
            or not isinstance(obj.get("type"), str)
        ):
            raise EstargzError("invalid TOC: an entry lacks a name or type")
        kwargs: dict[str, Any] = {}
        for key, attr in _FIELDS:
            if key not in obj or obj[key] is None:
                continue
            value = obj[key]
            if attr == "xattrs":
                try:
                    value = {str(k): base64.b64decode(v, validate=True) for k, v in value.items()}
                except (AttributeError, ValueError, TypeError):
                    raise EstargzError(f"invalid TOC: bad xattrs on {obj['name']!r}") from None
            elif attr in _INT_FIELDS:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise EstargzError(f"invalid TOC: {key} of {obj['name']!r} is not an integer")
            elif not isinstance(value, str):
                raise EstargzError(f"invalid TOC: {key} of {obj['name']!r} is not a string")
            kwargs[attr] = value
        return cls(**kwargs)


_PLAIN = re.compile(r"[ !#-%'-;=?-\[\]-~]*")  # printable ASCII but for " \\ < > &: no escaping needed


def _js(s: str) -> str:
    if _PLAIN.fullmatch(s):  # the common case, and the hot path for layers of many small files
        return f'"{s}"'
    # Go's encoder escapes these for HTML safety; matching it keeps our TOCs diffable with upstream's.
    return (
        json.dumps(s, ensure_ascii=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def toc_json_head() -> bytes:
    return b'{\n\t"version": 1,\n\t"entries": [\n'


def toc_json_tail() -> bytes:
    return b"\n\t]\n}"


def toc_json_empty() -> bytes:
    """A TOC without entries (a lossless layer of an empty tar): Go encodes upstream's nil slice
    as null."""
    return b'{\n\t"version": 1,\n\t"entries": null\n}'


_EPOCH = datetime.datetime(1970, 1, 1)


def format_modtime(mtime_ns: int, name: str) -> str:
    """Upstream's rule: UTC, rounded to the second (halves up), omitted for the Unix epoch second."""
    sec, rem = divmod(mtime_ns, 1_000_000_000)
    if sec == 0:
        return ""
    if rem >= 500_000_000:
        sec += 1
    try:
        return (_EPOCH + datetime.timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%SZ")
    except OverflowError:
        raise EstargzError(f"tar entry {name!r} has a modification time out of range") from None


def encode_footer(toc_offset: int) -> bytes:
    footer = _FOOTER_HEAD + b"%016xSTARGZ" % toc_offset + _FOOTER_TAIL
    assert len(footer) == FOOTER_SIZE
    return footer


def parse_footer(footer: bytes) -> int | None:
    """The TOC offset recorded in a 51-byte eStargz footer, or None if it is not one.

    MTIME, XFL and OS are not checked: they carry nothing and other writers may set them.
    """
    if len(footer) != FOOTER_SIZE or footer[:4] != _FOOTER_HEAD[:4] or footer[10:16] != _FOOTER_HEAD[10:16]:
        return None
    m = _FOOTER_OFFSET.fullmatch(footer[16:38])
    return int(m.group(1), 16) if m else None


# -- external TOC (upstream's estargz/externaltoc): the blob ends with this 46-byte empty gzip
# member instead of the TOC and the offset footer; the TOC is a blob of its own.
EXTERNAL_FOOTER_SIZE = 46
_EXTERNAL_MAGIC = b"STARGZEXTERNALTOC"
_EXTERNAL_FOOTER = (
    bytes([0x1F, 0x8B, 8, 4, 0, 0, 0, 0, 0, 0xFF])
    + struct.pack("<H", 4 + len(_EXTERNAL_MAGIC))
    + b"SG"
    + struct.pack("<H", len(_EXTERNAL_MAGIC))
    + _EXTERNAL_MAGIC
    + _FOOTER_TAIL
)
assert len(_EXTERNAL_FOOTER) == EXTERNAL_FOOTER_SIZE
# The annotation on each layer of the `-esgztoc` image naming the layer its TOC belongs to.
EXTERNAL_TOC_LAYER_ANNOTATION = "containerd.io/snapshot/stargz/layer.digest"
EXTERNAL_TOC_IMAGE_SUFFIX = "-esgztoc"


def encode_external_footer() -> bytes:
    return _EXTERNAL_FOOTER


def is_external_footer(footer: bytes) -> bool:
    """Whether these 46 bytes are the external-TOC footer (MTIME, XFL and OS not checked)."""
    f = _EXTERNAL_FOOTER
    return len(footer) == EXTERNAL_FOOTER_SIZE and footer[:4] == f[:4] and footer[10:] == f[10:]


# -- zstd:chunked (upstream's estargz/zstdchunked): the TOC JSON, zstd-compressed, in a skippable
# frame; then a skippable frame holding the 40-byte footer: TOC offset (of the compressed TOC, past
# its frame header), compressed length, uncompressed length, manifest type 1, magic.
SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
ZSTD_FOOTER_SIZE = 48  # skippable frame header (8) + footer (40)
_ZSTD_MAGIC = b"GnUlInUx"
_MANIFEST_TYPE_CRFS = 1
# Upstream's snapshotter reads io.containers.*; containers/storage (podman, CRI-O) reads
# io.github.containers.*. We write both, with the same values.
ZSTD_CHECKSUM_ANNOTATIONS = (
    "io.containers.zstd-chunked.manifest-checksum",
    "io.github.containers.zstd-chunked.manifest-checksum",
)
ZSTD_POSITION_ANNOTATIONS = (
    "io.containers.zstd-chunked.manifest-position",
    "io.github.containers.zstd-chunked.manifest-position",
)
# Annotations that describe one blob's layout: measured from the blob, never carried over from the
# layer it was converted from.
FORMAT_ANNOTATIONS = frozenset(
    {
        TOC_DIGEST_ANNOTATION,
        UNCOMPRESSED_SIZE_ANNOTATION,
        *ZSTD_CHECKSUM_ANNOTATIONS,
        *ZSTD_POSITION_ANNOTATIONS,
    }
)


def carried_annotations(source: dict[str, str] | None) -> dict[str, str]:
    """The annotations of a source layer that its conversion keeps (all but FORMAT_ANNOTATIONS)."""
    return {k: v for k, v in (source or {}).items() if k not in FORMAT_ANNOTATIONS}


def skippable_frame(payload: bytes) -> bytes:
    return SKIPPABLE_MAGIC + struct.pack("<I", len(payload)) + payload


def encode_zstd_footer(toc_offset: int, compressed_len: int, raw_len: int) -> bytes:
    body = struct.pack("<QQQQ", toc_offset, compressed_len, raw_len, _MANIFEST_TYPE_CRFS) + _ZSTD_MAGIC
    return skippable_frame(body)


def parse_zstd_footer(footer: bytes) -> tuple[int, int, int] | None:
    """(TOC offset, compressed length, uncompressed length) from a 48-byte zstd:chunked footer frame,
    or None if it is not one."""
    if len(footer) != ZSTD_FOOTER_SIZE or footer[:4] != SKIPPABLE_MAGIC or footer[40:] != _ZSTD_MAGIC:
        return None
    size, off, clen, raw, kind = struct.unpack("<I4Q", footer[4:40])
    if size != 40 or kind != _MANIFEST_TYPE_CRFS:
        return None
    return off, clen, raw


def zstd_position(toc_offset: int, compressed_len: int, raw_len: int) -> str:
    return f"{toc_offset}:{compressed_len}:{raw_len}:{_MANIFEST_TYPE_CRFS}"
