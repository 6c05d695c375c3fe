"""What a big state keeps the longest is kept where the garbage collector stops looking.

CPython stops tracking a plain tuple of plain values (and a plain dict of them) in the
first collection it survives (one holding a tuple, once that one is let go); it never
stops tracking a named tuple, a tuple subclass. Kept results and a node's stats are the
most numerous long-lived objects of a large state (at 10,000 agents: 500,000 results,
100,000 stats, 10,000 new results a second), and the fleet benchmark found the
collector's middle generation walking every one made since its last run. These tests
hold that they stay out of its way.
"""

from __future__ import annotations

import gc

from dispatcher.core.history import CheckHistory
from dispatcher.core.model import CheckResult, CheckStats, Digest, NodeName
from dispatcher.core.results import ResultBook
from dispatcher.core.state import ClusterState
from tests.core.test_state_table import add, beat, check

NODE = NodeName("node-a")
NOW = 1_800_000_000.0


def tracked_tuples_with(*values: object) -> list[tuple[object, ...]]:
    """The tuples the collector still tracks that start with ``values``."""
    head = len(values)
    return [
        o for o in gc.get_objects() if isinstance(o, tuple) and len(o) > head and o[:head] == values
    ]


def test_the_results_a_history_keeps_are_untracked_after_a_collection() -> None:
    history = CheckHistory()
    digest = Digest("9f2c" * 8)
    for i in range(50):
        ok = i % 3 != 0
        history.record(
            NODE,
            CheckResult(
                digest=digest,
                run_id=f"untracked-run-{i}",
                ok=ok,
                errors=() if ok else (f"run {i} failed",),
                started_at=NOW - 60 + i,
                duration_s=0.25,
            ),
            now_wall=NOW,
        )
    gc.collect()
    assert not tracked_tuples_with("untracked-run-1", NODE)  # ok, no errors
    # A tuple holding a tuple (its errors) is let go once that one is: in the same
    # collection or, if the collector came to the outer one first, in the next.
    gc.collect()
    assert not tracked_tuples_with("untracked-run-3", NODE)  # failed, with errors
    # What the history hands out is a named tuple, as before.
    newest = history.results(digest, now_wall=NOW, limit=1)[0]
    assert (newest.run_id, newest.node, newest.ok) == ("untracked-run-49", NODE, True)


def test_the_stats_a_node_keeps_are_untracked_after_a_collection() -> None:
    state = ClusterState()
    beat(state, "a", now=0.0)
    c1 = check("c1")
    add(state, c1, now=0.0)
    beat(
        state,
        "a",
        now=1.0,
        stats={c1.digest: CheckStats(avg_execution_s=1.625, runs=7, errors=2, last_error="x")},
    )
    gc.collect()
    assert not tracked_tuples_with(1.625, 7, 2, "x")
    assert state.cost(c1.digest) == 1.625 / c1.interval_s  # and it was priced from them


def test_a_checks_last_result_is_untracked_after_a_collection() -> None:
    book = ResultBook()
    digest = Digest("a1b2" * 8)

    def post(i: int, *, ok: bool) -> None:
        """One result, made here so that only the book holds it afterwards."""
        result = CheckResult(
            digest=digest,
            run_id=f"last-run-{i}",
            ok=ok,
            errors=() if ok else ("refused",),
            started_at=NOW - 10 + i,
            duration_s=0.5,
            output="fine",
        )
        book.record(NODE, [result], held={digest}, placement={digest: NODE}, now_wall=NOW)

    post(0, ok=True)
    post(1, ok=False)
    gc.collect()
    gc.collect()  # its errors first (see the history's test)
    assert not tracked_tuples_with(digest, "last-run-1")
    last = book.summaries[digest].last
    assert isinstance(last, CheckResult)
    assert (last.run_id, last.ok, last.errors, last.output) == (
        "last-run-1",
        False,
        ("refused",),
        "fine",
    )
    assert not book.last_ok(digest)
    del last
    post(2, ok=True)
    gc.collect()
    assert not tracked_tuples_with(digest, "last-run-2")
    summary = book.summaries[digest]
    assert summary.last.run_id == "last-run-2"
    assert book.last_ok(digest)
    assert (summary.success_count, summary.failure_count) == (2, 1)
