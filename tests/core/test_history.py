"""Table tests of a check's history: its count and age bounds, newest-first queries with
``since`` and ``limit``, uptime over a window and duration percentiles.

Time is the wall time passed in (``now_wall``); nothing here waits.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dispatcher.core.history import (
    DAY_S,
    HOUR_S,
    CheckHistory,
    HistoryEntry,
    HistoryLimits,
    LoadedHistory,
    percentile,
)
from dispatcher.core.model import CheckResult, Digest, NodeName, SourceName, make_config
from dispatcher.core.results import ResultBook
from dispatcher.core.state import ClusterState

DIGEST = Digest("9f2c" * 8)
OTHER = Digest("a1b2" * 8)
NODE = NodeName("node-a")
NOW = 1_800_000_000.0


def result(run: str, *, ok: bool, started_at: float, duration_s: float = 0.5) -> CheckResult:
    return CheckResult(
        digest=DIGEST,
        run_id=run,
        ok=ok,
        errors=() if ok else (f"{run} failed",),
        started_at=started_at,
        duration_s=duration_s,
    )


def feed(history: CheckHistory, runs: list[tuple[float, bool]], *, now: float = NOW) -> None:
    """Records runs given as (seconds before ``now``, ok), each arriving at ``now``."""
    for i, (ago, ok) in enumerate(runs):
        history.record(NODE, result(f"r{i}", ok=ok, started_at=now - ago), now_wall=now)


@dataclass(frozen=True)
class UptimeCase:
    name: str
    runs: list[tuple[float, bool]]
    expected: dict[str, float | None]


UPTIME_CASES = [
    UptimeCase("no run at all", [], {"1h": None, "24h": None, "7d": None}),
    UptimeCase("one ok run just now", [(0, True)], {"1h": 1.0, "24h": 1.0, "7d": 1.0}),
    UptimeCase("one failed run just now", [(0, False)], {"1h": 0.0, "24h": 0.0, "7d": 0.0}),
    UptimeCase(
        "3 of 4 ok in the last hour",
        [(60, True), (120, False), (180, True), (240, True)],
        {"1h": 0.75, "24h": 0.75, "7d": 0.75},
    ),
    UptimeCase(
        "a failure 2 h ago counts in 24 h and 7 d only",
        [(2 * HOUR_S, False), (60, True)],
        {"1h": 1.0, "24h": 0.5, "7d": 0.5},
    ),
    UptimeCase(
        "runs only 2 days ago: none in 1 h nor 24 h",
        [(2 * DAY_S, True), (2 * DAY_S - 1, False)],
        {"1h": None, "24h": None, "7d": 0.5},
    ),
    UptimeCase(
        "a run exactly one window ago is in it",
        [(HOUR_S, False), (30, True)],
        {"1h": 0.5, "24h": 0.5, "7d": 0.5},
    ),
    UptimeCase(
        "a run just over one window ago is not",
        [(HOUR_S + 0.001, False), (30, True)],
        {"1h": 1.0, "24h": 0.5, "7d": 0.5},
    ),
    UptimeCase(
        "older than the 7 d age bound: dropped",
        [(8 * DAY_S, False), (10, True)],
        {"1h": 1.0, "24h": 1.0, "7d": 1.0},
    ),
    UptimeCase(
        "a result dated in the future counts as run at arrival",
        [(-600, False), (10, True)],
        {"1h": 0.5, "24h": 0.5, "7d": 0.5},
    ),
    UptimeCase(
        "a late result of an older run lands in its own window",
        [(60, True), (3 * HOUR_S, False), (120, True)],
        {"1h": 1.0, "24h": 2 / 3, "7d": 2 / 3},
    ),
]


@pytest.mark.parametrize("case", UPTIME_CASES, ids=[c.name for c in UPTIME_CASES])
def test_uptime_windows(case: UptimeCase) -> None:
    history = CheckHistory()
    feed(history, case.runs)
    assert history.uptimes(DIGEST, now_wall=NOW) == pytest.approx(case.expected)


def test_uptime_after_the_count_bound_drops_the_oldest_runs() -> None:
    # 3 failures then 3 ok runs, bound 4: the two oldest failures go.
    history = CheckHistory(HistoryLimits(max_results=4))
    feed(history, [(60 - i, i >= 3) for i in range(6)])
    assert history.uptime(DIGEST, HOUR_S, now_wall=NOW) == pytest.approx(0.75)
    assert [e.run_id for e in history.results(DIGEST, now_wall=NOW)] == ["r5", "r4", "r3", "r2"]


def test_uptime_of_a_late_ok_result_shifts_the_counts_after_it() -> None:
    history = CheckHistory()
    feed(history, [(100, False), (50, False), (10, False)])
    feed(history, [(70, True)])  # arrives last, ran second
    assert history.uptime(DIGEST, 60, now_wall=NOW) == 0.0
    assert history.uptime(DIGEST, 80, now_wall=NOW) == pytest.approx(1 / 3)
    assert history.uptime(DIGEST, HOUR_S, now_wall=NOW) == pytest.approx(0.25)


def test_the_age_bound_applies_when_read_as_time_goes_on() -> None:
    history = CheckHistory(HistoryLimits(max_age_s=HOUR_S))
    feed(history, [(30 * 60, False), (60, True)])
    assert len(history.results(DIGEST, now_wall=NOW)) == 2
    later = NOW + 40 * 60
    assert [e.run_id for e in history.results(DIGEST, now_wall=later)] == ["r1"]
    assert history.uptime(DIGEST, DAY_S, now_wall=later) == 1.0
    assert history.results(DIGEST, now_wall=NOW + 2 * HOUR_S) == []
    assert history.uptime(DIGEST, DAY_S, now_wall=NOW + 2 * HOUR_S) is None


def test_a_result_older_than_the_age_bound_is_not_kept() -> None:
    history = CheckHistory(HistoryLimits(max_age_s=HOUR_S))
    feed(history, [(2 * HOUR_S, True)])
    assert DIGEST not in history
    assert len(history) == 0


@dataclass(frozen=True)
class QueryCase:
    name: str
    since: float | None
    limit: int
    expected: list[str]


# Runs r0..r9 ran 100, 90, ..., 10 s before NOW.
QUERY_CASES = [
    QueryCase("all, newest first", None, 500, [f"r{i}" for i in range(9, -1, -1)]),
    QueryCase("limit keeps the newest", None, 3, ["r9", "r8", "r7"]),
    QueryCase("limit 1", None, 1, ["r9"]),
    QueryCase("since is inclusive", NOW - 30, 500, ["r9", "r8", "r7"]),
    QueryCase("since and limit", NOW - 50, 2, ["r9", "r8"]),
    QueryCase("since after the newest", NOW - 5, 500, []),
    QueryCase("since before the oldest", NOW - 1000, 500, [f"r{i}" for i in range(9, -1, -1)]),
]


@pytest.mark.parametrize("case", QUERY_CASES, ids=[c.name for c in QUERY_CASES])
def test_results_query(case: QueryCase) -> None:
    history = CheckHistory()
    feed(history, [(100 - 10 * i, i % 2 == 0) for i in range(10)])
    got = history.results(DIGEST, now_wall=NOW, since=case.since, limit=case.limit)
    assert [e.run_id for e in got] == case.expected


@pytest.mark.parametrize("limit", [0, -1, 5001])
def test_results_limit_out_of_bounds(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        CheckHistory().results(DIGEST, now_wall=NOW, limit=limit)


@pytest.mark.parametrize("limit", [1, 5000])
def test_results_limit_bounds_are_inclusive(limit: int) -> None:
    history = CheckHistory()
    feed(history, [(1, True)])
    assert len(history.results(DIGEST, now_wall=NOW, limit=limit)) == 1


def test_count_bound_per_check() -> None:
    history = CheckHistory(HistoryLimits(max_results=3))
    feed(history, [(50 - i, True) for i in range(5)])
    history.record(NODE, CheckResult(OTHER, "o", True, (), NOW - 1, 0.1), now_wall=NOW)
    assert [e.run_id for e in history.results(DIGEST, now_wall=NOW)] == ["r4", "r3", "r2"]
    assert [e.run_id for e in history.results(OTHER, now_wall=NOW)] == ["o"]
    assert len(history) == 4


def digest(i: int) -> Digest:
    return Digest(f"{i:032x}")


def record_each(history: CheckHistory, checks: int, runs: int, *, start: float) -> None:
    """``runs`` rounds of one result for each of ``checks`` checks, a second apart."""
    for r in range(runs):
        at = start + r
        for i in range(checks):
            result = CheckResult(digest(i), f"c{i}r{r}", True, (), at, 0.1)
            history.record(NODE, result, now_wall=at)


def test_the_overall_bound_shares_max_total_among_the_checks() -> None:
    history = CheckHistory(HistoryLimits(max_results=100, max_total=30))
    record_each(history, checks=3, runs=50, start=NOW)
    assert history.per_check() == 10
    assert len(history) == 30
    # Each keeps its newest ten.
    kept = [e.run_id for e in history.results(digest(0), now_wall=NOW + 50)]
    assert kept == [f"c0r{r}" for r in range(49, 39, -1)]


def test_more_checks_shrink_every_share_at_once() -> None:
    history = CheckHistory(HistoryLimits(max_results=100, max_total=30))
    record_each(history, checks=1, runs=40, start=NOW)
    assert len(history) == 30  # one check alone: the overall bound, below max_results
    record_each(history, checks=6, runs=1, start=NOW + 40)
    # The first check recorded before the five new ones came; their coming trimmed it.
    assert history.per_check() == 5
    assert len(history) == 5 + 5 * 1
    record_each(history, checks=6, runs=10, start=NOW + 41)
    assert len(history) == 30


def test_checks_that_stop_recording_give_up_their_share_when_more_checks_come() -> None:
    """Each check records its fill, then stops (it dangles, its node died): without a
    sweep of every check the early ones would keep their large early shares."""
    history = CheckHistory(HistoryLimits(max_results=2000, max_total=10_000))
    for i in range(200):
        for r in range(60):
            at = NOW + i * 60 + r
            history.record(NODE, CheckResult(digest(i), f"c{i}r{r}", True, (), at, 0.1),
                           now_wall=at)  # fmt: skip
        assert len(history) <= 10_000 / 0.9 + 200, (i, len(history))
    assert history.per_check() == 50
    assert len(history) <= 10_000 / 0.9


def test_the_share_is_at_least_one_and_at_most_max_results() -> None:
    few = CheckHistory(HistoryLimits(max_results=4, max_total=1000))
    record_each(few, checks=2, runs=10, start=NOW)
    assert few.per_check() == 4
    assert len(few) == 8
    many = CheckHistory(HistoryLimits(max_results=4, max_total=3))
    record_each(many, checks=5, runs=2, start=NOW)
    assert many.per_check() == 1
    assert len(many) == 5  # the newest result of each check stays


def test_loading_a_store_s_history_keeps_each_check_s_share() -> None:
    history = CheckHistory(HistoryLimits(max_results=100, max_total=20))
    source = CheckHistory(HistoryLimits(max_results=100))
    record_each(source, checks=2, runs=30, start=NOW)
    for d, entries in source.snapshot().items():
        history.load(d, entries)
    assert len(history) <= 20 + 10  # the first loaded kept its share of one check's
    history.set_limits(HistoryLimits(max_results=100, max_total=20))
    assert len(history) == 20


def test_default_limits() -> None:
    limits = CheckHistory().limits
    assert (limits.max_results, limits.max_age_s) == (2000, 7 * DAY_S)


@pytest.mark.parametrize(
    "limits",
    [
        HistoryLimits(max_results=-1),
        HistoryLimits(max_age_s=0),
        HistoryLimits(max_age_s=float("inf")),
        HistoryLimits(max_errors=-1),
        HistoryLimits(max_total=0),
    ],
)
def test_bad_limits_are_refused(limits: HistoryLimits) -> None:
    with pytest.raises(ValueError, match="history"):
        CheckHistory(limits)


def test_errors_are_bounded_in_count_and_length() -> None:
    history = CheckHistory(HistoryLimits(max_errors=2, max_error_chars=4))
    bad = CheckResult(DIGEST, "r", False, ("abcdefgh", "ij", "never kept"), NOW - 1, 2.0)
    entry = history.record(NODE, bad, now_wall=NOW)
    assert entry is not None
    assert entry.errors == ("abcd", "ij")
    (kept,) = history.results(DIGEST, now_wall=NOW)
    assert (kept.run_id, kept.node, kept.ok, kept.errors) == ("r", NODE, False, ("abcd", "ij"))
    assert (kept.started_at, kept.duration_s) == (NOW - 1, 2.0)


@dataclass(frozen=True)
class PercentileCase:
    name: str
    values: list[float]
    expected: tuple[float | None, float | None, float | None]


PERCENTILE_CASES = [
    PercentileCase("empty", [], (None, None, None)),
    PercentileCase("one value", [0.3], (0.3, 0.3, 0.3)),
    PercentileCase("two values", [1.0, 2.0], (1.0, 2.0, 2.0)),
    PercentileCase("1..100", [float(i) for i in range(1, 101)], (50.0, 95.0, 99.0)),
    PercentileCase("1..10", [float(i) for i in range(1, 11)], (5.0, 10.0, 10.0)),
    PercentileCase("one slow run in 200", [0.1] * 199 + [9.0], (0.1, 0.1, 0.1)),
    PercentileCase("three slow runs in 200", [0.1] * 197 + [9.0] * 3, (0.1, 0.1, 9.0)),
]


@pytest.mark.parametrize("case", PERCENTILE_CASES, ids=[c.name for c in PERCENTILE_CASES])
def test_duration_percentiles(case: PercentileCase) -> None:
    history = CheckHistory()
    for i, duration in enumerate(case.values):
        run = result(f"r{i}", ok=True, started_at=NOW - 1000 + i, duration_s=duration)
        history.record(NODE, run, now_wall=NOW)
    got = history.duration_percentiles(DIGEST, now_wall=NOW)
    assert (got.p50, got.p95, got.p99) == case.expected
    ordered = sorted(case.values)
    assert (percentile(ordered, 50), percentile(ordered, 99)) == (
        case.expected[0],
        case.expected[2],
    )


def test_result_book_records_accepted_results_only_and_forgets_with_the_check() -> None:
    book = ResultBook()
    results = [
        result("kept", ok=True, started_at=NOW - 5),
        CheckResult(OTHER, "x", True, (), NOW, 1),
    ]
    accepted, rejected = book.record(
        NODE, results, held={DIGEST}, placement={DIGEST: NODE}, now_wall=NOW
    )
    assert (accepted, [r.digest for r in rejected]) == (1, [OTHER])
    assert [e.run_id for e in book.history.results(DIGEST, now_wall=NOW)] == ["kept"]
    assert OTHER not in book.history
    book.forget(DIGEST)
    assert DIGEST not in book.history


def test_state_takes_history_limits() -> None:
    state = ClusterState(history_limits=HistoryLimits(max_results=7))
    assert state.history.limits.max_results == 7


# ------------------------------------------------------------ history off (max_results 0)

OFF = HistoryLimits(max_results=0)


def test_history_off_keeps_nothing_and_leaves_nothing_pending() -> None:
    history = CheckHistory(OFF, track=True)
    assert history.record(NODE, result("r", ok=True, started_at=NOW - 1), now_wall=NOW) is None
    feed(history, [(30, False), (20, True), (10, True)])

    assert len(history) == 0
    assert DIGEST not in history
    assert history.results(DIGEST, now_wall=NOW) == []
    assert history.uptimes(DIGEST, now_wall=NOW) == {"1h": None, "24h": None, "7d": None}
    got = history.duration_percentiles(DIGEST, now_wall=NOW)
    assert (got.p50, got.p95, got.p99) == (None, None, None)
    assert history.take_pending() == {}
    assert history.snapshot() == {}


def test_history_off_loads_nothing_a_store_kept() -> None:
    kept = CheckHistory()
    feed(kept, [(20, True), (10, False)])
    entries = kept.snapshot()[DIGEST]
    assert len(entries) == 2

    history = CheckHistory(OFF, track=True)
    history.load(DIGEST, entries)

    assert DIGEST not in history
    assert history.snapshot() == {}


def test_turning_history_off_drops_what_is_kept_and_pending() -> None:
    history = CheckHistory(track=True)
    feed(history, [(20, True), (10, False)])
    assert len(history) == 2

    history.set_limits(OFF)

    assert len(history) == 0
    assert history.take_pending() == {}
    feed(history, [(5, True)])
    assert len(history) == 0


def test_a_tracking_state_with_history_off_gives_the_store_no_history() -> None:
    """A results post then hands the store writer an empty delta (nothing to write)."""
    state = ClusterState(track_changes=True, history_limits=OFF)
    state.node_status(NODE, now=0.0, last_change=0)
    config = make_config(name="http", instances=[{"url": "http://svc/healthz"}])
    state.replace_source(SourceName("ci"), [config], now=0.0)
    state.take_delta()  # the config and its placement, written once

    ran = CheckResult(config.digest, "r1", True, (), NOW - 1, 0.2)
    assert state.record_results(NODE, [ran], now_wall=NOW) == (1, [])

    delta = state.take_delta()
    assert delta.history == {}
    assert not delta
    assert state.results[config.digest].last.run_id == "r1"  # the last result still kept


def test_in_order_and_late_results_keep_order_and_counts() -> None:
    """Appended in order (the usual case), then a late one and one tied with the newest:
    ties stay in arrival order, and the ok counts stay right on both paths."""
    history = CheckHistory()
    feed(history, [(50, True), (40, False), (30, True), (10, True)])
    history.record(NODE, result("late", ok=True, started_at=NOW - 35), now_wall=NOW)
    history.record(NODE, result("tie", ok=False, started_at=NOW - 10), now_wall=NOW)

    got = [e.run_id for e in history.results(DIGEST, now_wall=NOW)]
    assert got == ["tie", "r3", "r2", "late", "r1", "r0"]
    assert history.uptime(DIGEST, 45, now_wall=NOW) == 3 / 5  # r1 late r2 r3 tie
    assert history.uptime(DIGEST, 20, now_wall=NOW) == 1 / 2  # r3 tie


# ------------------------------------------------- a store's history, installed later


def stored(*runs: tuple[str, float], digest: Digest = DIGEST) -> dict[Digest, list[HistoryEntry]]:
    """What a store holds of a check's history: its entries, oldest first."""
    source = CheckHistory()
    for run, at in runs:
        source.record(NODE, CheckResult(digest, run, True, (), NOW - at, 0.5), now_wall=NOW)
    return source.snapshot()


def run_ids(history: CheckHistory, digest: Digest = DIGEST) -> list[str]:
    return [e.run_id for e in history.results(digest, now_wall=NOW)][::-1]


def install_all(history: CheckHistory, loaded: LoadedHistory, held: set[Digest]) -> int:
    installed = sum(history.install(part, held=held) for part in loaded.slices(1))
    history.loaded()
    return installed


def test_a_history_installed_later_goes_before_the_results_recorded_meanwhile() -> None:
    """A new leader serves before its store's history is in: the results of its own
    term stay, the stored ones go before them, and none is pending (the store has it)."""
    history = CheckHistory(track=True)
    history.expect_load()
    history.record(NODE, result("new", ok=True, started_at=NOW - 5), now_wall=NOW)
    pending = history.take_pending()
    loaded = CheckHistory.prepare(stored(("old-1", 30), ("old-2", 20)))

    assert install_all(history, loaded, {DIGEST}) == 1

    assert run_ids(history) == ["old-1", "old-2", "new"]
    assert [e.run_id for e in pending[DIGEST]] == ["new"]
    assert history.take_pending() == {}, "what the store had is not written again"


def test_an_installed_entry_the_term_wrote_itself_is_not_kept_twice() -> None:
    """The store may be read after this term wrote a result: it is there and here."""
    history = CheckHistory(track=True)
    history.expect_load()
    history.record(NODE, result("new", ok=True, started_at=NOW - 5), now_wall=NOW)
    written = history.take_pending()[DIGEST]
    store = stored(("old", 30))
    store[DIGEST] = [*store[DIGEST], *written]

    install_all(history, CheckHistory.prepare(store), {DIGEST})

    assert run_ids(history) == ["old", "new"]


def test_a_check_deleted_while_its_history_loads_does_not_get_it_back() -> None:
    """Deleted (and added again) before the load is installed: its stored history went
    with it in the store, and goes here too; a check no longer held gets none."""
    history = CheckHistory()
    history.expect_load()
    history.forget(DIGEST)  # deleted; held again below
    history.record(NODE, result("after", ok=True, started_at=NOW - 5), now_wall=NOW)
    loaded = CheckHistory.prepare({**stored(("old", 30)), **stored(("gone", 30), digest=OTHER)})

    assert install_all(history, loaded, {DIGEST}) == 0

    assert run_ids(history) == ["after"]
    assert OTHER not in history
    history.forget(DIGEST)  # after the load: simply forgotten, nothing remembered
    assert DIGEST not in history


def test_an_installed_history_keeps_each_check_s_share() -> None:
    history = CheckHistory(HistoryLimits(max_results=100, max_total=6))
    history.expect_load()
    runs = [(f"r{i}", 60.0 - i) for i in range(5)]
    store = {**stored(*runs), **stored(*runs, digest=OTHER)}

    install_all(history, CheckHistory.prepare(store), {DIGEST, OTHER})

    assert run_ids(history) == ["r2", "r3", "r4"], "the newest 3: 6 shared by 2 checks"
    assert len(history) == 6


def test_history_off_installs_nothing() -> None:
    history = CheckHistory(OFF)
    history.expect_load()
    assert install_all(history, CheckHistory.prepare(stored(("old", 30))), {DIGEST}) == 0
    assert history.snapshot() == {}
