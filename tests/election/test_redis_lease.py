"""The Redis lease backend against a real redis-server.

No test waits for Redis's own clock: a TTL is read back (PTTL) and an expiry is brought
forward by hand; the elector on top runs on a FakeClock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from dispatcher.common.clock import FakeClock
from dispatcher.election.elector import Elector
from dispatcher.election.redis import RedisLeaseBackend
from dispatcher.errors import LeaseBackendError
from dispatcher.settings import ElectionSettings
from tests.redis_server import RedisServer

GUARD_S = 10.0
"""Only keeps a broken test from hanging on real I/O to Redis; never a measure."""


@pytest.fixture
async def backends(redis_server: RedisServer) -> AsyncIterator[list[RedisLeaseBackend]]:
    made = [RedisLeaseBackend.from_url(redis_server.url, timeout_s=GUARD_S) for _ in range(2)]
    try:
        yield made
    finally:
        for backend in made:
            await backend.close()


async def test_acquire_renew_and_exclusion(backends: list[RedisLeaseBackend]) -> None:
    a, b = backends
    first = await a.acquire_or_renew(identity="a", url="http://a", lease_duration_s=5)
    assert first is not None
    assert (first.holder, first.url) == ("a", "http://a")
    assert first.epoch >= int(time.time() * 1000) - 60_000, "floored at Redis's clock"
    seen = await b.acquire_or_renew(identity="b", url="http://b", lease_duration_s=5)
    assert seen == first, "b must see a's record, not take the lease"
    again = await a.acquire_or_renew(identity="a", url="http://a", lease_duration_s=5)
    assert again == first  # renewed: the same term


async def test_only_the_holder_extends_or_releases(
    backends: list[RedisLeaseBackend],
    redis_server: RedisServer,
) -> None:
    a, b = backends
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        first = await a.acquire_or_renew(identity="a", url="http://a", lease_duration_s=5)
        assert first is not None
        assert 0 < await client.pttl(a.lease_key) <= 5000, "the lease lasts what was asked"
        await b.acquire_or_renew(identity="b", url="http://b", lease_duration_s=60)
        assert await client.pttl(a.lease_key) <= 5000, "a non-holder extended the lease"
        await b.release(identity="b")  # not the holder: nothing happens
        assert await client.exists(a.lease_key)
        await a.acquire_or_renew(identity="a", url="http://a", lease_duration_s=30)
        assert await client.pttl(a.lease_key) > 5000, "the holder's renewal extends it"
        # Its TTL runs out, brought forward: a TTL in the past ends the key at once (the
        # TTL was read back above; how Redis expires a key is Redis's business).
        await client.pexpire(a.lease_key, 0)
        assert not await client.exists(a.lease_key)
    finally:
        await client.aclose()
    taken = await b.acquire_or_renew(identity="b", url="http://b", lease_duration_s=5)
    assert taken is not None
    assert taken.holder == "b", "the lease expired by its TTL"
    assert taken.epoch > first.epoch
    await b.release(identity="b")
    back = await a.acquire_or_renew(identity="a", url="http://a", lease_duration_s=5)
    assert back is not None
    assert back.holder == "a"
    assert back.epoch > taken.epoch, "every term has a higher epoch"


async def test_epochs_stay_above_any_seen_after_redis_loses_its_data(
    backends: list[RedisLeaseBackend],
    redis_server: RedisServer,
) -> None:
    """Agents ignore epochs lower than the highest they saw: a Redis restarted without
    its data must not start counting terms from 1 again."""
    a, _ = backends
    first = await a.acquire_or_renew(identity="a", url="http://a", lease_duration_s=5)
    assert first is not None
    redis_server.stop()
    redis_server.start()  # no persistence: every key is gone
    # The pooled connection died with the server: the call is retried once on a fresh
    # one, so the first attempt after the restart already succeeds.
    again = await a.acquire_or_renew(identity="a", url="http://a", lease_duration_s=5)
    assert again is not None
    assert again.epoch > first.epoch


async def test_an_unreachable_redis_is_a_lease_backend_error(
    backends: list[RedisLeaseBackend],
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    with pytest.raises(LeaseBackendError):
        await backends[0].acquire_or_renew(identity="a", url="http://a", lease_duration_s=5)


async def test_a_leader_steps_down_by_its_renew_deadline_when_redis_stops(
    backends: list[RedisLeaseBackend],
    redis_server: RedisServer,
) -> None:
    """The elector on fake time, its calls to a real Redis: whatever each failing call
    takes, the leader may not act past its deadline, and says so within one attempt's
    timeout after it."""
    settings = ElectionSettings(lease_duration_s=15, renew_deadline_s=10, retry_period_s=2)
    clock = FakeClock()
    started, stopped = asyncio.Event(), asyncio.Event()
    elector = Elector(
        backend=backends[0], identity="a", url="http://a", settings=settings,
        clock=clock, on_started_leading=lambda epoch: started.set(),
        on_stopped_leading=stopped.set,
    )  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.create_task(elector.run(stop))
    try:
        async with asyncio.timeout(GUARD_S):
            await started.wait()
        renewed_at = clock.monotonic()  # the clock has not moved since the acquisition
        redis_server.stop()
        await clock.run_for(settings.renew_deadline_s - 0.01)
        assert elector.is_leader()
        assert not stopped.is_set(), "stepped down before its deadline"
        await clock.run_for(0.01)
        assert not elector.is_leader(), "acting past the renew deadline"
        # The callback comes by the deadline plus at most one attempt's timeout.
        attempt_s = min(settings.renew_deadline_s, settings.retry_period_s)
        await clock.run_for(attempt_s)
        async with asyncio.timeout(GUARD_S):  # a failing call may still be unwinding
            await stopped.wait()
        assert clock.monotonic() - renewed_at == settings.renew_deadline_s + attempt_s
    finally:
        stop.set()
        await running
