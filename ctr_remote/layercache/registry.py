"""The layer cache in a registry repository (`--cache-ref`), as BuildKit keeps its registry cache:
one tag per key (`layer-<hex of the key>`) on a small OCI manifest whose layers are the converted
blob (with its descriptor: media type and annotations as the image lists them) and, with an external
TOC, the TOC blob; its config records the key and the diff ID.

Writers race only on a tag, and every writer of one key writes the same manifest (reproducible
conversion), so concurrent shards lose at most an entry. Readers fetch blobs through the store,
which checks digest and size, and check the config names the key they asked for; the layer cache
then verifies the entry as a whole (`verify.py`). A bad entry is converted again and its tag pushed
anew; a blob whose bytes are corrupt in the registry's storage cannot be mended from outside (a
registry keeps the first copy of a digest), so that entry stays a miss with a warning each run.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ctr_remote.cancel import CancelToken
from ctr_remote.image import (
    Descriptor,
    ImageError,
    Manifest,
    NotFoundError,
    Reference,
    RegistryOptions,
    media_types,
    open_store,
    parse_manifest,
)
from ctr_remote.image.digest import encoded
from ctr_remote.layercache.local import CachedLayer, toc_descriptor

CONFIG_MEDIA_TYPE = "application/vnd.ctr-remote.layer-cache.config.v1+json"
ARTIFACT_TYPE = "application/vnd.ctr-remote.layer-cache.v1"


class RegistryCache:
    def __init__(self, ref: Reference, options: RegistryOptions | None = None) -> None:
        if ref.is_layout:
            raise ImageError(f"--cache-ref {ref}: want a registry repository")
        self.reference, self.options = ref.with_tag(None), options or RegistryOptions()

    def _ref(self, key: str) -> Reference:
        return self.reference.with_tag(f"layer-{encoded(key)}")

    def entry(self, key: str) -> str:
        return str(self._ref(key))

    def load(
        self, key: str, blobs: Path, cancel: CancelToken
    ) -> tuple[Descriptor, str, Descriptor | None] | None:
        """The entry's parts, its blobs fetched (digest and size checked); an ImageError if the tag
        is not a cache entry for `key` (anything may be pushed to it)."""
        with open_store(self._ref(key), self.options) as store:
            try:
                top = store.resolve()
            except NotFoundError:
                return None
            manifest = parse_manifest(store.read_manifest(top), top.media_type, "layer cache entry")
            if manifest.config.media_type != CONFIG_MEDIA_TYPE or not 1 <= len(manifest.layers) <= 2:
                raise ImageError("not a layer cache manifest")
            try:
                config = json.loads(store.read_manifest(manifest.config))
            except ValueError:
                raise ImageError("its config is not JSON") from None
            diff_id = config.get("diff_id") if isinstance(config, dict) else None
            if not isinstance(config, dict) or config.get("key") != key or not isinstance(diff_id, str):
                raise ImageError(f"not the entry for {key}")
            layer, *rest = manifest.layers
            toc = rest[0] if rest else None
            for d in (layer, *rest):  # fetched even if a file is there: only a fetch is verified
                store.fetch_blob(d, blobs / encoded(d.digest), cancel=cancel)
            return layer, diff_id, toc

    def save(self, key: str, layer: CachedLayer, cancel: CancelToken) -> None:
        config = json.dumps({"key": key, "diff_id": layer.diff_id}, sort_keys=True).encode()
        config_desc = Descriptor.of(config, CONFIG_MEDIA_TYPE)
        blobs: list[tuple[Path, Descriptor]] = [(layer.path, layer.desc)]
        if layer.toc is not None:
            blobs.append((layer.toc, toc_descriptor(layer.toc)))
        manifest = Manifest(
            media_type=media_types.OCI_MANIFEST,
            config=config_desc,
            layers=[d for _, d in blobs],
        )
        data = manifest.to_bytes()
        with (
            open_store(self._ref(key), self.options) as store,
            tempfile.NamedTemporaryFile(prefix="cache-config-") as f,
        ):
            f.write(config)
            f.flush()
            for path, desc in blobs:
                store.push_blob(path, desc, cancel=cancel)
            store.push_blob(Path(f.name), config_desc, cancel=cancel)
            store.push_manifest(data, Descriptor.of(data, media_types.OCI_MANIFEST), top=True)
