"""`--prefetch-list FILE`: paths or globs to prioritize without running the workload (upstream v0.18).

One pattern per line; blank lines and `#` comments are ignored; names are cleaned as tar entry names
are (`layer.paths.clean_name`: a leading `/` or `./`, `//` and `/./` dropped).
`*` and `?` match within one path segment, `[...]` is a character class, `**` spans any number of
segments. Patterns keep their order: the files a pattern matches come in the layer's own order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ctr_remote.errors import CtrRemoteError
from ctr_remote.layer.paths import OPAQUE_MARKER, clean_name, whiteout_target


class PrefetchListError(CtrRemoteError):
    pass


def _translate(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                raise PrefetchListError(f"prefetch list: unclosed '[' in pattern {pattern!r}")
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out) + r"\Z")
    except re.error as e:
        raise PrefetchListError(f"prefetch list: bad pattern {pattern!r}: {e}") from None


@dataclass(frozen=True)
class PrefetchList:
    patterns: tuple[str, ...]

    @classmethod
    def load(cls, path: Path) -> PrefetchList:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise PrefetchListError(f"cannot read prefetch list {path}: {e}") from None
        lines = (line.strip() for line in text.splitlines())
        patterns = tuple(clean_name(line) for line in lines if line and not line.startswith("#"))
        for p in patterns:
            if any(ch in p for ch in "*?["):
                _translate(p)  # fail early on a malformed glob
        return cls(patterns)

    def select(self, names: Sequence[str]) -> list[str]:
        """The names (layer-relative, in layer order) this list prioritizes, in priority order."""
        present = {clean_name(n): None for n in names}
        chosen: dict[str, None] = {}
        for pattern in self.patterns:
            if not any(ch in pattern for ch in "*?["):
                if pattern in present:
                    chosen.setdefault(pattern, None)
                continue
            rx = _translate(pattern)
            for name in present:
                if rx.match(name):
                    chosen.setdefault(name, None)
        return list(chosen)


def _ancestors(path: str) -> Iterator[str]:
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def visible_per_layer(layers: Sequence[Sequence[tuple[str, bool]]]) -> list[list[str]]:
    """For each layer (bottom first, entries as `(name, is_dir)`), the names the merged image takes
    from it, as overlayfs serves them and so as the profile runner attributes reads: a name is the
    top-most layer's that has it; whiteouts (`.wh.NAME`), opaque directories (`.wh..wh..opq`) and
    non-directories in a layer hide the lower layers' entries at and under them; whiteout markers
    themselves are never files to prioritize."""
    taken: set[str] = set()  # names some upper layer provides
    hidden: set[str] = set()  # names deleted, or non-directories, above: they and their subtree
    opaque: set[str] = set()  # directories whose lower contents are hidden
    out: list[list[str]] = [[] for _ in layers]
    for i in range(len(layers) - 1, -1, -1):
        new_taken: set[str] = set()
        new_hidden: set[str] = set()
        new_opaque: set[str] = set()
        for raw, is_dir in layers[i]:
            name = clean_name(raw)
            parent, _, base = name.rpartition("/")
            if base == OPAQUE_MARKER:
                new_opaque.add(parent)
                continue
            if (deleted := whiteout_target(name)) is not None:
                new_hidden.add(deleted)
                continue
            if name in taken or name in hidden or any(a in hidden or a in opaque for a in _ancestors(name)):
                continue
            out[i].append(name)
            new_taken.add(name)
            if not is_dir:
                new_hidden.add(name)
        taken |= new_taken
        hidden |= new_hidden
        opaque |= new_opaque
    return out
