"""Which layer each recorded file belongs to: the topmost layer that provides it, as overlayfs serves
the merged view, without the paths that the container's own mounts hid from the layers.

The FUSE recorder observes this directly (overlayfs opens the file on the layer that provides it);
the fanotify recorder sees merged paths, which are looked up in the unpacked layers with the rules
`--prefetch-list` uses (`prefetch_list.visible_per_layer`), so both say the same for the same run.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from ctr_remote.layer.paths import OPAQUE_MARKER, WHITEOUT_PREFIX
from ctr_remote.prefetch_list import visible_per_layer
from ctr_remote.profile.unpack import OPAQUE_XATTR, UnpackedLayer


def _visible(path: str, excluded: Sequence[str]) -> bool:
    return not any(path == m or path.startswith(m + "/") for m in excluded)


def attribute_per_layer(per_layer: list[list[str]], excluded: Sequence[str]) -> list[list[str]]:
    """FUSE: each layer's own record; a path stays only in the topmost layer that recorded it (a lower
    copy is read too when the workload's write copies it up), and paths under mounts are dropped."""
    taken: set[str] = set()
    result: list[list[str]] = []
    for paths in reversed(per_layer):
        kept = [p for p in paths if p not in taken and _visible(p, excluded)]
        taken.update(kept)
        result.append(kept)
    return list(reversed(result))


def attribute_merged(
    paths: list[str], layers: Sequence[UnpackedLayer], excluded: Sequence[str]
) -> list[list[str]]:
    """fanotify: merged-view paths (first open first) spread over `layers` (bottom first); a path no
    layer provides (the container created it) is dropped.

    Only the entries that can decide these paths are looked at: each path and its ancestors, in every
    layer, in the form the layer tar would spell them (whiteouts as `.wh.NAME`, opaque directories as
    `.wh..wh..opq`), so a layer of millions of files costs nothing here.
    """
    wanted = [p for p in dict.fromkeys(paths) if p and _visible(p, excluded)]
    names: set[str] = set()
    for p in wanted:
        parts = p.split("/")
        names.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    ordered = sorted(names, key=lambda n: (n.count("/"), n))  # parents before children, as in a tar
    entries: list[list[tuple[str, bool]]] = []
    for layer in layers:
        found: list[tuple[str, bool]] = []
        dirs = {""}  # real directories of this layer: only below them is looked at, no link followed
        for name in ordered:
            head, _, base = name.rpartition("/")
            if head not in dirs:
                continue
            try:
                st = os.lstat(os.path.join(layer.root, name))
            except FileNotFoundError:
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # overlay form of a whiteout
                found.append((f"{head}/{WHITEOUT_PREFIX}{base}".lstrip("/"), False))
            elif stat.S_ISDIR(st.st_mode):
                dirs.add(name)
                found.append((name, True))
                if layer.xattrs.get(name, {}).get(OPAQUE_XATTR) == b"y":
                    found.append((f"{name}/{OPAQUE_MARKER}", False))
            else:
                found.append((name, False))
        entries.append(found)
    visible = [set(v) for v in visible_per_layer(entries)]
    result: list[list[str]] = [[] for _ in layers]
    for p in wanted:
        for i in range(len(layers) - 1, -1, -1):
            if p in visible[i]:
                result[i].append(p)
                break
    return result
