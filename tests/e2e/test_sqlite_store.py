"""End to end, real processes: a standalone dispatcher on the sqlite store (the default),
three node agents and a local HTTP target that records every hit.

What the durable default promises: a restart (SIGTERM) or a ``kill -9`` right after a
``200`` keeps every check and its placement, serves them at once (no warm-up), and the
agents never stop running them (the target's hits show no gap longer than a check's
interval plus a margin); a second dispatcher on the same data dir is refused; a corrupt
data file, one row that cannot be read, or a ``-wal`` left without its database stops
the dispatcher with a message naming it, and is left as it was.

Bounds are seconds derived from the settings below, plus a margin for a busy machine.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dispatcher.storage.sqlite import SqliteStateStore
from tests.e2e.harness import API, Reply, Target, call, wait_until
from tests.processes import Proc, agent_argv, dispatcher_argv, free_port, wait_http_ok

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

EXPIRY_S = 6.0
HEARTBEAT_S = 0.5
INTERVAL_S = 1.0
WARMUP_S = 1.0
"""The warm-up of the first start, on a fresh (empty) data dir."""
MARGIN_S = 10.0
START_S = 30.0
"""A dispatcher process start, import to first answer, on a loaded machine."""
SOURCE = "api:e2e"
PATHS = [f"/svc{i}" for i in range(6)]
AGENT_NAMES = ("agent-a", "agent-b", "agent-c")
DB = "clusterchecks.db"


def http_check(target: Target, path: str) -> dict[str, Any]:
    return {"name": "http", "instances": [{"url": target.url(path)}], "interval_s": INTERVAL_S}


@dataclass
class Cluster:
    root: Path
    target: Target
    port: int
    data_dir: Path
    dispatcher: Proc | None = None
    agents: dict[str, Proc] = field(default_factory=dict)
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_dispatcher(self) -> Proc:
        self.starts += 1
        self.dispatcher = Proc(
            f"dispatcher-{self.starts}",
            dispatcher_argv(
                self.port,
                "--store", "sqlite", "--data-dir", str(self.data_dir),
                "--node-expiration-timeout", str(EXPIRY_S),
                "--heartbeat-interval", str(HEARTBEAT_S),
                "--warmup-duration", str(WARMUP_S),
            ),
            self.root / f"dispatcher-{self.starts}.log",
        ).start()  # fmt: skip
        return self.dispatcher

    def call(self, method: str, path: str, body: Any = None) -> Reply:
        return call(method, self.url + path, body, timeout_s=5)

    def state(self) -> dict[str, Any]:
        reply = self.call("GET", API)
        assert reply.status == 200, (reply, self.tail())
        body: dict[str, Any] = reply.body
        return body

    def placement(self) -> dict[str, str | None] | None:
        """digest -> node, or None while the dispatcher does not answer."""
        try:
            reply = self.call("GET", API + "/checks")
        except OSError:
            return None
        if reply.status != 200:
            return None
        return {c["digest"]: c["node"] for c in reply.body["checks"]}

    def tail(self) -> str:
        if self.dispatcher is None:
            return ""
        return f"--- {self.dispatcher.name} ---\n{self.dispatcher.output()[-3000:]}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    target = Target().start()
    c = Cluster(tmp_path, target, free_port(), tmp_path / "data")
    try:
        c.start_dispatcher()
        wait_http_ok(c.url + "/readyz", timeout_s=START_S, proc=c.dispatcher)
        for name in AGENT_NAMES:
            argv = agent_argv(
                free_port(), name, c.url, "--heartbeat-interval", str(HEARTBEAT_S)
            )  # fmt: skip
            c.agents[name] = Proc(name, argv, tmp_path / f"{name}.log").start()
        wait_until(
            lambda: {n["name"] for n in c.state()["nodes"]} == set(AGENT_NAMES),
            timeout_s=START_S, what="three registered agents", context=c.tail,
        )  # fmt: skip
        reply = c.call("PUT", f"{API}/sources/{SOURCE}",
                       {"configs": [http_check(target, p) for p in PATHS]})  # fmt: skip
        assert reply.status == 200, reply
        wait_until(
            lambda: all(target.times(p) for p in PATHS),
            timeout_s=WARMUP_S + 2 * INTERVAL_S + MARGIN_S, what="every check run", context=c.tail,
        )  # fmt: skip
        yield c
    finally:
        for proc in [*c.agents.values(), *([c.dispatcher] if c.dispatcher else [])]:
            proc.stop()
        target.stop()


def settled(c: Cluster, count: int) -> dict[str, str | None]:
    """The placement once ``count`` checks are all placed."""

    def placed() -> dict[str, str | None] | None:
        p = c.placement()
        return p if p is not None and len(p) == count and None not in p.values() else None

    placement, _ = wait_until(
        placed, timeout_s=WARMUP_S + MARGIN_S, what=f"{count} checks placed", context=c.tail
    )
    return placement


def restart_keeps_everything(c: Cluster, how: signal.Signals, count: int) -> None:
    before = settled(c, count)
    assert c.dispatcher is not None
    old = c.dispatcher
    stopped_at = time.time()
    old.signal(how)
    assert old.wait(timeout_s=MARGIN_S) is not None
    c.start_dispatcher()
    # Served at once from the file: the first answer lists every check where it was.
    first, took = wait_until(
        c.placement, timeout_s=START_S, what="the restarted dispatcher answering",
        context=c.tail, interval_s=0.05,
    )  # fmt: skip
    assert first == before, "a check was lost or moved by the restart"
    state = c.state()
    assert state["warmup"] is False, state
    assert state["totals"]["dangling"] == 0, state
    # The agents come back to it within their heartbeat, and nothing moves meanwhile.
    wait_until(
        lambda: {n["name"] for n in c.state()["nodes"]} == set(AGENT_NAMES),
        timeout_s=EXPIRY_S, what="the agents heartbeating the new process", context=c.tail,
    )  # fmt: skip
    back_at = time.time()
    assert settled(c, count) == before
    # The agents never stopped running the checks: no gap longer than an interval (plus
    # a margin for a loaded machine) from before the stop to after the agents were back.
    wait_until(
        lambda: all(c.target.first_after(p, back_at + INTERVAL_S) for p in PATHS),
        timeout_s=2 * INTERVAL_S + MARGIN_S, what="runs after the restart", context=c.tail,
    )  # fmt: skip
    end = back_at + INTERVAL_S
    for path in PATHS:
        gap = c.target.longest_gap(path, stopped_at - INTERVAL_S, end)
        assert gap < INTERVAL_S + 2.0, f"{path}: no run for {gap:.2f} s across the restart"
    print(f"sqlite e2e: {how.name}: first answer {took:.2f} s after the new process started")


def test_a_restart_and_a_kill_9_right_after_a_200_keep_every_check_and_its_placement(
    cluster: Cluster,
) -> None:
    c = cluster
    restart_keeps_everything(c, signal.SIGTERM, len(PATHS))
    # One more check, acknowledged; kill -9 at once: the 200 means it is in the file.
    reply = c.call("POST", f"{API}/checks", {"source": SOURCE, "configs": [
        http_check(c.target, "/added")]})  # fmt: skip
    assert reply.status == 200, reply
    assert c.dispatcher is not None
    c.dispatcher.signal(signal.SIGKILL)
    c.dispatcher.wait(timeout_s=MARGIN_S)
    c.start_dispatcher()
    placement, _ = wait_until(
        c.placement, timeout_s=START_S, what="the restarted dispatcher answering",
        context=c.tail,
    )  # fmt: skip
    assert len(placement) == len(PATHS) + 1, placement
    restart_keeps_everything(c, signal.SIGKILL, len(PATHS) + 1)


def test_a_second_dispatcher_on_the_same_data_dir_is_refused(cluster: Cluster) -> None:
    c = cluster
    assert c.dispatcher is not None
    before = settled(c, len(PATHS))
    second = Proc(
        "second",
        dispatcher_argv(free_port(), "--store", "sqlite", "--data-dir", str(c.data_dir)),
        c.root / "second.log",
    ).start()
    code = second.wait(timeout_s=START_S)
    output = second.output()
    assert code == 1, output
    assert "Traceback" not in output, output
    assert str(c.data_dir) in output, output
    assert "in use" in output, output
    assert str(c.dispatcher.pid) in output, output
    # The first one goes on, with everything.
    assert c.dispatcher.alive()
    assert settled(c, len(PATHS)) == before


def test_a_corrupt_data_file_stops_the_dispatcher_with_a_message_naming_it(
    cluster: Cluster,
) -> None:
    c = cluster
    assert c.dispatcher is not None
    c.dispatcher.stop()
    db = c.data_dir / DB
    for extra in (c.data_dir / f"{DB}-wal", c.data_dir / f"{DB}-shm"):
        extra.unlink(missing_ok=True)
    garbage = b"this is not a database, " * 200
    db.write_bytes(garbage)
    proc = c.start_dispatcher()
    code = proc.wait(timeout_s=START_S)
    output = proc.output()
    assert code == 1, output
    assert "Traceback" not in output, output
    assert str(db) in output, output
    assert db.read_bytes() == garbage, "the corrupt file was changed"
    # Nothing served: no fresh start that would tell the agents they hold nothing.
    with pytest.raises(urllib.error.URLError, match="refused"):
        urllib.request.urlopen(c.url + "/healthz", timeout=2)


def _bad_row(data_dir: Path) -> tuple[str, ...]:
    """A data file whose pages are sound (quick_check passes) but one row is not a
    config: found by reading the rows, which only open does before anything serves."""
    db = _empty_store(data_dir)
    connection = sqlite3.connect(db, isolation_level=None)
    try:
        connection.execute("INSERT INTO configs VALUES ('bad-record', '{not json')")
    finally:
        connection.close()
    return str(db), "record 'bad-record' of table configs", "fix or delete that row"


def _wal_without_its_database(data_dir: Path) -> tuple[str, ...]:
    """The database deleted, its WAL left: SQLite would replay it onto a new file."""
    db = _empty_store(data_dir)
    wal = data_dir / f"{DB}-wal"
    db.unlink()
    wal.write_bytes(b"what a killed dispatcher left")
    return str(wal), f"left without {db}", "delete them too"


def _empty_store(data_dir: Path) -> Path:
    asyncio.run(SqliteStateStore.open(data_dir).close())
    return data_dir / DB


@pytest.mark.parametrize(
    "prepare", [_bad_row, _wal_without_its_database], ids=["bad_row", "wal_without_database"]
)
def test_a_data_dir_that_cannot_be_loaded_whole_stops_the_dispatcher_naming_the_file(
    tmp_path: Path, prepare: Callable[[Path], tuple[str, ...]]
) -> None:
    data_dir = tmp_path / "data"
    expected = prepare(data_dir)
    files = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.name != "clusterchecks.lock"}
    port = free_port()
    proc = Proc(
        "dispatcher",
        dispatcher_argv(port, "--store", "sqlite", "--data-dir", str(data_dir)),
        tmp_path / "dispatcher.log",
    ).start()
    try:
        code = proc.wait(timeout_s=START_S)
    finally:
        proc.stop()
    output = proc.output()
    assert code == 1, output
    assert "Error: " in output, output
    assert "Traceback" not in output, output
    for text in expected:
        assert text in output, output
    after = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.name != "clusterchecks.lock"}
    assert after == files, "the data dir was changed"
