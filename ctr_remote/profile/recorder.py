"""Parent side of the recording FUSE mounts: start one daemon per layer, wait until it serves,
unmount it, and read back what it recorded."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ctr_remote.profile import mounts
from ctr_remote.profile.errors import ProfileError
from ctr_remote.profile.unpack import UnpackedLayer

DAEMON = Path(__file__).with_name("fuse_daemon.py")
READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0


def check_fuse() -> None:
    """One-line errors for a machine that cannot serve FUSE at all."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise ProfileError(
            f"cannot open /dev/fuse ({e.strerror}): FUSE is required to record file accesses"
        ) from None
    os.close(fd)


@dataclass
class RecordingMount:
    """A running daemon serving `layer.root` at `mountpoint`, logging to `log`."""

    index: int
    mountpoint: Path
    log: Path
    stderr_path: Path
    process: subprocess.Popen[bytes]
    ready_r: int

    @classmethod
    def start(cls, index: int, layer: UnpackedLayer, mountpoint: Path, state: Path) -> RecordingMount:
        mountpoint.mkdir()
        log = state / f"access-{index}.log"
        stderr_path = state / f"fuse-{index}.err"
        args = [sys.executable, "-I", str(DAEMON), str(layer.root), str(mountpoint), str(log)]
        ready_r, ready_w = os.pipe()
        args.append(str(ready_w))
        if layer.xattrs:
            table = state / f"xattrs-{index}.json"
            table.write_text(
                json.dumps({p: {k: v.hex() for k, v in a.items()} for p, a in layer.xattrs.items()}),
                encoding="utf-8",
            )
            args.append(str(table))
        env = dict(os.environ, FUSE_LIBRARY_NAME="fuse3")
        try:
            with open(stderr_path, "wb") as err:
                process = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    env=env,
                    pass_fds=(ready_w,),
                    start_new_session=True,  # the terminal's Ctrl-C is ours to handle, not the daemon's
                )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        return cls(index, mountpoint, log, stderr_path, process, ready_r)

    def wait_ready(self, deadline: float) -> None:
        """Block until the kernel has initialised the mount (the daemon wrote to the ready pipe)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProfileError(
                    f"FUSE daemon for layer {self.index} did not start within {READY_TIMEOUT:.0f}s"
                )
            r, _, _ = select.select([self.ready_r], [], [], left)
            if r:
                if os.read(self.ready_r, 1) == b"R":
                    return
                # EOF: the daemon exited before mounting.
                self.process.wait(timeout=EXIT_TIMEOUT)
                raise ProfileError(
                    f"FUSE daemon for layer {self.index} failed to mount: {self._stderr_tail()}"
                )

    def _stderr_tail(self) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return "no error output"
        lines = [ln for ln in text.splitlines() if "max threads" not in ln]
        return lines[-1] if lines else f"exit status {self.process.returncode}"

    def unmount(self) -> None:
        """Unmount; the daemon then finishes its log and exits."""
        try:
            mounts.umount(self.mountpoint)
        except OSError:
            mounts.umount(self.mountpoint, lazy=True)

    def reap(self) -> None:
        """Wait for the daemon to exit (kill it if it does not)."""
        try:
            self.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self.ready_r)

    def accessed(self) -> list[str]:
        """Layer-relative paths in first-access order."""
        try:
            data = self.log.read_bytes()
        except FileNotFoundError:
            return []
        return [p.decode("utf-8", "surrogateescape") for p in data.split(b"\0") if p]


def stop_all(recorders: list[RecordingMount]) -> None:
    """Unmount every layer first, then reap the daemons: they shut down in parallel."""
    for recorder in recorders:
        recorder.unmount()
    for recorder in recorders:
        recorder.reap()
