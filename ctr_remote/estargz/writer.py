"""The eStargz writer: a layer tar in, an eStargz (or zstd:chunked) blob out.

Layout (RESEARCH.md 1.1, upstream `Writer.appendTar`): the blob is a chain of members (gzip
members, or zstd frames for zstd:chunked). Each chunk of a non-empty regular file starts a new
member; the file's tar padding and the headers that follow ride in the member of its last chunk.
Then the tail, by format (upstream's `Compressor.WriteTOCAndFooter`):
- eStargz: the TOC entry and the end-of-archive blocks form their own member; a 51-byte footer
  member points at it;
- external TOC: no TOC and no end-of-archive blocks; a 46-byte footer member says the TOC is
  elsewhere, and the TOC member becomes a blob of its own;
- zstd:chunked: no TOC entry and no end-of-archive blocks in the tar; the TOC JSON, zstd-compressed,
  in a skippable frame, then the footer in another.

With a min chunk size (upstream's `MinChunkSize`), a chunk joins the current member (found by
`innerOffset`) until that member holds that many compressed bytes: a decision that needs each
member's compressed size as it grows, so those blobs are compressed on one thread, streaming, as
upstream builds them.

Members are independent, so they are compressed in a thread pool (the compressors release the GIL) while
this thread reads the spool and plans the next ones; results are written in order, so the output
does not depend on the number of threads. Work goes out in jobs of whole members, and only a few
jobs are in flight at a time, so memory stays flat however large the layer is.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from zlib_ng import zlib_ng

from ctr_remote.cancel import CancelToken, checked_file
from ctr_remote.estargz.codec import Codec, MemberStream, codec_for
from ctr_remote.estargz.errors import EstargzError
from ctr_remote.estargz.options import BuildOptions, BuildResult, LayerFormat
from ctr_remote.estargz.order import Generated, Item, order_entries
from ctr_remote.estargz.scan import Scanned, scan
from ctr_remote.estargz.tar import (
    BLOCK,
    BLOCKDEV,
    CHAR,
    HARDLINK,
    REG,
    SYMLINK,
    TOC_TYPES,
    encode_header,
    padding,
    parse_headers,
)
from ctr_remote.estargz.toc import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_NAME,
    ZSTD_CHECKSUM_ANNOTATIONS,
    ZSTD_POSITION_ANNOTATIONS,
    TOCEntry,
    encode_external_footer,
    encode_footer,
    encode_zstd_footer,
    format_modtime,
    skippable_frame,
    toc_json_head,
    toc_json_tail,
    zstd_position,
)
from ctr_remote.layer.compression import CorruptLayerError, open_tar_stream

_GZIP_WBITS = 31  # deflate with a gzip header and trailer: one complete member
_JOB_BYTES = 1 << 20  # small members are batched into jobs of about this size
# Members smaller than this are compressed on the planning thread: handing them to a worker costs
# more (GIL hand-offs) than compressing them.
_INLINE_BYTES = 16 << 10
# Uncompressed bytes handed to workers and not yet written: bounds memory on many-core machines.
_INFLIGHT_BYTES = 64 << 20
# Headers of entries without payload (directories, links, empty files) share the member before them,
# as upstream's do; a run longer than this starts a new member, or a layer of millions of such
# entries would be one member (and one job) held in memory whole.
_HEADER_RUN_BYTES = 1 << 20


def build(
    src: BinaryIO,
    dst: BinaryIO,
    options: BuildOptions = BuildOptions(),  # noqa: B008
    *,
    cancel: CancelToken | None = None,
) -> BuildResult:
    """Convert the layer blob `src` (tar, tar+gzip or tar+zstd; may be unseekable) to eStargz,
    written to `dst` (may be unseekable). Memory use does not grow with the layer size; the layer
    is spooled to an unlinked temp file. Once `cancel` is set the conversion stops (Cancelled) at
    its next read or write."""
    if cancel is not None:
        src = checked_file(src, cancel, "layer conversion")
        dst = checked_file(dst, cancel, "layer conversion")
    try:
        tar, _ = open_tar_stream(src, "layer", options.gzip_helper)
        # Closing the tar stream stops its decompression thread (`src` itself stays open).
        with (
            tar,
            _temp_file("ctr-remote-estargz-") as spool,
            _temp_file("ctr-remote-estargz-toc-") as toc_file,
        ):
            entries = scan(tar, spool, options.chunk_size)
            items, missing = order_entries(entries, options.prioritized_files)
            result = _Writer(spool, toc_file, dst, options).write(items)
    except CorruptLayerError as e:
        raise EstargzError(str(e)) from None
    return dataclasses.replace(result, missing_prioritized=missing)


@contextlib.contextmanager
def _temp_file(prefix: str) -> Iterator[IO[bytes]]:
    """An unlinked temp file: nothing is left behind however the conversion ends."""
    try:
        file = tempfile.TemporaryFile(prefix=prefix)  # noqa: SIM115 (closed below, errors ignored)
    except OSError as e:
        raise EstargzError(f"cannot create a temp file in {tempfile.gettempdir()}: {e}") from None
    try:
        yield file
    finally:
        # Flushing what is thrown away may fail again (full disk); the fd is closed all the same.
        with contextlib.suppress(OSError):
            file.close()


@dataclass
class _Job:
    """Consecutive whole members, and the TOC entries whose headers or payloads are in them."""

    members: list[list[bytes]] = field(default_factory=lambda: [[]])
    size: int = 0
    # (entry, index of the member whose compressed offset is the entry's `offset`, or None)
    toc: list[tuple[TOCEntry, int | None]] = field(default_factory=list)


class _Writer:
    def __init__(self, spool: IO[bytes], toc_file: IO[bytes], dst: BinaryIO, options: BuildOptions) -> None:
        self._fd = spool.fileno()
        # The TOC goes to a temp file as entries are finished, so its size never counts in memory.
        self._toc = _TocSpool(toc_file)
        self._dst = dst
        self._options = options
        self._codec: Codec = codec_for(options.format, options.level)
        self._chunk_size = options.chunk_size
        # Min chunk size: the member being written, streaming, its compressed and uncompressed start.
        self._stream: MemberStream | None = None
        self._member_at = (0, 0)
        self._workers = options.workers or os.cpu_count() or 1
        self._job = _Job()
        self._header_run = 0  # header bytes appended since the last payload or new member
        self._inflight: collections.deque[tuple[_Job, list[bytes | Future[bytes]]]] = collections.deque()
        self._inflight_bytes = 0
        self._diff_hash = hashlib.sha256()
        self._usize = 0
        self._blob_hash = hashlib.sha256()
        self._pos = 0
        self._unames: dict[int, str] = {}
        self._gnames: dict[int, str] = {}

    def write(self, items: list[Item]) -> BuildResult:
        with ThreadPoolExecutor(self._workers, thread_name_prefix="estargz-compress") as pool:
            try:
                for item in items:
                    self._add(item, pool)
                if not self._options.min_chunk_size:  # streaming wrote as it went
                    self._submit(pool)
                while self._inflight:
                    self._collect()
            except BaseException:
                for _, results in self._inflight:
                    for r in results:
                        if isinstance(r, Future):
                            r.cancel()
                raise
        if self._stream is not None:
            self._emit(self._stream.finish())
        annotations: dict[str, str] = {}
        external: bytes | None = None
        toc_offset = self._pos
        if self._options.format is LayerFormat.ZSTD_CHUNKED:
            annotations = self._write_zstd_toc()
        elif self._options.external_toc:
            external = b"".join(self._toc_member(count=False))
            self._emit(encode_external_footer())
        else:
            for piece in self._toc_member(count=True):
                self._emit(piece)
            self._emit(encode_footer(toc_offset))
        return BuildResult(
            digest="sha256:" + self._blob_hash.hexdigest(),
            size=self._pos,
            toc_digest="sha256:" + self._toc.hash.hexdigest(),
            diff_id="sha256:" + self._diff_hash.hexdigest(),
            uncompressed_size=self._usize,
            annotations=annotations,
            external_toc=external,
        )

    def _toc_member(self, count: bool) -> Iterator[bytes]:
        """The TOC's tar entry and the end-of-archive blocks, as one gzip member; `count`: they are
        part of the layer's tar (not so for an external TOC, a blob of its own)."""
        size = self._toc.finish()
        # Streamed (zlib-ng) rather than libdeflate's one-shot call: a TOC can be tens of MB.
        gz = zlib_ng.compressobj(self._options.level, zlib_ng.DEFLATED, _GZIP_WBITS)
        pieces = [encode_header(TOC_NAME, REG, size), *self._toc.pieces(), bytes(padding(size) + 2 * BLOCK)]
        for piece in pieces:
            if count:
                self._diff_hash.update(piece)
                self._usize += len(piece)
            yield gz.compress(piece)
        yield gz.flush()

    def _write_zstd_toc(self) -> dict[str, str]:
        """zstd:chunked's tail: the TOC JSON alone (no tar entry, no end-of-archive: upstream's tar
        stream just ends) compressed in a skippable frame, and the footer frame."""
        raw_len = self._toc.finish()
        z = self._codec.stream()
        compressed = b"".join([*(z.write(p) for p in self._toc.pieces()), z.finish()])
        toc_offset = self._pos + 8  # past the skippable frame's magic and size
        self._emit(skippable_frame(compressed))
        self._emit(encode_zstd_footer(toc_offset, len(compressed), raw_len))
        checksum = "sha256:" + hashlib.sha256(compressed).hexdigest()
        position = zstd_position(toc_offset, len(compressed), raw_len)
        return {
            **{name: checksum for name in ZSTD_CHECKSUM_ANNOTATIONS},
            **{name: position for name in ZSTD_POSITION_ANNOTATIONS},
        }

    # -- planning, in output order

    def _add(self, item: Item, pool: ThreadPoolExecutor) -> None:
        if isinstance(item, Generated):
            header = encode_header(item.name, item.typeflag, len(item.payload), item.mode)
            entry = TOCEntry(name=item.name, type=TOC_TYPES[item.typeflag], mode=item.mode)
            size = len(item.payload)
            digest = hashlib.sha256(item.payload).digest()
            chunk_digests: tuple[bytes, ...] = ()
            payload: Iterator[bytes] = iter([item.payload])
        else:
            header, payload = self._read(item)
            entry = self._entry(item, header)
            size, digest, chunk_digests = item.size, item.digest, item.chunk_digests
        if self._header_run >= _HEADER_RUN_BYTES and self._stream is None:
            self._new_member(pool)
        self._append(header)
        self._header_run += len(header)
        if entry.type != "reg":
            self._add_toc(entry, None)
            return
        entry.size = size
        entry.digest = "sha256:" + digest.hex()
        if size == 0:
            self._add_toc(entry, None)
            return
        for i, chunk_offset in enumerate(range(0, size, self._chunk_size)):
            if i:
                entry = TOCEntry(name=entry.name, type="chunk", chunk_offset=chunk_offset)
            # The spec's rule: every chunk but the last records chunkSize. (Upstream also records it on
            # a last chunk that happens to be full, which the spec forbids and the oracle flags.)
            entry.chunk_size = self._chunk_size if size - chunk_offset > self._chunk_size else 0
            entry.chunk_digest = "sha256:" + chunk_digests[i].hex() if chunk_digests else entry.digest
            if self._options.min_chunk_size:
                self._stream_chunk(entry)
            else:
                self._new_member(pool)
                self._add_toc(entry, len(self._job.members) - 1)
            self._append(next(payload))
            self._header_run = 0
        self._append(bytes(padding(size)))

    def _stream_chunk(self, entry: TOCEntry) -> None:
        """Upstream's min-chunk rule (`appendTar`): before each chunk the member is flushed; it is
        closed, and the chunk starts a new one, if it already holds `min_chunk_size` compressed
        bytes or the chunk is a landmark's (the prefetch boundary must be exact); otherwise the
        chunk joins it at `innerOffset`. The first member starts at 0, where upstream's does."""
        stream = self._member_stream()
        self._emit(stream.flush())
        at, uat = self._member_at
        landmark = entry.name in (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK)
        if landmark or self._pos - at >= self._options.min_chunk_size:
            self._emit(stream.finish())
            self._stream = None
            self._member_at = (self._pos, self._usize)
            entry.offset = self._pos
        else:
            entry.offset, entry.inner_offset = at, self._usize - uat
        self._add_toc(entry, None)

    def _add_toc(self, entry: TOCEntry, member: int | None) -> None:
        """Streaming (min chunk size), offsets are known at once; otherwise once the job holding
        the entry (`member`: the index of the member whose offset is the entry's) is written."""
        if self._options.min_chunk_size:
            self._toc.add(entry)
        else:
            self._job.toc.append((entry, member))

    def _member_stream(self) -> MemberStream:
        if self._stream is None:
            self._stream = self._codec.stream()
        return self._stream

    def _entry(self, item: Scanned, header: bytes) -> TOCEntry:
        h = parse_headers(header)
        entry = TOCEntry(
            name=h.name,
            type=TOC_TYPES[h.typeflag],
            modtime=format_modtime(h.mtime_ns, h.name),
            mode=h.mode,
            uid=h.uid,
            gid=h.gid,
            user_name=_name_if_changed(self._unames, h.uid, h.uname),
            group_name=_name_if_changed(self._gnames, h.gid, h.gname),
            xattrs=h.xattrs,
        )
        if h.typeflag in (HARDLINK, SYMLINK):
            entry.link_name = h.linkname
        elif h.typeflag in (CHAR, BLOCKDEV):
            entry.dev_major, entry.dev_minor = h.devmajor, h.devminor
        return entry

    def _read(self, item: Scanned) -> tuple[bytes, Iterator[bytes]]:
        """The entry's header bytes, and its payload chunk by chunk."""
        header_size = item.data_start - item.raw_start
        if item.size <= self._chunk_size:  # most entries: one read for header and payload
            data = _pread_exact(self._fd, header_size + item.size, item.raw_start)
            return data[:header_size], iter([data[header_size:]])
        return _pread_exact(self._fd, header_size, item.raw_start), self._read_chunks(item)

    def _read_chunks(self, item: Scanned) -> Iterator[bytes]:
        for off in range(0, item.size, self._chunk_size):
            n = min(self._chunk_size, item.size - off)
            yield _pread_exact(self._fd, n, item.data_start + off)

    def _append(self, data: bytes) -> None:
        if not data:
            return
        if self._options.min_chunk_size:
            self._emit(self._member_stream().write(data))
        else:
            self._job.members[-1].append(data)
            self._job.size += len(data)
        self._diff_hash.update(data)
        self._usize += len(data)

    def _new_member(self, pool: ThreadPoolExecutor) -> None:
        self._header_run = 0
        if self._job.size >= _JOB_BYTES:
            self._submit(pool)
        else:
            self._job.members.append([])

    # -- compression and output, in order

    def _submit(self, pool: ThreadPoolExecutor) -> None:
        job, self._job, compress = self._job, _Job(), self._codec.compress
        results: list[bytes | Future[bytes]] = [
            compress(m) if sum(map(len, m)) < _INLINE_BYTES else pool.submit(compress, m) for m in job.members
        ]
        self._inflight.append((job, results))
        self._inflight_bytes += job.size
        while len(self._inflight) > 2 * self._workers or self._inflight_bytes > _INFLIGHT_BYTES:
            self._collect()

    def _collect(self) -> None:
        job, results = self._inflight.popleft()
        self._inflight_bytes -= job.size
        offsets = []
        for r in results:
            offsets.append(self._pos)
            self._emit(r.result() if isinstance(r, Future) else r)
        for entry, member in job.toc:
            if member is not None:
                entry.offset = offsets[member]
            self._toc.add(entry)

    def _emit(self, data: bytes) -> None:
        try:
            self._dst.write(data)
        except OSError as e:
            raise EstargzError(f"cannot write the eStargz blob: {e}") from None
        self._blob_hash.update(data)
        self._pos += len(data)


class _TocSpool:
    """The TOC JSON, written to a file entry by entry and hashed on the way."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.hash = hashlib.sha256()
        self._size = 0
        self._sep = toc_json_head()

    def add(self, entry: TOCEntry) -> None:
        self._write(self._sep + entry.to_json().encode())
        self._sep = b",\n"

    def finish(self) -> int:
        self._write(toc_json_tail())
        try:
            self._file.flush()
        except OSError as e:
            raise EstargzError(
                f"cannot spool the TOC to a temp file in {tempfile.gettempdir()}: {e}"
            ) from None
        return self._size

    def pieces(self) -> Iterator[bytes]:
        self._file.seek(0)
        while piece := self._file.read(1 << 20):
            yield piece

    def _write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as e:
            raise EstargzError(
                f"cannot spool the TOC to a temp file in {tempfile.gettempdir()}: {e}"
            ) from None
        self.hash.update(data)
        self._size += len(data)


def _name_if_changed(names: dict[int, str], ident: int, name: str) -> str:
    """Upstream records a user/group name only where it differs from the last one seen for that id."""
    if not name or names.get(ident) == name:
        return ""
    names[ident] = name
    return name


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise EstargzError("layer spool file shrank while converting")
    return data
