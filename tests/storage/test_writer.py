"""The store writer: ordered group-commit write-through, retries, fencing, health.

A small recording store lets each test hold a write in flight (a gate), fail writes on
demand and see exactly which deltas reached the store in which order. Timeouts are
kept small and every wait is guarded, so a writer that hangs fails the test quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from dispatcher.core.model import Digest, NodeName
from dispatcher.core.snapshot import NodeRecord, Snapshot, StateDelta
from dispatcher.errors import Fenced, StoreError
from dispatcher.storage.memory import MemoryStateStore
from dispatcher.storage.writer import StoreWriter
from tests.node_agent.helpers import eventually

EPOCH = 4
A, B, C = Digest("a" * 32), Digest("b" * 32), Digest("c" * 32)
N1, N2, N3 = NodeName("n1"), NodeName("n2"), NodeName("n3")
GUARD_S = 2.0


def place(**where: str | None) -> StateDelta:
    """A delta of placements: ``place(a="n1", b=None)``."""
    digests = {"a": A, "b": B, "c": C}
    return StateDelta(
        placement={digests[k]: (NodeName(v) if v is not None else None) for k, v in where.items()}
    )


class RecordingStore:
    """A StateStore that records every write; writes can be held or made to fail."""

    def __init__(self) -> None:
        self.inner = MemoryStateStore()
        self.attempts: list[StateDelta] = []
        self.stored: list[StateDelta] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.failure: Exception | None = None

    async def claim(self, *, epoch: int) -> Snapshot:
        return await self.inner.claim(epoch=epoch)

    async def write(self, delta: StateDelta, *, epoch: int) -> None:
        copy = StateDelta()
        copy.merge(delta)
        self.attempts.append(copy)
        self.entered.set()
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        await self.inner.write(delta, epoch=epoch)
        self.stored.append(copy)

    async def close(self) -> None:
        return None

    async def wait_entered(self) -> None:
        """Waits for the next write attempt to begin."""
        async with asyncio.timeout(GUARD_S):
            await self.entered.wait()
        self.entered.clear()


class Recorder:
    def __init__(self) -> None:
        self.fenced = 0
        self.health: list[str | None] = []

    def on_fenced(self) -> None:
        self.fenced += 1

    def on_health(self, problem: str | None) -> None:
        self.health.append(problem)


@pytest.fixture
async def store() -> RecordingStore:
    made = RecordingStore()
    await made.claim(epoch=EPOCH)
    return made


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make_writer(
    store: RecordingStore | MemoryStateStore,
    recorder: Recorder,
    *,
    retry_s: float = 0.01,
    wait_timeout_s: float = 1.0,
) -> StoreWriter:
    return StoreWriter(
        store,
        epoch=EPOCH,
        on_fenced=recorder.on_fenced,
        on_health=recorder.on_health,
        retry_s=retry_s,
        wait_timeout_s=wait_timeout_s,
    )


@asynccontextmanager
async def running(writer: StoreWriter) -> AsyncIterator[asyncio.Task[None]]:
    """Runs the writer for the block; cancels it after (as the end of a term does)."""
    task = asyncio.create_task(writer.run(), name="store_writer")
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def flushed(writer: StoreWriter, seq: int) -> None:
    async with asyncio.timeout(GUARD_S):
        await writer.wait_flushed(seq)


# ------------------------------------------------------------------- order


async def test_steps_reach_the_store_in_order_and_the_later_value_wins(
    store: RecordingStore, recorder: Recorder
) -> None:
    writer = make_writer(store, recorder)
    seqs = [
        writer.submit(place(a="n1", b="n1")),
        writer.submit(place(a="n2")),
        writer.submit(place(b=None, c="n3")),
        writer.submit(place(a="n3")),
    ]
    assert seqs == [1, 2, 3, 4]
    assert writer.flushed == 0
    async with running(writer):
        await flushed(writer, seqs[-1])
    assert writer.flushed == 4
    assert store.inner.placement == {A: N3, C: N3}
    assert len(store.stored) == 1, "everything pending goes in one write"


async def test_an_empty_step_is_not_counted_and_needs_no_write(
    store: RecordingStore, recorder: Recorder
) -> None:
    writer = make_writer(store, recorder)
    assert writer.submit(StateDelta()) == 0
    await writer.wait_flushed(0)  # nothing to wait for, even with no writer running
    assert writer.submit(place(a="n1")) == 1
    assert writer.submit(StateDelta()) == 1, "an empty step waits for what came before"
    assert writer.submitted == 1
    async with running(writer):
        await flushed(writer, 1)
    assert len(store.attempts) == 1


async def test_steps_submitted_during_a_write_go_together_in_the_next_one(
    store: RecordingStore, recorder: Recorder
) -> None:
    writer = make_writer(store, recorder)
    store.gate.clear()
    async with running(writer):
        first = writer.submit(place(a="n1"))
        await store.wait_entered()  # the first write is in flight
        later = [
            writer.submit(place(b="n1")),
            writer.submit(place(a="n2")),
            writer.submit(place(b=None, c="n2")),
        ]
        waiting = asyncio.create_task(writer.wait_flushed(later[-1]))
        await asyncio.sleep(0.05)
        assert len(store.attempts) == 1, "a second write started while one is in flight"
        assert not waiting.done()
        store.gate.set()
        await flushed(writer, later[-1])
        await waiting
    assert first == 1
    assert [dict(d.placement) for d in store.stored] == [
        {A: N1},
        {A: N2, B: None, C: N2},  # three steps, one write, the later value of each record
    ]
    assert store.inner.placement == {A: N2, C: N2}


async def test_wait_flushed_returns_only_once_the_write_is_stored(
    store: RecordingStore, recorder: Recorder
) -> None:
    writer = make_writer(store, recorder)
    store.gate.clear()
    async with running(writer):
        seq = writer.submit(place(a="n1"))
        waiting = asyncio.create_task(writer.wait_flushed(seq))
        await store.wait_entered()
        await asyncio.sleep(0.05)
        assert not waiting.done(), "answered before the store confirmed"
        assert store.inner.placement == {}
        store.gate.set()
        async with asyncio.timeout(GUARD_S):
            await waiting
        assert store.inner.placement == {A: N1}
        assert writer.flushed == seq
    assert recorder.health == [], "no failure, no health report"
    assert recorder.fenced == 0


async def test_a_waiter_for_an_early_step_does_not_wait_for_later_ones(
    store: RecordingStore, recorder: Recorder
) -> None:
    writer = make_writer(store, recorder)
    async with running(writer):
        first = writer.submit(place(a="n1"))
        await flushed(writer, first)
        store.gate.clear()
        second = writer.submit(place(a="n2"))
        await store.wait_entered()
        await flushed(writer, first)  # already stored: returns while the next is held
        store.gate.set()
        await flushed(writer, second)


# ---------------------------------------------------------------- failures


async def test_a_failing_store_is_retried_and_waiters_give_up_after_the_wait_timeout(
    store: RecordingStore, recorder: Recorder
) -> None:
    writer = make_writer(store, recorder, retry_s=0.01, wait_timeout_s=0.2)
    store.failure = StoreError("redis: Connection refused")
    async with running(writer) as task:
        seq = writer.submit(place(a="n1"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreError, match=r"within 0\.2 s") as failed:
            await writer.wait_flushed(seq)
        waited = loop.time() - started
        assert 0.15 <= waited < 1.0, waited
        assert not isinstance(failed.value, Fenced)
        assert "Connection refused" in str(failed.value), "the waiter learns why"
        assert len(store.attempts) >= 3, "the write was not retried"
        assert not task.done(), "the writer gave up"
        assert writer.flushed == 0
        assert recorder.health, "a failing store is reported"
        assert all(problem and "Connection refused" in problem for problem in recorder.health)
        assert recorder.fenced == 0


async def test_after_a_failure_the_writer_recovers_in_order_and_reports_health(
    store: RecordingStore, recorder: Recorder
) -> None:
    writer = make_writer(store, recorder, retry_s=0.01, wait_timeout_s=0.15)
    store.failure = StoreError("redis: Timeout reading from socket")
    async with running(writer):
        early = writer.submit(place(a="n1", b="n1"))
        with pytest.raises(StoreError):
            await writer.wait_flushed(early)
        # Steps keep coming while the store is failing; newer values must win.
        writer.submit(place(a="n2"))
        late = writer.submit(place(c="n3", b=None))
        failures = len(recorder.health)
        assert failures >= 1
        store.failure = None
        await flushed(writer, late)
        await flushed(writer, early)
        assert store.inner.placement == {A: N2, C: N3}
        assert [dict(d.placement) for d in store.stored] == [{A: N2, B: None, C: N3}]
        await eventually(lambda: recorder.health[-1:] == [None])
        assert all(p is not None for p in recorder.health[:-1])
        # Healthy again: a later step is written at once, with no new report.
        reports = len(recorder.health)
        await flushed(writer, writer.submit(place(a="n3")))
        assert store.inner.placement[A] == N3
        assert len(recorder.health) == reports
    assert recorder.fenced == 0


async def test_a_fenced_write_calls_on_fenced_once_and_every_waiter_gets_fenced(
    store: RecordingStore, recorder: Recorder
) -> None:
    writer = make_writer(store, recorder, wait_timeout_s=1.0)
    store.gate.clear()
    async with running(writer) as task:
        seq = writer.submit(place(a="n1"))
        waiters = [asyncio.create_task(writer.wait_flushed(seq)) for _ in range(3)]
        await store.wait_entered()
        await store.inner.claim(epoch=EPOCH + 1)  # a newer term claims the store
        loop = asyncio.get_running_loop()
        started = loop.time()
        store.gate.set()
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        assert loop.time() - started < 0.5, "fenced waiters must not wait for the timeout"
        assert all(isinstance(o, Fenced) for o in outcomes), outcomes
        async with asyncio.timeout(GUARD_S):
            await task  # the writer stops by itself
        assert recorder.fenced == 1
        # A step submitted after the fence is never written, and its waiter knows at once.
        later = writer.submit(place(b="n1"))
        with pytest.raises(Fenced):
            await flushed(writer, later)
    assert store.inner.placement == {}, "the refused write changed the store"
    assert len(store.attempts) == 1
    assert recorder.fenced == 1


async def test_a_fence_found_after_failures_still_ends_the_writer(recorder: Recorder) -> None:
    """With the real in-memory store: down, then up again but claimed by a newer term."""
    memory = MemoryStateStore()
    await memory.claim(epoch=EPOCH)
    writer = make_writer(memory, recorder, retry_s=0.01, wait_timeout_s=1.0)
    memory.down = True
    async with running(writer) as task:
        seq = writer.submit(place(a="n1"))
        await eventually(lambda: bool(recorder.health))
        memory.down = False
        await memory.claim(epoch=EPOCH + 1)
        with pytest.raises(Fenced):
            await flushed(writer, seq)
        async with asyncio.timeout(GUARD_S):
            await task
    assert recorder.fenced == 1
    assert memory.placement == {}
    assert memory.writes == 0


async def test_node_records_and_deletes_pass_through_unchanged(recorder: Recorder) -> None:
    memory = MemoryStateStore()
    await memory.claim(epoch=EPOCH)
    writer = make_writer(memory, recorder)
    record = NodeRecord(labels={"zone": "a"}, capacity=3, cordoned=True)
    async with running(writer):
        writer.submit(StateDelta(nodes={N1: record, N2: record}))
        await flushed(writer, writer.submit(StateDelta(nodes={N2: None})))
    assert memory.nodes == {N1: record}


async def test_closing_at_the_end_of_a_term_tells_every_waiter_at_once(
    store: RecordingStore, recorder: Recorder
) -> None:
    writer = make_writer(store, recorder, wait_timeout_s=5.0)
    store.gate.clear()
    async with running(writer):
        done = writer.submit(place(a="n1"))
        store.gate.set()
        await flushed(writer, done)
        store.gate.clear()
        seq = writer.submit(place(a="n2"))
        waiters = [asyncio.create_task(writer.wait_flushed(seq)) for _ in range(2)]
        await store.wait_entered()
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.close()
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        assert loop.time() - started < 0.5, "waiters were left to the wait timeout"
        assert all(type(o) is StoreError for o in outcomes), outcomes
        assert all("term ended" in str(o) for o in outcomes)
        await flushed(writer, done)  # what was stored before stays confirmed
        with pytest.raises(StoreError):
            await flushed(writer, writer.submit(place(b="n1")))
        store.gate.set()
    assert recorder.fenced == 0


class SwallowingStore(MemoryStateStore):
    """A store whose client library swallows a cancellation that arrives mid-write, as
    redis-py's ``asyncio.wait_for`` can on Python 3.11."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def write(self, delta: StateDelta, *, epoch: int) -> None:
        self.entered.set()
        with contextlib.suppress(asyncio.CancelledError):  # the task is still "cancelling"
            await asyncio.sleep(0.05)
        await super().write(delta, epoch=epoch)


async def test_a_cancellation_swallowed_by_the_store_client_still_ends_the_writer() -> None:
    store = SwallowingStore()
    await store.claim(epoch=EPOCH)
    writer = StoreWriter(store, epoch=EPOCH, on_fenced=lambda: None)
    task = asyncio.create_task(writer.run(), name="writer")
    writer.submit(place(a="n1"))
    await asyncio.wait_for(store.entered.wait(), GUARD_S)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=GUARD_S)
    assert done, "the writer hung after its cancellation was swallowed"
    assert task.cancelled()


async def test_close_ends_the_writer_loop_without_a_cancellation() -> None:
    store = MemoryStateStore()
    await store.claim(epoch=EPOCH)
    writer = StoreWriter(store, epoch=EPOCH, on_fenced=lambda: None)
    task = asyncio.create_task(writer.run(), name="writer")
    await asyncio.sleep(0)
    writer.close()
    await asyncio.wait_for(task, GUARD_S)
    assert task.done()
    assert not task.cancelled()
