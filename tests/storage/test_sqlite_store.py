"""What only the SQLite store does: its data dir, lock, file checks, schema versions,
and durability across a ``kill -9`` (the contract it shares with the other stores is in
test_store_contract.py).

Every refusal at open is a StoreError whose one-line message names the directory or
file and says what to do; none starts a fresh, empty store over what was there, and none
leaves the data dir locked.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatcher.core.model import NodeName
from dispatcher.core.snapshot import NodeRecord, Snapshot, StateDelta
from dispatcher.errors import Fenced, StoreError
from dispatcher.storage import sqlite as sqlite_store
from dispatcher.storage.sqlite import DB_NAME, LOCK_NAME, SqliteStateStore
from tests.processes import ROOT
from tests.storage.records import S1, as_snapshot, big_delta, full_delta, plain, view


async def written(data_dir: Path, delta: StateDelta, *, epoch: int = 1) -> None:
    """Leaves ``delta`` in the store under ``data_dir``, closed."""
    store = SqliteStateStore.open(data_dir)
    try:
        await store.claim(epoch=epoch)
        await store.write(delta, epoch=epoch)
    finally:
        await store.close()


async def loaded(data_dir: Path, *, epoch: int = 100) -> Snapshot:
    store = SqliteStateStore.open(data_dir)
    try:
        return await store.claim(epoch=epoch)
    finally:
        await store.close()


def refusal(data_dir: Path) -> str:
    """The message ``open`` refuses ``data_dir`` with."""
    with pytest.raises(StoreError) as refused:
        SqliteStateStore.open(data_dir)
    message = str(refused.value)
    assert "\n" not in message, "one line"
    return message


def run_python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def sql(path: Path, *statements: str) -> None:
    """Changes the file behind the store's back (as an operator or a bug would)."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            connection.execute(statement)
    finally:
        connection.close()


# ------------------------------------------------------------- the data dir


async def test_the_state_survives_close_and_reopen_and_close_folds_the_wal_in(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    delta, _ = full_delta()
    await written(data_dir, delta)

    assert sorted(p.name for p in data_dir.iterdir()) == [DB_NAME, LOCK_NAME]
    assert view(await loaded(data_dir)) == view(as_snapshot(delta))
    assert view(await loaded(data_dir, epoch=101)) == view(as_snapshot(delta))


async def test_a_missing_data_dir_is_created_with_its_parents(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b" / "data"
    store = SqliteStateStore.open(data_dir)
    try:
        assert store.kind == "sqlite"
        assert store.path == data_dir / DB_NAME
        assert store.path.is_file()
        assert view(await store.claim(epoch=1)) == view(Snapshot())
    finally:
        await store.close()


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.write_text("not a directory\n")
    message = refusal(data_dir)
    assert f"data dir {data_dir} is not a directory" in message
    assert "--data-dir" in message
    assert data_dir.read_text() == "not a directory\n"


def test_a_data_dir_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    message = refusal(tmp_path / "file" / "data")
    assert f"cannot create data dir {tmp_path / 'file' / 'data'}" in message


async def test_a_database_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / DB_NAME).mkdir(parents=True)
    message = refusal(data_dir)
    assert f"{data_dir / DB_NAME} is not a regular file" in message
    await assert_not_locked(data_dir)


async def test_a_database_sqlite_cannot_open_for_writing_is_refused(tmp_path: Path) -> None:
    """(As root, file modes do not stop the tests' own process: a directory where the
    WAL must go fails the same way as a file the dispatcher's user may not write.)"""
    data_dir = tmp_path / "data"
    await written(data_dir, StateDelta())
    (data_dir / f"{DB_NAME}-wal").mkdir()
    message = refusal(data_dir)
    assert message.startswith(f"cannot open {data_dir / DB_NAME} for reading and writing"), message
    assert "may read and write it and its directory" in message
    await assert_not_locked(data_dir)


def test_a_lock_file_that_cannot_be_opened_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / LOCK_NAME).mkdir(parents=True)
    message = refusal(data_dir)
    assert message.startswith(f"cannot open the lock file {data_dir / LOCK_NAME}"), message


async def test_synchronous_normal_is_accepted_and_anything_else_is_not(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    delta, _ = full_delta()
    store = SqliteStateStore.open(data_dir, synchronous="NORMAL")
    try:
        await store.claim(epoch=1)
        await store.write(delta, epoch=1)
    finally:
        await store.close()
    assert view(await loaded(data_dir)) == view(as_snapshot(delta))
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        SqliteStateStore.open(data_dir, synchronous="OFF")  # type: ignore[arg-type]
    await assert_not_locked(data_dir)


# ------------------------------------------------------------------- the lock


async def test_a_second_open_is_refused_while_the_first_holds_the_dir_and_allowed_after(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = SqliteStateStore.open(data_dir)
    try:
        await first.claim(epoch=1)
        message = refusal(data_dir)
        assert message == (
            f"data dir {data_dir} is in use by another dispatcher (pid {os.getpid()}, lock "
            f"{data_dir / LOCK_NAME}); stop it or give another --data-dir"
        )
        # The refused open took nothing from the holder.
        await first.write(StateDelta(nodes={NodeName("n"): None}), epoch=1)
    finally:
        await first.close()
    second = SqliteStateStore.open(data_dir)
    await second.close()


_HOLD = """
import sys
from pathlib import Path
from dispatcher.storage.sqlite import SqliteStateStore
store = SqliteStateStore.open(Path(sys.argv[1]))
print("open", flush=True)
sys.stdin.readline()
"""

_TRY_OPEN = """
import sys
from pathlib import Path
from dispatcher.errors import StoreError
from dispatcher.storage.sqlite import SqliteStateStore
try:
    SqliteStateStore.open(Path(sys.argv[1]))
except StoreError as exc:
    print(exc)
    sys.exit(3)
print("opened")
"""


async def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = SqliteStateStore.open(data_dir)
    try:
        other = run_python(_TRY_OPEN, str(data_dir))
        assert other.returncode == 3, other.stderr
        assert f"in use by another dispatcher (pid {os.getpid()}," in other.stdout
    finally:
        await store.close()

    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLD,
        str(data_dir),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"open\n"
        assert f"(pid {holder.pid}," in refusal(data_dir)
    finally:
        holder.kill()  # SIGKILL: no close, no unlock of its own
        await holder.communicate()
    assert holder.returncode == -signal.SIGKILL
    # The kernel dropped the dead holder's lock; its pid left in the file means nothing.
    again = SqliteStateStore.open(data_dir)
    try:
        assert (data_dir / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    finally:
        await again.close()


async def assert_not_locked(data_dir: Path) -> None:
    """A refused open released the lock it took (another dispatcher may start)."""
    lock = sqlite_store.DataDirLock.take(data_dir)
    lock.release()


# ------------------------------------------------------------ files refused


async def test_a_file_that_is_not_a_database_is_refused_and_left_as_it_is(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    garbage = os.urandom(8192)
    (data_dir / DB_NAME).write_bytes(garbage)

    message = refusal(data_dir)

    assert message.startswith(f"{data_dir / DB_NAME} is not a SQLite database"), message
    assert "move it away, or restore it from a backup" in message
    assert (data_dir / DB_NAME).read_bytes() == garbage
    assert sorted(p.name for p in data_dir.iterdir()) == [DB_NAME, LOCK_NAME]
    await assert_not_locked(data_dir)


def _truncate_to_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _overwrite_a_page(path: Path) -> None:
    with path.open("r+b") as file:
        file.seek(path.stat().st_size // 2)
        file.write(b"\x5a" * 4096)


def _empty(path: Path) -> None:
    os.truncate(path, 0)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_truncate_to_half, "is corrupt"),
        (_overwrite_a_page, "is corrupt"),
        (_empty, "is empty"),
    ],
    ids=["truncated", "page_overwritten", "emptied"],
)
async def test_a_damaged_database_is_refused_naming_the_file(
    tmp_path: Path, damage: Callable[[Path], None], expected: str
) -> None:
    data_dir = tmp_path / "data"
    await written(data_dir, big_delta(2000))
    path = data_dir / DB_NAME
    damage(path)
    size = path.stat().st_size

    message = refusal(data_dir)

    assert message.startswith(f"{path} {expected}"), message
    assert "restore it from a backup" in message
    assert path.stat().st_size == size, "the damaged file is left for the operator"
    await assert_not_locked(data_dir)


async def test_a_database_of_another_program_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    sql(data_dir / DB_NAME, "CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    message = refusal(data_dir)
    assert message.startswith(f"{data_dir / DB_NAME} is not a clusterchecks database"), message


# --------------------------------------------------------- schema versions


async def test_a_file_written_by_a_newer_schema_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    delta, _ = full_delta()
    await written(data_dir, delta)
    newer = sqlite_store.CURRENT_SCHEMA + 1
    sql(data_dir / DB_NAME, f"PRAGMA user_version = {newer}")

    message = refusal(data_dir)

    assert message.startswith(
        f"{data_dir / DB_NAME} was written by a newer clusterchecks (schema version {newer}; "
        f"this one reads up to version {sqlite_store.CURRENT_SCHEMA})"
    ), message
    await assert_not_locked(data_dir)


def user_version(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    finally:
        connection.close()
    return version


async def test_an_older_file_is_migrated_step_by_step_and_keeps_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    delta, _ = full_delta()
    await written(data_dir, delta, epoch=9)
    base = sqlite_store.CURRENT_SCHEMA
    steps: list[int] = []

    def step(version: int) -> sqlite_store.Migration:
        def run(connection: sqlite3.Connection) -> None:
            steps.append(version)
            connection.execute(f"CREATE TABLE added_by_{version} (x INTEGER)")

        return run

    monkeypatch.setattr(sqlite_store, "CURRENT_SCHEMA", base + 2)
    monkeypatch.setattr(
        sqlite_store,
        "MIGRATIONS",
        {**sqlite_store.MIGRATIONS, base: step(base), base + 1: step(base + 1)},
    )

    store = SqliteStateStore.open(data_dir)
    try:
        with pytest.raises(Fenced):
            await store.claim(epoch=8)  # the epoch survived the migration too
        snapshot = await store.claim(epoch=10)
    finally:
        await store.close()

    assert steps == [base, base + 1], "each step once, in order"
    assert user_version(data_dir / DB_NAME) == base + 2
    # The file as it was is kept for going back to the older version.
    kept = sqlite_store.backup_path(data_dir / DB_NAME, base)
    assert user_version(kept) == base
    reader = sqlite3.connect(kept)
    try:
        assert reader.execute("SELECT count(*) FROM configs").fetchone()[0] == len(delta.configs)
    finally:
        reader.close()
    assert view(snapshot) == view(as_snapshot(delta))
    # Migrated once: a second open runs no step.
    await loaded(data_dir, epoch=11)
    assert steps == [base, base + 1]


async def test_a_failed_migration_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    delta, _ = full_delta()
    await written(data_dir, delta)
    base = sqlite_store.CURRENT_SCHEMA

    def broken(connection: sqlite3.Connection) -> None:
        connection.execute("CREATE TABLE half_done (x INTEGER)")
        connection.execute("SELECT * FROM no_such_table")

    monkeypatch.setattr(sqlite_store, "CURRENT_SCHEMA", base + 1)
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", {**sqlite_store.MIGRATIONS, base: broken})

    message = refusal(data_dir)

    assert message.startswith(
        f"{data_dir / DB_NAME}: migrating from schema version {base} to {base + 1} failed "
        f"at step {base} (no such table: no_such_table); the file is unchanged"
    ), message
    monkeypatch.undo()
    assert user_version(data_dir / DB_NAME) == base
    assert view(await loaded(data_dir)) == view(as_snapshot(delta))
    connection = sqlite3.connect(data_dir / DB_NAME)
    try:
        tables = {n for (n,) in connection.execute("SELECT name FROM sqlite_master")}
    finally:
        connection.close()
    assert "half_done" not in tables


async def test_a_missing_migration_step_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    await written(data_dir, StateDelta())
    monkeypatch.setattr(sqlite_store, "CURRENT_SCHEMA", sqlite_store.CURRENT_SCHEMA + 1)
    message = refusal(data_dir)
    assert f"no migration from schema version {sqlite_store.CURRENT_SCHEMA - 1}" in message


# --------------------------------------------------------- unreadable records

_GOOD_NODE = '{"labels": {}, "capacity": 1, "cordoned": false}'
# (table, the record as the message names it, statement): rows our writer never makes.
# Columns declared TEXT turn numbers into text, so a key that is not text is a blob.
UNREADABLE: list[tuple[str, str, str, str]] = [
    (
        "config_not_json",
        "configs",
        "'bad-record'",
        "INSERT INTO configs VALUES ('bad-record', '{x')",
    ),
    (
        "config_is_a_list",
        "configs",
        "'bad-record'",
        "INSERT INTO configs VALUES ('bad-record', '[1]')",
    ),
    (
        "config_is_a_number",
        "configs",
        "'bad-record'",
        "INSERT INTO configs VALUES ('bad-record', 5)",
    ),
    (
        "node_labels_is_a_list",
        "nodes",
        "'bad-record'",
        "INSERT INTO nodes VALUES"
        """ ('bad-record', '{"labels": ["a"], "capacity": 1, "cordoned": false}')""",
    ),
    ("node_key_is_a_blob", "nodes", "b'n7'", f"INSERT INTO nodes VALUES (x'6e37', '{_GOOD_NODE}')"),
    (
        "placement_node_is_a_blob",
        "placement",
        "'bad-record'",
        "INSERT INTO placement VALUES ('bad-record', x'ff')",
    ),
    (
        "source_digest_is_a_blob",
        "source_checks",
        "\"bad-record/b'12'\"",
        "INSERT INTO source_checks VALUES ('bad-record', x'3132')",
    ),
    ("epoch_is_text", "meta", "'epoch'", "UPDATE meta SET value = 'soon' WHERE key = 'epoch'"),
    ("epoch_is_missing", "meta", "'epoch'", "DELETE FROM meta"),
]


@pytest.mark.parametrize(
    ("table", "named", "statement"), [u[1:] for u in UNREADABLE], ids=[u[0] for u in UNREADABLE]
)
async def test_an_unreadable_record_is_refused_at_open_naming_it_and_the_file(
    tmp_path: Path, table: str, named: str, statement: str
) -> None:
    """Every row is read at open, before anything serves: a bad one stops the start (a
    claim that failed on it would only be retried, forever, by a dispatcher serving 503)."""
    data_dir = tmp_path / "data"
    delta, _ = full_delta()
    await written(data_dir, delta, epoch=3)
    sql(data_dir / DB_NAME, statement)

    with pytest.raises(StoreError) as failed:
        SqliteStateStore.open(data_dir)

    message = str(failed.value)
    assert not isinstance(failed.value, Fenced)
    assert message.startswith("sqlite: the stored state is not readable: record "), message
    assert f"record {named} of table {table} in {data_dir / DB_NAME} (" in message, message
    assert "fix or delete that row" in message
    await assert_not_locked(data_dir)


def _no_meta_table(path: Path) -> None:
    path.unlink()
    sql(path, f"PRAGMA user_version = {sqlite_store.CURRENT_SCHEMA}")


def _no_configs_table(path: Path) -> None:
    sql(path, "DROP TABLE configs")


def _no_body_column(path: Path) -> None:
    sql(path, "ALTER TABLE nodes DROP COLUMN body")


@pytest.mark.parametrize(
    ("damage", "missing"),
    [
        (_no_meta_table, "no such table: meta"),
        (_no_configs_table, "no such table: configs"),
        (_no_body_column, "no such column: body"),
    ],
    ids=["no_meta_table", "no_configs_table", "no_body_column"],
)
async def test_a_file_of_the_current_version_without_its_tables_is_refused_at_open(
    tmp_path: Path, damage: Callable[[Path], None], missing: str
) -> None:
    """A file that says it is of the current schema (``user_version``) but lacks what
    that schema has: a StoreError naming the file, not SQLite's own error."""
    data_dir = tmp_path / "data"
    delta, _ = full_delta()
    await written(data_dir, delta, epoch=3)
    path = data_dir / DB_NAME
    damage(path)
    size = path.stat().st_size

    message = refusal(data_dir)

    assert message.startswith(f"{path} cannot be read as a clusterchecks database"), message
    assert missing in message, message
    assert "restore it from a backup" in message
    assert path.stat().st_size == size, "the file is left for the operator"
    await assert_not_locked(data_dir)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE meta SET value = 'soon' WHERE key = 'epoch'",
        "INSERT INTO configs VALUES ('bad-record', '{x')",
        "DROP TABLE meta",
    ],
    ids=["bad_epoch", "bad_config", "no_meta_table"],
)
async def test_a_refused_open_closes_the_connection_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statement: str
) -> None:
    data_dir = tmp_path / "data"
    await written(data_dir, StateDelta(), epoch=3)
    sql(data_dir / DB_NAME, statement)
    made: list[sqlite3.Connection] = []
    connect = sqlite_store._connect

    def recording(*args: Any) -> sqlite3.Connection:
        made.append(connect(*args))
        return made[-1]

    monkeypatch.setattr(sqlite_store, "_connect", recording)

    refusal(data_dir)

    assert len(made) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        made[0].execute("SELECT 1")
    await assert_not_locked(data_dir)


async def test_the_first_claim_returns_what_open_read_and_later_claims_read_the_file(
    tmp_path: Path,
) -> None:
    """Open has read the whole state: the first claim sets the epoch and returns that,
    without reading the file a second time (a restart pays for one load, not two). Rows
    added behind the store's back (nothing does that while it holds the data dir) show
    which read a claim returns."""
    data_dir = tmp_path / "data"
    delta, _ = full_delta()
    await written(data_dir, delta, epoch=3)
    behind = NodeName("added-behind-its-back")
    store = SqliteStateStore.open(data_dir)
    try:
        sql(
            data_dir / DB_NAME,
            f"INSERT INTO nodes VALUES ('{behind}', '{_GOOD_NODE}')",
        )
        first = await store.claim(epoch=4)
        assert view(first) == view(as_snapshot(delta)), "the state open read"
        assert stored_epoch(data_dir / DB_NAME) == 4
        with pytest.raises(Fenced):
            await store.claim(epoch=2)  # the first claim's epoch check was made
        assert stored_epoch(data_dir / DB_NAME) == 4
        second = await store.claim(epoch=5)
        assert behind in second.nodes, "a later claim reads the file"
        assert stored_epoch(data_dir / DB_NAME) == 5
    finally:
        await store.close()


async def test_a_first_claim_refused_leaves_the_next_one_to_read_the_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    delta, _ = full_delta()
    await written(data_dir, delta, epoch=3)
    store = SqliteStateStore.open(data_dir)
    try:
        with pytest.raises(Fenced):
            await store.claim(epoch=2)
        assert view(await store.claim(epoch=4)) == view(as_snapshot(delta))
    finally:
        await store.close()


async def test_a_write_before_the_first_claim_is_in_what_that_claim_returns(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    await written(data_dir, StateDelta(), epoch=3)
    record = NodeRecord(labels={"a": "b"}, capacity=2, cordoned=False)
    store = SqliteStateStore.open(data_dir)
    try:
        await store.write(StateDelta(nodes={NodeName("n"): record}), epoch=3)
        claimed = await store.claim(epoch=4)
    finally:
        await store.close()
    assert dict(claimed.nodes) == {NodeName("n"): record}


def stored_epoch(path: Path) -> int:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        epoch: int = connection.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
    finally:
        connection.close()
    return epoch


async def test_a_claim_that_cannot_load_leaves_the_epoch_as_it_was(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await written(data_dir, StateDelta(), epoch=3)
    store = SqliteStateStore.open(data_dir)
    try:
        await store.claim(epoch=3)
        # A bad row after open (which would have refused it): the next claim reads it.
        sql(data_dir / DB_NAME, "INSERT INTO configs VALUES ('bad-record', '{x')")
        with pytest.raises(StoreError, match="record 'bad-record' of table configs"):
            await store.claim(epoch=4)
        # Still epoch 3's store: the failed claim was rolled back with its load.
        await store.write(StateDelta(nodes={NodeName("n"): None}), epoch=3)
        with pytest.raises(Fenced):
            await store.write(StateDelta(nodes={NodeName("n"): None}), epoch=4)
    finally:
        await store.close()


# ------------------------------------------------- a WAL left without its file


async def _wal_left_by_a_kill_9(data_dir: Path) -> None:
    died = run_python(_WRITE_THEN_DIE, str(data_dir))
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert (data_dir / f"{DB_NAME}-wal").stat().st_size > 0


@pytest.mark.parametrize("kept", [("-wal", "-shm"), ("-wal",), ("-shm",)], ids="+".join)
async def test_a_wal_or_shm_left_without_the_database_is_refused(
    tmp_path: Path, kept: tuple[str, ...]
) -> None:
    """The database deleted after a ``kill -9``, its ``-wal`` left: SQLite would replay
    that onto the new file created in its place, pages of another database."""
    data_dir = tmp_path / "data"
    await _wal_left_by_a_kill_9(data_dir)
    (data_dir / DB_NAME).unlink()
    for suffix in ("-wal", "-shm"):
        if suffix not in kept:
            (data_dir / f"{DB_NAME}{suffix}").unlink()
    left = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.name != LOCK_NAME}

    message = refusal(data_dir)

    names = ", ".join(str(data_dir / f"{DB_NAME}{suffix}") for suffix in kept)
    assert message.startswith(f"{names} left without {data_dir / DB_NAME}"), message
    assert "delete" in message, message
    after = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.name != LOCK_NAME}
    assert after == left, "nothing created, nothing changed"
    await assert_not_locked(data_dir)


# ------------------------------------------------------------------ writing


async def test_a_source_written_without_a_claim_in_this_process_is_diffed_against_the_file(
    tmp_path: Path,
) -> None:
    """The store remembers what each source holds from its claim; without one (a write
    by the epoch that holds the file, right after open) it reads it from the file."""
    data_dir = tmp_path / "data"
    a, b, c = plain("a"), plain("b"), plain("c")
    await written(
        data_dir,
        StateDelta(
            configs={x.digest: x for x in (a, b, c)}, sources={S1: frozenset({a.digest, b.digest})}
        ),
        epoch=5,
    )
    store = SqliteStateStore.open(data_dir)
    try:
        await store.write(StateDelta(sources={S1: frozenset({b.digest, c.digest})}), epoch=5)
        await store.write(StateDelta(sources={S1: frozenset({c.digest})}), epoch=5)
    finally:
        await store.close()
    assert dict((await loaded(data_dir)).sources) == {S1: frozenset({c.digest})}


# ----------------------------------------------------------------- closing


async def test_a_closed_store_refuses_calls_and_closing_twice_is_harmless(tmp_path: Path) -> None:
    store = SqliteStateStore.open(tmp_path / "data")
    await store.claim(epoch=1)
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="is closed"):
        await store.write(StateDelta(), epoch=1)
    with pytest.raises(StoreError, match="is closed"):
        await store.claim(epoch=1)


# -------------------------------------------------------------- kill -9

_WRITE_THEN_DIE = """
import asyncio, os, signal, sys
from pathlib import Path
from dispatcher.storage.sqlite import SqliteStateStore
from tests.storage.records import full_delta

async def main():
    store = SqliteStateStore.open(Path(sys.argv[1]))
    await store.claim(epoch=7)
    delta, _ = full_delta()
    await store.write(delta, epoch=7)
    print("written", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_a_write_that_returned_survives_a_kill_9_of_its_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    died = run_python(_WRITE_THEN_DIE, str(data_dir))
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert died.stdout == "written\n"
    # Not closed: the commit is in the WAL only, not yet folded into the file.
    assert (data_dir / f"{DB_NAME}-wal").stat().st_size > 0

    delta, _ = full_delta()
    assert view(await loaded(data_dir)) == view(as_snapshot(delta))


_WRITE_FOREVER = """
import asyncio, sys
from pathlib import Path
from dispatcher.core.model import NodeName
from dispatcher.core.snapshot import NodeRecord, StateDelta
from dispatcher.storage.sqlite import SqliteStateStore

async def main():
    store = SqliteStateStore.open(Path(sys.argv[1]))
    await store.claim(epoch=7)
    index = 0
    while True:
        record = NodeRecord(labels={"i": str(index)}, capacity=1, cordoned=False)
        await store.write(StateDelta(nodes={NodeName(f"n{index}"): record}), epoch=7)
        print(index, flush=True)
        index += 1

asyncio.run(main())
"""


async def test_every_write_that_returned_before_a_kill_9_from_outside_is_kept(
    tmp_path: Path,
) -> None:
    """Killed at whatever point it has reached: each write either happened whole or not
    at all, in order, and none that returned is missing."""
    data_dir = tmp_path / "data"
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WRITE_FOREVER,
        str(data_dir),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None
        returned = [int(await writer.stdout.readline()) for _ in range(30)]
    finally:
        writer.kill()
        rest, _ = await writer.communicate()
    returned += [int(line) for line in rest.split()]
    assert writer.returncode == -signal.SIGKILL
    assert returned == list(range(len(returned)))

    nodes = (await loaded(data_dir)).nodes
    assert set(nodes) == {NodeName(f"n{i}") for i in range(len(nodes))}, "a prefix, no gap"
    assert len(nodes) >= len(returned), "every write that returned is kept"
    assert nodes[NodeName("n0")] == NodeRecord(labels={"i": "0"}, capacity=1, cordoned=False)


async def test_open_says_the_epoch_that_last_held_the_file(tmp_path: Path) -> None:
    new = SqliteStateStore.open(tmp_path)
    assert new.last_epoch == 0
    await new.claim(epoch=1_763_700_000_123)
    await new.close()

    again = SqliteStateStore.open(tmp_path)
    try:
        assert again.last_epoch == 1_763_700_000_123
    finally:
        await again.close()
