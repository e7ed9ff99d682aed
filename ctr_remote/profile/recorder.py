"""Parent side of the recording FUSE mounts: one daemon process serving every layer (a thread per
mount), layers handed to it as they are unpacked, readiness awaited, mounts unmounted, logs read back."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ctr_remote.processes import wait_or_kill
from ctr_remote.profile import mounts
from ctr_remote.profile.children import die_with_parent
from ctr_remote.profile.errors import ProfileError
from ctr_remote.profile.unpack import UnpackedLayer

DAEMON = Path(__file__).with_name("fuse_daemon.py")
FUSE_DEVICE = "/dev/fuse"
_FUSE_RDEV = (10, 229)  # the misc device the kernel's FUSE module registers
READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0


def check_fuse() -> None:
    """One-line errors for a machine that cannot serve FUSE at all."""
    try:
        fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise ProfileError(
            f"cannot open {FUSE_DEVICE} ({e.strerror}): FUSE is required to record file accesses"
        ) from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != _FUSE_RDEV:
        what = "a character device" if stat.S_ISCHR(st.st_mode) else _file_kind(st.st_mode)
        raise ProfileError(
            f"{FUSE_DEVICE} is {what}, not the FUSE device (character device 10:229): "
            "FUSE is required to record file accesses"
        )


def _file_kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a character device"


@dataclass
class RecordingMount:
    """One layer served at `mountpoint`, its first accesses logged to `log`."""

    index: int
    mountpoint: Path
    log: Path

    def unmount(self) -> None:
        """Unmount; the daemon's thread for this layer then finishes its log and ends."""
        try:
            mounts.umount(self.mountpoint)
        except OSError:
            mounts.umount(self.mountpoint, lazy=True)

    def accessed(self) -> list[str]:
        """Layer-relative paths in first-access order."""
        try:
            data = self.log.read_bytes()
        except FileNotFoundError:
            return []
        return [p.decode("utf-8", "surrogateescape") for p in data.split(b"\0") if p]


class RecorderDaemon:
    """The daemon process (fuse_daemon.py) and the layers it was asked to serve."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.stderr_path = state / "fuse.err"
        self.mounts: list[RecordingMount] = []
        self._ready: set[int] = set()
        self._pending = b""
        ready_r, ready_w = os.pipe()
        try:
            with open(self.stderr_path, "wb") as err:
                self.process = subprocess.Popen(
                    [sys.executable, "-I", str(DAEMON), str(ready_w)],
                    stdin=subprocess.PIPE,
                    stdout=err,
                    stderr=err,
                    pass_fds=(ready_w,),
                    preexec_fn=die_with_parent,
                    start_new_session=True,  # the terminal's Ctrl-C is ours to handle, not the daemon's
                )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        self._ready_r = ready_r
        assert self.process.stdin is not None
        self._control: IO[bytes] = self.process.stdin

    def serve(self, index: int, layer: UnpackedLayer, mountpoint: Path) -> RecordingMount:
        """Ask the daemon to mount `layer` at `mountpoint` (returns at once; see wait_ready)."""
        mountpoint.mkdir()
        mount = RecordingMount(index, mountpoint, self.state / f"access-{index}.log")
        xattrs = None
        if layer.xattrs:
            xattrs = self.state / f"xattrs-{index}.json"
            xattrs.write_text(
                json.dumps({p: {k: v.hex() for k, v in a.items()} for p, a in layer.xattrs.items()}),
                encoding="utf-8",
            )
        request = {
            "index": index,
            "root": str(layer.root),
            "mountpoint": str(mountpoint),
            "log": str(mount.log),
            "xattrs": str(xattrs) if xattrs else None,
        }
        self.mounts.append(mount)
        try:
            self._control.write(json.dumps(request).encode() + b"\n")
            self._control.flush()
        except BrokenPipeError:
            raise ProfileError(f"the FUSE daemon exited early: {self._stderr_tail()}") from None
        return mount

    def wait_ready(self, deadline: float) -> None:
        """Block until every mount asked for is served by the kernel, or fail with one line."""
        while len(self._ready) < len(self.mounts):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProfileError(f"the FUSE daemon did not mount the layers within {READY_TIMEOUT:.0f}s")
            if not select.select([self._ready_r], [], [], left)[0]:
                continue
            chunk = os.read(self._ready_r, 4096)
            if not chunk:
                raise ProfileError(
                    f"the FUSE daemon exited before mounting the layers: {self._stderr_tail()}"
                )
            self._pending += chunk
            *lines, self._pending = self._pending.split(b"\n")
            for line in lines:
                index, _, failure = line.decode(errors="replace").partition(" !")
                if failure:
                    raise ProfileError(f"cannot mount layer {index} with FUSE: {failure}")
                self._ready.add(int(index))

    def watch(self, on_exit: Callable[[], None]) -> None:
        """Call `on_exit` (from a watcher thread) when the daemon process ends, however it ends."""

        def wait() -> None:
            self.process.wait()
            on_exit()

        threading.Thread(target=wait, name="fuse-daemon-watch", daemon=True).start()

    def check(self) -> None:
        """After the run, before unmounting: fail with one line if the daemon died or reported that
        it could not log every access (the profile would silently miss files)."""
        status = self.process.poll()
        if status is not None:
            how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
            raise ProfileError(
                f"the FUSE daemon recording the layers died during the run ({how}); "
                "the recorded accesses would be incomplete"
            )
        while select.select([self._ready_r], [], [], 0)[0]:
            chunk = os.read(self._ready_r, 4096)
            if not chunk:
                break
            self._pending += chunk
            *lines, self._pending = self._pending.split(b"\n")
            for line in lines:
                index, _, failure = line.decode(errors="replace").partition(" !")
                if failure:
                    raise ProfileError(f"layer {index}: the FUSE recorder {failure}")

    def _stderr_tail(self) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            text = ""
        return text.splitlines()[-1] if text else f"exit status {self.process.poll()}"

    def stop(self) -> None:
        """Unmount every layer, then let the daemon exit (kill it if it does not)."""
        for mount in self.mounts:
            mount.unmount()
        try:
            with contextlib.suppress(BrokenPipeError):
                self._control.close()  # no more layers: the daemon exits when its mounts are gone
            wait_or_kill(self.process, EXIT_TIMEOUT)
        finally:
            os.close(self._ready_r)
