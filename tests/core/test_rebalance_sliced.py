"""Rebalancing in parts: the planner's inputs read in slices, the planner run in slices,
and the moves made against the state as it is by then (``ClusterState.apply_rebalance``).

The dispatcher runs a rebalance this way so that its event loop is free while it plans
(tests/core/test_engine_rebalance.py). Proved here on the pure core: the parts give the
same plan and the same moves as one ``rebalance`` on a state that does not change, and a
planned move that the state changed under before it is made is skipped and counted, while
the others are made.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Generator, Mapping
from typing import TypeVar

import pytest

from dispatcher.core.model import (
    CheckConfig,
    CheckResult,
    CheckStats,
    NodeName,
    SourceName,
    make_config,
)
from dispatcher.core.rebalance import Plan, plan_steps
from dispatcher.core.state import ClusterState
from tests.core.test_rebalance import (
    WALL,
    SCheck,
    SNode,
    outcome_moves,
    setup_state,
    where,
)

T = TypeVar("T")

MARGIN = 0.1
MIN_IMPROVEMENT = 0.1


def count_yields(steps: Generator[None, None, T]) -> tuple[T, int]:
    """Runs a sliced computation to its end: its result and how many times it yielded."""
    yields = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result, yields
        yields += 1


def random_state(seed: int) -> ClusterState:
    """40 nodes of capacity 1, 2 or 4 in two zones, 400 checks (a quarter pinned to a
    zone) placed by count, then measured with lognormal costs, each with an ok result
    but one in ten failing (those may not move)."""
    rng = random.Random(seed)
    state = ClusterState()
    for i in range(40):
        state.node_status(
            NodeName(f"n{i:02d}"),
            now=1.0,
            last_change=-1,
            labels={"zone": "ab"[i % 2]},
            capacity=rng.choice([1, 2, 4]),
        )
    configs = [
        make_config(
            name="http",
            instances=[{"url": f"http://svc-{j}/healthz"}],
            interval_s=10.0,
            node_selector={"zone": "ab"[j % 2]} if j % 4 == 0 else None,
        )
        for j in range(400)
    ]
    state.replace_source(SourceName("api"), configs, now=2.0)
    for name, node in sorted(state.nodes.items()):
        digests = sorted(node.digests)
        stats = {
            d: CheckStats(avg_execution_s=rng.lognormvariate(-1.0, 1.0), runs=3, errors=0)
            for d in digests
        }
        state.node_status(name, now=3.0, last_change=-1, stats=stats)
        results = [CheckResult(d, f"run-{d}", rng.random() > 0.1, (), 3.0, 0.1) for d in digests]
        state.record_results(name, results, now_wall=WALL)
    state.take_events()
    return state


def sliced_plan(state: ClusterState, *, slice_work: int) -> tuple[Plan, int]:
    """The plan made in parts, as the dispatcher makes it; and how many slices it took."""
    (nodes, items), input_yields = count_yields(
        state.rebalance_inputs(margin=MARGIN, slice_work=slice_work)
    )
    plan, plan_yields = count_yields(
        plan_steps(
            nodes, items, margin=MARGIN, min_improvement=MIN_IMPROVEMENT, slice_work=slice_work
        )
    )
    return plan, input_yields + plan_yields


# ------------------------------------------------------- the same on a static state


PLANNED_BEFORE_SLICING = {
    0: (26, "e545ee085707ac91"),
    1: (28, "621f564aa664f1f3"),
    2: (26, "f133328c4c2eb541"),
    3: (35, "4d7039f80b6c64ae"),
    4: (24, "7e3ea422bbe8f9f5"),
}
"""Per seed of ``random_state``: the moves the planner made before it came in slices
(its last version that planned in one call), and the sha256 of ``fingerprint``."""


def fingerprint(plan: Plan) -> str:
    text = "\n".join(
        f"{m.digest} {m.source} {m.dest} {m.source_after!r} {m.dest_after!r}" for m in plan.moves
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("seed", sorted(PLANNED_BEFORE_SLICING))
@pytest.mark.parametrize("slice_work", [1, 50, 10**9])
def test_in_parts_the_same_plan_and_moves_as_in_one_go(seed: int, slice_work: int) -> None:
    whole = random_state(seed)
    parts = random_state(seed)

    expected = whole.rebalance(now=10.0, margin=MARGIN, min_improvement=MIN_IMPROVEMENT)
    plan, slices = sliced_plan(parts, slice_work=slice_work)
    outcome = parts.apply_rebalance(plan, now=10.0, warming_up=False, force=False, dry_run=False)

    assert expected.reason == "applied"
    assert (len(plan.moves), fingerprint(plan)) == PLANNED_BEFORE_SLICING[seed]
    assert plan == expected.plan
    assert outcome == expected
    assert outcome.skipped == {}
    assert parts.placement == whole.placement
    assert parts.take_events().decisions == whole.take_events().decisions
    if slice_work == 1:
        # A yield at least between two moves: no slice plans more than one.
        assert slices > len(plan.moves)
    if slice_work == 10**9:
        assert slices == 1  # the one yield always made, before the planner's tables


def test_the_items_are_read_off_the_nodes_above_the_bound_only() -> None:
    """No other node gives a check (a destination ends within the bound), so the items
    of the others could not change the plan: they are not read."""
    state = random_state(0)
    (nodes, items), _ = count_yields(state.rebalance_inputs(margin=MARGIN))
    mean = sum(n.load for n in nodes) / sum(n.capacity for n in nodes)
    above = {n.name for n in nodes if n.load / n.capacity > mean * (1 + MARGIN)}
    assert 0 < len(above) < len(nodes)
    assert {item.node for item in items} == above
    assert len(items) == sum(len(state.nodes[name].digests) for name in above)


# --------------------------------------------------- moves the state changed under

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

Change = Callable[[ClusterState, Mapping[str, CheckConfig]], None]


def remove(name: str) -> Change:
    def change(state: ClusterState, configs: Mapping[str, CheckConfig]) -> None:
        state.remove_check(configs[name].digest, source=None, now=20.0)

    return change


def drain(node: str) -> Change:
    def change(state: ClusterState, configs: Mapping[str, CheckConfig]) -> None:
        state.drain(NodeName(node), now=20.0)

    return change


def leave(node: str) -> Change:
    def change(state: ClusterState, configs: Mapping[str, CheckConfig]) -> None:
        state.node_status(NodeName(node), now=20.0, last_change=-1, leaving=True)

    return change


def cordon(node: str) -> Change:
    def change(state: ClusterState, configs: Mapping[str, CheckConfig]) -> None:
        state.cordon(NodeName(node))

    return change


def limit(checks_per_node: int) -> Change:
    def change(state: ClusterState, configs: Mapping[str, CheckConfig]) -> None:
        state.set_limits(max_checks_per_source=None, max_checks_per_node=checks_per_node)

    return change


def relabel(node: str, zone: str) -> Change:
    def change(state: ClusterState, configs: Mapping[str, CheckConfig]) -> None:
        state.node_status(NodeName(node), now=20.0, last_change=-1, labels={"zone": zone})

    return change


def fail(name: str) -> Change:
    def change(state: ClusterState, configs: Mapping[str, CheckConfig]) -> None:
        digest = configs[name].digest
        result = CheckResult(digest, f"{name}-2", False, ("GET: 503",), 20.0, 0.1)
        assert state.record_results(NodeName("a"), [result], now_wall=WALL) == (1, [])

    return change


@pytest.mark.parametrize(
    ("change", "skipped", "made"),
    [
        pytest.param(remove("c1"), {"check_gone": 1}, PLANNED[1:], id="check-removed"),
        # Drained: every check left a already, none is where the plan found it.
        pytest.param(drain("a"), {"check_moved": 3}, [], id="source-drained"),
        pytest.param(fail("c5"), {"check_not_movable": 1}, PLANNED[:2], id="check-failing"),
        pytest.param(leave("b"), {"node_gone": 1}, PLANNED[1:], id="dest-left"),
        pytest.param(cordon("c"), {"node_cordoned": 2}, PLANNED[:1], id="dest-cordoned"),
        # One check a node at most: c takes c2, and then is full for c5.
        pytest.param(limit(1), {"node_full": 1}, PLANNED[:2], id="dest-full"),
        # c1 runs in zone x only; b is now in zone y.
        pytest.param(
            relabel("b", "y"), {"node_not_eligible": 1}, PLANNED[1:], id="dest-relabelled"
        ),
        # Cordoning the source takes nothing away from it: its moves still hold.
        pytest.param(cordon("a"), {}, PLANNED, id="source-cordoned"),
    ],
)  # fmt: skip
def test_a_move_the_state_changed_under_is_skipped_and_the_others_made(
    change: Change, skipped: dict[str, int], made: list[tuple[str, str, str]]
) -> None:
    state, configs = setup_state(NODES, CHECKS)
    plan, _ = sliced_plan(state, slice_work=1)
    assert [
        (next(n for n, c in configs.items() if c.digest == m.digest), m.source, m.dest)
        for m in plan.moves
    ] == PLANNED
    change(state, configs)
    before = where(state, configs)
    state.take_events()

    outcome = state.apply_rebalance(plan, now=30.0, warming_up=False, force=False, dry_run=False)

    assert (outcome.applied, outcome.reason) == (True, "applied")
    assert outcome.skipped == skipped
    assert outcome_moves(outcome, configs) == made
    expected = dict(before)
    for name, _, dest in made:
        expected[name] = dest
    assert where(state, configs) == expected
    names = {c.digest: n for n, c in configs.items()}
    assert [
        (names[d.digest], d.previous, d.node, d.reason) for d in state.take_events().decisions
    ] == [(name, source, dest, "rebalanced") for name, source, dest in made]


def test_a_dry_run_or_a_plan_not_worth_it_makes_nothing_and_skips_nothing() -> None:
    state, configs = setup_state(NODES, CHECKS)
    plan, _ = sliced_plan(state, slice_work=1)
    cordon("c")(state, configs)
    before = where(state, configs)

    dry = state.apply_rebalance(plan, now=30.0, warming_up=False, force=False, dry_run=True)
    warming = state.apply_rebalance(plan, now=30.0, warming_up=True, force=False, dry_run=False)

    assert (dry.reason, outcome_moves(dry, configs), dry.skipped) == ("dry_run", PLANNED, {})
    assert (warming.reason, warming.moves, warming.skipped) == ("warming_up", [], {})
    assert where(state, configs) == before


def test_a_node_that_leaves_while_the_inputs_are_read_is_left_out() -> None:
    """The inputs are read live between slices: a node gone before its slice has no
    load and no items (and a check that left with it is not planned)."""
    state = random_state(1)
    steps = state.rebalance_inputs(margin=MARGIN, slice_work=1)
    next(steps)  # the first node's load is read
    names = sorted(state.nodes)
    first, gone = names[0], names[-1]
    state.node_status(gone, now=20.0, last_change=-1, leaving=True)

    (nodes, items), _ = count_yields(steps)

    assert first in {n.name for n in nodes}
    assert gone not in {n.name for n in nodes}
    assert set(state.nodes) == {n.name for n in nodes}
    assert all(item.node != gone for item in items)
    assert {item.digest for item in items} <= set(state.placement)
