"""Descriptors, manifests, indexes and image configs as dataclasses, parsed from and serialised to JSON.

Parsing checks what the rest of the tool relies on (media types, digests, sizes) and raises
ImageError naming the document; fields this tool does not model are kept in `extra` so a
parse/serialise cycle does not drop them. Bytes read from a store stay the source of truth for
digests: re-serialising is only for documents the tool creates or changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ctr_remote.image import mediatypes as mt
from ctr_remote.image.digest import digest_bytes, validate_digest
from ctr_remote.image.errors import ImageError, UnsupportedMediaTypeError
from ctr_remote.image.platform import Platform

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            d["urls"] = list(self.urls)
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform:
            d["platform"] = self.platform.to_json()
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        return d

    @classmethod
    def from_json(cls, d: Any, what: str = "descriptor") -> Descriptor:
        if not isinstance(d, dict):
            raise ImageError(f"{what}: not a JSON object")
        try:
            media_type, digest, size = str(d.get("mediaType") or ""), str(d["digest"]), d["size"]
        except KeyError as e:
            raise ImageError(f"{what}: missing field {e.args[0]!r}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageError(f"{what}: invalid size {size!r}")
        try:
            validate_digest(digest)
        except ImageError as e:
            raise ImageError(f"{what}: {e}") from None
        plat = d.get("platform")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=dict(d["annotations"]) if d.get("annotations") else None,
            platform=Platform.from_json(plat) if isinstance(plat, dict) else None,
            urls=tuple(d.get("urls") or ()),
            artifact_type=d.get("artifactType") or None,
        )

    @classmethod
    def of(cls, data: bytes, media_type: str, **kw: Any) -> Descriptor:
        """The descriptor of `data` (sha256)."""
        return cls(media_type=media_type, digest=digest_bytes(data), size=len(data), **kw)


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _loads(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"{what}: invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ImageError(f"{what}: not a JSON object")
    return obj


@dataclass
class Manifest:
    """An image manifest (OCI or Docker schema 2)."""

    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] | None = None
    schema_version: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        d: dict[str, Any] = {"schemaVersion": self.schema_version, "mediaType": self.media_type}
        d["config"] = self.config.to_json()
        d["layers"] = [layer.to_json() for layer in self.layers]
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        d.update(self.extra)
        return _dumps(d)


@dataclass
class Index:
    """An image index (OCI) or manifest list (Docker)."""

    media_type: str
    manifests: list[Descriptor]
    annotations: dict[str, str] | None = None
    schema_version: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        d: dict[str, Any] = {"schemaVersion": self.schema_version, "mediaType": self.media_type}
        d["manifests"] = [m.to_json() for m in self.manifests]
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        d.update(self.extra)
        return _dumps(d)


@dataclass
class ImageConfig:
    """An image config. `raw` is the whole document; the typed fields are views of it. Changes give
    a new config (`with_diff_ids`), as go-containerregistry's `mutate`: the source stays as read."""

    raw: dict[str, Any]

    @property
    def platform(self) -> Platform:
        return Platform(
            os=str(self.raw.get("os", "")),
            architecture=str(self.raw.get("architecture", "")),
            variant=self.raw.get("variant") or None,
            os_version=self.raw.get("os.version") or None,
        )

    @property
    def container_config(self) -> dict[str, Any]:
        """The `config` object (Env, Entrypoint, Cmd, User, WorkingDir, ...), possibly empty."""
        return self.raw.get("config") or {}

    @property
    def diff_ids(self) -> list[str]:
        return list((self.raw.get("rootfs") or {}).get("diff_ids") or [])

    def with_diff_ids(self, value: list[str]) -> ImageConfig:
        return ImageConfig({**self.raw, "rootfs": {"type": "layers", "diff_ids": list(value)}})

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.raw.get("history") or [])

    def to_bytes(self) -> bytes:
        return _dumps(self.raw)


_MANIFEST_KEYS = {"schemaVersion", "mediaType", "config", "layers", "annotations"}
_INDEX_KEYS = {"schemaVersion", "mediaType", "manifests", "annotations"}


def _check_schema(obj: dict[str, Any], media_type: str, what: str) -> None:
    if media_type in mt.SCHEMA1_TYPES or obj.get("schemaVersion") == 1:
        raise UnsupportedMediaTypeError(f"{what}: Docker schema 1 manifests are not supported")
    if obj.get("schemaVersion") != 2:
        raise ImageError(f"{what}: unsupported schemaVersion {obj.get('schemaVersion')!r}")


def parse_manifest(data: bytes, media_type: str | None = None, what: str = "manifest") -> Manifest:
    """Parse manifest bytes; `media_type` is the descriptor's (used when the document omits it)."""
    obj = _loads(data, what)
    media = str(obj.get("mediaType") or media_type or mt.OCI_MANIFEST)
    _check_schema(obj, media, what)
    if "manifests" in obj or mt.is_index(media):
        raise ImageError(f"{what}: is an index, not a manifest")
    if not mt.is_manifest(media):
        raise UnsupportedMediaTypeError(f"{what}: unsupported manifest media type {media!r}")
    if not isinstance(obj.get("layers"), list):
        raise ImageError(f"{what}: no layers list")
    return Manifest(
        media_type=media,
        config=Descriptor.from_json(obj.get("config"), f"{what} config"),
        layers=[Descriptor.from_json(x, f"{what} layer {i}") for i, x in enumerate(obj["layers"])],
        annotations=dict(obj["annotations"]) if obj.get("annotations") else None,
        extra={k: v for k, v in obj.items() if k not in _MANIFEST_KEYS},
    )


def parse_index(data: bytes, media_type: str | None = None, what: str = "index") -> Index:
    obj = _loads(data, what)
    media = str(obj.get("mediaType") or media_type or mt.OCI_INDEX)
    _check_schema(obj, media, what)
    if not mt.is_index(media) or not isinstance(obj.get("manifests"), list):
        raise ImageError(f"{what}: not an image index (media type {media!r})")
    return Index(
        media_type=media,
        manifests=[Descriptor.from_json(x, f"{what} entry {i}") for i, x in enumerate(obj["manifests"])],
        annotations=dict(obj["annotations"]) if obj.get("annotations") else None,
        extra={k: v for k, v in obj.items() if k not in _INDEX_KEYS},
    )


def parse_config(data: bytes, what: str = "image config") -> ImageConfig:
    return ImageConfig(raw=_loads(data, what))


def sniff_media_type(data: bytes) -> str:
    """The media type a manifest/index document declares or implies (for layouts and untyped refs)."""
    obj = _loads(data, "manifest")
    if obj.get("mediaType"):
        return str(obj["mediaType"])
    if obj.get("schemaVersion") == 1:
        return mt.DOCKER_SCHEMA1_MANIFEST
    return mt.OCI_INDEX if "manifests" in obj else mt.OCI_MANIFEST
