"""The record `optimize --record-out` writes and `convert --estargz-record-in` replays.

One JSON object a line: `{"path": "etc/passwd", "manifestDigest": "sha256:...", "layerIndex": 0}`,
layer by layer, each layer's paths in first-access order (upstream's recorder format).

Upstream's convert ignores `manifestDigest` and `layerIndex` and prioritizes every recorded path in
every layer that has it. We honour the attribution where the record names the image's manifest
(the same per-layer order as the optimize run that wrote it), and fall back to upstream's by-name
replay for a manifest the record does not name (another platform of the same image, or a record of
another image: then with a warning, never a silent empty prioritization).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ctr_remote.errors import CtrRemoteError
from ctr_remote.layer.paths import clean_name


class RecordError(CtrRemoteError):
    """A record file that cannot be read or is not a record."""


@dataclass(frozen=True)
class RecordEntry:
    path: str
    manifest_digest: str
    layer_index: int


@dataclass(frozen=True)
class Record:
    entries: tuple[RecordEntry, ...]

    @classmethod
    def load(cls, path: Path) -> Record:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise RecordError(f"cannot read record file {path}: {e}") from None
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                entries.append(_entry(line, f"{path}:{n}"))
        return cls(tuple(entries))

    @property
    def manifests(self) -> list[str]:
        return list(dict.fromkeys(e.manifest_digest for e in self.entries))

    def paths(self) -> list[str]:
        """Every recorded path once, in record order (upstream's replay uses only these)."""
        return list(dict.fromkeys(e.path for e in self.entries))

    def per_layer(self, manifest_digest: str, layers: int) -> list[list[str]] | None:
        """The recorded paths of each of `layers` layers of the manifest, in record order; None if
        the record does not name that manifest. Entries past the last layer are ignored, as upstream
        tolerates paths a layer lacks."""
        named = [e for e in self.entries if e.manifest_digest == manifest_digest]
        if not named:
            return None
        out: list[dict[str, None]] = [{} for _ in range(layers)]  # ordered sets: record order, once each
        for e in named:
            if e.layer_index < layers:
                out[e.layer_index].setdefault(e.path)
        return [list(paths) for paths in out]


def _entry(line: str, where: str) -> RecordEntry:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(f"{where}: not a record line: {e.msg}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: not a record line: expected a JSON object")
    path, digest, index = obj.get("path"), obj.get("manifestDigest", ""), obj.get("layerIndex", 0)
    if not isinstance(path, str) or not path:
        raise RecordError(f'{where}: a record line needs a "path" string')
    if not isinstance(digest, str) or not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise RecordError(f'{where}: "manifestDigest" must be a string and "layerIndex" a number >= 0')
    return RecordEntry(clean_name(path), digest, index)


def record_lines(accessed: Iterable[Iterable[str]], manifest_digest: str) -> Iterator[dict[str, object]]:
    """The record of one manifest's per-layer lists (bottom layer first)."""
    for index, paths in enumerate(accessed):
        for path in paths:
            yield {"path": path, "manifestDigest": manifest_digest, "layerIndex": index}
