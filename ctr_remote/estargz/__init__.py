"""The eStargz format: a writer that turns a layer into eStargz, and a reader that checks one.

Also upstream's other layouts through the same `build` and reader (`BuildOptions.format`,
`min_chunk_size`, `external_toc`): zstd:chunked, min chunk size (`innerOffset`), external TOC.

    result = build(src, dst, BuildOptions(prioritized_files=["bin/sh"]))
    reader = open_estargz(f); reader.verify(result.toc_digest)

An eStargz blob is a tar.gz whose every regular-file payload (and every chunk of a large one)
starts a new gzip member, followed by a member holding the TOC (`stargz.index.json`, listing each
entry with the compressed offset of its payload) and a 51-byte footer pointing at the TOC.

Where we differ from upstream's `estargz.Build`, on purpose:
- input tar headers are copied byte for byte (upstream re-encodes them), so readers of the blob see
  exactly the input's metadata; the TOC describes it the way Go's archive/tar reads it;
- a last chunk records no chunkSize even when it is full (the spec's rule; upstream breaks it);
- prioritized files whose parent directories have no entries get them added (upstream aborts);
- a prioritized list of which nothing is found gives `.no.prefetch.landmark` (upstream writes a
  `.prefetch.landmark` with nothing before it);
- names, link targets, user/group names that are not UTF-8 are an error (a JSON TOC cannot hold
  them; upstream writes U+FFFD and so a TOC that names files the tar does not have);
- PAX global headers holding only a `comment` (git archive) are dropped (upstream fails on any);
- the output does not depend on the number of threads (upstream's does, #2341);
- a hardlink whose target a later duplicate replaced gets the target moved before it (upstream
  writes a blob its reader rejects); hardlink cycles are an error (upstream's reader overflows its
  stack on them);
- names and link targets longer than PATH_MAX (4096 bytes) are an error (no unpacker can create
  them; Go allows 1 MiB each, which would let a small layer hold gigabytes of names in memory);
- a run of over 1 MiB of headers without payload starts a new gzip member (memory stays bounded).

Lossless layers (`BuildOptions.lossless`, upstream's `AppendTarLossLess` behind `convert
--estargz-keep-diff-id`) keep the input's tar byte for byte, with the TOC external. There:
- PAX global headers (comment only) are kept (upstream refuses any);
- a path whose earlier copy is chunked and whose last copy is a one-chunk file is an error
  (upstream writes it, and its reader then serves the earlier copy's chunks);
- a landmark the input holds starts its member at a min chunk size (upstream lets it share one);
- an empty tar gives a TOC whose entries are `null`, as upstream's.
"""

from ctr_remote.estargz.errors import EstargzError, UnrepresentableLayerError
from ctr_remote.estargz.options import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_COMPRESSION_LEVEL,
    BuildOptions,
    BuildResult,
    LayerFormat,
)
from ctr_remote.estargz.reader import EstargzReader, Verified, blob_kind, is_estargz, open_estargz
from ctr_remote.estargz.toc import (
    EXTERNAL_TOC_IMAGE_SUFFIX,
    EXTERNAL_TOC_LAYER_ANNOTATION,
    FORMAT_ANNOTATIONS,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_DIGEST_ANNOTATION,
    TOC_NAME,
    UNCOMPRESSED_SIZE_ANNOTATION,
    ZSTD_CHECKSUM_ANNOTATIONS,
    ZSTD_POSITION_ANNOTATIONS,
    TOCEntry,
    carried_annotations,
)
from ctr_remote.estargz.writer import build

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_COMPRESSION_LEVEL",
    "EXTERNAL_TOC_IMAGE_SUFFIX",
    "EXTERNAL_TOC_LAYER_ANNOTATION",
    "FORMAT_ANNOTATIONS",
    "NO_PREFETCH_LANDMARK",
    "PREFETCH_LANDMARK",
    "TOC_DIGEST_ANNOTATION",
    "TOC_NAME",
    "UNCOMPRESSED_SIZE_ANNOTATION",
    "ZSTD_CHECKSUM_ANNOTATIONS",
    "ZSTD_POSITION_ANNOTATIONS",
    "BuildOptions",
    "BuildResult",
    "EstargzError",
    "EstargzReader",
    "LayerFormat",
    "TOCEntry",
    "UnrepresentableLayerError",
    "Verified",
    "blob_kind",
    "build",
    "carried_annotations",
    "is_estargz",
    "open_estargz",
]
