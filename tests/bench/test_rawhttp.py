"""The load generators' HTTP client (``tests.bench.rawhttp``) against a scripted server:
replies in pieces, keep-alive, ``Connection: close``, what it refuses, timeouts, the pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from tests.bench import rawhttp
from tests.bench.rawhttp import Client, HttpError, Pool, Request, send

Reply = Callable[[bytes], list[bytes] | None]
"""Given a request (head and body), the pieces of the reply to write (None: no reply)."""


def ok(body: bytes, *extra: str) -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        headers.encode(),
        body,
    )


class Server:
    """Reads requests (head, then a Content-Length body) and writes what ``reply`` says."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                for piece in self.reply(request) or []:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)  # each piece its own read on the other side
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(reply: Reply) -> AsyncIterator[tuple[Server, Client]]:
    server = Server(reply)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = Client("127.0.0.1", port)
    sweeper = asyncio.create_task(client.sweep(), name="test-sweeper")
    try:
        yield server, client
    finally:
        sweeper.cancel()
        for writer in server.writers:
            writer.close()
        listener.close()
        await listener.wait_closed()


def echo(request: bytes) -> list[bytes]:
    return [ok(request.split(b"\r\n\r\n", 1)[1])]


async def test_a_request_and_its_reply_on_a_kept_alive_connection() -> None:
    async with serving(echo) as (server, client):
        conn = await client.connect()
        post = Request("POST", "/status/a", client.authority, "application/json")
        assert await send(conn, post.encode(b'{"a":1}'), 5.0) == (200, b'{"a":1}')
        assert await send(conn, post.encode(b"{}"), 5.0) == (200, b"{}")
        assert conn.used == 2
        assert server.connections == 1
        head = server.requests[0].split(b"\r\n\r\n")[0]
        assert head.split(b"\r\n")[0] == b"POST /status/a HTTP/1.1"
        assert b"Content-Length: 7" in head
        assert b"Accept-Encoding" not in head


async def test_a_reply_in_pieces_is_put_together() -> None:
    body = b"x" * 5000
    whole = ok(body)

    def pieces(_: bytes) -> list[bytes]:
        return [whole[:10], whole[10:40], whole[40:3000], whole[3000:]]

    async with serving(pieces) as (_, client):
        conn = await client.connect()
        request = Request("GET", "/configs/a", client.authority).encode()
        assert await send(conn, request, 5.0) == (200, body)
        assert await send(conn, request, 5.0) == (200, body)


async def test_connection_close_closes_it_after_the_reply() -> None:
    async with serving(lambda _: [ok(b"{}", "Connection: close")]) as (_, client):
        conn = await client.connect()
        assert await send(conn, Request("GET", "/", client.authority).encode(), 5.0) == (200, b"{}")
        assert conn.closed


async def test_a_reply_without_content_length_fails() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    async with serving(lambda _: [chunked]) as (_, client):
        conn = await client.connect()
        with pytest.raises(HttpError, match="Content-Length"):
            await send(conn, Request("GET", "/", client.authority).encode(), 5.0)
        assert conn.closed


async def test_a_request_without_reply_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rawhttp, "SWEEP_S", 0.01)
    async with serving(lambda _: None) as (_, client):
        conn = await client.connect()
        with pytest.raises(HttpError, match="timed out"):
            await send(conn, Request("GET", "/", client.authority).encode(), 0.05)
        assert client.timeouts == 1
        assert conn.closed


async def test_a_cancelled_request_closes_its_connection() -> None:
    async with serving(lambda _: None) as (_, client):
        conn = await client.connect()
        task = asyncio.create_task(send(conn, Request("GET", "/", client.authority).encode(), 5.0))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert conn.closed


async def test_the_pool_shares_its_connections_and_callers_wait_their_turn() -> None:
    async with serving(echo) as (server, client):
        pool = Pool(client, 1)
        post = Request("POST", "/results/a", client.authority, "application/json")
        replies = await asyncio.gather(
            *(pool.request(post.encode(b"%d" % i), 5.0) for i in range(3))
        )
        assert replies == [(200, b"0"), (200, b"1"), (200, b"2")]
        assert server.connections == 1
        assert pool.waited == 2
        assert pool.open == 1


async def test_a_pool_connection_the_server_closed_is_replaced() -> None:
    async with serving(echo) as (server, client):
        pool = Pool(client, 2)
        get = Request("GET", "/", client.authority).encode()
        assert await pool.request(get, 5.0) == (200, b"")
        for writer in server.writers:  # the server's idle timeout
            writer.close()
        for _ in range(100):  # connection_lost reaches the pool a few turns later
            if pool.open == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.open == 0
        assert await pool.request(get, 5.0) == (200, b"")
        assert server.connections == 2
        assert client.connects == 2


async def test_the_wait_for_a_pool_connection_counts_in_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rawhttp, "SWEEP_S", 0.01)
    async with serving(lambda _: None) as (_, client):
        pool = Pool(client, 1)
        get = Request("GET", "/", client.authority).encode()
        first = asyncio.create_task(pool.request(get, 5.0))
        await asyncio.sleep(0.01)
        with pytest.raises(HttpError, match="waiting for a pool connection"):
            await pool.request(get, 0.05)
        assert pool.wait_timeouts == 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_a_refused_connect_is_counted_apart_from_other_failures() -> None:
    async with serving(echo) as (_, client):
        conn = await client.connect()
        assert await send(conn, Request("GET", "/", client.authority).encode(b"x"), 5.0) == (
            200,
            b"x",
        )
        assert client.refused == 0
    # The listener is closed: nothing listens on the port any more.
    with pytest.raises(HttpError, match="connect"):
        await client.connect()
    assert client.refused == 1
    assert client.connects == 1
