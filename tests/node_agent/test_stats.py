"""Which checks' stats a heartbeat carries: the oldest changes first, within a budget."""

from __future__ import annotations

from typing import Any

from node_agent.stats import ENTRY_BYTES, StatsOutbox


def stats(last_error: str | None = None) -> dict[str, Any]:
    return {"avg_execution_s": 0.1, "runs": 1, "errors": 0, "last_error": last_error}


def digest(n: int) -> str:
    return f"{n:032x}"


def test_the_oldest_changes_go_first_and_a_check_that_runs_again_keeps_its_place() -> None:
    outbox = StatsOutbox()
    for n in (1, 2, 3, 1):  # 1 runs again before anything was sent: still first
        outbox.changed(digest(n))
    cost = 32 + ENTRY_BYTES
    taken = outbox.take(lambda d: stats(), budget_bytes=2 * cost)
    assert list(taken) == [digest(1), digest(2)]
    assert list(outbox.take(lambda d: stats(), budget_bytes=2 * cost)) == [digest(3)]
    assert outbox.take(lambda d: stats(), budget_bytes=2 * cost) == {}


def test_the_budget_counts_the_last_errors_and_one_entry_always_goes() -> None:
    outbox = StatsOutbox()
    outbox.changed(digest(1))
    outbox.changed(digest(2))
    big = "e" * 4000
    taken = outbox.take(lambda d: stats(big), budget_bytes=1000)
    assert list(taken) == [digest(1)]  # over the budget alone: sent anyway, or never
    assert len(outbox) == 1


def test_a_check_stopped_since_it_ran_is_skipped() -> None:
    outbox = StatsOutbox()
    for n in range(3):
        outbox.changed(digest(n))
    taken = outbox.take(lambda d: None if d == digest(1) else stats(), budget_bytes=10**6)
    assert list(taken) == [digest(0), digest(2)]
    assert len(outbox) == 0


def test_taking_from_a_large_outbox_costs_no_more_than_what_is_taken() -> None:
    """100,000 checks that ran: every heartbeat takes its share, each check once."""
    outbox = StatsOutbox()
    for n in range(100_000):
        outbox.changed(digest(n))
    sent: list[str] = []
    while len(outbox):
        sent.extend(outbox.take(lambda d: stats(), budget_bytes=1024 * 1024))
    assert sent == [digest(n) for n in range(100_000)]
