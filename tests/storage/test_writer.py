"""The store writer: ordered group-commit write-through, retries, fencing, health, and
the repair of a store that lost its data (found by a write or by an idle check).

A small recording store lets each test hold a write in flight (a gate), fail writes on
demand and see exactly which deltas reached the store in which order. The writer's retry
and wait timeout run on a FakeClock: a test moves time on by hand, and "at once" means
with no time passed on that clock. Awaits on real events are guarded (``GUARD_S``) so that
a writer that hangs fails the test instead of stalling it; the guard is never a measure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from structlog.testing import capture_logs

from dispatcher.common.clock import FakeClock
from dispatcher.common.health import Status
from dispatcher.core.history import HistoryEntry
from dispatcher.core.model import Digest, NodeName
from dispatcher.core.snapshot import NodeRecord, Snapshot, StateDelta
from dispatcher.errors import Fenced, StoreError
from dispatcher.storage.memory import MemoryStateStore
from dispatcher.storage.writer import HISTORY_FLUSH_S, StoreWriter

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

    kind = "memory"
    may_lose_data = True

    def __init__(self) -> None:
        self.inner = MemoryStateStore()
        self.attempts: list[StateDelta] = []
        self.stored: list[StateDelta] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.failure: Exception | None = None

    async def claim(self, *, epoch: int, history: bool = True) -> Snapshot:
        return await self.inner.claim(epoch=epoch, history=history)

    async def load_history(self) -> dict[Digest, list[HistoryEntry]]:
        return await self.inner.load_history()

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
        """Each report: None when healthy, else its message."""
        self.statuses: list[tuple[Status, str]] = []

    def on_fenced(self) -> None:
        self.fenced += 1

    def on_health(self, status: Status, message: str) -> None:
        self.statuses.append((status, message))
        self.health.append(None if status is Status.HEALTHY else message)

    def last_status(self) -> Status:
        return self.statuses[-1][0]


def no_snapshot() -> Snapshot:
    raise AssertionError("the writer asked for the whole state, but no store lost its data")


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
    store: RecordingStore | MemoryStateStore,
    recorder: Recorder,
    clock: FakeClock,
    *,
    snapshot: Callable[[], Snapshot] = no_snapshot,
    verify_s: float | None = None,
) -> StoreWriter:
    return StoreWriter(
        store,
        epoch=EPOCH,
        snapshot=snapshot,
        on_fenced=recorder.on_fenced,
        clock=clock,
        on_health=recorder.on_health,
        retry_s=RETRY_S,
        wait_timeout_s=WAIT_TIMEOUT_S,
        verify_s=verify_s,
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


# ----------------------------------------------------------------- history


def ran(digest: Digest, run_id: str) -> StateDelta:
    """A results post's step: history only."""
    entry = HistoryEntry(run_id, N1, True, (), 1_763_700_000.0, 0.1, 1_763_700_000.0)
    return StateDelta(history={digest: [entry]})


def run_ids(delta: StateDelta) -> dict[Digest, list[str]]:
    return {d: [e.run_id for e in entries] for d, entries in delta.history.items()}


async def test_history_only_steps_wait_for_the_flush_period_and_go_in_one_write(
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    writer = make_writer(store, recorder, clock)
    async with running(writer):
        seqs = [writer.submit(ran(A, "r1")), writer.submit(ran(B, "b1"))]
        await clock.run_for(HISTORY_FLUSH_S / 2)
        seqs.append(writer.submit(ran(A, "r2")))
        await clock.run_for(HISTORY_FLUSH_S / 2 - 0.001)
        assert store.attempts == [], "a results post woke the writer"
        await clock.run_for(0.001)
        await flushed(writer, writer.submitted)
        # Nothing to wait for: no step but results (their reply does not wait).
        assert seqs == [0, 0, 0]
        assert writer.flushed == writer.submitted == 3
        assert [run_ids(d) for d in store.stored] == [{A: ["r1", "r2"], B: ["b1"]}]
        assert clock.pending_timers() == 0


async def test_a_waiter_for_the_results_has_them_written_at_once(
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    """Only a planned stop waits for the results themselves (Dispatcher.flush)."""
    writer = make_writer(store, recorder, clock)
    async with running(writer):
        writer.submit(ran(A, "r1"))
        waiting = asyncio.create_task(writer.wait_flushed(writer.submitted))
        (outcome,) = await ended_at_once(clock, [waiting])
        assert outcome is None
        assert [run_ids(d) for d in store.stored] == [{A: ["r1"]}]
        assert clock.pending_timers() == 0, "the flush timer outlived the write"


async def test_a_step_after_results_waits_for_the_changes_before_them_not_for_them(
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    """A heartbeat (no change of its own) or a read right after a results post: it waits
    for the last real change only, which is stored, so it neither waits for the results'
    write nor brings it forward."""
    writer = make_writer(store, recorder, clock)
    async with running(writer):
        placed = writer.submit(place(a="n1"))
        await flushed(writer, placed)
        writer.submit(ran(A, "r1"))
        heartbeat = writer.submit(StateDelta())
        assert heartbeat == placed
        started = clock.monotonic()
        await flushed(writer, heartbeat)
        await clock.settle()
        assert clock.monotonic() == started
        assert len(store.stored) == 1, "the results were written before their timer"
        await clock.run_for(HISTORY_FLUSH_S)
        assert [run_ids(d) for d in store.stored] == [{}, {A: ["r1"]}]


async def test_another_change_takes_the_waiting_history_with_it_at_once(
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    writer = make_writer(store, recorder, clock)
    async with running(writer):
        writer.submit(ran(A, "r1"))
        await clock.settle()
        seq = writer.submit(place(a="n1"))
        started = clock.monotonic()
        await flushed(writer, seq)
        assert clock.monotonic() == started
        assert len(store.stored) == 1
        assert (run_ids(store.stored[0]), dict(store.stored[0].placement)) == (
            {A: ["r1"]},
            {A: N1},
        )


async def test_closing_drops_the_flush_timer(
    store: RecordingStore, recorder: Recorder, clock: FakeClock
) -> None:
    writer = make_writer(store, recorder, clock)
    async with running(writer):
        writer.submit(ran(A, "r1"))
        assert clock.pending_timers() == 1
        writer.close()
        assert clock.pending_timers() == 0
        await clock.run_for(HISTORY_FLUSH_S)
    assert store.attempts == []


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
    writer = StoreWriter(
        store, epoch=EPOCH, snapshot=no_snapshot, on_fenced=lambda: None, clock=clock
    )
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
    writer = StoreWriter(
        store, epoch=EPOCH, snapshot=no_snapshot, on_fenced=lambda: None, clock=clock
    )
    task = asyncio.create_task(writer.run(), name="writer")
    await asyncio.sleep(0)
    writer.close()
    await clock.settle()
    assert task.done()
    assert not task.cancelled()


# ------------------------------------------------------ a store that lost its data

VERIFY_S = 2.0
RECORD = NodeRecord(labels={}, capacity=1, cordoned=False)


class Leader:
    """The leader's side of the writer: its persisted state, which each step changes and
    then submits (as the dispatcher's steps do, with no await in between)."""

    def __init__(self) -> None:
        self.held = MemoryStateStore()  # only a container of records here, never lost

    def step(self, writer: StoreWriter, delta: StateDelta) -> int:
        _apply_now(self.held, delta)
        return writer.submit(delta)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            configs=dict(self.held.configs),
            sources=dict(self.held.sources),
            placement=dict(self.held.placement),
            nodes=dict(self.held.nodes),
        )


def _apply_now(target: MemoryStateStore, delta: StateDelta) -> None:
    for name in ("configs", "sources", "placement", "nodes"):
        records = getattr(target, name)
        for key, value in getattr(delta, name).items():
            if value is None:
                records.pop(key, None)
            else:
                records[key] = value


def held(store: MemoryStateStore) -> Snapshot:
    return Snapshot(
        configs=dict(store.configs),
        sources=dict(store.sources),
        placement=dict(store.placement),
        nodes=dict(store.nodes),
    )


class ClaimHookStore(MemoryStateStore):
    """The in-memory store, whose claims can fail, be held in flight, or let another
    term in first."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: list[float] = []
        self.claim_failure: StoreError | None = None
        self.claim_gate = asyncio.Event()
        self.claim_gate.set()
        self.claim_entered = asyncio.Event()
        self.newer_claims_first: int | None = None
        self.clock: FakeClock | None = None

    async def claim(self, *, epoch: int, history: bool = True) -> Snapshot:
        self.claims.append(self.clock.monotonic() if self.clock else 0.0)
        self.claim_entered.set()
        await self.claim_gate.wait()
        if self.claim_failure is not None:
            raise self.claim_failure
        if self.newer_claims_first is not None:
            await super().claim(epoch=self.newer_claims_first)
        return await super().claim(epoch=epoch, history=history)


async def lost_and_leader(
    recorder: Recorder, clock: FakeClock, *, verify_s: float | None = None
) -> tuple[ClaimHookStore, Leader, StoreWriter]:
    """A claimed store, a leader with two nodes and two placed checks written through."""
    store = ClaimHookStore()
    store.clock = clock
    await store.claim(epoch=EPOCH)
    store.claims.clear()
    leader = Leader()
    writer = make_writer(store, recorder, clock, snapshot=leader.snapshot, verify_s=verify_s)
    return store, leader, writer


async def test_a_write_that_finds_the_store_lost_claims_it_again_and_writes_the_whole_state(
    recorder: Recorder, clock: FakeClock
) -> None:
    store, leader, writer = await lost_and_leader(recorder, clock)
    async with running(writer) as task:
        leader.step(writer, StateDelta(nodes={N1: RECORD, N2: RECORD}))
        await flushed(writer, leader.step(writer, place(a="n1", b="n2")))
        assert held(store) == leader.snapshot()

        store.lose()  # Redis restarted empty: no records, no claim
        started = clock.monotonic()
        with capture_logs() as logs:
            seq = leader.step(writer, place(c="n1", a=None))
            waiters = [asyncio.create_task(writer.wait_flushed(seq)) for _ in range(2)]
            outcomes = await ended_at_once(clock, waiters)
        assert outcomes == [None, None], "the change was answered as stored"
        assert clock.monotonic() == started
        assert not task.done(), "the writer stopped: the term would have ended"

    assert store.epoch == EPOCH, "claimed again with the same epoch"
    assert store.claims == [started], "one claim, at once"
    assert held(store) == leader.snapshot(), "the store holds the whole state again"
    assert held(store).placement == {B: N2, C: N1}
    assert writer.flushed == seq
    assert writer.rewrites == 1
    assert recorder.fenced == 0
    [rewritten] = [e for e in logs if e["event"] == "store_lost_rewritten"]
    assert rewritten["epoch"] == EPOCH
    assert (rewritten["nodes"], rewritten["placements"], rewritten["deleted"]) == (2, 2, 0)
    assert [e["event"] for e in logs].index("store_lost") < [e["event"] for e in logs].index(
        "store_lost_rewritten"
    )
    # Health says what happened: degraded while writing it again, then healthy saying so.
    assert [status for status, _ in recorder.statuses] == [Status.DEGRADED, Status.HEALTHY]
    assert "lost its data" in recorder.statuses[0][1]
    assert "written again by epoch 4" in recorder.statuses[1][1]
    assert "2 placements" in recorder.statuses[1][1]


async def test_a_leader_past_its_deadline_does_not_claim_a_lost_store(
    recorder: Recorder, clock: FakeClock
) -> None:
    store = ClaimHookStore()
    store.clock = clock
    await store.claim(epoch=EPOCH)
    store.claims.clear()
    leader = Leader()
    acting = [True]
    writer = StoreWriter(
        store, epoch=EPOCH, snapshot=leader.snapshot, may_act=lambda: acting[0],
        on_fenced=recorder.on_fenced, clock=clock, on_health=recorder.on_health,
        retry_s=RETRY_S, wait_timeout_s=WAIT_TIMEOUT_S,
    )  # fmt: skip
    async with running(writer) as task:
        await flushed(writer, leader.step(writer, StateDelta(nodes={N1: RECORD})))
        store.lose()
        acting[0] = False  # its lease's local deadline has passed; the term ends soon
        seq = leader.step(writer, place(a="n1"))
        [outcome] = await ended_at_once(clock, [asyncio.create_task(writer.wait_flushed(seq))])
        assert isinstance(outcome, StoreError), "a change answered as stored"
        await ended_at_once(clock, [task])

    assert store.claims == [], "claimed the store past its deadline"
    assert store.epoch == 0, "the lost store was claimed (a newer leader would be fenced)"
    assert held(store) == Snapshot()
    assert recorder.fenced == 0


async def test_an_idle_writer_finds_a_lost_store_within_verify_s_and_writes_it_whole(
    recorder: Recorder, clock: FakeClock
) -> None:
    store, leader, writer = await lost_and_leader(recorder, clock, verify_s=VERIFY_S)
    async with running(writer):
        leader.step(writer, StateDelta(nodes={N1: RECORD}))
        await flushed(writer, leader.step(writer, place(a="n1", b="n1")))
        writes = store.writes
        # Idle: one check of the claim every verify_s, which writes nothing.
        await clock.run_for(3 * VERIFY_S)
        assert writer.checks == 3
        assert store.writes == writes, "an idle check changed the store"
        assert recorder.statuses == []

        store.lose()
        lost_at = clock.monotonic()
        await clock.run_for(VERIFY_S - 0.01)
        assert held(store) == Snapshot(), "found before the next check was due"
        await clock.run_for(0.01)
        assert held(store) == leader.snapshot(), "not written again by the next check"
        assert store.epoch == EPOCH
        assert store.claims == [lost_at + VERIFY_S]
        assert writer.rewrites == 1
        # Checking goes on afterwards, and finds nothing more to do.
        await clock.run_for(2 * VERIFY_S)
        assert writer.rewrites == 1
        assert writer.checks == 6
    assert recorder.fenced == 0


async def test_a_failing_claim_during_the_repair_is_retried_and_waiters_still_get_their_answer(
    recorder: Recorder, clock: FakeClock
) -> None:
    store, leader, writer = await lost_and_leader(recorder, clock)
    async with running(writer) as task:
        await flushed(writer, leader.step(writer, StateDelta(nodes={N1: RECORD})))
        store.lose()
        store.claim_failure = StoreError("redis: Connection refused")
        started = clock.monotonic()
        seq = leader.step(writer, place(a="n1"))
        waiting = asyncio.create_task(writer.wait_flushed(seq))
        await clock.run_for(3 * RETRY_S - 0.01)
        # One claim at once, then one every retry_s: at 0, 0.5 and 1.0 s.
        assert store.claims == [started, started + RETRY_S, started + 2 * RETRY_S]
        assert not waiting.done()
        assert recorder.health[-1] is not None
        assert "Connection refused" in recorder.health[-1]
        assert recorder.last_status() is Status.UNHEALTHY

        store.claim_failure = None
        await clock.run_for(0.01)  # the fourth claim succeeds
        async with asyncio.timeout(GUARD_S):
            await waiting
        assert len(store.claims) == 4
        assert not task.done()
    assert held(store) == leader.snapshot()
    assert store.epoch == EPOCH
    assert recorder.last_status() is Status.HEALTHY, "the repair is reported"
    assert writer.rewrites == 1
    assert recorder.fenced == 0


async def test_a_newer_term_claiming_the_lost_store_first_fences_the_writer(
    recorder: Recorder, clock: FakeClock
) -> None:
    store, leader, writer = await lost_and_leader(recorder, clock)
    async with running(writer) as task:
        await flushed(writer, leader.step(writer, StateDelta(nodes={N1: RECORD})))
        store.lose()
        store.newer_claims_first = EPOCH + 1  # a new leader took the lease meanwhile
        seq = leader.step(writer, place(a="n1"))
        [outcome] = await ended_at_once(clock, [asyncio.create_task(writer.wait_flushed(seq))])
        assert isinstance(outcome, Fenced), outcome
        assert task.done(), "the writer did not stop by itself"
    assert recorder.fenced == 1
    assert store.epoch == EPOCH + 1
    assert held(store) == Snapshot(), "the fenced writer wrote its state over the new term's"
    assert writer.rewrites == 0


async def test_steps_during_the_repair_are_written_after_it_and_newer_values_win(
    recorder: Recorder, clock: FakeClock
) -> None:
    store, leader, writer = await lost_and_leader(recorder, clock)
    async with running(writer):
        leader.step(writer, StateDelta(nodes={N1: RECORD, N2: RECORD}))
        await flushed(writer, leader.step(writer, place(a="n1", b="n1")))
        store.lose()
        store.claim_gate.clear()
        first = leader.step(writer, place(a="n2"))
        async with asyncio.timeout(GUARD_S):
            await store.claim_entered.wait()  # the repair's claim is in flight
        later = [leader.step(writer, place(b=None)), leader.step(writer, place(c="n2"))]
        store.claim_gate.set()
        await flushed(writer, later[-1])
        await flushed(writer, first)
    assert held(store) == leader.snapshot()
    assert held(store).placement == {A: N2, C: N2}
    assert writer.rewrites == 1


async def test_a_store_that_kept_part_of_its_records_holds_exactly_the_state_after_the_repair(
    recorder: Recorder, clock: FakeClock
) -> None:
    """A loss of the claim alone (an evicted key): records the leader has deleted since
    must not survive the repair."""
    store, leader, writer = await lost_and_leader(recorder, clock)
    async with running(writer):
        leader.step(writer, StateDelta(nodes={N1: RECORD}))
        await flushed(writer, leader.step(writer, place(a="n1", b="n1")))
        store.epoch = 0  # only the claim is gone
        store.placement[C] = N3  # and a record the leader never had
        with capture_logs() as logs:
            await flushed(writer, leader.step(writer, place(b=None)))
    assert held(store) == leader.snapshot()
    assert held(store).placement == {A: N1}
    [rewritten] = [e for e in logs if e["event"] == "store_lost_rewritten"]
    assert rewritten["deleted"] == 2  # b (deleted by the leader) and c (unknown to it)


async def test_a_term_that_ends_during_the_repair_writes_nothing_more(
    recorder: Recorder, clock: FakeClock
) -> None:
    """The dispatcher drops its state when a term ends: a repair must not take a
    snapshot then (it would write an empty state over the store)."""
    asked: list[float] = []
    store, leader, writer = await lost_and_leader(recorder, clock)

    def snapshot() -> Snapshot:
        asked.append(clock.monotonic())
        return leader.snapshot()

    writer = make_writer(store, recorder, clock, snapshot=snapshot)
    async with running(writer) as task:
        await flushed(writer, leader.step(writer, StateDelta(nodes={N1: RECORD})))
        store.lose()
        store.claim_gate.clear()
        seq = leader.step(writer, place(a="n1"))
        waiting = asyncio.create_task(writer.wait_flushed(seq))
        async with asyncio.timeout(GUARD_S):
            await store.claim_entered.wait()
        writer.close()
        store.claim_gate.set()
        [outcome] = await ended_at_once(clock, [waiting])
        assert type(outcome) is StoreError, outcome
        await clock.settle()
        assert task.done()
    assert asked == [], "a snapshot was taken after the term ended"
    assert held(store).nodes == {}, "written after the term ended"
    assert writer.rewrites == 0


async def test_a_writer_without_the_state_to_write_ends_the_term_on_a_lost_store(
    recorder: Recorder, clock: FakeClock
) -> None:
    """No snapshot to write (a writer made without one): a loss cannot be repaired, so
    it ends the term as a fence does; the next term finds the store empty."""
    store = MemoryStateStore()
    await store.claim(epoch=EPOCH)
    writer = StoreWriter(
        store, epoch=EPOCH, on_fenced=recorder.on_fenced, clock=clock, on_health=recorder.on_health
    )
    async with running(writer) as task:
        store.lose()
        seq = writer.submit(place(a="n1"))
        [outcome] = await ended_at_once(clock, [asyncio.create_task(writer.wait_flushed(seq))])
        assert isinstance(outcome, Fenced), outcome
        assert task.done()
    assert recorder.fenced == 1
    assert store.epoch == 0, "claimed by a writer that cannot write the state"
