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


def _dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure(*, fmt: LogFormat, level: str) -> None:
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
