"""The optimize pipeline: resolve SRC, profile the host platform's image, convert every layer,
write DST. The only module that knows the image, profile and estargz packages together.

Nothing is written to DST until every layer has converted: blobs first, then manifests, then the
top-level index or manifest that makes the result visible under DST's tag.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import structlog

from ctr_remote.cancel import CancelToken, checked_file, run_parallel
from ctr_remote.errors import CtrRemoteError
from ctr_remote.estargz import (
    EXTERNAL_TOC_IMAGE_SUFFIX,
    EXTERNAL_TOC_LAYER_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    EstargzError,
    LayerFormat,
    UnrepresentableLayerError,
    blob_kind,
    build,
    carried_annotations,
    open_estargz,
)
from ctr_remote.image import (
    Descriptor,
    ImageBlobs,
    ImageStore,
    Index,
    Manifest,
    Reference,
    RegistryOptions,
    fetch_blobs,
    host_platform,
    media_types,
    open_store,
    write_image,
)
from ctr_remote.image.digest import encoded
from ctr_remote.image.files import output_file
from ctr_remote.image.resolve import resolve_images
from ctr_remote.layer.archive import members, open_layer
from ctr_remote.layer.compression import CorruptLayerError, uncompress
from ctr_remote.layercache.local import CachedLayer, LayerCache, LayerReport, Outcome, layer_key
from ctr_remote.leftovers import remove_tree
from ctr_remote.options import OptimizeOptions
from ctr_remote.prefetch_list import visible_per_layer
from ctr_remote.profile import Workload, check_requirements, profile
from ctr_remote.progress import Progress
from ctr_remote.record import Record, record_lines
from ctr_remote.runstate import RunRecord, make_temp_file, recorded

log = structlog.get_logger()

_OCI_LAYER_OF_DOCKER = {
    media_types.DOCKER_LAYER_GZIP: media_types.OCI_LAYER_GZIP,
    media_types.DOCKER_LAYER: media_types.OCI_LAYER,
    media_types.DOCKER_FOREIGN_LAYER_GZIP: media_types.OCI_LAYER_NONDIST_GZIP,
}


@dataclass(frozen=True)
class _Converted:
    path: Path
    desc: Descriptor
    diff_id: str
    toc: Path | None = None  # --estargz-external-toc: the layer's TOC blob


@dataclass(frozen=True)
class OptimizeResult:
    digest: str  # of the top-level document written
    extra_images: tuple[str, ...] = ()  # also written: the TOC image with --estargz-external-toc
    layers: tuple[LayerReport, ...] = ()  # each distinct layer written: converted, reused or cached


def optimize(
    options: OptimizeOptions,
    workload: Workload,
    progress: Progress | None = None,
    cache: LayerCache | None = None,
    stop: CancelToken | None = None,
) -> OptimizeResult:
    """Convert `options.source` into `options.target`. `progress` shows each layer's steps
    (default: one log line per step). With a `cache` (`ctr-remote batch`), a layer converted before
    with the same inputs is taken from it, and one converted here is added to it. Setting `stop`
    (a batch's interrupt or --fail-fast) stops transfers and conversions at their next chunk, and
    a running workload at once."""
    toc_ref = external_toc_reference(options.target) if options.layer.external_toc else None
    with (
        recorded() as run,  # what this run leaves on the host, removed even if it is SIGKILLed
        _RecordFile.create(options.record_out) as record,
        _work_dir(run) as tmp,
        open_store(options.source) as src,
        open_store(options.target, RegistryOptions(mount_from=options.source)) as dst,
    ):
        dst.check_push_access()  # before the pull, the workload and the conversion
        pipeline = _Pipeline(
            Path(tmp), src, dst, options, workload, progress or Progress(live=False), record, cache, stop
        )
        digest = pipeline.run()
        layers = tuple(pipeline.reports.values())
        if toc_ref is None:
            return OptimizeResult(digest, layers=layers)
        with open_store(toc_ref, RegistryOptions(mount_from=options.target)) as toc_store:
            pipeline.write_toc_image(toc_store)
        return OptimizeResult(digest, (str(toc_ref),), layers)


@contextlib.contextmanager
def _work_dir(run: RunRecord) -> Iterator[Path]:
    """The run's temp dir in $TMPDIR (pulled blobs, converted layers), removed at the end."""
    try:
        work = run.make_temp_dir("ctr-remote-")
    except OSError as e:
        raise CtrRemoteError(f"cannot create a temp dir in {tempfile.gettempdir()}: {e.strerror}") from None
    try:
        yield work
    finally:
        remove_tree(work)


def external_toc_reference(target: Reference) -> Reference:
    """Where `--estargz-external-toc` writes the TOC image: the target's tag + `-esgztoc`, in the
    same repository (the snapshotter looks there), or the layout entry NAME-esgztoc."""
    if target.tag is None:
        what = "local://DIR:NAME" if target.is_layout else "a tag"
        raise CtrRemoteError(
            f"--estargz-external-toc needs a target with {what}: the TOC image is TAG-esgztoc"
        )
    return target.with_tag(target.tag + EXTERNAL_TOC_IMAGE_SUFFIX)


def convert(
    options: OptimizeOptions,
    progress: Progress | None = None,
    cache: LayerCache | None = None,
    stop: CancelToken | None = None,
) -> OptimizeResult:
    """`image convert`: the same pipeline with nothing run; the prioritized files come from
    `options.record_in`, or there are none."""
    if options.optimize or options.record_out is not None:
        raise ValueError("convert runs no workload: optimize=False and no record_out")
    return optimize(options, Workload(), progress, cache, stop)


class _RecordFile:
    """`--record-out`: a temp file beside the target, created before any download so that an
    unwritable path fails at once, and renamed over the target only once the record is complete.
    A target that is not a regular file (`/dev/stdout`, a FIFO) is written in place at the end."""

    def __init__(self, target: Path, fd: int = -1, temp: Path | None = None) -> None:
        self.target, self._fd, self._temp = target, fd, temp

    @classmethod
    @contextlib.contextmanager
    def create(cls, path: Path | None) -> Iterator[_RecordFile | None]:
        if path is None:
            yield None
            return
        if path.exists() and not path.is_file():
            if not os.access(path, os.W_OK):
                raise CtrRemoteError(f"cannot write the record file {path}: permission denied")
            yield cls(path)
            return
        target = Path(os.path.realpath(path))  # a symlink is followed, not replaced
        try:
            fd, temp = make_temp_file(f".{target.name}.", "", target.parent)
        except OSError as e:
            raise CtrRemoteError(f"cannot write the record file {path}: {e.strerror}") from None
        record = cls(target, fd, temp)
        try:
            yield record
        finally:
            record._discard()

    def write(self, lines: Iterable[dict[str, object]]) -> None:
        text = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
        try:
            if self._temp is None:
                with open(self.target, "w") as f:
                    f.write(text)
                return
            with open(self._fd, "w", closefd=True) as f:
                self._fd = -1
                f.write(text)
            os.chmod(self._temp, 0o644)  # mkstemp's 0600 is not what `> file` would have given
            os.replace(self._temp, self.target)
        except OSError as e:
            raise CtrRemoteError(f"failed to write the record file {self.target}: {e.strerror}") from None

    def _discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._temp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._temp.unlink()


class _Pipeline:
    def __init__(
        self,
        work: Path,
        src: ImageStore,
        dst: ImageStore,
        options: OptimizeOptions,
        workload: Workload,
        progress: Progress,
        record: _RecordFile | None = None,
        cache: LayerCache | None = None,
        stop: CancelToken | None = None,
    ) -> None:
        self.work, self.src, self.dst, self.record, self.cache = work, src, dst, record, cache
        self.stop = stop
        self.progress = progress
        self.options, self.workload, self.prefetch = options, workload, options.prefetch
        self.converted: list[_Converted] = []  # every layer written, for the TOC image
        self.reports: dict[tuple[str, tuple[str, ...]], LayerReport] = {}  # per distinct layer
        (work / "in").mkdir()
        (work / "out").mkdir()

    def run(self) -> str:
        resolved = resolve_images(self.src, self.options.platforms, all_platforms=self.options.all_platforms)
        index, images = resolved.index, resolved.images
        if index is None:
            log.info("index not found; treating as a thin image with ignoring the platform option")

        host = self._host_image(images)
        if host is not None and self.options.runs_workload:
            check_requirements(self.workload)  # fail before any download, not after
        self._fetch_layers(images, self._cached_unprioritized(images, host))
        self._check_record(images)
        jobs = [(img, self._prioritized(img, host)) for img in images]
        converted = self._convert_all(jobs)
        outputs: list[tuple[ImageBlobs, Descriptor, bytes, _Converted, list[_Converted]]] = []
        for img, lists in jobs:
            layers = [
                converted[(d.digest, tuple(files))]
                for d, files in zip(img.manifest.layers, lists, strict=True)
            ]
            manifest_desc, manifest_bytes, config = self._rewrite(img, layers)
            outputs.append((img, manifest_desc, manifest_bytes, config, layers))
            self.converted.extend(layers)

        blobs: dict[str, tuple[Path, Descriptor]] = {}
        for _, _, _, config, layers in outputs:
            for c in [config, *layers]:
                blobs.setdefault(c.desc.digest, (c.path, c.desc))
        if index is None:
            _, desc, data, _, _ = outputs[0]
            children: list[tuple[bytes, Descriptor]] = []
        else:
            children = [(data, desc) for _, desc, data, _, _ in outputs]
            new_index = Index(
                media_type=media_types.OCI_INDEX if self.options.oci else index.media_type,
                manifests=[replace(desc, platform=img.manifest_desc.platform) for img, desc, *_ in outputs],
                annotations=index.annotations,
                extra=index.extra,
            )
            data = new_index.to_bytes()
            desc = Descriptor.of(data, new_index.media_type)
        written = write_image(
            _Reporting(self.dst, self.progress, self.cache),
            list(blobs.values()),
            children,
            (data, desc),
            cancel=self.stop,
        )
        return written.digest

    def write_toc_image(self, store: ImageStore) -> str:
        """The `-esgztoc` image, laid out as upstream's externaltoc converter does: config `{}`,
        one gzip layer per converted layer (sorted by digest), each annotated with the digest of the
        layer whose TOC it holds."""
        layers: dict[str, tuple[Path, Descriptor]] = {}
        for c in self.converted:
            if c.toc is None:
                continue
            desc = Descriptor.of(c.toc.read_bytes(), media_types.OCI_LAYER_GZIP)
            layers[desc.digest] = (
                c.toc,
                replace(desc, annotations={EXTERNAL_TOC_LAYER_ANNOTATION: c.desc.digest}),
            )
        config_path = self.work / "out" / "toc-config.json"
        config_path.write_bytes(b"{}")
        config = Descriptor.of(b"{}", media_types.OCI_CONFIG)
        manifest = Manifest(
            media_type=media_types.OCI_MANIFEST,
            config=config,
            layers=[desc for _, (_, desc) in sorted(layers.items())],
        )
        data = manifest.to_bytes()
        written = write_image(
            store,
            [(config_path, config), *layers.values()],
            [],
            (data, Descriptor.of(data, manifest.media_type)),
        )
        return written.digest

    # -- inputs -------------------------------------------------------------------------------

    def _layer_file(self, desc: Descriptor) -> Path:
        return self.work / "in" / encoded(desc.digest)

    def _fetch_layers(self, images: Sequence[ImageBlobs], skip: frozenset[str] = frozenset()) -> None:
        wanted: dict[str, Descriptor] = {}
        for img in images:
            for layer in img.manifest.layers:
                if layer.digest not in skip:
                    wanted.setdefault(layer.digest, layer)
        fetch_blobs(
            _Reporting(self.src, self.progress),
            [(d, self._layer_file(d)) for d in wanted.values()],
            cancel=self.stop,
        )

    def _cached_unprioritized(self, images: Sequence[ImageBlobs], host: ImageBlobs | None) -> frozenset[str]:
        """Layers not worth downloading: nothing is prioritized (no workload, prefetch list or
        record), so each layer's cache key is known now, and the cache has it. A layer is still
        fetched if its entry turns out unusable at conversion time."""
        if self.cache is None or host is not None or self.options.record_in is not None:
            return frozenset()
        cancel = CancelToken()
        return frozenset(
            d.digest
            for img in images
            for d, diff_id in zip(img.manifest.layers, _padded(img.config.diff_ids, img), strict=True)
            if self.cache.lookup(layer_key(d, diff_id, [], self.options), d, cancel) is not None
        )

    def _host_image(self, images: Sequence[ImageBlobs]) -> ImageBlobs | None:
        """The image to profile: the one for this machine's platform, when optimizing at all."""
        if not self.options.optimize:
            return None
        host = host_platform()
        for img in images:
            plat = img.manifest_desc.platform or img.config.platform
            if not plat.os or plat.matches(host):
                return img
        log.info(
            "the host platform is not among the converted ones; converting without optimization",
            host=str(host),
        )
        return None

    def _prioritized(self, img: ImageBlobs, host: ImageBlobs | None) -> list[list[str]]:
        """Each layer's files to put first: replayed from a record (every image), recorded from the
        workload or selected by --prefetch-list (the host's image), or none."""
        if self.options.record_in is not None:
            return self._replay(img, self.options.record_in)
        if img is not host:
            return [[] for _ in img.manifest.layers]
        layers = [self._layer_file(d) for d in img.manifest.layers]
        if self.prefetch is not None:
            visible = visible_per_layer([_layer_entries(p) for p in layers])
            accessed = [self.prefetch.select(names) for names in visible]
        else:
            self.progress.commit()  # the workload may write to the terminal the progress lines are on
            if self.workload.wait_on_signal:
                log.info("press Ctrl+C to terminate the container")
            elif self.workload.wait_on_line is None:
                log.info(f"waiting for {self.workload.period:g}s ...")
            accessed = profile(
                layers, img.config.raw, self.workload, workdir=self.work, cancel=self.stop
            ).accessed
        if self.record is not None:
            self.record.write(record_lines(accessed, img.manifest_desc.digest))
        return accessed

    def _check_record(self, images: Sequence[ImageBlobs]) -> None:
        record = self.options.record_in
        if record is None or any(img.manifest_desc.digest in record.manifests for img in images):
            return
        log.warning(
            "the record names no manifest of the source: prioritizing its paths by name in every "
            "layer that has them, as upstream does",
            recorded=",".join(record.manifests) or "none",
        )

    def _replay(self, img: ImageBlobs, record: Record) -> list[list[str]]:
        """The record's per-layer lists for this manifest; for a manifest it does not name, its
        paths by name in each layer that serves them in the merged image (upstream's replay)."""
        lists = record.per_layer(img.manifest_desc.digest, len(img.manifest.layers))
        if lists is not None:
            return lists
        paths = record.paths()
        visible = visible_per_layer([_layer_entries(self._layer_file(d)) for d in img.manifest.layers])
        return [[p for p in paths if p in served] for served in map(set, visible)]

    # -- conversion -----------------------------------------------------------------------------

    def _convert_all(
        self, jobs: Sequence[tuple[ImageBlobs, list[list[str]]]]
    ) -> dict[tuple[str, tuple[str, ...]], _Converted]:
        """Convert every distinct (layer, prioritized list) once, layers in parallel."""
        unique: dict[tuple[str, tuple[str, ...]], tuple[Descriptor, list[str], str | None]] = {}
        for img, lists in jobs:
            diff_ids = _padded(img.config.diff_ids, img)
            for d, files, diff_id in zip(img.manifest.layers, lists, diff_ids, strict=True):
                unique.setdefault((d.digest, tuple(files)), (d, files, diff_id))
        if not unique:
            return {}
        # On Ctrl-C, SIGTERM or a failed layer, every conversion stops at once: queued layers never
        # start and running ones give up at their next read or write.
        keys = list(unique)
        jobs_ = [functools.partial(self._convert_or_take, *unique[k]) for k in keys]
        return dict(zip(keys, run_parallel(jobs_, os.cpu_count() or 1, parent=self.stop), strict=True))

    def _convert_or_take(
        self, desc: Descriptor, files: list[str], diff_id: str | None, cancel: CancelToken
    ) -> _Converted:
        """One distinct layer: from the cache if it has it, else converted (and cached)."""

        def convert() -> tuple[CachedLayer, Outcome]:
            path = self._layer_file(desc)
            if not path.exists():  # skipped by _fetch_layers, but its cache entry went bad since
                fetch_blobs(_Reporting(self.src, self.progress), [(desc, path)], cancel=cancel)
            c = self._convert_layer(desc, files, diff_id, cancel)
            outcome = Outcome.REUSED if c.path == path else Outcome.CONVERTED
            return CachedLayer(c.path, c.desc, c.diff_id, c.toc), outcome

        if self.cache is None:
            layer, outcome = convert()
        else:
            key = layer_key(desc, diff_id, files, self.options)
            layer, outcome = self.cache.get_or_convert(key, desc, convert, cancel)
            if outcome is Outcome.CACHED:
                log.info("from the layer cache", digest=layer.desc.digest, source=desc.digest)
        self.reports[(desc.digest, tuple(files))] = LayerReport(desc.digest, layer.desc.digest, outcome)
        return _Converted(layer.path, layer.desc, layer.diff_id, layer.toc)

    def _layer_media_type(self, src: Descriptor, zstd: bool) -> str:
        if zstd:  # zstd:chunked needs --oci (as upstream): Docker has no zstd layer type
            return media_types.OCI_LAYER_ZSTD
        docker = media_types.is_docker(src.media_type) and not self.options.oci
        if self.options.uncompressed:
            return media_types.DOCKER_LAYER if docker else media_types.OCI_LAYER
        return media_types.DOCKER_LAYER_GZIP if docker else media_types.OCI_LAYER_GZIP

    def _uncompress_layer(self, desc: Descriptor, cancel: CancelToken) -> _Converted:
        """convert --uncompress: the plain tar, its digest also its diff ID."""
        fd, name = tempfile.mkstemp(prefix="layer-", dir=self.work / "out")
        os.close(fd)
        out = Path(name)
        self.progress.step(desc.digest, "convert")
        with output_file(out) as fout:
            digest, size = self._plain_tar(desc, fout, cancel)
        self.progress.done(desc.digest, "convert", log_line=False, size=size)
        annotations = {
            k: v
            for k, v in (desc.annotations or {}).items()
            if k not in (TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION)  # no longer true
        }
        new = Descriptor(self._layer_media_type(desc, zstd=False), digest, size, annotations or None)
        log.info("converted", digest=digest, source=desc.digest, format="tar")
        return _Converted(out, new, digest)

    def _convert_layer(
        self, desc: Descriptor, files: list[str], diff_id: str | None, cancel: CancelToken
    ) -> _Converted:
        if self.options.uncompressed:
            return self._uncompress_layer(desc, cancel)
        path = self._layer_file(desc)
        annotations = carried_annotations(desc.annotations)
        if self.options.reuse and not files and diff_id and self._reusable(path, desc):
            log.info("no access occur; copying without conversion", digest=desc.digest)
            with open(path, "rb") as f:
                zstd = blob_kind(f) == LayerFormat.ZSTD_CHUNKED.value
            return _Converted(path, replace(desc, media_type=self._layer_media_type(desc, zstd)), diff_id)
        fd, name = tempfile.mkstemp(prefix="layer-", dir=self.work / "out")
        os.close(fd)
        out = Path(name)
        opts = replace(self.options.layer, prioritized_files=files or None)
        self.progress.step(desc.digest, "convert")
        try:
            with open(path, "rb") as fin, output_file(out) as fout:
                res = build(fin, fout, opts, cancel=cancel)
        except UnrepresentableLayerError as e:
            if self.options.require_converted:
                raise UnrepresentableLayerError(f"layer {desc.digest}: {e} (--require-converted)") from None
            out.unlink()
            return self._unconverted(desc, diff_id, opts.format, str(e), cancel)
        self.progress.done(desc.digest, "convert", log_line=False, size=res.size)
        self.progress.alias(res.digest, desc.digest)
        if res.missing_prioritized:
            log.debug(
                "prioritized files not found in layer",
                digest=desc.digest,
                missing=list(res.missing_prioritized),
            )
        annotations[TOC_DIGEST_ANNOTATION] = res.toc_digest
        annotations[UNCOMPRESSED_SIZE_ANNOTATION] = str(res.uncompressed_size)
        annotations.update(res.annotations)
        new = Descriptor(
            media_type=self._layer_media_type(desc, opts.format is LayerFormat.ZSTD_CHUNKED),
            digest=res.digest,
            size=res.size,
            annotations=annotations,
        )
        toc = None
        if res.external_toc is not None:
            toc = out.with_name(out.name + ".toc")
            toc.write_bytes(res.external_toc)
        log.info("converted", digest=res.digest, source=desc.digest, prioritized=len(files))
        return _Converted(out, new, res.diff_id, toc)

    def _unconverted(
        self, desc: Descriptor, diff_id: str | None, fmt: LayerFormat, reason: str, cancel: CancelToken
    ) -> _Converted:
        """A layer the format cannot represent, copied as it is: the snapshotter pulls it the ordinary
        way and `image check` reports it as not eStargz; the rest of the image is still optimized."""
        path = self._layer_file(desc)
        log.warning(
            f"layer copied without conversion: it cannot be written as {fmt.value}",
            layer=desc.digest,
            reason=reason,
        )
        self.progress.done(desc.digest, "convert", log_line=False, size=desc.size)
        if diff_id is None:  # the config does not say: the digest of the layer's tar
            with open(os.devnull, "wb") as null:
                diff_id, _ = self._plain_tar(desc, null, cancel)
        media = desc.media_type
        if self.options.oci:
            media = _OCI_LAYER_OF_DOCKER.get(media, media)
        annotations = carried_annotations(desc.annotations)
        return _Converted(path, replace(desc, media_type=media, annotations=annotations or None), diff_id)

    def _plain_tar(self, desc: Descriptor, dst: BinaryIO, cancel: CancelToken) -> tuple[str, int]:
        """Write the layer's plain tar to `dst`: its digest (the diff ID) and size."""
        with open(self._layer_file(desc), "rb") as fin:
            try:
                return uncompress(checked_file(fin, cancel, "layer conversion"), dst)
            except CorruptLayerError as e:
                raise CtrRemoteError(f"layer {desc.digest}: {e}") from None

    def _reusable(self, path: Path, desc: Descriptor) -> bool:
        """Upstream's test: annotated with a TOC digest that the blob verifies against."""
        toc = (desc.annotations or {}).get(TOC_DIGEST_ANNOTATION)
        if not toc:
            return False
        try:
            with open(path, "rb") as f:
                open_estargz(f).verify(toc)
        except EstargzError as e:
            log.info("not reusable: converting", digest=desc.digest, reason=str(e))
            return False
        return True

    def _rewrite(self, img: ImageBlobs, layers: list[_Converted]) -> tuple[Descriptor, bytes, _Converted]:
        """The converted image's config and manifest (history and unknown fields kept); `img` is
        left as it was read."""
        config_bytes = img.config.with_diff_ids([c.diff_id for c in layers]).to_bytes()
        config_media = img.manifest.config.media_type
        if self.options.oci and media_types.is_docker(config_media):
            config_media = media_types.OCI_CONFIG
        config_desc = Descriptor.of(config_bytes, config_media)
        config_path = self.work / "out" / f"config-{encoded(config_desc.digest)}"
        config_path.write_bytes(config_bytes)

        manifest = replace(
            img.manifest,
            config=config_desc,
            layers=[c.desc for c in layers],
            media_type=media_types.OCI_MANIFEST if self.options.oci else img.manifest.media_type,
        )
        data = manifest.to_bytes()
        desc = Descriptor.of(data, manifest.media_type)
        return desc, data, _Converted(config_path, config_desc, "")


class _Reporting:
    """A store whose blob transfers are reported as progress steps (layers only, not configs).
    With a layer cache, a layer another repository of the target's registry holds is mounted from
    there (the store mounts from the source only, which never has a converted layer)."""

    def __init__(self, store: ImageStore, progress: Progress, cache: LayerCache | None = None) -> None:
        self._store, self._progress, self._cache = store, progress, cache
        self.reference = store.reference

    def resolve(self) -> Descriptor:
        return self._store.resolve()

    def read_manifest(self, desc: Descriptor) -> bytes:
        return self._store.read_manifest(desc)

    def push_manifest(self, data: bytes, desc: Descriptor, *, top: bool = False) -> None:
        self._store.push_manifest(data, desc, top=top)

    def check_push_access(self) -> None:
        self._store.check_push_access()

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> _Reporting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch_blob(self, desc: Descriptor, dest: Path, *, cancel: CancelToken | None = None) -> None:
        self._progress.step(desc.digest, "pull")
        self._store.fetch_blob(desc, dest, cancel=cancel)
        self._progress.done(desc.digest, "pull", size=desc.size)

    def push_blob(self, src: Path, desc: Descriptor, *, cancel: CancelToken | None = None) -> None:
        if not media_types.is_layer(desc.media_type):
            self._store.push_blob(src, desc, cancel=cancel)
            return
        self._progress.step(desc.digest, "push")
        holder = self._cache.holder(desc.digest, self.reference) if self._cache else None
        if holder is None:
            self._store.push_blob(src, desc, cancel=cancel)
        else:
            with open_store(self.reference, RegistryOptions(mount_from=holder)) as store:
                store.push_blob(src, desc, cancel=cancel)
        if self._cache is not None:
            self._cache.held(desc.digest, self.reference)
        self._progress.done(desc.digest, "push", pushed=desc.digest, size=desc.size)


def _padded(diff_ids: list[str], img: ImageBlobs) -> list[str | None]:
    """The config's diff IDs, one per layer (None where a malformed config has too few)."""
    n = len(img.manifest.layers)
    return [diff_ids[i] if i < len(diff_ids) else None for i in range(n)]


def _layer_entries(path: Path) -> list[tuple[str, bool]]:
    """(name, is a directory) of each entry of a layer blob, in order (for a prefetch list)."""
    try:
        with open_layer(path, f"layer {path.name}") as tf:
            return [(m.name, m.isdir()) for m in members(tf)]
    except tarfile.TarError as e:
        raise CtrRemoteError(f"layer {path.name}: not a valid tar archive: {e}") from None
