"""A follower forwarding: many held long polls at once, while the other requests it
forwards (heartbeats) still reach the leader and every long poll gets its reply; and a
leader that refused a connection, not tried again for a moment.

The leader here is a stand-in (an aiohttp app on a real loopback server) that holds
every configs request until the test releases them and answers heartbeats at once, so
that exactly ``HELD`` long polls are in flight through the follower when a heartbeat
comes. A cap on the follower's connections to the leader below ``HELD`` (it was 256)
left that heartbeat waiting for a connection until its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket

import aiohttp
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpServer

from dispatcher.api.forward import REPLY_TIMEOUT_S
from dispatcher.api.keys import CLOCK, LEADERSHIP, UNREACHABLE
from dispatcher.api.unreachable import HOLD_S, UnreachableLeaders
from dispatcher.common.clock import FakeClock
from dispatcher.election.base import LeaderInfo
from dispatcher.settings import Settings
from tests.api.conftest import API, Follower, follower_client

HELD = 300
"""Long polls in flight through the follower: over the cap of 256 it once had."""
PROMPT_S = REPLY_TIMEOUT_S / 2
"""A heartbeat forwarded while they are held answers well within the forward's timeout."""


async def test_a_heartbeat_gets_through_a_follower_holding_more_long_polls_than_it_once_could(
    aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * HELD + 200:  # each long poll: two sockets in, two out
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * HELD + 200), hard))
    release = asyncio.Event()
    held: list[str] = []
    all_held = asyncio.Event()

    async def configs(request: web.Request) -> web.Response:
        held.append(request.match_info["node"])
        if len(held) == HELD:
            all_held.set()
        await release.wait()
        return web.json_response({"last_change": 1, "epoch": 1, "configs": []})

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"node": request.match_info["node"], "held": len(held)})

    app = web.Application()
    app.router.add_get(API + "/configs/{node}", configs)
    app.router.add_post(API + "/status/{node}", status)
    leader = await aiohttp_server(app)
    follower = await follower_client(
        aiohttp_client,
        LeaderInfo("leader", str(leader.make_url("")).rstrip("/"), 1),
        settings=Settings(),
    )
    base = str(follower.client.make_url("")).rstrip("/")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def poll(i: int) -> int:
            url = f"{base}{API}/configs/node-{i}?since=0&wait_s=30"
            async with session.get(url) as reply:
                await reply.read()
                return reply.status

        polls = [asyncio.create_task(poll(i)) for i in range(HELD)]
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROMPT_S):
                    await all_held.wait()
            assert len(held) == HELD, f"{len(held)} of {HELD} long polls reached the leader"
            async with asyncio.timeout(PROMPT_S):
                async with session.post(
                    f"{base}{API}/status/node-0", json={"last_change": -1}
                ) as reply:
                    body = await reply.json()
                    assert reply.status == 200, body
            assert body == {"node": "node-0", "held": HELD}
        finally:
            release.set()
            statuses = await asyncio.gather(*polls, return_exceptions=True)
    assert statuses == [200] * HELD


def refusing_port() -> socket.socket:
    """A loopback port this test holds without listening: a connection to it is refused,
    and no other test's server can take it meanwhile (a port merely found free can be)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_a_leader_that_refused_a_connection_is_not_tried_again_for_a_moment(
    aiohttp_client: AiohttpClient,
) -> None:
    """A killed leader keeps its lease until it runs out; meanwhile each request a
    follower forwarded tried to connect, failed and logged. Now the follower answers
    503 at once for ``HOLD_S`` after a refused connection, then tries again; a new
    leader (another epoch) is tried at once."""
    down, other_down = refusing_port(), refusing_port()
    port = down.getsockname()[1]
    leader = LeaderInfo("leader", f"http://127.0.0.1:{port}", 1)
    follower = await follower_client(aiohttp_client, leader, settings=Settings())
    app = follower.client.app
    assert app is not None
    clock = app[CLOCK]
    assert isinstance(clock, FakeClock)
    heartbeat = {"last_change": -1}

    first = await follower.post(API + "/status/node-0", heartbeat)
    assert first.status == 503
    assert first.error()["code"] == "no_leader"
    assert "did not accept a connection" in first.error()["message"]
    assert first.headers["Retry-After"] == "2"

    reached: list[str] = []

    async def status(request: web.Request) -> web.Response:
        reached.append(request.match_info["node"])
        return web.json_response({"node": request.match_info["node"]})

    stand_in = web.Application()
    stand_in.router.add_post(API + "/status/{node}", status)
    runner = web.AppRunner(stand_in)
    await runner.setup()
    try:
        # The leader is back on its port (it listens now), but within the hold.
        await web.SockSite(runner, down).start()

        held = await follower.post(API + "/status/node-1", heartbeat)
        assert held.status == 503
        assert held.error()["code"] == "no_leader"
        assert "refused a connection a moment ago" in held.error()["message"]
        assert reached == [], "the follower tried the leader within the hold"
        assert app[UNREACHABLE].not_tried == 1

        clock.advance(HOLD_S)
        again = await follower.post(API + "/status/node-2", heartbeat)
        assert again.status == 200, again.text
        assert reached == ["node-2"]

        # Refused again: held again; but a leader of a newer term is tried at once.
        follower_leadership = app[LEADERSHIP]
        assert isinstance(follower_leadership, Follower)
        other = other_down.getsockname()[1]
        follower_leadership.known = LeaderInfo("leader", f"http://127.0.0.1:{other}", 1)
        assert (await follower.post(API + "/status/node-3", heartbeat)).status == 503
        follower_leadership.known = LeaderInfo("leader-2", f"http://127.0.0.1:{port}", 2)
        newer = await follower.post(API + "/status/node-4", heartbeat)
        assert newer.status == 200, newer.text
        assert reached == ["node-2", "node-4"]
    finally:
        await runner.cleanup()
        down.close()
        other_down.close()


def test_a_hold_logs_once_and_ends_when_a_request_gets_through() -> None:
    """``UnreachableLeaders`` alone: the first failure starts a hold (one log line), the
    failures of requests already under way do not start another, and a request that
    got through meanwhile (one sent before the hold) ends it at once."""
    clock = FakeClock()
    unreachable = UnreachableLeaders(clock)
    leader = LeaderInfo("leader", "http://127.0.0.1:1", 1)
    assert not unreachable.refuses(leader)
    assert unreachable.failed(leader), "the first failure starts a hold"
    assert not unreachable.failed(leader), "one under way when it began: no second line"
    assert unreachable.refuses(leader)
    assert unreachable.not_tried == 1
    unreachable.answered(leader)
    assert not unreachable.refuses(leader), "a request got through: no more hold"
    assert unreachable.failed(leader), "a new failure starts a new hold"
    clock.advance(HOLD_S - 0.01)
    assert unreachable.refuses(leader)
    clock.advance(0.01)
    assert not unreachable.refuses(leader), "the hold is over: try again"
    assert unreachable.not_tried == 2
