"""Shard assignment: deterministic, every job in exactly one shard, stable when jobs are added."""

from __future__ import annotations

from collections import Counter

import pytest

from ctr_remote.batch.shard import Shard, parse_shard, shard_of
from ctr_remote.errors import UsageError

NAMES = [f"registry.example.com/team{i % 7}/app{i}:v1" for i in range(300)]


def test_every_job_is_in_exactly_one_shard_and_shards_are_balanced() -> None:
    owners = [[s for s in range(5) if Shard(s, 5).owns(n)] for n in NAMES]
    assert all(len(o) == 1 for o in owners)
    sizes = Counter(o[0] for o in owners)
    assert set(sizes) == set(range(5)) and min(sizes.values()) > 300 / 5 / 2


def test_adding_jobs_moves_none_and_adding_a_shard_moves_only_what_it_takes() -> None:
    before = {n: shard_of(n, 4) for n in NAMES[:200]}
    assert {n: shard_of(n, 4) for n in NAMES} | before == {n: shard_of(n, 4) for n in NAMES}
    after = {n: shard_of(n, 5) for n in NAMES[:200]}
    moved = [n for n in before if before[n] != after[n]]
    assert all(after[n] == 4 for n in moved)  # only to the new shard
    assert len(moved) < 200 * 0.35  # about 1/5


def test_index_from_job_completion_index() -> None:
    assert parse_shard("2/3", {}) == Shard(2, 3)
    assert parse_shard("/3", {"JOB_COMPLETION_INDEX": "1"}) == Shard(1, 3)
    for bad, why in [
        ("/3", "JOB_COMPLETION_INDEX is not set"),
        ("3", "want INDEX/COUNT"),
        ("3/3", "0 <= INDEX < COUNT"),
        ("a/3", "as numbers"),
        ("0/0", "0 <= INDEX < COUNT"),
    ]:
        with pytest.raises(UsageError, match=why):
            parse_shard(bad, {})
