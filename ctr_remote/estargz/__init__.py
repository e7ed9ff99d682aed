"""The eStargz format: a writer that turns a layer into eStargz, and a reader that checks one.

    result = build(src, dst, BuildOptions(prioritized_files=["bin/sh"]))
    reader = open_estargz(f); reader.verify(result.toc_digest)

An eStargz blob is a tar.gz whose every regular-file payload (and every chunk of a large one)
starts a new gzip member, followed by a member holding the TOC (`stargz.index.json`, listing each
entry with the compressed offset of its payload) and a 51-byte footer pointing at the TOC.
"""

from ctr_remote.estargz.errors import EstargzError
from ctr_remote.estargz.options import BuildOptions, BuildResult
from ctr_remote.estargz.reader import EstargzReader, is_estargz, open_estargz
from ctr_remote.estargz.toc import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_NAME,
    TOCEntry,
)
from ctr_remote.estargz.writer import build

__all__ = [
    "NO_PREFETCH_LANDMARK",
    "PREFETCH_LANDMARK",
    "TOC_NAME",
    "BuildOptions",
    "BuildResult",
    "EstargzError",
    "EstargzReader",
    "TOCEntry",
    "build",
    "is_estargz",
    "open_estargz",
]
