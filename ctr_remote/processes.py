"""Waiting for a helper process that should exit by itself (a closed pipe told it to), without
waiting forever for one that hangs."""

from __future__ import annotations

import subprocess


def wait_or_kill(process: subprocess.Popen[bytes], timeout: float) -> int:
    """`process`'s exit status once it exits, or after SIGKILL if it has not within `timeout` seconds."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
