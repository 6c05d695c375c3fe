"""Writes to sources as plans: worked out first, then their work done whole or in slices.

The engine applies a big write in slices with other steps in between; these tests pin
what makes that safe: slices in order give what the whole gives, every piece is right
after another writer's step (it says what to hold or let go of, not what to change), and
a check moving between sources keeps its node however the work is cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from dispatcher.core.model import CheckConfig, NodeName, SourceName, make_config
from dispatcher.core.outcomes import SourceChange
from dispatcher.core.sourceplan import Hold, plan_add, plan_replace
from dispatcher.core.state import ClusterState

CI, OTHER = SourceName("ci"), SourceName("other")
A, B = NodeName("a"), NodeName("b")


def check(n: int, *, weight: float = 1.0) -> CheckConfig:
    return make_config(name="http", instances=[{"url": f"http://{n}/"}], weight=weight)


def checks(*ns: int) -> list[CheckConfig]:
    return [check(n) for n in ns]


def start() -> ClusterState:
    state = ClusterState()
    state.node_status(A, now=0.0, last_change=0)
    state.node_status(B, now=0.0, last_change=0)
    state.replace_source(CI, checks(*range(10)), now=0.0)
    state.replace_source(OTHER, checks(20, 21), now=0.0)
    state.take_events()
    return state


def view(state: ClusterState) -> tuple[object, ...]:
    """What a state holds, by digest (two states never share config objects)."""
    return (
        {s: sorted(c.digest for c in state.source_configs(s)) for s in state.source_names()},
        dict(state.placement),
        {d: c.weight for d, c in state.configs.items()},
        sorted(state.dangling),
    )


WRITES: dict[str, Mapping[SourceName, Sequence[CheckConfig]]] = {
    "grow": {CI: checks(*range(25))},
    "shrink": {CI: checks(2, 3)},
    "replace-all": {CI: checks(*range(30, 45))},
    "empty": {CI: []},
    "reweigh": {CI: [check(n, weight=2.0) for n in range(10)]},
    "move-between-sources": {CI: checks(*range(5)), OTHER: checks(5, 6, 7, 20)},
}


@pytest.mark.parametrize("size", [1, 3, 7])
@pytest.mark.parametrize("write", sorted(WRITES))
def test_slices_in_order_give_what_the_whole_gives(write: str, size: int) -> None:
    whole, sliced = start(), start()

    changes = whole.replace_sources(WRITES[write], now=1.0)
    plan = plan_replace(WRITES[write], held=sliced.held_by_source, max_checks_per_source=None)
    for piece in plan.slices(size):
        sliced.apply_work(piece, now=1.0)

    assert plan.changes == changes
    assert view(sliced) == view(whole)


@pytest.mark.parametrize("size", [1, 4, 100])
def test_a_check_moving_to_another_source_keeps_its_node(size: int) -> None:
    state = start()
    moving = [c.digest for c in checks(5, 6, 7)]
    nodes_before = {d: state.placement[d] for d in moving}

    plan = plan_replace(
        WRITES["move-between-sources"], held=state.held_by_source, max_checks_per_source=None
    )
    for piece in plan.slices(size):
        state.apply_work(piece, now=1.0)
        # Held by one source or the other at every step in between.
        assert all(state.sources_of(d) for d in moving)

    assert {d: state.placement[d] for d in moving} == nodes_before
    assert not [d for d in state.take_events().decisions if d.digest in moving]


def test_the_plan_reports_counts_against_the_sources_own_set() -> None:
    state = start()

    plan = plan_replace(
        {CI: [*checks(8, 9, 10, 11), check(10)]},
        held=state.held_by_source,
        max_checks_per_source=None,
    )

    assert plan.changes == {
        CI: SourceChange(
            digests=[c.digest for c in [*checks(8, 9, 10, 11), check(10)]],
            added=2,
            removed=8,
            unchanged=2,
        )
    }
    assert view(state) == view(start()), "planning changes nothing"


def test_the_plan_lets_go_first_and_last_only_of_what_moves() -> None:
    state = start()

    plan = plan_replace(
        WRITES["move-between-sources"], held=state.held_by_source, max_checks_per_source=None
    )

    kinds = [(type(p).__name__, p.source, len(p)) for p in plan.work]
    assert kinds == [
        ("Release", CI, 2),  # 8 and 9: no source gains them
        ("Release", OTHER, 1),  # 21: the same
        ("Hold", CI, 5),
        ("Hold", OTHER, 4),
        ("Release", CI, 3),  # 5, 6, 7 move to other: let go of once other holds them
    ]


def test_pieces_are_right_after_other_steps() -> None:
    """A slice applied after another writer's step: holding what is held and letting go
    of what is gone are no-ops; nothing is held twice or lost."""
    state = start()
    plan = plan_replace(
        {CI: checks(*range(5, 15))}, held=state.held_by_source, max_checks_per_source=None
    )
    state.remove_check(check(0).digest, source=CI, now=1.0)  # a delete in between
    state.add_to_source(CI, checks(12), now=1.0)  # and an add of what the plan adds

    for piece in plan.slices(2):
        state.apply_work(piece, now=2.0)

    assert {c.digest for c in state.source_configs(CI)} == {c.digest for c in checks(*range(5, 15))}


def test_an_add_plan_holds_each_config_once_with_its_last_weight() -> None:
    state = start()

    plan = plan_add(
        CI,
        [check(40), check(41), check(40, weight=3.0)],
        held=state.held_by_source,
        max_checks_per_source=None,
    )

    [piece] = plan.work
    assert isinstance(piece, Hold)
    assert [(c.digest, c.weight) for c in piece.configs] == [
        (check(40).digest, 3.0),
        (check(41).digest, 1.0),
    ]
    assert plan.changes[CI] == SourceChange(
        digests=[c.digest for c in checks(40, 41, 40)], added=2, removed=0, unchanged=0
    )
    state.apply_work(plan.work, now=1.0)
    assert state.configs[check(40).digest].weight == 3.0
