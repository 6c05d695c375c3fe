"""The async dispatcher around the core: ticks and the configs long poll, on a fake clock.

Heartbeat ages and the long poll's ``wait_s`` both run on ``FakeClock``: a test moves time
on by hand, and "at once" means "before any time passed on the clock", so no assertion
depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import pytest

from dispatcher.common.clock import FakeClock
from dispatcher.core.model import CheckConfig, NodeName, SourceName, make_config
from dispatcher.engine import Dispatcher
from dispatcher.errors import UnknownNode
from dispatcher.settings import DispatchSettings

API = SourceName("api")
A, B = NodeName("a"), NodeName("b")


def check(label: str) -> CheckConfig:
    return make_config(name="http", instances=[{"url": f"http://{label}/healthz"}])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def dispatcher(clock: FakeClock) -> Dispatcher:
    return Dispatcher(settings=DispatchSettings(node_expiration_timeout_s=30.0), clock=clock)


async def two_nodes_four_checks(dispatcher: Dispatcher) -> list[CheckConfig]:
    await dispatcher.node_status(A, last_change=-1)
    await dispatcher.node_status(B, last_change=-1)
    configs = [check(f"c{i}") for i in range(4)]
    await dispatcher.add_to_source(API, configs)
    assert [dispatcher.state.placement[c.digest] for c in configs] == [A, B, A, B]
    return configs


async def start_poll(
    dispatcher: Dispatcher, clock: FakeClock, *, since: int, wait_s: float
) -> asyncio.Task[tuple[int, list[CheckConfig]]]:
    """Starts a long poll and returns once it waits (its deadline is a pending timer)."""
    timers = clock.pending_timers()
    poll = asyncio.create_task(dispatcher.node_configs(A, since=since, wait_s=wait_s))
    await clock.wait_for_timers(timers + 1)
    assert not poll.done()
    return poll


async def answered_at_once(clock: FakeClock, poll: asyncio.Future[Any]) -> None:
    """The poll has ended with no time passed on the clock (a poll that still waited
    would need the clock moved on to end)."""
    started = clock.monotonic()
    await clock.settle()
    assert poll.done(), "the poll is still waiting"
    assert clock.monotonic() == started


# ---------------------------------------------------------------------- tick


async def test_tick_expires_silent_nodes_and_redispatches_their_checks(
    dispatcher: Dispatcher, clock: FakeClock
) -> None:
    configs = await two_nodes_four_checks(dispatcher)
    clock.advance(10.0)
    await dispatcher.node_status(A, last_change=-1)  # a: last seen 25 s before the tick
    clock.advance(25.0)  # b: last seen 35 s before the tick

    await dispatcher.tick()

    assert set(dispatcher.state.nodes) == {A}
    assert {dispatcher.state.placement[c.digest] for c in configs} == {A}
    assert dispatcher.state.dangling == {}


async def test_tick_keeps_nodes_inside_the_timeout(
    dispatcher: Dispatcher, clock: FakeClock
) -> None:
    configs = await two_nodes_four_checks(dispatcher)
    clock.advance(30.0)
    await dispatcher.tick()
    assert set(dispatcher.state.nodes) == {A, B}
    assert [dispatcher.state.placement[c.digest] for c in configs] == [A, B, A, B]


async def test_tick_places_dangling_checks_on_a_new_node(dispatcher: Dispatcher) -> None:
    lonely = check("lonely")
    await dispatcher.add_to_source(API, [lonely])
    await dispatcher.node_status(A, last_change=-1)
    assert lonely.digest in dispatcher.state.dangling

    await dispatcher.tick()

    assert dispatcher.state.placement[lonely.digest] == A
    last_change, configs = await dispatcher.node_configs(A)
    assert configs == [lonely]
    assert last_change == dispatcher.state.nodes[A].last_change


# ----------------------------------------------------------------- long poll


async def test_long_poll_answers_at_once_when_the_counter_differs(
    dispatcher: Dispatcher, clock: FakeClock
) -> None:
    await dispatcher.node_status(A, last_change=-1)
    probe = check("probe")
    await dispatcher.add_to_source(API, [probe])
    current = dispatcher.state.nodes[A].last_change

    poll = asyncio.ensure_future(dispatcher.node_configs(A, since=current - 1, wait_s=5.0))

    await answered_at_once(clock, poll)
    assert poll.result() == (current, [probe])
    assert clock.pending_timers() == 0


async def test_long_poll_wakes_when_a_check_is_added_for_the_node(
    dispatcher: Dispatcher, clock: FakeClock
) -> None:
    await dispatcher.node_status(A, last_change=-1)
    since = dispatcher.state.nodes[A].last_change
    poll = await start_poll(dispatcher, clock, since=since, wait_s=5.0)
    await clock.settle()
    assert not poll.done(), "the poll answered although nothing changed"

    probe = check("probe")
    await dispatcher.add_to_source(API, [probe])

    await answered_at_once(clock, poll)
    last_change, configs = poll.result()
    assert last_change > since
    assert configs == [probe]
    assert clock.pending_timers() == 0  # its deadline was dropped with it


async def test_long_poll_is_not_woken_by_another_node_change(
    dispatcher: Dispatcher, clock: FakeClock
) -> None:
    await dispatcher.node_status(A, last_change=-1)
    await dispatcher.node_status(B, last_change=-1)
    first, second = check("first"), check("second")
    await dispatcher.add_to_source(API, [first])  # -> a
    since = dispatcher.state.nodes[A].last_change
    poll = await start_poll(dispatcher, clock, since=since, wait_s=3.0)

    await dispatcher.add_to_source(API, [second])  # -> b
    assert dispatcher.state.placement[second.digest] == B
    await clock.settle()
    assert not poll.done(), "a change on b answered a's poll"

    await clock.run_for(3.0)
    assert poll.done()
    assert poll.result() == (since, [first])


async def test_long_poll_returns_unchanged_after_wait_s(
    dispatcher: Dispatcher, clock: FakeClock
) -> None:
    await dispatcher.node_status(A, last_change=-1)
    probe = check("probe")
    await dispatcher.add_to_source(API, [probe])
    since = dispatcher.state.nodes[A].last_change

    poll = await start_poll(dispatcher, clock, since=since, wait_s=20.0)
    await clock.run_for(19.9)
    assert not poll.done(), "the poll ended before its wait_s"
    await clock.run_for(0.1)
    assert poll.done(), "the poll outlived its wait_s"
    assert poll.result() == (since, [probe])


async def test_long_poll_raises_unknown_node_when_the_node_expires_during_the_wait(
    dispatcher: Dispatcher, clock: FakeClock
) -> None:
    await dispatcher.node_status(A, last_change=-1)
    since = dispatcher.state.nodes[A].last_change
    poll = await start_poll(dispatcher, clock, since=since, wait_s=60.0)

    clock.advance(31.0)  # past the expiry, not past the poll's wait
    assert not poll.done()
    await dispatcher.tick()

    await answered_at_once(clock, poll)  # the expiry ended the wait
    with pytest.raises(UnknownNode):
        poll.result()


async def test_long_poll_raises_unknown_node_when_the_node_leaves_during_the_wait(
    dispatcher: Dispatcher, clock: FakeClock
) -> None:
    await dispatcher.node_status(A, last_change=-1)
    since = dispatcher.state.nodes[A].last_change
    poll = await start_poll(dispatcher, clock, since=since, wait_s=5.0)

    await dispatcher.node_status(A, last_change=-1, leaving=True)

    await answered_at_once(clock, poll)
    with pytest.raises(UnknownNode):
        poll.result()


async def test_configs_of_an_unknown_node_raise_at_once(
    dispatcher: Dispatcher, clock: FakeClock
) -> None:
    poll = asyncio.ensure_future(dispatcher.node_configs(A, since=0, wait_s=5.0))
    await answered_at_once(clock, poll)
    with pytest.raises(UnknownNode):
        poll.result()


async def test_two_polls_of_one_node_both_wake(dispatcher: Dispatcher, clock: FakeClock) -> None:
    await dispatcher.node_status(A, last_change=-1)
    since = dispatcher.state.nodes[A].last_change
    polls = [await start_poll(dispatcher, clock, since=since, wait_s=5.0) for _ in range(2)]

    probe = check("probe")
    await dispatcher.add_to_source(API, [probe])

    both = asyncio.gather(*polls)
    await answered_at_once(clock, both)
    assert [configs for _, configs in both.result()] == [[probe], [probe]]


async def test_wake_all_ends_pending_polls_and_later_ones_at_once(
    dispatcher: Dispatcher, clock: FakeClock
) -> None:
    await dispatcher.node_status(A, last_change=-1)
    since = dispatcher.state.nodes[A].last_change
    pending = await start_poll(dispatcher, clock, since=since, wait_s=5.0)

    dispatcher.wake_all()  # shutdown

    await answered_at_once(clock, pending)
    assert pending.result() == (since, [])
    later = asyncio.ensure_future(dispatcher.node_configs(A, since=since, wait_s=5.0))
    await answered_at_once(clock, later)
    assert later.result() == (since, [])


# -------------------------------------------------------------- sliced reads


async def test_a_sliced_read_lets_a_heartbeat_in_between_its_slices(
    dispatcher: Dispatcher,
) -> None:
    """The dashboard's pass over 100,000 checks runs in slices: a heartbeat that arrives
    meanwhile is handled between two slices, not after the whole pass."""
    await two_nodes_four_checks(dispatcher)
    order: list[str] = []
    beat_sent = asyncio.Event()

    def view(state: Any) -> Generator[None, None, int]:
        order.append("slice 1")
        beat_sent.set()
        yield
        order.append("slice 2")
        yield
        order.append("slice 3")
        return len(state.configs)

    async def heartbeat() -> None:
        await beat_sent.wait()
        await dispatcher.node_status(A, last_change=-1)
        order.append("heartbeat")

    beat = asyncio.create_task(heartbeat())
    assert await dispatcher.read_sliced(view) == 4
    await beat
    assert order.index("heartbeat") < order.index("slice 3"), order
    assert order[0] == "slice 1"
