"""The one way work stops early: a token set once (on Ctrl-C, SIGTERM or another job's failure) that
every retry loop, backoff, streamed chunk and layer conversion looks at, and that wakes requests
blocked on the network through hooks registered while they are in flight; and `run_parallel`, the
one thread pool that sets it when a job fails or the caller is interrupted."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, TypeVar, cast

from ctr_remote.errors import Cancelled
from ctr_remote.signals import wait_futures

T = TypeVar("T")


class CancelToken:
    """Set once with `cancel()`; work given this token stops at its next request, backoff, chunk,
    read or write. Hooks registered with `on_cancel` run (once) when it is set, e.g. to shut down sockets
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
        """Raise Cancelled (naming `what`) if the token is set."""
        if self._event.is_set():
            raise Cancelled(f"{what}: cancelled")

    def sleep(self, seconds: float, what: str) -> None:
        """Wait `seconds` (a retry backoff), cut short by a cancel."""
        if self._event.wait(seconds):
            raise Cancelled(f"{what}: cancelled")

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
    """`chunks`, stopping with Cancelled between two of them once `cancel` is set."""
    for chunk in chunks:
        if cancel is not None:
            cancel.check(what)
        yield chunk


def checked_file(file: BinaryIO, cancel: CancelToken, what: str) -> BinaryIO:
    """`file`, whose every read and write first checks `cancel`: a long conversion stops at its next
    read or write once the token is set (upstream's `estargz.WithContext`)."""
    return cast(BinaryIO, _CheckedFile(file, cancel, what))  # duck-typed: reads, writes, the rest passed on


class _CheckedFile:
    def __init__(self, file: BinaryIO, cancel: CancelToken, what: str) -> None:
        self._file, self._cancel, self._what = file, cancel, what

    def read(self, size: int = -1) -> bytes:
        self._cancel.check(self._what)
        return self._file.read(size)

    def write(self, data: bytes) -> int:
        self._cancel.check(self._what)
        return self._file.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def run_parallel(
    jobs: Sequence[Callable[[CancelToken], T]], workers: int, *, parent: CancelToken | None = None
) -> list[T]:
    """Run `jobs` on a thread pool, each given the same token; their results in order. The first
    failure, an interrupt of the calling thread (KeyboardInterrupt, Terminated) or setting `parent`
    (the caller's own token: a batch's --fail-fast, an outer job) stops everything promptly:
    queued jobs never start and running ones are cancelled through the token. Only then is the
    failure raised, so that no job goes on, or leaves a temp file, behind the caller's back."""
    if not jobs:
        return []
    cancel = CancelToken()
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs))))
    linked = parent.on_cancel(cancel.cancel) if parent is not None else contextlib.nullcontext()
    try:
        with linked:
            # Each job runs in a copy of the caller's context, so its log lines carry the caller's
            # bound fields (a batch job's name).
            futures = [pool.submit(contextvars.copy_context().run, job, cancel) for job in jobs]
            wait_futures(futures, first_exception=True)
            errors = [e for f in futures if f.done() and (e := f.exception()) is not None]
            # A job that stopped because another failed is not the cause: report the first real error.
            real = [e for e in errors if not isinstance(e, Cancelled)]
            if errors:
                raise (real or errors)[0]
            return [f.result() for f in futures]
    finally:
        cancel.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
