"""Table tests of the result fold: which result is a check's last, whatever the agents'
clocks say.

A result is ordered by ``min(started_at, arrival wall time)``: one dated in the future
(a skewed or hostile clock, within what the API lets through) counts as having run when
it arrived, so it cannot hide the runs after it; a late result of an older run counts in
the totals but does not replace a newer last result.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dispatcher.core.model import CheckResult, Digest, NodeName
from dispatcher.core.results import ResultBook

DIGEST = Digest("9f2c" * 8)
NODE = NodeName("node-a")


@dataclass(frozen=True)
class Arrives:
    """A result that ran at ``started_at`` (the agent's clock) and arrived at ``at``."""

    run: str
    ok: bool
    started_at: float
    at: float
    duration_s: float = 0.5


def run(book: ResultBook, arrivals: list[Arrives]) -> None:
    for a in arrivals:
        result = CheckResult(
            digest=DIGEST,
            run_id=a.run,
            ok=a.ok,
            errors=() if a.ok else (f"{a.run} failed",),
            started_at=a.started_at,
            duration_s=a.duration_s,
        )
        accepted, rejected = book.record(
            NODE, [result], held={DIGEST}, placement={DIGEST: NODE}, now_wall=a.at
        )
        assert (accepted, rejected) == (1, [])


@pytest.mark.parametrize(
    ("arrivals", "last", "streak", "last_ok_at"),
    [
        pytest.param(
            [Arrives("r1", True, 100.0, 100.6), Arrives("r2", False, 115.0, 115.6)],
            "r2",
            1,
            100.5,
            id="in-order",
        ),
        pytest.param(
            # Dated 200 s ahead: it counts as having run when it arrived (100.6), so the
            # failure that ran at 115 shows.
            [Arrives("future", True, 300.0, 100.6), Arrives("r2", False, 115.0, 115.6)],
            "r2",
            1,
            100.6,
            id="future-dated-then-a-later-failure",
        ),
        pytest.param(
            # The extreme the report found (1e308): it pins nothing either.
            [Arrives("far", True, 1e308, 100.6), Arrives("r2", False, 115.0, 115.6)],
            "r2",
            1,
            100.6,
            id="far-future-then-a-later-failure",
        ),
        pytest.param(
            [
                Arrives("future", True, 300.0, 100.6),
                Arrives("r2", False, 115.0, 115.6),
                Arrives("r3", False, 130.0, 130.6),
            ],
            "r3",
            2,
            100.6,
            id="future-dated-then-two-failures",
        ),
        pytest.param(
            # A late batch (an agent retrying a failed POST) carries an older run.
            [Arrives("r2", False, 115.0, 115.6), Arrives("r1", True, 100.0, 116.0)],
            "r2",
            1,
            100.5,
            id="late-result-of-an-older-run",
        ),
        pytest.param(
            # The newest is future-dated: ordered at its arrival (115.6); an older run
            # arriving later is still older than that.
            [Arrives("future", False, 500.0, 115.6), Arrives("r1", True, 100.0, 116.0)],
            "future",
            1,
            100.5,
            id="late-older-run-after-a-future-dated-one",
        ),
        pytest.param(
            # Two results dated ahead: the one that arrived later is the newer.
            [Arrives("a", True, 400.0, 100.6), Arrives("b", False, 300.0, 110.6)],
            "b",
            1,
            100.6,
            id="two-future-dated-by-arrival",
        ),
    ],
)
def test_the_last_result_is_the_newest_by_what_the_dispatcher_can_vouch_for(
    arrivals: list[Arrives], last: str, streak: int, last_ok_at: float
) -> None:
    book = ResultBook()

    run(book, arrivals)

    summary = book.summaries[DIGEST]
    assert summary.last.run_id == last
    assert summary.consecutive_failures == streak
    assert summary.last_ok_at == last_ok_at
    assert (summary.success_count, summary.failure_count) == (
        sum(a.ok for a in arrivals),
        sum(not a.ok for a in arrivals),
    )


def test_the_reported_start_is_kept_as_sent() -> None:
    """Ordering uses the arrival cap; what the agent reported is shown as it was."""
    book = ResultBook()

    run(book, [Arrives("future", True, 300.0, 100.6)])

    summary = book.summaries[DIGEST]
    assert summary.last.started_at == 300.0
    assert summary.ordered_at == 100.6
