"""The two check limits of the core: per source (a write beyond it is refused whole) and
per node (a full node takes no more checks: placement, moves and the planner skip it)."""

from __future__ import annotations

import pytest

from dispatcher.core.model import (
    CheckConfig,
    CheckResult,
    CheckStats,
    NodeName,
    SourceName,
    make_config,
)
from dispatcher.core.rebalance import Item, NodeLoad, plan_rebalance
from dispatcher.core.state import ClusterState
from dispatcher.errors import NoOtherNode, TooManyChecks

CI, OTHER = SourceName("ci"), SourceName("other")
A, B, C = NodeName("a"), NodeName("b"), NodeName("c")


def check(n: int, *, weight: float = 1.0) -> CheckConfig:
    return make_config(name="http", instances=[{"url": f"http://{n}/"}], weight=weight)


def checks(*ns: int) -> list[CheckConfig]:
    return [check(n) for n in ns]


def limited(*, per_source: int | None = None, per_node: int | None = None) -> ClusterState:
    return ClusterState(max_checks_per_source=per_source, max_checks_per_node=per_node)


def held(state: ClusterState, source: SourceName) -> set[int]:
    """The numbers of the checks ``source`` holds."""
    by_digest = {check(n).digest: n for n in range(100)}
    return {by_digest[c.digest] for c in state.source_configs(source)}


# ----------------------------------------------------------------- per source


@pytest.mark.parametrize(
    ("configs", "refused"),
    [
        pytest.param(checks(1, 2, 3), False, id="at-the-limit"),
        pytest.param(checks(1, 2, 3, 4), True, id="one-over"),
        pytest.param(checks(1, 2, 3, 3, 2), False, id="duplicates-count-once"),
        pytest.param([], False, id="empty"),
    ],
)
def test_a_replace_beyond_the_source_limit_is_refused_whole(
    configs: list[CheckConfig], refused: bool
) -> None:
    state = limited(per_source=3)
    state.replace_source(CI, checks(7), now=0.0)
    before = state.snapshot()

    if refused:
        with pytest.raises(TooManyChecks) as caught:
            state.replace_source(CI, configs, now=1.0)
        assert caught.value.details == {"source": "ci", "checks": 4, "limit": 3}
        assert "at most 3 checks" in caught.value.message
        assert "4 distinct checks" in caught.value.message
        assert state.snapshot() == before, "nothing changed"
    else:
        state.replace_source(CI, configs, now=1.0)
        assert held(state, CI) == {int(c.instances[0]["url"][7]) for c in configs}


@pytest.mark.parametrize(
    ("adding", "refused"),
    [
        pytest.param(checks(3), False, id="to-the-limit"),
        pytest.param(checks(3, 4), True, id="one-over"),
        pytest.param(checks(1, 2, 3), False, id="held-ones-do-not-count-again"),
        pytest.param(checks(3, 3, 3), False, id="duplicates-count-once"),
    ],
)
def test_an_add_beyond_the_source_limit_is_refused_whole(
    adding: list[CheckConfig], refused: bool
) -> None:
    state = limited(per_source=3)
    state.add_to_source(CI, checks(1, 2), now=0.0)
    before = state.snapshot()

    if refused:
        with pytest.raises(TooManyChecks) as caught:
            state.add_to_source(CI, adding, now=1.0)
        assert caught.value.details == {"source": "ci", "checks": 4, "limit": 3}
        assert "holds 2 checks and this request adds 2 new ones" in caught.value.message
        assert state.snapshot() == before, "nothing changed"
    else:
        state.add_to_source(CI, adding, now=1.0)
        assert held(state, CI) == {1, 2, 3}


def test_the_limit_is_per_source() -> None:
    state = limited(per_source=2)
    state.replace_source(CI, checks(1, 2), now=0.0)
    state.replace_source(OTHER, checks(3, 4), now=0.0)
    assert (held(state, CI), held(state, OTHER)) == ({1, 2}, {3, 4})


def test_a_lowered_limit_keeps_what_is_held_and_refuses_growth() -> None:
    state = limited(per_source=5)
    state.replace_source(CI, checks(1, 2, 3), now=0.0)
    state.set_limits(max_checks_per_source=2, max_checks_per_node=None)

    with pytest.raises(TooManyChecks):
        state.add_to_source(CI, checks(4), now=1.0)
    assert held(state, CI) == {1, 2, 3}
    state.replace_source(CI, checks(1, 2), now=2.0)  # shrinking to the limit is fine
    assert held(state, CI) == {1, 2}


# ------------------------------------------------------------------- per node


def test_placement_skips_a_full_node_and_a_check_dangles_when_all_are() -> None:
    state = limited(per_node=2)
    state.node_status(A, now=0.0, last_change=0)
    state.node_status(B, now=0.0, last_change=0)

    state.replace_source(CI, checks(1, 2, 3, 4, 5), now=0.0)

    per_node = {name: len(node.digests) for name, node in state.nodes.items()}
    assert per_node == {A: 2, B: 2}
    [dangling] = state.dangling
    assert state.explain(dangling, now=0.0) == (
        "Dangling: every node that may run it holds 2 checks, the most a node may hold "
        "(max_checks_per_node): a, b."
    )


def test_a_dangling_check_is_placed_once_a_node_has_room() -> None:
    state = limited(per_node=2)
    state.node_status(A, now=0.0, last_change=0)
    state.replace_source(CI, checks(1, 2, 3), now=0.0)
    [dangling] = state.dangling
    assert state.dispatch_dangling(now=1.0) == 0, "still full"

    state.replace_source(CI, checks(2, 3), now=2.0)  # check 1 goes: a has room
    assert state.dispatch_dangling(now=3.0) == 1
    assert state.placement[dangling] == A
    assert not state.dangling


def test_a_new_node_takes_what_the_full_ones_could_not() -> None:
    state = limited(per_node=1)
    state.node_status(A, now=0.0, last_change=0)
    state.replace_source(CI, checks(1, 2), now=0.0)
    assert len(state.dangling) == 1

    state.node_status(B, now=1.0, last_change=0)
    assert state.dispatch_dangling(now=1.0) == 1
    assert sorted(len(n.digests) for n in state.nodes.values()) == [1, 1]


def test_capacity_stays_the_balancing_weight_under_the_limit() -> None:
    state = limited(per_node=3)
    state.node_status(A, now=0.0, last_change=0, capacity=4)
    state.node_status(B, now=0.0, last_change=0, capacity=1)

    state.replace_source(CI, checks(1, 2, 3, 4, 5), now=0.0)

    # By capacity a would take 4 of 5; it stops at 3, b takes the rest.
    assert {n: len(node.digests) for n, node in state.nodes.items()} == {A: 3, B: 2}


def test_drain_moves_only_to_nodes_with_room_and_keeps_the_rest() -> None:
    state = limited(per_node=2)
    state.node_status(A, now=0.0, last_change=0)
    state.replace_source(CI, checks(1, 2), now=0.0)
    state.node_status(B, now=0.0, last_change=0)
    state.replace_source(CI, checks(1, 2, 3), now=0.0)  # 3 goes to b
    assert len(state.nodes[B].digests) == 1

    moves = state.drain(A, now=1.0)

    assert [m.dest_node for m in moves] == [B], "b had room for one"
    assert len(state.nodes[A].digests) == 1, "the other stays rather than dangle"


def test_isolate_refuses_when_the_others_have_nowhere_to_go() -> None:
    state = limited(per_node=2)
    state.node_status(A, now=0.0, last_change=0)
    state.replace_source(CI, checks(1, 2), now=0.0)
    state.node_status(B, now=0.0, last_change=0)
    state.replace_source(CI, checks(1, 2, 3, 4), now=0.0)  # b full with 3 and 4
    before = state.snapshot()

    with pytest.raises(NoOtherNode):
        state.isolate(check(1).digest, now=1.0)
    assert state.snapshot() == before


def test_adoption_respects_the_limit() -> None:
    """An agent reporting a check it runs (warm-up) keeps it only if it has room."""
    state = ClusterState(warmup_until=10.0, max_checks_per_node=1)
    one, two = checks(1, 2)
    state.node_status(A, now=0.0, last_change=0, running=[one.digest, two.digest])
    state.replace_source(CI, [one, two], now=1.0)

    assert state.placement == {one.digest: A}
    assert set(state.dangling) == {two.digest}


def test_the_planner_moves_nothing_onto_a_full_node() -> None:
    nodes = [
        NodeLoad(A, 1.0, 3.0, {}),
        NodeLoad(B, 1.0, 0.0, {}, free=0),
        NodeLoad(C, 1.0, 0.0, {}),
    ]
    items = [
        Item(check(n).digest, "http", 0.5, A, movable=True, eligible=lambda _: True)
        for n in range(6)
    ]

    plan = plan_rebalance(nodes, items, margin=0.1, min_improvement=0.0)

    assert len(plan.moves) == 2, "c takes what fits under the bound"
    assert {m.dest for m in plan.moves} == {C}


def test_the_planner_counts_the_room_it_fills() -> None:
    nodes = [NodeLoad(A, 1.0, 4.0, {}), NodeLoad(B, 1.0, 0.0, {}, free=1)]
    items = [
        Item(check(n).digest, "http", 1.0, A, movable=True, eligible=lambda _: True)
        for n in range(4)
    ]

    plan = plan_rebalance(nodes, items, margin=0.1, min_improvement=0.0)

    assert [m.dest for m in plan.moves] == [B], "b had room for one check only"


@pytest.mark.parametrize(("per_node", "moved"), [(3, False), (None, True)])
def test_rebalance_through_the_state_leaves_a_full_node_alone(
    per_node: int | None, moved: bool
) -> None:
    """b runs three cheap checks and a three costly ones: b is the place for a's load,
    but at a limit of three checks it is full."""
    state = limited(per_node=per_node)
    state.node_status(A, now=0.0, last_change=0)
    state.replace_source(CI, checks(1, 2, 3), now=0.0)
    state.node_status(B, now=0.0, last_change=0)
    state.replace_source(CI, checks(1, 2, 3, 4, 5, 6), now=0.0)
    for name, execution_s in ((A, 1.5), (B, 0.015)):
        digests = sorted(state.nodes[name].digests)
        stats = {d: CheckStats(avg_execution_s=execution_s, runs=1, errors=0) for d in digests}
        state.node_status(name, now=1.0, last_change=-1, stats=stats)
        ran = [
            CheckResult(d, "run", ok=True, errors=(), started_at=1.0, duration_s=0.1)
            for d in digests
        ]
        state.record_results(name, ran, now_wall=1.0)

    outcome = state.rebalance(now=2.0, margin=0.1, min_improvement=0.0, force=True)

    assert bool(outcome.moves) is moved
    if per_node is not None:
        assert max(len(n.digests) for n in state.nodes.values()) <= per_node
