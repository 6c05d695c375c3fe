"""The shared state store against a real redis-server, and the same fencing rules for
the in-memory store.

A store is fenced by epoch: a claim by epoch N refuses every lower epoch from then on,
and a write is accepted only from the epoch that holds the claim. A refused call
changes nothing. A store that cannot be reached fails with StoreError (retry), never
with Fenced (stop leading); a store that holds unreadable records fails with
StoreError too, rather than with whatever the decoder raised.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

import orjson
import pytest
import redis.asyncio as aioredis

from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName, make_config
from dispatcher.core.snapshot import NodeRecord, Snapshot, StateDelta
from dispatcher.errors import Fenced, StoreError
from dispatcher.storage.base import StateStore
from dispatcher.storage.memory import MemoryStateStore
from dispatcher.storage.redis import CHUNK_RECORDS, RedisStateStore
from tests.processes import free_port
from tests.redis_server import RedisServer

S1, S2 = SourceName("s1"), SourceName("s2")
N1, N2 = NodeName("n1"), NodeName("n2")

# ------------------------------------------------------------------- helpers


def config_view(config: CheckConfig) -> tuple[object, ...]:
    """Every field (CheckConfig compares by identity)."""
    return (
        config.digest,
        config.name,
        config.instances,
        config.init_config,
        config.interval_s,
        config.timeout_s,
        dict(config.node_selector),
        config.weight,
    )


def view(snapshot: Snapshot) -> dict[str, object]:
    return {
        "configs": {d: config_view(c) for d, c in snapshot.configs.items()},
        "sources": dict(snapshot.sources),
        "placement": dict(snapshot.placement),
        "nodes": {n: (dict(r.labels), r.capacity, r.cordoned) for n, r in snapshot.nodes.items()},
    }


def rich_config() -> CheckConfig:
    """A config using every field, with nested and non-ASCII values."""
    return make_config(
        name="http",
        instances=[
            {"url": "https://shop.example/healthz", "headers": {"Host": "shop"}, "tags": ["a"]},
            {"url": "https://café.example/", "expected_status": [200, 204], "verify": False},
        ],
        init_config={"timeout": 3, "nested": {"list": [1, 2.5, None, True]}},
        interval_s=20,
        timeout_s=7.5,
        node_selector={"zone": "eu-1", "disk": "ssd"},
        weight=2.25,
    )


def plain(label: str) -> CheckConfig:
    return make_config(name="tcp", instances=[{"host": label, "port": 443}])


def full_delta() -> tuple[StateDelta, list[CheckConfig]]:
    configs = [rich_config(), plain("a"), plain("b")]
    # A config whose stored digest is not what make_config would compute today (an
    # older digest scheme): the stored digest is its identity and must be kept.
    legacy = replace(plain("legacy"), digest=Digest("0123456789abcdef" * 2))
    configs.append(legacy)
    delta = StateDelta(
        configs={c.digest: c for c in configs},
        sources={
            S1: frozenset(c.digest for c in configs[:3]),
            S2: frozenset({configs[1].digest, legacy.digest}),
        },
        placement={configs[0].digest: N1, configs[1].digest: N2, legacy.digest: N1},
        nodes={
            N1: NodeRecord(labels={"zone": "eu-1", "disk": "ssd"}, capacity=8, cordoned=False),
            N2: NodeRecord(labels={}, capacity=1, cordoned=True),
        },
    )
    return delta, configs


def as_snapshot(delta: StateDelta) -> Snapshot:
    """What a store holds after writing ``delta`` into an empty store."""
    return Snapshot(
        configs={k: v for k, v in delta.configs.items() if v is not None},
        sources={k: v for k, v in delta.sources.items() if v is not None},
        placement={k: v for k, v in delta.placement.items() if v is not None},
        nodes={k: v for k, v in delta.nodes.items() if v is not None},
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


Peek = Callable[[], Awaitable[tuple[int, set[str]]]]


@dataclass
class Subject:
    """A store under test and a way to read its token and node names without claiming
    (a claim would move the token)."""

    store: StateStore
    peek: Peek


@pytest.fixture(params=["memory", "redis"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        memory = MemoryStateStore()

        async def peek_memory() -> tuple[int, set[str]]:
            return memory.epoch, set(memory.nodes)

        yield Subject(memory, peek_memory)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    made = RedisStateStore.from_url(server.url, timeout_s=1.0)
    raw = aioredis.Redis.from_url(server.url)

    async def peek_redis() -> tuple[int, set[str]]:
        names = await raw.hkeys(made.hash_keys[3])
        return await made.stored_epoch(), {n.decode() if isinstance(n, bytes) else n for n in names}

    try:
        yield Subject(made, peek_redis)
    finally:
        await raw.aclose()
        await made.close()


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
    legacy = loaded.configs[Digest("0123456789abcdef" * 2)]
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


async def test_an_empty_delta_costs_no_round_trip(redis_stores: list[RedisStateStore]) -> None:
    store, _ = redis_stores
    await store.claim(epoch=1)
    before = store.round_trips
    await store.write(StateDelta(), epoch=1)
    assert store.round_trips == before


async def test_a_delta_bigger_than_a_chunk_is_written_in_several_calls_and_fully_loaded(
    redis_stores: list[RedisStateStore],
) -> None:
    first, second = redis_stores
    await first.claim(epoch=2)
    count = CHUNK_RECORDS // 2 + 50  # configs and placements: two chunks in all
    configs = [plain(f"svc-{i}") for i in range(count)]
    delta = StateDelta(
        configs={c.digest: c for c in configs},
        sources={S1: frozenset(c.digest for c in configs)},
        placement={c.digest: (N1 if i % 2 else N2) for i, c in enumerate(configs)},
        nodes={
            N1: NodeRecord(labels={}, capacity=2, cordoned=False),
            N2: NodeRecord(labels={"a": "b"}, capacity=1, cordoned=False),
        },
    )
    assert len(delta) > CHUNK_RECORDS

    before = first.round_trips
    await first.write(delta, epoch=2)

    assert first.round_trips - before == math.ceil(len(delta) / CHUNK_RECORDS) >= 2
    loaded = await second.claim(epoch=3)
    assert view(loaded) == view(as_snapshot(delta))

    # Deleting them all is as many calls again, and leaves nothing behind.
    deletion = StateDelta(
        configs=dict.fromkeys(delta.configs),
        sources=dict.fromkeys(delta.sources),
        placement=dict.fromkeys(delta.placement),
        nodes=dict.fromkeys(delta.nodes),
    )
    before = second.round_trips
    await second.write(deletion, epoch=3)
    assert second.round_trips - before == math.ceil(len(delta) / CHUNK_RECORDS)
    assert view(await first.claim(epoch=4)) == view(Snapshot())


# ------------------------------------------------------ both stores: deletes


async def test_deletes_remove_records_and_deleting_a_missing_record_is_harmless(
    subject: Subject,
) -> None:
    store = subject.store
    await store.claim(epoch=1)
    delta, configs = full_delta()
    await store.write(delta, epoch=1)
    rich, a = configs[0], configs[1]
    await store.write(
        StateDelta(
            configs={rich.digest: None, Digest("f" * 32): None},
            sources={S2: None, SourceName("never"): None},
            placement={rich.digest: None, a.digest: N1},  # one deleted, one moved
            nodes={N2: None},
        ),
        epoch=1,
    )
    loaded = await store.claim(epoch=1)
    assert set(loaded.configs) == set(delta.configs) - {rich.digest}
    assert set(loaded.sources) == {S1}
    assert dict(loaded.placement) == {a.digest: N1, configs[-1].digest: N1}
    assert set(loaded.nodes) == {N1}


# ------------------------------------------------------ both stores: fencing

Op = tuple[Literal["claim", "write"], int, Literal["ok", "fenced"]]
FENCING: list[Op] = [
    ("claim", 7, "ok"),
    ("write", 6, "fenced"),  # a deposed leader's late write
    ("claim", 6, "fenced"),  # a deposed leader's late claim
    ("write", 8, "fenced"),  # an epoch that never claimed
    ("write", 7, "ok"),
    ("claim", 7, "ok"),  # the same term claiming again (a retried load)
    ("write", 7, "ok"),
    ("claim", 9, "ok"),  # a newer term
    ("write", 7, "fenced"),
    ("claim", 8, "fenced"),
    ("write", 9, "ok"),
]


async def test_fencing_table(subject: Subject) -> None:
    """Runs the table in order; a refused step changes nothing, an accepted one lands."""
    store = subject.store

    async def attempt(op: str, epoch: int, delta: StateDelta) -> None:
        if op == "claim":
            await store.claim(epoch=epoch)
        else:
            await store.write(delta, epoch=epoch)

    for index, (op, epoch, expected) in enumerate(FENCING):
        name = f"written-{index}"
        record = NodeRecord(labels={}, capacity=1, cordoned=False)
        delta = StateDelta(nodes={NodeName(name): record})
        before = await subject.peek()
        if expected == "fenced":
            with pytest.raises(Fenced, match="claimed by epoch"):
                await attempt(op, epoch, delta)
            assert await subject.peek() == before, f"step {index}: a refused {op} changed the store"
        elif op == "claim":
            await attempt(op, epoch, delta)
            assert await subject.peek() == (epoch, before[1]), f"step {index}"
        else:
            await attempt(op, epoch, delta)
            assert await subject.peek() == (before[0], before[1] | {name}), f"step {index}"


async def test_fenced_is_a_store_error_that_says_which_epoch_holds_the_store(
    subject: Subject,
) -> None:
    store = subject.store
    await store.claim(epoch=12)
    with pytest.raises(Fenced) as refused:
        await store.write(StateDelta(nodes={N1: None}), epoch=11)
    assert isinstance(refused.value, StoreError)
    assert "12" in str(refused.value)


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
