"""The HTTP server's connection layer: what a hostile or broken client cannot hold.

aiohttp closes a connection only after ``keepalive_timeout`` of idleness (3630 s by
default) and never times out a slow request head or body, so idle and slow sockets pile
up until the process runs out of file descriptors; it answers malformed HTTP in plain
text; and asyncio logs a traceback for every failed ``accept()``. This module adds, at
the protocol level (``GuardedRequestHandler``, served by ``Listener`` instead of
aiohttp's ``TCPSite``):

- a header timeout: a request head must be complete within ``header_timeout_s`` of the
  connection's accept, or of the first byte of the next request on a kept-alive
  connection; else ``408`` (or a silent close when nothing at all was sent);
- a body timeout: a request body must be complete within ``body_timeout_s`` of its head;
  else ``408``, and the handler waiting for it is cancelled;
- an idle timeout (in place of aiohttp's keep-alive timer): a kept-alive connection with
  no request in progress is closed after ``idle_timeout_s``. No timeout runs while a
  handler runs, so a long poll waits as long as it asked to;
- a write-stall timeout: while the transport has paused writing (its buffer is above the
  high-water mark: the client does not read its replies), the connection is aborted
  once ``body_timeout_s`` pass without a byte of the buffer sent. Without it a handler
  waits in ``drain`` for ever and its connection stays busy, never timed out nor
  evicted. A slow but steady reader is never cut: any progress restarts the bound;
- closing for a timeout, an eviction or the idle timeout aborts the transport: asyncio's
  ``close()`` waits for the write buffer to empty, so a client that never reads would
  keep the socket (and its file descriptor) open after the guard forgot it;
- a connection cap: at ``max_connections``, a new connection closes the connection that
  has been idle the longest (kept-alive, or still waiting for a head); when every
  connection is in a request, the new one is answered ``503`` and closed at once, so the
  requests in progress are never hurt;
- the error body of API.md for malformed HTTP (``400``, ``431``), timeouts (``408``)
  and refusals (``503``);
- with ``dispatcher.common.fdlimits``: the connection cap fitted to the open-file limit,
  that limit raised at start, and failing accepts logged once per interval.

The handler reads a few of aiohttp's ``RequestHandler`` attributes (``_messages``,
``_request_count``, ``_request_in_progress``, ``_current_request``, ``_task_handler``);
aiohttp is pinned below 4 and ``tests/common/test_httpserver.py`` exercises each path
with raw sockets. Every timer runs on the injected ``Clock`` (``call_later``), so those
tests move time by hand.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import secrets
import ssl
import struct
import termios
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from dispatcher import errors
from dispatcher.common.clock import Clock, Timer
from dispatcher.common.fdlimits import LISTEN_BACKLOG, EveryInterval
from dispatcher.common.httperrors import STATUS, error_body

log = structlog.get_logger("dispatcher.http")

REQUEST_ID = "X-Request-Id"
# Request ids of the responses this layer writes itself (no handler ran); the
# application's own ids have another prefix.
_ID_PREFIX = "conn-" + secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)

Phase = Literal["head", "body", "idle"]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    idle_timeout_s: float
    max_connections: int


# --------------------------------------------------------------- responses


def raw_error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection, for when no
    handler runs (refused, timed out)."""
    body = error_body(code, message)
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        f"{REQUEST_ID}: {_ID_PREFIX}-{next(_ID_COUNTER)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def describe_protocol_error(
    status: int, exc: BaseException | None, message: str | None
) -> tuple[int, str, str]:
    """(status, code, message) of API.md's error body for what aiohttp's parser refused
    (or, with 5xx, for a handler that failed outside the application's middleware)."""
    if status >= 500:
        return status, "internal", "The server failed to handle this request."
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else "the limit of"
        return (
            STATUS[errors.HeadersTooLarge],
            errors.HeadersTooLarge.code,
            f"The request line or a header field is longer than {limit} bytes.",
        )
    reason = message or (exc.message if isinstance(exc, BadHttpMessage) else "") or ""
    if isinstance(exc, BadHttpMessage) and reason.startswith("Too many headers"):
        return (
            STATUS[errors.HeadersTooLarge],
            errors.HeadersTooLarge.code,
            "The request has too many header fields.",
        )
    return status, errors.InvalidRequest.code, f"Malformed HTTP request: {one_line(reason)}"


def one_line(reason: str) -> str:
    """aiohttp's parser messages span lines (the reason, the bytes, a ``^`` pointer):
    one line of at most 200 characters for the error body."""
    parts = [line.strip() for line in reason.splitlines()]
    text = " ".join(part for part in parts if part.strip("^ "))
    return text[:200] or "unreadable"


def unsent_in_kernel(transport: asyncio.BaseTransport) -> int:
    """The bytes in the socket's send queue (``SIOCOUTQ``), or 0 where unknown."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(termios, "TIOCOUTQ"):
        return 0
    try:
        packed = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    except OSError:
        return 0
    return int(struct.unpack("i", packed)[0])


# ----------------------------------------------------------------- the guard


class ConnectionGuard:
    """The open connections of one listener and which of them are idle, oldest first
    (a dict keeps insertion order: re-inserting moves a connection to the end)."""

    def __init__(self, limits: ConnectionLimits, *, clock: Clock, log_interval_s: float):
        self.limits = limits
        self.clock = clock
        self._open: set[GuardedRequestHandler] = set()
        self._idle: dict[GuardedRequestHandler, None] = {}
        self._at_limit = EveryInterval(clock, log_interval_s)
        self.evicted = 0
        self.refused = 0

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def admit(self, conn: GuardedRequestHandler) -> bool:
        """Registers a new connection, idle until its head arrives. At the cap, the
        connection idle the longest makes room; with none idle, False: refuse it."""
        if len(self._open) >= self.limits.max_connections:
            victim = next(iter(self._idle), None)
            if victim is None:
                self.refused += 1
                self._log_at_limit()
                return False
            self.evicted += 1
            self.closed(victim)
            victim.evict()
            self._log_at_limit()
        self._open.add(conn)
        self._idle[conn] = None
        return True

    def connections(self) -> list[GuardedRequestHandler]:
        """The open connections (for tests and probes)."""
        return list(self._open)

    def busy(self, conn: GuardedRequestHandler) -> None:
        self._idle.pop(conn, None)

    def idle(self, conn: GuardedRequestHandler) -> None:
        if conn in self._open:
            self._idle.pop(conn, None)
            self._idle[conn] = None

    def closed(self, conn: GuardedRequestHandler) -> None:
        self._open.discard(conn)
        self._idle.pop(conn, None)

    def _log_at_limit(self) -> None:
        if self._at_limit.hit() is not None:
            log.warning(
                "connection_limit_reached",
                max_connections=self.limits.max_connections,
                idle=len(self._idle),
                evicted_total=self.evicted,
                refused_total=self.refused,
            )


# ------------------------------------------------------------- the protocol


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's protocol with the header and body timeouts, the cap and JSON errors.

    Per connection: ``_busy`` from a complete head until its response is written (a
    request in progress: no timeout, never evicted); ``_phase`` names the one timer
    armed, if any: ``head`` (waiting for a complete head), ``body`` (for the rest of
    the body of the last head) or ``idle`` (kept alive between requests).
    ``_write_timer`` runs apart, while the transport has paused writing."""

    __slots__ = (
        "_admitted",
        "_body",
        "_body_message",
        "_busy",
        "_guard",
        "_head_started",
        "_phase",
        "_responses",
        "_timer",
        "_write_pending",
        "_write_timer",
    )

    def __init__(
        self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, guard: ConnectionGuard
    ) -> None:
        # No access log: the application logs every request itself (aiohttp accepts
        # None here, as AppRunner(access_log=None) passes it, though typed Logger).
        quiet: dict[str, Any] = {"access_log": None}
        super().__init__(manager, loop=loop, keepalive_timeout=guard.limits.idle_timeout_s, **quiet)
        self._guard = guard
        self._admitted = False
        self._busy = False
        self._head_started = False
        self._phase: Phase | None = None
        self._timer: Timer | None = None
        self._write_timer: Timer | None = None
        self._write_pending = 0
        self._body: Any = None
        self._body_message = 0
        self._responses = 0

    @property
    def receiving_head(self) -> bool:
        """True once a byte of a request head has arrived and the head is not complete."""
        return self._head_started

    # ----------------------------------------------------------- lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self):
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(
                raw_error_response(
                    STATUS[errors.Unavailable],
                    errors.Unavailable.code,
                    "The server is at its connection limit with every connection in a "
                    "request; retry shortly.",
                    {"Retry-After": "1"},
                )
            )
            # The 503 is in the kernel's buffer already (a fresh socket); abort rather than
            # close so that a client that reads nothing cannot keep the socket open.
            transport.abort()
            return
        self._admitted = True
        super().connection_made(transport)
        self._arm("head", self._guard.limits.header_timeout_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._disarm_write()
        self._guard.closed(self)
        super().connection_lost(exc)

    def evict(self) -> None:
        """Closed to make room for a new connection (the guard has forgotten it). An
        idle connection has no handler running; its task waits for a head, or reads
        the rest of an unread body before the next."""
        self._disarm()
        if self._task_handler is not None:
            self._task_handler.cancel()
        self._close_now()

    def _close_now(self) -> None:
        """Aborts the transport: unsent bytes are dropped and the socket is closed at
        once (``force_close`` alone waits for the write buffer to empty, for ever with a
        client that does not read)."""
        self._disarm()
        self._disarm_write()
        if self.transport is not None:
            self.transport.abort()
        self.force_close()

    def _process_keepalive(self) -> None:
        """aiohttp's keep-alive timer (on the loop's clock, closing without abort) does
        nothing: the ``idle`` timer of this class replaces it."""

    # -------------------------------------------------------------- output

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._admitted and self._write_timer is None:
            self._arm_write()

    def _arm_write(self) -> None:
        self._write_pending = self._pending_bytes()
        self._write_timer = self._clock().call_later(
            self._guard.limits.body_timeout_s, self._write_expired
        )

    def _pending_bytes(self) -> int:
        """Bytes not yet taken by the client: the transport's buffer and, on Linux, the
        socket's send queue (which can hold megabytes: a reader draining it shows no
        progress in the transport's buffer for a long time)."""
        transport = self.transport
        if transport is None:
            return 0
        return transport.get_write_buffer_size() + unsent_in_kernel(transport)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._disarm_write()

    def _disarm_write(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
        self._write_timer = None

    def _write_expired(self) -> None:
        self._write_timer = None
        if self._pending_bytes() < self._write_pending:
            self._arm_write()  # it reads, slowly: a new bound from now
            return
        log.info(
            "write_stalled",
            reason=(
                "the client read nothing of its replies for "
                f"{self._guard.limits.body_timeout_s:g} s"
            ),
            pending_bytes=self._pending_bytes(),
            peer=self.peername,
        )
        # The handler waits in drain: stop it, then drop what it could not send.
        if self._task_handler is not None:
            self._task_handler.cancel()
        self._close_now()

    def _clock(self) -> Clock:
        return self._guard.clock

    # --------------------------------------------------------------- input

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if data and not self._busy and self._body is None and not self._head_started:
            self._head_started = True
            if self._phase in (None, "idle"):  # kept alive: its next request begins
                self._arm("head", self._guard.limits.header_timeout_s)
        heads_before = self._request_count
        pending_body = self._body
        super().data_received(data)
        if self._request_count > heads_before:
            if pending_body is not None and not pending_body.is_eof():
                # A head cannot follow a body that is not complete: the parser failed
                # inside the body (bad chunked encoding) and queued its error as a
                # message; the handler would wait for the rest of the body for ever.
                failed = self._messages[-1][0] if self._messages else None
                reason = getattr(failed, "message", "") or "the body is malformed"
                self._abort(
                    400,
                    "invalid_request",
                    f"Malformed request body: {one_line(reason)}",
                    answered=self._body_answered(),
                )
                return
            self._head_arrived()
        elif self._phase == "body" and self._body is not None and self._body.is_eof():
            self._body = None
            self._disarm()

    def _head_arrived(self) -> None:
        self._busy = True
        self._head_started = False
        self._guard.busy(self)
        self._disarm()
        self._body = None
        if self._messages:
            payload = self._messages[-1][1]
            if not payload.is_eof():
                self._body = payload
                self._body_message = self._request_count
                self._arm("body", self._guard.limits.body_timeout_s)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        self._responses += 1
        if not self._messages:  # nothing pipelined: idle until the next head begins
            self._busy = False
            self._guard.idle(self)
            if self._phase is None and not self._head_started:
                self._arm("idle", self._guard.limits.idle_timeout_s)
        return result

    # -------------------------------------------------------------- timers

    def _arm(self, phase: Phase, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._timer = self._clock().call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._phase = None

    def _expired(self) -> None:
        phase, self._phase, self._timer = self._phase, None, None
        limits = self._guard.limits
        if phase == "idle" and not self._busy and not self._head_started:
            self._close_now()  # quietly: no request to answer
        elif phase == "head" and not self._busy:
            if not self._head_started:
                self._close_now()  # never sent a byte: nobody to answer
                return
            self._abort(
                STATUS[errors.RequestTimeout],
                errors.RequestTimeout.code,
                f"The request head did not arrive within {limits.header_timeout_s:g} s.",
                answered=False,
            )
        elif phase == "body" and self._body is not None and not self._body.is_eof():
            self._abort(
                STATUS[errors.RequestTimeout],
                errors.RequestTimeout.code,
                f"The request body did not arrive within {limits.body_timeout_s:g} s.",
                answered=self._body_answered(),
            )

    def _abort(self, status: int, code: str, message: str, *, answered: bool) -> None:
        """Answers with an error unless the request was ``answered`` already, stops the
        handler waiting for its input, and closes the connection."""
        log.info("request_aborted", status=status, code=code, reason=message, peer=self.peername)
        transport = self.transport
        if transport is not None and not answered:
            transport.write(raw_error_response(status, code, message))
        # The handler may be waiting for the body: cancel it (it has changed nothing yet,
        # it needs the body first) rather than let it fail on a closed connection.
        if self._task_handler is not None:
            self._task_handler.cancel()
        # The error went to the kernel's buffer if the transport's was empty; if the
        # client does not read, it is dropped with the rest.
        self._close_now()

    def _body_answered(self) -> bool:
        """True once a response to the request whose body is awaited has begun: its
        handler answered without reading it all (aiohttp then reads the rest)."""
        if self._responses >= self._body_message:
            return True
        current = self._current_request
        return current is not None and current.writer.output_size > 0

    # -------------------------------------------------------------- errors

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to what its parser refused, as API.md's error body; one log
        line without a traceback for a client's mistake."""
        if request.writer.output_size > 0:
            raise ConnectionError("a response has begun: no error response can follow")
        status, code, text = describe_protocol_error(status, exc, message)
        if status >= 500:
            log.error("request_failed", status=status, peer=request.remote, exc_info=exc)
        else:
            log.info("bad_http_request", status=status, code=code, reason=text, peer=request.remote)
        response = web.Response(
            body=error_body(code, text), status=status, content_type="application/json"
        )
        response.headers[REQUEST_ID] = f"{_ID_PREFIX}-{next(_ID_COUNTER)}"
        response.force_close()
        return response


# --------------------------------------------------------------- listener


class Listener:
    """Serves an ``AppRunner``'s server on a TCP address with ``GuardedRequestHandler``
    (in place of ``web.TCPSite``). ``close`` stops accepting; the runner's ``cleanup``
    then ends the connections as usual."""

    def __init__(
        self,
        runner: web.AppRunner,
        limits: ConnectionLimits,
        *,
        host: str,
        port: int,
        clock: Clock,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = LISTEN_BACKLOG,
        log_interval_s: float = 10.0,
    ) -> None:
        self.guard = ConnectionGuard(limits, clock=clock, log_interval_s=log_interval_s)
        self._runner = runner
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._backlog = backlog
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        server = self._runner.server
        if server is None:
            raise RuntimeError("Listener.start needs runner.setup() first")
        loop = asyncio.get_running_loop()
        guard = self.guard

        def protocol() -> GuardedRequestHandler:
            return GuardedRequestHandler(server, loop=loop, guard=guard)

        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
            # A TLS handshake holds a socket before any request: bound it like a head.
            ssl_handshake_timeout=(
                guard.limits.header_timeout_s if self._ssl_context is not None else None
            ),
        )

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
