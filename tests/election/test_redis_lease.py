"""The Redis lease backend against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from dispatcher.common.clock import SystemClock
from dispatcher.election.elector import Elector
from dispatcher.election.redis import RedisLeaseBackend
from dispatcher.errors import LeaseBackendError
from dispatcher.settings import ElectionSettings
from tests.redis_server import RedisServer


@pytest.fixture
async def backends(redis_server: RedisServer) -> AsyncIterator[list[RedisLeaseBackend]]:
    made = [RedisLeaseBackend.from_url(redis_server.url, timeout_s=0.5) for _ in range(2)]
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
    first = await a.acquire_or_renew(identity="a", url="http://a", lease_duration_s=0.4)
    assert first is not None
    await b.acquire_or_renew(identity="b", url="http://b", lease_duration_s=60)  # no extend
    await b.release(identity="b")  # not the holder: nothing happens
    await asyncio.sleep(0.6)
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


@pytest.mark.timeout(20)
async def test_a_leader_steps_down_by_its_renew_deadline_when_redis_stops(
    backends: list[RedisLeaseBackend],
    redis_server: RedisServer,
) -> None:
    settings = ElectionSettings(lease_duration_s=1.5, renew_deadline_s=1.0, retry_period_s=0.25)
    started, stopped = asyncio.Event(), asyncio.Event()
    elector = Elector(
        backend=backends[0], identity="a", url="http://a", settings=settings,
        clock=SystemClock(), on_started_leading=lambda epoch: started.set(),
        on_stopped_leading=stopped.set,
    )  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.create_task(elector.run(stop))
    try:
        async with asyncio.timeout(5):
            await started.wait()
        assert elector.is_leader()
        loop = asyncio.get_running_loop()
        redis_server.stop()
        lost_at = loop.time()
        async with asyncio.timeout(5):
            await stopped.wait()
        took = loop.time() - lost_at
        assert not elector.is_leader()
        assert took <= settings.renew_deadline_s + 0.3, f"stepped down after {took:.2f}s"
    finally:
        stop.set()
        await running
