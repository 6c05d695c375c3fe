"""The Redis lease backend against a real redis-server.

No test waits for Redis's own clock: a TTL is read back (PTTL) and an expiry is brought
forward by hand; each backend's own view of the lease (how long it leaves a lost lease
to its holder) and the elector on top run on a FakeClock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from dispatcher.common.clock import FakeClock
from dispatcher.election.base import LeaseRecord
from dispatcher.election.elector import Elector
from dispatcher.election.redis import RedisLeaseBackend
from dispatcher.errors import LeaseBackendError
from dispatcher.settings import ElectionSettings
from tests.redis_server import RedisServer

GUARD_S = 10.0
"""Only keeps a broken test from hanging on real I/O to Redis; never a measure."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def backends(
    redis_server: RedisServer, clock: FakeClock
) -> AsyncIterator[list[RedisLeaseBackend]]:
    made = [
        RedisLeaseBackend.from_url(redis_server.url, timeout_s=GUARD_S, clock=clock)
        for _ in range(3)
    ]
    try:
        yield made
    finally:
        for backend in made:
            await backend.close()


async def test_acquire_renew_and_exclusion(
    backends: list[RedisLeaseBackend], clock: FakeClock
) -> None:
    a, b, _ = backends
    first = await a.acquire_or_renew(identity="a", url="http://a", lease_duration_s=5)
    assert first is not None
    assert (first.holder, first.url) == ("a", "http://a")
    assert first.epoch >= int(time.time() * 1000) - 60_000, "floored at Redis's clock"
    assert a.free_in_s(identity="a") is None, "its own lease"
    seen = await b.acquire_or_renew(identity="b", url="http://b", lease_duration_s=5)
    assert seen == first, "b must see a's record, not take the lease"
    # The PTTL b read (Redis's own time since a's write, whatever it was), from then on
    # b's (fake) clock.
    free_in = b.free_in_s(identity="b")
    assert free_in is not None
    assert 0 < free_in <= 5
    clock.advance(3)
    assert b.free_in_s(identity="b") == pytest.approx(free_in - 3)
    again = await a.acquire_or_renew(identity="a", url="http://a", lease_duration_s=5)
    assert again == first  # renewed: the same term


async def test_only_the_holder_extends_or_releases(
    backends: list[RedisLeaseBackend],
    redis_server: RedisServer,
    clock: FakeClock,
) -> None:
    a, b, _ = backends
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
        # TTL was read back above; how Redis expires a key is Redis's business). b last
        # read the lease with that TTL: by b's own clock too, it has run out.
        await client.pexpire(a.lease_key, 0)
        assert not await client.exists(a.lease_key)
        clock.advance(30)
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
    a, _, _ = backends
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


# ------------------------------------------------------ Redis loses the lease


async def take(
    backend: RedisLeaseBackend, identity: str, *, held_epoch: int = 0, lease_s: float = 15
) -> LeaseRecord | None:
    return await backend.acquire_or_renew(
        identity=identity, url=f"http://{identity}", lease_duration_s=lease_s,
        held_epoch=held_epoch,
    )  # fmt: skip


async def test_a_leader_whose_lease_redis_lost_gets_it_back_with_its_epoch(
    backends: list[RedisLeaseBackend], redis_client: aioredis.Redis
) -> None:
    a, b, c = backends
    first = await take(a, "a")
    assert first is not None
    await take(b, "b")  # b reads a's lease
    await redis_client.flushall()
    back = await take(a, "a", held_epoch=first.epoch)
    assert back == first, "the same holder and the same epoch"
    assert 0 < await redis_client.pttl(a.lease_key) <= 15_000
    counter = await redis_client.get(a.epoch_key)
    assert counter is not None
    assert int(counter) == first.epoch, "the counter was not raised to the held epoch"
    # The next term, whoever takes it, is a higher one.
    await a.release(identity="a")
    taken = await take(c, "c")
    assert taken is not None
    assert taken.holder == "c"
    assert taken.epoch > first.epoch


async def test_a_follower_that_read_the_lease_leaves_a_lost_one_to_its_holder(
    backends: list[RedisLeaseBackend], redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    a, b, _ = backends
    first = await take(a, "a")
    assert first is not None
    assert await take(b, "b") == first
    await redis_client.flushall()
    assert await take(b, "b") == first, "b took a lost lease, or forgot its holder"
    assert not await redis_client.exists(b.lease_key), "b wrote a lease for itself"
    # a gives it back on its next renewal; b reads it as before.
    assert await take(a, "a", held_epoch=first.epoch) == first
    assert await take(b, "b") == first

    # Lost again, and a never comes back: b waits a lease duration from when it found
    # the lease gone (its view of a's TTL ran out sooner), then takes a new term.
    await redis_client.flushall()
    clock.advance(1)
    found_gone = clock.monotonic()
    assert await take(b, "b") == first
    clock.advance(found_gone + 15 - 0.01 - clock.monotonic())
    assert await take(b, "b") == first
    clock.advance(0.01)
    taken = await take(b, "b")
    assert taken is not None
    assert taken.holder == "b"
    assert taken.epoch > first.epoch


async def test_a_replica_that_never_read_the_lease_takes_a_lost_one_and_the_leader_sees_it(
    backends: list[RedisLeaseBackend], redis_client: aioredis.Redis
) -> None:
    a, _, c = backends
    first = await take(a, "a")
    assert first is not None
    await redis_client.flushall()
    taken = await take(c, "c")
    assert taken is not None
    assert taken.holder == "c"
    assert taken.epoch > first.epoch, "floored at Redis's clock although the counter was lost"
    assert await take(a, "a", held_epoch=first.epoch) == taken, "a took back a held lease"


async def test_a_released_lease_is_taken_at_once_by_a_follower_that_read_it(
    backends: list[RedisLeaseBackend], redis_client: aioredis.Redis
) -> None:
    a, b, _ = backends
    first = await take(a, "a")
    assert first is not None
    assert await take(b, "b") == first
    await a.release(identity="a")
    # Released, not lost: a record without a holder, for the rest of the lease's TTL.
    assert await redis_client.exists(a.lease_key)
    taken = await take(b, "b")
    assert taken is not None
    assert taken.holder == "b"
    assert taken.epoch > first.epoch


async def test_a_lease_record_older_than_the_held_term_is_replaced_by_it(
    backends: list[RedisLeaseBackend], redis_client: aioredis.Redis
) -> None:
    """Redis restarted from an old dump holding an older record of ours: the term we
    lead goes on with its own epoch."""
    a, _, _ = backends
    first = await take(a, "a")
    assert first is not None
    old = orjson.dumps({"holder": "a", "url": "http://a", "epoch": str(first.epoch - 5)})
    await redis_client.set(a.lease_key, old, px=10_000)
    assert await take(a, "a", held_epoch=first.epoch) == first
    assert await take(a, "a", held_epoch=first.epoch) == first


async def test_an_elector_keeps_its_term_across_a_flushall(
    backends: list[RedisLeaseBackend], redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """The elector on fake time over a real Redis: a FLUSHALL between two renewals
    costs the leader nothing, and a follower never leads."""
    settings = ElectionSettings(lease_duration_s=15, renew_deadline_s=10, retry_period_s=2)
    events: list[str] = []
    a = Elector(
        backend=backends[0], identity="a", url="http://a", settings=settings, clock=clock,
        on_started_leading=lambda epoch: events.append(f"a started {epoch}"),
        on_stopped_leading=lambda: events.append("a stopped"),
    )  # fmt: skip
    b = Elector(
        backend=backends[1], identity="b", url="http://b", settings=settings, clock=clock,
        on_started_leading=lambda epoch: events.append(f"b started {epoch}"),
    )  # fmt: skip
    await a.step()
    epoch = a.epoch
    await b.step()
    for _ in range(3):
        await redis_client.flushall()
        clock.advance(settings.retry_period_s)
        await b.step()  # the follower tries first
        await a.step()
        assert a.is_leader()
        assert not b.is_leader()
    assert events == [f"a started {epoch}"]
    assert a.epoch == b.epoch == epoch
