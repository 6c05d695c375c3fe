"""What the state's operations report back: decisions, moves and outcomes.

Plain frozen records (``Events`` is the one mutable collector): the state fills them,
the engine logs them, wakes long polls with them and the API converts them. Nothing
here reads the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dispatcher.core.model import Digest, NodeName
from dispatcher.core.rebalance import Plan


@dataclass(frozen=True, slots=True)
class Decision:
    """One dispatch decision: where a check went (``node`` None: it dangles) and why."""

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
