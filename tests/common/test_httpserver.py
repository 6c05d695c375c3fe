"""The connection layer (``dispatcher.common.httpserver``) with raw sockets against a
real listener serving a small app: timeouts, the cap, JSON errors for malformed HTTP.

Timeouts are a fraction of a second so the tests are quick; no test asserts how long
anything took, only what came back and in which order (a slow machine makes a timeout
fire later, never sooner). ``SAFETY_S`` only stops a test that would otherwise hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from dispatcher.common.clock import FakeClock
from dispatcher.common.httpserver import (
    DEFAULT_MAX_CONNECTIONS,
    FD_RESERVE,
    AcceptErrorLog,
    ConnectionLimits,
    Listener,
    max_connections_for,
)

SAFETY_S = 10.0
SHORT_S = 0.3
LONG_S = 30.0
"""A timeout no test waits for: if it fired, the test would time out instead."""


# ----------------------------------------------------------------- the app


@dataclass
class Events:
    seen: list[str] = field(default_factory=list)


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
        await asyncio.sleep(float(request.query["s"]))
        events.seen.append("wait_done")
        return web.json_response({"waited": True})

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_post("/echo", echo)
    app.router.add_get("/wait", wait)
    return app


@dataclass
class Served:
    listener: Listener
    events: Events
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
        listener = Listener(runner, limits, host="127.0.0.1", port=0, clock=FakeClock())
        await listener.start()
        served = Served(listener, events)
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
    reply = await conn.reply()
    assert (reply.status, reply.code) == (408, "request_timeout"), reply
    assert "head" in reply.body["error"]["message"]
    assert await conn.closed()


async def test_a_connection_that_sends_nothing_is_closed_without_a_reply(serve: Serve) -> None:
    served = await serve(header_timeout_s=SHORT_S)
    conn = await served.connect()
    assert await conn.closed()
    await served.until(lambda: served.listener.guard.open_count == 0, "forgotten")


async def test_a_body_that_does_not_complete_in_time_is_408_and_its_handler_stops(
    serve: Serve,
) -> None:
    served = await serve(body_timeout_s=SHORT_S)
    conn = await served.connect()
    await conn.send(post_head("/echo", "Content-Length: 100") + b"{")
    reply = await conn.reply()
    assert (reply.status, reply.code) == (408, "request_timeout"), reply
    assert "body" in reply.body["error"]["message"]
    assert await conn.closed()
    await served.until(lambda: "echo_cancelled" in served.events.seen, "the handler is stopped")
    assert served.events.seen == ["echo_started", "echo_cancelled"]


async def test_a_kept_alive_connection_is_closed_quietly_once_idle(serve: Serve) -> None:
    """The idle timeout, not the head's: the head timeout is too long to be what fires."""
    served = await serve(idle_timeout_s=SHORT_S)
    conn = await served.connect()
    await conn.send(get("/ok"))
    assert (await conn.reply()).status == 200
    assert await conn.closed()


async def test_the_next_request_on_a_kept_alive_connection_has_its_own_head_timeout(
    serve: Serve,
) -> None:
    served = await serve(header_timeout_s=SHORT_S)
    conn = await served.connect()
    await conn.send(get("/ok"))
    assert (await conn.reply()).status == 200
    await conn.send(b"GET /ok HT")
    reply = await conn.reply()
    assert (reply.status, reply.code) == (408, "request_timeout"), reply


async def test_a_request_in_progress_outlives_every_timeout(serve: Serve) -> None:
    """A long poll: the handler waits longer than the head, body and idle timeouts
    together; none of them applies while it runs."""
    served = await serve(header_timeout_s=0.1, body_timeout_s=0.1, idle_timeout_s=0.1)
    conn = await served.connect()
    await conn.send(get("/wait?s=1.0"))
    reply = await conn.reply()
    assert (reply.status, reply.body) == (200, {"waited": True})
    assert served.events.seen == ["wait_started", "wait_done"]


async def test_pipelined_requests_are_all_answered(serve: Serve) -> None:
    served = await serve(header_timeout_s=SHORT_S, idle_timeout_s=SHORT_S)
    conn = await served.connect()
    await conn.send(get("/ok") + get("/wait?s=0.5") + get("/ok"))
    assert [(await conn.reply()).status for _ in range(3)] == [200, 200, 200]
    assert await conn.closed()


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
        await poll.send(get("/wait?s=1.0"))
    await served.until(lambda: served.events.seen.count("wait_started") == 2, "both waiting")

    refused = await served.connect()
    reply = await refused.reply()
    assert (reply.status, reply.code) == (503, "unavailable"), reply
    assert reply.headers["retry-after"] == "1"
    assert await refused.closed()
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
        (None, 20_000, DEFAULT_MAX_CONNECTIONS),
        (None, 1024, 1024 - FD_RESERVE),
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
        "from dispatcher.common.httpserver import raise_fd_limit\n"
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
