"""The shared state store against a real redis-server: what only Redis does (round
trips, chunks, an unreachable server, records written by hand). The contract all stores
keep (claim, load, deletes, fencing) is in test_store_contract.py.

A store that cannot be reached fails with StoreError (retry), never with Fenced (stop
leading); a store that holds unreadable records fails with StoreError too, rather than
with whatever the decoder raised.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from dispatcher.core.history import HistoryEntry
from dispatcher.core.snapshot import NodeRecord, Snapshot, StateDelta
from dispatcher.errors import Fenced, StoreError, StoreLost
from dispatcher.storage.redis import CHUNK_RECORDS, HISTORY_LOAD_KEYS, RedisStateStore
from tests.processes import free_port
from tests.redis_server import RedisServer
from tests.storage.records import (
    LEGACY_DIGEST,
    N1,
    N2,
    S1,
    as_snapshot,
    big_delta,
    deletion_of,
    full_delta,
    plain,
    view,
)


@pytest.fixture
async def redis_stores(redis_server: RedisServer) -> AsyncIterator[list[RedisStateStore]]:
    """Two store objects on the same Redis: two replicas, one after the other."""
    made = [RedisStateStore.from_url(redis_server.url, timeout_s=1.0) for _ in range(2)]
    try:
        yield made
    finally:
        for store in made:
            await store.close()


# --------------------------------------------------------------- claim/load


async def test_claim_of_an_empty_store_loads_nothing_and_sets_the_token(
    redis_stores: list[RedisStateStore],
) -> None:
    store, _ = redis_stores
    assert await store.stored_epoch() == 0
    before = store.round_trips
    snapshot = await store.claim(epoch=5)
    assert view(snapshot) == view(Snapshot())
    assert await store.stored_epoch() == 5
    assert store.round_trips - before == 2  # the claim script, then one pipelined load


async def test_what_one_store_writes_another_loads_with_every_field_and_the_stored_digest(
    redis_stores: list[RedisStateStore],
) -> None:
    first, second = redis_stores
    await first.claim(epoch=3)
    delta, configs = full_delta()
    before = first.round_trips
    await first.write(delta, epoch=3)
    assert first.round_trips - before == 1, "a small delta is one script call"

    loaded = await second.claim(epoch=4)

    assert view(loaded) == view(as_snapshot(delta))
    legacy = loaded.configs[LEGACY_DIGEST]
    assert legacy.digest == configs[-1].digest, "the stored digest is kept, not recomputed"
    rich = loaded.configs[configs[0].digest]
    assert rich.instances == configs[0].instances
    assert isinstance(rich.instances, tuple)
    assert rich.interval_s == 20.0
    assert rich.timeout_s == 7.5
    assert rich.weight == 2.25
    assert rich.matches({"zone": "eu-1", "disk": "ssd", "other": "x"})
    assert all(isinstance(d, frozenset) for d in loaded.sources.values())
    assert loaded.nodes[N2] == NodeRecord(labels={}, capacity=1, cordoned=True)


async def test_an_empty_delta_costs_one_round_trip_that_only_checks_the_claim(
    redis_stores: list[RedisStateStore],
) -> None:
    """The writer's idle check: it changes nothing, and finds a lost or fenced store."""
    store, other = redis_stores
    await store.claim(epoch=1)
    delta, _ = full_delta()
    await store.write(delta, epoch=1)
    before = store.round_trips
    await store.write(StateDelta(), epoch=1)
    assert store.round_trips == before + 1
    assert view(await other.claim(epoch=1)) == view(as_snapshot(delta))
    await other.claim(epoch=2)
    with pytest.raises(Fenced):
        await store.write(StateDelta(), epoch=1)


async def test_a_flushed_store_is_lost_not_fenced_and_a_claim_takes_it_back(
    redis_stores: list[RedisStateStore], redis_server: RedisServer
) -> None:
    """No fencing token at all (Redis restarted empty, or flushed) is StoreLost: the
    leader claims the store again and writes it whole; another epoch stays Fenced."""
    store, _ = redis_stores
    delta, _ = full_delta()
    await store.claim(epoch=5)
    await store.write(delta, epoch=5)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    for attempt in (StateDelta(), delta):
        with pytest.raises(StoreLost, match="LOST") as lost:
            await store.write(attempt, epoch=5)
        assert not isinstance(lost.value, Fenced)
    assert await store.stored_epoch() == 0, "a refused write set the token"
    assert view(await store.claim(epoch=5)) == view(Snapshot())
    await store.write(delta, epoch=5)
    assert view(await store.claim(epoch=5)) == view(as_snapshot(delta))


async def test_a_delta_bigger_than_a_chunk_is_written_in_several_calls_and_fully_loaded(
    redis_stores: list[RedisStateStore],
) -> None:
    first, second = redis_stores
    await first.claim(epoch=2)
    delta = big_delta(CHUNK_RECORDS // 2 + 50)  # configs and placements: two chunks in all
    assert len(delta) > CHUNK_RECORDS

    before = first.round_trips
    await first.write(delta, epoch=2)

    assert first.round_trips - before == math.ceil(len(delta) / CHUNK_RECORDS) >= 2
    loaded = await second.claim(epoch=3)
    assert view(loaded) == view(as_snapshot(delta))

    # Deleting them all is as many calls again, and leaves nothing behind.
    deletion = deletion_of(delta)
    before = second.round_trips
    await second.write(deletion, epoch=3)
    assert second.round_trips - before == math.ceil(len(delta) / CHUNK_RECORDS)
    assert view(await first.claim(epoch=4)) == view(Snapshot())


# ---------------------------------------------------------------- failures


async def test_an_unreachable_redis_is_a_store_error_not_fenced() -> None:
    store = RedisStateStore.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.3)
    try:
        for call in (
            lambda: store.claim(epoch=1),
            lambda: store.write(StateDelta(nodes={N1: None}), epoch=1),
            store.stored_epoch,
        ):
            with pytest.raises(StoreError) as failed:
                await call()
            assert not isinstance(failed.value, Fenced)
            assert str(failed.value).startswith("redis: ")
    finally:
        await store.close()


async def test_a_redis_that_goes_away_is_a_store_error_not_fenced(
    redis_stores: list[RedisStateStore],
    redis_server: RedisServer,
) -> None:
    store, _ = redis_stores
    await store.claim(epoch=1)
    redis_server.stop()
    with pytest.raises(StoreError) as failed:
        await store.write(StateDelta(nodes={N1: None}), epoch=1)
    assert not isinstance(failed.value, Fenced)


def _config_json(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "name": "tcp",
        "instances": [{"host": "a"}],
        "init_config": {},
        "interval_s": 15.0,
        "timeout_s": 10.0,
        "node_selector": {},
        "weight": 1.0,
        "digest": "d" * 32,
    }
    fields.update(changes)
    return orjson.dumps({k: v for k, v in fields.items() if v is not _MISSING})


_MISSING = object()
# (hash, stored value): each is something our own writer never produces.
CORRUPT: list[tuple[str, str, bytes]] = [
    ("config_not_json", "configs", b"{not json"),
    ("config_missing_field", "configs", _config_json(instances=_MISSING)),
    ("config_is_a_list", "configs", b"[1, 2]"),
    ("config_is_null", "configs", b"null"),
    ("config_selector_is_a_list", "configs", _config_json(node_selector=["zone", "a"])),
    ("config_init_config_is_a_string", "configs", _config_json(init_config="x")),
    ("source_not_json", "sources", b'["abc'),
    ("source_is_a_number", "sources", b"5"),
    ("source_is_a_string", "sources", b'"0123456789abcdef0123456789abcdef"'),
    ("source_is_an_object", "sources", b'{"0123456789abcdef0123456789abcdef": 1}'),
    ("node_is_a_list", "nodes", b"[]"),
    ("node_labels_is_a_list", "nodes", b'{"labels": ["zone"], "capacity": 1, "cordoned": false}'),
    ("node_capacity_not_a_number", "nodes", b'{"labels": {}, "capacity": "x", "cordoned": false}'),
    ("placement_not_utf8", "placement", b"\xff\xfe"),
]


@pytest.mark.parametrize(("part", "raw"), [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
async def test_an_unreadable_record_is_a_store_error_with_a_clear_message(
    redis_stores: list[RedisStateStore],
    redis_server: RedisServer,
    part: str,
    raw: bytes,
) -> None:
    store, _ = redis_stores
    raw_client = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw_client.hset(f"clusterchecks-dispatcher:store:{part}", "bad-record", raw)
    finally:
        await raw_client.aclose()
    with pytest.raises(StoreError) as failed:
        await store.claim(epoch=1)
    assert not isinstance(failed.value, Fenced)
    assert "the stored state is not readable" in str(failed.value)


async def test_the_error_for_an_unreadable_record_names_the_record(
    redis_stores: list[RedisStateStore],
    redis_server: RedisServer,
) -> None:
    """An operator must be able to find the bad record among thousands."""
    store, _ = redis_stores
    raw_client = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw_client.hset(
            "clusterchecks-dispatcher:store:configs", "bad-record", _config_json(instances=_MISSING)
        )
    finally:
        await raw_client.aclose()
    with pytest.raises(StoreError) as failed:
        await store.claim(epoch=1)
    message = str(failed.value)
    assert "configs" in message, message
    assert "bad-record" in message, message


# ------------------------------------------------------------------ history at a claim


async def test_every_check_s_history_is_read_in_one_round_trip_of_scripts(
    redis_stores: list[RedisStateStore],
) -> None:
    """A claim reads each held check's stream through scripts of HISTORY_LOAD_KEYS
    streams each, all in one pipeline: at 100,000 checks one XRANGE per check in a
    pipeline cost the client about 2 s. More checks than one script takes, some with no
    stream, each read back in order."""
    first, second = redis_stores
    await first.claim(epoch=1)
    configs = [plain(f"h{i}") for i in range(HISTORY_LOAD_KEYS + 2)]
    with_history = configs[::2]
    await first.write(
        StateDelta(
            configs={c.digest: c for c in configs},
            sources={S1: frozenset(c.digest for c in configs)},
            history={
                c.digest: [history_entry(f"{c.digest[:6]}-{k}", 100.0 + k) for k in range(2)]
                for c in with_history
            },
        ),
        epoch=1,
    )

    before = second.round_trips
    snapshot = await second.claim(epoch=2)
    assert second.round_trips - before == 3  # the claim script, the hashes, the streams
    assert set(snapshot.history) == {c.digest for c in with_history}
    for c in with_history:
        assert [e.run_id for e in snapshot.history[c.digest]] == [
            f"{c.digest[:6]}-0",
            f"{c.digest[:6]}-1",
        ]

    before = second.round_trips
    assert await second.load_history() == snapshot.history
    assert second.round_trips - before == 2  # the digests, then the streams


@pytest.mark.parametrize(
    "fields", [{"e": b"[1]"}, {"other": b"{}"}], ids=["not_an_entry", "no_e_field"]
)
async def test_an_unreadable_history_entry_names_its_stream_and_entry(
    redis_stores: list[RedisStateStore], redis_server: RedisServer, fields: dict[str, bytes]
) -> None:
    store, _ = redis_stores
    await store.claim(epoch=1)
    config = plain("bad-history")
    await store.write(
        StateDelta(configs={config.digest: config}, sources={S1: frozenset({config.digest})}),
        epoch=1,
    )
    stream = store.history_prefix + config.digest
    raw_client = aioredis.Redis.from_url(redis_server.url)
    try:
        entry_id = await raw_client.xadd(stream, fields)  # type: ignore[arg-type]
    finally:
        await raw_client.aclose()

    with pytest.raises(StoreError) as failed:
        await store.load_history()
    message = str(failed.value)
    assert stream in message, message
    assert repr(entry_id) in message, message
    snapshot = await store.claim(epoch=2, history=False)
    assert set(snapshot.configs) == {config.digest}, "the checks load without it"


def history_entry(run: str, at: float) -> HistoryEntry:
    return HistoryEntry(run, N1, True, (), at, 0.5, at)
