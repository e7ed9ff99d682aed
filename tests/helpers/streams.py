"""Stream doubles for code that must work on pipes: readable once, never seekable."""

from __future__ import annotations

import io


class OneWay(io.RawIOBase):
    """`data` readable front to back once; no seek, no tell (like a pipe or an HTTP body)."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        return self._b.readinto(b)
