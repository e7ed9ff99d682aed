"""Running the profiling container with an OCI runtime binary (`runc run`, or e.g. `crun`) and
stopping it: at the end of the period, on a stdout line, on a signal, or when it exits by itself."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from ctr_remote.cancel import CancelToken
from ctr_remote.processes import wait_or_kill
from ctr_remote.profile.children import die_with_parent
from ctr_remote.profile.errors import ProfileError
from ctr_remote.profile.workload import Workload
from ctr_remote.signals import wait_event

log = structlog.get_logger()

STOP_GRACE_SECONDS = 5.0  # upstream waits this long after the stop signal before SIGKILL
KILL_TIMEOUT_SECONDS = 10.0


def find_runtime(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ProfileError(f"OCI runtime {name!r} not found in PATH")
    return path


def stop_signal_of(config: dict) -> signal.Signals:
    """The image's StopSignal ("SIGTERM", "TERM", "15"); SIGKILL when unset, as upstream."""
    raw = str((config.get("config") or {}).get("StopSignal") or "").strip().upper()
    if not raw:
        return signal.SIGKILL
    try:
        return (
            signal.Signals(int(raw))
            if raw.isdigit()
            else signal.Signals[raw if raw.startswith("SIG") else "SIG" + raw]
        )
    except (KeyError, ValueError):
        raise ProfileError(f"image config has an unknown StopSignal {raw!r}") from None


@dataclass
class Container:
    runtime: str  # absolute path of the runtime binary
    state_root: Path  # `--root`: private to this run, so concurrent runs never see each other
    container_id: str
    bundle: Path

    def _cmd(self, *args: str) -> list[str]:
        return [self.runtime, "--root", str(self.state_root), *args]

    @property
    def log_path(self) -> Path:
        return self.bundle / "runtime.log"

    @property
    def started_marker(self) -> Path:
        return self.bundle / "started"

    def started_hook(self) -> list[str] | None:
        """The poststart hook that proves the runtime started the container: it creates
        `started_marker` (None without a `touch` on the host: nothing is checked then)."""
        touch = shutil.which("touch")
        return [touch, str(self.started_marker)] if touch else None

    def check_ran(self, hook: list[str] | None, exit_code: int | None) -> None:
        """A runtime that exits without running the container (`/bin/true`, a wrapper that gives up
        quietly) must not pass for a workload that read nothing."""
        if hook is not None and not self.started_marker.exists():
            status = "" if exit_code is None else f" (it exited with status {exit_code})"
            raise ProfileError(f"{Path(self.runtime).name} never started the container{status}")

    def run(
        self,
        workload: Workload,
        stop: threading.Event,
        stop_signal: signal.Signals,
        cancel: CancelToken | None = None,
    ) -> int | None:
        """Run until the workload exits (its exit code) or `stop` is set / the period ends (None).

        `stop` is also how signal handlers (--wait-on-signal) end the run. If `cancel` is set when the
        run ends (whoever set it also set `stop`), the container is killed and Cancelled raised.
        """
        with _terminal_restored(workload.terminal):
            return self._run(workload, stop, stop_signal, cancel)

    def _run(
        self,
        workload: Workload,
        stop: threading.Event,
        stop_signal: signal.Signals,
        cancel: CancelToken | None,
    ) -> int | None:
        cmd = self._cmd(
            "--log", str(self.log_path), "--log-format", "json", "run", "--bundle", str(self.bundle)
        )
        cmd.append(self.container_id)
        stdout = subprocess.PIPE if workload.wait_on_line is not None else None
        stdin = None if workload.stdin or workload.terminal else subprocess.DEVNULL
        process = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=stdout,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the container in order
            preexec_fn=die_with_parent,
        )
        exited = threading.Event()

        def wait_exit() -> None:
            process.wait()
            exited.set()
            stop.set()

        threads = [threading.Thread(target=wait_exit, daemon=True)]
        if process.stdout is not None:
            assert workload.wait_on_line is not None
            threads.append(
                threading.Thread(
                    target=_watch_lines, args=(process.stdout, workload.wait_on_line, stop), daemon=True
                )
            )
        for t in threads:
            t.start()
        try:
            wait_event(stop, None if workload.wait_on_signal else workload.period)
            if cancel is not None:
                # Nobody uses this run's record, so the container gets no StopSignal and grace period:
                # the finally below kills it, as on Ctrl-C.
                cancel.check("the workload")
            if exited.is_set():
                self._check_started(process.returncode)
                return process.returncode
            log.info("stopping the workload", signal=stop_signal.name)
            self.kill(stop_signal)
            if not wait_event(exited, STOP_GRACE_SECONDS) and stop_signal is not signal.SIGKILL:
                self.kill(signal.SIGKILL)
            if not wait_event(exited, KILL_TIMEOUT_SECONDS):
                process.kill()
            return None
        finally:
            if process.poll() is None:
                self.kill(signal.SIGKILL)
                wait_or_kill(process, KILL_TIMEOUT_SECONDS)
            for t in threads:
                t.join(timeout=KILL_TIMEOUT_SECONDS)

    def _check_started(self, returncode: int) -> None:
        """A non-zero exit is the workload's unless the runtime logged that it failed to start it, or
        the runtime itself was killed (a workload killed by a signal makes it exit with 128+N)."""
        if returncode == 0:
            return
        if returncode < 0:
            raise ProfileError(
                f"{Path(self.runtime).name} was killed by {signal.Signals(-returncode).name} while "
                "running the workload"
            )
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            with contextlib.suppress(ValueError, AttributeError):
                entry = json.loads(line)
                if entry.get("level") in ("error", "fatal"):
                    msg = " ".join(str(entry.get("msg", "")).split())
                    raise ProfileError(f"{Path(self.runtime).name} could not start the workload: {msg}")

    def kill(self, sig: signal.Signals) -> None:
        self._control("kill", "--all", self.container_id, str(int(sig)))

    def delete(self) -> None:
        """Remove the container whatever its state; a container that was never created is fine."""
        self._control("delete", "--force", self.container_id)

    def _control(self, *args: str) -> None:
        """A runtime command during stop or cleanup: a runtime that hangs is given up on (logged), so
        the rest of the cleanup still runs; the state dir goes with the work directory."""
        try:
            subprocess.run(
                self._cmd(*args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=KILL_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.warning("the runtime did not answer in time", command=args[0], timeout=KILL_TIMEOUT_SECONDS)


@contextlib.contextmanager
def _terminal_restored(terminal: bool) -> Iterator[None]:
    """With -t the runtime puts our terminal in raw mode; put it back even if the runtime was killed."""
    saved = None
    if terminal and os.isatty(0):
        with contextlib.suppress(termios.error):
            saved = termios.tcgetattr(0)
    try:
        yield
    finally:
        if saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _watch_lines(stream: IO[bytes], needle: str, stop: threading.Event) -> None:
    """Copy the workload's stdout through, and set `stop` once a line contains `needle`."""
    target = needle.encode()
    out = sys.stdout.buffer
    for line in stream:
        with contextlib.suppress(OSError, ValueError):
            out.write(line)
            out.flush()
        if target in line and not stop.is_set():
            log.info("found the line to wait for; stopping", line=needle)
            stop.set()
