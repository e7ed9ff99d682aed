"""Names inside a layer: how entries are compared, and the overlay markers of the OCI layer spec."""

from __future__ import annotations

import posixpath

# A file deleted by this layer is `DIR/.wh.NAME`; a directory whose lower contents are hidden holds
# `.wh..wh..opq` (OCI image spec, layer.md "Whiteouts").
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


def clean_name(name: str) -> str:
    """The identity of an entry name, as upstream compares them and overlayfs resolves them:
    `./a//b/`, `/a/./b` -> `a/b`; `..` cannot climb above the root; the root itself -> ``."""
    return posixpath.normpath("/" + name.lstrip("/")).lstrip("/")


def whiteout_target(name: str) -> str | None:
    """For a whiteout entry `DIR/.wh.NAME` (already cleaned), the path it deletes, `DIR/NAME`;
    None for any other entry, the opaque marker included."""
    parent, _, base = name.rpartition("/")
    if base == OPAQUE_MARKER or not base.startswith(WHITEOUT_PREFIX):
        return None
    return posixpath.join(parent, base[len(WHITEOUT_PREFIX) :])
