"""Flags that used to be accepted and then misbehave (or crash) are refused up front: exit 2, one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ctr_remote.image import PlatformError, parse_platform

pytestmark = pytest.mark.unit


def optimize(*args: str) -> subprocess.CompletedProcess[str]:
    # The references are never reached: every case fails (or passes) flag parsing first, and the
    # passing ones are stopped by a flag conflict checked before anything is pulled.
    return subprocess.run(
        [sys.executable, "-m", "ctr_remote", "image", "optimize", *args, "src.invalid/a", "dst.invalid/b"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line(p: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert p.returncode == code, p.stderr
    assert len(p.stderr.splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert text in p.stderr


@pytest.mark.parametrize("period", ["nan", "inf", "-inf", "1e10", "ten"])
def test_unusable_periods_are_refused(period: str) -> None:
    assert_one_line(optimize("--period", period), 2, "'--period'")


@pytest.mark.parametrize("period", ["0", "-1", "2.5", "30"])
def test_upstream_periods_are_accepted(period: str) -> None:
    # <= 0 means the default, as upstream: parsing passes and the conflict is what stops the run.
    assert_one_line(optimize("--period", period, "--cni", "--net-host"), 2, "--cni can't be used")


def test_all_platform_is_an_alias_of_all_platforms() -> None:
    assert_one_line(
        optimize("--all-platform", "--platform", "linux/amd64"), 2, "--platform can't be used with"
    )


@pytest.mark.parametrize("limit", ["0", "-2", "many"])
def test_bad_pids_limits_are_refused(limit: str) -> None:
    assert_one_line(optimize("--pids-limit", limit), 2, "'--pids-limit'")


def test_no_pids_limit_is_minus_one() -> None:
    assert_one_line(optimize("--pids-limit", "-1", "--cni", "--net-host"), 2, "--cni can't be used")


@pytest.mark.parametrize("platform", ["garbage", "linux/amd64 x", "linux//v7", "a/b/c/d"])
def test_platforms_are_validated_as_containerd_does(platform: str) -> None:
    with pytest.raises(PlatformError):
        parse_platform(platform)
    assert_one_line(optimize("--platform", platform), 2, "invalid platform")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("linux", "linux/"),
        ("arm64", "linux/arm64"),
        ("armhf", "linux/arm/v7"),
        ("plan9/anything", "plan9/anything"),
    ],
)
def test_containerd_platforms_still_parse(spec: str, expected: str) -> None:
    assert str(parse_platform(spec)).startswith(expected)
