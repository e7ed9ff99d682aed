"""The converted-layer cache. Our conversion is reproducible: the same source layer, written with the
same options and the same prioritized list, gives the same blob whatever the thread count. So the
key is exactly those inputs, and a hit is the blob the conversion would have written.

Three levels, looked up in order: this process (a blob verified once), a directory (`--cache-dir`,
kept across runs) and optionally a registry repository (`RemoteCache`, shared between machines).
Every blob read from the directory or the registry is digest-checked before use, so a torn or
tampered entry is a miss, never a wrong layer. Within a process each key is converted once: a job
that wants a key another job is converting waits for it (`get_or_convert`).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from ctr_remote import __version__
from ctr_remote.cancel import CancelToken
from ctr_remote.errors import CtrRemoteError
from ctr_remote.image import Descriptor, ImageError, Reference, media_types
from ctr_remote.image.digest import algorithm, encoded
from ctr_remote.options import OptimizeOptions

log = structlog.get_logger()


class Outcome(enum.Enum):
    """How a job got one of its layers (the report's per-layer word)."""

    CONVERTED = "converted"  # converted by this job
    REUSED = "reused"  # --reuse: the source blob was eStargz already and is copied as it is
    CACHED = "cached"  # converted earlier: by another job of the batch, a previous run, or a shard


@dataclass(frozen=True)
class CachedLayer:
    """A converted layer: its blob, descriptor (as the manifest lists it), diff ID and, with
    --estargz-external-toc, its TOC blob."""

    path: Path
    desc: Descriptor
    diff_id: str
    toc: Path | None = None


@dataclass(frozen=True)
class LayerReport:
    source: str  # the source layer's digest
    digest: str  # the layer written
    outcome: Outcome


def layer_key(source: Descriptor, diff_id: str | None, files: Sequence[str], options: OptimizeOptions) -> str:
    """Everything the converted blob and its descriptor depend on, hashed. Thread counts and the gzip
    helper are left out: they change how fast, not what. The version is in: a new writer may write
    other bytes for the same inputs."""
    layer = options.layer
    doc = {
        "version": __version__,
        "source": source.to_json(),  # its annotations are carried over, its media type decides ours
        "diff_id": diff_id,
        "files": list(files),
        "format": layer.format.value,
        "level": layer.level,
        "chunk_size": layer.chunk_size,
        "min_chunk_size": layer.min_chunk_size,
        "external_toc": layer.external_toc,
        "oci": options.oci,
        "uncompressed": options.uncompressed,
        "reuse": options.reuse,
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RemoteCache(Protocol):
    """A cache shared between machines (a registry repository: `remote.RegistryCache`)."""

    reference: Reference  # the repository its blobs are in

    def load(
        self, key: str, blobs: Path, cancel: CancelToken
    ) -> tuple[Descriptor, str, Descriptor | None] | None:
        """The entry for `key` with its blobs fetched (verified) into `blobs/<hex>`: (layer
        descriptor, diff ID, TOC descriptor), or None if there is none."""
        ...

    def save(self, key: str, layer: CachedLayer, cancel: CancelToken) -> None: ...


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"{algorithm}:{h.hexdigest()}"


class LayerCache:
    """The cache one batch run uses (see the module docstring). `directory` holds `blobs/<hex>` and
    `keys/<hex>.json`; it is a temporary one when the user gave no --cache-dir."""

    def __init__(self, directory: Path, remote: RemoteCache | None = None) -> None:
        self.directory, self.remote = directory, remote
        self._blobs = directory / "blobs"
        self._keys = directory / "keys"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._keys.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._memory: dict[str, CachedLayer] = {}
        self._holders: dict[str, list[Reference]] = {}  # layer digest -> repositories that have it

    def lookup(self, key: str, cancel: CancelToken) -> CachedLayer | None:
        """The cached layer for `key`, from any level, verified; None on a miss."""
        with self._key_lock(key):
            return self._find(key, cancel)

    def get_or_convert(
        self, key: str, convert: Callable[[], tuple[CachedLayer, Outcome]], cancel: CancelToken
    ) -> tuple[CachedLayer, Outcome]:
        """The cached layer, or `convert()`'s, stored if it was converted (a reused source blob is
        not: copying it is as cheap as a cache hit). One conversion per key at a time."""
        with self._key_lock(key):
            found = self._find(key, cancel)
            if found is not None:
                return found, Outcome.CACHED
            layer, outcome = convert()
            if outcome is not Outcome.CONVERTED:
                return layer, outcome
            stored = self._store(key, layer)
            if self.remote is not None:
                try:
                    self.remote.save(key, stored, cancel)
                    self.held(stored.desc.digest, self.remote.reference)
                except ImageError as e:  # a cache entry lost, nothing wrong: the job goes on
                    log.warning("could not save to the registry cache", key=key, error=str(e))
            return stored, outcome

    def held(self, digest: str, repository: Reference) -> None:
        """`repository` has the blob `digest` now (a job pushed it there, or the registry cache)."""
        with self._lock:
            holders = self._holders.setdefault(digest, [])
            if repository not in holders:
                holders.append(repository)

    def holder(self, digest: str, target: Reference) -> Reference | None:
        """A repository of `target`'s registry, not `target`'s, that has the blob: a push there is a
        cross-repository mount instead of an upload."""
        with self._lock:
            holders = list(self._holders.get(digest, ()))
        for ref in holders:
            same_registry = not ref.is_layout and not target.is_layout and ref.registry == target.registry
            if same_registry and ref.plain_http == target.plain_http and ref.repository != target.repository:
                return ref
        return None

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def _find(self, key: str, cancel: CancelToken) -> CachedLayer | None:
        with self._lock:
            if key in self._memory:
                return self._memory[key]
        found = self._from_directory(key)
        if found is None and self.remote is not None:
            try:
                entry = self.remote.load(key, self._blobs, cancel)
            except ImageError as e:
                log.warning("registry cache entry unusable: converting", key=key, error=str(e))
                entry = None
            if entry is not None:
                desc, diff_id, toc = entry
                self.held(desc.digest, self.remote.reference)
                found = CachedLayer(
                    self._blob(desc.digest), desc, diff_id, self._blob(toc.digest) if toc else None
                )
                self._write_key(key, found)
        if found is not None:
            with self._lock:
                self._memory[key] = found
        return found

    def _blob(self, digest: str) -> Path:
        return self._blobs / encoded(digest)

    def _from_directory(self, key: str) -> CachedLayer | None:
        try:
            doc = json.loads((self._keys / f"{encoded(key)}.json").read_text())
            desc = Descriptor.from_json(doc["desc"])
            toc = Descriptor.from_json(doc["toc"]) if doc.get("toc") else None
            diff_id = str(doc["diff_id"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ImageError) as e:
            log.warning("cache entry unreadable: converting", key=key, error=str(e))
            return None
        for d in (desc, *([toc] if toc else [])):
            path = self._blob(d.digest)
            try:
                ok = path.stat().st_size == d.size and file_digest(path, algorithm(d.digest)) == d.digest
            except OSError:
                ok = False
            if not ok:
                log.warning("cached blob missing or corrupt: converting", key=key, digest=d.digest)
                return None
        return CachedLayer(self._blob(desc.digest), desc, diff_id, self._blob(toc.digest) if toc else None)

    def _store(self, key: str, layer: CachedLayer) -> CachedLayer:
        """Move the layer's blobs into the directory (they came from a job's temporary directory)
        and write its key file last, so that a key file always names complete blobs."""
        blob = self._put_blob(layer.path, layer.desc.digest)
        toc = None
        if layer.toc is not None:
            toc = self._put_blob(layer.toc, file_digest(layer.toc))
        stored = CachedLayer(blob, layer.desc, layer.diff_id, toc)
        self._write_key(key, stored)
        with self._lock:
            self._memory[key] = stored
        return stored

    def _put_blob(self, src: Path, digest: str) -> Path:
        dest = self._blob(digest)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=self._blobs)
        os.close(fd)
        try:
            os.unlink(tmp)
            try:
                os.link(src, tmp)  # the job's temp dir goes, the link stays: no copy on one filesystem
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise CtrRemoteError(f"cannot write the layer cache {self.directory}: {e.strerror}") from None
        return dest

    def _write_key(self, key: str, layer: CachedLayer) -> None:
        doc = {
            "key": key,
            "desc": layer.desc.to_json(),
            "diff_id": layer.diff_id,
            "toc": _toc_desc(layer).to_json() if layer.toc else None,
        }
        dest = self._keys / f"{encoded(key)}.json"
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=self._keys)
        with open(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, dest)


def _toc_desc(layer: CachedLayer) -> Descriptor:
    """The TOC blob's descriptor (gzip, as the -esgztoc image lists it)."""
    assert layer.toc is not None
    return Descriptor(media_types.OCI_LAYER_GZIP, file_digest(layer.toc), layer.toc.stat().st_size)
