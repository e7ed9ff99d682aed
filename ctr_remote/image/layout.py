"""OCI image layout directories (`local://DIR[:NAME]`), read and written through the ImageStore verbs.

Reading: `index.json` lists the images. With a NAME, the entry whose
`org.opencontainers.image.ref.name` is NAME; without, the only entry, or, when the entries are the
platform manifests of one image (no names, distinct platforms), `index.json` itself as that image's
index (as upstream's ggcr-based tool read layouts). Several images without a NAME are refused.
Writing: blobs under `blobs/<alg>/<hex>` (each written to a temp file and renamed), `oci-layout`, and
last `index.json`, rewritten through a temp file and a rename, with the new entry replacing any entry
of the same ref.name (or the unnamed entry, when writing without a NAME). Other images stay.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO

from ctr_remote.cancel import CancelToken, checked
from ctr_remote.image import mediatypes as mt
from ctr_remote.image.digest import algorithm, encoded, verify_bytes
from ctr_remote.image.errors import ImageError, LayoutError, NotFoundError
from ctr_remote.image.files import copy_verified, read_chunks, write_atomic
from ctr_remote.image.manifest import ANNOTATION_REF_NAME, Descriptor, sniff_media_type
from ctr_remote.image.platform import Platform
from ctr_remote.image.reference import Reference

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
MAX_MANIFEST_SIZE = 64 << 20


class LayoutStore:
    """An OCI image layout directory."""

    def __init__(self, ref: Reference) -> None:
        assert ref.path is not None
        self.reference = ref
        self.root = ref.path.absolute()
        self._synthetic: dict[str, bytes] = {}  # digest -> index.json bytes used as the top index
        self._lock = threading.Lock()

    def __enter__(self) -> LayoutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / algorithm(digest) / encoded(digest)

    def _open(self, path: Path, what: str) -> BinaryIO:
        """`path` opened for reading if it is a regular file (links to one are fine): a fifo would
        block forever and a link to a device could be endless."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"{self.reference.name}: {what} not found") from None
        except OSError as e:
            raise LayoutError(f"{self.reference.name}: cannot read {what}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LayoutError(f"{self.reference.name}: {what} is not a regular file")
        return os.fdopen(fd, "rb")

    def _read_index(self) -> tuple[bytes, dict[str, Any]]:
        try:
            f = self._open(self.root / INDEX_FILE, INDEX_FILE)
        except NotFoundError:
            raise LayoutError(f"{self.reference.name}: not an OCI image layout (no {INDEX_FILE})") from None
        with f:
            data = f.read(MAX_MANIFEST_SIZE + 1)
        if len(data) > MAX_MANIFEST_SIZE:
            raise LayoutError(f"{self.reference.name}: {INDEX_FILE} is larger than {MAX_MANIFEST_SIZE} bytes")
        try:
            obj = json.loads(data)
        except ValueError as e:
            raise LayoutError(f"{self.reference.name}: invalid {INDEX_FILE}: {e}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("manifests"), list):
            raise LayoutError(f"{self.reference.name}: invalid {INDEX_FILE}: no manifests list")
        return data, obj

    def resolve(self) -> Descriptor:
        data, obj = self._read_index()
        entries = [
            Descriptor.from_json(e, f"{self.reference.name} {INDEX_FILE} entry") for e in obj["manifests"]
        ]
        name = self.reference.tag
        if name is not None:
            named = [e for e in entries if (e.annotations or {}).get(ANNOTATION_REF_NAME) == name]
            if not named:
                raise NotFoundError(f"{self.reference}: no image named {name!r} in the layout")
            return self._typed(named[-1])
        if not entries:
            raise NotFoundError(f"{self.reference.name}: the layout holds no image")
        if len(entries) == 1:
            return self._typed(entries[0])
        if not _one_image(entries):
            names = ", ".join(_label(e) for e in entries)
            raise LayoutError(
                f"{self.reference.name} holds {len(entries)} images ({names}): "
                f"pick one with {self.reference.name}:NAME"
            )
        # The platform manifests of one image listed directly in index.json (as ggcr writes a
        # multi-platform image): index.json is that image's index.
        desc = Descriptor.of(data, mt.OCI_INDEX)
        self._synthetic[desc.digest] = data
        return desc

    def _typed(self, desc: Descriptor) -> Descriptor:
        if desc.media_type:
            return desc
        media = sniff_media_type(self.read_manifest(desc))
        return Descriptor(media, desc.digest, desc.size, desc.annotations, desc.platform, desc.urls)

    def read_manifest(self, desc: Descriptor) -> bytes:
        if desc.digest in self._synthetic:
            return self._synthetic[desc.digest]
        if desc.size > MAX_MANIFEST_SIZE:
            raise ImageError(f"{desc.digest}: {desc.size} bytes is too large for a manifest or config")
        with self._open(self._blob(desc.digest), f"blob {desc.digest}") as f:
            data = f.read(desc.size + 1)  # one byte more than promised is already a mismatch
        verify_bytes(f"{self.reference.name}: blob", data, desc.digest, desc.size)
        return data

    def fetch_blob(self, desc: Descriptor, dest: Path, *, cancel: CancelToken | None = None) -> None:
        what = f"{self.reference.name}: blob"
        with self._open(self._blob(desc.digest), f"blob {desc.digest}") as f:
            copy_verified(checked(read_chunks(f), cancel, f"{what} {desc.digest}"), dest, desc, what)

    def _ensure_layout(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            marker = self.root / LAYOUT_FILE
            if not marker.exists():
                write_atomic(marker, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        except OSError as e:
            raise LayoutError(f"{self.reference.name}: cannot create the layout: {e.strerror}") from None

    def check_push_access(self) -> None:
        """The layout's directories (or, for a layout still to be made, its nearest existing parent)
        take a new file: a probe, as os.access() cannot tell a read-only mount or a full quota."""
        existing = [d for d in (self.root, self.root / "blobs" / "sha256") if d.exists()]
        if not existing:
            parent = self.root
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            existing = [parent]
        for directory in existing:
            if not directory.is_dir():
                raise LayoutError(f"{self.reference.name}: {directory} is not a directory")
            try:
                with tempfile.TemporaryFile(dir=directory):
                    pass
            except OSError as e:
                raise LayoutError(
                    f"{self.reference.name}: cannot write in {directory}: {e.strerror}"
                ) from None

    def push_blob(self, src: Path, desc: Descriptor, *, cancel: CancelToken | None = None) -> None:
        self._ensure_layout()
        target = self._blob(desc.digest)
        if target.exists() and target.stat().st_size == desc.size:
            return
        with src.open("rb") as f:
            copy_verified(checked(read_chunks(f), cancel, f"blob {src}"), target, desc, f"blob {src}")

    def push_manifest(self, data: bytes, desc: Descriptor, *, top: bool = False) -> None:
        verify_bytes("manifest", data, desc.digest, desc.size)
        self._ensure_layout()
        target = self._blob(desc.digest)
        if not (target.exists() and target.stat().st_size == desc.size):
            write_atomic(target, data)
        if top:
            self._record(desc)

    def _record(self, desc: Descriptor) -> None:
        """Put `desc` into index.json under the reference's name, replacing the previous entry."""
        name = self.reference.tag
        annotations = dict(desc.annotations or {})
        if name is not None:
            annotations[ANNOTATION_REF_NAME] = name
        else:
            annotations.pop(ANNOTATION_REF_NAME, None)
        entry = Descriptor(desc.media_type, desc.digest, desc.size, annotations or None, desc.platform)
        with self._lock, _DirLock(self.root):
            obj: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
            if (self.root / INDEX_FILE).exists():
                obj = self._read_index()[1]
            kept = [
                e for e in obj["manifests"] if (e.get("annotations") or {}).get(ANNOTATION_REF_NAME) != name
            ]
            obj["manifests"] = [*kept, entry.to_json()]
            write_atomic(self.root / INDEX_FILE, json.dumps(obj, indent=2).encode())


def _label(entry: Descriptor) -> str:
    name = (entry.annotations or {}).get(ANNOTATION_REF_NAME)
    return name if name else f"unnamed {entry.digest[:19]}"


def _one_image(entries: list[Descriptor]) -> bool:
    """True if `entries` are the platform manifests of one image: no names, all manifests, each
    with a platform none of the others has."""
    platforms: list[Platform] = []
    for e in entries:
        if (e.annotations or {}).get(ANNOTATION_REF_NAME) or not mt.is_manifest(e.media_type):
            return False
        if e.platform is None or any(e.platform.matches(p) for p in platforms):
            return False
        platforms.append(e.platform)
    return True


class _DirLock:
    """flock on the layout directory: two writers of one layout do not lose each other's entries."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> None:
        self._fd = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
