"""``Dispatcher.rebalance`` with its event loop free while it plans, on a fake clock.

The dispatcher reads the planner's inputs under its lock a slice at a time, runs the
planner in slices with the lock free, then makes the moves that still hold in one step.
Here the planner is held at its start until a test lets it go (``HeldPlanner``), so that
what happens meanwhile (a heartbeat, a cordon, a change of term, a second rebalance) is
ordered by the test, not by the machine's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from dispatcher import engine
from dispatcher.common.clock import FakeClock
from dispatcher.core.model import CheckConfig, NodeName
from dispatcher.core.rebalance import Plan, plan_steps
from dispatcher.engine import Dispatcher
from dispatcher.errors import NoLeader
from dispatcher.settings import DispatchSettings
from tests.core.test_rebalance import SCheck, SNode, outcome_moves, setup_state, where
from tests.core.test_rebalance_sliced import random_state

NODES = [SNode("a", {"zone": "x"}), SNode("b", {"zone": "x"}), SNode("c", {"zone": "x"})]
CHECKS = [
    SCheck("c1", "a", 0.5, selector={"zone": "x"}),
    SCheck("c2", "a", 0.4),
    SCheck("c3", "a", 0.3),
    SCheck("c4", "a", 0.2),
    SCheck("c5", "a", 0.1),
]
"""a = 1.5, b = c = 0: mean 0.5, bound 0.55. The plan: c1 to b, c2 and c5 to c."""
PLANNED = [("c1", "a", "b"), ("c2", "a", "c"), ("c5", "a", "c")]


class HeldPlanner:
    """Stands in for ``engine.plan_steps``: each planning yields, slice after slice,
    until ``release`` is set, then plans as the real one does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.planning = asyncio.Event()
        self.release = asyncio.Event()
        self.started = 0
        self.held_slices = 0

        def held(*args: Any, **kwargs: Any) -> Generator[None, None, Plan]:
            self.started += 1
            self.planning.set()
            while not self.release.is_set():
                self.held_slices += 1
                yield
            return (yield from plan_steps(*args, **kwargs))

        monkeypatch.setattr(engine, "plan_steps", held)


def started(
    clock: FakeClock, nodes: Sequence[SNode] = NODES, checks: Sequence[SCheck] = CHECKS
) -> tuple[Dispatcher, dict[str, CheckConfig]]:
    """A dispatcher serving a term over the table's state."""
    dispatcher = Dispatcher(
        settings=DispatchSettings(rebalance_margin=0.1, rebalance_min_gain=0.1), clock=clock
    )
    state, configs = setup_state(nodes, checks)
    dispatcher.begin_term(state=state, epoch=1)
    return dispatcher, configs


def placed(dispatcher: Dispatcher, configs: Mapping[str, CheckConfig]) -> dict[str, str | None]:
    return where(dispatcher.state, configs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_a_heartbeat_is_answered_while_the_planner_runs(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher, configs = started(clock)
    planner = HeldPlanner(monkeypatch)
    order: list[str] = []

    async def rebalance() -> None:
        outcome = await dispatcher.rebalance()
        order.append(f"rebalanced: {outcome.reason}")

    task = asyncio.create_task(rebalance(), name="rebalance")
    await planner.planning.wait()
    assert not dispatcher.lock.locked()  # the planner runs with the lock free
    await dispatcher.node_status(NodeName("b"), last_change=-1)
    order.append("heartbeat")
    assert await dispatcher.read(lambda state: len(state.nodes)) == 3
    order.append("read")
    assert not task.done()
    planner.release.set()
    await task

    assert order == ["heartbeat", "read", "rebalanced: applied"]
    assert planner.held_slices > 0
    assert clock.monotonic() == FakeClock().monotonic()  # no time passed: nothing waited
    expected = {"c3": "a", "c4": "a", **{name: dest for name, _, dest in PLANNED}}
    assert placed(dispatcher, configs) == expected


async def test_heartbeats_go_in_between_the_slices_of_a_rebalance(clock: FakeClock) -> None:
    """The real slices (one unit of work each), not a held planner: a heartbeat sent as
    the rebalance starts is answered long before it ends, and so is a second one sent
    once it is under way."""
    dispatcher = Dispatcher(settings=DispatchSettings(), clock=clock)
    dispatcher.begin_term(state=random_state(2), epoch=1)
    dispatcher.rebalance_slice_work = 1
    node = sorted(dispatcher.state.nodes)[0]
    order: list[str] = []

    async def rebalance() -> None:
        outcome = await dispatcher.rebalance()
        order.append(f"rebalanced: {len(outcome.moves)} moves")

    async def heartbeats() -> None:
        for beat in ("first", "second"):
            await dispatcher.node_status(node, last_change=-1)
            order.append(f"{beat} heartbeat")

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(rebalance(), name="rebalance")
        tasks.create_task(heartbeats(), name="heartbeats")

    assert order == ["first heartbeat", "second heartbeat", "rebalanced: 26 moves"]


@pytest.mark.parametrize("dry_run", [False, True])
async def test_in_slices_the_same_moves_as_one_step_on_a_static_state(
    clock: FakeClock, dry_run: bool
) -> None:
    """Slices of one unit of work, the most there can be: the same outcome as the
    state's own ``rebalance`` in one call on the same table."""
    dispatcher, configs = started(clock)
    dispatcher.rebalance_slice_work = 1
    state, same = setup_state(NODES, CHECKS)
    expected = state.rebalance(
        now=clock.monotonic(), margin=0.1, min_improvement=0.1, dry_run=dry_run
    )

    outcome = await dispatcher.rebalance(dry_run=dry_run)

    assert outcome == expected
    assert outcome_moves(outcome, configs) == PLANNED
    assert outcome.reason == ("dry_run" if dry_run else "applied")
    assert placed(dispatcher, configs) == where(state, same)


async def test_a_move_the_state_changed_under_while_planning_is_skipped_and_logged(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher, configs = started(clock)
    planner = HeldPlanner(monkeypatch)
    task = asyncio.create_task(dispatcher.rebalance(), name="rebalance")
    await planner.planning.wait()
    await dispatcher.cordon(NodeName("c"))  # the destination of c2 and c5
    planner.release.set()

    with capture_logs() as logs:
        outcome = await task

    assert (outcome.applied, outcome.reason, outcome.skipped) == (
        True,
        "applied",
        {"node_cordoned": 2},
    )
    assert outcome_moves(outcome, configs) == PLANNED[:1]
    assert placed(dispatcher, configs) == {"c1": "b", "c2": "a", "c3": "a", "c4": "a", "c5": "a"}
    events = [entry["event"] for entry in logs]
    assert events.count("rebalance_move") == 1
    summary = next(entry for entry in logs if entry["event"] == "rebalanced")
    assert (summary["moves"], summary["skipped"]) == (1, {"node_cordoned": 2})


async def test_a_rebalance_whose_term_changed_while_planning_changes_nothing(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It planned on the old term's state: nothing of it applies to the new one's."""
    dispatcher, configs = started(clock)
    planner = HeldPlanner(monkeypatch)
    task = asyncio.create_task(dispatcher.rebalance(), name="rebalance")
    await planner.planning.wait()
    dispatcher.end_term()
    new_state, _ = setup_state(NODES, CHECKS)
    dispatcher.begin_term(state=new_state, epoch=2)
    before = placed(dispatcher, configs)
    planner.release.set()

    with pytest.raises(NoLeader, match="term changed"):
        await task

    assert placed(dispatcher, configs) == before == dict.fromkeys(configs, "a")
    # The new term rebalances on its own state.
    assert outcome_moves(await dispatcher.rebalance(), configs) == PLANNED


async def test_a_rebalance_whose_term_ended_while_planning_stops(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher, _ = started(clock)
    planner = HeldPlanner(monkeypatch)
    task = asyncio.create_task(dispatcher.rebalance(), name="rebalance")
    await planner.planning.wait()
    dispatcher.end_term()

    with pytest.raises(NoLeader):
        await task
    assert not planner.release.is_set()  # it stopped in the middle of planning


async def test_a_second_rebalance_waits_for_the_first_and_plans_on_what_it_did(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher, configs = started(clock)
    planner = HeldPlanner(monkeypatch)
    first = asyncio.create_task(dispatcher.rebalance(), name="first")
    await planner.planning.wait()
    second = asyncio.create_task(dispatcher.rebalance(), name="second")
    for _ in range(10):
        await asyncio.sleep(0)
    assert planner.started == 1  # the second waits before reading anything
    planner.release.set()

    done_first, done_second = await first, await second

    assert planner.started == 2
    assert outcome_moves(done_first, configs) == PLANNED
    assert (done_second.reason, done_second.moves) == ("nothing_to_move", [])
