"""The process's file descriptors, as a server that holds one per connection sees them:
the connection cap fitted to the open-file limit, that limit raised at start, and failed
``accept()`` calls (out of descriptors) logged once per interval instead of a traceback
per attempt. The HTTP connection layer (``dispatcher.common.httpserver``) builds on it.
"""

from __future__ import annotations

import asyncio
import errno
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from dispatcher.common.clock import Clock

log = structlog.get_logger("dispatcher.http")

DEFAULT_MAX_CONNECTIONS = 25_000
"""The cap when none is configured (and the file-descriptor limit allows it): a node
agent holds two connections (its long poll, and one for heartbeats and results), so
10,000 agents need 20,000, and sources, admins, probes and replicas the rest (README,
Fleet scale)."""
LISTEN_BACKLOG = 128
FD_RESERVE = 832
"""File descriptors kept for everything but the connections under the cap, when the cap
is derived from the limit: four bursts of accepts (asyncio accepts up to the listen
backlog, 128, in one go; the protocol that may evict to make room is made one turn of
the loop later and the evicted socket closed one turn after that, and a burst can be
accepted on each of those turns: 512), the forwarding pool of a follower (256
connections) and the rest (the listening socket, logs, Redis, the Kubernetes client, the
config directory: 64). Under a limit too low for that the cap is a quarter of the limit,
and a burst may still meet EMFILE: it is survived and logged once per interval."""
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""What ``accept()`` fails with when the process or the system runs out of resources."""


def max_connections_for(configured: int | None, fd_soft_limit: int) -> int:
    """The connection cap: as configured, else ``DEFAULT_MAX_CONNECTIONS`` or what the
    file-descriptor limit leaves after ``FD_RESERVE`` (at least a quarter of it),
    whichever is lower. A configured value is kept even above the limit: the operator
    asked for it (``serve`` warns)."""
    if configured is not None:
        return configured
    fitted = max(fd_soft_limit - FD_RESERVE, fd_soft_limit // 4)
    return max(1, min(DEFAULT_MAX_CONNECTIONS, fitted))


# ----------------------------------------------------------------- fd limit


@dataclass(frozen=True, slots=True)
class FdLimit:
    before: int
    soft: int
    hard: int
    error: str | None = None


def open_file_limit() -> int:
    """The soft limit of open files (of descriptors: sockets included)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def raise_fd_limit() -> FdLimit:
    """Raises the soft limit of open files to the hard limit: every connection holds
    one, and the soft limit (often 1024) is far below what a dispatcher serving a few
    thousand agents needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be the soft one on Linux (fs.nr_open bounds it).
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft >= target:
        return FdLimit(before=soft, soft=soft, hard=hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        return FdLimit(before=soft, soft=soft, hard=hard, error=str(exc))
    return FdLimit(before=soft, soft=target, hard=hard)


# ----------------------------------------------------------- rate-limited logs


class EveryInterval:
    """Counts events and lets one through per interval, with the count since the last."""

    def __init__(self, clock: Clock, interval_s: float) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._last: float | None = None
        self._count = 0

    def hit(self) -> int | None:
        """The number of events since the last one let through (this one included), or
        None while within the interval."""
        self._count += 1
        now = self._clock.monotonic()
        if self._last is not None and now - self._last < self._interval_s:
            return None
        self._last = now
        count, self._count = self._count, 0
        return count


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptErrorLog:
    """An event-loop exception handler: out-of-resource errors (``EMFILE`` from
    ``accept()`` above all, which asyncio reports for every attempt, with a traceback)
    are logged once per interval with how many there were; everything else goes to the
    handler that was there before (or asyncio's default)."""

    def __init__(
        self, *, clock: Clock, interval_s: float, previous: ExceptionHandler | None = None
    ) -> None:
        self._every = EveryInterval(clock, interval_s)
        self._interval_s = interval_s
        self._previous = previous

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
            count = self._every.hit()
            if count is not None:
                log.error(
                    "accept_failed",
                    error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                    reason=exc.strerror,
                    message=context.get("message"),
                    failures=count,
                    log_interval_s=self._interval_s,
                )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
