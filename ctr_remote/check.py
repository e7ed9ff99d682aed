"""`image check`: verify every layer of an image the way lazy pulling will read it.

For each layer of the chosen platforms: whether it is eStargz; its TOC against the
`containerd.io/snapshot/stargz/toc.digest` annotation; every chunk against its digest and every tar
header against the TOC (the whole blob read as a plain tar.gz, as a runtime without eStargz reads
it); the diff ID against the config's `rootfs.diff_ids`; the landmark, and the bytes the snapshotter
prefetches before the container starts (everything before `.prefetch.landmark`).

A layer that is simply not eStargz is reported as such and still has its diff ID checked; a layer
that claims to be eStargz (annotation or footer) and does not verify is a problem. zstd:chunked
layers are read the same way (and their manifest checksum/position annotations checked against
the blob); min-chunk-size layers (`innerOffset`) too. An eStargz layer whose TOC is external has its
TOC looked up in the image's `-esgztoc` companion, as the snapshotter does.
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
    EXTERNAL_TOC_IMAGE_SUFFIX,
    EXTERNAL_TOC_LAYER_ANNOTATION,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    ZSTD_CHECKSUM_ANNOTATIONS,
    ZSTD_POSITION_ANNOTATIONS,
    EstargzError,
    blob_kind,
    open_estargz,
)
from ctr_remote.image import Descriptor, ImageStore, Platform, Reference, fetch_blobs, open_store
from ctr_remote.image.digest import encoded
from ctr_remote.image.manifest import parse_manifest
from ctr_remote.image.resolve import resolve_images
from ctr_remote.layer.compression import Compression, CorruptLayerError, open_tar_stream


@dataclass(frozen=True)
class BlobFacts:
    """What one blob holds, whatever manifest lists it (a layer shared by platforms is read once)."""

    # "estargz", "zstd:chunked", "estargz-external-toc", or the compression of a layer that is not
    # eStargz: gzip, zstd, tar
    format: str
    toc_digest: str | None = None  # measured from the blob
    diff_id: str | None = None  # measured: sha256 of the uncompressed tar
    uncompressed_size: int | None = None
    entries: int | None = None
    chunks: int | None = None
    landmark: str | None = None  # "prefetch", "no-prefetch", or None
    prefetch_bytes: int | None = None  # compressed bytes the snapshotter fetches first
    prioritized: tuple[str, ...] = ()
    problem: str | None = None  # the blob itself does not verify
    zstd_checksum: str | None = None  # zstd:chunked: sha256 of the compressed TOC
    zstd_position: str | None = None  # zstd:chunked: offset:length:uncompressed length:type


LAZY_FORMATS = ("estargz", "zstd:chunked", "estargz-external-toc")


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
        """eStargz in any of its layouts (the ones lazy pulling reads)."""
        return self.blob.format in LAZY_FORMATS

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
        facts = _read_blobs(store, list(layers.values()), Path(tmp), workers or os.cpu_count() or 1, ref)
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


def _read_blobs(
    store: ImageStore, descs: list[Descriptor], tmp: Path, workers: int, ref: Reference
) -> dict[str, BlobFacts]:
    files = {d.digest: tmp / encoded(d.digest) for d in descs}
    fetch_blobs(store, [(d, files[d.digest]) for d in descs])
    external = [d.digest for d in descs if _kind(files[d.digest]) == "estargz-external-toc"]
    tocs = _external_tocs(ref, external, tmp) if external else {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(descs)))) as pool:
        results = pool.map(lambda d: (d.digest, blob_facts(files[d.digest], tocs.get(d.digest))), descs)
        return dict(results)


def _kind(path: Path) -> str | None:
    with open(path, "rb") as f:
        return blob_kind(f)


def _external_tocs(ref: Reference, layers: list[str], tmp: Path) -> dict[str, bytes]:
    """The TOC blobs of layers whose TOC is external, from the image's `TAG-esgztoc` companion (as
    the snapshotter finds them: same repository, tag + suffix, layers annotated with the layer
    digest). Layers it does not cover are reported by their reader (no TOC)."""
    if ref.tag is None:
        return {}
    toc_ref = ref.with_tag(ref.tag + EXTERNAL_TOC_IMAGE_SUFFIX)
    wanted = set(layers)
    out: dict[str, bytes] = {}
    try:
        with open_store(toc_ref) as store:
            top = store.resolve()
            manifest = parse_manifest(store.read_manifest(top), top.media_type, f"TOC image {toc_ref}")
            for d in manifest.layers:
                layer = (d.annotations or {}).get(EXTERNAL_TOC_LAYER_ANNOTATION)
                if layer is not None and layer in wanted and layer not in out:
                    path = tmp / ("toc-" + encoded(d.digest))
                    store.fetch_blob(d, path)
                    out[layer] = path.read_bytes()
    except (CtrRemoteError, OSError):
        return out  # no TOC image: each such layer reports that its TOC is missing
    return out


def blob_facts(path: Path, external_toc: bytes | None = None) -> BlobFacts:
    """Read the blob at `path` whole: as eStargz (or zstd:chunked) when it has such a footer, else
    as a plain layer. `external_toc`: the TOC blob of a layer whose TOC is external, if found."""
    with open(path, "rb") as f:
        kind = blob_kind(f)
        if kind is None:
            return _plain_facts(f)
        try:
            reader = open_estargz(f, external_toc)
            verified = reader.verify()
        except EstargzError as err:
            return BlobFacts(format=kind, problem=str(err))
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
        format=reader.kind,
        toc_digest=reader.toc_digest,
        diff_id=verified.diff_id,
        uncompressed_size=verified.uncompressed_size,
        entries=len(names),
        chunks=verified.chunks,
        landmark=landmark,
        prefetch_bytes=prefetch,
        prioritized=prioritized,
        zstd_checksum=reader.zstd_checksum,
        zstd_position=reader.zstd_position,
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
    if facts.zstd_checksum is not None:
        _check_zstd_annotations(r, annotations, facts)
    if facts.diff_id is not None and config_diff_id is not None and facts.diff_id != config_diff_id:
        r.problems.append(f"diff ID {facts.diff_id} differs from the config's {config_diff_id}")
    size = annotations.get(UNCOMPRESSED_SIZE_ANNOTATION)
    if size is not None and facts.uncompressed_size is not None and size != str(facts.uncompressed_size):
        r.problems.append(
            f"{UNCOMPRESSED_SIZE_ANNOTATION} annotation {size} differs from the size read, "
            f"{facts.uncompressed_size}"
        )
    return r


def _check_zstd_annotations(r: LayerReport, annotations: dict[str, str], facts: BlobFacts) -> None:
    """zstd:chunked readers find the TOC through these annotations (upstream's snapshotter the
    io.containers.* pair, containers/storage the io.github.containers.* pair): present ones must
    name the blob's TOC; without either pair the layer is read through its footer only."""
    for names, measured in (
        (ZSTD_CHECKSUM_ANNOTATIONS, facts.zstd_checksum),
        (ZSTD_POSITION_ANNOTATIONS, facts.zstd_position),
    ):
        for name in names:
            value = annotations.get(name)
            if value is None:
                if name == names[0]:  # upstream's own converter writes only the snapshotter's names
                    r.warnings.append(f"no {name} annotation")
            elif value != measured:
                r.problems.append(f"{name} annotation {value} differs from the blob's {measured}")


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
        external = None
        if _kind(path) == "estargz-external-toc":
            external = _external_tocs(ref, [layer_digest], Path(tmp)).get(layer_digest)
        with open(path, "rb") as f:
            try:
                reader = open_estargz(f, external)
            except EstargzError as e:
                raise CtrRemoteError(f"layer {layer_digest}: {e}") from None
        return reader.toc_digest, reader.toc_json
