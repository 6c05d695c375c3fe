"""The store benchmark: sqlite, memory and redis behind a real dispatcher process each.

Every dispatcher is the real command (``clusterchecks-dispatcher``, standalone, log level
info to a file as in production, ``--warmup-duration 0``, ``--node-expiration-timeout``
long enough that the ``NODES`` registered nodes stay for the whole run, so that checks
are placed and placements are stored, as in a real cluster): ``--store sqlite --data-dir
DIR`` (DIR under the output directory, on the disk the repository is on, never a tmpfs),
``--store memory``, and ``--store redis`` against a real ``redis-server`` (no
persistence: what the dispatcher waits for is Redis's reply, as in a Redis pair).

Latency, the three dispatchers running side by side and measured in turns (each step
goes over the stores one after the other, so a slow spell of the shared machine hits
each alike): ``PUT /sources/{source}`` of a source with 1 new check (``ONE_REPS`` times)
and with 1,000 new checks (``THOUSAND_REPS`` times), one request at a time, each to a new
source with checks never seen before; then ``BURST_ROUNDS`` bursts of ``BURST`` single-
check ``POST /checks`` from ``BURST_CLIENTS`` concurrent clients (keep-alive connections
opened before the burst): reply latency p50/p99 and checks/s of the burst. The best
burst round (by checks/s) of each store is shown: other processes on a shared machine
only ever slow a round down.

Restart, one store at a time: a fresh dispatcher is loaded with ``RESTART_CHECKS`` checks
(``LOAD_PUTS`` PUTs to as many sources), then killed (kill -9, the process gets no chance
to close its store) and started again, then stopped with SIGTERM and started again. The
restart time is from the new process's start (the ``Popen``) to the first ``200`` of
``GET /v1/api/clusterchecks`` whose ``totals.checks`` is all of them (the cheaper of the
two proofs: the state lists each check's digest once, ``GET /checks`` its whole config;
both are timed once after the restart and reported). Every placement is compared with the
one before the stop. The memory store cannot restart with its checks: a new process has
none until the agents give them back (rebuild from the agents), so it has no row there.

The sqlite data file: the size of every file in the data dir as the kill -9 left it (the
database and its write-ahead log), and of a copy after ``PRAGMA wal_checkpoint(TRUNCATE)``
(the WAL folded into the database and emptied: what the data takes at rest); per check is
that size over ``RESTART_CHECKS`` (the ``NODES`` nodes and the placements included).
For redis, ``used_memory`` of ``INFO memory`` before and after the load, per check.

Goals (reported, not hard): sqlite's burst within ``BURST_GOAL_RATIO`` x memory's, judged
on checks/s (what group commit is for: many writers sharing one commit; with 32 clients
each waiting for its reply, latency is 32 / rate by Little's law, so p99 adds only the
tail of the same queue, and one slow commit on a shared machine moves it); restart with
``RESTART_CHECKS`` checks under ``RESTART_GOAL_S`` (sqlite and redis, each signal).

Run alone: ``python -m tests.bench.stores [--stores sqlite,memory,redis] [--restart-checks N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import orjson

from tests.bench.machine import machine_busy_s, process_cpu_s
from tests.bench.stats import median, percentile, table
from tests.processes import ROOT, Proc, dispatcher_argv, free_port
from tests.redis_server import RedisServer

API = "/v1/api/clusterchecks"
HEADERS = {"Content-Type": "application/json"}
STORES = ("sqlite", "memory", "redis")
NODES = 10
"""Registered once, never heartbeating again: 10 x the default 10,000 checks per node
holds every check of the restart load, so each one is placed (and its placement stored)."""
NODE_EXPIRATION_S = 3600.0
ONE_REPS = 200
THOUSAND_REPS = 40
BURST = 1_000
BURST_CLIENTS = 32
BURST_ROUNDS = 3
RESTART_CHECKS = 100_000
LOAD_PUTS = 4
RESTART_GOAL_S = 5.0
BURST_GOAL_RATIO = 2.0
START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 300.0
POLL_S = 0.005
DISTURBED_PCT = 20.0  # other processes' CPU during a step, in % of one CPU
MEMORY_NA = "n/a (rebuilds from agents)"
FLAGS = {
    "sqlite": ["--store", "sqlite", "--data-dir", "DIR"],
    "memory": ["--store", "memory"],
    "redis": ["--store", "redis", "--redis-url", "URL"],
}
"""As reported; each dispatcher also gets ``--warmup-duration 0`` and a long
``--node-expiration-timeout`` (standalone: the default election)."""


# ------------------------------------------------------------------ results


@dataclass
class Latency:
    label: str
    checks_per_request: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    total_s: float


@dataclass
class BurstRound:
    round: int
    seconds: float
    checks_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    server_cpu_pct: float | None  # the dispatcher (and redis-server), % of one CPU
    client_cpu_pct: float
    other_cpu_pct: float | None


@dataclass
class Restart:
    signal: str  # "SIGKILL" | "SIGTERM"
    stop_s: float  # the signal to the process's exit
    exit_code: int | None
    first_answer_s: float | None  # start to the first HTTP reply of any status
    all_checks_s: float | None  # start to the first 200 listing every check
    checks: int
    placed: int  # checks on a node after the restart
    moved: int  # checks whose node differs from before the stop
    cpu_s: float | None  # CPU seconds of the new process when it listed every check
    takeover_ms: float | None  # its own log: won the term to leading (claim + restore)
    files: dict[str, int] = field(default_factory=dict)  # sqlite: data dir after the stop


@dataclass
class Breakdown:
    """Where a restart's loading goes, measured in this process on the same data (the
    dispatcher stopped): the store's claim (read and decode the snapshot) and building
    the state from it. Wall and CPU seconds (CPU of every thread of this process)."""

    claim_s: float
    claim_cpu_s: float
    restore_s: float
    restore_cpu_s: float


@dataclass
class StoreResults:
    store: str
    flags: list[str]
    restart_checks: int
    start_empty_s: float | None = None  # start to the first 200 of the state, no checks
    put_one: Latency | None = None
    put_thousand: Latency | None = None
    bursts: list[BurstRound] = field(default_factory=list)
    load_s: float | None = None  # the RESTART_CHECKS load, all its PUTs
    restarts: list[Restart] = field(default_factory=list)
    state_get_s: float | None = None  # GET the state after the restart: time, bytes
    state_get_bytes: int | None = None
    checks_get_s: float | None = None  # GET /checks after the restart: time, bytes
    checks_get_bytes: int | None = None
    checkpointed_files: dict[str, int] = field(default_factory=dict)
    breakdown: Breakdown | None = None
    redis_used_memory: int | None = None  # bytes the load added to redis-server
    filesystem: str | None = None  # of the sqlite data dir

    @property
    def best_burst(self) -> BurstRound | None:
        return max(self.bursts, key=lambda b: b.checks_per_s, default=None)

    @property
    def bytes_per_check(self) -> float | None:
        if self.checkpointed_files:
            return sum(self.checkpointed_files.values()) / self.restart_checks
        if self.redis_used_memory is not None:
            return self.redis_used_memory / self.restart_checks
        return None


@dataclass
class StoresResults:
    nodes: int
    restart_checks: int
    stores: list[StoreResults] = field(default_factory=list)

    def get(self, store: str) -> StoreResults | None:
        return next((s for s in self.stores if s.store == store), None)

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        for item, store in zip(out["stores"], self.stores, strict=True):
            item["bytes_per_check"] = store.bytes_per_check
        return out


# ------------------------------------------------------------------ helpers


def config(key: str) -> dict[str, object]:
    """A realistic small http check; ``key`` makes it distinct (a new digest)."""
    return {
        "name": "http",
        "instances": [{"url": f"http://{key}.bench.svc.cluster.local:8080/healthz"}],
        "interval_s": 15,
    }


def _filesystem(path: Path) -> str:
    """The type of the filesystem ``path`` is on (from /proc/mounts; Linux)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


def _files(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}


def _checkpointed(data_dir: Path, work: Path) -> dict[str, int]:
    """Sizes after folding the WAL into the database, on a copy (the original is left as
    the dispatcher left it, for the restart that follows)."""
    copy = work / "checkpoint"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(data_dir, copy)
    databases = []
    for path in sorted(copy.iterdir()):
        with path.open("rb") as head:
            if head.read(16) == b"SQLite format 3\x00":
                databases.append(path)
    for path in databases:  # closing the last connection removes the -wal and -shm files
        db = sqlite3.connect(path)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
    files = _files(copy)
    shutil.rmtree(copy, ignore_errors=True)
    return files


def _redis_used_memory(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


@dataclass
class _Server:
    """One dispatcher process and what it needs (a data dir, a redis-server)."""

    store: str
    flags: list[str]
    log_path: Path
    proc: Proc | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Starts the process; the time.monotonic of its start."""
        self.port = free_port()
        argv = dispatcher_argv(
            self.port,
            *self.flags,
            "--warmup-duration", "0",
            "--node-expiration-timeout", str(NODE_EXPIRATION_S),
        )  # fmt: skip
        started = time.monotonic()
        self.proc = Proc(f"dispatcher-{self.store}", argv, self.log_path).start()
        return started

    def pids(self, redis_server: RedisServer | None) -> list[int]:
        assert self.proc is not None
        pids = [self.proc.pid]
        if redis_server is not None and redis_server.process is not None:
            pids.append(redis_server.process.pid)
        return pids


def _await_checks(server: _Server, started: float, expect: int) -> tuple[float, float, bytes]:
    """Polls ``GET /v1/api/clusterchecks`` until a 200 counts ``expect`` checks: (seconds
    to the first HTTP reply of any status, seconds to that 200, its body)."""
    assert server.proc is not None
    first: float | None = None
    deadline = started + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.proc.alive():
            raise RuntimeError(
                f"{server.proc.name} exited ({server.proc.popen and server.proc.popen.returncode})"
                f":\n{server.proc.output()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(server.url + API, timeout=REQUEST_TIMEOUT_S) as reply:
                body = reply.read()
                status = reply.status
        except urllib.error.HTTPError as exc:
            body, status = b"", exc.code
        except (urllib.error.URLError, OSError):
            time.sleep(POLL_S)
            continue
        now = time.monotonic()
        if first is None:
            first = now - started
        if status == 200 and orjson.loads(body)["totals"]["checks"] == expect:
            return first, now - started, body
        time.sleep(POLL_S)
    raise RuntimeError(
        f"{server.proc.name}: no 200 with {expect:,} checks after {START_TIMEOUT_S:g} s"
        f":\n{server.proc.output()[-4000:]}"
    )


def _takeover_ms(log_path: Path) -> float | None:
    """The ``takeover_ms`` of the last ``leading`` line of a dispatcher's log."""
    found: float | None = None
    with log_path.open("rb") as log:
        for line in log:
            if b'"leading"' not in line:
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(line)
                if event.get("event") == "leading":
                    found = event.get("takeover_ms")
    return found


async def _breakdown(setup: _Setup) -> Breakdown:
    """Claims the store as a new leader would and restores the state from the snapshot,
    each timed (sqlite: on a copy of the data dir; redis: the dispatcher is stopped)."""
    from dispatcher.core.state import ClusterState
    from dispatcher.settings import ElectionSettings, RedisSettings
    from dispatcher.storage.base import StateStore

    store: StateStore
    if setup.data_dir is not None:
        from dispatcher.storage.sqlite import SqliteStateStore

        copy = setup.work / "breakdown"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(setup.data_dir, copy)
        # Open reads and decodes the whole file (a bad row stops the start), and the
        # first claim returns what it read: the claim is timed from the open.
        wall, cpu = time.perf_counter(), time.process_time()
        store = SqliteStateStore.open(copy)
    else:
        from dispatcher.storage.redis import RedisStateStore

        assert setup.redis_server is not None
        store = RedisStateStore.from_url(
            setup.redis_server.url,
            name=ElectionSettings().lease_name,
            timeout_s=RedisSettings().timeout_s,
        )
        wall, cpu = time.perf_counter(), time.process_time()
    try:
        # A standalone leader's epoch is its start time in ms: above every stored one.
        snapshot = await store.claim(epoch=int(time.time() * 1000))
        claimed, claimed_cpu = time.perf_counter(), time.process_time()
        ClusterState.restore(snapshot, now=0.0)
        restored, restored_cpu = time.perf_counter(), time.process_time()
    finally:
        await store.close()
    return Breakdown(
        claim_s=claimed - wall,
        claim_cpu_s=claimed_cpu - cpu,
        restore_s=restored - claimed,
        restore_cpu_s=restored_cpu - claimed_cpu,
    )


def _placements(state_body: bytes) -> dict[str, str]:
    state = orjson.loads(state_body)
    return {digest: node["name"] for node in state["nodes"] for digest in node["configs"]}


def _session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=120.0),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def _register(session: aiohttp.ClientSession, url: str) -> None:
    for i in range(NODES):
        body = orjson.dumps({"last_change": -1, "capacity": 8, "labels": {"zone": f"zone-{i % 3}"}})
        async with session.post(
            f"{url}{API}/status/bench-node-{i:02d}", data=body, headers=HEADERS
        ) as r:
            text = await r.text()
            if r.status != 200:
                raise RuntimeError(f"registering a node: {r.status} {text[:300]}")


async def _request(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes
) -> tuple[int, float, bytes]:
    sent = time.perf_counter()
    async with session.request(method, url, data=body, headers=HEADERS) as response:
        raw = await response.read()
    return response.status, time.perf_counter() - sent, raw


def _latency(label: str, per_request: int, times: list[float], errors: int) -> Latency:
    return Latency(
        label=label,
        checks_per_request=per_request,
        requests=len(times),
        errors=errors,
        p50_ms=percentile(times, 50) * 1e3,
        p99_ms=percentile(times, 99) * 1e3,
        max_ms=max(times, default=float("nan")) * 1e3,
        total_s=sum(times),
    )


async def _puts(
    session: aiohttp.ClientSession, url: str, prefix: str, reps: int, size: int
) -> tuple[list[float], int]:
    """``reps`` PUTs, one at a time, each of ``size`` new checks to a new source."""
    times: list[float] = []
    errors = 0
    for rep in range(reps):
        body = orjson.dumps({"configs": [config(f"{prefix}-{rep}-{i}") for i in range(size)]})
        status, took, raw = await _request(
            session, "PUT", f"{url}{API}/sources/{prefix}-{rep}", body
        )
        if status == 200:
            times.append(took)
        else:
            errors += 1
            if errors == 1:
                print(f"stores: PUT answered {status}: {raw[:300]!r}", file=sys.stderr)
    return times, errors


def _cpu(pids: list[int]) -> float | None:
    times = [process_cpu_s(pid) for pid in pids]
    return None if None in times else sum(t for t in times if t is not None)


async def _burst(
    session: aiohttp.ClientSession, url: str, round_no: int, pids: list[int]
) -> BurstRound:
    bodies = [
        orjson.dumps(
            {"source": f"burst-{i % BURST_CLIENTS}", "configs": [config(f"burst-{round_no}-{i}")]}
        )
        for i in range(BURST)
    ]
    # The keep-alive connections are opened before the burst: it measures requests.
    await asyncio.gather(*(_readyz(session, url) for _ in range(BURST_CLIENTS)))
    target = f"{url}{API}/checks"
    pending: Iterator[bytes] = iter(bodies)
    times: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        for body in pending:  # one iterator shared by every client: each body once
            status, took, _ = await _request(session, "POST", target, body)
            if status == 200:
                times.append(took)
            else:
                errors += 1

    server0, client0, machine0 = _cpu(pids), time.process_time(), machine_busy_s()
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for k in range(BURST_CLIENTS):
            tasks.create_task(client(), name=f"burst-client-{k}")
    seconds = time.perf_counter() - started
    server1, client1, machine1 = _cpu(pids), time.process_time(), machine_busy_s()
    server = server1 - server0 if server0 is not None and server1 is not None else None
    own = (server or 0.0) + client1 - client0
    other = (
        max(0.0, machine1 - machine0 - own)
        if machine0 is not None and machine1 is not None and server is not None
        else None
    )
    return BurstRound(
        round=round_no,
        seconds=seconds,
        checks_per_s=len(times) / seconds,
        p50_ms=percentile(times, 50) * 1e3,
        p99_ms=percentile(times, 99) * 1e3,
        max_ms=max(times, default=float("nan")) * 1e3,
        errors=errors,
        server_cpu_pct=None if server is None else server / seconds * 100,
        client_cpu_pct=(client1 - client0) / seconds * 100,
        other_cpu_pct=None if other is None else other / seconds * 100,
    )


async def _readyz(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(f"{url}/readyz") as response:
        await response.read()


# ------------------------------------------------------------------ the two parts


@dataclass
class _Setup:
    """Per store: the flags and what backs them, for one dispatcher's life and restarts."""

    store: str
    work: Path
    redis_server: RedisServer | None = None
    data_dir: Path | None = None

    @classmethod
    @contextlib.contextmanager
    def open(cls, store: str, work: Path, name: str) -> Iterator[_Setup]:
        setup = cls(store, work / f"{store}-{name}")
        setup.work.mkdir(parents=True)
        if store == "redis":
            setup.redis_server = RedisServer(port=free_port(), workdir=setup.work)
            setup.redis_server.start()
        elif store == "sqlite":
            setup.data_dir = setup.work / "data"
        try:
            yield setup
        finally:
            if setup.redis_server is not None:
                setup.redis_server.stop()

    @property
    def flags(self) -> list[str]:
        if self.store == "sqlite":
            return ["--store", "sqlite", "--data-dir", str(self.data_dir)]
        if self.store == "redis":
            assert self.redis_server is not None
            return ["--store", "redis", "--redis-url", self.redis_server.url]
        return ["--store", "memory"]


def _latency_part(
    stores: list[str],
    results: dict[str, StoreResults],
    *,
    work: Path,
    log_dir: Path,
    progress: Callable[[str], None],
) -> None:
    with contextlib.ExitStack() as stack:
        servers: dict[str, tuple[_Server, _Setup]] = {}
        for store in stores:
            setup = stack.enter_context(_Setup.open(store, work, "latency"))
            log_path = log_dir / f"stores-{store}-latency.log"
            log_path.unlink(missing_ok=True)
            server = _Server(store, setup.flags, log_path)
            started = server.start()
            stack.callback(_stop, server)
            _, results[store].start_empty_s, _ = _await_checks(server, started, 0)
            servers[store] = (server, setup)

        async def measure() -> None:
            async with _session(BURST_CLIENTS) as session:
                for server, _ in servers.values():
                    await _register(session, server.url)
                steps = [
                    ("PUT 1", 1, ONE_REPS, "put_one"),
                    ("PUT 1,000", 1_000, THOUSAND_REPS, "put_thousand"),
                ]
                for label, size, reps, attribute in steps:
                    for store, (server, _) in servers.items():
                        progress(f"stores: {store}: {reps} x {label} new check(s)")
                        times, errors = await _puts(session, server.url, f"{attribute}", reps, size)
                        setattr(results[store], attribute, _latency(label, size, times, errors))
                for round_no in range(1, BURST_ROUNDS + 1):
                    for store, (server, setup) in servers.items():
                        progress(
                            f"stores: {store}: burst {round_no}/{BURST_ROUNDS}, {BURST:,} POSTs"
                            f" from {BURST_CLIENTS} clients"
                        )
                        pids = server.pids(setup.redis_server)
                        burst = await _burst(session, server.url, round_no, pids)
                        results[store].bursts.append(burst)

        asyncio.run(measure())


def _stop(server: _Server) -> None:
    if server.proc is not None:
        server.proc.stop(timeout_s=60)


def _stop_with(server: _Server, sig: signal.Signals) -> tuple[float, int | None]:
    assert server.proc is not None
    sent = time.monotonic()
    server.proc.signal(sig)
    try:
        code: int | None = server.proc.wait(timeout_s=60)
    except subprocess.TimeoutExpired:
        server.proc.signal(signal.SIGKILL)
        server.proc.wait(timeout_s=10)
        code = None
    return time.monotonic() - sent, code


def _restart_part(
    store: str,
    result: StoreResults,
    *,
    checks: int,
    work: Path,
    log_dir: Path,
    progress: Callable[[str], None],
) -> None:
    with _Setup.open(store, work, "restart") as setup:
        log_path = log_dir / f"stores-{store}-restart.log"
        log_path.unlink(missing_ok=True)
        server = _Server(store, setup.flags, log_path)
        try:
            started = server.start()
            _await_checks(server, started, 0)
            if setup.redis_server is not None:
                before = _redis_used_memory(setup.redis_server.url)
            progress(f"stores: {store}: loading {checks:,} checks in {LOAD_PUTS} PUTs")

            async def load() -> float:
                async with _session(1) as session:
                    await _register(session, server.url)
                    per = -(-checks // LOAD_PUTS)
                    took = 0.0
                    for n in range(LOAD_PUTS):
                        keys = range(n * per, min(checks, (n + 1) * per))
                        body = orjson.dumps({"configs": [config(f"load-{k}") for k in keys]})
                        status, seconds, raw = await _request(
                            session, "PUT", f"{server.url}{API}/sources/load-{n}", body
                        )
                        if status != 200:
                            raise RuntimeError(f"load PUT {n}: {status} {raw[:300]!r}")
                        took += seconds
                    return took

            result.load_s = asyncio.run(load())
            if setup.redis_server is not None:
                result.redis_used_memory = _redis_used_memory(setup.redis_server.url) - before
            if setup.data_dir is not None:
                result.filesystem = _filesystem(setup.data_dir.resolve())
            _, _, body = _await_checks(server, time.monotonic(), checks)
            placed = _placements(body)
            for sig in (signal.SIGKILL, signal.SIGTERM):
                progress(f"stores: {store}: {sig.name}, then start again with {checks:,} checks")
                stop_s, code = _stop_with(server, sig)
                files = _files(setup.data_dir) if setup.data_dir is not None else {}
                if setup.data_dir is not None and sig is signal.SIGKILL:
                    result.checkpointed_files = _checkpointed(setup.data_dir, setup.work)
                started = server.start()
                first, all_s, body = _await_checks(server, started, checks)
                cpu_s = process_cpu_s(server.proc.pid) if server.proc else None
                after = _placements(body)
                moved = sum(1 for d, node in placed.items() if after.get(d) != node)
                result.restarts.append(
                    Restart(
                        signal=sig.name,
                        stop_s=stop_s,
                        exit_code=code,
                        first_answer_s=first,
                        all_checks_s=all_s,
                        checks=checks,
                        placed=len(after),
                        moved=moved,
                        cpu_s=cpu_s,
                        takeover_ms=_takeover_ms(log_path),
                        files=files,
                    )
                )
                placed = after
            for path in ("", "/checks"):
                sent = time.monotonic()
                with urllib.request.urlopen(
                    server.url + API + path, timeout=REQUEST_TIMEOUT_S
                ) as r:
                    size = len(r.read())
                took = time.monotonic() - sent
                if path:
                    result.checks_get_s, result.checks_get_bytes = took, size
                else:
                    result.state_get_s, result.state_get_bytes = took, size
        finally:
            _stop(server)
        progress(f"stores: {store}: claim and restore in this process, timed")
        result.breakdown = asyncio.run(_breakdown(setup))


def run_stores(
    *,
    log_dir: Path,
    work_dir: Path,
    stores: tuple[str, ...] = STORES,
    restart_checks: int = RESTART_CHECKS,
    progress: Callable[[str], None] = print,
) -> StoresResults:
    log_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    results = StoresResults(nodes=NODES, restart_checks=restart_checks)
    by_store: dict[str, StoreResults] = {}
    # The data dirs live next to the results, on the repository's disk: a tmpfs /tmp
    # would make every commit free and the sqlite numbers meaningless.
    with tempfile.TemporaryDirectory(prefix="stores-", dir=work_dir) as tmp:
        work = Path(tmp)
        for store in stores:
            by_store[store] = StoreResults(
                store=store, flags=FLAGS[store], restart_checks=restart_checks
            )
            results.stores.append(by_store[store])
        _latency_part(list(stores), by_store, work=work, log_dir=log_dir, progress=progress)
        for store in stores:
            if store != "memory":
                _restart_part(
                    store,
                    by_store[store],
                    checks=restart_checks,
                    work=work,
                    log_dir=log_dir,
                    progress=progress,
                )
    return results


# ------------------------------------------------------------------ the report


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _sizes(files: dict[str, int]) -> str:
    return ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in files.items()) or "none"


def _restart_cell(result: StoreResults) -> str:
    if result.store == "memory":
        return MEMORY_NA
    by = {r.signal: r for r in result.restarts}
    return " / ".join(_s(by[s].all_checks_s) if s in by else "-" for s in ("SIGKILL", "SIGTERM"))


def _size_cell(result: StoreResults) -> str:
    per = result.bytes_per_check
    if per is None:
        return "-"
    return f"{per:.0f} " + ("(file)" if result.checkpointed_files else "(used_memory)")


def goals(results: StoresResults) -> list[tuple[str, bool, str]]:
    """(name, ok, detail) of each goal."""
    out: list[tuple[str, bool, str]] = []
    sqlite, memory = results.get("sqlite"), results.get("memory")
    sq = sqlite.best_burst if sqlite else None
    mem = memory.best_burst if memory else None
    if sq is not None and mem is not None:
        ratio = mem.checks_per_s / sq.checks_per_s if sq.checks_per_s else float("inf")
        errors = sum(b.errors for s in (sqlite, memory) if s for b in s.bursts)
        out.append(
            (
                f"stores: sqlite group commit within {BURST_GOAL_RATIO:g}x of memory for a"
                f" burst of {BURST:,} POSTs from {BURST_CLIENTS} clients (checks/s, best round)",
                ratio <= BURST_GOAL_RATIO and errors == 0,
                f"memory {mem.checks_per_s:.0f} / sqlite {sq.checks_per_s:.0f} checks/s ="
                f" {ratio:.2f}x; p99 {mem.p99_ms:.1f} vs {sq.p99_ms:.1f} ms"
                + (f"; {errors} requests failed" if errors else ""),
            )
        )
    n = f"{results.restart_checks:,}"
    for result in results.stores:
        for restart in result.restarts:
            label = "kill -9" if restart.signal == "SIGKILL" else "SIGTERM"
            took = restart.all_checks_s
            out.append(
                (
                    f"stores: restart with {n} checks under {RESTART_GOAL_S:g} s"
                    f" ({result.store}, after {label})",
                    took is not None and took < RESTART_GOAL_S,
                    f"process start to the first 200 listing all {n}: {_s(took)} s (first"
                    f" reply at {_s(restart.first_answer_s)} s)",
                )
            )
        if result.restarts:
            moved = sum(r.moved for r in result.restarts)
            out.append(
                (
                    f"stores: no check moves across a restart ({result.store})",
                    moved == 0,
                    f"{moved} of {n} checks on another node over {len(result.restarts)} restarts",
                )
            )
    return out


def report(results: StoresResults) -> tuple[str, list[tuple[str, bool, str]]]:
    """The section's text (goals not included) and the goals as (name, ok, detail)."""
    n = f"{results.restart_checks:,}"
    out = [
        f"Stores: a real standalone dispatcher per store (--warmup-duration 0, {results.nodes}"
        f" nodes registered); PUT of a source with 1 new check ({ONE_REPS} times) and 1,000"
        f" new checks ({THOUSAND_REPS} times), one at a time; a burst of {BURST:,}"
        f" single-check POSTs from {BURST_CLIENTS} clients (best of {BURST_ROUNDS} rounds);"
        f" restart with {n} checks: process start to the first 200 of GET {API} counting"
        " them all",
        "",
    ]
    rows = []
    for r in results.stores:
        best = r.best_burst
        rows.append(
            [
                r.store,
                _ms(r.put_one.p50_ms if r.put_one else None),
                _ms(r.put_one.p99_ms if r.put_one else None),
                _ms(r.put_thousand.p50_ms if r.put_thousand else None),
                _ms(r.put_thousand.p99_ms if r.put_thousand else None),
                _ms(best.p50_ms if best else None),
                _ms(best.p99_ms if best else None),
                f"{best.checks_per_s:.0f}" if best else "-",
                _s(r.start_empty_s),
                _restart_cell(r),
                _size_cell(r),
            ]
        )
    out.append(
        table(
            [
                "store",
                "PUT 1 p50 ms",
                "p99 ms",
                "PUT 1,000 p50 ms",
                "p99 ms",
                "burst p50 ms",
                "p99 ms",
                "checks/s",
                "start, empty s",
                f"restart, {n} checks: kill -9 / SIGTERM s",
                "bytes/check",
            ],
            rows,
        )
    )
    for r in results.stores:
        rounds = "; ".join(
            f"{b.checks_per_s:.0f}/s (server {_ms(b.server_cpu_pct)}%, client"
            f" {b.client_cpu_pct:.0f}%, other {_ms(b.other_cpu_pct)}%)"
            for b in r.bursts
        )
        errors = sum(lat.errors for lat in (r.put_one, r.put_thousand) if lat) + sum(
            b.errors for b in r.bursts
        )
        out.append(
            f"  {r.store}: burst rounds {rounds}; failed requests {errors}"
            + (
                f"; median round {median([b.checks_per_s for b in r.bursts]):.0f}/s"
                if r.bursts
                else ""
            )
        )
    for r in results.stores:
        for restart in r.restarts:
            out.append(
                f"  {r.store} {restart.signal}: exit {restart.exit_code} after"
                f" {_s(restart.stop_s)} s; new process: first reply {_s(restart.first_answer_s)} s,"
                f" all {n} checks {_s(restart.all_checks_s)} s ({_s(restart.cpu_s)} s of CPU,"
                f" takeover_ms {_ms(restart.takeover_ms)} in its log); {restart.placed:,}"
                f" placed, {restart.moved} moved"
                + (f"; data dir after the stop: {_sizes(restart.files)}" if restart.files else "")
            )
        if r.breakdown is not None:
            b = r.breakdown
            out.append(
                f"  {r.store}: the same load in this process: claim (read + decode)"
                f" {b.claim_s:.2f} s ({b.claim_cpu_s:.2f} s CPU), ClusterState.restore"
                f" {b.restore_s:.2f} s ({b.restore_cpu_s:.2f} s CPU)"
            )
        if r.load_s is not None:
            out.append(f"  {r.store}: loading {n} checks took {r.load_s:.2f} s ({LOAD_PUTS} PUTs)")
        if r.state_get_s is not None and r.checks_get_s is not None:
            out.append(
                f"  {r.store}: the proof of all checks: GET {API} {r.state_get_s * 1e3:.0f} ms,"
                f" {(r.state_get_bytes or 0) / 1e6:.1f} MB (used); GET {API}/checks"
                f" {r.checks_get_s * 1e3:.0f} ms, {(r.checks_get_bytes or 0) / 1e6:.1f} MB"
            )
        if r.checkpointed_files:
            out.append(
                f"  sqlite data file at {n} checks ({r.filesystem}): after"
                f" PRAGMA wal_checkpoint(TRUNCATE) on a copy of what kill -9 left:"
                f" {_sizes(r.checkpointed_files)} = {r.bytes_per_check:.0f} bytes per check"
                " (its config, sources, placement; the nodes included)"
            )
        if r.redis_used_memory is not None:
            out.append(
                f"  redis: used_memory grew {r.redis_used_memory / 1e6:.1f} MB for {n} checks ="
                f" {r.bytes_per_check:.0f} bytes per check"
            )
    noisy = [
        f"{r.store} round {b.round}"
        for r in results.stores
        for b in r.bursts
        if (b.other_cpu_pct or 0.0) > DISTURBED_PCT
    ]
    if noisy:
        out.append(
            f"  NOTE: other processes used more than {DISTURBED_PCT:g}% of a CPU during "
            + ", ".join(noisy)
            + "; those rounds are disturbed."
        )
    return "\n".join(out), goals(results)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.stores", description=__doc__)
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated")
    parser.add_argument("--restart-checks", type=int, default=RESTART_CHECKS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    stores = tuple(s for s in args.stores.split(",") if s)
    unknown = set(stores) - set(STORES)
    if unknown:
        sys.exit(f"unknown store(s): {', '.join(sorted(unknown))}")
    results = run_stores(
        log_dir=args.out / "logs",
        work_dir=args.out,
        stores=stores,
        restart_checks=args.restart_checks,
    )
    text, checked = report(results)
    print(text)
    print()
    for name, ok, detail in checked:
        print(f"{'GOAL MET   ' if ok else 'GOAL MISSED'}: {name}: {detail}")
    (args.out / "stores.json").write_bytes(
        orjson.dumps(results.to_json(), option=orjson.OPT_INDENT_2)
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
