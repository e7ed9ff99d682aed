"""A `--runtime` that never started the container is an error, not a run that recorded nothing."""

from __future__ import annotations

import pytest

from ctr_remote.profile import ProfileError


@pytest.mark.parametrize(("runtime", "status"), [("/bin/true", 0), ("/bin/false", 1)])
def test_a_runtime_that_never_ran_the_container_is_an_error(run, runtime: str, status: int) -> None:
    with pytest.raises(
        ProfileError, match=rf"never started the container \(it exited with status {status}\)"
    ):
        run("cat /etc/motd", runtime=runtime)


def test_a_workload_that_exits_at_once_did_run(run) -> None:
    assert run("exit 0").exit_code == 0
    assert run("exit 3").exit_code == 3
