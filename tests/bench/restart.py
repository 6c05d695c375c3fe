"""The restart and failover benchmark (issue 16): 100,000 checks, time to serve them all.

Issue 16's goal: "restart or failover with 100,000 checks serving all of them within 5 s".
Real processes on loopback: the dispatcher is the real command (``clusterchecks-
dispatcher``, log level info to a file, as in production), ``--checks`` checks
(default 100,000: ``--nodes`` 10,000 nodes with 10 checks each) PUT in sources of at most
``SOURCE_CHECKS`` (a PUT body must stay under the 4 MiB limit), the nodes registered
first by one status ``POST`` each (an aiohttp client, ``REGISTER_CONCURRENCY`` at a time),
so that every check is placed and its placement stored, as in a real cluster. The nodes
do not heartbeat again: the dispatchers run with ``--node-expiration-timeout``
``NODE_EXPIRATION_S`` (an hour), so no node expires while the benchmark runs (a restarted
or new leader starts every node's expiry clock afresh anyway). Then each node posts
``--results-per-check`` results (default 5) of each of its checks in one results batch:
each check's history as the default overall bound (``--history-max-total`` 500,000)
leaves it at 100,000 checks, so the store holds 500,000 results besides the checks; the
benchmark waits until the dispatcher (and redis-server) are idle, the store written.

(a) Restart, the durable default store (``--store sqlite --data-dir DIR``, standalone;
    DIR next to the results, on the repository's disk). Loaded, then ``kill -9``, then
    started again on the same data dir and port; then the same after SIGTERM. Timed from
    the new process's start (its ``Popen``):

    - configs: the first ``200`` of ``GET /configs/{node}`` (an agent's fetch) holding
      every check that node had before the stop, not warming up, with the new epoch;
    - all: then the first ``200`` of ``GET /v1/api/clusterchecks`` (the state the admin
      reads: every node with the digests placed on it) from the leader (``is_leader``),
      not warming up, whose nodes hold every one of the checks, each on the node it had
      before the stop. Polled after the configs (the same loaded state answers both,
      and the state route is the heavier one: polling it meanwhile would slow the start
      it measures);
    - history: then the first ``200`` of one check's ``GET /checks/{digest}/history``
      holding every result it held before the stop (a new leader serves the checks
      first and installs the stored history after: reported, no goal).

(b) Failover, Redis (``--election redis --store redis``, two replicas, a real
    ``redis-server`` without persistence), lease ``LEASE_S`` s, renew deadline
    ``RENEW_DEADLINE_S`` s, retry ``RETRY_S`` s (the failover benchmark's settings; with
    the defaults, 15 / 10 / 2 s, a ``kill -9`` leaves the lease held for up to 15 s).
    Loaded through the leader, then the leader is killed (``kill -9``): timed from the
    signal, on the surviving replica, the same three proofs (it answers as the leader,
    with an epoch above the old one). The lease's remaining time-to-live is read from Redis
    (``PTTL``) just before the signal: "after the lease" is the time minus that expiry,
    what the takeover and the load cost. The killed replica is started again and
    follows; then the new leader is stopped with SIGTERM (it releases the lease: no
    expiry to wait for) and the first replica takes over, timed the same way.

The dispatcher processes run with a bytecode cache (``_bytecode_env``), as an
installed package does, whatever this shell's PYTHONDONTWRITEBYTECODE says.

Both report the new leader's CPU seconds when it served every check, its own
``takeover_ms`` (claim + load + state rebuild, from its ``leading`` log line) and, for
the failover, when it won the lease (its ``started_leading`` line's time stamp). Every
placement is compared with the one before the stop (checks moved: goal 0).

Goals (hard: a miss makes ``make bench`` exit 1): every restart serves all the checks,
and a node its configs, within ``GOAL_S`` of the new process's start; a SIGTERM failover
within ``GOAL_S`` of the signal; a ``kill -9`` failover within ``GOAL_S`` of the lease's
expiry (what it waits before that is the lease, a setting); no check moves.

Run alone: ``python -m tests.bench.restart [--checks 100000] [--nodes 10000]
[--results-per-check 5] [--skip-sqlite] [--skip-redis]``.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.bench.failover import placement
from tests.bench.machine import loadavg, machine_busy_s, process_cpu_s
from tests.bench.stats import table
from tests.bench.stores import config
from tests.processes import BIN, ROOT, Proc, dispatcher_argv, free_port
from tests.redis_server import RedisServer

API = "/v1/api/clusterchecks"
HEADERS = {"Content-Type": "application/json"}
CHECKS = 100_000
NODES = 10_000
SOURCE_CHECKS = 10_000
"""Checks per source PUT: 10,000 small configs are about 1.3 MB, under the 4 MiB limit."""
NODE_EXPIRATION_S = 3600.0
REGISTER_CONCURRENCY = 16
RESULTS_PER_CHECK = 5
"""Each check's history after the load: 5 results, what the default overall bound
(``--history-max-total`` 500,000) leaves each of 100,000 checks; 0 posts none."""
RESULTS_INTERVAL_S = 15.0
GOAL_S = 5.0
LEASE_S = 3.0
RENEW_DEADLINE_S = 2.0
RETRY_S = 1.0
LEASE_NAME = "clusterchecks-dispatcher"  # the default --lease-name
START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 120.0
POLL_S = 0.01
DISTURBED_PCT = 20.0  # other processes and steal during a measurement, % of one CPU


# ------------------------------------------------------------------ results


@dataclass
class Serve:
    """One restart or failover, timed from ``origin`` (the new process's start for a
    restart, the signal for a failover)."""

    kind: str  # "restart" | "failover"
    store: str
    signal: str  # "SIGKILL" | "SIGTERM"
    checks: int
    first_reply_s: float | None = None  # to the first HTTP reply of any status
    configs_s: float | None = None  # to the first 200 of the node's configs, all of them
    all_s: float | None = None  # to the first 200 of the state holding every check
    history_s: float | None = None  # to the first 200 of a check's history, all of it
    lease_expiry_s: float | None = None  # failover: to the lease's expiry (PTTL at the kill)
    acquired_s: float | None = None  # failover: to the new leader's started_leading line
    leading_s: float | None = None  # failover: to the new leader's leading line
    takeover_ms: float | None = None  # the new leader's own: claim + load + rebuild
    cpu_s: float | None = None  # the new leader's CPU seconds when it served all
    history_cpu_s: float | None = None  # ... and when its history was back
    stop_s: float | None = None  # restart: the signal to the old process's exit
    exit_code: int | None = None
    placed: int = 0  # checks on a node in the first full answer
    moved: int = 0  # checks on another node than before the stop
    other_cpu_pct: float | None = None  # other processes and steal meanwhile
    loadavg: str = ""

    @property
    def after_lease_s(self) -> float | None:
        """Failover after kill -9: the time past the lease's expiry."""
        if self.all_s is None or self.lease_expiry_s is None:
            return None
        return self.all_s - self.lease_expiry_s

    @property
    def judged_s(self) -> float | None:
        """What the goal is judged on: from the start (restart), the signal (SIGTERM
        failover) or the lease's expiry (kill -9 failover)."""
        if self.kind == "failover" and self.signal == "SIGKILL":
            return self.after_lease_s
        return self.all_s

    @property
    def configs_judged_s(self) -> float | None:
        if self.configs_s is None:
            return None
        if self.kind == "failover" and self.signal == "SIGKILL":
            return None if self.lease_expiry_s is None else self.configs_s - self.lease_expiry_s
        return self.configs_s


@dataclass
class RestartResults:
    checks: int
    nodes: int
    source_checks: int
    results_per_check: int
    node_expiration_s: float
    lease_s: float
    renew_deadline_s: float
    retry_s: float
    sqlite_load_s: float | None = None  # PUTting the checks: all the PUTs
    redis_load_s: float | None = None
    sqlite_results_s: float | None = None  # posting the results: all the posts
    redis_results_s: float | None = None
    sqlite_files: dict[str, int] = field(default_factory=dict)  # data dir after kill -9
    sqlite_rows: dict[str, int] = field(default_factory=dict)  # rows per table then
    state_bytes: int | None = None  # the full state reply
    runs: list[Serve] = field(default_factory=list)
    loadavg_start: str = ""
    loadavg_end: str = ""

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        for item, run in zip(out["runs"], self.runs, strict=True):
            item["after_lease_s"] = run.after_lease_s
            item["judged_s"] = run.judged_s
        return out


# ------------------------------------------------------------------ helpers


class _Meter:
    """Other processes' CPU (and steal) over a measurement, in % of one CPU."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self._start = time.monotonic()
        self._busy = machine_busy_s()
        self._own = self._own_s()

    def _own_s(self) -> float:
        total = time.process_time()
        for pid in self._pids():
            total += process_cpu_s(pid) or 0.0
        return total

    def other_pct(self) -> float | None:
        busy = machine_busy_s()
        if busy is None or self._busy is None:
            return None
        wall = time.monotonic() - self._start
        if wall <= 0:
            return None
        # A new process's CPU counts from zero: the own share is underestimated by what
        # the old one used before the start, which only makes "other" look bigger.
        own = max(0.0, self._own_s() - self._own)
        return max(0.0, busy - self._busy - own) / wall * 100.0


def _bytecode_env(work: Path) -> dict[str, str]:
    """The environment of the dispatcher processes: byte-compiled modules cached under
    the work dir, as an installed package has them. Without it (PYTHONDONTWRITEBYTECODE
    set, as in some CI shells) every start compiles the project's modules again, about
    0.2 s of a restart no deployed dispatcher pays. The first start fills the cache."""
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(work / "pycache")}


def _get(url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[int, bytes]:
    """(status, body); (0, b"") when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""


def _log_events(path: Path, names: set[str]) -> list[dict[str, Any]]:
    found = []
    with contextlib.suppress(OSError), path.open("rb") as lines:
        for line in lines:
            if not any(name.encode() in line for name in names):
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(line)
                if isinstance(event, dict) and event.get("event") in names:
                    found.append(event)
    return found


def _wall(event: dict[str, Any]) -> float | None:
    stamp = event.get("timestamp")
    if not isinstance(stamp, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return None


@dataclass
class _Expected:
    """What a full answer holds: every check on its node, and one node's checks."""

    placement: dict[str, str]
    epoch: int
    node: str
    node_checks: frozenset[str]
    history_check: str
    history_runs: frozenset[str]  # the run ids its history holds (none: no history)


def _expected(state_body: bytes, url: str) -> _Expected:
    state = orjson.loads(state_body)
    where = placement(state)
    by_node: dict[str, set[str]] = {}
    for digest, node in where.items():
        by_node.setdefault(node, set()).add(digest)
    node = max(sorted(by_node), key=lambda n: len(by_node[n]))  # a node with checks
    check = min(by_node[node])
    status, body = _get(f"{url}{API}/checks/{check}/history")
    if status != 200:
        raise RuntimeError(f"GET the history of {check}: {status}")
    runs = frozenset(r["run_id"] for r in orjson.loads(body)["results"])
    return _Expected(where, int(state["epoch"]), node, frozenset(by_node[node]), check, runs)


def _await_serving(
    url: str,
    *,
    origin: float,
    expected: _Expected,
    checks: int,
    identity: str | None,
    pid: int,
    alive: Callable[[], bool],
    describe: Callable[[], str],
    result: Serve,
) -> bytes:
    """Polls the node's configs, then the state, then a check's history, until each
    answers in full (see the module's docstring); fills the times of ``result``;
    returns the full state."""
    deadline = origin + START_TIMEOUT_S

    def check_alive() -> None:
        if not alive():
            raise RuntimeError(f"the dispatcher at {url} exited:\n{describe()[-4000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{url}: not serving all {checks:,} checks {START_TIMEOUT_S:g} s after the"
                f" start or signal:\n{describe()[-4000:]}"
            )

    configs_url = f"{url}{API}/configs/{expected.node}"
    while True:
        check_alive()
        status, body = _get(configs_url)
        now = time.monotonic()
        if status and result.first_reply_s is None:
            result.first_reply_s = now - origin
        if status == 200:
            reply = orjson.loads(body)
            held = {c["digest"] for c in reply["configs"]}
            if (
                int(reply["epoch"]) > expected.epoch
                and not reply.get("warmup")
                and held == expected.node_checks
            ):
                result.configs_s = now - origin
                break
        time.sleep(POLL_S)
    while True:
        check_alive()
        status, body = _get(url + API)
        now = time.monotonic()
        if status == 200:
            state = orjson.loads(body)
            if (
                state["is_leader"]
                and (identity is None or state["leader"] == identity)
                and int(state["epoch"]) > expected.epoch
                and not state["warmup"]
                and state["totals"]["checks"] == checks
                and state["totals"]["dispatched"] == checks
            ):
                after = placement(state)
                result.cpu_s = process_cpu_s(pid)
                result.all_s = now - origin
                result.placed = len(after)
                result.moved = sum(
                    1 for d, node in expected.placement.items() if after.get(d) != node
                )
                break
        time.sleep(POLL_S)
    history_url = f"{url}{API}/checks/{expected.history_check}/history"
    while True:
        check_alive()
        status, history = _get(history_url)
        now = time.monotonic()
        if status == 200:
            runs = {r["run_id"] for r in orjson.loads(history)["results"]}
            if runs >= expected.history_runs:
                result.history_cpu_s = process_cpu_s(pid)
                result.history_s = now - origin
                return body
        time.sleep(POLL_S)


# ------------------------------------------------------------------ loading


def _session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=120.0),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def _post_results(url: str, state_body: bytes, *, per_check: int) -> float:
    """Each node posts ``per_check`` results of each of its checks, in one request (as
    an agent's batch); returns the seconds it took."""
    by_node: dict[str, list[str]] = {}
    for digest, node in placement(orjson.loads(state_body)).items():
        by_node.setdefault(node, []).append(digest)
    nodes = iter(sorted(by_node.items()))
    now = time.time()
    started = time.perf_counter()
    async with _session(REGISTER_CONCURRENCY) as session:

        async def post() -> None:
            for node, digests in nodes:  # one iterator shared by every worker
                results = [
                    {
                        "digest": digest,
                        "run_id": f"{digest[:8]}-{k}",
                        "ok": k % 4 != 3,
                        "errors": [] if k % 4 != 3 else ["GET /healthz: 503"],
                        "started_at": now - (per_check - k) * RESULTS_INTERVAL_S,
                        "duration_s": 0.05,
                    }
                    for digest in digests
                    for k in range(per_check)
                ]
                body = orjson.dumps({"results": results})
                async with session.post(
                    f"{url}{API}/results/{node}", data=body, headers=HEADERS
                ) as r:
                    reply = orjson.loads(await r.read())
                    if r.status != 200 or reply["accepted"] != len(results):
                        raise RuntimeError(f"results of {node}: {r.status} {reply}")

        async with asyncio.TaskGroup() as tasks:
            for k in range(REGISTER_CONCURRENCY):
                tasks.create_task(post(), name=f"results-{k}")
    return time.perf_counter() - started


async def _load(url: str, *, checks: int, nodes: int) -> float:
    """Registers ``nodes`` nodes (one status POST each), then PUTs ``checks`` checks in
    sources of at most SOURCE_CHECKS; returns the seconds the PUTs took."""
    async with _session(REGISTER_CONCURRENCY) as session:
        names = iter(range(nodes))

        async def register() -> None:
            for i in names:  # one iterator shared by every worker: each node once
                body = orjson.dumps(
                    {"last_change": -1, "capacity": 1, "labels": {"zone": f"zone-{i % 10}"}}
                )
                async with session.post(
                    f"{url}{API}/status/node-{i:05d}", data=body, headers=HEADERS
                ) as r:
                    text = await r.text()
                    if r.status != 200:
                        raise RuntimeError(f"registering node-{i:05d}: {r.status} {text[:300]}")

        async with asyncio.TaskGroup() as tasks:
            for k in range(REGISTER_CONCURRENCY):
                tasks.create_task(register(), name=f"register-{k}")
        took = 0.0
        for n, start in enumerate(range(0, checks, SOURCE_CHECKS)):
            keys = range(start, min(checks, start + SOURCE_CHECKS))
            body = orjson.dumps({"configs": [config(f"restart-{k}") for k in keys]})
            sent = time.perf_counter()
            async with session.put(
                f"{url}{API}/sources/restart-{n:03d}", data=body, headers=HEADERS
            ) as r:
                raw = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"PUT restart-{n:03d}: {r.status} {raw[:300]!r}")
            took += time.perf_counter() - sent
        return took


def _await_full(
    url: str, *, checks: int, alive: Callable[[], bool], describe: Callable[[], str]
) -> bytes:
    """The state once every check is placed (right after the load: at once)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the dispatcher at {url} exited:\n{describe()[-4000:]}")
        status, body = _get(url + API)
        if status == 200:
            state = orjson.loads(body)
            if state["is_leader"] and state["totals"]["dispatched"] == checks:
                return body
        time.sleep(0.1)
    raise RuntimeError(f"{url}: the {checks:,} checks were not all placed:\n{describe()[-4000:]}")


def _settle(pids: list[int], *, timeout_s: float = 120.0) -> None:
    """Waits until these processes are idle (under 5 % of a CPU over a second): the
    store writer has written every result the load posted."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = sum(process_cpu_s(pid) or 0.0 for pid in pids)
        time.sleep(1.0)
        if sum(process_cpu_s(pid) or 0.0 for pid in pids) - before < 0.05:
            return
    raise RuntimeError(f"processes {pids} still busy {timeout_s:g} s after the load")


def _rows(data_dir: Path, copy: Path) -> dict[str, int]:
    """Rows per table of the sqlite store, read from a copy of the data dir (opening the
    original would fold its write-ahead log in: not what the restart finds)."""
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(data_dir, copy)
    db = sqlite3.connect(copy / "clusterchecks.db")
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: int(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}
    finally:
        db.close()
        shutil.rmtree(copy, ignore_errors=True)


def _wait_exit(proc: Proc, sig: signal.Signals) -> tuple[float, int | None]:
    sent = time.monotonic()
    proc.signal(sig)
    try:
        code: int | None = proc.wait(timeout_s=60)
    except subprocess.TimeoutExpired:
        proc.signal(signal.SIGKILL)
        proc.wait(timeout_s=10)
        code = None
    return time.monotonic() - sent, code


def _takeover_ms(log_path: Path) -> float | None:
    leading = _log_events(log_path, {"leading"})
    return leading[-1].get("takeover_ms") if leading else None


# ------------------------------------------------------------------ (a) sqlite restart


def _restart_sqlite(
    results: RestartResults, *, work: Path, log_dir: Path, progress: Callable[[str], None]
) -> None:
    data_dir = work / "sqlite-data"
    port = free_port()
    log_path = log_dir / "restart-sqlite.log"
    log_path.unlink(missing_ok=True)
    argv = dispatcher_argv(
        port,
        "--store", "sqlite", "--data-dir", str(data_dir),
        "--node-expiration-timeout", f"{NODE_EXPIRATION_S:g}",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    proc = Proc("restart-sqlite", argv, log_path, env=_bytecode_env(work))
    try:
        proc.start()
        _await_full(url, checks=0, alive=proc.alive, describe=proc.output)
        progress(
            f"restart: sqlite: {results.nodes:,} nodes, {results.checks:,} checks in sources"
            f" of {SOURCE_CHECKS:,}"
        )
        results.sqlite_load_s = asyncio.run(_load(url, checks=results.checks, nodes=results.nodes))
        body = _await_full(url, checks=results.checks, alive=proc.alive, describe=proc.output)
        results.state_bytes = len(body)
        if results.results_per_check:
            progress(f"restart: sqlite: {results.results_per_check} results per check")
            results.sqlite_results_s = asyncio.run(
                _post_results(url, body, per_check=results.results_per_check)
            )
            _settle([proc.pid])
        for sig in (signal.SIGKILL, signal.SIGTERM):
            expected = _expected(body, url)
            run = Serve(kind="restart", store="sqlite", signal=sig.name, checks=results.checks)
            run.stop_s, run.exit_code = _wait_exit(proc, sig)
            if sig is signal.SIGKILL:
                results.sqlite_files = {
                    p.name: p.stat().st_size for p in sorted(data_dir.iterdir()) if p.is_file()
                }
                results.sqlite_rows = _rows(data_dir, work / "rows")
            progress(f"restart: sqlite: {sig.name}, then start again on the same data dir")
            meter = _Meter(lambda: [proc.pid] if proc.alive() else [])
            started = time.monotonic()
            proc.start()
            body = _await_serving(
                url,
                origin=started,
                expected=expected,
                checks=results.checks,
                identity=None,
                pid=proc.pid,
                alive=proc.alive,
                describe=proc.output,
                result=run,
            )
            run.other_cpu_pct = meter.other_pct()
            run.loadavg = loadavg()
            run.takeover_ms = _takeover_ms(log_path)
            results.runs.append(run)
            progress(
                f"restart: sqlite {sig.name}: configs {_s(run.configs_s)} s, all"
                f" {_s(run.all_s)} s, {run.moved} moved"
            )
    finally:
        proc.stop(timeout_s=60)


# ------------------------------------------------------------------ (b) redis failover


@dataclass
class _Replica:
    identity: str
    port: int
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = Proc(self.identity, self.argv, self.log_path, env=self.env).start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def output(self) -> str:
        return self.proc.output() if self.proc is not None else ""


def _leader(replicas: list[_Replica], timeout_s: float = START_TIMEOUT_S) -> _Replica:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for replica in replicas:
            status, body = _get(replica.url + API, timeout_s=REQUEST_TIMEOUT_S)
            if status == 200:
                state = orjson.loads(body)
                if state["is_leader"] and state["leader"] == replica.identity:
                    return replica
        time.sleep(0.1)
    raise RuntimeError(
        "restart: no replica leads:\n" + "\n".join(r.output()[-2000:] for r in replicas)
    )


def _follows(replica: _Replica, leader: _Replica, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not replica.alive():
            raise RuntimeError(f"{replica.identity} exited:\n{replica.output()[-3000:]}")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(replica.url + "/healthz", timeout=2.0) as reply,
        ):
            if reply.headers.get("X-Clusterchecks-Leader") == leader.identity:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{replica.identity} does not follow {leader.identity}")


def _pttl_ms(redis: RedisServer) -> int:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    try:
        return int(client.pttl(f"{LEASE_NAME}:lease"))
    finally:
        client.close()


def _failover_redis(
    results: RestartResults, *, work: Path, log_dir: Path, progress: Callable[[str], None]
) -> None:
    redis = RedisServer(port=free_port(), workdir=work)
    replicas: list[_Replica] = []
    try:
        redis.start()
        for i in (1, 2):
            identity = f"r-{i}"
            port = free_port()
            path = log_dir / f"restart-redis-{identity}.log"
            path.unlink(missing_ok=True)
            argv = [
                str(BIN / "clusterchecks-dispatcher"),
                "--election", "redis", "--store", "redis", "--redis-url", redis.url,
                "--lease-duration", f"{LEASE_S:g}",
                "--renew-deadline", f"{RENEW_DEADLINE_S:g}",
                "--retry-period", f"{RETRY_S:g}",
                "--node-expiration-timeout", f"{NODE_EXPIRATION_S:g}",
                "--identity", identity,
                "--host", "127.0.0.1", "--port", str(port),
                "--log-format", "json",
            ]  # fmt: skip
            replicas.append(_Replica(identity, port, argv, path, _bytecode_env(work)))
        replicas[0].start()
        leader = _leader(replicas[:1])  # the first leads; the second follows
        replicas[1].start()
        _follows(replicas[1], leader)
        progress(
            f"restart: redis: {results.nodes:,} nodes, {results.checks:,} checks through"
            f" {leader.identity}"
        )
        results.redis_load_s = asyncio.run(
            _load(leader.url, checks=results.checks, nodes=results.nodes)
        )
        body = _await_full(
            leader.url, checks=results.checks, alive=leader.alive, describe=leader.output
        )
        if results.results_per_check:
            progress(f"restart: redis: {results.results_per_check} results per check")
            results.redis_results_s = asyncio.run(
                _post_results(leader.url, body, per_check=results.results_per_check)
            )
            assert leader.proc is not None
            assert redis.process is not None
            _settle([leader.proc.pid, redis.process.pid])
        for sig in (signal.SIGKILL, signal.SIGTERM):
            expected = _expected(body, leader.url)
            victim = leader
            survivor = next(r for r in replicas if r is not victim)
            assert victim.proc is not None
            assert survivor.proc is not None
            run = Serve(kind="failover", store="redis", signal=sig.name, checks=results.checks)
            progress(f"restart: redis: {sig.name} the leader {victim.identity}")
            watched = [p.pid for p in (survivor.proc, redis.process) if p is not None]
            meter = _Meter(watched.copy)
            pttl = _pttl_ms(redis) if sig is signal.SIGKILL else None
            sent, sent_wall = time.monotonic(), time.time()
            victim.proc.signal(sig)
            if pttl is not None:
                # The time read before the signal: the key lives at most this much after it.
                run.lease_expiry_s = max(0, pttl) / 1000.0 + (time.monotonic() - sent)
            body = _await_serving(
                survivor.url,
                origin=sent,
                expected=expected,
                checks=results.checks,
                identity=survivor.identity,
                pid=survivor.proc.pid,
                alive=survivor.alive,
                describe=survivor.output,
                result=run,
            )
            run.other_cpu_pct = meter.other_pct()
            run.loadavg = loadavg()
            events = _log_events(survivor.log_path, {"started_leading", "leading"})
            for event in events:
                wall = _wall(event)
                if wall is None or wall < sent_wall:
                    continue
                if event["event"] == "started_leading" and run.acquired_s is None:
                    run.acquired_s = wall - sent_wall
                if event["event"] == "leading" and run.leading_s is None:
                    run.leading_s = wall - sent_wall
                    run.takeover_ms = event.get("takeover_ms")
            run.exit_code = victim.proc.wait(timeout_s=60)
            results.runs.append(run)
            progress(
                f"restart: redis {sig.name}: configs {_s(run.configs_s)} s, all {_s(run.all_s)}"
                f" s after the signal (lease expiry {_s(run.lease_expiry_s)} s, won the lease"
                f" {_s(run.acquired_s)} s, takeover {_ms(run.takeover_ms)} ms), {run.moved} moved"
            )
            leader = survivor
            victim.start()  # the next failover goes back to it
            _follows(victim, leader)
    finally:
        for replica in replicas:
            if replica.proc is not None:
                try:
                    replica.proc.stop(timeout_s=60)
                except Exception as exc:  # go on with the others
                    progress(f"restart: stopping {replica.identity} failed: {exc!r}")
        redis.stop()


# ------------------------------------------------------------------ run and report


def run_restart(
    *,
    log_dir: Path,
    work_dir: Path,
    checks: int = CHECKS,
    nodes: int = NODES,
    results_per_check: int = RESULTS_PER_CHECK,
    sqlite: bool = True,
    redis: bool = True,
    progress: Callable[[str], None] = print,
) -> RestartResults:
    log_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    results = RestartResults(
        checks=checks,
        nodes=nodes,
        source_checks=SOURCE_CHECKS,
        results_per_check=results_per_check,
        node_expiration_s=NODE_EXPIRATION_S,
        lease_s=LEASE_S,
        renew_deadline_s=RENEW_DEADLINE_S,
        retry_s=RETRY_S,
        loadavg_start=loadavg(),
    )
    # The data dir next to the results, on the repository's disk: on a tmpfs every
    # commit and read would be free.
    with tempfile.TemporaryDirectory(prefix="restart-", dir=work_dir) as tmp:
        work = Path(tmp)
        if sqlite:
            _restart_sqlite(results, work=work, log_dir=log_dir, progress=progress)
        if redis:
            _failover_redis(results, work=work, log_dir=log_dir, progress=progress)
    results.loadavg_end = loadavg()
    return results


def _s(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def goals(results: RestartResults) -> list[tuple[str, bool, str]]:
    """(name, ok, detail) of each goal; all hard."""
    out: list[tuple[str, bool, str]] = []
    n = f"{results.checks:,}"
    for run in results.runs:
        if run.kind == "restart":
            signal_name = "kill -9" if run.signal == "SIGKILL" else "SIGTERM"
            what = f"{run.store} restart after {signal_name}"
            origin = "the new process's start"
        elif run.signal == "SIGKILL":
            what = f"{run.store} failover after kill -9"
            origin = "the lease's expiry"
        else:
            what = f"{run.store} failover after SIGTERM"
            origin = "the signal"
        judged, configs = run.judged_s, run.configs_judged_s
        out.append(
            (
                f"restart: {what}: all {n} checks served within {GOAL_S:g} s of {origin}",
                judged is not None
                and judged < GOAL_S
                and configs is not None
                and configs < GOAL_S
                and run.moved == 0,
                f"all {_s(judged)} s, a node's configs {_s(configs)} s"
                + (
                    f" (from the kill: {_s(run.all_s)} s / {_s(run.configs_s)} s, lease expiry"
                    f" {_s(run.lease_expiry_s)} s)"
                    if run.lease_expiry_s is not None
                    else ""
                )
                + f"; {run.moved} of {run.placed:,} moved",
            )
        )
    return out


def report(results: RestartResults) -> tuple[str, list[tuple[str, bool, str]]]:
    n = f"{results.checks:,}"
    out = [
        f"Restart and failover with {n} checks on {results.nodes:,} nodes (sources of"
        f" {results.source_checks:,}; {results.results_per_check} results per check in"
        f" history; nodes registered once, --node-expiration-timeout"
        f" {results.node_expiration_s:g}); redis: 2 replicas, lease {results.lease_s:g} s,"
        f" renew deadline {results.renew_deadline_s:g} s, retry {results.retry_s:g} s."
        " Times from the new process's start (restart) or the signal (failover) to the first"
        " 200 of a node's configs and of the state holding every check",
        "",
    ]
    rows = []
    for run in results.runs:
        rows.append(
            [
                f"{run.store} {run.kind}",
                "kill -9" if run.signal == "SIGKILL" else "SIGTERM",
                _s(run.first_reply_s),
                _s(run.configs_s),
                _s(run.all_s),
                _s(run.history_s),
                _s(run.lease_expiry_s),
                _s(run.acquired_s),
                _s(run.after_lease_s),
                _ms(run.takeover_ms),
                f"{_s(run.cpu_s)} / {_s(run.history_cpu_s)}",
                f"{run.moved}",
                _s(run.other_cpu_pct).replace(".00", ""),
                run.loadavg,
            ]
        )
    out.append(
        table(
            [
                "what",
                "signal",
                "first reply s",
                "configs s",
                "all s",
                "history s",
                "lease expiry s",
                "won lease s",
                "all - expiry s",
                "takeover ms",
                "leader cpu s: all / history",
                "moved",
                "other cpu %",
                "load avg",
            ],
            rows,
        )
    )
    if results.sqlite_load_s is not None:
        files = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in results.sqlite_files.items())
        out.append(
            f"  sqlite: loading {n} checks took {results.sqlite_load_s:.1f} s of PUTs; after"
            f" kill -9 the data dir held {files}; rows: "
            + ", ".join(f"{k} {v:,}" for k, v in results.sqlite_rows.items())
        )
    if results.redis_load_s is not None:
        out.append(f"  redis: loading {n} checks took {results.redis_load_s:.1f} s of PUTs")
    for store, took in (("sqlite", results.sqlite_results_s), ("redis", results.redis_results_s)):
        if took is not None:
            out.append(
                f"  {store}: {results.results_per_check} results per check posted in"
                f" {took:.1f} s (history s: to the first 200 of a check's history holding them)"
            )
    if results.state_bytes is not None:
        out.append(f"  the full state reply: {results.state_bytes / 1e6:.1f} MB")
    out.append(
        "  takeover ms: the new leader's own time from winning the term to serving"
        " (claim + load + rebuild); won lease: its started_leading line after the signal"
    )
    noisy = [r for r in results.runs if (r.other_cpu_pct or 0.0) > DISTURBED_PCT]
    if noisy:
        out.append(
            f"  NOTE: other processes took more than {DISTURBED_PCT:g}% of a CPU during "
            + ", ".join(f"{r.store} {r.signal}" for r in noisy)
            + "; those times may be inflated."
        )
    out.append(f"  load average {results.loadavg_start} -> {results.loadavg_end}")
    return "\n".join(out), goals(results)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.restart", description=__doc__)
    parser.add_argument("--checks", type=int, default=CHECKS)
    parser.add_argument("--nodes", type=int, default=NODES)
    parser.add_argument(
        "--results-per-check", type=int, default=RESULTS_PER_CHECK, help="history; 0: none"
    )
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    results = run_restart(
        log_dir=args.out / "logs",
        work_dir=args.out,
        checks=args.checks,
        nodes=args.nodes,
        results_per_check=args.results_per_check,
        sqlite=not args.skip_sqlite,
        redis=not args.skip_redis,
    )
    text, checked = report(results)
    print(text)
    print()
    for name, ok, detail in checked:
        print(f"{'GOAL MET   ' if ok else 'GOAL MISSED'}: {name}: {detail}")
    (args.out / "restart.json").write_bytes(
        orjson.dumps(results.to_json(), option=orjson.OPT_INDENT_2)
    )
    missed = [name for name, ok, _ in checked if not ok]
    if missed:
        sys.exit("goal(s) missed: " + "; ".join(missed))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
