"""The store writer: ordered group-commit write-through, retries, fencing, health.

A small recording store lets each test hold a write in flight (a gate), fail writes on
demand and see exactly which deltas reached the store in which order. The writer's retry
and wait timeout run on a FakeClock: a test moves time on by hand, and "at once" means
with no time passed on that clock. Awaits on real events are guarded (``GUARD_S``) so that
a writer that hangs fails the test instead of stalling it; the guard is never a measure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from dispatcher.common.clock import FakeClock
from dispatcher.core.model import Digest, NodeName
from dispatcher.core.snapshot import NodeRecord, Snapshot, StateDelta
from dispatcher.errors import Fenced, StoreError
from dispatcher.storage.memory import MemoryStateStore
from dispatcher.storage.writer import StoreWriter

EPOCH = 4
A, B, C = Digest("a" * 32), Digest("b" * 32), Digest("c" * 32)
N1, N2, N3 = NodeName("n1"), NodeName("n2"), NodeName("n3")
GUARD_S = 10.0
RETRY_S = 0.5
WAIT_TIMEOUT_S = 5.0


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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_writer(
    store: RecordingStore | MemoryStateStore, recorder: Recorder, clock: FakeClock
) -> StoreWriter:
    return StoreWriter(
        store,
        epoch=EPOCH,
        on_fenced=recorder.on_fenced,
        clock=clock,
        on_health=recorder.on_health,
        retry_s=RETRY_S,
        wait_timeout_s=WAIT_TIMEOUT_S,
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


async def ended_at_once(clock: FakeClock, tasks: list[asyncio.Task[None]]) -> list[object]:
    """The tasks' outcomes, which must all be in with no time passed on the clock."""
    started = clock.monotonic()
    await clock.settle()
    assert all(task.done() for task in tasks), "a waiter was left to the wait timeout"
    assert clock.monotonic() == started
    return list(await asyncio.gather(*tasks, return_exceptions=True))


# ------------------------------------------------------------------- order


async def test_steps_reach_the_store_in_order_and_the_later_value_wins(
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    writer = make_writer(store, recorder, clock)
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
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    writer = make_writer(store, recorder, clock)
    assert writer.submit(StateDelta()) == 0
    await writer.wait_flushed(0)  # nothing to wait for, even with no writer running
    assert writer.submit(place(a="n1")) == 1
    assert writer.submit(StateDelta()) == 1, "an empty step waits for what came before"
    assert writer.submitted == 1
    async with running(writer):
        await flushed(writer, 1)
    assert len(store.attempts) == 1


async def test_steps_submitted_during_a_write_go_together_in_the_next_one(
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    writer = make_writer(store, recorder, clock)
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
        await clock.settle()  # the writer could run: it still waits for the first write
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
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    writer = make_writer(store, recorder, clock)
    store.gate.clear()
    async with running(writer):
        seq = writer.submit(place(a="n1"))
        waiting = asyncio.create_task(writer.wait_flushed(seq))
        await store.wait_entered()
        await clock.settle()
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
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    writer = make_writer(store, recorder, clock)
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
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    writer = make_writer(store, recorder, clock)
    store.failure = StoreError("redis: Connection refused")
    async with running(writer) as task:
        seq = writer.submit(place(a="n1"))
        waiting = asyncio.create_task(writer.wait_flushed(seq))
        await clock.run_for(WAIT_TIMEOUT_S - 0.1)
        assert not waiting.done(), "the waiter gave up before the wait timeout"
        # One attempt at once, then one every RETRY_S: 0, 0.5, ..., 4.5 s.
        assert len(store.attempts) == 10, "the write was not retried every retry_s"
        await clock.run_for(0.1)
        assert waiting.done(), "the waiter outlived the wait timeout"
        with pytest.raises(StoreError, match=r"within 5 s") as failed:
            waiting.result()
        assert not isinstance(failed.value, Fenced)
        assert "Connection refused" in str(failed.value), "the waiter learns why"
        assert not task.done(), "the writer gave up"
        assert writer.flushed == 0
        assert recorder.health, "a failing store is reported"
        assert all(problem and "Connection refused" in problem for problem in recorder.health)
        assert recorder.fenced == 0


async def test_after_a_failure_the_writer_recovers_in_order_and_reports_health(
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    writer = make_writer(store, recorder, clock)
    store.failure = StoreError("redis: Timeout reading from socket")
    async with running(writer):
        early = writer.submit(place(a="n1", b="n1"))
        waiting = asyncio.create_task(writer.wait_flushed(early))
        await clock.run_for(WAIT_TIMEOUT_S)
        with pytest.raises(StoreError):
            waiting.result()
        # Steps keep coming while the store is failing; newer values must win.
        writer.submit(place(a="n2"))
        late = writer.submit(place(c="n3", b=None))
        failures = len(recorder.health)
        assert failures >= 1
        store.failure = None
        await clock.run_for(RETRY_S)  # the next retry succeeds
        await flushed(writer, late)
        await flushed(writer, early)
        assert store.inner.placement == {A: N2, C: N3}
        assert [dict(d.placement) for d in store.stored] == [{A: N2, B: None, C: N3}]
        assert recorder.health[-1:] == [None], "the recovery is reported"
        assert all(p is not None for p in recorder.health[:-1])
        # Healthy again: a later step is written at once, with no new report.
        reports = len(recorder.health)
        await flushed(writer, writer.submit(place(a="n3")))
        assert store.inner.placement[A] == N3
        assert len(recorder.health) == reports
    assert recorder.fenced == 0


async def test_a_fenced_write_calls_on_fenced_once_and_every_waiter_gets_fenced(
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    writer = make_writer(store, recorder, clock)
    store.gate.clear()
    async with running(writer) as task:
        seq = writer.submit(place(a="n1"))
        waiters = [asyncio.create_task(writer.wait_flushed(seq)) for _ in range(3)]
        await store.wait_entered()
        await store.inner.claim(epoch=EPOCH + 1)  # a newer term claims the store
        store.gate.set()
        outcomes = await ended_at_once(clock, waiters)  # not left to the wait timeout
        assert all(isinstance(o, Fenced) for o in outcomes), outcomes
        assert task.done(), "the writer did not stop by itself"
        assert recorder.fenced == 1
        # A step submitted after the fence is never written, and its waiter knows at once.
        later = writer.submit(place(b="n1"))
        with pytest.raises(Fenced):
            await flushed(writer, later)
    assert store.inner.placement == {}, "the refused write changed the store"
    assert len(store.attempts) == 1
    assert recorder.fenced == 1


async def test_a_fence_found_after_failures_still_ends_the_writer(
    recorder: Recorder, clock: FakeClock
) -> None:
    """With the real in-memory store: down, then up again but claimed by a newer term."""
    memory = MemoryStateStore()
    await memory.claim(epoch=EPOCH)
    writer = make_writer(memory, recorder, clock)
    memory.down = True
    async with running(writer) as task:
        seq = writer.submit(place(a="n1"))
        waiting = asyncio.create_task(writer.wait_flushed(seq))
        await clock.settle()
        assert recorder.health, "the failed write was not reported"
        memory.down = False
        await memory.claim(epoch=EPOCH + 1)
        await clock.run_for(RETRY_S)  # the retry meets the newer claim
        assert waiting.done()
        with pytest.raises(Fenced):
            waiting.result()
        assert task.done(), "the writer did not stop by itself"
    assert recorder.fenced == 1
    assert memory.placement == {}
    assert memory.writes == 0


async def test_node_records_and_deletes_pass_through_unchanged(
    recorder: Recorder, clock: FakeClock
) -> None:
    memory = MemoryStateStore()
    await memory.claim(epoch=EPOCH)
    writer = make_writer(memory, recorder, clock)
    record = NodeRecord(labels={"zone": "a"}, capacity=3, cordoned=True)
    async with running(writer):
        writer.submit(StateDelta(nodes={N1: record, N2: record}))
        await flushed(writer, writer.submit(StateDelta(nodes={N2: None})))
    assert memory.nodes == {N1: record}


async def test_closing_at_the_end_of_a_term_tells_every_waiter_at_once(
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    writer = make_writer(store, recorder, clock)
    store.gate.clear()
    async with running(writer):
        done = writer.submit(place(a="n1"))
        store.gate.set()
        await flushed(writer, done)
        store.gate.clear()
        seq = writer.submit(place(a="n2"))
        waiters = [asyncio.create_task(writer.wait_flushed(seq)) for _ in range(2)]
        await store.wait_entered()
        writer.close()
        outcomes = await ended_at_once(clock, waiters)  # not left to the wait timeout
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
            await asyncio.Event().wait()  # in flight until the cancellation arrives
        await super().write(delta, epoch=epoch)


async def test_a_cancellation_swallowed_by_the_store_client_still_ends_the_writer(
    clock: FakeClock,
) -> None:
    store = SwallowingStore()
    await store.claim(epoch=EPOCH)
    writer = StoreWriter(store, epoch=EPOCH, on_fenced=lambda: None, clock=clock)
    task = asyncio.create_task(writer.run(), name="writer")
    writer.submit(place(a="n1"))
    async with asyncio.timeout(GUARD_S):
        await store.entered.wait()
    task.cancel()
    await clock.settle()
    assert task.done(), "the writer hung after its cancellation was swallowed"
    assert task.cancelled()


async def test_close_ends_the_writer_loop_without_a_cancellation(clock: FakeClock) -> None:
    store = MemoryStateStore()
    await store.claim(epoch=EPOCH)
    writer = StoreWriter(store, epoch=EPOCH, on_fenced=lambda: None, clock=clock)
    task = asyncio.create_task(writer.run(), name="writer")
    await asyncio.sleep(0)
    writer.close()
    await clock.settle()
    assert task.done()
    assert not task.cancelled()
