"""Stopping running transfers: a token set once (on Ctrl-C, SIGTERM or another transfer's failure)
that every retry loop, backoff and streamed chunk looks at, and that wakes requests blocked on the
network through the hooks their stores register while a request is in flight."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator

from ctr_remote.image.errors import TransferCancelled


class CancelToken:
    """Set once with `cancel()`; transfers given this token stop at their next request, backoff or
    chunk. Hooks registered with `on_cancel` run (once) when it is set, e.g. to shut down sockets
    a request is blocked on."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._hooks: dict[int, Callable[[], None]] = {}
        self._next = 0

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            hooks = list(self._hooks.values())
        for hook in hooks:
            with contextlib.suppress(Exception):  # a hook that fails must not hide the interrupt
                hook()

    def check(self, what: str) -> None:
        """Raise TransferCancelled (naming `what`) if the token is set."""
        if self._event.is_set():
            raise TransferCancelled(f"{what}: cancelled")

    def sleep(self, seconds: float, what: str) -> None:
        """Wait `seconds` (a retry backoff), cut short by a cancel."""
        if self._event.wait(seconds):
            raise TransferCancelled(f"{what}: cancelled")

    @contextlib.contextmanager
    def on_cancel(self, hook: Callable[[], None]) -> Iterator[None]:
        """Run `hook` if the token is set while the block runs (at once if it is set already)."""
        with self._lock:
            key = self._next
            self._next += 1
            self._hooks[key] = hook
            already = self._event.is_set()
        if already:
            hook()
        try:
            yield
        finally:
            with self._lock:
                del self._hooks[key]


def checked(chunks: Iterable[bytes], cancel: CancelToken | None, what: str) -> Iterator[bytes]:
    """`chunks`, stopping with TransferCancelled between two of them once `cancel` is set."""
    for chunk in chunks:
        if cancel is not None:
            cancel.check(what)
        yield chunk
