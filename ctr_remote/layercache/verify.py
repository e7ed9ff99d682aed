"""Whether a cache entry is what the conversion would have written. An entry's blob may be intact
(its digest checks) and the entry still wrong: a key file or a registry manifest edited, or pointing
at another entry's blob, would put a wrong layer or wrong annotations in the output image. So the
blob is read whole and everything the entry claims about it is measured: its diff ID, the TOC
digest, uncompressed size and zstd:chunked annotations, and its compression against the media type;
the annotations the conversion carries over from the source layer must be the source's.

An entry that is consistent in every part but was made for other inputs (a forged entry) cannot be
told from a good one without converting again: whoever may write the cache is trusted that far.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ctr_remote.check import blob_facts
from ctr_remote.estargz import (
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    ZSTD_CHECKSUM_ANNOTATIONS,
    ZSTD_POSITION_ANNOTATIONS,
    carried_annotations,
)
from ctr_remote.image import Descriptor
from ctr_remote.image.digest import algorithm

# A blob's format (as `check.blob_facts` names it) -> the compression its media type must name.
_COMPRESSION = {
    "estargz": "gzip",
    "estargz-external-toc": "gzip",
    "gzip": "gzip",
    "zstd:chunked": "zstd",
    "zstd": "zstd",
    "tar": "tar",
}


def _media_compression(media_type: str) -> str:
    for suffix in ("gzip", "zstd"):
        if media_type.endswith(suffix):
            return suffix
    return "tar"


def file_digest(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"{algo}:{h.hexdigest()}"


def entry_problem(
    source: Descriptor,
    desc: Descriptor,
    diff_id: str,
    blob: Path,
    toc: tuple[Descriptor, Path] | None,
    fetched: bool = False,
) -> str | None:
    """What is wrong with the entry (layer `desc` at `blob`, its `diff_id`, its external TOC) as the
    conversion of `source`; None if nothing. `fetched`: the blobs were just fetched through a store,
    which checked their digests and sizes already."""
    for d, path in ((desc, blob), *([toc] if toc else [])):
        if fetched:
            continue
        size = path.stat().st_size
        if size != d.size:
            return f"blob {d.digest} is {size} bytes, the entry says {d.size}"
        if file_digest(path, algorithm(d.digest)) != d.digest:
            return f"blob {d.digest} does not match its digest"
    facts = blob_facts(blob, toc[1].read_bytes() if toc else None)
    if facts.problem is not None:
        return f"blob {desc.digest}: {facts.problem}"
    if facts.diff_id != diff_id:
        return f"blob {desc.digest} has diff ID {facts.diff_id}, the entry says {diff_id}"
    if _COMPRESSION.get(facts.format) != _media_compression(desc.media_type):
        return f"blob {desc.digest} is {facts.format}, its media type says {desc.media_type}"
    annotations = desc.annotations or {}
    usize = None if facts.uncompressed_size is None else str(facts.uncompressed_size)
    measured = {TOC_DIGEST_ANNOTATION: facts.toc_digest, UNCOMPRESSED_SIZE_ANNOTATION: usize}
    if facts.zstd_checksum is not None:  # `--uncompress` keeps a zstd:chunked source's: not measured then
        measured |= dict.fromkeys(ZSTD_CHECKSUM_ANNOTATIONS, facts.zstd_checksum)
        measured |= dict.fromkeys(ZSTD_POSITION_ANNOTATIONS, facts.zstd_position)
    for name, value in measured.items():
        if name in annotations and annotations[name] != value:
            return f"annotation {name}={annotations[name]!r} differs from the blob's {value!r}"
    if carried_annotations(annotations) != carried_annotations(source.annotations):
        return "its annotations are not the source layer's"
    return None
