"""Builders for test images: layer blobs (tar, tar+gzip, tar+zstd) made of busybox-static and files.

    base = LayerBuilder().busybox().file("data/a.txt", b"a")   # busybox() adds /etc/passwd, /etc/group
    top = LayerBuilder().whiteout("data/a.txt").opaque("opt").file("data/b.txt", b"b")
    blobs = [base.write(tmp / "l0.tar.gz"), top.write(tmp / "l1.tar", compression=None)]
    config = image_config(cmd=["/bin/sh", "-c", "cat /data/b.txt"])
    manifest_digest = write_oci_layout(tmp / "layout", blobs, config)   # an OCI image layout dir

Entries are written in the order they were added; parent directories are added implicitly (once,
before their first child) unless already present. `add()` takes raw TarInfo entries (hostile names).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = (
    "sh", "cat", "echo", "ls", "sleep", "id", "pwd", "env", "touch", "test", "grep", "head", "find",
    "xargs", "true", "false", "tty", "wc", "stat", "mkdir", "rm", "ip", "printf", "dd", "read", "tr",
)  # fmt: skip

PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
    b"nobody:x:65534:65534::/:/bin/false\n"
)
GROUP = b"root:x:0:\nalice:x:1000:\nstaff:x:50:alice\nnogroup:x:65534:\n"


@dataclass
class LayerBuilder:
    """A layer tar under construction. Paths are layer-relative ("etc/passwd")."""

    members: list[tuple[tarfile.TarInfo, bytes | None]] = field(default_factory=list)
    mtime: int = 1_600_000_000
    _names: set[str] = field(default_factory=set, repr=False)

    def _parents(self, path: str) -> None:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._names:
                self.dir(d)

    def add(self, info: tarfile.TarInfo, data: bytes | None = None, *, parents: bool = True) -> LayerBuilder:
        """Add a raw entry (the escape hatch for hostile names): no parents unless asked."""
        if parents:
            self._parents(info.name)
        info.mtime = info.mtime or self.mtime
        if data is not None:
            info.size = len(data)
        self.members.append((info, data))
        self._names.add(info.name.rstrip("/"))
        return self

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> LayerBuilder:
        info = tarfile.TarInfo(path)
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, gid
        return self.add(info)

    def file(
        self,
        path: str,
        data: bytes = b"",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        xattrs: dict[str, bytes] | None = None,
        mtime: int | None = None,
    ) -> LayerBuilder:
        info = tarfile.TarInfo(path)
        info.mode, info.uid, info.gid = mode, uid, gid
        info.mtime = mtime or 0  # 0: the builder's default
        if xattrs:
            info.pax_headers = {
                f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
            }
        return self.add(info, data)

    def symlink(self, path: str, target: str) -> LayerBuilder:
        info = tarfile.TarInfo(path)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        return self.add(info)

    def hardlink(self, path: str, target: str) -> LayerBuilder:
        info = tarfile.TarInfo(path)
        info.type, info.linkname = tarfile.LNKTYPE, target
        return self.add(info)

    def device(
        self, path: str, major: int, minor: int, *, block: bool = False, mode: int = 0o666
    ) -> LayerBuilder:
        info = tarfile.TarInfo(path)
        info.type = tarfile.BLKTYPE if block else tarfile.CHRTYPE
        info.devmajor, info.devminor, info.mode = major, minor, mode
        return self.add(info)

    def fifo(self, path: str, mode: int = 0o644) -> LayerBuilder:
        info = tarfile.TarInfo(path)
        info.type, info.mode = tarfile.FIFOTYPE, mode
        return self.add(info)

    def whiteout(self, path: str) -> LayerBuilder:
        """Delete `path` of lower layers (`.wh.NAME` next to it)."""
        head, _, base = path.rpartition("/")
        return self.file(f"{head}/.wh.{base}" if head else f".wh.{base}")

    def opaque(self, directory: str) -> LayerBuilder:
        """Hide everything lower layers have in `directory` (`.wh..wh..opq` inside it)."""
        return self.file(f"{directory}/.wh..wh..opq")

    def busybox(self, applets: tuple[str, ...] = BUSYBOX_APPLETS, users: bool = True) -> LayerBuilder:
        """/bin/busybox from busybox-static, applet symlinks in /bin, and /etc/passwd, /etc/group."""
        self.file("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
        for applet in applets:
            self.symlink(f"bin/{applet}", "busybox")
        if users:
            self.file("etc/passwd", PASSWD).file("etc/group", GROUP)
        return self.dir("tmp", mode=0o1777)

    def tar_bytes(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for info, data in self.members:
                tf.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()

    def write(self, path: Path, compression: str | None = "gzip") -> Path:
        """Write the layer blob: `compression` is "gzip", "zstd" or None (plain tar)."""
        raw = self.tar_bytes()
        if compression == "gzip":
            raw = gzip.compress(raw, compresslevel=1, mtime=0)
        elif compression == "zstd":
            raw = zstandard.ZstdCompressor().compress(raw)
        elif compression is not None:
            raise ValueError(compression)
        path.write_bytes(raw)
        return path


def image_config(
    *,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    env: list[str] | None = None,
    working_dir: str = "",
    user: str = "",
    stop_signal: str | None = None,
) -> dict[str, Any]:
    """An image config JSON object as registries serve it."""
    config: dict[str, Any] = {
        "Env": env
        if env is not None
        else ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Entrypoint": entrypoint,
        "Cmd": cmd,
        "WorkingDir": working_dir,
        "User": user,
    }
    if stop_signal:
        config["StopSignal"] = stop_signal
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": []},
    }


_LAYER_MEDIA_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    None: "application/vnd.oci.image.layer.v1.tar",
}


def _sniff(blob: bytes) -> str | None:
    if blob.startswith(b"\x1f\x8b"):
        return "gzip"
    if blob.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return None


def _uncompressed(blob: bytes) -> bytes:
    kind = _sniff(blob)
    if kind == "gzip":
        return gzip.decompress(blob)
    if kind == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


def write_oci_layout(directory: Path, layers: list[Path], config: dict[str, Any], tag: str = "latest") -> str:
    """An OCI image layout (oci-layout, index.json, blobs/sha256/*) holding one image made of `layers`
    (bottom first) and `config` (its rootfs.diff_ids are filled in). Returns the manifest digest.
    Written independently of ctr_remote.image, so tests can use it as an outside reference."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    descriptors, diff_ids = [], []
    for layer in layers:
        data = layer.read_bytes()
        diff_ids.append("sha256:" + hashlib.sha256(_uncompressed(data)).hexdigest())
        descriptors.append(
            {"mediaType": _LAYER_MEDIA_TYPES[_sniff(data)], "digest": put(data), "size": len(data)}
        )
    config = {**config, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    config_bytes = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put(config_bytes),
            "size": len(config_bytes),
        },
        "layers": descriptors,
    }
    manifest_bytes = json.dumps(manifest).encode()
    manifest_digest = put(manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {
                    "architecture": config.get("architecture", "amd64"),
                    "os": config.get("os", "linux"),
                },
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return manifest_digest
