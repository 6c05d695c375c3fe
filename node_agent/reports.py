"""Runs that may report their own result to the local server (exec checks)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from dispatcher.common.clock import Clock
from dispatcher.errors import Gone, InvalidRequest


@dataclass(frozen=True, slots=True)
class Report:
    ok: bool
    errors: list[str]


@dataclass(slots=True)
class _Run:
    digest: str
    deadline_unix_s: float
    reported: asyncio.Future[Report] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class RunRegistry:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._runs: dict[str, _Run] = {}

    def open(self, run_id: str, *, digest: str, deadline_unix_s: float) -> asyncio.Future[Report]:
        run = self._runs[run_id] = _Run(digest=digest, deadline_unix_s=deadline_unix_s)
        return run.reported

    def close(self, run_id: str) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None and not run.reported.done():
            run.reported.cancel()

    def report(self, run_id: str, report: Report) -> None:
        """Records a program's own verdict; 410 for a stale run, 400 for a contradiction."""
        run = self._runs.get(run_id)
        if run is None or self._clock.time() > run.deadline_unix_s:
            raise Gone(f"Run {run_id[:80]!r} is not current or is past its deadline.")
        if report.ok and report.errors:
            raise InvalidRequest("ok is true but errors is not empty.")
        if not report.ok and not any(e.strip() for e in report.errors):
            raise InvalidRequest("ok is false but errors holds no non-blank error.")
        if run.reported.done():
            raise Gone(f"Run {run_id[:80]!r} has already reported.")
        run.reported.set_result(report)
