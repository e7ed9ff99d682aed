"""`image check`: verify every layer of an image the way lazy pulling will read it.

For each layer of the chosen platforms: whether it is eStargz; its TOC against the
`containerd.io/snapshot/stargz/toc.digest` annotation; every chunk against its digest and every tar
header against the TOC (the whole blob read as a plain tar.gz, as a runtime without eStargz reads
it); the diff ID against the config's `rootfs.diff_ids`; the landmark, and the bytes the snapshotter
prefetches before the container starts (everything before `.prefetch.landmark`).

A layer that is simply not eStargz is reported as such and still has its diff ID checked; a layer
that claims to be eStargz (annotation or footer) and does not verify is a problem.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctr_remote.errors import CtrRemoteError
from ctr_remote.estargz import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    EstargzError,
    is_estargz,
    open_estargz,
)
from ctr_remote.image import Descriptor, ImageStore, Platform, Reference, fetch_blobs, open_store
from ctr_remote.image.digest import encoded
from ctr_remote.image.resolve import resolve_images
from ctr_remote.layer.compression import Compression, CorruptLayerError, open_tar_stream


@dataclass(frozen=True)
class BlobFacts:
    """What one blob holds, whatever manifest lists it (a layer shared by platforms is read once)."""

    format: str  # "estargz", or the compression of a layer that is not eStargz: gzip, zstd, tar
    toc_digest: str | None = None  # measured from the blob
    diff_id: str | None = None  # measured: sha256 of the uncompressed tar
    uncompressed_size: int | None = None
    entries: int | None = None
    chunks: int | None = None
    landmark: str | None = None  # "prefetch", "no-prefetch", or None
    prefetch_bytes: int | None = None  # compressed bytes the snapshotter fetches first
    prioritized: tuple[str, ...] = ()
    problem: str | None = None  # the blob itself does not verify


@dataclass
class LayerReport:
    """One layer as a manifest lists it: its blob's facts against its descriptor and the config."""

    index: int
    digest: str
    size: int
    media_type: str
    blob: BlobFacts
    toc_digest_annotation: str | None = None
    config_diff_id: str | None = None  # what the image config says
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def is_estargz(self) -> bool:
        return self.blob.format == "estargz"

    def to_json(self, with_prioritized: bool) -> dict[str, Any]:
        blob = {k: v for k, v in asdict(self.blob).items() if k not in ("problem", "prioritized")}
        d = {k: v for k, v in self.__dict__.items() if k != "blob"} | blob
        d["estargz"] = self.is_estargz
        d["ok"] = not self.problems
        if with_prioritized:
            d["prioritized"] = list(self.blob.prioritized)
        return d


@dataclass
class ManifestReport:
    digest: str
    platform: str
    layers: list[LayerReport]


@dataclass
class CheckReport:
    reference: str
    digest: str
    manifests: list[ManifestReport]

    def layers(self) -> list[tuple[ManifestReport, LayerReport]]:
        return [(m, layer) for m in self.manifests for layer in m.layers]

    def first_failure(self, strict: bool) -> str | None:
        """The one line naming the first failing layer and its problem; None when all verify.
        `strict` also fails on warnings and on layers that are not eStargz."""
        for m, layer in self.layers():
            what = f"layer {layer.digest} ({m.platform}, #{layer.index})"
            if layer.problems:
                return f"{what}: {layer.problems[0]}"
            if strict and not layer.is_estargz:
                return f"{what}: not eStargz ({layer.blob.format})"
            if strict and layer.warnings:
                return f"{what}: {layer.warnings[0]}"
        return None

    def to_json(self, with_prioritized: bool = False) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "ok": self.first_failure(strict=False) is None,
            "manifests": [
                {
                    "digest": m.digest,
                    "platform": m.platform,
                    "layers": [layer.to_json(with_prioritized) for layer in m.layers],
                }
                for m in self.manifests
            ],
        }


def check_image(
    ref: Reference,
    *,
    platforms: Sequence[Platform] = (),
    all_platforms: bool = False,
    workers: int | None = None,
) -> CheckReport:
    with tempfile.TemporaryDirectory(prefix="ctr-remote-") as tmp, open_store(ref) as store:
        resolved = resolve_images(store, platforms, all_platforms=all_platforms)
        layers: dict[str, Descriptor] = {}
        for img in resolved.images:
            for d in img.manifest.layers:
                layers.setdefault(d.digest, d)
        facts = _read_blobs(store, list(layers.values()), Path(tmp), workers or os.cpu_count() or 1)
        manifests = []
        for img in resolved.images:
            plat = img.manifest_desc.platform or img.config.platform
            diff_ids = img.config.diff_ids
            reports = [
                _layer_report(i, d, facts[d.digest], diff_ids[i] if i < len(diff_ids) else None)
                for i, d in enumerate(img.manifest.layers)
            ]
            if len(diff_ids) != len(reports) and reports:
                reports[-1].problems.append(
                    f"the config lists {len(diff_ids)} diff IDs for {len(reports)} layers"
                )
            manifests.append(ManifestReport(img.manifest_desc.digest, str(plat), reports))
    return CheckReport(str(ref), resolved.top.digest, manifests)


def _read_blobs(store: ImageStore, descs: list[Descriptor], tmp: Path, workers: int) -> dict[str, BlobFacts]:
    files = {d.digest: tmp / encoded(d.digest) for d in descs}
    fetch_blobs(store, [(d, files[d.digest]) for d in descs])
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(descs)))) as pool:
        results = pool.map(lambda d: (d.digest, blob_facts(files[d.digest])), descs)
        return dict(results)


def blob_facts(path: Path) -> BlobFacts:
    """Read the blob at `path` whole: as eStargz when it has the footer, else as a plain layer."""
    with open(path, "rb") as f:
        if not is_estargz(f):
            return _plain_facts(f)
        try:
            reader = open_estargz(f)
            verified = reader.verify()
        except EstargzError as err:
            return BlobFacts(format="estargz", problem=str(err))
    names = [e for e in reader.entries if e.type != "chunk"]
    landmark: str | None = None
    prefetch: int | None = None
    prioritized: tuple[str, ...] = ()
    for i, entry in enumerate(names):
        if entry.name in (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK):
            landmark = "prefetch" if entry.name == PREFETCH_LANDMARK else "no-prefetch"
            prefetch = entry.offset if entry.name == PREFETCH_LANDMARK else 0
            prioritized = tuple(n.name for n in names[:i] if n.type != "dir")
            break
    return BlobFacts(
        format="estargz",
        toc_digest=reader.toc_digest,
        diff_id=verified.diff_id,
        uncompressed_size=verified.uncompressed_size,
        entries=len(names),
        chunks=verified.chunks,
        landmark=landmark,
        prefetch_bytes=prefetch,
        prioritized=prioritized,
    )


def _plain_facts(f: Any) -> BlobFacts:
    f.seek(0)
    h, total = hashlib.sha256(), 0
    kind = Compression.NONE
    try:
        stream, kind = open_tar_stream(f, "blob")
        with stream:
            while data := stream.read(1 << 20):
                h.update(data)
                total += len(data)
    except (CorruptLayerError, EOFError, OSError) as e:
        return BlobFacts(format=_FORMATS[kind], problem=str(e))
    return BlobFacts(format=_FORMATS[kind], diff_id="sha256:" + h.hexdigest(), uncompressed_size=total)


_FORMATS = {Compression.GZIP: "gzip", Compression.ZSTD: "zstd", Compression.NONE: "tar"}


def _layer_report(index: int, desc: Descriptor, facts: BlobFacts, config_diff_id: str | None) -> LayerReport:
    annotations = desc.annotations or {}
    r = LayerReport(
        index=index,
        digest=desc.digest,
        size=desc.size,
        media_type=desc.media_type,
        blob=facts,
        toc_digest_annotation=annotations.get(TOC_DIGEST_ANNOTATION),
        config_diff_id=config_diff_id,
    )
    annotated = r.toc_digest_annotation
    if annotated is not None and not r.is_estargz:
        r.problems.append(f"annotated with a TOC digest but not eStargz (no eStargz footer; {facts.format})")
    if facts.problem:
        r.problems.append(facts.problem)
    if r.is_estargz and not facts.problem:
        if annotated is None:
            r.warnings.append(f"no {TOC_DIGEST_ANNOTATION} annotation: it will not be lazily pulled")
        elif annotated != facts.toc_digest:
            r.problems.append(f"TOC digest {facts.toc_digest} differs from the annotation's {annotated}")
        if facts.landmark is None:
            r.warnings.append("no prefetch landmark: the snapshotter prefetches nothing it was told of")
    if facts.diff_id is not None and config_diff_id is not None and facts.diff_id != config_diff_id:
        r.problems.append(f"diff ID {facts.diff_id} differs from the config's {config_diff_id}")
    size = annotations.get(UNCOMPRESSED_SIZE_ANNOTATION)
    if size is not None and facts.uncompressed_size is not None and size != str(facts.uncompressed_size):
        r.problems.append(
            f"{UNCOMPRESSED_SIZE_ANNOTATION} annotation {size} differs from the size read, "
            f"{facts.uncompressed_size}"
        )
    return r


def read_toc(ref: Reference, layer_digest: str) -> tuple[str, bytes]:
    """The TOC digest and TOC JSON of the layer `layer_digest`, which a manifest of `ref` (any
    platform) must list: the layer is fetched and verified against its digest first."""
    with tempfile.TemporaryDirectory(prefix="ctr-remote-") as tmp, open_store(ref) as store:
        resolved = resolve_images(store, all_platforms=True)
        desc = next(
            (d for img in resolved.images for d in img.manifest.layers if d.digest == layer_digest), None
        )
        if desc is None:
            raise CtrRemoteError(f"layer {layer_digest} is not in {ref}")
        path = Path(tmp) / encoded(layer_digest)
        store.fetch_blob(desc, path)
        with open(path, "rb") as f:
            try:
                reader = open_estargz(f)
            except EstargzError as e:
                raise CtrRemoteError(f"layer {layer_digest}: {e}") from None
        return reader.toc_digest, reader.toc_json
