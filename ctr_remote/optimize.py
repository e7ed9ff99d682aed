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

import structlog

from ctr_remote.cancel import CancelToken, run_parallel
from ctr_remote.errors import CtrRemoteError
from ctr_remote.estargz import (
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    EstargzError,
    build,
    open_estargz,
)
from ctr_remote.image import (
    Descriptor,
    ImageBlobs,
    ImageStore,
    Index,
    RegistryOptions,
    fetch_blobs,
    host_platform,
    media_types,
    open_store,
    write_image,
)
from ctr_remote.image.digest import encoded
from ctr_remote.image.resolve import resolve_images
from ctr_remote.layer.archive import members, open_layer
from ctr_remote.options import OptimizeOptions
from ctr_remote.prefetch_list import visible_per_layer
from ctr_remote.profile import ProfileResult, Workload, check_requirements, profile, record_lines
from ctr_remote.progress import Progress
from ctr_remote.runstate import recorded

log = structlog.get_logger()


@dataclass(frozen=True)
class _Converted:
    path: Path
    desc: Descriptor
    diff_id: str


def optimize(options: OptimizeOptions, workload: Workload, progress: Progress | None = None) -> str:
    """Convert `options.source` into `options.target`; returns the digest of the top-level document
    written. `progress` shows each layer's steps (default: one log line per step)."""
    with (
        recorded() as run,  # what this run leaves on the host, removed even if it is SIGKILLed
        _RecordFile.create(options.record_out) as record,
        tempfile.TemporaryDirectory(prefix="ctr-remote-") as tmp,
        open_store(options.source) as src,
        open_store(options.target, RegistryOptions(mount_from=options.source)) as dst,
    ):
        run.add_temp_dir(Path(tmp))
        dst.check_push_access()  # before the pull, the workload and the conversion
        return _Pipeline(
            Path(tmp), src, dst, options, workload, progress or Progress(live=False), record
        ).run()


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
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        except OSError as e:
            raise CtrRemoteError(f"cannot write the record file {path}: {e.strerror}") from None
        record = cls(target, fd, Path(name))
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
    ) -> None:
        self.work, self.src, self.dst, self.record = work, src, dst, record
        self.progress = progress
        self.options, self.workload, self.prefetch = options, workload, options.prefetch
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
        self._fetch_layers(images)
        accessed = self._accessed(host) if host is not None else None

        jobs = [(img, self._lists(img, accessed if img is host else None)) for img in images]
        converted = self._convert_all(jobs)
        outputs: list[tuple[ImageBlobs, Descriptor, bytes, _Converted, list[_Converted]]] = []
        for img, lists in jobs:
            layers = [
                converted[(d.digest, tuple(files))]
                for d, files in zip(img.manifest.layers, lists, strict=True)
            ]
            manifest_desc, manifest_bytes, config = self._rewrite(img, layers)
            outputs.append((img, manifest_desc, manifest_bytes, config, layers))

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
            _Reporting(self.dst, self.progress), list(blobs.values()), children, (data, desc)
        )
        return written.digest

    # -- inputs -------------------------------------------------------------------------------

    def _layer_file(self, desc: Descriptor) -> Path:
        return self.work / "in" / encoded(desc.digest)

    def _fetch_layers(self, images: Sequence[ImageBlobs]) -> None:
        wanted: dict[str, Descriptor] = {}
        for img in images:
            for layer in img.manifest.layers:
                wanted.setdefault(layer.digest, layer)
        fetch_blobs(_Reporting(self.src, self.progress), [(d, self._layer_file(d)) for d in wanted.values()])

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

    def _accessed(self, img: ImageBlobs) -> list[list[str]]:
        layers = [self._layer_file(d) for d in img.manifest.layers]
        if self.prefetch is not None:
            visible = visible_per_layer([_layer_entries(p) for p in layers])
            accessed = [self.prefetch.select(names) for names in visible]
            if self.record is not None:
                self.record.write(record_lines(ProfileResult(accessed, None), img.manifest_desc.digest))
            return accessed
        self.progress.commit()  # the workload may write to the terminal the progress lines are on
        if self.workload.wait_on_signal:
            log.info("press Ctrl+C to terminate the container")
        elif self.workload.wait_on_line is None:
            log.info(f"waiting for {self.workload.period:g}s ...")
        result = profile(layers, img.config.raw, self.workload, workdir=self.work)
        if self.record is not None:
            self.record.write(record_lines(result, img.manifest_desc.digest))
        return result.accessed

    # -- conversion -----------------------------------------------------------------------------

    @staticmethod
    def _lists(img: ImageBlobs, accessed: list[list[str]] | None) -> list[list[str]]:
        layers = img.manifest.layers
        if accessed is None:
            return [[] for _ in layers]
        if len(accessed) != len(layers):
            raise CtrRemoteError(f"internal error: {len(accessed)} access lists for {len(layers)} layers")
        return accessed

    def _convert_all(
        self, jobs: Sequence[tuple[ImageBlobs, list[list[str]]]]
    ) -> dict[tuple[str, tuple[str, ...]], _Converted]:
        """Convert every distinct (layer, prioritized list) once, layers in parallel."""
        unique: dict[tuple[str, tuple[str, ...]], tuple[Descriptor, list[str], str | None]] = {}
        for img, lists in jobs:
            diff_ids = img.config.diff_ids
            for i, (d, files) in enumerate(zip(img.manifest.layers, lists, strict=True)):
                unique.setdefault(
                    (d.digest, tuple(files)), (d, files, diff_ids[i] if i < len(diff_ids) else None)
                )
        if not unique:
            return {}
        # On Ctrl-C, SIGTERM or a failed layer, every conversion stops at once: queued layers never
        # start and running ones give up at their next read or write.
        keys = list(unique)
        jobs_ = [functools.partial(self._convert_layer, *unique[k]) for k in keys]
        return dict(zip(keys, run_parallel(jobs_, os.cpu_count() or 1), strict=True))

    def _layer_media_type(self, src: Descriptor) -> str:
        docker = media_types.is_docker(src.media_type) and not self.options.oci
        return media_types.DOCKER_LAYER_GZIP if docker else media_types.OCI_LAYER_GZIP

    def _convert_layer(
        self, desc: Descriptor, files: list[str], diff_id: str | None, cancel: CancelToken
    ) -> _Converted:
        path = self._layer_file(desc)
        annotations = dict(desc.annotations or {})
        if self.options.reuse and not files and diff_id and self._reusable(path, desc):
            log.info("no access occur; copying without conversion", digest=desc.digest)
            media = self._layer_media_type(desc)
            return _Converted(path, replace(desc, media_type=media), diff_id)
        fd, name = tempfile.mkstemp(prefix="layer-", dir=self.work / "out")
        os.close(fd)
        out = Path(name)
        opts = replace(self.options.layer, prioritized_files=files or None)
        self.progress.step(desc.digest, "convert")
        with open(path, "rb") as fin, open(out, "wb") as fout:
            res = build(fin, fout, opts, cancel=cancel)
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
        new = Descriptor(
            media_type=self._layer_media_type(desc),
            digest=res.digest,
            size=res.size,
            annotations=annotations,
        )
        log.info("converted", digest=res.digest, source=desc.digest, prioritized=len(files))
        return _Converted(out, new, res.diff_id)

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
    """A store whose blob transfers are reported as progress steps (layers only, not configs)."""

    def __init__(self, store: ImageStore, progress: Progress) -> None:
        self._store, self._progress = store, progress
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
        self._store.push_blob(src, desc, cancel=cancel)
        self._progress.done(desc.digest, "push", pushed=desc.digest, size=desc.size)


def _layer_entries(path: Path) -> list[tuple[str, bool]]:
    """(name, is a directory) of each entry of a layer blob, in order (for a prefetch list)."""
    try:
        with open_layer(path, f"layer {path.name}") as tf:
            return [(m.name, m.isdir()) for m in members(tf)]
    except tarfile.TarError as e:
        raise CtrRemoteError(f"layer {path.name}: not a valid tar archive: {e}") from None
