"""What the state's operations report back: decisions, moves and outcomes.

Plain immutable records (``Events`` is the one mutable collector): the state fills them,
the engine logs them, wakes long polls with them and the API converts them. Nothing
here reads the state; the one rule here, whether a rebalance plan is applied, follows
from the plan and the caller's flags alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from dispatcher.core.model import Digest, NodeName
from dispatcher.core.rebalance import Plan


class Decision(NamedTuple):
    """One dispatch decision: where a check went (``node`` None: it dangles) and why.

    A named tuple rather than a frozen dataclass, as immutable: scheduling 100,000
    checks makes 100,000 of them, and a frozen dataclass took three times as long to
    build (each field set through ``object.__setattr__``)."""

    digest: Digest
    check_name: str
    node: NodeName | None
    previous: NodeName | None
    reason: str


@dataclass(frozen=True, slots=True)
class Move:
    """A check moved from one live node to another."""

    digest: Digest
    check_name: str
    cost: float
    source_node: NodeName
    dest_node: NodeName
    loads: tuple[float, float, float, float] | None = None
    """Rebalance moves: relative loads of source and dest, before and after the move."""


@dataclass(frozen=True, slots=True)
class RebalanceOutcome:
    """A rebalance: its plan, the moves, and whether (and why not) they were made."""

    plan: Plan
    moves: list[Move]
    """The moves made, or (dry run, or not applied) the moves planned."""
    applied: bool
    reason: str
    """Why: ``applied``, ``dry_run``, ``nothing_to_move``, ``gain_too_small``,
    ``warming_up``."""
    skipped: Mapping[str, int] = field(default_factory=dict)
    """Planned moves not made, by why (``ClusterState.apply_rebalance``): the state
    changed between planning and applying (a plan made with the dispatcher's lock free)."""

    @classmethod
    def of(cls, plan: Plan, *, warming_up: bool, dry_run: bool, force: bool) -> RebalanceOutcome:
        """Whether ``plan`` is to be applied (``applied``: the caller makes its moves)
        and why not: nothing moves while warming up or without moves, a dry run only
        reports, and a plan that is not worthwhile waits unless forced."""
        planned = [
            Move(
                m.digest, m.check_name, m.cost, m.source, m.dest,
                loads=(m.source_before, m.source_after, m.dest_before, m.dest_after),
            )
            for m in plan.moves
        ]  # fmt: skip
        if warming_up:
            return cls(plan, [], applied=False, reason="warming_up")
        if not planned:
            return cls(plan, [], applied=False, reason="nothing_to_move")
        if dry_run:
            return cls(plan, planned, applied=False, reason="dry_run")
        if not plan.worthwhile and not force:
            return cls(plan, planned, applied=False, reason="gain_too_small")
        return cls(plan, planned, applied=True, reason="applied")


@dataclass(frozen=True, slots=True)
class SourceChange:
    """What replacing one source's set did: its digests, in the order given, and counts."""

    digests: list[Digest]
    added: int
    removed: int
    unchanged: int


@dataclass(frozen=True, slots=True)
class RejectedResult:
    """A result not stored, and why."""

    digest: Digest
    reason: str  # not_assigned | unknown_check


@dataclass(slots=True)
class Events:
    """What happened since the caller last took the events: every decision in order, the
    nodes whose configs changed (their long polls wake) and the nodes removed."""

    decisions: list[Decision] = field(default_factory=list)
    changed_nodes: set[NodeName] = field(default_factory=set)
    removed_nodes: list[NodeName] = field(default_factory=list)
