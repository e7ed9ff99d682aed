"""click parameter types for values with a syntax of their own: parsed once, into the typed value,
and a malformed one is a usage error (exit 2) naming the flag."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ctr_remote.errors import UsageError
from ctr_remote.image import (
    InvalidReferenceError,
    Platform,
    PlatformError,
    Reference,
    parse_platform,
    parse_reference,
)
from ctr_remote.prefetch_list import PrefetchList, PrefetchListError

F = TypeVar("F", bound=Callable[..., Any])


class PlatformType(click.ParamType):
    name = "PLATFORM"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Platform:
        if isinstance(value, Platform):
            return value
        try:
            return parse_platform(value)
        except PlatformError as e:
            self.fail(str(e), param, ctx)


class PrefetchListType(click.ParamType):
    name = "FILE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> PrefetchList:
        if isinstance(value, PrefetchList):
            return value
        try:
            return PrefetchList.load(Path(value))
        except PrefetchListError as e:
            self.fail(str(e), param, ctx)


class PeriodType(click.ParamType):
    """`--period` seconds: upstream's integer flag, plus fractions; `<= 0` stays upstream's "the default"
    (turned into it where the Workload is built). NaN, infinities and periods no timer can wait for
    (beyond ~292 years) are refused instead of ending the run at once or overflowing."""

    name = "SECONDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds > threading.TIMEOUT_MAX:
            self.fail(f"{value!r} is not a usable number of seconds", param, ctx)
        return seconds


class PidsLimitType(click.ParamType):
    """`--pids-limit`: a positive number of processes and threads, or -1 for none (as Docker's)."""

    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None:
            return None
        try:
            limit = int(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not an integer", param, ctx)
        if limit == -1:
            return None
        if limit < 1:
            self.fail(f"{value!r}: want a positive number, or -1 for no limit", param, ctx)
        return limit


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class SizeType(click.ParamType):
    """A size in bytes: plain (`1048576`) or with a binary unit (`500M`, `10G`, `1.5GiB`: powers of
    1024, as `du -h` prints them)."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(value), re.IGNORECASE)
        if m is None or (m[2] == "" and "." in m[1]):
            self.fail(f"{value!r} is not a size (want bytes, or a number with K, M, G or T)", param, ctx)
        return int(float(m[1]) * _SIZE_UNITS[m[2].upper()])


def reference(value: str, *, plain_http: bool) -> Reference:
    """An image reference argument (its syntax depends on --plain-http, so it is parsed after it)."""
    try:
        return parse_reference(value, plain_http=plain_http)
    except InvalidReferenceError as e:
        raise UsageError(str(e)) from None


PLATFORM = PlatformType()
PREFETCH_LIST = PrefetchListType()
PERIOD = PeriodType()
PIDS_LIMIT = PidsLimitType()
SIZE = SizeType()


def platform_flags(platform_help: str, all_help: str) -> Callable[[F], F]:
    """`--platform` (repeatable, parsed) and `--all-platforms` (also `--all-platform`, the spelling
    upstream's own doc uses), for every command that picks platforms; help in each command's words."""

    def add(f: F) -> F:
        f = click.option("--all-platforms", "--all-platform", "all_platforms", is_flag=True, help=all_help)(f)
        return click.option("--platform", type=PLATFORM, multiple=True, help=platform_help)(f)

    return add


def check_platform_flags(platforms: tuple[Platform, ...], all_platforms: bool) -> None:
    if platforms and all_platforms:
        raise UsageError("--platform can't be used with --all-platforms")
