"""Progress of the per-layer steps (pull, convert, push).

On a terminal (text logs, stderr a TTY) a live line per layer is redrawn in place; otherwise, as in
CI, each finished step is one log line. Either way the caller only says `step(key, what)` and
`done(key, what, **fields)`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TextIO

import structlog

log = structlog.get_logger()


class Progress:
    def __init__(self, live: bool, stream: TextIO | None = None) -> None:
        self.live = live
        self.stream = stream or sys.stderr
        self._lines: dict[str, str] = {}
        self._drawn = 0
        self._lock = threading.Lock()
        self._started: dict[tuple[str, str], float] = {}
        self._aliases: dict[str, str] = {}

    def alias(self, key: str, shown_as: str) -> None:
        """Report later steps of `key` (a converted layer's new digest) on the line of `shown_as`."""
        with self._lock:
            self._aliases[key] = shown_as

    def step(self, key: str, what: str) -> None:
        key = self._aliases.get(key, key)
        with self._lock:
            self._started[(key, what)] = time.monotonic()
            if self.live:
                self._lines[key] = f"{key[:19]}  {what}..."
                self._redraw()

    def done(self, key: str, what: str, *, log_line: bool = True, **fields: Any) -> None:
        """`log_line=False` when the caller logs the step itself (upstream's `converted` line)."""
        key = self._aliases.get(key, key)
        with self._lock:
            elapsed = time.monotonic() - self._started.pop((key, what), time.monotonic())
            if self.live:
                extra = " ".join(f"{k}={v}" for k, v in fields.items())
                self._lines[key] = f"{key[:19]}  {what} done ({elapsed:.1f}s) {extra}".rstrip()
                self._redraw()
        if not self.live and log_line:
            log.info(what, layer=key, seconds=round(elapsed, 2), **fields)

    def commit(self) -> None:
        """Leave the block drawn so far on the screen as it is: something else (the workload) is
        about to write to the terminal, and a redraw would move up over its output and erase it."""
        with self._lock:
            self._drawn = 0
            self._lines.clear()

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 0

    def _redraw(self) -> None:
        out = self.stream
        if self._drawn:
            out.write(f"\x1b[{self._drawn}F\x1b[J")
        # A line wider than the terminal would take two rows and the next redraw would move up too
        # few: cut each to the width (less one column, so the cursor never waits in the margin).
        width = self._width()
        for line in self._lines.values():
            out.write(f"{line[: width - 1] if width > 1 else line}\n")
        self._drawn = len(self._lines)
        out.flush()

    def write(self, text: str) -> int:
        """Log output while live: printed above the block of layer lines, which is then redrawn."""
        with self._lock:
            if self._drawn:
                self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
                self._drawn = 0
            self.stream.write(text)
            if text.endswith("\n") and self._lines:
                self._redraw()
            return len(text)

    def flush(self) -> None:
        self.stream.flush()
