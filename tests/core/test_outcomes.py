"""Whether a rebalance plan is applied: a function of the plan and the caller's flags."""

from __future__ import annotations

import pytest

from dispatcher.core.model import Digest, NodeName
from dispatcher.core.outcomes import Move, RebalanceOutcome
from dispatcher.core.rebalance import Plan, PlannedMove

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
