"""Whether a rebalance plan is applied: a function of the plan and the caller's flags."""

from __future__ import annotations

import pytest

from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName, make_config
from dispatcher.core.outcomes import Move, RebalanceOutcome
from dispatcher.core.rebalance import Plan, PlannedMove
from dispatcher.core.sourceplan import Hold, Release, SourcePlan, SourceWork

A, B = NodeName("a"), NodeName("b")
STEP = PlannedMove(Digest("d1"), "http", 10.0, A, B, 110.0, 100.0, 0.0, 10.0)
MOVE = Move(Digest("d1"), "http", 10.0, A, B, loads=(110.0, 100.0, 0.0, 10.0))


def plan(*, moves: bool, worthwhile: bool) -> Plan:
    return Plan([STEP] if moves else [], 55.0, 60.5, 1.0, 0.8, worthwhile=worthwhile)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # (moves planned, worthwhile, warming up, dry run, force) -> (applied, reason, moves listed)
        ((True, True, False, False, False), (True, "applied", True)),
        ((True, True, True, False, False), (False, "warming_up", False)),
        ((False, False, False, False, True), (False, "nothing_to_move", False)),
        ((True, True, False, True, True), (False, "dry_run", True)),  # a dry run never applies
        ((True, False, False, False, False), (False, "gain_too_small", True)),
        ((True, False, False, False, True), (True, "applied", True)),  # forced
    ],
)
def test_the_outcome_of_a_plan(
    given: tuple[bool, bool, bool, bool, bool], expected: tuple[bool, str, bool]
) -> None:
    moves, worthwhile, warming_up, dry_run, force = given
    applied, reason, listed = expected
    the_plan = plan(moves=moves, worthwhile=worthwhile)
    outcome = RebalanceOutcome.of(the_plan, warming_up=warming_up, dry_run=dry_run, force=force)
    assert outcome == RebalanceOutcome(the_plan, [MOVE] if listed else [], applied, reason)


# ------------------------------------------------------------------ source plans


def _digests(*labels: str) -> list[Digest]:
    return [Digest(label) for label in labels]


def _configs(*labels: str) -> list[CheckConfig]:
    return [make_config(name="http", instances=[{"url": label}]) for label in labels]


CI = SourceName("ci")
FIVE = _configs("h1", "h2", "h3", "h4", "h5")
PLAN = SourcePlan(
    {},
    [
        Release(CI, _digests("r1", "r2", "r3")),
        Hold(CI, FIVE),
        Release(SourceName("old"), _digests("l1", "l2")),
    ],
)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        pytest.param(
            4,
            [
                [Release(CI, _digests("r1", "r2", "r3")), Hold(CI, FIVE[:1])],
                [Hold(CI, FIVE[1:5])],
                [Release(SourceName("old"), _digests("l1", "l2"))],
            ],
            id="pieces-cut-at-the-size",
        ),
        pytest.param(10, [PLAN.work], id="all-in-one"),
        pytest.param(
            5,
            [
                [Release(CI, _digests("r1", "r2", "r3")), Hold(CI, FIVE[:2])],
                [Hold(CI, FIVE[2:5]), Release(SourceName("old"), _digests("l1", "l2"))],
            ],
            id="exactly-full-slices",
        ),
    ],
)
def test_a_plan_is_cut_into_slices_in_order(size: int, expected: list[list[SourceWork]]) -> None:
    slices = list(PLAN.slices(size))

    assert slices == expected
    assert all(sum(len(piece) for piece in s) <= size for s in slices)
    assert PLAN.size == 10


def test_an_empty_plan_has_no_slices() -> None:
    assert list(SourcePlan({}, []).slices(3)) == []
