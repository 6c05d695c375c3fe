"""What the state's operations report back: decisions, moves and outcomes.

Plain frozen records (``Events`` is the one mutable collector): the state fills them,
the engine logs them, wakes long polls with them and the API converts them. Nothing
here reads the state; the one rule here, whether a rebalance plan is applied, follows
from the plan and the caller's flags alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName
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
class Hold:
    """``source`` holds these configs from now on (a new weight applies; a new check
    is placed)."""

    source: SourceName
    configs: Sequence[CheckConfig]

    def __len__(self) -> int:
        return len(self.configs)


@dataclass(frozen=True, slots=True)
class Release:
    """``source`` lets go of these checks (a check no source holds any more goes)."""

    source: SourceName
    digests: Sequence[Digest]

    def __len__(self) -> int:
        return len(self.digests)


SourceWork = Hold | Release


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """A write to sources worked out before anything changes: what it will report, and
    the work in the order it must be done (ClusterState.plan_replace, plan_add).

    The work can be done in one step or in slices (``slices``) with other steps in
    between: every piece says what to hold or let go of, not what to change, so a slice
    applied after another writer's step still does the right thing."""

    changes: dict[SourceName, SourceChange]
    work: list[SourceWork]

    @property
    def size(self) -> int:
        """How many checks the work touches."""
        return sum(len(piece) for piece in self.work)

    def slices(self, size: int) -> Iterator[list[SourceWork]]:
        """The work in order, in slices that touch at most ``size`` checks each."""
        current: list[SourceWork] = []
        room = size
        for piece in self.work:
            start = 0
            while start < len(piece):
                take = min(room, len(piece) - start)
                current.append(_part(piece, start, start + take))
                start += take
                room -= take
                if room == 0:
                    yield current
                    current, room = [], size
        if current:
            yield current


def _part(piece: SourceWork, start: int, end: int) -> SourceWork:
    if start == 0 and end == len(piece):
        return piece
    if isinstance(piece, Hold):
        return Hold(piece.source, piece.configs[start:end])
    return Release(piece.source, piece.digests[start:end])


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
