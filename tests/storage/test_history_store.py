"""Each check's history in the stores: kept with the state (memory), persisted so that
it survives a restart (SQLite, schema 2 and its migration from 1), dropped with the
check, trimmed to its bounds; and how a state hands it to a store and takes it back."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from dispatcher.core.history import CheckHistory, HistoryEntry, HistoryLimits
from dispatcher.core.model import CheckConfig, CheckResult, Digest, NodeName
from dispatcher.core.snapshot import Snapshot, StateDelta
from dispatcher.core.state import ClusterState
from dispatcher.errors import Fenced, StoreError
from dispatcher.storage import sqlite as sqlite_store
from dispatcher.storage.base import StateStore
from dispatcher.storage.codec import config_out
from dispatcher.storage.memory import MemoryStateStore
from dispatcher.storage.redis import RedisStateStore
from dispatcher.storage.sqlite import DB_NAME, SqliteStateStore
from dispatcher.storage.writer import _rewrite as writer_rewrite
from tests.redis_server import RedisServer
from tests.storage.records import N1, S1, plain

NOW = 1_800_000_000.0
A, B = plain("a"), plain("b")


def entry(run: str, at: float, *, ok: bool = True, node: NodeName = N1) -> HistoryEntry:
    return HistoryEntry(
        run_id=run,
        node=node,
        ok=ok,
        errors=() if ok else (f"{run}: connection refused", "é ünïcode"),
        started_at=at,
        duration_s=0.25,
        ordered_at=at,
    )


def with_checks(*configs: CheckConfig, **history: list[HistoryEntry]) -> StateDelta:
    return StateDelta(
        configs={c.digest: c for c in configs},
        sources={S1: frozenset(c.digest for c in configs)},
        history={Digest(d): e for d, e in history.items()},
    )


Reopen = Callable[[], Awaitable[StateStore]]


@pytest.fixture(params=["memory", "redis", "sqlite"])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[StateStore, Reopen]]:
    """A store and a way to get it again (SQLite: closed and opened, as a restart;
    Redis: another client, as the next leader)."""
    if request.param == "memory":
        memory = MemoryStateStore()

        async def same() -> StateStore:
            return memory

        yield memory, same
        return
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        clients = [RedisStateStore.from_url(server.url, timeout_s=1.0)]

        async def another() -> StateStore:
            clients.append(RedisStateStore.from_url(server.url, timeout_s=1.0))
            return clients[-1]

        try:
            yield clients[0], another
        finally:
            for client in clients:
                await client.close()
        return
    opened = [SqliteStateStore.open(tmp_path / "data")]

    async def reopen() -> StateStore:
        await opened[-1].close()
        opened.append(SqliteStateStore.open(tmp_path / "data"))
        return opened[-1]

    try:
        yield opened[0], reopen
    finally:
        await opened[-1].close()


async def test_history_written_in_batches_is_loaded_after_a_restart_oldest_first(
    stores: tuple[StateStore, Reopen],
) -> None:
    store, reopen = stores
    await store.claim(epoch=1)
    first = [entry("a1", NOW - 30, ok=False), entry("a2", NOW - 20)]
    await store.write(with_checks(A, B, **{A.digest: first}), epoch=1)
    # A later group commit, with a late result of an older run among them.
    await store.write(
        StateDelta(history={A.digest: [entry("a3", NOW - 10), entry("a0", NOW - 40)]}), epoch=1
    )

    snapshot = await (await reopen()).claim(epoch=2)

    runs = [e.run_id for e in snapshot.history[A.digest]]
    # Loaded oldest first by when they ran (the memory store keeps write order; the
    # state sorts on load either way).
    assert sorted(runs) == ["a0", "a1", "a2", "a3"]
    assert B.digest not in snapshot.history
    kept = {e.run_id: e for e in snapshot.history[A.digest]}
    assert kept["a1"] == first[0]


async def test_history_is_dropped_with_its_check(stores: tuple[StateStore, Reopen]) -> None:
    store, reopen = stores
    await store.claim(epoch=1)
    await store.write(
        with_checks(A, B, **{A.digest: [entry("a", NOW)], B.digest: [entry("b", NOW)]}), epoch=1
    )
    await store.write(
        StateDelta(configs={A.digest: None}, sources={S1: frozenset({B.digest})}), epoch=1
    )

    snapshot = await (await reopen()).claim(epoch=2)

    assert set(snapshot.history) == {B.digest}


async def test_a_claim_without_the_history_leaves_it_to_load_history_with_later_writes(
    stores: tuple[StateStore, Reopen],
) -> None:
    """How a new leader takes over: the state first, the history once it serves. What
    the store holds then is what it held at the claim plus what the term wrote since,
    oldest first; a check deleted meanwhile has none left in the store, even when it is
    added again (Redis: its stream is deleted though the claim did not read it)."""
    store, reopen = stores
    await store.claim(epoch=1)
    await store.write(
        with_checks(A, B, **{A.digest: [entry("a1", NOW - 20)], B.digest: [entry("b1", NOW - 20)]}),
        epoch=1,
    )

    leader = await reopen()
    snapshot = await leader.claim(epoch=2, history=False)
    assert set(snapshot.configs) == {A.digest, B.digest}
    assert snapshot.history == {}
    # The new term writes before it reads the history: a result, and B deleted.
    await leader.write(StateDelta(history={A.digest: [entry("a2", NOW - 10)]}), epoch=2)
    await leader.write(
        StateDelta(configs={B.digest: None}, sources={S1: frozenset({A.digest})}), epoch=2
    )
    await leader.write(with_checks(A, B), epoch=2)  # B again: a check with no history

    history = await leader.load_history()

    assert {d: [e.run_id for e in entries] for d, entries in history.items()} == {
        A.digest: ["a1", "a2"]
    }
    again = await (await reopen()).claim(epoch=3)
    assert set(again.configs) == {A.digest, B.digest}
    assert set(again.history) == {A.digest}, "B's old history went with it"


def run(digest: Digest, run_id: str, at: float, *, ok: bool = True) -> CheckResult:
    return CheckResult(digest, run_id, ok, () if ok else ("boom",), at, 0.5)


async def test_a_restored_state_answers_from_the_stored_history(
    stores: tuple[StateStore, Reopen],
) -> None:
    store, reopen = stores
    await store.claim(epoch=1)
    state = ClusterState(track_changes=True)
    state.node_status(N1, now=1.0, last_change=-1)
    state.replace_source(S1, [A], now=1.0)
    assert state.placement[A.digest] == N1
    state.record_results(N1, [run(A.digest, "r1", NOW - 60, ok=False)], now_wall=NOW)
    state.record_results(N1, [run(A.digest, "r2", NOW - 30)], now_wall=NOW)
    await store.write(state.take_delta(), epoch=1)

    restored = ClusterState.restore(await (await reopen()).claim(epoch=2), now=5.0)

    got = restored.history.results(A.digest, now_wall=NOW)
    assert [e.run_id for e in got] == ["r2", "r1"]
    assert restored.history.uptime(A.digest, 3600, now_wall=NOW) == 0.5
    assert restored.take_delta().history == {}, "what the store holds is not written again"
    assert restored.snapshot().history[A.digest] == got[::-1]


def test_a_tracking_state_hands_each_recorded_result_to_the_store_once() -> None:
    state = ClusterState(track_changes=True)
    state.node_status(N1, now=1.0, last_change=-1)
    state.replace_source(S1, [A, B], now=1.0)
    state.take_delta()
    state.record_results(N1, [run(A.digest, "r1", NOW), run(B.digest, "b1", NOW)], now_wall=NOW)
    state.record_results(N1, [run(A.digest, "r2", NOW)], now_wall=NOW)

    delta = state.take_delta()

    assert {d: [e.run_id for e in es] for d, es in delta.history.items()} == {
        A.digest: ["r1", "r2"],
        B.digest: ["b1"],
    }
    assert delta, "a delta of history alone is written"
    assert state.take_delta().history == {}


def test_a_check_removed_before_its_results_are_written_takes_them_along() -> None:
    state = ClusterState(track_changes=True)
    state.node_status(N1, now=1.0, last_change=-1)
    state.replace_source(S1, [A, B], now=1.0)
    state.record_results(N1, [run(A.digest, "r1", NOW), run(B.digest, "b1", NOW)], now_wall=NOW)
    state.replace_source(S1, [B], now=2.0)

    delta = state.take_delta()

    assert set(delta.history) == {B.digest}
    assert delta.configs[A.digest] is None


def test_a_state_no_store_follows_keeps_no_pending_results() -> None:
    state = ClusterState()
    state.node_status(N1, now=1.0, last_change=-1)
    state.replace_source(S1, [A], now=1.0)
    state.record_results(N1, [run(A.digest, "r1", NOW)], now_wall=NOW)
    assert state.take_delta().history == {}
    assert [e.run_id for e in state.history.results(A.digest, now_wall=NOW)] == ["r1"]


def test_merging_deltas_drops_results_of_a_check_deleted_after_them() -> None:
    pending = StateDelta(history={A.digest: [entry("old", NOW)], B.digest: [entry("b", NOW)]})
    pending.merge(StateDelta(configs={A.digest: None}))
    pending.merge(StateDelta(configs={A.digest: A}, history={A.digest: [entry("new", NOW + 1)]}))
    assert {d: [e.run_id for e in es] for d, es in pending.history.items()} == {
        A.digest: ["new"],
        B.digest: ["b"],
    }


def test_loading_keeps_the_newest_up_to_the_count_bound() -> None:
    history = CheckHistory(HistoryLimits(max_results=2))
    history.load(A.digest, [entry(f"r{i}", NOW - 10 + i) for i in range(5)])
    assert [e.run_id for e in history.results(A.digest, now_wall=NOW)] == ["r4", "r3"]
    assert history.take_pending() == {}


# ----------------------------------------------------------------- sqlite only


def rows(path: Path, digest: Digest) -> int:
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (count,) = reader.execute(
            "SELECT count(*) FROM history WHERE digest = ?", (digest,)
        ).fetchone()
    finally:
        reader.close()
    assert isinstance(count, int)
    return count


async def test_sqlite_trims_each_check_to_its_count_and_age_bounds(tmp_path: Path) -> None:
    store = SqliteStateStore.open(tmp_path / "data", history_max_results=10, history_max_age_s=3600)
    try:
        await store.claim(epoch=1)
        await store.write(with_checks(A, B, **{B.digest: [entry("b-old", NOW - 7200)]}), epoch=1)
        for batch in range(5):  # 5 group commits of 10 results
            results = [entry(f"a{batch}-{i}", NOW - 100 + 10 * batch + i) for i in range(10)]
            await store.write(StateDelta(history={A.digest: results}), epoch=1)
            # At most the bound and its 10 % margin between two trims.
            assert rows(store.path, A.digest) <= 11
        await store.write(StateDelta(history={B.digest: [entry("b-new", NOW)]}), epoch=1)
        assert rows(store.path, B.digest) == 1, "the 2 h old result went (bound 1 h)"
        snapshot = await store.claim(epoch=2)
    finally:
        await store.close()
    runs = [e.run_id for e in snapshot.history[A.digest]]
    assert runs[-10:] == [f"a4-{i}" for i in range(10)], "the newest are kept"


async def test_sqlite_reads_the_history_in_digest_ranges_that_miss_no_check(
    tmp_path: Path,
) -> None:
    """``load_history`` reads by digest range (a write waits behind one range, not the
    whole history): digests at every edge, and text that is not hex, are all read; and
    the counts it reads let the next writes trim to the bound."""
    digests = ["", "0", "00" * 16, "00ff", "01", "7f" * 16, "fe" * 16, "ff", "ff" * 16]
    digests += ["FF", "zz-not-hex", "é"]
    configs = [dataclasses.replace(plain(f"c{i}"), digest=Digest(d)) for i, d in enumerate(digests)]
    data_dir = tmp_path / "data"
    store = SqliteStateStore.open(data_dir, history_max_results=3)
    try:
        await store.claim(epoch=1)
        await store.write(
            with_checks(
                *configs, **{c.digest: [entry(f"{i}-0", NOW - 9)] for i, c in enumerate(configs)}
            ),
            epoch=1,
        )
    finally:
        await store.close()

    store = SqliteStateStore.open(data_dir, history_max_results=3)
    try:
        await store.claim(epoch=2, history=False)
        history = await store.load_history()
        assert {d: [e.run_id for e in es] for d, es in history.items()} == {
            c.digest: [f"{i}-0"] for i, c in enumerate(configs)
        }
        first = configs[-1].digest
        for k in range(1, 6):  # 5 more, one at a time: the bound (3) and margin (1) hold
            await store.write(StateDelta(history={first: [entry(f"more-{k}", NOW + k)]}), epoch=2)
            assert rows(store.path, first) <= 4, "the row read was not counted"
    finally:
        await store.close()


async def test_sqlite_deletes_by_age_only_when_a_row_may_be_too_old(tmp_path: Path) -> None:
    """The age DELETE runs for a check only once its oldest row (known from the writes,
    and read at open) may be past the bound; such rows still go, after a reopen too."""
    data_dir = tmp_path / "data"
    deletes: list[str] = []

    def traced(statement: str) -> None:
        if statement.startswith("DELETE FROM history"):
            deletes.append(statement)

    store = SqliteStateStore.open(data_dir, history_max_results=100, history_max_age_s=3600)
    try:
        await store.claim(epoch=1)
        await store.write(with_checks(A, **{A.digest: [entry("a0", NOW - 3000)]}), epoch=1)
        store._connection.set_trace_callback(traced)
        await store.write(StateDelta(history={A.digest: [entry("a1", NOW - 100)]}), epoch=1)
        assert deletes == [], "no row can be past the bound yet"
    finally:
        await store.close()

    store = SqliteStateStore.open(data_dir, history_max_results=100, history_max_age_s=3600)
    try:
        await store.claim(epoch=2)
        store._connection.set_trace_callback(traced)
        # An hour after a0: it goes.
        await store.write(StateDelta(history={A.digest: [entry("a2", NOW + 700)]}), epoch=2)
        assert len(deletes) == 1
        assert rows(store.path, A.digest) == 2
        # The oldest is a1 now: an hour after it is not reached, nothing to delete.
        await store.write(StateDelta(history={A.digest: [entry("a3", NOW + 800)]}), epoch=2)
        assert len(deletes) == 1
        snapshot = await store.claim(epoch=3)
    finally:
        await store.close()
    assert [e.run_id for e in snapshot.history[A.digest]] == ["a1", "a2", "a3"]


async def test_sqlite_writes_one_transaction_per_group_commit(tmp_path: Path) -> None:
    store = SqliteStateStore.open(tmp_path / "data")
    try:
        await store.claim(epoch=1)
        await store.write(with_checks(A), epoch=1)
        before = store._connection.total_changes
        many = [entry(f"r{i}", NOW - 1000 + i) for i in range(500)]
        await store.write(StateDelta(history={A.digest: many}), epoch=1)
        assert store._connection.total_changes - before == 500
    finally:
        await store.close()
    snapshot = await _claim_again(tmp_path / "data")
    assert len(snapshot.history[A.digest]) == 500


async def _claim_again(data_dir: Path) -> Snapshot:
    store = SqliteStateStore.open(data_dir)
    try:
        return await store.claim(epoch=9)
    finally:
        await store.close()


async def test_a_schema_1_file_is_migrated_to_2_and_keeps_its_state(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # A file as schema 1 wrote it: its tables, its epoch and one check.
    maker = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    try:
        sqlite_store.MIGRATIONS[0](maker)
        maker.execute("UPDATE meta SET value = 3 WHERE key = 'epoch'")
        maker.execute("INSERT INTO configs VALUES (?, ?)", (A.digest, config_out(A)))
        maker.execute("INSERT INTO sources VALUES (?)", (S1,))
        maker.execute("INSERT INTO source_checks VALUES (?, ?)", (S1, A.digest))
        maker.execute("PRAGMA user_version = 1")
    finally:
        maker.close()
    reader = sqlite3.connect(data_dir / DB_NAME)
    try:
        assert reader.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {n for (n,) in reader.execute("SELECT name FROM sqlite_master")}
        assert "history" not in tables
    finally:
        reader.close()

    store = SqliteStateStore.open(data_dir)
    try:
        with pytest.raises(Fenced):
            await store.claim(epoch=2)  # the epoch survived the migration
        migrated = await store.claim(epoch=4)
        await store.write(StateDelta(history={A.digest: [entry("r", NOW)]}), epoch=4)
    finally:
        await store.close()

    assert set(migrated.configs) == {A.digest}
    assert migrated.history == {}
    assert sqlite_store.backup_path(data_dir / DB_NAME, 1).exists()
    again = await _claim_again(data_dir)
    assert [e.run_id for e in again.history[A.digest]] == ["r"]


async def test_an_unreadable_history_row_fails_the_history_s_read_naming_it_not_the_start(
    tmp_path: Path,
) -> None:
    """The history is not read at open (a new leader reads it once it serves): a row
    that cannot be read fails that read, and a claim that asks for the history, with
    the row named; the checks themselves load."""
    data_dir = tmp_path / "data"
    store = SqliteStateStore.open(data_dir)
    try:
        await store.claim(epoch=1)
        await store.write(with_checks(A, **{A.digest: [entry("r", NOW)]}), epoch=1)
    finally:
        await store.close()
    writer = sqlite3.connect(data_dir / DB_NAME)
    try:
        writer.execute("UPDATE history SET body = '[1]'")
        writer.commit()
    finally:
        writer.close()
    store = SqliteStateStore.open(data_dir)
    try:
        snapshot = await store.claim(epoch=2, history=False)
        assert set(snapshot.configs) == {A.digest}
        assert snapshot.history == {}
        with pytest.raises(StoreError, match="record 1 of table history"):
            await store.load_history()
        with pytest.raises(StoreError, match="record 1 of table history"):
            await store.claim(epoch=3)
    finally:
        await store.close()


# ------------------------------------------------------------------ redis only


async def test_redis_writes_a_group_commit_of_results_in_one_call_and_caps_the_stream(
    redis_server: RedisServer,
) -> None:
    store = RedisStateStore.from_url(redis_server.url, timeout_s=1.0, history_max_results=100)
    try:
        await store.claim(epoch=1)
        await store.write(with_checks(A, B), epoch=1)
        before = store.round_trips
        batch = {
            A.digest: [entry(f"a{i}", NOW - 1000 + i) for i in range(300)],
            B.digest: [entry("b", NOW)],
        }
        await store.write(StateDelta(history=batch), epoch=1)
        # One fenced script call for all 301 results (no record changed: no hash call).
        assert store.round_trips - before == 1
        raw = store._client
        length = await raw.xlen(store.history_prefix + A.digest)
        # MAXLEN ~ trims whole macro nodes: about the bound, never all 300.
        assert 100 <= length < 300
        with pytest.raises(Fenced):
            await store.write(StateDelta(history={B.digest: [entry("late", NOW)]}), epoch=0)
        assert await raw.xlen(store.history_prefix + B.digest) == 1
        await store.write(StateDelta(configs={A.digest: None}), epoch=1)
        assert await raw.exists(store.history_prefix + A.digest) == 0
    finally:
        await store.close()


def test_a_lost_store_s_rewrite_appends_only_the_results_it_lacks() -> None:
    e1, e2, e3 = entry("1", NOW - 3), entry("2", NOW - 2), entry("3", NOW - 1)
    leader = Snapshot(
        configs={A.digest: A, B.digest: B}, history={A.digest: [e1, e2], B.digest: [e3]}
    )
    partly_kept = Snapshot(configs={A.digest: A}, history={A.digest: [e1]})

    delta = writer_rewrite(leader, partly_kept)

    assert delta.history == {A.digest: [e2], B.digest: [e3]}
    assert writer_rewrite(leader, leader).history == {}


# ------------------------------------------------------- the overall bound (max_total)


async def test_a_store_keeps_no_more_per_check_than_the_leader_s_share(
    stores: tuple[StateStore, Reopen],
) -> None:
    """``--history-max-total`` shares one bound among the checks; the stores keep each
    check's history within the share the delta carries, not their own larger bound."""
    store, reopen = stores
    await store.claim(epoch=1)
    await store.write(with_checks(A, B), epoch=1)
    for i in range(6):
        await store.write(
            StateDelta(
                history={
                    A.digest: [entry(f"a{i}", NOW - 60 + i)],
                    B.digest: [entry(f"b{i}", NOW - 60 + i)],
                },
                history_bound=3,
            ),
            epoch=1,
        )

    snapshot = await (await reopen()).claim(epoch=2)

    # SQLite trims once a check is past its bound by a margin (a tenth, at least one);
    # Redis caps each stream exactly; every store keeps the newest.
    for digest, prefix in ((A.digest, "a"), (B.digest, "b")):
        runs = sorted(e.run_id for e in snapshot.history[digest])
        assert 3 <= len(runs) <= 4, runs
        assert runs[-3:] == [f"{prefix}3", f"{prefix}4", f"{prefix}5"]


def test_a_delta_s_history_bound_is_the_smaller_of_the_two() -> None:
    assert StateDelta().history_keep(2000) == 2000
    assert StateDelta(history_bound=50).history_keep(2000) == 50
    assert StateDelta(history_bound=5000).history_keep(2000) == 2000
    later = StateDelta(history_bound=40)
    merged = StateDelta(history_bound=50)
    merged.merge(later)
    assert merged.history_keep(2000) == 40


def test_a_tracking_state_hands_the_store_each_check_s_share() -> None:
    limits = HistoryLimits(max_results=100, max_total=10)
    state = ClusterState(track_changes=True, history_limits=limits)
    state.node_status(N1, now=1.0, last_change=-1)
    state.replace_source(S1, [A, B], now=1.0)
    state.take_delta()
    state.record_results(N1, [run(A.digest, "a1", NOW), run(B.digest, "b1", NOW)], now_wall=NOW)

    assert state.take_delta().history_bound == 5
    # A delta with no results says nothing about the bound.
    state.cordon(N1)
    assert state.take_delta().history_bound is None
