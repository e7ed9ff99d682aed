"""Where the workload's output goes while `optimize` runs, so that stdout stays parseable.

Upstream's layout is kept: the workload's stdout is passed through to ours, and the result digest is
printed last, alone on its line (`digest=$(ctr-remote image optimize ... | tail -n 1)`). When our
stdout is not a terminal (CI, `$(...)`), the workload's stdout goes through a pipe we copy, so that a
last line without a newline cannot glue itself to the digest. With `--log-format json`, stderr carries
JSON lines only: whatever the workload or the runtime writes there becomes a `workload output` event.
A terminal is never interposed, so `-t` sessions and the workload's own isatty() checks are unchanged.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

import structlog

from ctr_remote.log import LogFormat, configure

log = structlog.get_logger()

JOIN_TIMEOUT_SECONDS = 5.0  # a stray process still holding the pipe must not hang the exit


class _Pump(threading.Thread):
    """Copies a pipe's read end into `sink` until every writer has closed it."""

    def __init__(self, fd: int, sink: Callable[[bytes], None]) -> None:
        super().__init__(daemon=True)
        self.fd, self.sink = fd, sink

    def run(self) -> None:
        try:
            while data := os.read(self.fd, 65536):
                self.sink(data)
        finally:
            os.close(self.fd)


class WorkloadStreams:
    """`with WorkloadStreams(fmt) as streams: ...; streams.result(digest)` (after the block)."""

    def __init__(self, fmt: LogFormat, *, debug: bool = False) -> None:
        self.fmt, self.debug = fmt, debug
        self._saved: dict[int, int] = {}
        self._pumps: list[_Pump] = []
        self._last_byte = b"\n"
        self._log_stream: TextIO | None = None
        self._partial = b""

    def __enter__(self) -> WorkloadStreams:
        sys.stdout.flush()
        sys.stderr.flush()
        if not os.isatty(1):
            self._interpose(1, self._copy_stdout)
        if self.fmt is LogFormat.JSON:
            self._interpose(2, self._wrap_stderr)
            # Our own log lines must not go round through the pipe: they go to the real stderr.
            self._log_stream = os.fdopen(os.dup(self._saved[2]), "w", buffering=1)
            configure(debug=self.debug, fmt=self.fmt, stream=self._log_stream)
        return self

    def _interpose(self, fd: int, sink: Callable[[bytes], None]) -> None:
        read_end, write_end = os.pipe()
        self._saved[fd] = os.dup(fd)
        os.dup2(write_end, fd)
        os.close(write_end)
        pump = _Pump(read_end, sink)
        pump.start()
        self._pumps.append(pump)

    def _copy_stdout(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # a closed stdout (`| head`) must not stop the run
            _write_all(self._saved[1], data)
        self._last_byte = data[-1:]

    def _wrap_stderr(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            log.info("workload output", stream="stderr", line=line.decode(errors="replace"))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # closes our copy of the pipe's write end: the pump sees EOF
        for pump in self._pumps:
            pump.join(timeout=JOIN_TIMEOUT_SECONDS)
        if self._partial:
            self._wrap_stderr(b"\n")
        for saved in self._saved.values():
            os.close(saved)
        self._saved.clear()
        if self._log_stream is not None:
            configure(debug=self.debug, fmt=self.fmt)
            self._log_stream.close()

    def result(self, line: str) -> None:
        """Print the result on stdout, on a line of its own even if the workload's output was not.

        A stdout that was closed, or a pipe whose reader is gone (`| head -1`), cannot take it: the
        image is written all the same, so that is said on stderr, with the digest, and the run still
        succeeds (exit 0: a retry would only write the same image again)."""
        try:
            if _stdout_closed:
                raise BrokenPipeError
            if self._last_byte != b"\n":
                sys.stdout.write("\n")
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError:
            _discard_stdout()
            *extra, digest = line.split("\n")
            log.warning(
                "the image was written; stdout was closed before its digest could be printed",
                digest=digest,
                **({"also": extra} if extra else {}),
            )


_stdout_closed = False


def open_standard_fds() -> None:
    """Started with stdin, stdout or stderr closed (`>&-`), a file we open would take its number and
    receive what is meant for it: each closed one is /dev/null instead (a closed stdout is noted, so
    that the result is said on stderr)."""
    global _stdout_closed
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            _stdout_closed = _stdout_closed or fd == 1
            name = ("stdin", "stdout", "stderr")[fd]
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115


def _discard_stdout() -> None:
    """What is left in stdout's buffer goes nowhere, rather than fail again when Python exits."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
