"""The converted-layer cache. Our conversion is reproducible: the same source layer, written with the
same options and the same prioritized list, gives the same blob whatever the thread count. So the
key is exactly those inputs, and a hit is the blob the conversion would have written.

Three levels, looked up in order: this process (a blob verified once), a directory (`--cache-dir`,
kept across runs) and optionally a registry repository (`RemoteCache`, shared between machines).
Every entry read from the directory or the registry is verified before use (`verify.py`: the blob
against its digest, and read whole against the entry's diff ID and annotations), so a torn,
truncated or tampered entry is a miss (one warning, the layer converted and the entry written
again), never a wrong layer. Within a process each key is converted once: a job that wants a key
another job is converting waits for it (`get_or_convert`).

Several processes may share one directory, and one may trim it (`trim`) while others run. So a
process never uses a path under `blobs/` after looking it up: it hard-links the blob into its own
run directory (`runs/run-*`, locked while it lives) and uses that link, which no eviction touches.
Entries are written blobs first, key file last, each by rename; they are evicted key file first,
each by rename and then unlink: a reader sees a whole entry or none.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Protocol

import structlog

from ctr_remote import __version__
from ctr_remote.cancel import CancelToken
from ctr_remote.errors import CtrRemoteError
from ctr_remote.image import Descriptor, ImageError, Reference, media_types
from ctr_remote.image.digest import encoded
from ctr_remote.layercache.verify import entry_problem, file_digest
from ctr_remote.options import OptimizeOptions
from ctr_remote.runstate import make_temp_file

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

    def entry(self, key: str) -> str:
        """The entry's name, for log lines (its tag)."""
        ...

    def load(
        self, key: str, blobs: Path, cancel: CancelToken
    ) -> tuple[Descriptor, str, Descriptor | None] | None:
        """The entry for `key` with its blobs fetched (verified) into `blobs/<hex>`: (layer
        descriptor, diff ID, TOC descriptor), or None if there is none."""
        ...

    def save(self, key: str, layer: CachedLayer, cancel: CancelToken) -> None: ...


@dataclass(frozen=True)
class Trimmed:
    """What `LayerCache.trim` did."""

    entries: int  # key files evicted, and blobs no key named
    freed: int  # bytes
    size: int  # bytes left in blobs/ and keys/


class LayerCache:
    """The cache one batch run uses (see the module docstring). `directory` holds `blobs/<hex>`,
    `keys/<hex>.json` and `runs/`; it is a temporary one when the user gave no --cache-dir.
    `close()` (or leaving its `with`) removes this process's run directory."""

    def __init__(self, directory: Path, remote: RemoteCache | None = None) -> None:
        self.directory, self.remote = directory, remote
        self._blobs = directory / "blobs"
        self._keys = directory / "keys"
        self._runs = directory / "runs"
        for d in (self._blobs, self._keys, self._runs):
            d.mkdir(parents=True, exist_ok=True)
        self._reap_runs()
        self._run, self._run_lock = self._new_run()
        self._names = itertools.count()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._memory: dict[str, CachedLayer] = {}
        self._holders: dict[str, list[Reference]] = {}  # layer digest -> repositories that have it
        # Keys whose directory or registry entry was found unusable this run: warned about once,
        # not read again (the layer is converted and the entry written anew).
        self._bad_local: set[str] = set()
        self._bad_remote: set[str] = set()
        self._used: set[str] = set()  # keys hit or stored this run: trimmed last

    def __enter__(self) -> LayerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self._run, ignore_errors=True)
        self._run_lock.close()

    def lookup(self, key: str, source: Descriptor, cancel: CancelToken) -> CachedLayer | None:
        """The cached layer for `key` (the conversion of `source`), from any level, verified; None
        on a miss."""
        with self._key_lock(key):
            return self._find(key, source, cancel)

    def get_or_convert(
        self,
        key: str,
        source: Descriptor,
        convert: Callable[[], tuple[CachedLayer, Outcome]],
        cancel: CancelToken,
    ) -> tuple[CachedLayer, Outcome]:
        """The cached layer, or `convert()`'s, stored if it was converted (a reused source blob is
        not: copying it is as cheap as a cache hit). One conversion per key at a time."""
        with self._key_lock(key):
            found = self._find(key, source, cancel)
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

    def _find(self, key: str, source: Descriptor, cancel: CancelToken) -> CachedLayer | None:
        with self._lock:
            if key in self._memory:
                return self._memory[key]
        found = None if key in self._bad_local else self._from_directory(key, source)
        if found is None and self.remote is not None and key not in self._bad_remote:
            found = self._from_remote(self.remote, key, source, cancel)
        if found is not None:
            with self._lock:
                self._memory[key] = found
                self._used.add(key)
        return found

    def _unusable(self, key: str, entry: str, reason: str, bad: set[str]) -> None:
        bad.add(key)
        log.warning("layer cache entry unusable: converting the layer again", entry=entry, reason=reason)

    def _from_remote(
        self, remote: RemoteCache, key: str, source: Descriptor, cancel: CancelToken
    ) -> CachedLayer | None:
        fetched = Path(tempfile.mkdtemp(prefix="fetch-", dir=self._run))
        try:
            entry = remote.load(key, fetched, cancel)
        except ImageError as e:
            self._unusable(key, remote.entry(key), str(e), self._bad_remote)
            return None
        if entry is None:
            return None
        desc, diff_id, toc = entry
        blob = fetched / encoded(desc.digest)
        toc_blob = (toc, fetched / encoded(toc.digest)) if toc else None
        problem = self._problem(source, desc, diff_id, blob, toc_blob, True)
        if problem is not None:
            self._unusable(key, remote.entry(key), problem, self._bad_remote)
            return None
        self.held(desc.digest, remote.reference)
        found = CachedLayer(self._put_blob(blob, desc.digest), desc, diff_id, None)
        if toc_blob is not None:
            found = replace(found, toc=self._put_blob(toc_blob[1], toc_blob[0].digest))
        self._write_key(key, found, toc)
        return found

    def _problem(
        self,
        source: Descriptor,
        desc: Descriptor,
        diff_id: str,
        blob: Path,
        toc: tuple[Descriptor, Path] | None,
        fetched: bool,
    ) -> str | None:
        try:
            return entry_problem(source, desc, diff_id, blob, toc, fetched)
        except OSError as e:
            return f"cannot read {blob}: {e.strerror}"
        except Exception as e:  # any blob that cannot be read through is no layer to use: a miss
            return f"blob {desc.digest} cannot be read: {type(e).__name__}: {e}"

    def _blob(self, digest: str) -> Path:
        return self._blobs / encoded(digest)

    def _private(self, digest: str) -> Path:
        """A new name in this run's directory for a link to the blob `digest`."""
        return self._run / f"{encoded(digest)}.{next(self._names)}"

    def _take(self, digest: str) -> Path:
        """A link of this run to the directory's blob `digest` (FileNotFoundError if there is none):
        an eviction by another process after this leaves the link, and the content, to us."""
        link = self._private(digest)
        try:
            os.link(self._blob(digest), link)
        except FileNotFoundError:
            raise
        except OSError:  # a filesystem without hard links: a copy is as safe, only slower
            shutil.copyfile(self._blob(digest), link)
        return link

    def _from_directory(self, key: str, source: Descriptor) -> CachedLayer | None:
        keyfile = self._keys / f"{encoded(key)}.json"
        try:
            doc = json.loads(keyfile.read_text())
            desc = Descriptor.from_json(doc["desc"])
            toc = Descriptor.from_json(doc["toc"]) if doc.get("toc") else None
            diff_id = doc["diff_id"]
            if doc.get("key") != key or not isinstance(diff_id, str):
                raise ValueError("not the entry for this key")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ImageError) as e:
            self._unusable(key, str(keyfile), f"unreadable key file: {e}", self._bad_local)
            return None
        links: list[Path] = []
        for d in (desc, *([toc] if toc else [])):
            try:
                links.append(self._take(d.digest))
            except FileNotFoundError:
                if not keyfile.exists():  # evicted by another process since we read it: a plain miss
                    return None
                self._unusable(key, str(keyfile), f"blob {d.digest} is missing", self._bad_local)
                return None
            except OSError as e:
                raise CtrRemoteError(f"cannot use the layer cache {self.directory}: {e.strerror}") from None
        toc_blob = (toc, links[1]) if toc else None
        problem = self._problem(source, desc, diff_id, links[0], toc_blob, False)
        if problem is not None:
            self._unusable(key, str(keyfile), problem, self._bad_local)
            return None
        with contextlib.suppress(OSError):  # the last use, which trimming goes by
            os.utime(keyfile)
        return CachedLayer(links[0], desc, diff_id, toc_blob[1] if toc_blob else None)

    def _store(self, key: str, layer: CachedLayer) -> CachedLayer:
        """Put the layer's blobs into the directory (they came from a job's temporary directory)
        and write its key file last, so that a key file always names complete blobs."""
        blob = self._put_blob(layer.path, layer.desc.digest)
        toc = toc_desc = None
        if layer.toc is not None:  # hashed once: the key file and the blob's name both need it
            toc_desc = toc_descriptor(layer.toc)
            toc = self._put_blob(layer.toc, toc_desc.digest)
        stored = CachedLayer(blob, layer.desc, layer.diff_id, toc)
        self._write_key(key, stored, toc_desc)
        with self._lock:
            self._memory[key] = stored
            self._used.add(key)
        return stored

    def _put_blob(self, src: Path, digest: str) -> Path:
        """Link (or copy) `src` into this run's directory and from there into `blobs/`; the run's
        link is what the run uses."""
        own = self._private(digest)
        dest = self._blob(digest)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=self._blobs)
        os.close(fd)
        try:
            os.unlink(tmp)
            try:
                os.link(src, own)  # the job's temp dir goes, the link stays: no copy on one filesystem
            except OSError:
                shutil.copyfile(src, own)
            os.link(own, tmp)
            os.replace(tmp, dest)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise CtrRemoteError(f"cannot write the layer cache {self.directory}: {e.strerror}") from None
        return own

    def _write_key(self, key: str, layer: CachedLayer, toc: Descriptor | None) -> None:
        doc = {
            "key": key,
            "desc": layer.desc.to_json(),
            "diff_id": layer.diff_id,
            "toc": toc.to_json() if toc else None,
        }
        dest = self._keys / f"{encoded(key)}.json"
        fd, tmp = make_temp_file(f".{dest.name}.", "", self._keys)  # removed by the janitor of a killed run
        with open(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, dest)

    # -- runs and trimming ----------------------------------------------------------------------

    def _new_run(self) -> tuple[Path, IO[str]]:
        """This process's run directory, locked for as long as the process lives: made under a dot
        name and renamed only once locked, so that no other process takes it for a dead run's."""
        new = Path(tempfile.mkdtemp(prefix=".new-", dir=self._runs))
        lock = open(new / ".lock", "w")  # noqa: SIM115 - held until close()
        fcntl.flock(lock, fcntl.LOCK_EX)
        run = self._runs / ("run-" + new.name.removeprefix(".new-"))
        os.rename(new, run)
        return run, lock

    def _reap_runs(self) -> None:
        """Remove the run directories of processes that died without removing theirs (their lock is
        free): their links would keep evicted blobs on disk."""
        for run in self._runs.glob("run-*"):
            try:
                with open(run / ".lock") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    shutil.rmtree(run, ignore_errors=True)
            except OSError:  # alive (locked), or removed meanwhile by another process
                continue

    def trim(self, max_size: int) -> Trimmed:
        """Evict entries until `blobs/` and `keys/` hold at most `max_size` bytes: first entries
        larger than that (they never fit), then by last use, this run's entries last. Blobs no key
        names (a writer that died between blob and key file) are evicted by their age."""
        self._reap_runs()
        entries: list[_Entry] = []
        used = {f"{encoded(k)}.json" for k in self._used}
        for path in self._keys.glob("*.json"):
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except OSError:  # evicted meanwhile by another process
                continue
            try:
                doc = json.loads(path.read_text())
                blobs = [encoded(doc["desc"]["digest"])]
                if doc.get("toc"):
                    blobs.append(encoded(doc["toc"]["digest"]))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError, ImageError):
                blobs = []  # unreadable: only the key file itself is there to evict
            entries.append(_Entry(path, st.st_size, st.st_mtime, tuple(blobs), path.name in used))
        sizes: dict[str, tuple[int, float]] = {}
        for path in self._blobs.iterdir():
            if path.name.startswith("."):  # being written
                continue
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                sizes[path.name] = (st.st_size, st.st_mtime)
        refs: dict[str, int] = {}
        for e in entries:
            for b in e.blobs:
                if b in sizes:
                    refs[b] = refs.get(b, 0) + 1
        entries += [
            _Entry(self._blobs / b, sizes[b][0], sizes[b][1], (), False) for b in sizes if b not in refs
        ]
        total = sum(e.size for e in entries if e.path.parent == self._keys) + sum(
            s for s, _ in sizes.values()
        )

        def own_size(e: _Entry) -> int:
            return e.size + sum(sizes[b][0] for b in e.blobs if b in sizes)

        entries.sort(key=lambda e: (own_size(e) <= max_size, e.used, e.mtime))
        evicted = freed = 0
        for e in entries:
            if total <= max_size:
                break
            gone = e.size if _remove(e.path) else 0
            for b in e.blobs:
                if b in refs:
                    refs[b] -= 1
                    if refs[b] == 0 and _remove(self._blobs / b):
                        gone += sizes[b][0]
            evicted += 1
            freed += gone
            total -= gone
        return Trimmed(evicted, freed, total)


@dataclass(frozen=True)
class _Entry:
    path: Path  # its key file, or a blob no key file names
    size: int  # of that file
    mtime: float  # its last use
    blobs: tuple[str, ...]  # the blobs (hex) a key file names
    used: bool  # by this run


def _remove(path: Path) -> bool:
    """Remove `path` as one step for readers: renamed out of the way first, then deleted. False if
    it was gone already (another process evicted it)."""
    doomed = path.with_name(f".evict-{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(doomed)
    return True


def toc_descriptor(path: Path) -> Descriptor:
    """An external TOC blob's descriptor (gzip, as the -esgztoc image lists it)."""
    return Descriptor(media_types.OCI_LAYER_GZIP, file_digest(path), path.stat().st_size)
