"""Entry order of the output: prioritized files first, then a landmark, then everything else.

Upstream's rules (estargz `sortEntries`/`moveRec`): each listed path, in list order, is preceded by
its parent directories and, for a hardlink, by its target; a path already placed is skipped (first
occurrence wins); then `.prefetch.landmark`, or `.no.prefetch.landmark` when the list is empty; then
the remaining entries in input order. One deliberate difference: a listed file whose parent
directories have no entries (layers built by umoci) is still prioritized, preceded by directories
we add as readers and unpackers assume them; upstream aborts there. Another: when no listed path
is in the layer, the landmark is `.no.prefetch.landmark`, as for an empty list. And a hardlink always
follows its target (moved up if a later duplicate replaced it), and hardlink cycles are refused.

A lossless layer (`input_order`) keeps the input's order and adds nothing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from ctr_remote.estargz.errors import UnrepresentableLayerError
from ctr_remote.estargz.scan import Scanned
from ctr_remote.estargz.tar import DIR, REG
from ctr_remote.estargz.toc import LANDMARK_CONTENTS, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from ctr_remote.layer.paths import clean_name

IMPLIED_DIR_MODE = 0o755


@dataclass(frozen=True, slots=True)
class Generated:
    """An entry that is not in the input: a landmark or an implied parent directory."""

    name: str
    typeflag: str
    mode: int = 0
    payload: bytes = b""


Item = Scanned | Generated


def order_entries(
    entries: list[Scanned], prioritized: Sequence[str] | None
) -> tuple[list[Item], tuple[str, ...]]:
    """The output order, and the listed paths that are not in the layer."""
    index = {e.key: e for e in entries}
    _check_hardlinks(index)
    placed: set[str] = set()
    front: list[Item] = []
    missing: list[str] = []

    def resolvable(key: str, seen: frozenset[str] = frozenset()) -> bool:
        if key == "" or key in placed:
            return True
        e = index.get(key)
        if e is None or key in seen:
            return False
        return e.link_key is None or resolvable(e.link_key, seen | {key})

    def place(key: str) -> None:
        if key in placed:
            return
        placed.add(key)
        if key == "":  # the root; moved only if the layer has an entry for it (`./`, `/`)
            if "" in index:
                front.append(index[""])
            return
        place(posixpath.dirname(key))
        e = index.get(key)
        if e is None:  # a parent directory without an entry
            front.append(Generated(key + "/", DIR, IMPLIED_DIR_MODE))
            return
        if e.link_key is not None:
            place(e.link_key)
        front.append(e)

    for path in prioritized or ():
        key = clean_name(path)
        if resolvable(key):
            place(key)
        else:
            missing.append(path)
    # Upstream writes `.prefetch.landmark` for a non-empty list even when none of it was found;
    # a prefetch landmark with nothing before it is a contradiction readers warn about. The root
    # directory alone (a list of `/`) counts as nothing: readers do not prefetch it.
    if all(isinstance(item, Scanned) and item.key == "" for item in front):
        front.clear()
        placed.discard("")
    landmark = PREFETCH_LANDMARK if front else NO_PREFETCH_LANDMARK
    front.append(Generated(landmark, REG, 0, LANDMARK_CONTENTS))

    def place_rest(e: Scanned) -> None:
        # A hardlink whose target comes later (the input linked to an entry that a later duplicate
        # replaced) gets the target moved before it: readers resolve a hardlink to an entry already
        # seen, and upstream's order there gives a blob its own reader rejects.
        placed.add(e.key)
        target = index.get(e.link_key) if e.link_key is not None else None
        if target is not None and target.key not in placed:
            place_rest(target)
        front.append(e)

    for e in entries:
        if e.key not in placed:
            place_rest(e)
    _check_hardlinks_follow_targets(front, index)
    return front, tuple(missing)


def input_order(entries: list[Scanned]) -> list[Item]:
    """A lossless layer's order: the input's, duplicates and all, and no landmark. Nothing can be
    moved, so a hardlink the readers could not resolve is an error here."""
    index = {e.key: e for e in entries}  # the later duplicate wins, as for tar readers
    _check_hardlinks(index)
    _check_hardlinks_follow_targets(list(entries), index)
    _check_stale_chunks(entries, index)
    return list(entries)


def _check_stale_chunks(entries: list[Scanned], index: dict[str, Scanned]) -> None:
    """Upstream's reader (the snapshotter's) keeps a path's chunk list until a later entry of that
    path is itself chunked: a file in several chunks replaced by a smaller non-empty one would be
    served with the first one's chunks. Refused rather than written for it to read wrongly."""
    chunked = {e.key for e in entries if e.typeflag == REG and e.chunk_digests}
    for key in chunked:
        last = index[key]
        if last.typeflag == REG and last.size and not last.chunk_digests:
            raise UnrepresentableLayerError(
                f"{key!r} is in the layer twice, first in several chunks, then in one: the snapshotter's "
                "reader would serve the first one's chunks (convert without --estargz-keep-diff-id)"
            )


def _check_hardlinks_follow_targets(items: list[Item], index: dict[str, Scanned]) -> None:
    """Readers resolve a hardlink to an entry already seen. Only a layer that puts entries under a
    hardlink (`x` -> `x/y`) can defeat the ordering above; such a blob would be rejected."""
    seen: set[str] = set()
    for item in items:
        if isinstance(item, Scanned):
            if item.link_key is not None and item.link_key in index and item.link_key not in seen:
                raise UnrepresentableLayerError(
                    f"hardlink {item.key!r} cannot follow its target {item.link_key!r}: "
                    "the layer has entries under a non-directory"
                )
            seen.add(item.key)


def _check_hardlinks(index: dict[str, Scanned]) -> None:
    """Refuse hardlinks to entries the layer does not have (upstream's reader, the snapshotter's,
    refuses to open such a blob, and unpacking fails on it too), and hardlinks that lead back to
    themselves (`a` -> `a`, or `a` -> `b` -> `a` once later duplicates have replaced earlier
    entries): upstream's reader recurses on them until its stack overflows."""
    for entry in index.values():
        if entry.link_key is not None and entry.link_key not in index:
            raise UnrepresentableLayerError(
                f"hardlink {entry.key!r} points at {entry.link_key!r}, which is not in the layer"
            )
    done: set[str] = set()
    for start in index.values():
        chain: list[str] = []
        e: Scanned | None = start
        while e is not None and e.link_key is not None and e.key not in done:
            if e.key in chain:
                cycle = " -> ".join(repr(k) for k in [*chain[chain.index(e.key) :], e.key])
                raise UnrepresentableLayerError(f"hardlink cycle in the layer: {cycle}")
            chain.append(e.key)
            e = index.get(e.link_key)
        done.update(chain)
