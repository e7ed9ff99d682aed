"""Logging set-up: structlog, rendered like upstream's logrus on a terminal, or JSON lines for CI.

Everything logs through `structlog.get_logger()`; the CLI calls `configure` once.
"""

from __future__ import annotations

import enum
import json
import logging
import sys
import time
from typing import Any, TextIO

import structlog

_START = time.monotonic()


class LogFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


def _quote(v: Any) -> str:
    s = str(v)
    if s and all(c.isalnum() or c in "-._/:@+=" for c in s):
        return s
    return json.dumps(s)


class LogrusRenderer:
    """`INFO[0036] converted    digest="sha256:..."` as upstream's logrus prints on a terminal."""

    def __call__(self, _logger: Any, _name: str, event: dict[str, Any]) -> str:
        level = str(event.pop("level", "info")).upper()[:4]
        msg = str(event.pop("event", ""))
        event.pop("timestamp", None)
        exc = event.pop("exception", None)
        fields = " ".join(f"{k}={_quote(v)}" for k, v in event.items())
        line = f"{level}[{int(time.monotonic() - _START):04d}] {msg:<44} {fields}".rstrip()
        return f"{line}\n{exc}" if exc else line


_format: LogFormat | None = None  # None until the CLI has configured logging


def current_format() -> LogFormat | None:
    return _format


def configure(*, debug: bool = False, fmt: LogFormat = LogFormat.TEXT, stream: TextIO | None = None) -> None:
    global _format
    _format = fmt
    level = logging.DEBUG if debug else logging.INFO
    renderer: Any = structlog.processors.JSONRenderer() if fmt is LogFormat.JSON else LogrusRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # e.g. `job=NAME` on every line of a batch job
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
