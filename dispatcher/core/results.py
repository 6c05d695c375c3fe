"""Check results as the status page shows them: the last run of each check and its counts.

Apart from the placement aggregate because nothing else depends on it: placement,
costs and the change counter never read a result. The one exception is the planner,
which moves only checks whose last run succeeded (``last_ok``).
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence

from dispatcher.core.model import CheckResult, Digest, NodeName, ResultSummary
from dispatcher.core.outcomes import RejectedResult


class ResultBook:
    """Each held check's ``ResultSummary``; the state forgets a check's when it goes."""

    __slots__ = ("_summaries",)

    def __init__(self) -> None:
        self._summaries: dict[Digest, ResultSummary] = {}

    @property
    def summaries(self) -> Mapping[Digest, ResultSummary]:
        return self._summaries

    def last_ok(self, digest: Digest) -> bool:
        """Whether the check has run and its last run succeeded."""
        summary = self._summaries.get(digest)
        return summary is not None and summary.last.ok

    def forget(self, digest: Digest) -> None:
        self._summaries.pop(digest, None)

    def record(
        self,
        name: NodeName,
        results: Sequence[CheckResult],
        *,
        held: Container[Digest],
        placement: Mapping[Digest, NodeName],
    ) -> tuple[int, list[RejectedResult]]:
        """Stores results from node ``name`` for checks ``held`` and placed on it; rejects
        the others (a check removed, or moved away since it ran). Returns how many were
        stored and the rejected ones."""
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
            self._fold(name, result)
        return accepted, rejected

    def _fold(self, name: NodeName, result: CheckResult) -> None:
        summary = self._summaries.get(result.digest)
        newest = summary is None or result.started_at >= summary.last.started_at
        if summary is None:
            summary = self._summaries[result.digest] = ResultSummary(node=name, last=result)
        elif newest:
            summary.last = result
            summary.node = name
        if result.ok:
            summary.success_count += 1
            end = result.started_at + result.duration_s
            summary.last_ok_at = max(summary.last_ok_at or end, end)
        else:
            summary.failure_count += 1
        if newest:
            # A late result of an older run counts, but does not rewrite the streak.
            summary.consecutive_failures = 0 if result.ok else summary.consecutive_failures + 1
