"""The replica directory: the Redis one against a real redis-server, and the local one.

Each replica's record lives under its own key with a time-to-live; the index set is
pruned as records lapse; ages are judged by Redis's clock; a corrupt record or an
unreachable Redis fails with StoreError, never with whatever the decoder raised.

No test waits for Redis's clock: report times are checked against Redis's TIME read
around them, a time-to-live is read back (PTTL), and a lapse is brought forward by hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from dispatcher.common.clock import FakeClock
from dispatcher.errors import StoreError
from dispatcher.storage.replicas import (
    LocalReplicaDirectory,
    RedisReplicaDirectory,
    ReplicaStatus,
)
from tests.processes import free_port
from tests.redis_server import RedisServer

NAME = "cc-test"


def status(identity: str, role: str = "follower", **fields: object) -> ReplicaStatus:
    values: dict[str, object] = {
        "identity": identity,
        "role": role,
        "url": f"http://{identity}:5005",
        "status": "healthy",
        "ready": True,
        "epoch": 7,
    }
    values.update(fields)
    return ReplicaStatus(**values)  # type: ignore[arg-type]


@pytest.fixture
async def directory(redis_server: RedisServer) -> AsyncIterator[RedisReplicaDirectory]:
    d = RedisReplicaDirectory.from_url(redis_server.url, name=NAME, timeout_s=1.0)
    try:
        yield d
    finally:
        await d.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def redis_ms(raw: aioredis.Redis) -> int:
    """Redis's clock in milliseconds (TIME), the clock the directory reports by."""
    seconds, micros = await raw.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_every_published_replica_is_listed_sorted_with_its_fields(
    directory: RedisReplicaDirectory, raw: aioredis.Redis
) -> None:
    before_ms = await redis_ms(raw)
    await directory.publish(status("b", "follower", status="degraded", ready=False), ttl_s=30)
    await directory.publish(status("a", "leader"), ttl_s=30)

    records = await directory.list()
    after_ms = await redis_ms(raw)

    assert [r.status for r in records] == [
        status("a", "leader"),
        status("b", "follower", status="degraded", ready=False),
    ]
    for record in records:
        # Unix seconds, from Redis's clock; the age by the same clock.
        reported_ms = round(record.reported_at * 1000)
        assert before_ms <= reported_ms <= after_ms
        assert 0 <= round(record.age_s * 1000) <= after_ms - reported_ms


async def test_a_new_report_replaces_the_old_one(directory: RedisReplicaDirectory) -> None:
    await directory.publish(status("a", "follower", epoch=3), ttl_s=30)
    await directory.publish(status("a", "leader", epoch=4), ttl_s=30)

    [record] = await directory.list()
    assert (record.status.role, record.status.epoch) == ("leader", 4)


async def test_a_replica_that_stops_reporting_lapses_and_leaves_the_index(
    directory: RedisReplicaDirectory, raw: aioredis.Redis
) -> None:
    gone = f"{NAME}:replica:gone"
    await directory.publish(status("a"), ttl_s=30)
    await directory.publish(status("gone"), ttl_s=20)
    assert 0 < await raw.pttl(gone) <= 20_000, "the record lives for its ttl"
    # Reported 5 s ago by Redis's clock: its age is judged by that clock too.
    await raw.hset(gone, "at_ms", await redis_ms(raw) - 5000)
    ages = {r.status.identity: r.age_s for r in await directory.list()}
    assert set(ages) == {"a", "gone"}
    assert ages["gone"] >= 5.0
    assert ages["a"] < ages["gone"]

    await raw.pexpire(gone, 0)  # its ttl runs out (brought forward)

    assert [r.status.identity for r in await directory.list()] == ["a"]
    assert await raw.smembers(directory.index_key) == {b"a"}


async def test_remove_drops_a_record_at_once(
    directory: RedisReplicaDirectory, raw: aioredis.Redis
) -> None:
    await directory.publish(status("a"), ttl_s=30)
    await directory.publish(status("b"), ttl_s=30)

    await directory.remove("b")
    await directory.remove("never-there")

    assert [r.status.identity for r in await directory.list()] == ["a"]
    assert await raw.smembers(directory.index_key) == {b"a"}


async def test_records_are_kept_under_the_name_so_two_clusters_do_not_mix(
    redis_server: RedisServer,
) -> None:
    one = RedisReplicaDirectory.from_url(redis_server.url, name="one", timeout_s=1.0)
    two = RedisReplicaDirectory.from_url(redis_server.url, name="two", timeout_s=1.0)
    try:
        await one.publish(status("a"), ttl_s=30)
        await two.publish(status("b"), ttl_s=30)
        assert [r.status.identity for r in await one.list()] == ["a"]
        assert [r.status.identity for r in await two.list()] == ["b"]
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{}", b'{"role": "emperor", "url": "u", "status": "healthy", '
     b'"ready": true, "epoch": 1}', b'{"role": "leader", "url": "u", "status": "fine", '
     b'"ready": true, "epoch": 1}', b'{"role": "leader", "url": "u", "status": "healthy", '
     b'"ready": true, "epoch": "x"}'],
)  # fmt: skip
async def test_an_unreadable_record_is_left_out_and_the_others_listed(
    directory: RedisReplicaDirectory, raw: aioredis.Redis, body: bytes
) -> None:
    await directory.publish(status("a"), ttl_s=30)
    await directory.publish(status("b"), ttl_s=30)
    await raw.hset(f"{NAME}:replica:a", "status", body)

    with capture_logs() as logs:
        records = await directory.list()

    assert [r.status.identity for r in records] == ["b"]
    [warning] = [e for e in logs if e["event"] == "replica_record_unreadable"]
    assert warning["identity"] == "a"
    assert "replica record 'a'" in warning["error"]


async def test_an_unreachable_redis_is_a_store_error() -> None:
    directory = RedisReplicaDirectory.from_url(
        f"redis://127.0.0.1:{free_port()}/0", name=NAME, timeout_s=0.5
    )
    try:
        with pytest.raises(StoreError, match="publish"):
            await directory.publish(status("a"), ttl_s=30)
        with pytest.raises(StoreError, match="read"):
            await directory.list()
        with pytest.raises(StoreError, match="remove"):
            await directory.remove("a")
    finally:
        await directory.close()


async def test_the_local_directory_holds_this_replica_until_its_ttl() -> None:
    clock = FakeClock()
    directory = LocalReplicaDirectory(clock)
    assert await directory.list() == []

    await directory.publish(status("me", "leader"), ttl_s=30)
    clock.advance(12)
    [record] = await directory.list()
    assert record.status == status("me", "leader")
    assert record.age_s == 12

    clock.advance(19)
    assert await directory.list() == []

    await directory.publish(status("me"), ttl_s=30)
    await directory.remove("other")
    assert len(await directory.list()) == 1
    await directory.remove("me")
    assert await directory.list() == []
