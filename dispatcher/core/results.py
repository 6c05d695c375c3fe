"""Check results as the status page shows them: the last run of each check and its counts.

Apart from the placement aggregate because nothing else depends on it: placement,
costs and the change counter never read a result. The one exception is the planner,
which moves only checks whose last run succeeded (``last_ok``).

Which result is a check's last is decided by when it ran, as far as the dispatcher can
vouch for it: an agent's ``started_at``, capped at the wall time the result arrived
(``now_wall``). A result dated in the future (a skewed clock, a hostile client; the API
refuses the far future, but a few minutes ahead pass) thus counts as having run when it
arrived, and every later run replaces it; a late result of an older run still counts
(success and failure counts) but does not replace a newer last result.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from typing import cast

from dispatcher.core.history import CheckHistory
from dispatcher.core.model import CheckResult, Digest, NodeName, ResultKept, ResultSummary
from dispatcher.core.outcomes import RejectedResult


class ResultBook:
    """Each held check's ``ResultSummary`` and its history; the state forgets a check's
    when it goes."""

    __slots__ = ("_history", "_summaries")

    def __init__(self, history: CheckHistory | None = None) -> None:
        self._summaries: dict[Digest, ResultSummary] = {}
        self._history = history if history is not None else CheckHistory()

    @property
    def history(self) -> CheckHistory:
        return self._history

    @property
    def summaries(self) -> Mapping[Digest, ResultSummary]:
        return self._summaries

    def last_ok(self, digest: Digest) -> bool:
        """Whether the check has run and its last run succeeded."""
        summary = self._summaries.get(digest)
        return summary is not None and summary.last_ok

    def forget(self, digest: Digest) -> None:
        self._summaries.pop(digest, None)
        self._history.forget(digest)

    def record(
        self,
        name: NodeName,
        results: Sequence[CheckResult],
        *,
        held: Container[Digest],
        placement: Mapping[Digest, NodeName],
        now_wall: float,
    ) -> tuple[int, list[RejectedResult]]:
        """Stores results from node ``name`` for checks ``held`` and placed on it; rejects
        the others (a check removed, or moved away since it ran). ``now_wall`` is the wall
        time (Unix seconds) the results arrived at. Returns how many were stored and the
        rejected ones."""
        accepted = 0
        rejected: list[RejectedResult] = []
        for result in results:
            if result.digest not in held:
                rejected.append(RejectedResult(result.digest, "unknown_check"))
                continue
            if placement.get(result.digest) != name:
                rejected.append(RejectedResult(result.digest, "not_assigned"))
                continue
            accepted += 1
            self._fold(name, result, now_wall=now_wall)
            self._history.record(name, result, now_wall=now_wall)
        return accepted, rejected

    def _fold(self, name: NodeName, result: CheckResult, *, now_wall: float) -> None:
        ordered_at = min(result.started_at, now_wall)
        summary = self._summaries.get(result.digest)
        newest = summary is None or ordered_at >= summary.ordered_at
        kept = cast("ResultKept", tuple(result))
        if summary is None:
            summary = self._summaries[result.digest] = ResultSummary(
                node=name, kept=kept, ordered_at=ordered_at
            )
        elif newest:
            summary.kept = kept
            summary.node = name
            summary.ordered_at = ordered_at
        if result.ok:
            summary.success_count += 1
            # Ended by the time it arrived, whatever its own clock said.
            end = min(result.started_at + result.duration_s, now_wall)
            summary.last_ok_at = max(summary.last_ok_at or end, end)
        else:
            summary.failure_count += 1
        if newest:
            # A late result of an older run counts, but does not rewrite the streak.
            summary.consecutive_failures = 0 if result.ok else summary.consecutive_failures + 1
