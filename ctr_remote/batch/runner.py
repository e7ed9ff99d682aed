"""Running a batch's jobs: N at once on threads, all sharing one layer cache; a failed job is
recorded and the others go on (unless fail-fast: then no further job starts). Each job is the
same `optimize`/`convert` call the commands make."""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from ctr_remote.cancel import CancelToken
from ctr_remote.errors import Cancelled, CtrRemoteError, Interrupted, Terminated
from ctr_remote.layercache.local import LayerCache, LayerReport, Outcome
from ctr_remote.progress import Progress
from ctr_remote.signals import wait_futures

if TYPE_CHECKING:
    from ctr_remote.batch.spec import Job

log = structlog.get_logger()


class Status(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # not started: an earlier job failed under --fail-fast, or an interrupt
    CANCELLED = "cancelled"  # stopped halfway: another job failed under --fail-fast, or an interrupt


@dataclass
class JobResult:
    job: Job
    status: Status = Status.SKIPPED
    digest: str | None = None
    seconds: float = 0.0
    layers: tuple[LayerReport, ...] = ()
    error: str | None = None

    def counts(self) -> dict[str, int]:
        return {o.value: sum(1 for la in self.layers if la.outcome is o) for o in Outcome}

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.job.name,
            "index": self.job.index,
            "kind": self.job.kind,
            "source": self.job.source,
            "target": self.job.target,
            "status": self.status.value,
            "seconds": round(self.seconds, 3),
        }
        if self.status is Status.OK:
            d["digest"] = self.digest
            d["layers"] = [
                {"source": la.source, "digest": la.digest, "outcome": la.outcome.value} for la in self.layers
            ]
        if self.error is not None:
            d["error"] = self.error
        return d


@dataclass
class BatchResult:
    results: list[JobResult]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)  # the run's settings, for the report
    interrupted: str | None = None  # the signal that stopped the batch ("SIGINT", "SIGTERM")

    @property
    def ok(self) -> bool:
        return all(r.status is Status.OK for r in self.results)

    def summary(self) -> str:
        by = {s: sum(1 for r in self.results if r.status is s) for s in Status}
        layers = {o.value: 0 for o in Outcome}
        for r in self.results:
            for k, v in r.counts().items():
                layers[k] += v
        skipped = "".join(f", {by[s]} {s.value}" for s in (Status.CANCELLED, Status.SKIPPED) if by[s])
        return (
            f"batch: {len(self.results)} jobs, {by[Status.OK]} succeeded, {by[Status.FAILED]} failed"
            f"{skipped}; layers: {layers['converted']} converted, {layers['cached']} cached, "
            f"{layers['reused']} reused; {self.seconds:.1f}s"
        )

    def to_json(self) -> dict[str, Any]:
        interrupted = {"interrupted": self.interrupted} if self.interrupted else {}
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            **interrupted,
            **self.extra,
            "jobs": [r.to_json() for r in self.results],
        }


class BatchInterrupted(CtrRemoteError):
    """SIGINT or SIGTERM stopped the batch: `result` holds each job as it ended (running jobs
    `cancelled`, those not started `skipped`) for the report; `error` is the interrupt to exit with."""

    def __init__(self, result: BatchResult, error: Interrupted | Terminated) -> None:
        super().__init__(str(error))
        self.result, self.error = result, error
        self.exit_code = error.exit_code


def default_jobs() -> int:
    """Jobs at once when --jobs is not given: one per CPU this process may run on. Each job's layer
    conversion already uses every CPU, so more jobs than CPUs only overlap network waits (pulls,
    pushes, a workload's period), while each adds its layers' memory and temp space."""
    return max(1, len(os.sched_getaffinity(0)))


def run_job(
    job: Job, cache: LayerCache, progress: Progress, stop: CancelToken
) -> tuple[str, tuple[LayerReport, ...]]:
    from ctr_remote.optimize import optimize  # the pipeline pulls in every package: load it only to run

    result = optimize(job.options, job.workload, progress, cache, stop)
    return result.digest, result.layers


def run_batch(
    jobs: Sequence[Job],
    cache: LayerCache,
    *,
    workers: int,
    fail_fast: bool = False,
    on_done: Callable[[JobResult], None] | None = None,
) -> BatchResult:
    start = time.monotonic()
    results = [JobResult(job) for job in jobs]
    # Set by an interrupt, or by the first failure under fail-fast: no job starts after it, and
    # running ones stop at their next transfer chunk or conversion read; a workload's container is
    # killed at once.
    stop = CancelToken()

    def one(result: JobResult) -> None:
        if stop.cancelled:
            return
        with structlog.contextvars.bound_contextvars(job=result.job.name):  # on all its log lines
            _run_one(result)

    def _run_one(result: JobResult) -> None:
        job = result.job
        t0 = time.monotonic()
        log.info("job started", kind=job.kind, source=job.source, target=job.target)
        try:
            result.digest, result.layers = run_job(job, cache, Progress(live=False), stop)
            result.status = Status.OK
        except (Interrupted, Terminated) as e:
            result.status, result.error = Status.CANCELLED, str(e)
            result.seconds = time.monotonic() - t0
            raise
        except Cancelled as e:
            result.status, result.error = (Status.CANCELLED if stop.cancelled else Status.FAILED), str(e)
        except CtrRemoteError as e:
            result.status, result.error = Status.FAILED, str(e)
        except Exception as e:  # a bug in one job must not take the others down; it is reported
            result.status, result.error = Status.FAILED, f"internal error: {type(e).__name__}: {e}"
        result.seconds = time.monotonic() - t0
        if result.status is Status.CANCELLED:
            log.warning("job cancelled")
        elif result.status is Status.FAILED:
            log.error("job failed", error=result.error)
            if fail_fast:
                stop.cancel()
        else:
            log.info("job done", digest=result.digest, **result.counts())
        if on_done is not None:
            on_done(result)

    interrupt: Interrupted | Terminated | None = None
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        futures = [pool.submit(one, r) for r in results]
        try:
            wait_futures(futures)
            for f in futures:
                f.result()
        except BaseException as e:
            stop.cancel()  # an interrupt
            for f in futures:
                f.cancel()
            if isinstance(e, KeyboardInterrupt):
                interrupt = Interrupted("interrupted")
            elif isinstance(e, (Interrupted, Terminated)):
                interrupt = e
            else:
                raise
    # Leaving the pool waited for the running jobs: every status is final, so the report written on
    # the way out says which jobs finished, which were cut short and which never started.
    result = BatchResult(results, time.monotonic() - start)
    if interrupt is not None:
        result.interrupted = "SIGINT" if isinstance(interrupt, Interrupted) else "SIGTERM"
        raise BatchInterrupted(result, interrupt) from None
    return result
