"""The contract every StateStore keeps, run against the memory store, a real
redis-server and a SQLite file.

A store is fenced by epoch: a claim by epoch N refuses every lower epoch from then on,
and a write is accepted only from the epoch that holds the claim. A refused call
changes nothing. What one store object wrote, another one on the same data (the next
replica, the restarted process) loads with every field.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import redis.asyncio as aioredis

from dispatcher.core.model import Digest, NodeName, SourceName
from dispatcher.core.snapshot import NodeRecord, Snapshot, StateDelta
from dispatcher.errors import Fenced, StoreError, StoreLost
from dispatcher.storage.base import StateStore
from dispatcher.storage.memory import MemoryStateStore
from dispatcher.storage.redis import RedisStateStore
from dispatcher.storage.sqlite import SqliteStateStore
from tests.redis_server import RedisServer
from tests.storage.records import (
    LEGACY_DIGEST,
    N1,
    N2,
    S1,
    S2,
    as_snapshot,
    big_delta,
    deletion_of,
    full_delta,
    plain,
    view,
)

Peek = Callable[[], Awaitable[tuple[int, set[str]]]]


@dataclass
class Subject:
    """A store under test, a way to read its token and node names without claiming (a
    claim would move the token), and a way to get another store object on the same
    data: the next replica (Redis), the restarted process (SQLite: the first one is
    closed, since the data dir is locked)."""

    kind: str
    store: StateStore
    peek: Peek
    reopen: Callable[[], Awaitable[StateStore]]
    opened: list[StateStore] = field(default_factory=list)


@pytest.fixture(params=["memory", "redis", "sqlite"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    if request.param == "memory":
        memory = MemoryStateStore()

        async def peek_memory() -> tuple[int, set[str]]:
            return memory.epoch, set(memory.nodes)

        async def same_memory() -> StateStore:
            return memory

        yield Subject("memory", memory, peek_memory, same_memory)
        return
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisStateStore.from_url(server.url, timeout_s=1.0)
        raw = aioredis.Redis.from_url(server.url)

        async def peek_redis() -> tuple[int, set[str]]:
            names = await raw.hkeys(made.hash_keys[3])
            return await made.stored_epoch(), {
                n.decode() if isinstance(n, bytes) else n for n in names
            }

        async def another_redis() -> StateStore:
            other = RedisStateStore.from_url(server.url, timeout_s=1.0)
            made_subject.opened.append(other)
            return other

        made_subject = Subject("redis", made, peek_redis, another_redis, [made])
        try:
            yield made_subject
        finally:
            await raw.aclose()
            for store in made_subject.opened:
                await store.close()
        return
    data_dir = tmp_path / "data"
    first = SqliteStateStore.open(data_dir)

    async def peek_sqlite() -> tuple[int, set[str]]:
        # A second connection reads what is committed, as the next process would.
        reader = sqlite3.connect(f"file:{first.path}?mode=ro", uri=True)
        try:
            (epoch,) = reader.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            names = {name for (name,) in reader.execute("SELECT name FROM nodes")}
        finally:
            reader.close()
        return epoch, names

    async def reopen_sqlite() -> StateStore:
        for store in made_subject.opened:
            await store.close()
        again = SqliteStateStore.open(data_dir)
        made_subject.opened.append(again)
        return again

    made_subject = Subject("sqlite", first, peek_sqlite, reopen_sqlite, [first])
    try:
        yield made_subject
    finally:
        for store in made_subject.opened:
            await store.close()


# --------------------------------------------------------------- claim/load


async def test_claim_of_an_empty_store_loads_nothing_and_sets_the_token(subject: Subject) -> None:
    assert await subject.peek() == (0, set())
    snapshot = await subject.store.claim(epoch=5)
    assert view(snapshot) == view(Snapshot())
    assert await subject.peek() == (5, set())


async def test_what_one_store_writes_another_loads_with_every_field_and_the_stored_digest(
    subject: Subject,
) -> None:
    await subject.store.claim(epoch=3)
    delta, configs = full_delta()
    await subject.store.write(delta, epoch=3)

    loaded = await (await subject.reopen()).claim(epoch=4)

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


async def test_what_was_written_before_close_is_loaded_after_it(subject: Subject) -> None:
    await subject.store.claim(epoch=1)
    delta, _ = full_delta()
    await subject.store.write(delta, epoch=1)
    await subject.store.close()

    loaded = await (await subject.reopen()).claim(epoch=2)

    assert view(loaded) == view(as_snapshot(delta))


# ------------------------------------------------------------------ deletes


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
    loaded = await (await subject.reopen()).claim(epoch=1)
    assert set(loaded.configs) == set(delta.configs) - {rich.digest}
    assert set(loaded.sources) == {S1}
    assert dict(loaded.placement) == {a.digest: N1, configs[-1].digest: N1}
    assert set(loaded.nodes) == {N1}


async def test_a_source_written_again_holds_exactly_its_new_set(subject: Subject) -> None:
    """A source is written whole: what it no longer holds is gone, what it gained is
    there, and another source holding the same check keeps it."""
    store = subject.store
    await store.claim(epoch=1)
    a, b, c = plain("a"), plain("b"), plain("c")
    await store.write(
        StateDelta(
            configs={x.digest: x for x in (a, b, c)},
            sources={S1: frozenset({a.digest, b.digest}), S2: frozenset({a.digest})},
        ),
        epoch=1,
    )
    await store.write(StateDelta(sources={S1: frozenset({b.digest, c.digest})}), epoch=1)
    await store.write(StateDelta(sources={S1: frozenset({c.digest})}), epoch=1)

    loaded = await (await subject.reopen()).claim(epoch=2)

    assert dict(loaded.sources) == {S1: frozenset({c.digest}), S2: frozenset({a.digest})}


# ------------------------------------------------------------------ fencing

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


async def test_a_refused_write_changes_no_record_of_any_kind(subject: Subject) -> None:
    store = subject.store
    await store.claim(epoch=4)
    delta, configs = full_delta()
    await store.write(delta, epoch=4)
    newer = plain("newer")
    late = StateDelta(
        configs={newer.digest: newer, configs[0].digest: None},
        sources={S1: frozenset({newer.digest}), S2: None},
        placement={newer.digest: N2, configs[1].digest: None},
        nodes={N1: None, NodeName("n3"): NodeRecord(labels={}, capacity=3, cordoned=False)},
    )
    with pytest.raises(Fenced):
        await store.write(late, epoch=3)

    loaded = await (await subject.reopen()).claim(epoch=4)

    assert view(loaded) == view(as_snapshot(delta))


async def test_a_write_to_a_store_that_holds_no_claim_is_store_lost(subject: Subject) -> None:
    """No claim at all (Redis restarted empty, a new file): not Fenced, since no newer
    term holds it; the leader must claim it again and write its whole state."""
    with pytest.raises(StoreLost):
        await subject.store.write(StateDelta(nodes={N1: None}), epoch=3)
    assert await subject.peek() == (0, set())


async def test_fenced_is_a_store_error_that_says_which_epoch_holds_the_store(
    subject: Subject,
) -> None:
    store = subject.store
    await store.claim(epoch=12)
    with pytest.raises(Fenced) as refused:
        await store.write(StateDelta(nodes={N1: None}), epoch=11)
    assert isinstance(refused.value, StoreError)
    assert "12" in str(refused.value)


# --------------------------------------------------------------- big deltas


async def test_a_big_delta_is_written_whole_and_deleted_whole(subject: Subject) -> None:
    """Bigger than a Redis chunk, and many rows in one SQLite transaction."""
    await subject.store.claim(epoch=2)
    delta = big_delta(3000)
    await subject.store.write(delta, epoch=2)

    second = await subject.reopen()
    loaded = await second.claim(epoch=3)
    assert view(loaded) == view(as_snapshot(delta))
    assert len(loaded.sources[S1]) == 3000

    await second.write(deletion_of(delta), epoch=3)
    assert view(await (await subject.reopen()).claim(epoch=4)) == view(Snapshot())
