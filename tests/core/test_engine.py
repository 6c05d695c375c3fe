"""The async dispatcher around the core: ticks on a fake clock, and the configs long poll.

Heartbeat ages run on ``FakeClock``; the long poll's ``wait_s`` is real event-loop time,
so real waits are kept well under a second.
"""

from __future__ import annotations

import asyncio

import pytest

from dispatcher.common.clock import FakeClock
from dispatcher.core.model import CheckConfig, NodeName, SourceName, make_config
from dispatcher.engine import Dispatcher
from dispatcher.errors import UnknownNode
from dispatcher.settings import DispatchSettings

API = SourceName("api")
A, B = NodeName("a"), NodeName("b")
# A guard on every await that could hang, far above the waits under test.
GUARD_S = 2.0


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


async def elapsed_s(awaitable: asyncio.Future[object] | asyncio.Task[object]) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(awaitable, GUARD_S)
    return loop.time() - started


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
    dispatcher: Dispatcher,
) -> None:
    await dispatcher.node_status(A, last_change=-1)
    probe = check("probe")
    await dispatcher.add_to_source(API, [probe])
    current = dispatcher.state.nodes[A].last_change

    poll = asyncio.ensure_future(dispatcher.node_configs(A, since=current - 1, wait_s=5.0))
    took = await elapsed_s(poll)

    assert took < 0.5
    assert poll.result() == (current, [probe])


async def test_long_poll_wakes_when_a_check_is_added_for_the_node(
    dispatcher: Dispatcher,
) -> None:
    await dispatcher.node_status(A, last_change=-1)
    since = dispatcher.state.nodes[A].last_change
    poll = asyncio.ensure_future(dispatcher.node_configs(A, since=since, wait_s=5.0))
    await asyncio.sleep(0.05)
    assert not poll.done(), "the poll answered although nothing changed"

    probe = check("probe")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await dispatcher.add_to_source(API, [probe])
    last_change, configs = await asyncio.wait_for(poll, GUARD_S)

    assert loop.time() - started < 0.5
    assert last_change > since
    assert configs == [probe]


async def test_long_poll_is_not_woken_by_another_node_change(
    dispatcher: Dispatcher,
) -> None:
    await dispatcher.node_status(A, last_change=-1)
    await dispatcher.node_status(B, last_change=-1)
    first, second = check("first"), check("second")
    await dispatcher.add_to_source(API, [first])  # -> a
    since = dispatcher.state.nodes[A].last_change
    poll = asyncio.ensure_future(dispatcher.node_configs(A, since=since, wait_s=0.3))
    await asyncio.sleep(0.05)

    await dispatcher.add_to_source(API, [second])  # -> b
    assert dispatcher.state.placement[second.digest] == B
    await asyncio.sleep(0.05)

    assert not poll.done(), "a change on b answered a's poll"
    last_change, configs = await asyncio.wait_for(poll, GUARD_S)
    assert (last_change, configs) == (since, [first])


async def test_long_poll_returns_unchanged_after_wait_s(dispatcher: Dispatcher) -> None:
    await dispatcher.node_status(A, last_change=-1)
    probe = check("probe")
    await dispatcher.add_to_source(API, [probe])
    since = dispatcher.state.nodes[A].last_change

    poll = asyncio.ensure_future(dispatcher.node_configs(A, since=since, wait_s=0.2))
    took = await elapsed_s(poll)

    assert 0.15 <= took < 1.0
    assert poll.result() == (since, [probe])


async def test_long_poll_raises_unknown_node_when_the_node_expires_during_the_wait(
    dispatcher: Dispatcher, clock: FakeClock
) -> None:
    await dispatcher.node_status(A, last_change=-1)
    since = dispatcher.state.nodes[A].last_change
    poll = asyncio.ensure_future(dispatcher.node_configs(A, since=since, wait_s=1.0))
    await asyncio.sleep(0.05)
    assert not poll.done()

    clock.advance(31.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await dispatcher.tick()

    with pytest.raises(UnknownNode):
        await asyncio.wait_for(poll, GUARD_S)
    assert loop.time() - started < 0.5, "the expiry did not end the wait"


async def test_long_poll_raises_unknown_node_when_the_node_leaves_during_the_wait(
    dispatcher: Dispatcher,
) -> None:
    await dispatcher.node_status(A, last_change=-1)
    since = dispatcher.state.nodes[A].last_change
    poll = asyncio.ensure_future(dispatcher.node_configs(A, since=since, wait_s=1.0))
    await asyncio.sleep(0.05)

    await dispatcher.node_status(A, last_change=-1, leaving=True)

    with pytest.raises(UnknownNode):
        await asyncio.wait_for(poll, 0.5)


async def test_configs_of_an_unknown_node_raise_at_once(dispatcher: Dispatcher) -> None:
    with pytest.raises(UnknownNode):
        await asyncio.wait_for(dispatcher.node_configs(A, since=0, wait_s=1.0), 0.5)


async def test_two_polls_of_one_node_both_wake(dispatcher: Dispatcher) -> None:
    await dispatcher.node_status(A, last_change=-1)
    since = dispatcher.state.nodes[A].last_change
    polls = [
        asyncio.ensure_future(dispatcher.node_configs(A, since=since, wait_s=5.0)) for _ in range(2)
    ]
    await asyncio.sleep(0.05)

    probe = check("probe")
    await dispatcher.add_to_source(API, [probe])

    results = await asyncio.wait_for(asyncio.gather(*polls), GUARD_S)
    assert [configs for _, configs in results] == [[probe], [probe]]


async def test_wake_all_ends_pending_polls_and_later_ones_at_once(dispatcher: Dispatcher) -> None:
    await dispatcher.node_status(A, last_change=-1)
    since = dispatcher.state.nodes[A].last_change
    pending = asyncio.ensure_future(dispatcher.node_configs(A, since=since, wait_s=5.0))
    await asyncio.sleep(0.05)

    dispatcher.wake_all()  # shutdown

    assert await asyncio.wait_for(pending, 0.5) == (since, [])
    later = asyncio.ensure_future(dispatcher.node_configs(A, since=since, wait_s=5.0))
    assert await elapsed_s(later) < 0.5
