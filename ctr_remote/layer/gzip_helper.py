"""`--estargz-gzip-helper`: decompress gzip source layers with an external program (upstream's
`decompressutil.GetGzipHelperFunc`): `pigz`, `igzip` or `gzip`, run as `HELPER -d -c`.

Upstream falls back to Go's gzip, with a warning on stdout, when the named program is missing;
we refuse instead, before anything is downloaded, so that asking for a helper never silently
gives the slow path.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import threading
from dataclasses import dataclass
from typing import BinaryIO, cast

from ctr_remote.errors import CtrRemoteError

HELPERS = ("pigz", "igzip", "gzip")
# Where Debian ships them: pigz in `pigz`, igzip in `isal`, gzip in `gzip`.
_PACKAGES = {"pigz": "pigz", "igzip": "isal", "gzip": "gzip"}
_PIECE = 1 << 20


class GzipHelperError(CtrRemoteError):
    """The helper is unknown, missing, or failed on a layer."""


@dataclass(frozen=True)
class GzipHelper:
    name: str
    path: str

    @classmethod
    def find(cls, name: str) -> GzipHelper:
        if name not in HELPERS:
            raise GzipHelperError(f"invalid gzip helper {name!r}: use one of {', '.join(HELPERS)}")
        path = shutil.which(name)
        if path is None:
            raise GzipHelperError(
                f"gzip helper {name!r} not found on PATH (Debian package {_PACKAGES[name]!r})"
            )
        return cls(name, path)

    def open(self, compressed: BinaryIO, what: str) -> BinaryIO:
        """The decompressed stream of `compressed` (may be unseekable), read from the helper."""
        return io.BufferedReader(_HelperStream(self, compressed, what), buffer_size=1 << 20)


class _HelperStream(io.RawIOBase):
    """The helper's stdout; a thread feeds its stdin. A helper that fails (corrupt input) is an
    error at the end of the stream, naming the layer and what the helper said."""

    def __init__(self, helper: GzipHelper, src: BinaryIO, what: str) -> None:
        self._helper, self._what = helper, what
        try:
            self._proc = subprocess.Popen(
                [helper.path, "-d", "-c"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            raise GzipHelperError(f"cannot run gzip helper {helper.path}: {e.strerror}") from None
        self._feed_error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, args=(src,), daemon=True)
        self._feeder.start()

    def _feed(self, src: BinaryIO) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            while data := src.read(_PIECE):
                stdin.write(data)
        except BrokenPipeError:
            pass  # the helper stopped reading: its exit status says why
        except BaseException as e:  # a cancelled read: reported to the reader
            self._feed_error = e
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]  # io passes a memoryview
        # Popen's pipes are buffered readers (bufsize -1), which read into a buffer without a copy.
        stdout = cast(io.BufferedReader, self._proc.stdout)
        n = stdout.readinto(b)
        if n == 0:
            self._finish()
        return n

    def _finish(self) -> None:
        self._feeder.join()
        if self._feed_error is not None:
            raise self._feed_error
        stderr = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
        if self._proc.wait() != 0:
            said = " ".join(stderr.split()) or f"exit status {self._proc.returncode}"
            raise GzipHelperError(f"{self._what}: gzip helper {self._helper.name} failed: {said}")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()
        super().close()
