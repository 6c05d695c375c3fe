"""What the dispatcher's steps decided, told: log lines and metrics.

The engine hands each step's decisions, moves and outcomes here once the step is made;
nothing here reads the state or takes the dispatcher's lock. A step with more than
``DECISIONS_LOGGED`` decisions (a big write, an expired node holding many checks) logs
one ``dispatch_decisions_summarized`` line with the counts and the first few instead
of a ``dispatch_decision`` line each: 100,000 lines would take longer to write than the
step itself, and say less.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence

import structlog

from dispatcher.core.model import Digest, NodeName, SourceName
from dispatcher.core.outcomes import Decision, Move, RebalanceOutcome, SourceChange
from dispatcher.metrics import DispatcherMetrics

log = structlog.get_logger(__name__)

DECISIONS_LOGGED = 20
"""A step with more decisions than this (a big write, an expired node holding many
checks) logs one summary line for them instead of a line each."""
DECISIONS_SHOWN = 5
"""Decisions shown in a summary line."""


class StepLog:
    """Logs what the dispatcher's steps decided, and counts it in ``metrics`` if given."""

    def __init__(self, metrics: DispatcherMetrics | None) -> None:
        self._metrics = metrics
        self._flagged_dangling: set[Digest] = set()

    def decisions(self, decisions: Sequence[Decision]) -> None:
        """A line per decision; for a big step one line with the counts and the first
        few instead."""
        if not decisions:
            return  # most steps (a heartbeat) decide nothing
        by_reason = Counter(d.reason for d in decisions)
        if self._metrics is not None:
            for reason, count in by_reason.items():
                self._metrics.decisions.labels(reason=reason).inc(count)
        if len(decisions) > DECISIONS_LOGGED:
            log.info(
                "dispatch_decisions_summarized",
                decisions=len(decisions),
                by_reason=dict(sorted(by_reason.items())),
                placed=sum(1 for d in decisions if d.node is not None),
                nodes=len({d.node for d in decisions if d.node is not None}),
                shown=[_decision_fields(d) for d in decisions[:DECISIONS_SHOWN]],
                note=(
                    f"more than {DECISIONS_LOGGED} decisions in one step: counted here "
                    f"instead of a dispatch_decision line each; the first {DECISIONS_SHOWN} "
                    "shown"
                ),
            )
            return
        for decision in decisions:
            log.info("dispatch_decision", **_decision_fields(decision))

    def source_changes(self, changes: Mapping[SourceName, SourceChange]) -> None:
        """A line per source whose set a write changed."""
        for source, change in changes.items():
            if change.added or change.removed:
                log.info(
                    "source_replaced",
                    source=source,
                    added=change.added,
                    removed=change.removed,
                    unchanged=change.unchanged,
                )

    def moves(self, trigger: str, moves: Sequence[Move]) -> None:
        """Counts the moves a drain, an isolate or a rebalance made."""
        if self._metrics is not None and moves:
            self._metrics.rebalance_moves.labels(trigger=trigger).inc(len(moves))

    def tick(self, expired: Sequence[NodeName], *, seconds: float) -> None:
        """A tick: the nodes it expired, and how long it took."""
        for name in expired:
            log.warning("node_expired", node=name)
        if self._metrics is not None:
            self._metrics.expiries.inc(len(expired))
            self._metrics.tick_seconds.observe(seconds)

    def long_dangling(
        self, dangling: Mapping[Digest, float], *, now: float, threshold_s: float
    ) -> None:
        """Warns once about each check dangling for more than ``threshold_s`` (again if it
        dangles anew after being placed)."""
        self._flagged_dangling &= dangling.keys()
        for digest, since in dangling.items():
            if now - since > threshold_s and digest not in self._flagged_dangling:
                self._flagged_dangling.add(digest)
                log.warning("check_dangling_long", digest=digest, dangling_s=round(now - since, 1))

    def forget_dangling(self) -> None:
        """A new term: no check has been warned about in it."""
        self._flagged_dangling.clear()

    def rebalance_moves(self, outcome: RebalanceOutcome, moves: Sequence[Move]) -> None:
        """A line per move an applied rebalance made (some or all of ``outcome.moves``:
        the engine logs thousands a slice at a time), with its reason."""
        plan = outcome.plan
        for move in moves:
            assert move.loads is not None
            s_before, s_after, d_before, d_after = move.loads
            log.info(
                "rebalance_move",
                digest=move.digest,
                check=move.check_name,
                cost=round(move.cost, 6),
                source=move.source_node,
                dest=move.dest_node,
                reason=(
                    f"{move.source_node} at {s_before:.3g} is above the bound "
                    f"{plan.bound:.3g} (mean {plan.mean:.3g}); {move.dest_node} at "
                    f"{d_before:.3g} has room"
                ),
                source_load=[round(s_before, 6), round(s_after, 6)],
                dest_load=[round(d_before, 6), round(d_after, 6)],
            )

    def rebalance(
        self,
        outcome: RebalanceOutcome,
        *,
        trigger: str,
        force: bool,
        dry_run: bool,
        started: float,
    ) -> None:
        """The run's outcome (its moves are logged by ``rebalance_moves``), with the
        planned moves it skipped, and the run counted with its duration since
        ``started`` (``time.perf_counter``) and its moves."""
        plan = outcome.plan
        log.info(
            "rebalanced" if outcome.applied else "rebalance_not_applied",
            trigger=trigger,
            outcome=outcome.reason,
            moves=len(outcome.moves),
            spread_before=round(plan.spread_before, 4),
            spread_after=round(plan.spread_after, 4),
            force=force,
            dry_run=dry_run,
            **({"skipped": dict(outcome.skipped)} if outcome.skipped else {}),
        )
        if self._metrics is not None:
            self._metrics.rebalance_seconds.observe(time.perf_counter() - started)
            self._metrics.rebalances.labels(trigger=trigger, outcome=outcome.reason).inc()
            if outcome.applied:
                self.moves("rebalance", outcome.moves)


def _decision_fields(decision: Decision) -> dict[str, object]:
    return {
        "digest": decision.digest,
        "check": decision.check_name,
        "node": decision.node,
        "previous": decision.previous,
        "reason": decision.reason,
    }
