"""The durable embedded store: the leader's persisted state in one SQLite file under the
data dir, for a standalone dispatcher (the default there), fenced by epoch like Redis.

Layout of ``<data dir>``: ``clusterchecks.db`` (with SQLite's ``-wal`` and ``-shm``
beside it while open) and ``clusterchecks.lock``, an ``flock`` held from ``open`` to
``close`` with the holder's pid in it, so a second dispatcher on the same directory is
refused instead of writing the same file.

A new database is built as ``clusterchecks.db.new`` and renamed into place, so an
empty or partial ``clusterchecks.db`` is never mistaken for a new store: a file that is
not a database, is corrupt (``PRAGMA quick_check`` at open), of a newer schema, lacks
the tables of its schema, holds a row that does not decode, or cannot be opened stops
the start with a message naming it (and the row). So does a ``-wal`` or ``-shm`` left
without its database, which SQLite would replay onto a new one. An older schema is
migrated in one transaction, after a copy of the file is kept as
``clusterchecks.db.v<N>.bak``.

Tables (schema version in ``PRAGMA user_version``): ``meta`` (the claimant's epoch, the
fencing token), ``configs`` (digest -> config JSON, the codec Redis uses), ``sources``
and ``source_checks`` (a source and the digests it holds, one row each, so that adding
one check to a big source writes one row), ``placement`` (digest -> node) and ``nodes``
(node -> labels, capacity, cordon JSON); since schema 2, ``history`` (one row per
accepted result: digest, when it ran, the entry's JSON), trimmed per check to the
history bounds as it is written, and dropped with the check's config.

- open: reads the epoch and the whole state but the history, every row decoded, so
  that a bad row stops the start rather than fail each claim of a dispatcher already
  serving.
- claim: one transaction checks the token, sets it and loads the state; the first
  claim returns what open read instead (one load per start, not two). A new leader
  claims without the history and reads it after it serves (``load_history``): at
  100,000 checks the history is five times as many rows as the checks, and reading it
  first held the start for seconds. A history row that cannot be read fails that
  read, naming the row, not the start.
- write: one transaction per call checks the token and applies the whole delta, so a
  StoreWriter group commit is one commit (one WAL sync with ``synchronous=FULL``), and
  once ``write`` returns the change survives a ``kill -9`` or a power cut.

Every sqlite3 call runs on the store's one thread, so the event loop never waits on the
disk and the connection is never used by two threads at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import functools
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

from dispatcher.core.history import HistoryEntry
from dispatcher.core.model import CheckConfig, Digest, NodeName, SourceName
from dispatcher.core.snapshot import NodeRecord, Snapshot, StateDelta
from dispatcher.errors import Fenced, StoreError, StoreLost
from dispatcher.storage.codec import (
    DECODE_ERRORS,
    Unreadable,
    config_in,
    config_out,
    describe,
    history_in,
    history_out,
    node_in,
    node_out,
)

DB_NAME = "clusterchecks.db"
LOCK_NAME = "clusterchecks.lock"

Migration = Callable[[sqlite3.Connection], None]
"""One step from schema version N to N + 1, run inside the migration's transaction."""


def _statements(*sql: str) -> Migration:
    def run(connection: sqlite3.Connection) -> None:
        for statement in sql:
            connection.execute(statement)

    return run


CURRENT_SCHEMA = 2
"""The schema version this code reads and writes."""

MIGRATIONS: dict[int, Migration] = {
    # A new file is version 0: the first step creates the schema. Config and node
    # bodies are larger than a few hundred bytes, so their tables keep a rowid; the
    # small key-only tables do without.
    0: _statements(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
        "INSERT INTO meta (key, value) VALUES ('epoch', 0)",
        "CREATE TABLE configs (digest TEXT PRIMARY KEY, body BLOB NOT NULL)",
        "CREATE TABLE sources (name TEXT PRIMARY KEY) WITHOUT ROWID",
        "CREATE TABLE source_checks (source TEXT NOT NULL, digest TEXT NOT NULL,"
        " PRIMARY KEY (source, digest)) WITHOUT ROWID",
        "CREATE TABLE placement (digest TEXT PRIMARY KEY, node TEXT NOT NULL) WITHOUT ROWID",
        "CREATE TABLE nodes (name TEXT PRIMARY KEY, body BLOB NOT NULL)",
    ),
    # 2: each check's history, one row per result; the index serves a check's trim by
    # count and age and the ordered load.
    1: _statements(
        "CREATE TABLE history (id INTEGER PRIMARY KEY, digest TEXT NOT NULL,"
        " ordered_at REAL NOT NULL, body BLOB NOT NULL)",
        "CREATE INDEX history_by_check ON history (digest, ordered_at)",
    ),
}
"""Version N -> the step to N + 1. Steps run in order, all in one transaction with the
new ``user_version``, so a failed migration leaves the file as it was."""

JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024
"""The WAL is cut back to this after a checkpoint (a first big load must not leave a
WAL of its size behind)."""

T = TypeVar("T")
K = TypeVar("K", bound=str)
V = TypeVar("V")

Synchronous = Literal["FULL", "NORMAL"]


class SqliteStateStore:
    kind = "sqlite"
    may_lose_data = False  # only this process writes the file, under its lock

    def __init__(
        self,
        path: Path,
        *,
        connection: sqlite3.Connection,
        executor: ThreadPoolExecutor,
        lock: DataDirLock,
        history_max_results: int = 2000,
        history_max_age_s: float = 7 * 24 * 3600.0,
    ) -> None:
        """Use ``open``."""
        self.path = path
        self._history_max_results = history_max_results
        self._history_max_age_s = history_max_age_s
        self._history_counts: dict[Digest, int] = {}
        """Rows per check in ``history`` (read at open): a write trims a check only once
        it is past its bound by a margin, so the trim is one DELETE per many results."""
        self._history_oldest: dict[Digest, float] = {}
        """Per check, at most the ``ordered_at`` of its oldest row (read at open): a write
        runs the age DELETE only when a row may be past the age bound, not for every
        check it appends to (that DELETE was a quarter of the history's write cost)."""
        self._connection = connection
        self._executor = executor
        self._lock = lock
        self._closed = False
        self.last_epoch = 0
        """The epoch that held the file when it was opened (0: a new file): a
        standalone dispatcher starts above it, whatever its clock says."""
        self._held: dict[SourceName, frozenset[Digest]] | None = None
        """What each source holds, as committed (this process alone writes the file
        while it holds the lock): a write then touches only the rows that changed."""
        self._opened: Snapshot | None = None
        """The state as open read it, until the first claim returns it (or a write
        makes it stale): then dropped, since the claimer holds the state from there."""

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        synchronous: Synchronous = "FULL",
        history_max_results: int = 2000,
        history_max_age_s: float = 7 * 24 * 3600.0,
    ) -> SqliteStateStore:
        """Locks ``data_dir`` (created if missing) and opens its database, creating or
        migrating the schema, then reads the epoch and the whole state (kept for the
        first claim). Raises StoreError, naming the directory or file and what to do,
        when the directory is in use, a ``-wal`` or ``-shm`` is left without the file,
        or the file is not a database, is corrupt, unreadable (a row named), or of a
        newer schema. A refused open leaves nothing open or locked."""
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        lock = DataDirLock.take(data_dir)
        path = data_dir / DB_NAME
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clusterchecks-sqlite")
        connecting = executor.submit(_connect, path, synchronous)
        try:
            store = cls(
                path,
                connection=connecting.result(),
                executor=executor,
                lock=lock,
                history_max_results=history_max_results,
                history_max_age_s=history_max_age_s,
            )
            executor.submit(store._read_at_open).result()
        except BaseException:
            # Lets a connect still running (this thread interrupted) finish, so that the
            # connection it makes is closed too, before the lock goes.
            executor.shutdown(wait=True)
            if not connecting.cancelled() and connecting.exception() is None:
                with contextlib.suppress(sqlite3.Error):
                    connecting.result().close()
            lock.release()
            raise
        return store

    async def claim(self, *, epoch: int, history: bool = True) -> Snapshot:
        return await self._run(self._claim, epoch, history)

    async def load_history(self) -> dict[Digest, list[HistoryEntry]]:
        # In parts, by digest range, each its own job on the store thread: a write
        # waits behind one part (some 2,000 rows), not behind 500,000 rows (3 s here).
        history: dict[Digest, list[HistoryEntry]] = {}
        for low, high in _HISTORY_RANGES:
            history.update(await self._run(self._read_history, low, high))
        return history

    async def write(self, delta: StateDelta, *, epoch: int) -> None:
        await self._run(self._write, delta, epoch)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            # Closing the last connection checkpoints the WAL into the file.
            await loop.run_in_executor(self._executor, self._connection.close)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {self.path}: closing failed: {exc}") from exc
        finally:
            # Waits for a write still running (its caller cancelled) before the lock
            # goes: no other process may open the file while this one writes it.
            self._executor.shutdown(wait=True)
            self._lock.release()

    # ------------------------------------------------------------ on the store thread

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreError(f"sqlite: {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(call, *args))

    def _read_at_open(self) -> None:
        """Reads the epoch and the whole state but the history, in one read transaction
        (the history is read when asked for: ``load_history``, or a claim with it)."""
        connection = self._connection
        try:
            connection.execute("BEGIN")
            try:
                self.last_epoch = self._stored_epoch()
                snapshot = self._load(history=False)
            finally:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")  # read only: nothing to keep
        except sqlite3.Error as exc:
            # e.g. a file that says it is of this schema but lacks one of its tables.
            raise _unreadable_file(self.path, exc) from exc
        self._opened = snapshot
        self._held = dict(snapshot.sources)

    def _claim(self, epoch: int, history: bool) -> Snapshot:
        # Taken whatever happens to this claim: a retry reads the file, and the state
        # is never held twice (here and by the claimer) longer than this call.
        opened, self._opened = self._opened, None
        with self._transaction():
            stored = self._stored_epoch()
            if epoch < stored:
                raise Fenced(f"sqlite: the store is claimed by epoch {stored}, newer than {epoch}")
            self._connection.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (epoch,))
            # What open read is what the file holds: only this store writes it while it
            # holds the data dir, and a write drops ``opened``.
            snapshot = opened if opened is not None else self._load(history=False)
            if history:
                snapshot = dataclasses.replace(snapshot, history=self._load_history())
        self._held = dict(snapshot.sources)
        return snapshot

    def _write(self, delta: StateDelta, epoch: int) -> None:
        self._opened = None  # the file is about to differ from it
        with self._transaction():
            stored = self._stored_epoch()
            if stored == 0:
                # As with the other stores: nobody claimed what this writer thinks it
                # holds, so the leader must claim again and write its whole state.
                raise StoreLost(f"sqlite: {self.path} holds no claim: claim it first")
            if epoch != stored:
                raise Fenced(f"sqlite: the store is claimed by epoch {stored}, not {epoch}")
            held = self._held if self._held is not None else self._load_sources()
            _put(
                self._connection,
                delta.configs,
                config_out,
                table="configs",
                key="digest",
                column="body",
            )
            _put(
                self._connection,
                delta.placement,
                str,
                table="placement",
                key="digest",
                column="node",
            )
            _put(self._connection, delta.nodes, node_out, table="nodes", key="name", column="body")
            _put_sources(self._connection, delta.sources, held)
            counts, oldest = self._put_history(delta)
        self._history_counts, self._history_oldest = counts, oldest
        # Committed: only now do the caches follow.
        held = dict(held)
        for source, digests in delta.sources.items():
            if digests is None:
                held.pop(source, None)
            else:
                held[source] = digests
        self._held = held

    def _put_history(self, delta: StateDelta) -> tuple[dict[Digest, int], dict[Digest, float]]:
        """Drops the history of deleted checks, appends the new results (one
        ``executemany`` for the whole group commit) and trims the checks written to;
        returns the row counts and oldest rows as they will be once committed."""
        connection = self._connection
        counts = dict(self._history_counts)
        oldest = dict(self._history_oldest)
        dropped = [(d,) for d, config in delta.configs.items() if config is None]
        if dropped:
            connection.executemany("DELETE FROM history WHERE digest = ?", dropped)
            for (digest,) in dropped:
                counts.pop(digest, None)
                oldest.pop(digest, None)
        if not delta.history:
            return counts, oldest
        connection.executemany(
            "INSERT INTO history (digest, ordered_at, body) VALUES (?, ?, ?)",
            [
                (digest, entry.ordered_at, history_out(entry))
                for digest, entries in delta.history.items()
                for entry in entries
            ],
        )
        bound = delta.history_keep(self._history_max_results)
        margin = max(1, bound // 10)
        for digest, entries in delta.history.items():
            count = counts.get(digest, 0) + len(entries)
            newest = max(entry.ordered_at for entry in entries)
            first = min(entry.ordered_at for entry in entries)
            low = min(oldest.get(digest, first), first)
            trimmed = count > bound + margin
            if trimmed:
                connection.execute(
                    "DELETE FROM history WHERE id IN (SELECT id FROM history WHERE digest = ?"
                    " ORDER BY ordered_at, id LIMIT ?)",
                    (digest, count - bound),
                )
                count = bound
            # Rows past the age bound, as of the newest result (the store has no clock).
            cutoff = newest - self._history_max_age_s
            if trimmed or low < cutoff:
                aged = connection.execute(
                    "DELETE FROM history WHERE digest = ? AND ordered_at < ?", (digest, cutoff)
                ).rowcount
                count = max(0, count - aged)
                # Read again (one index lookup) so that the next writes skip the DELETE.
                (found,) = connection.execute(
                    "SELECT MIN(ordered_at) FROM history WHERE digest = ?", (digest,)
                ).fetchone()
                low = found if found is not None else newest
            counts[digest] = count
            oldest[digest] = low
        return counts, oldest

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One IMMEDIATE transaction (the write lock from the start); rolled back on any
        error, with sqlite3's errors turned into StoreError."""
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {self.path}: {exc}") from exc

    def _stored_epoch(self) -> int:
        row = self._connection.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is None or not isinstance(row[0], int):
            raise self._unreadable(
                "meta", "epoch", Unreadable("the epoch row is missing or not a number")
            )
        return row[0]

    def _read_history(self, low: str, high: str | None) -> dict[Digest, list[HistoryEntry]]:
        """The history of the checks whose digest is in [low, high) (None: no upper
        bound), in one read transaction."""
        connection = self._connection
        try:
            connection.execute("BEGIN")
            try:
                return self._load_history(low, high)
            finally:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")  # read only: nothing to keep
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {self.path}: reading the history failed: {exc}") from exc

    def _load(self, *, history: bool) -> Snapshot:
        connection = self._connection
        configs: dict[Digest, CheckConfig] = self._decode(
            "configs", connection.execute("SELECT digest, body FROM configs"), config_in
        )
        placement: dict[Digest, NodeName] = self._decode(
            "placement",
            connection.execute("SELECT digest, node FROM placement"),
            lambda raw: NodeName(_text(raw)),
        )
        nodes: dict[NodeName, NodeRecord] = self._decode(
            "nodes", connection.execute("SELECT name, body FROM nodes"), node_in
        )
        return Snapshot(
            configs=configs,
            sources=self._load_sources(),
            placement=placement,
            nodes=nodes,
            history=self._load_history() if history else {},
        )

    def _load_history(
        self, low: str = "", high: str | None = None
    ) -> dict[Digest, list[HistoryEntry]]:
        """The history of the checks whose digest is in [low, high) (by default, every
        check's); the row counts and oldest rows that writes trim by follow it (until
        then a write knows only what it wrote since the open)."""
        history: dict[Digest, list[HistoryEntry]] = {}
        if high is None:
            rows = self._connection.execute(
                "SELECT id, digest, body FROM history WHERE digest >= ?"
                " ORDER BY digest, ordered_at, id",
                (low,),
            )
        else:
            rows = self._connection.execute(
                "SELECT id, digest, body FROM history WHERE digest >= ? AND digest < ?"
                " ORDER BY digest, ordered_at, id",
                (low, high),
            )
        for row_id, digest, body in rows:
            try:
                entry = history_in(body)
            except DECODE_ERRORS as exc:
                raise self._unreadable("history", row_id, exc) from exc
            history.setdefault(Digest(self._key("history", digest)), []).append(entry)
        # Only this process writes the file: a check counted since the open that has no
        # row here has none (its count went to 0 with its last row), so the counts of
        # the checks read are all that change.
        # (Updated in place: a write, on this same thread, copies them before it
        # changes them.)
        if not low and high is None:
            self._history_counts, self._history_oldest = {}, {}
        self._history_counts.update((digest, len(entries)) for digest, entries in history.items())
        self._history_oldest.update(
            (digest, min(entry.ordered_at for entry in entries))
            for digest, entries in history.items()
        )
        return history

    def _load_sources(self) -> dict[SourceName, frozenset[Digest]]:
        held: dict[SourceName, set[Digest]] = {}
        for (name,) in self._connection.execute("SELECT name FROM sources"):
            held[self._key("sources", name)] = set()
        rows = self._connection.execute("SELECT source, digest FROM source_checks")
        for source, digest in rows:
            name = self._key("source_checks", source)
            try:
                held.setdefault(name, set()).add(Digest(_text(digest)))
            except Unreadable as exc:
                raise self._unreadable("source_checks", f"{source}/{digest!r}", exc) from exc
        return {name: frozenset(digests) for name, digests in held.items()}

    def _decode(
        self, table: str, rows: Iterable[tuple[Any, Any]], decode: Callable[[Any], V]
    ) -> dict[Any, V]:
        """Every row of a table, decoded; an unreadable one is a StoreError naming it."""
        decoded: dict[Any, V] = {}
        for key, raw in rows:
            try:
                decoded[self._key(table, key)] = decode(raw)
            except DECODE_ERRORS as exc:
                raise self._unreadable(table, key, exc) from exc
        return decoded

    def _key(self, table: str, key: Any) -> Any:
        if not isinstance(key, str):
            raise self._unreadable(table, key, Unreadable("its key is not text"))
        return key

    def _unreadable(self, table: str, key: object, exc: Exception) -> StoreError:
        return StoreError(
            f"sqlite: the stored state is not readable: record {key!r} of table {table} in "
            f"{self.path} ({describe(exc)}); fix or delete that row (sqlite3 {self.path}), "
            "or restore a backup"
        )


_HISTORY_RANGES: list[tuple[str, str | None]] = [
    ("" if i == 0 else f"{i:02x}", f"{i + 1:02x}" if i < 255 else None) for i in range(256)
]
"""Digest ranges ``[low, high)`` covering every string, 256 of them: digests are hex,
so each holds about 1/256 of the checks (text that is not hex falls in one all the
same)."""


def _text(raw: object) -> str:
    if not isinstance(raw, str):
        raise Unreadable(f"expected text, got {type(raw).__name__}")
    return raw


def _put(
    connection: sqlite3.Connection,
    changes: Mapping[K, V | None],
    encode: Callable[[V], object],
    *,
    table: str,
    key: str,
    column: str,
) -> None:
    """Upserts and deletes the rows of ``table`` (key column ``key``, value ``column``)."""
    # In key order: rows land in index order, a third faster for a big first load.
    deletes = sorted((name,) for name, value in changes.items() if value is None)
    sets = [(name, encode(value)) for name, value in sorted(_present(changes).items())]
    if deletes:
        connection.executemany(f"DELETE FROM {table} WHERE {key} = ?", deletes)
    if sets:
        connection.executemany(
            f"INSERT INTO {table} ({key}, {column}) VALUES (?, ?)"
            f" ON CONFLICT ({key}) DO UPDATE SET {column} = excluded.{column}",
            sets,
        )


def _present(changes: Mapping[K, V | None]) -> dict[K, V]:
    return {name: value for name, value in changes.items() if value is not None}


def _put_sources(
    connection: sqlite3.Connection,
    changes: Mapping[SourceName, frozenset[Digest] | None],
    held: Mapping[SourceName, frozenset[Digest]],
) -> None:
    """Writes each changed source as the rows that differ from what it held."""
    dropped: list[tuple[str]] = []
    kept: list[tuple[str]] = []
    removed: list[tuple[str, str]] = []
    added: list[tuple[str, str]] = []
    for source, digests in changes.items():
        before = held.get(source, frozenset())
        if digests is None:
            dropped.append((source,))
            continue
        kept.append((source,))
        removed.extend((source, d) for d in sorted(before - digests))
        added.extend((source, d) for d in sorted(digests - before))
    if dropped:
        connection.executemany("DELETE FROM source_checks WHERE source = ?", dropped)
        connection.executemany("DELETE FROM sources WHERE name = ?", dropped)
    if kept:
        connection.executemany("INSERT OR IGNORE INTO sources (name) VALUES (?)", kept)
    if removed:
        connection.executemany("DELETE FROM source_checks WHERE source = ? AND digest = ?", removed)
    if added:
        connection.executemany(
            "INSERT OR IGNORE INTO source_checks (source, digest) VALUES (?, ?)", added
        )


# ------------------------------------------------------------------------ opening


class DataDirLock:
    """An exclusive ``flock`` on ``<data dir>/clusterchecks.lock``, with the holder's pid
    written in it for the message another process shows. The kernel drops it when the
    process dies, so a ``kill -9`` leaves no stale lock."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, data_dir: Path) -> DataDirLock:
        if data_dir.exists() and not data_dir.is_dir():
            raise StoreError(
                f"data dir {data_dir} is not a directory: give a directory as --data-dir"
            )
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create data dir {data_dir} ({exc.strerror or exc}): "
                "create it, or give another --data-dir"
            ) from exc
        path = data_dir / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(
                f"cannot open the lock file {path} ({exc.strerror or exc}): "
                "check that the dispatcher's user may write to the data dir"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreError(
                    f"data dir {data_dir} is in use by another dispatcher "
                    f"(pid {holder or 'unknown'}, lock {path}); stop it or give another --data-dir"
                ) from exc
            raise StoreError(f"cannot lock {path} ({exc.strerror or exc})") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot write the lock file {path} ({exc.strerror or exc})") from exc
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # drops the flock; the file stays, empty of meaning


def _read_pid(fd: int) -> str | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None


def _connect(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    """Opens and checks the database (on the store's thread)."""
    try:
        return _connect_checked(path, synchronous)
    except sqlite3.Error as exc:  # each step names its own; this is a last resort
        raise _unusable(path, exc) from exc
    except OSError as exc:
        raise StoreError(
            f"cannot open {path} ({exc.strerror or exc}): check that the dispatcher's user "
            "may read and write it and its directory"
        ) from exc


def _connect_checked(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    if not path.exists():
        _refuse_orphans(path)
        _create(path, synchronous)
    elif not path.is_file():
        raise StoreError(f"{path} is not a regular file: move it away, or give another --data-dir")
    elif path.stat().st_size == 0:
        # SQLite would take an empty file for a new database; but ours is created whole
        # (see _create), so an empty one was emptied by something else.
        raise StoreError(f"{path} is empty (0 bytes), not the database it was: {_RESTORE}")
    try:
        # isolation_level=None: no implicit transactions; ours are explicit.
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from exc
    try:
        _prepare(connection, path, synchronous)
    except BaseException:
        connection.close()
        raise
    return connection


def _refuse_orphans(path: Path) -> None:
    """A ``-wal`` or ``-shm`` without its database (deleted after a crash, the WAL with
    commits never folded in): SQLite would take them for the new database's and replay
    the old pages onto it, a mix of two files. Neither is ours to delete."""
    orphans = [
        sidecar
        for sidecar in (path.with_name(f"{path.name}{x}") for x in ("-wal", "-shm"))
        if os.path.lexists(sidecar)
    ]
    if orphans:
        names = ", ".join(str(orphan) for orphan in orphans)
        raise StoreError(
            f"{names} left without {path} (the database was deleted or moved, perhaps after "
            "a crash): put the database back beside them, or delete them too to start with "
            "an empty store, whose checks are then rebuilt from the agents"
        )


def _create(path: Path, synchronous: Synchronous) -> None:
    """Creates the database with its schema beside ``path`` and renames it into place,
    so that ``path`` is never a file cut short by a crash during the first start."""
    fresh = path.with_name(f"{path.name}.new")
    try:
        for leftover in (fresh, *(fresh.with_name(f"{fresh.name}{x}") for x in ("-wal", "-shm"))):
            leftover.unlink(missing_ok=True)  # a creation cut short: it held nothing
        connection = sqlite3.connect(fresh, isolation_level=None)
        try:
            _prepare(connection, fresh, synchronous)
        finally:
            connection.close()  # folds the WAL into the file and syncs it
        os.rename(fresh, path)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except sqlite3.Error as exc:
        raise _unusable(fresh, exc) from exc
    except OSError as exc:
        raise StoreError(
            f"cannot create {path} ({exc.strerror or exc}): check that the dispatcher's user "
            "may write to the data dir"
        ) from exc


def _prepare(connection: sqlite3.Connection, path: Path, synchronous: Synchronous) -> None:
    try:
        # Reading the header first: a file that is not a database fails here, before
        # the journal mode would be written into it.
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        problems = [row[0] for row in connection.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            # One row may hold several lines; the message stays one line.
            found = "; ".join(" ".join(str(problem).split()) for problem in problems)
            raise StoreError(f"{path} is corrupt (quick_check: {found}): {_RESTORE}")
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: SQLite refused WAL mode (the journal stays {mode})")
        connection.execute(f"PRAGMA synchronous={synchronous}")
        connection.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        current = CURRENT_SCHEMA
        if version > current:
            raise StoreError(
                f"{path} was written by a newer clusterchecks (schema version {version}; this "
                f"one reads up to version {current}): run the newer version, or restore a "
                "backup this version wrote"
            )
        if version == 0 and connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(
                f"{path} is not a clusterchecks database (it holds other tables and no schema "
                "version): move it away, or give another --data-dir"
            )
        if version < current:
            if version > 0:
                _keep_copy(connection, path, version)
            _migrate(connection, path, version, current)
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from exc


_RESTORE = (
    "restore it from a backup, or move it (with its -wal and -shm files) away to start "
    "with an empty store, whose checks are then rebuilt from the agents"
)


def _keep_copy(connection: sqlite3.Connection, path: Path, version: int) -> None:
    """Copies the file as it is to ``<name>.v<version>.bak`` before migrating it, so
    that going back to the older dispatcher has a file it can read."""
    target = sqlite3.connect(backup_path(path, version))
    try:
        connection.backup(target)
    finally:
        target.close()


def backup_path(path: Path, version: int) -> Path:
    return path.with_name(f"{path.name}.v{version}.bak")


def _migrate(connection: sqlite3.Connection, path: Path, version: int, current: int) -> None:
    step = version
    connection.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version, current):
            migration = MIGRATIONS.get(step)
            if migration is None:
                raise StoreError(
                    f"{path}: no migration from schema version {step} (to {current}); "
                    "this file cannot be read by this version"
                )
            migration(connection)
        # user_version is part of the transaction: a failed step leaves the old one.
        connection.execute(f"PRAGMA user_version = {int(current)}")
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise StoreError(
            f"{path}: migrating from schema version {version} to {current} failed at step "
            f"{step} ({exc}); the file is unchanged"
        ) from exc
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _unreadable_file(path: Path, exc: sqlite3.Error) -> StoreError:
    """A file SQLite opened and checked, whose tables cannot be read."""
    known = _known_failure(path, exc)  # corrupt, not a database, no access
    if known is not None:
        return known
    return StoreError(
        f"{path} cannot be read as a clusterchecks database of schema version "
        f"{CURRENT_SCHEMA}, as it says it is ({exc}): {_RESTORE}"
    )


def _unusable(path: Path, exc: sqlite3.Error) -> StoreError:
    """What an operator is told when SQLite cannot use the file."""
    return _known_failure(path, exc) or StoreError(f"{path}: {exc}")


def _known_failure(path: Path, exc: sqlite3.Error) -> StoreError | None:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == sqlite3.SQLITE_NOTADB:
        return StoreError(
            f"{path} is not a SQLite database ({exc}): move it away, or restore it from a "
            "backup; the dispatcher does not overwrite it"
        )
    if primary == sqlite3.SQLITE_CORRUPT:
        return StoreError(f"{path} is corrupt ({exc}): {_RESTORE}")
    if primary in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY):
        return StoreError(
            f"cannot open {path} for reading and writing ({exc}): check that the "
            "dispatcher's user may read and write it and its directory"
        )
    return None
