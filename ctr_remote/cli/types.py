"""click parameter types for values with a syntax of their own: parsed once, into the typed value,
and a malformed one is a usage error (exit 2) naming the flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def reference(value: str, *, plain_http: bool) -> Reference:
    """An image reference argument (its syntax depends on --plain-http, so it is parsed after it)."""
    try:
        return parse_reference(value, plain_http=plain_http)
    except InvalidReferenceError as e:
        raise UsageError(str(e)) from None


PLATFORM = PlatformType()
PREFETCH_LIST = PrefetchListType()
