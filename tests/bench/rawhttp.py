"""A minimal HTTP/1.1 keep-alive client on ``asyncio.Protocol``, for load generators.

The fleet benchmark drives 10,000 simulated agents from one CPU; aiohttp's client costs
about as much CPU per request as the dispatcher's server (~100 µs), so it saturates that
CPU at a few thousand agents. This client does only what the dispatcher's replies need:

- requests are bytes the caller builds (``Request``: the head pre-encoded once per URL,
  ``Content-Length`` added per body); no ``Accept-Encoding`` is sent, so replies come
  uncompressed;
- a reply is parsed for its status line, ``Content-Length`` and ``Connection: close``
  only; a reply without ``Content-Length`` (chunked) is a protocol error: the dispatcher
  always sends one;
- one request at a time per connection (no pipelining); a connection whose request
  failed, timed out or was cancelled is closed, never reused;
- timeouts: every request has a deadline; one sweeper task per ``Client`` aborts the
  connections past theirs every ``SWEEP_S`` (a timer per request would cost more than
  the rest of the request at these rates), so a timeout fires up to ``SWEEP_S`` late;
- ``Pool``: up to ``size`` keep-alive connections shared by many callers, opened when
  needed, reused most recently used first (the rest go idle and the server's idle
  timeout closes them: a pool connection the server closed is forgotten at once, and a
  request that finds its reused connection closed before any reply byte is retried once
  on a new one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

SWEEP_S = 0.25
MAX_HEAD_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 10.0


class HttpError(Exception):
    """The request failed: connection refused, reset or closed, a timeout, bad HTTP."""


class Closed(HttpError):
    """The connection closed before any byte of the reply (a reused one may be stale)."""


class Request:
    """A request's pre-encoded head: ``method target`` and the fixed headers."""

    __slots__ = ("_with_body", "_without_body")

    def __init__(self, method: str, target: str, host: str, content_type: str = "") -> None:
        head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        self._with_body = (head + "Content-Length: ").encode("ascii")
        self._without_body = (head + "\r\n").encode("ascii")

    def encode(self, body: bytes | None = None) -> bytes:
        if body is None:
            return self._without_body
        return b"%s%d\r\n\r\n%s" % (self._with_body, len(body), body)


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self, client: Client, on_lost: Callable[[Connection], None] | None = None) -> None:
        self.client = client
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self.used = 0  # requests answered on it
        self.deadline = 0.0
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = -1  # the whole reply's length once its head is parsed
        self._body_at = 0
        self._status = 0
        self._got_bytes = False

    # -------------------------------------------------------------- protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._fail(Closed("connection closed") if not self._got_bytes else HttpError("cut"))
        if self.on_lost is not None:
            self.on_lost(self)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: the server closes or misbehaves
            self.abort()
            return
        self._got_bytes = True
        if self._chunks:  # the rest of a reply that came in pieces
            self._chunks.append(data)
            self._have += len(data)
            if self._need < 0:
                data = b"".join(self._chunks)
                self._chunks = [data]
                if not self._parse_head(data):  # a bad head failed the request
                    return
            if self._need < 0 or self._have < self._need:
                return
            data = b"".join(self._chunks)
        else:  # the common case: the whole reply in one piece
            self._have = len(data)
            if not self._parse_head(data):
                return
            if self._need < 0 or self._have < self._need:
                self._chunks.append(data)
                return
        if self._have > self._need:
            self._fail(HttpError("more bytes than the reply"))
            return
        status, body = self._status, data[self._body_at : self._need]
        waiter = self._waiter
        self._reset()
        self.used += 1
        if not self.keep_alive:
            self.abort()
        if not waiter.done():
            waiter.set_result((status, body))

    def _parse_head(self, data: bytes) -> bool:
        """Reads the head when complete; False when it is bad (the request failed)."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_HEAD_BYTES:
                self._fail(HttpError("reply head too long"))
                return False
            return True
        head = data[:end].lower()
        try:
            if not head.startswith(b"http/1.1 "):
                raise ValueError(head[:40])
            self._status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise ValueError("no Content-Length")
            stop = head.find(b"\r\n", at + 17)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        except ValueError as exc:
            self._fail(HttpError(f"bad reply head: {exc}"))
            return False
        self.keep_alive = b"\r\nconnection: close" not in head
        self._body_at = end + 4
        self._need = self._body_at + length
        return True

    # -------------------------------------------------------------- requests

    def request(self, data: bytes, timeout_s: float) -> asyncio.Future[tuple[int, bytes]]:
        """Sends one request; the future is (status, body) or fails with ``HttpError``."""
        loop = self.client.loop
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        if self.closed or self.transport is None or self._waiter is not None:
            waiter.set_exception(Closed("connection closed or busy"))
            return waiter
        self._waiter = waiter
        self._got_bytes = False
        self.deadline = loop.time() + timeout_s
        self.client.busy.add(self)
        self.transport.write(data)
        return waiter

    def timed_out(self) -> None:
        self._fail(HttpError("timed out"))

    def abort(self) -> None:
        """Closed at once (no wait for the write buffer); a request in flight fails."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._fail(Closed("aborted") if not self._got_bytes else HttpError("aborted"))

    def _reset(self) -> None:
        self.client.busy.discard(self)
        self._waiter = None
        self._chunks = []
        self._have = 0
        self._need = -1

    def _fail(self, exc: HttpError) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        self._reset()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        if not waiter.done():
            waiter.set_exception(exc)


class Client:
    """Connections to one ``host:port``, and the sweeper that times their requests out.
    Start ``sweep()`` as a task for timeouts to fire."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.loop = asyncio.get_running_loop()
        self.busy: set[Connection] = set()
        self.connects = 0
        self.timeouts = 0
        self.refused = 0  # connects refused: nothing listens there (a server gone)

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"

    async def connect(self, on_lost: Callable[[Connection], None] | None = None) -> Connection:
        conn = Connection(self, on_lost)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self.loop.create_connection(lambda: conn, self.host, self.port)
        except ConnectionRefusedError as exc:
            self.refused += 1
            raise HttpError(f"connect: {exc!r}") from exc
        except (OSError, TimeoutError) as exc:
            raise HttpError(f"connect: {exc!r}") from exc
        self.connects += 1
        return conn

    async def sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = self.loop.time()
            late = [c for c in self.busy if c.deadline < now]
            for conn in late:
                self.timeouts += 1
                conn.timed_out()


async def send(conn: Connection, data: bytes, timeout_s: float) -> tuple[int, bytes]:
    """One request on ``conn``; on cancellation the connection is closed (its reply
    would arrive for a request nobody waits for)."""
    waiter = conn.request(data, timeout_s)
    try:
        return await waiter
    except asyncio.CancelledError:
        conn.abort()
        raise


class Pool:
    """Up to ``size`` keep-alive connections shared by callers, one request each at a
    time; a caller waits for a free connection when all are busy (within its request's
    timeout). ``waits`` collects how long each caller that waited did, while
    ``timing_waits`` is set."""

    def __init__(self, client: Client, size: int) -> None:
        self.client = client
        self.size = size
        self.open = 0
        self.idle: list[Connection] = []  # most recently used last
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()
        self.retries = 0
        self.waited = 0
        self.wait_timeouts = 0
        self.timing_waits = False
        self.waits: list[float] = []

    async def request(self, data: bytes, timeout_s: float) -> tuple[int, bytes]:
        """(status, body); ``HttpError`` when it fails or does not end within
        ``timeout_s`` (the wait for a connection included)."""
        loop = self.client.loop
        deadline = loop.time() + timeout_s
        for attempt in range(2):
            conn = await self._acquire(deadline)
            reused = conn.used > 0
            try:
                result = await send(conn, data, max(0.0, deadline - loop.time()))
            except Closed:
                self._release(conn)
                if reused and attempt == 0:  # the server closed it while idle: once more
                    self.retries += 1
                    continue
                raise
            except BaseException:
                self._release(conn)
                raise
            self._release(conn)
            return result
        raise AssertionError("unreachable")

    async def _acquire(self, deadline: float) -> Connection:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    return conn
            if self.open < self.size:
                self.open += 1
                try:
                    return await self.client.connect(self._lost)
                except BaseException:
                    self.open -= 1
                    self._wake(None)
                    raise
            got = await self._wait(deadline)
            if got is not None:
                return got
            # None: a connection closed, there is room to open one: loop again.

    async def _wait(self, deadline: float) -> Connection | None:
        """A connection another caller hands over (None: room to open one)."""
        self.waited += 1
        loop = self.client.loop
        started = loop.time()
        waiter: asyncio.Future[Connection | None] = loop.create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                got = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():  # handed over as it was cancelled
                handed = waiter.result()
                if handed is not None:
                    self._release(handed)
                else:
                    self._wake(None)
            if isinstance(exc, TimeoutError):
                self.wait_timeouts += 1
                raise HttpError("timed out waiting for a pool connection") from exc
            raise
        if self.timing_waits:
            self.waits.append(loop.time() - started)
        return got

    def _release(self, conn: Connection) -> None:
        if conn.closed:
            return  # _lost counts it (connection_lost comes a turn later)
        if not self._wake(conn):
            self.idle.append(conn)

    def _wake(self, conn: Connection | None) -> bool:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _lost(self, conn: Connection) -> None:
        self.open -= 1
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        self._wake(None)
