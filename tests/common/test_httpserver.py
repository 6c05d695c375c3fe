"""The connection layer (``dispatcher.common.httpserver``) with raw sockets against a
real listener serving a small app: timeouts, the cap, JSON errors for malformed HTTP.

Every timer of the layer runs on the listener's ``FakeClock``: a test moves the clock
past a timeout to see it fire, and only then, so a busy machine cannot fire one early
or late. A test first waits for the server to have seen what it sent (the guard's
state), then moves time. ``SAFETY_S`` only stops a test that would otherwise hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from dispatcher.common.clock import FakeClock
from dispatcher.common.fdlimits import (
    DEFAULT_MAX_CONNECTIONS,
    FD_RESERVE,
    AcceptErrorLog,
    max_connections_for,
)
from dispatcher.common.httpserver import ConnectionLimits, Listener

SAFETY_S = 10.0
SHORT_S = 5.0
"""A timeout a test moves the fake clock past."""
LONG_S = 300.0
"""A timeout no test moves the clock past."""


# ----------------------------------------------------------------- the app


@dataclass
class Events:
    seen: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    """``/wait`` answers once this is set (a long poll the test ends)."""


def small_app(events: Events) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def echo(request: web.Request) -> web.Response:
        events.seen.append("echo_started")
        try:
            body = await request.read()
        except asyncio.CancelledError:
            events.seen.append("echo_cancelled")
            raise
        events.seen.append("echo_done")
        return web.json_response({"bytes": len(body)})

    async def wait(request: web.Request) -> web.Response:
        events.seen.append("wait_started")
        await events.release.wait()
        events.seen.append("wait_done")
        return web.json_response({"waited": True})

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_post("/echo", echo)

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.query["n"]))

    app.router.add_get("/wait", wait)
    app.router.add_get("/big", big)
    return app


@dataclass
class Served:
    listener: Listener
    events: Events
    clock: FakeClock
    conns: list[Conn] = field(default_factory=list)

    async def connect(self) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.listener.port)
        conn = Conn(reader, writer)
        self.conns.append(conn)
        return conn

    async def until(self, probe: Callable[[], bool], what: str) -> None:
        for _ in range(int(SAFETY_S / 0.01)):
            if probe():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"not within {SAFETY_S:g} s: {what}")

    def receiving_head(self) -> bool:
        return any(c.receiving_head for c in self.listener.guard.connections())

    async def past(self, seconds: float) -> None:
        """Moves the fake clock on by ``seconds`` (and lets what fired run)."""
        await self.clock.run_for(seconds)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def code(self) -> str:
        assert self.headers["content-type"].startswith("application/json"), self.headers
        assert isinstance(self.body, dict), self.body
        assert set(self.body) == {"error"}, self.body
        assert self.body["error"]["message"].strip(), self.body
        return str(self.body["error"]["code"])


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> Reply:
        """The next response (Content-Length framed)."""
        async with asyncio.timeout(SAFETY_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Reply(int(status_line.split()[1]), headers, json.loads(body) if body else None)

    async def closed(self) -> bool:
        """True when the server closes the connection (without sending anything more)."""
        async with asyncio.timeout(SAFETY_S):
            try:
                return await self.reader.read() == b""
            except ConnectionResetError:
                return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[tuple[web.AppRunner, Served]] = []

    async def start(
        *,
        header_timeout_s: float = LONG_S,
        body_timeout_s: float = LONG_S,
        idle_timeout_s: float = LONG_S,
        max_connections: int = 100,
    ) -> Served:
        events = Events()
        runner = web.AppRunner(small_app(events), access_log=None)
        await runner.setup()
        limits = ConnectionLimits(
            header_timeout_s=header_timeout_s,
            body_timeout_s=body_timeout_s,
            idle_timeout_s=idle_timeout_s,
            max_connections=max_connections,
        )
        clock = FakeClock()
        listener = Listener(runner, limits, host="127.0.0.1", port=0, clock=clock)
        await listener.start()
        served = Served(listener, events, clock)
        runners.append((runner, served))
        return served

    yield start
    for runner, served in runners:
        for conn in served.conns:
            await conn.close()
        served.listener.close()
        await runner.cleanup()


def get(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: test", *extra, "", ""]).encode()


def post_head(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: test", *extra, "", ""]).encode()


# ------------------------------------------------------- malformed HTTP


BIG = b"a" * 9000
MALFORMED = {
    "request-line": (b"GARBAGE\r\n\r\n", 400, "invalid_request"),
    "header-too-long": (get("/ok", "X-Big: " + BIG.decode()), 431, "headers_too_large"),
    "url-too-long": (get("/" + BIG.decode()), 431, "headers_too_large"),
    "too-many-headers": (get("/ok", *(f"X-{i}: 1" for i in range(200))), 431, "headers_too_large"),
    "header-name": (get("/ok", "Bad Header: 1"), 400, "invalid_request"),
    "chunk-size": (
        post_head("/echo", "Transfer-Encoding: chunked") + b"ZZ\r\nabc\r\n0\r\n\r\n",
        400,
        "invalid_request",
    ),
    "two-lengths": (
        post_head("/echo", "Content-Length: 1", "Content-Length: 2") + b"ab",
        400,
        "invalid_request",
    ),
    "unknown-encoding": (
        post_head("/echo", "Content-Encoding: br", "Content-Length: 3") + b"abc",
        400,
        "invalid_request",
    ),
}


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"), list(MALFORMED.values()), ids=list(MALFORMED)
)
async def test_malformed_http_is_answered_with_the_json_error_body_and_closed(
    serve: Serve, request_bytes: bytes, status: int, code: str
) -> None:
    served = await serve()
    conn = await served.connect()
    await conn.send(request_bytes)
    reply = await conn.reply()
    assert (reply.status, reply.code) == (status, code), reply
    assert reply.headers["x-request-id"]
    assert await conn.closed()


async def test_a_bad_chunk_after_the_head_is_400_at_once_and_the_handler_is_stopped(
    serve: Serve,
) -> None:
    """The parser fails inside a body the handler is waiting for: without the layer, the
    handler would wait for the rest for ever (here: until the body timeout, not reached)."""
    served = await serve()
    conn = await served.connect()
    await conn.send(post_head("/echo", "Transfer-Encoding: chunked") + b"3\r\nabc\r\n")
    await served.until(lambda: "echo_started" in served.events.seen, "the handler reads")
    await conn.send(b"ZZ\r\n")
    reply = await conn.reply()
    assert (reply.status, reply.code) == (400, "invalid_request"), reply
    assert "chunk" in reply.body["error"]["message"]
    assert await conn.closed()
    await served.until(lambda: "echo_cancelled" in served.events.seen, "the handler is stopped")
    assert served.events.seen == ["echo_started", "echo_cancelled"]


async def test_a_good_chunked_body_is_read(serve: Serve) -> None:
    served = await serve(header_timeout_s=SHORT_S, body_timeout_s=SHORT_S)
    conn = await served.connect()
    await conn.send(post_head("/echo", "Transfer-Encoding: chunked") + b"3\r\nabc\r\n0\r\n\r\n")
    reply = await conn.reply()
    assert (reply.status, reply.body) == (200, {"bytes": 3})
    await conn.close()


# ------------------------------------------------------------- timeouts


async def test_a_head_that_does_not_complete_in_time_is_answered_408(serve: Serve) -> None:
    served = await serve(header_timeout_s=SHORT_S)
    conn = await served.connect()
    await conn.send(b"GET /ok HTTP/1.1\r\nHo")
    await served.until(served.receiving_head, "the server reads the first bytes")
    await served.past(SHORT_S - 0.1)
    assert served.listener.guard.open_count == 1, "not before the timeout"
    await served.past(0.1)
    reply = await conn.reply()
    assert (reply.status, reply.code) == (408, "request_timeout"), reply
    assert "head" in reply.body["error"]["message"]
    assert await conn.closed()


async def test_a_connection_that_sends_nothing_is_closed_without_a_reply(serve: Serve) -> None:
    served = await serve(header_timeout_s=SHORT_S)
    conn = await served.connect()
    await served.until(lambda: served.listener.guard.open_count == 1, "accepted")
    await served.past(SHORT_S)
    assert await conn.closed()
    await served.until(lambda: served.listener.guard.open_count == 0, "forgotten")


async def test_a_body_that_does_not_complete_in_time_is_408_and_its_handler_stops(
    serve: Serve,
) -> None:
    served = await serve(body_timeout_s=SHORT_S)
    conn = await served.connect()
    await conn.send(post_head("/echo", "Content-Length: 100") + b"{")
    await served.until(lambda: "echo_started" in served.events.seen, "the handler reads")
    await served.past(SHORT_S)
    reply = await conn.reply()
    assert (reply.status, reply.code) == (408, "request_timeout"), reply
    assert "body" in reply.body["error"]["message"]
    assert await conn.closed()
    await served.until(lambda: "echo_cancelled" in served.events.seen, "the handler is stopped")
    assert served.events.seen == ["echo_started", "echo_cancelled"]


async def test_a_kept_alive_connection_is_closed_quietly_once_idle(serve: Serve) -> None:
    """The idle timeout, not the head's: the head timeout is too long to be what fires."""
    served = await serve(idle_timeout_s=SHORT_S)
    guard = served.listener.guard
    conn = await served.connect()
    await conn.send(get("/ok"))
    assert (await conn.reply()).status == 200
    await served.until(lambda: guard.idle_count == 1, "idle after its response")
    await served.past(SHORT_S - 0.1)
    assert guard.open_count == 1, "not before the idle timeout"
    await served.past(0.1)
    assert await conn.closed()


async def test_the_next_request_on_a_kept_alive_connection_has_its_own_head_timeout(
    serve: Serve,
) -> None:
    served = await serve(header_timeout_s=SHORT_S)
    conn = await served.connect()
    await conn.send(get("/ok"))
    assert (await conn.reply()).status == 200
    await served.past(SHORT_S)  # idle: no head timeout runs between requests
    await conn.send(b"GET /ok HT")
    await served.until(served.receiving_head, "the server reads the next head")
    await served.past(SHORT_S)
    reply = await conn.reply()
    assert (reply.status, reply.code) == (408, "request_timeout"), reply


async def test_a_request_in_progress_outlives_every_timeout(serve: Serve) -> None:
    """A long poll: the handler waits longer than the head, body and idle timeouts
    together; none of them applies while it runs."""
    served = await serve(header_timeout_s=SHORT_S, body_timeout_s=SHORT_S, idle_timeout_s=SHORT_S)
    conn = await served.connect()
    await conn.send(get("/wait"))
    await served.until(lambda: "wait_started" in served.events.seen, "the handler waits")
    await served.past(10 * SHORT_S)
    served.events.release.set()
    reply = await conn.reply()
    assert (reply.status, reply.body) == (200, {"waited": True})
    assert served.events.seen == ["wait_started", "wait_done"]


async def test_pipelined_requests_are_all_answered(serve: Serve) -> None:
    served = await serve(header_timeout_s=SHORT_S, idle_timeout_s=SHORT_S)
    conn = await served.connect()
    await conn.send(get("/ok") + get("/wait") + get("/ok"))
    await served.until(lambda: "wait_started" in served.events.seen, "the second runs")
    await served.past(10 * SHORT_S)
    served.events.release.set()
    assert [(await conn.reply()).status for _ in range(3)] == [200, 200, 200]
    await served.until(lambda: served.listener.guard.idle_count == 1, "idle at last")
    await served.past(SHORT_S)
    assert await conn.closed()


# ------------------------------------------------------ clients that do not read


BIG_BODY = 4_000_000
"""Far above the transport's high-water mark and the sockets' buffers: writing pauses."""


async def raw_non_reader(served: Served) -> socket.socket:
    """A client with a tiny receive buffer that asks for a big reply and reads nothing."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", served.listener.port))
    await loop.sock_sendall(sock, get(f"/big?n={BIG_BODY}"))
    return sock


def writing_paused(served: Served) -> bool:
    return any(c.writing_paused for c in served.listener.guard.connections())


def read_available(sock: socket.socket, limit: int = 1 << 30) -> int | None:
    """Bytes read without waiting (up to about ``limit``); None at EOF or reset."""
    got = 0
    try:
        while got < limit:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return None
            got += len(chunk)
        return got
    except BlockingIOError:
        return got
    except ConnectionError:
        return None


async def test_a_reply_nobody_reads_is_aborted_after_the_write_stall(serve: Serve) -> None:
    """Before: the handler waited in drain for ever, busy (never timed out or evicted),
    and closing would have waited for the buffer to empty: the socket stayed open."""
    served = await serve(body_timeout_s=SHORT_S)
    guard = served.listener.guard
    with await raw_non_reader(served) as sock:
        await served.until(lambda: writing_paused(served), "the server's writing paused")
        assert guard.idle_count == 0, "busy: the cap could not evict it"
        with capture_logs() as logs:
            await served.past(SHORT_S - 0.1)
            assert guard.open_count == 1, "not before the bound"
            await served.past(0.1)
            await served.until(lambda: guard.open_count == 0, "aborted")
        await served.until(lambda: read_available(sock) is None, "the socket closed")
    assert [e["event"] for e in logs if e["event"] == "write_stalled"] == ["write_stalled"]


async def test_a_slow_but_steady_reader_is_never_cut(serve: Serve) -> None:
    """Each bound sees some bytes sent: it restarts, however long the whole reply takes
    (here about 20 bounds; writing stays paused nearly throughout, so a bound that did
    not restart on progress would cut it)."""
    served = await serve(body_timeout_s=SHORT_S)
    guard = served.listener.guard
    step = BIG_BODY // 20
    with await raw_non_reader(served) as sock:
        await served.until(lambda: writing_paused(served), "the server's writing paused")
        received = 0
        async with asyncio.timeout(SAFETY_S):
            while received < BIG_BODY:
                got = read_available(sock, limit=step)
                assert got is not None, f"cut after {received} bytes"
                received += got
                if got < step:
                    await asyncio.sleep(0.001)  # real time for the sockets to move bytes
                    continue
                await served.past(SHORT_S * 0.9)
        assert guard.open_count == 1
    assert served.clock.monotonic() - 1000.0 > 10 * SHORT_S


# ------------------------------------------------------------------ the cap


async def test_at_the_cap_a_new_connection_closes_the_one_idle_the_longest(serve: Serve) -> None:
    served = await serve(max_connections=3)
    guard = served.listener.guard
    first = await served.connect()
    await served.until(lambda: guard.open_count == 1, "first accepted")
    second = await served.connect()
    await served.until(lambda: guard.open_count == 2, "second accepted")
    third = await served.connect()
    await served.until(lambda: guard.open_count == 3, "third accepted")
    # The first answers a request: now the second has been idle the longest.
    await first.send(get("/ok"))
    assert (await first.reply()).status == 200

    fourth = await served.connect()
    assert await second.closed()
    await fourth.send(get("/ok"))
    assert (await fourth.reply()).status == 200
    fifth = await served.connect()
    assert await third.closed()
    await fifth.send(get("/ok"))
    assert (await fifth.reply()).status == 200
    await first.send(get("/ok"))
    assert (await first.reply()).status == 200, "the first, busy in between, was kept"
    assert (guard.evicted, guard.refused) == (2, 0)
    for conn in (first, fourth, fifth):
        await conn.close()
    await served.until(lambda: guard.open_count == 0, "every connection forgotten")


async def test_at_the_cap_with_every_connection_in_a_request_a_new_one_gets_503(
    serve: Serve,
) -> None:
    served = await serve(max_connections=2)
    polls = [await served.connect() for _ in range(2)]
    for poll in polls:
        await poll.send(get("/wait"))
    await served.until(lambda: served.events.seen.count("wait_started") == 2, "both waiting")

    refused = await served.connect()
    reply = await refused.reply()
    assert (reply.status, reply.code) == (503, "unavailable"), reply
    assert reply.headers["retry-after"] == "1"
    assert await refused.closed()
    served.events.release.set()
    for poll in polls:
        assert (await poll.reply()).status == 200, "the requests in progress are not hurt"
    assert served.listener.guard.refused == 1


# --------------------------------------------------------- accept errors


def test_accept_errors_are_logged_once_per_interval_with_their_count() -> None:
    clock = FakeClock()
    passed_on: list[dict[str, Any]] = []
    handler = AcceptErrorLog(
        clock=clock, interval_s=10.0, previous=lambda _loop, context: passed_on.append(context)
    )
    loop = asyncio.new_event_loop()
    emfile = {
        "message": "socket.accept() out of system resource",
        "exception": OSError(errno.EMFILE, "Too many open files"),
    }
    try:
        with capture_logs() as logs:
            for _ in range(500):
                handler(loop, emfile)
            clock.advance(9.0)
            handler(loop, emfile)
            clock.advance(1.0)
            handler(loop, emfile)
            handler(loop, {"message": "something else", "exception": ValueError("x")})
    finally:
        loop.close()
    failed = [e for e in logs if e["event"] == "accept_failed"]
    assert [(e["error"], e["failures"]) for e in failed] == [("EMFILE", 1), ("EMFILE", 501)]
    assert [c["message"] for c in passed_on] == ["something else"]


# -------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("configured", "soft", "expected"),
    [
        (None, 1_048_576, DEFAULT_MAX_CONNECTIONS),
        (None, 30_000, DEFAULT_MAX_CONNECTIONS),
        (None, 20_000, 20_000 - FD_RESERVE),
        (None, 4096, 4096 - FD_RESERVE),
        (None, 1024, 256),
        (None, 256, 64),
        (None, 512, 128),
        (50_000, 1024, 50_000),
        (5, 1024, 5),
    ],
)
def test_the_connection_cap_follows_the_file_descriptor_limit_unless_configured(
    configured: int | None, soft: int, expected: int
) -> None:
    assert max_connections_for(configured, soft) == expected


def test_the_file_descriptor_soft_limit_is_raised_to_the_hard_one() -> None:
    """In a child whose soft limit is lowered (the test process's own is left alone)."""
    script = (
        "import resource\n"
        "from dispatcher.common.fdlimits import raise_fd_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "got = raise_fd_limit()\n"
        "print(got.before, got.soft, got.hard == hard, got.error,"
        " resource.getrlimit(resource.RLIMIT_NOFILE)[0] == got.soft)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    assert out[0] == "64"
    assert int(out[1]) > 64
    assert out[2:] == ["True", "None", "True"]
