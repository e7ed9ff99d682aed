"""Which shard runs which job: rendezvous (highest-random-weight) hashing of the job's name.

Each job goes to the shard whose hash with it is highest. Adding or removing a job moves no other
job; going from N to N+1 shards moves only the jobs the new shard wins (about 1/(N+1) of them).
Every process computes the same assignment from the file alone: no coordinator.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from ctr_remote.errors import UsageError

INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by a Kubernetes Indexed Job in each pod


@dataclass(frozen=True)
class Shard:
    index: int  # from 0
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, name: str) -> bool:
        return shard_of(name, self.count) == self.index


def shard_of(name: str, count: int) -> int:
    def weight(i: int) -> bytes:
        return hashlib.sha256(f"{i}\0{name}".encode()).digest()

    return max(range(count), key=weight)


def parse_shard(value: str, environ: dict[str, str] | None = None) -> Shard:
    """`INDEX/COUNT`, or `/COUNT` with INDEX from $JOB_COMPLETION_INDEX; INDEX counts from 0."""
    env = os.environ if environ is None else environ
    index_s, sep, count_s = value.partition("/")
    if not sep:
        raise UsageError(f"--shard: want INDEX/COUNT (e.g. 0/3), got {value!r}")
    if not index_s:
        if INDEX_ENV not in env:
            raise UsageError(f"--shard {value}: no INDEX given and ${INDEX_ENV} is not set")
        index_s = env[INDEX_ENV]
    try:
        index, count = int(index_s), int(count_s)
    except ValueError:
        raise UsageError(f"--shard: want INDEX/COUNT as numbers, got {index_s!r}/{count_s!r}") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard: want 0 <= INDEX < COUNT, got {index}/{count}")
    return Shard(index, count)
