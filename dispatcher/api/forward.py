"""Forwarding: a follower passes a leader-only request to the leader, once.

The forwarded request carries ``X-Clusterchecks-Forwarded: 1``; a replica that gets
such a request and is not the leader answers 508 instead of forwarding again, so two
replicas that each believe the other leads cannot bounce a request between them. A
leader that does not answer gives ``503 no_leader`` with ``Retry-After``: the caller
retries, by which time the election has moved on. A leader that refused a connection is
not tried again for a moment (``unreachable``): its requests get that 503 at once.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from dispatcher import wire
from dispatcher.api.keys import CLOCK, FORWARD_SESSION, UNREACHABLE
from dispatcher.api.unreachable import UnreachableLeaders
from dispatcher.election.base import LeaderInfo
from dispatcher.errors import NoLeader

log = structlog.get_logger("dispatcher.api")

FORWARDED_HEADER = "X-Clusterchecks-Forwarded"
# What a forwarded request keeps of the caller's headers (hop-by-hop ones are dropped).
_REQUEST_HEADERS = ("Authorization", "Content-Type", "Accept", "X-Request-Id")
# What the caller gets of the leader's reply headers (the request middleware adds
# X-Clusterchecks-Leader to every reply, forwarded or not).
_REPLY_HEADERS = ("Content-Type", "Retry-After", "Allow")
CONNECT_TIMEOUT_S = 2.0
REPLY_TIMEOUT_S = 10.0


FORWARD_CONNECTIONS_LIMIT = 0
"""No cap on the connections to the leader (0: aiohttp's "unlimited"). A forwarded
request holds its connection for as long as it lasts, and an agent's long poll lasts up
to a minute: a cap of 256 let the 256 agents long-polling through this follower hold
every connection, and every other forwarded request (their heartbeats) waited for one
until its timeout (the fleet benchmark with two replicas, 500 agents on the follower:
heartbeats through it timed out, agents expired). What bounds them instead is what
bounds the requests that come in: ``--max-connections``."""


async def session_context(app: web.Application) -> AsyncIterator[None]:
    """One client session per app for forwarding, closed with the app."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=FORWARD_CONNECTIONS_LIMIT, ttl_dns_cache=30),
        auto_decompress=False,
        # The reply's bytes go to the caller as they came, without Content-Encoding: the
        # leader must not compress them (the overview would), so no Accept-Encoding.
        skip_auto_headers=("Accept-Encoding",),
    )
    app[FORWARD_SESSION] = session
    app[UNREACHABLE] = UnreachableLeaders(app[CLOCK])
    try:
        yield
    finally:
        await session.close()


async def forward(request: web.Request, leader: LeaderInfo) -> web.Response:
    """Sends the request to ``leader`` and returns its reply as this replica's."""
    unreachable = request.app[UNREACHABLE]
    if unreachable.refuses(leader):
        raise NoLeader(
            f"The leader {leader.identity} at {leader.url} refused a connection a moment "
            "ago; retry shortly."
        )
    session = request.app[FORWARD_SESSION]
    url = leader.url.rstrip("/") + request.rel_url.path_qs
    headers = {name: request.headers[name] for name in _REQUEST_HEADERS if name in request.headers}
    headers[FORWARDED_HEADER] = "1"
    body = await request.read() if request.body_exists else None
    # A long poll may wait up to a minute at the leader before answering; anything else
    # that takes longer than REPLY_TIMEOUT_S is a leader that is frozen or partitioned.
    timeout = aiohttp.ClientTimeout(
        total=_long_poll_s(request) + REPLY_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S
    )
    try:
        async with session.request(
            request.method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=timeout,
        ) as reply:
            payload = await reply.read()
            status = reply.status
            reply_headers = {
                name: reply.headers[name] for name in _REPLY_HEADERS if name in reply.headers
            }
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        # Not connected: the leader is gone (or its node); spare the loop the attempts.
        if unreachable.failed(leader):
            log.warning(
                "forward_failed",
                leader=leader.identity,
                url=url,
                error=str(exc) or type(exc).__name__,
                answered_without_trying=unreachable.not_tried,
                hold_s=unreachable.hold_s,
            )
        raise NoLeader(
            f"The leader {leader.identity} at {leader.url} did not accept a connection; "
            "retry shortly."
        ) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning(
            "forward_failed", leader=leader.identity, url=url, error=str(exc) or type(exc).__name__
        )
        raise NoLeader(
            f"The leader {leader.identity} at {leader.url} did not answer; retry shortly."
        ) from exc
    unreachable.answered(leader)
    log.debug("forwarded", leader=leader.identity, status=status)
    return web.Response(status=status, body=payload, headers=reply_headers)


def _long_poll_s(request: web.Request) -> float:
    """How long the leader may hold this request open (the leader validates it)."""
    try:
        wait_s = float(request.query.get("wait_s", "0"))
    except ValueError:
        return 0.0
    if math.isnan(wait_s):
        return 0.0
    return min(max(wait_s, 0.0), wire.MAX_WAIT_S)
