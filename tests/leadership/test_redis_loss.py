"""Redis losing its data under a leader, in-process replicas against a real redis-server.

Two replicas, each with a lease backend and a store of its own (as two processes have),
elect a leader through Redis and keep the state there. FLUSHALL (every key gone, the
lease, its epoch counter and the store's fencing token with it) must cost the leader
nothing: its next renewal gets the lease back with the same epoch, its next write (or
its idle check, a retry period later) claims the store again and writes the whole
state, and a later failover finds every check in Redis.

Time is a FakeClock: a retry period passes when a test says so. The calls to Redis are
real I/O, so a test waits for their outcome with ``settled`` (bounded by ``GUARD_S`` of
real time, which only keeps a broken test from hanging; never a measure).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest
import redis.asyncio as aioredis

from dispatcher.common.clock import FakeClock
from dispatcher.core.model import CheckConfig, NodeName, SourceName, make_config
from dispatcher.election.redis import RedisLeaseBackend
from dispatcher.leadership import LeadershipHandler
from dispatcher.service import DispatcherService, build
from dispatcher.settings import (
    DispatchSettings,
    ElectionSettings,
    ServerSettings,
    Settings,
    StoreSettings,
)
from dispatcher.storage.redis import RedisStateStore
from tests.redis_server import RedisServer

GUARD_S = 10.0
ELECTION = ElectionSettings(
    backend="redis", lease_duration_s=15.0, renew_deadline_s=10.0, retry_period_s=2.0
)
SOURCE = SourceName("api")
N1, N2, N3 = NodeName("n1"), NodeName("n2"), NodeName("n3")


def check(label: str) -> CheckConfig:
    return make_config(name="http", instances=[{"url": f"http://{label}/healthz"}])


@dataclass
class Replica:
    name: str
    service: DispatcherService
    store: RedisStateStore
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def handler(self) -> LeadershipHandler:
        assert self.service.handler is not None
        return self.service.handler

    async def shutdown(self) -> None:
        self.stop.set()
        if self.task is not None:
            async with asyncio.timeout(GUARD_S):
                await self.task


class Pair:
    def __init__(self, redis_server: RedisServer, clock: FakeClock) -> None:
        self.url = redis_server.url
        self.clock = clock
        self.replicas: list[Replica] = []

    def add(self, name: str) -> Replica:
        settings = Settings(
            server=ServerSettings(identity=name, advertise_url=f"http://{name}.test:5005"),
            election=ELECTION,
            store=StoreSettings(backend="redis"),
            dispatch=DispatchSettings(warmup_duration_s=0.0),
        )
        backend = RedisLeaseBackend.from_url(self.url, timeout_s=GUARD_S, clock=self.clock)
        store = RedisStateStore.from_url(self.url, timeout_s=GUARD_S)
        service = build(settings, clock=self.clock, lease_backend=backend, store=store)
        service.closers.extend([backend.close, store.close])
        replica = Replica(name, service, store)
        replica.task = asyncio.create_task(replica.handler.run(replica.stop), name=name)
        self.replicas.append(replica)
        return replica

    def leaders(self) -> list[Replica]:
        return [r for r in self.replicas if r.handler.is_leader()]

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.shutdown()
            for close in replica.service.closers:
                await close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def pair(redis_server: RedisServer, clock: FakeClock) -> AsyncIterator[Pair]:
    made = Pair(redis_server, clock)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


POLL_S = 0.005


async def settled(condition: Callable[[], object], what: str) -> None:
    """Waits (real time, bounded) for the outcome of real I/O to Redis."""
    for _ in range(int(GUARD_S / POLL_S)):
        if condition():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"never happened: {what}")


async def eventually(probe: Callable[[], Awaitable[object]], what: str) -> None:
    """``settled`` for a condition read from Redis."""
    for _ in range(int(GUARD_S / POLL_S)):
        if await probe():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"never happened: {what}")


async def stored(client: aioredis.Redis, part: str) -> dict[str, str]:
    found = await client.hgetall(f"clusterchecks-dispatcher:store:{part}")
    return {str(k): str(v) for k, v in found.items()}


async def lease_epoch(client: aioredis.Redis) -> int | None:
    raw = await client.get("clusterchecks-dispatcher:lease")
    if raw is None:
        return None
    return int(orjson.loads(raw)["epoch"])


async def leader_with_checks(pair: Pair) -> tuple[Replica, Replica, dict[str, str]]:
    """Two replicas, the leader with three nodes and six placed checks written through."""
    a, b = pair.add("a"), pair.add("b")
    await settled(lambda: len(pair.leaders()) == 1, "one leader")
    [leader] = pair.leaders()
    follower = b if leader is a else a
    await settled(lambda: follower.handler.leader() is not None, "the follower sees the leader")
    dispatcher = leader.service.dispatcher
    for node in (N1, N2, N3):
        await dispatcher.node_status(node, last_change=-1)
    await dispatcher.replace_source(SOURCE, [check(f"c{i}") for i in range(6)])
    placement = {str(d): str(n) for d, n in dispatcher.state.placement.items()}
    assert len(placement) == 6
    return leader, follower, placement


async def test_a_flushall_is_found_by_the_idle_leader_and_written_back_by_the_same_term(
    pair: Pair, clock: FakeClock, redis_client: aioredis.Redis
) -> None:
    leader, follower, placement = await leader_with_checks(pair)
    epoch = leader.service.dispatcher.epoch
    assert await stored(redis_client, "placement") == placement

    await redis_client.flushall()
    assert await redis_client.dbsize() == 0
    clock.advance(ELECTION.retry_period_s)  # one renewal, one idle check of the store
    await settled(
        lambda: leader.service.health.components()["store"].message.endswith("0 deleted)"),
        "the store written again",
    )
    assert await stored(redis_client, "placement") == placement, "a check is missing"
    assert len(await stored(redis_client, "configs")) == 6
    assert set(await stored(redis_client, "nodes")) == {N1, N2, N3}
    assert int(await redis_client.get("clusterchecks-dispatcher:store:epoch") or 0) == epoch
    await settled(leader.handler.is_leader, "still leading")
    assert await lease_epoch(redis_client) == epoch, "the lease came back with another epoch"
    assert int(await redis_client.get("clusterchecks-dispatcher:epoch") or 0) >= epoch
    assert leader.handler.terms == 1
    assert follower.handler.terms == 0
    assert pair.leaders() == [leader]

    # A later failover finds every check in Redis.
    await leader.shutdown()
    clock.advance(1.2 * ELECTION.retry_period_s)
    await settled(follower.handler.is_leader, "the follower leads")
    new = follower.service.dispatcher
    assert new.epoch > epoch
    assert {str(d): str(n) for d, n in new.state.placement.items()} == placement
    assert not new.warming_up()


async def test_a_write_right_after_a_flushall_writes_the_whole_state_before_its_reply(
    pair: Pair, clock: FakeClock, redis_client: aioredis.Redis
) -> None:
    leader, follower, placement = await leader_with_checks(pair)
    epoch = leader.service.dispatcher.epoch
    await redis_client.flushall()
    started = clock.monotonic()
    extra = check("extra")
    await leader.service.dispatcher.add_to_source(SOURCE, [extra])
    assert clock.monotonic() == started, "the reply waited on the clock"
    placed = await stored(redis_client, "placement")
    assert set(placed) == {*placement, extra.digest}, "the reply came before the store had it"
    assert {d: n for d, n in placed.items() if d in placement} == placement
    assert int(await redis_client.get("clusterchecks-dispatcher:store:epoch") or 0) == epoch
    # The lease is given back at the next renewal, with the same epoch.
    clock.advance(ELECTION.retry_period_s)

    async def given_back() -> bool:
        return await lease_epoch(redis_client) is not None

    await eventually(given_back, "the lease given back")
    assert await lease_epoch(redis_client) == epoch
    assert leader.handler.is_leader()
    assert leader.handler.terms == 1
    assert follower.handler.terms == 0
