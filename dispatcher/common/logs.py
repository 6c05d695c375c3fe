"""Structured logs: JSON lines for machines, console rendering on a terminal.

Request handlers bind ``request_id`` with structlog's contextvars, so every line logged
while serving a request carries it.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import orjson
import structlog

LogFormat = Literal["json", "console"]
LEVELS = ("debug", "info", "warning", "error")


def default_format() -> LogFormat:
    return "console" if sys.stderr.isatty() else "json"


def _dumps(obj: object, default: object = None) -> bytes:
    return orjson.dumps(obj, default=str)


def configure(*, fmt: LogFormat, level: str) -> None:
    renderer: structlog.typing.Processor
    factory: structlog.typing.WrappedLogger
    if fmt == "json":
        # Bytes straight from orjson to stderr: no str round trip, no print().
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
        factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory = structlog.PrintLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
