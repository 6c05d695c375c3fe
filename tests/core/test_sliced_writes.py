"""Big writes to sources in the engine: applied in slices, the loop and the lock free in
between, writes to one source serialised, long polls woken once, logs summarised.

Every assertion is on the order of events or on counts (which slice ran in which write,
what a heartbeat saw), never on how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
from structlog.testing import capture_logs

from dispatcher.common.clock import FakeClock
from dispatcher.core.model import (
    CheckConfig,
    CheckResult,
    Digest,
    NodeName,
    SourceName,
    make_config,
)
from dispatcher.core.sourceplan import SourceWork
from dispatcher.engine import Dispatcher
from dispatcher.errors import NoLeader, TooManyChecks
from dispatcher.settings import DispatchSettings
from dispatcher.steplog import DECISIONS_LOGGED, DECISIONS_SHOWN

CI, OTHER = SourceName("ci"), SourceName("other")
A, B = NodeName("a"), NodeName("b")
SLICE = 10


def check(label: str) -> CheckConfig:
    return make_config(name="http", instances=[{"url": f"http://{label}/"}])


def checks(prefix: str, count: int) -> list[CheckConfig]:
    return [check(f"{prefix}{i}") for i in range(count)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **settings: int) -> Dispatcher:
    return Dispatcher(
        settings=DispatchSettings(apply_slice_checks=SLICE, **settings),
        clock=clock,
    )


class Slices:
    """Records every slice of work the state applies: (the task that applied it, its
    pieces); ``on_slice`` runs after each."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.applied: list[tuple[str, list[SourceWork]]] = []
        self.on_slice: Callable[[int], None] = lambda count: None
        state = dispatcher.state
        apply = state.apply_work

        def recording(work: Sequence[SourceWork], *, now: float) -> None:
            apply(work, now=now)
            task = asyncio.current_task()
            self.applied.append((task.get_name() if task else "?", list(work)))
            self.on_slice(len(self.applied))

        state.apply_work = recording  # type: ignore[method-assign]

    def writers(self) -> list[str]:
        return [name for name, _ in self.applied]


async def test_a_heartbeat_during_a_big_put_is_answered_before_the_put_ends(
    clock: FakeClock,
) -> None:
    dispatcher = make(clock)
    await dispatcher.node_status(A, last_change=-1)
    slices = Slices(dispatcher)
    first = asyncio.Event()
    slices.on_slice = lambda count: first.set()
    done: list[str] = []

    put = asyncio.create_task(dispatcher.replace_source(CI, checks("c", 20 * SLICE)))
    put.add_done_callback(lambda _: done.append("put"))
    await first.wait()
    seen_by_heartbeat = len(dispatcher.state.placement)
    await dispatcher.node_status(B, last_change=-1)
    done.append("heartbeat")
    change = await put

    assert done == ["heartbeat", "put"]
    assert 0 < seen_by_heartbeat < 20 * SLICE, "the heartbeat came between two slices"
    assert len(slices.applied) == 20
    assert change.added == 20 * SLICE
    assert len(dispatcher.state.placement) == 20 * SLICE


async def test_a_write_cut_by_a_new_term_fails_and_leaves_the_new_term_alone(
    clock: FakeClock,
) -> None:
    """A term that ends and a new one that begins between two slices: the rest of the
    write must not land in the new term's state (its store never saw the first slices,
    so a 200 would acknowledge what is not stored): the write fails with NoLeader."""
    dispatcher = make(clock)
    slices = Slices(dispatcher)
    first = asyncio.Event()
    slices.on_slice = lambda count: first.set()

    put = asyncio.create_task(dispatcher.replace_source(CI, checks("c", 5 * SLICE)))
    await first.wait()
    dispatcher.end_term()
    dispatcher.begin_term(state=dispatcher.new_state(), epoch=2)

    with pytest.raises(NoLeader):
        await put
    assert len(slices.applied) == 1
    assert dispatcher.state.configs == {}, "nothing of the cut write in the new term"


async def test_a_small_write_is_one_step(clock: FakeClock) -> None:
    dispatcher = make(clock)
    slices = Slices(dispatcher)

    await dispatcher.replace_source(CI, checks("c", SLICE))

    assert len(slices.applied) == 1


async def test_two_writes_to_one_source_do_not_interleave(clock: FakeClock) -> None:
    dispatcher = make(clock)
    await dispatcher.node_status(A, last_change=-1)
    slices = Slices(dispatcher)
    first, second = checks("first", 5 * SLICE), checks("second", 5 * SLICE)

    one = asyncio.create_task(dispatcher.replace_source(CI, first), name="one")
    two = asyncio.create_task(dispatcher.replace_source(CI, second), name="two")
    done_one, done_two = await one, await two

    writers = slices.writers()
    assert writers == sorted(writers), writers  # every slice of one, then every one of two
    assert set(writers) == {"one", "two"}
    # The second was planned against the whole of the first: it removes all of it.
    assert (done_one.added, done_one.removed) == (5 * SLICE, 0)
    assert (done_two.added, done_two.removed) == (5 * SLICE, 5 * SLICE)
    held = {c.digest for c in dispatcher.state.source_configs(CI)}
    assert held == {c.digest for c in second}


async def test_a_put_and_a_post_to_one_source_do_not_interleave(clock: FakeClock) -> None:
    dispatcher = make(clock)
    slices = Slices(dispatcher)
    put_set, posted = checks("put", 3 * SLICE), checks("post", 3 * SLICE)

    put = asyncio.create_task(dispatcher.replace_source(CI, put_set), name="1-put")
    post = asyncio.create_task(dispatcher.add_to_source(CI, posted), name="2-post")
    await asyncio.gather(put, post)

    writers = slices.writers()
    assert writers == sorted(writers), writers
    held = {c.digest for c in dispatcher.state.source_configs(CI)}
    assert held == {c.digest for c in [*put_set, *posted]}


async def test_writes_to_different_sources_interleave(clock: FakeClock) -> None:
    dispatcher = make(clock)
    slices = Slices(dispatcher)

    await asyncio.gather(
        asyncio.create_task(dispatcher.replace_source(CI, checks("c", 5 * SLICE)), name="ci"),
        asyncio.create_task(dispatcher.replace_source(OTHER, checks("o", 5 * SLICE)), name="other"),
    )

    writers = slices.writers()
    assert writers != sorted(writers), "one source does not wait for another"
    assert len(dispatcher.state.configs) == 10 * SLICE


async def test_a_long_poll_wakes_once_with_the_whole_write(clock: FakeClock) -> None:
    dispatcher = make(clock)
    await dispatcher.node_status(A, last_change=-1)
    since, _ = dispatcher.state.node_configs(A)
    slices = Slices(dispatcher)
    seen_at_slice: list[bool] = []
    poll = asyncio.create_task(dispatcher.node_configs(A, since=since, wait_s=30.0))
    await clock.wait_for_timers(1)  # the poll waits
    slices.on_slice = lambda count: seen_at_slice.append(poll.done())

    await dispatcher.replace_source(CI, checks("c", 10 * SLICE))
    await clock.settle()

    assert seen_at_slice == [False] * 10, "not woken while the write went on"
    assert poll.done()
    _, configs = poll.result()
    assert len(configs) == 10 * SLICE, "woken once, with every slice applied"


async def test_a_source_limit_refuses_the_write_before_any_slice(clock: FakeClock) -> None:
    dispatcher = make(clock, max_checks_per_source=5 * SLICE)
    slices = Slices(dispatcher)
    await dispatcher.replace_source(CI, checks("c", 4 * SLICE))
    before = len(slices.applied)

    with pytest.raises(TooManyChecks):
        await dispatcher.replace_source(CI, checks("d", 5 * SLICE + 1))
    with pytest.raises(TooManyChecks):
        await dispatcher.add_to_source(CI, checks("e", SLICE + 1))

    assert len(slices.applied) == before, "nothing applied"
    assert len(dispatcher.state.configs) == 4 * SLICE
    await dispatcher.add_to_source(CI, checks("e", SLICE))  # up to the limit: fine
    assert dispatcher.state.held_count(CI) == 5 * SLICE


async def test_a_big_step_logs_one_summary_line_for_its_decisions(clock: FakeClock) -> None:
    dispatcher = Dispatcher(settings=DispatchSettings(apply_slice_checks=100), clock=clock)
    await dispatcher.node_status(A, last_change=-1)
    await dispatcher.node_status(B, last_change=-1)
    big = DECISIONS_LOGGED + 30

    with capture_logs() as logs:
        await dispatcher.replace_source(CI, checks("c", big))
        await dispatcher.replace_source(OTHER, checks("o", 3))

    summaries = [e for e in logs if e["event"] == "dispatch_decisions_summarized"]
    lines = [e for e in logs if e["event"] == "dispatch_decision"]
    [summary] = summaries
    assert summary["decisions"] == big
    assert summary["by_reason"] == {"new_check": big}
    assert (summary["placed"], summary["nodes"]) == (big, 2)
    assert len(summary["shown"]) == DECISIONS_SHOWN
    assert "instead of a dispatch_decision line each" in summary["note"]
    assert [e["digest"] for e in lines] == [c.digest for c in checks("o", 3)]


async def test_results_are_ordered_by_their_arrival_at_the_latest(clock: FakeClock) -> None:
    """The engine passes the wall time a batch arrives at (the core orders by it)."""
    dispatcher = make(clock)
    await dispatcher.node_status(A, last_change=-1)
    [probe] = checks("p", 1)
    await dispatcher.replace_source(CI, [probe])
    now = clock.time()

    def ran(run: str, ok: bool, started_at: float) -> CheckResult:
        errors = () if ok else ("down",)
        return CheckResult(Digest(probe.digest), run, ok, errors, started_at, 0.1)

    await dispatcher.record_results(A, [ran("ahead", True, now + 300.0)])
    clock.advance(15.0)
    await dispatcher.record_results(A, [ran("next", False, now + 15.0)])

    assert dispatcher.state.results[probe.digest].last.run_id == "next"
