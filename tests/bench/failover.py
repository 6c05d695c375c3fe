"""The failover benchmark (issue 4): real Redis, three dispatcher replicas, real agents.

Processes on loopback: Debian's ``redis-server`` on a free port, three dispatcher replicas
(``--election redis --store redis``, lease 3 s, renew deadline 2 s, retry 1 s, node
expiry 6 s, heartbeat 1 s, log level warning), a few node agents listing every replica
(each in a different order) and cheap ``tcp`` checks against the Redis port, PUT as one
source (distinct by ``init_config``, which a tcp check ignores but the digest includes).

1. Failover time. Repetitions alternate kill -9 and SIGTERM of the current leader. The
   clock runs from the signal to the first ``200`` reply of ``GET /v1/api/clusterchecks``
   with ``"is_leader": true`` from a surviving replica (both polled in turn every ~20 ms;
   a follower's reply is the new leader's, forwarded). Then the killed replica is started
   again (same identity and port) and the next repetition waits until it follows, plus a
   random part of a retry period so that the kills fall at every phase of the renewals.
   Bounds: lease + retry for kill -9 (the lease runs out at most a lease after the last
   renewal, a follower tries every retry period), retry for SIGTERM (the lease is
   released on the way out).
2. Checks moved by each failover: the placement (digest -> node, the state route's
   ``nodes[].configs``) from the leader just before the signal, against the one in the
   first reply of the new leader and the one ~2 s later.
3. Redis round trips per heartbeat and per schedule. ``MONITOR`` (on a raw socket, in a
   thread) sees every command Redis runs with its client; an ``EVALSHA`` is attributed
   by its SHA (sha1 of the script text in ``dispatcher/election/redis.py`` and
   ``dispatcher/storage/redis.py``), so the elector's renewals (every retry period on
   each replica) are told apart from the store's calls exactly. ``INFO commandstats``
   deltas, minus the renewals of an idle window scaled to the same length, are shown as
   a cross-check. Measured: an idle window (the real agents keep heartbeating), a
   simulated node's heartbeats with an unchanged ``last_change`` sent straight to the
   leader, and source PUTs of 1 and of 100 new checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import re
import resource
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dispatcher.election import redis as election_redis
from dispatcher.storage import redis as storage_redis
from dispatcher.storage import replicas as storage_replicas
from tests.bench.agent import parse_metrics
from tests.bench.machine import loadavg, machine_busy_s, machine_steal_s
from tests.bench.stats import median, percentile
from tests.processes import BIN, Proc, free_port
from tests.redis_server import RedisServer

LEASE_S = 3.0
RENEW_DEADLINE_S = 2.0
RETRY_S = 1.0
EXPIRY_S = 6.0
HEARTBEAT_S = 1.0
REPLICAS = 3
AGENTS = 4
CHECKS = 30
POLL_S = 0.02
SLACK_S = 1.0  # the goals allow this much over the bounds
KILL_BOUND_S = LEASE_S + RETRY_S
TERM_BOUND_S = RETRY_S
LATER_S = 2.0  # the second look at the placement, after the takeover
TAKEOVER_TIMEOUT_S = 20.0
HEARTBEATS = 1000
DISTURBED_PCT = 20.0  # other processes and steal over the section, in % of one CPU
IDLE_S = 5.0
API = "/v1/api/clusterchecks"
SOURCE = "bench"
LEADER_HEADER = "X-Clusterchecks-Leader"
STATUS_ROUTE = 'route="node_status"'

SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}
BOUNDS = {"SIGKILL": KILL_BOUND_S, "SIGTERM": TERM_BOUND_S}


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # as redis-py's register_script


# The scripts by SHA: what an EVALSHA in MONITOR's output is.
SCRIPTS = {
    _sha(election_redis._ACQUIRE_OR_RENEW): "lease acquire/renew",
    _sha(election_redis._RELEASE): "lease release",
    _sha(storage_redis._CLAIM): "store claim",
    _sha(storage_redis._WRITE): "store write",
    _sha(storage_redis._HISTORY): "history write",
    _sha(storage_replicas._PUBLISH): "replica status",
}
LEASE_SCRIPTS = frozenset(s for s, what in SCRIPTS.items() if what.startswith("lease"))
# Calls that no heartbeat or PUT makes: the agents' results going to the history (the
# real agents post theirs throughout), and each replica's status, every few seconds.
# Counted apart: they once counted as store calls and failed the goals below whenever
# one fell in a window.
BACKGROUND_SCRIPTS = frozenset(
    s for s, what in SCRIPTS.items() if what in ("history write", "replica status")
)
CHUNK_RECORDS = storage_redis.CHUNK_RECORDS  # records per store write call
CONNECTION_COMMANDS = frozenset({"client", "hello", "select", "ping", "auth"})


# --------------------------------------------------------------------------- results


@dataclass
class FailoverRun:
    signal: str  # SIGKILL | SIGTERM
    rep: int
    victim: str
    new_leader: str
    answered_by: str  # the surviving replica whose reply came first (maybe forwarded)
    seconds: float  # signal to the first 200 with is_leader true
    old_epoch: int
    new_epoch: int
    checks: int  # placed before the signal
    moved_at_takeover: int
    moved_later: int  # ~LATER_S after the takeover
    polls: int  # requests sent until the answer
    stale: int  # replies that were the victim's own, forwarded by a follower before it stopped
    exit_s: float | None  # SIGTERM: signal to the process's exit
    rejoin_s: float  # restart to knowing the leader (following it, normally), ~50 ms
    term_held: bool = True  # the new leader still led the same term at the later look
    later_leader: str = ""  # who led at the later look
    later_epoch: int = 0
    rejoined_following: str = ""  # the leader the restarted replica named


@dataclass
class FailoverSeries:
    signal: str
    reps: int
    bound_s: float  # the bound
    goal_s: float  # bound + slack
    median_s: float
    p90_s: float
    worst_s: float
    best_s: float
    moved: int  # over every repetition, at takeover and later
    goal_ok: bool


@dataclass
class RoundTrips:
    """Redis commands in one window, attributed by MONITOR (scripts by SHA)."""

    label: str
    operations: int  # heartbeats or PUTs in the window
    window_s: float
    store_calls: int  # every command but the elector's, the background ones, connection setup
    store_writes: int  # EVALSHA of the store's write script
    lease_calls: int  # the elector's renewals (and releases)
    background_calls: int  # history writes of the agents' results, replica status
    commands: dict[str, int]  # what ran, by kind (top level, not inside scripts)
    in_scripts: dict[str, int]  # what the scripts ran (MONITOR's "lua" client)
    evalsha_delta: int  # INFO commandstats, over the window
    renewals_expected: float  # the idle window's EVALSHA rate times this window's length
    reply_ms: float | None = None  # for a PUT: the request's time

    @property
    def per_operation(self) -> float:
        return self.store_calls / self.operations if self.operations else math.nan

    @property
    def commandstats_store_calls(self) -> float:
        """The cross-check: EVALSHA calls minus the renewals an idle window would have."""
        return self.evalsha_delta - self.renewals_expected


@dataclass
class FailoverResults:
    replicas: int
    agents: int
    checks: int
    lease_s: float
    renew_deadline_s: float
    retry_s: float
    expiry_s: float
    heartbeat_s: float
    reps: int
    runs: list[FailoverRun] = field(default_factory=list)
    series: list[FailoverSeries] = field(default_factory=list)
    moved_total: int = 0
    terms_lost: int = 0  # new leaders that no longer led the same term ~2 s after takeover
    # The replicas' warnings and errors, "event: reason", counted (forward_failed left out:
    # the polling makes many while the leader is down).
    replica_warnings: dict[str, int] = field(default_factory=dict)
    idle: RoundTrips | None = None
    idle_heartbeats: int = 0  # status POSTs the leader served in the idle window
    heartbeat: RoundTrips | None = None
    heartbeats_up_to_date: int = 0
    schedules: list[RoundTrips] = field(default_factory=list)
    duration_s: float = 0.0
    busy_cpu_pct: float | None = None  # every CPU, over the section, in % of one CPU
    own_cpu_pct: float | None = None  # this benchmark's processes (Redis, replicas, agents)
    other_cpu_pct: float | None = None  # everything else
    steal_cpu_pct: float | None = None
    loadavg_start: str = ""
    loadavg_end: str = ""

    @property
    def disturbed(self) -> bool:
        return (self.other_cpu_pct or 0.0) + (self.steal_cpu_pct or 0.0) > DISTURBED_PCT

    @property
    def heartbeat_ok(self) -> bool:
        return self.heartbeat is not None and self.heartbeat.store_calls == 0

    @property
    def schedule_ok(self) -> bool:
        return bool(self.schedules) and all(
            s.store_calls == s.operations and s.store_writes == s.operations for s in self.schedules
        )

    def to_json(self) -> dict[str, object]:
        def window(w: RoundTrips | None) -> dict[str, object] | None:
            if w is None:
                return None
            return {
                **{k: getattr(w, k) for k in w.__dataclass_fields__},
                "per_operation": w.per_operation,
                "commandstats_store_calls": w.commandstats_store_calls,
            }

        return {
            "replicas": self.replicas,
            "agents": self.agents,
            "checks": self.checks,
            "lease_s": self.lease_s,
            "renew_deadline_s": self.renew_deadline_s,
            "retry_s": self.retry_s,
            "expiry_s": self.expiry_s,
            "heartbeat_s": self.heartbeat_s,
            "reps": self.reps,
            "runs": [vars(r) for r in self.runs],
            "series": [vars(s) for s in self.series],
            "moved_total": self.moved_total,
            "terms_lost": self.terms_lost,
            "replica_warnings": self.replica_warnings,
            "idle": window(self.idle),
            "idle_heartbeats": self.idle_heartbeats,
            "heartbeat": window(self.heartbeat),
            "heartbeats_up_to_date": self.heartbeats_up_to_date,
            "schedules": [window(s) for s in self.schedules],
            "heartbeat_ok": self.heartbeat_ok,
            "schedule_ok": self.schedule_ok,
            "duration_s": self.duration_s,
            "busy_cpu_pct": self.busy_cpu_pct,
            "own_cpu_pct": self.own_cpu_pct,
            "other_cpu_pct": self.other_cpu_pct,
            "steal_cpu_pct": self.steal_cpu_pct,
            "loadavg_start": self.loadavg_start,
            "loadavg_end": self.loadavg_end,
            "disturbed": self.disturbed,
        }


# --------------------------------------------------------------------------- HTTP


def _request(
    method: str, url: str, body: object = None, *, timeout_s: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One request; HTTP errors are returned as (status, headers, body), not raised."""
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload: bytes = response.read()
            return response.status, dict(response.headers.items()), payload
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def _json(method: str, url: str, body: object = None, *, timeout_s: float = 5.0) -> Any:
    status, _, payload = _request(method, url, body, timeout_s=timeout_s)
    if status != 200:
        raise RuntimeError(f"{method} {url}: {status} {payload[:300]!r}")
    return orjson.loads(payload)


def placement(state: dict[str, Any]) -> dict[str, str]:
    return {digest: node["name"] for node in state["nodes"] for digest in node["configs"]}


def _moved(before: dict[str, str], after: dict[str, str]) -> int:
    return sum(1 for digest, node in before.items() if after.get(digest) != node)


# --------------------------------------------------------------------------- Redis


@dataclass(frozen=True)
class Command:
    at: float  # Redis's wall clock
    client: str  # "127.0.0.1:port", or "lua" inside a script
    name: str  # lower case
    arg: str  # the first argument (a script's SHA for EVALSHA)


_MONITOR_LINE = re.compile(rb'^\+(\d+\.\d+) \[\d+ ([^\]]+)\] "([^"]*)"(?: "([^"]*)")?')


class RedisMonitor:
    """``MONITOR`` on a raw socket, read by a thread until ``close``."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self._sock.sendall(b"MONITOR\r\n")
        self._buffer = b""
        first = self._line()
        if first != b"+OK":
            raise RuntimeError(f"MONITOR refused: {first!r}")
        self._sock.settimeout(None)
        self._lock = threading.Lock()
        self._commands: list[Command] = []
        self._thread = threading.Thread(target=self._read, name="redis-monitor", daemon=True)
        self._thread.start()

    def _line(self) -> bytes | None:
        while b"\r\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while (line := self._line()) is not None:
                match = _MONITOR_LINE.match(line)
                if match is None:
                    continue
                command = Command(
                    at=float(match[1]),
                    client=match[2].decode(),
                    name=match[3].decode().lower(),
                    arg=(match[4] or b"").decode(),
                )
                with self._lock:
                    self._commands.append(command)

    def between(self, start: float, end: float, *, exclude: frozenset[str]) -> list[Command]:
        with self._lock:
            return [c for c in self._commands if start <= c.at <= end and c.client not in exclude]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5.0)


class RedisInfo:
    """``INFO commandstats`` on one raw connection (its address is left out of MONITOR's
    counts)."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        host, local_port = self._sock.getsockname()[:2]
        self.address = f"{host}:{local_port}"

    def calls(self) -> dict[str, int]:
        self._sock.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data:
            data += self._sock.recv(65536)
        header, rest = data.split(b"\r\n", 1)
        if not header.startswith(b"$"):
            raise RuntimeError(f"INFO failed: {header!r}")
        size = int(header[1:])
        while len(rest) < size + 2:
            rest += self._sock.recv(65536)
        calls: dict[str, int] = {}
        for line in rest[:size].decode().splitlines():
            if line.startswith("cmdstat_"):
                name, _, stats = line.partition(":")
                fields = dict(item.split("=", 1) for item in stats.split(","))
                calls[name.removeprefix("cmdstat_")] = int(fields["calls"])
        return calls

    def close(self) -> None:
        self._sock.close()


def _kind(command: Command) -> str:
    if command.name == "evalsha":
        return SCRIPTS.get(command.arg, f"evalsha {command.arg[:12]}")
    if command.name in CONNECTION_COMMANDS:
        return f"connection setup ({command.name})"
    if command.name == "script":
        return f"script {command.arg.lower()}"
    return command.name


def _attribute(
    label: str,
    commands: list[Command],
    *,
    operations: int,
    window_s: float,
    evalsha_delta: int,
    renewal_rate: float,
    reply_ms: float | None = None,
) -> RoundTrips:
    top = [c for c in commands if c.client != "lua"]
    kinds = Counter(_kind(c) for c in top)
    lease = sum(1 for c in top if c.name == "evalsha" and c.arg in LEASE_SCRIPTS)
    setup = sum(n for k, n in kinds.items() if k.startswith("connection setup"))
    background = sum(1 for c in top if c.name == "evalsha" and c.arg in BACKGROUND_SCRIPTS)
    return RoundTrips(
        label=label,
        operations=operations,
        window_s=window_s,
        store_calls=len(top) - lease - setup - background,
        store_writes=kinds.get("store write", 0),
        lease_calls=lease,
        background_calls=background,
        commands=dict(sorted(kinds.items())),
        in_scripts=dict(sorted(Counter(c.name for c in commands if c.client == "lua").items())),
        evalsha_delta=evalsha_delta,
        renewals_expected=renewal_rate * window_s,
        reply_ms=reply_ms,
    )


# ----------------------------------------------------------------------- processes


@dataclass
class Replica:
    identity: str
    port: int
    argv: list[str]
    log_path: Path
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = Proc(self.identity, self.argv, self.log_path).start()


def _wait_for(
    what: str, probe: Callable[[], bool], *, timeout_s: float, procs: list[Proc]
) -> float:
    started = time.perf_counter()
    deadline = started + timeout_s
    while time.perf_counter() < deadline:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.output()[-3000:]}")
        try:
            if probe():
                return time.perf_counter() - started
        except (urllib.error.URLError, OSError, RuntimeError):
            pass
        time.sleep(0.05)
    tails = "\n".join(f"--- {p.name}:\n{p.output()[-2000:]}" for p in procs)
    raise RuntimeError(
        f"failover bench: timed out after {timeout_s:g} s waiting for {what}\n{tails}"
    )


def _configs(port: int, count: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "tcp",
            "instances": [{"host": "127.0.0.1", "port": port}],
            "init_config": {"bench": f"{tag}-{i:04d}"},
            "interval_s": 1,
        }
        for i in range(count)
    ]


def _warnings(paths: list[Path]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for path in paths:
        with contextlib.suppress(OSError), path.open("rb") as lines:
            for line in lines:
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    counts["(not JSON)"] += 1
                    continue
                event = str(entry.get("event"))
                if event == "forward_failed" or entry.get("level") not in ("warning", "error"):
                    continue
                detail = str(entry.get("reason") or entry.get("error") or "")[:80]
                counts[f"{event}: {detail}" if detail else event] += 1
    return dict(counts.most_common())


def _own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended and been waited for
    (every process the section starts is, by its end)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


# ------------------------------------------------------------------------------ run


def run_failover(
    *,
    log_dir: Path,
    reps: int = 20,
    agents: int = AGENTS,
    checks: int = CHECKS,
    heartbeats: int = HEARTBEATS,
    progress: Callable[[str], None] = print,
    seed: int | None = None,
) -> FailoverResults:
    log_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    results = FailoverResults(
        replicas=REPLICAS,
        agents=agents,
        checks=checks,
        lease_s=LEASE_S,
        renew_deadline_s=RENEW_DEADLINE_S,
        retry_s=RETRY_S,
        expiry_s=EXPIRY_S,
        heartbeat_s=HEARTBEAT_S,
        reps=reps,
        loadavg_start=loadavg(),
    )
    started = time.perf_counter()
    busy0, steal0, own0 = machine_busy_s(), machine_steal_s(), _own_cpu_s()
    with tempfile.TemporaryDirectory(prefix="failover-bench-") as workdir:
        redis = RedisServer(port=free_port(), workdir=Path(workdir))
        replicas: list[Replica] = []
        agent_procs: list[Proc] = []
        try:
            redis.start()
            for i in range(1, REPLICAS + 1):
                identity = f"d-{i}"
                port = free_port()
                path = log_dir / f"failover-{identity}.log"
                path.unlink(missing_ok=True)
                argv = [
                    str(BIN / "clusterchecks-dispatcher"),
                    "--election", "redis", "--store", "redis",
                    "--redis-url", redis.url,
                    "--lease-duration", f"{LEASE_S:g}",
                    "--renew-deadline", f"{RENEW_DEADLINE_S:g}",
                    "--retry-period", f"{RETRY_S:g}",
                    "--node-expiration-timeout", f"{EXPIRY_S:g}",
                    "--heartbeat-interval", f"{HEARTBEAT_S:g}",
                    "--identity", identity,
                    "--host", "127.0.0.1",
                    "--port", str(port),
                    "--log-format", "json",
                    "--log-level", "warning",
                ]  # fmt: skip
                replicas.append(Replica(identity, port, argv, path))
            _run(
                results,
                redis=redis,
                replicas=replicas,
                agent_procs=agent_procs,
                log_dir=log_dir,
                rng=rng,
                heartbeats=heartbeats,
                progress=progress,
            )
        finally:
            # Every process, even when stopping another one fails.
            for proc in [*agent_procs, *(r.proc for r in replicas if r.proc is not None)]:
                try:
                    proc.stop()
                except Exception as exc:  # go on with the others
                    progress(f"failover: stopping {proc.name} failed: {exc!r}")
            redis.stop()
    wall = time.perf_counter() - started
    busy1, steal1 = machine_busy_s(), machine_steal_s()
    results.duration_s = wall
    results.loadavg_end = loadavg()
    results.own_cpu_pct = 100.0 * (_own_cpu_s() - own0) / wall
    if busy0 is not None and busy1 is not None:
        results.busy_cpu_pct = 100.0 * (busy1 - busy0) / wall
        steal = (steal1 - steal0) if steal0 is not None and steal1 is not None else 0.0
        results.steal_cpu_pct = 100.0 * steal / wall
        results.other_cpu_pct = max(0.0, results.busy_cpu_pct - results.own_cpu_pct) - (
            results.steal_cpu_pct
        )
        results.other_cpu_pct = max(0.0, results.other_cpu_pct)
    for name in SIGNALS:
        mine = [r for r in results.runs if r.signal == name]
        if not mine:
            continue
        times = [r.seconds for r in mine]
        goal_s = BOUNDS[name] + SLACK_S
        results.series.append(
            FailoverSeries(
                signal=name,
                reps=len(mine),
                bound_s=BOUNDS[name],
                goal_s=goal_s,
                median_s=median(times),
                p90_s=percentile(times, 90),
                worst_s=max(times),
                best_s=min(times),
                moved=sum(r.moved_at_takeover + r.moved_later for r in mine),
                goal_ok=len(mine) == reps and max(times) <= goal_s,
            )
        )
    results.moved_total = sum(r.moved_at_takeover + r.moved_later for r in results.runs)
    results.terms_lost = sum(1 for r in results.runs if not r.term_held)
    results.replica_warnings = _warnings(
        [log_dir / f"failover-d-{i}.log" for i in range(1, REPLICAS + 1)]
    )
    return results


def _run(
    results: FailoverResults,
    *,
    redis: RedisServer,
    replicas: list[Replica],
    agent_procs: list[Proc],
    log_dir: Path,
    rng: random.Random,
    heartbeats: int,
    progress: Callable[[str], None],
) -> None:
    progress(
        f"failover: Redis on port {redis.port}, {REPLICAS} replicas, {results.agents} agents,"
        f" {results.checks} tcp checks"
    )
    for replica in replicas:
        replica.start()

    def live() -> list[Proc]:
        return [r.proc for r in replicas if r.proc is not None] + agent_procs

    def leader_of(replica: Replica) -> str | None:
        state = _json("GET", replica.url + API, timeout_s=2.0)
        return str(state["leader"]) if state.get("is_leader") else None

    _wait_for("a leader", lambda: leader_of(replicas[0]) is not None, timeout_s=30.0, procs=live())
    urls = [r.url for r in replicas]
    for i in range(results.agents):
        name = f"a{i + 1}"
        path = log_dir / f"failover-{name}.log"
        path.unlink(missing_ok=True)
        order = urls[i % len(urls) :] + urls[: i % len(urls)]
        argv = [
            str(BIN / "clusterchecks-agent"),
            "--dispatcher-url", ",".join(order),
            "--name", name,
            "--host", "127.0.0.1",
            "--port", str(free_port()),
            "--log-format", "json",
            "--log-level", "warning",
        ]  # fmt: skip
        agent_procs.append(Proc(name, argv, path).start())

    def registered() -> bool:
        state = _json("GET", replicas[0].url + API, timeout_s=2.0)
        return len(state["nodes"]) == results.agents

    _wait_for("the agents to register", registered, timeout_s=30.0, procs=live())
    _json(
        "PUT",
        f"{replicas[0].url}{API}/sources/{SOURCE}",
        {"configs": _configs(redis.port, results.checks, "failover")},
    )

    def all_placed() -> bool:
        state = _json("GET", replicas[0].url + API, timeout_s=2.0)
        return int(state["totals"]["dispatched"]) == results.checks and not state["dangling"]

    _wait_for("the checks to be placed", all_placed, timeout_s=30.0, procs=live())
    time.sleep(2.0)  # the agents fetch and start them

    by_identity = {r.identity: r for r in replicas}
    order = ["SIGKILL", "SIGTERM"] * results.reps
    for n, name in enumerate(order):
        rep = n // 2 + 1
        run = _failover(
            name,
            rep=rep,
            replicas=replicas,
            by_identity=by_identity,
            agent_procs=agent_procs,
        )
        results.runs.append(run)
        progress(
            f"failover: {name} {rep}/{results.reps}: {run.victim} -> {run.new_leader}"
            f" in {run.seconds:.3f} s, moved {run.moved_at_takeover}+{run.moved_later}"
        )
        time.sleep(rng.uniform(0.0, RETRY_S))  # any phase of the leader's renewals

    _round_trips(results, redis=redis, replicas=replicas, heartbeats=heartbeats, progress=progress)


def _current_leader(
    replicas: list[Replica], *, timeout_s: float = TAKEOVER_TIMEOUT_S
) -> tuple[Replica, dict[str, Any], int]:
    """The leader and its own state (asked directly), waiting through a gap without one;
    also the rounds over the replicas it took (1: a leader answered at once)."""
    started = time.perf_counter()
    rounds = 0
    while True:
        rounds += 1
        for replica in replicas:
            with contextlib.suppress(urllib.error.URLError, OSError, RuntimeError):
                state = _json("GET", replica.url + API, timeout_s=2.0)
                if not state.get("is_leader"):
                    continue
                leader = next((r for r in replicas if r.identity == state["leader"]), None)
                if leader is None:
                    continue
                if leader is not replica:  # a forwarded reply: ask the leader itself
                    state = _json("GET", leader.url + API, timeout_s=2.0)
                if state.get("is_leader") and state["leader"] == leader.identity:
                    return leader, state, rounds
        if time.perf_counter() - started > timeout_s:
            tails = "\n".join(
                f"--- {r.identity}:\n{r.proc.output()[-2000:]}" for r in replicas if r.proc
            )
            raise RuntimeError(
                f"failover bench: no replica answers as the leader for {timeout_s:g} s\n{tails}"
            )
        time.sleep(POLL_S)


def _failover(
    name: str,
    *,
    rep: int,
    replicas: list[Replica],
    by_identity: dict[str, Replica],
    agent_procs: list[Proc],
) -> FailoverRun:
    victim, before_state, _ = _current_leader(replicas)
    before = placement(before_state)
    survivors = [r for r in replicas if r is not victim]
    assert victim.proc is not None
    sent = time.perf_counter()
    victim.proc.signal(SIGNALS[name])
    polls = stale = 0
    answer: tuple[float, Replica, dict[str, Any]] | None = None
    while answer is None:
        for replica in survivors:
            polls += 1
            with contextlib.suppress(urllib.error.URLError, OSError):
                status, _, payload = _request("GET", replica.url + API, timeout_s=1.0)
                if status == 200:
                    state = orjson.loads(payload)
                    if state.get("is_leader") and state.get("leader") == victim.identity:
                        # A follower forwarded to the victim before it stepped down (SIGTERM):
                        # the old term's answer, not a takeover.
                        stale += 1
                    elif state.get("is_leader"):
                        answer = time.perf_counter() - sent, replica, state
                        break
        if answer is None:
            if time.perf_counter() - sent > TAKEOVER_TIMEOUT_S:
                tails = "\n".join(
                    f"--- {r.identity}:\n{r.proc.output()[-2000:]}" for r in replicas if r.proc
                )
                raise RuntimeError(
                    f"failover bench: no leader {TAKEOVER_TIMEOUT_S:g} s after {name} of"
                    f" {victim.identity}\n{tails}"
                )
            time.sleep(POLL_S)
    seconds, answered_by, takeover = answer
    new_leader = by_identity[str(takeover["leader"])]
    at_takeover = placement(takeover)

    exit_s: float | None = None
    try:
        victim.proc.wait(timeout_s=15.0)
    except Exception as exc:
        raise RuntimeError(
            f"failover bench: {victim.identity} did not exit within 15 s of {name}:\n"
            f"{victim.proc.output()[-3000:]}"
        ) from exc
    if name == "SIGTERM":
        exit_s = time.perf_counter() - sent  # an upper bound: noticed only now
    restarted = time.perf_counter()
    victim.start()

    rejoined: list[str] = []

    def follows() -> bool:
        with contextlib.suppress(urllib.error.URLError, OSError):
            status, headers, _ = _request("GET", victim.url + "/healthz", timeout_s=1.0)
            leader = headers.get(LEADER_HEADER)
            if status == 200 and leader:
                rejoined[:] = [leader]
                return True
        return False

    # While the victim starts again: is it following yet (polled), and the second look at
    # the placement. Normally the new leader still leads the same term then; if not (it
    # stepped down meanwhile), whoever leads once there is a leader again, recorded.
    later_at = sent + seconds + LATER_S
    rejoin_s: float | None = None
    while time.perf_counter() < later_at:
        if rejoin_s is None and follows():
            rejoin_s = time.perf_counter() - restarted
        time.sleep(0.05)
    later_leader, later_state, rounds = _current_leader(replicas)
    later = placement(later_state)
    term_held = (
        rounds == 1
        and later_leader is new_leader
        and int(later_state["epoch"]) == int(takeover["epoch"])
    )
    if rejoin_s is None:
        procs = [r.proc for r in replicas if r.proc is not None] + agent_procs
        _wait_for(
            f"{victim.identity} to know the leader again", follows, timeout_s=30.0, procs=procs
        )
        rejoin_s = time.perf_counter() - restarted
    return FailoverRun(
        signal=name,
        rep=rep,
        victim=victim.identity,
        new_leader=new_leader.identity,
        answered_by=answered_by.identity,
        seconds=seconds,
        old_epoch=int(before_state["epoch"]),
        new_epoch=int(takeover["epoch"]),
        checks=len(before),
        moved_at_takeover=_moved(before, at_takeover),
        moved_later=_moved(before, later),
        polls=polls,
        stale=stale,
        exit_s=exit_s,
        rejoin_s=rejoin_s,
        term_held=term_held,
        later_leader=later_leader.identity,
        later_epoch=int(later_state["epoch"]),
        rejoined_following=rejoined[0] if rejoined else "",
    )


@contextlib.contextmanager
def _window(
    monitor: RedisMonitor, info: RedisInfo
) -> Iterator[Callable[[], tuple[list[Command], float, int]]]:
    """Yields a function that, once the window is over, gives its commands, its length
    and the EVALSHA calls in it (INFO commandstats, read as the window opens and closes)."""
    calls0 = info.calls()
    start = time.time()
    closed: list[tuple[float, dict[str, int]]] = []

    def result() -> tuple[list[Command], float, int]:
        assert closed, "read the window after it is closed"
        end, calls1 = closed[0]
        time.sleep(0.2)  # MONITOR's thread catches up
        commands = monitor.between(start, end, exclude=frozenset({info.address}))
        return commands, end - start, calls1.get("evalsha", 0) - calls0.get("evalsha", 0)

    yield result
    end = time.time()
    closed.append((end, info.calls()))


def _round_trips(
    results: FailoverResults,
    *,
    redis: RedisServer,
    replicas: list[Replica],
    heartbeats: int,
    progress: Callable[[str], None],
) -> None:
    leader, _, _ = _current_leader(replicas)
    progress(f"failover: Redis round trips (leader {leader.identity}; MONITOR)")
    monitor = RedisMonitor(redis.port)
    info = RedisInfo(redis.port)
    try:

        def status_posts() -> int:
            _, _, payload = _request("GET", leader.url + "/metrics")
            samples = parse_metrics(payload.decode())
            return int(
                sum(
                    v
                    for k, v in samples.items()
                    if k.startswith("clusterchecks_http_requests_total{") and STATUS_ROUTE in k
                )
            )

        # An idle window: the replicas renew, the real agents heartbeat.
        posts0 = status_posts()
        with _window(monitor, info) as idle_window:
            time.sleep(IDLE_S)
        posts1 = status_posts()
        commands, length, evalsha = idle_window()
        renewal_rate = evalsha / length
        results.idle_heartbeats = posts1 - posts0 - 1  # the first /metrics is not a status
        results.idle = _attribute(
            "idle (real agents heartbeating)",
            commands,
            operations=results.idle_heartbeats,
            window_s=length,
            evalsha_delta=evalsha,
            renewal_rate=renewal_rate,
        )

        # A simulated node: registered once, then heartbeats that change nothing.
        node_url = f"{leader.url}{API}/status/bench-sim"
        labels = {"bench": "sim"}
        _json("POST", node_url, {"last_change": -1, "labels": labels, "capacity": 8})
        state = _json("GET", leader.url + API)
        last_change = next(n["last_change"] for n in state["nodes"] if n["name"] == "bench-sim")
        up_to_date = 0
        with _window(monitor, info) as hb_window:
            for _ in range(heartbeats):
                reply = _json(
                    "POST", node_url, {"last_change": last_change, "labels": labels, "capacity": 8}
                )
                up_to_date += bool(reply["is_up_to_date"])
        commands, length, evalsha = hb_window()
        results.heartbeats_up_to_date = up_to_date
        results.heartbeat = _attribute(
            "heartbeats, last_change unchanged",
            commands,
            operations=heartbeats,
            window_s=length,
            evalsha_delta=evalsha,
            renewal_rate=renewal_rate,
        )

        # Schedules: one PUT of 1 new check, one of 100 (new sources, so all are new).
        for count in (1, 100):
            with _window(monitor, info) as put_window:
                sent = time.perf_counter()
                reply = _json(
                    "PUT",
                    f"{leader.url}{API}/sources/rt-{count}",
                    {"configs": _configs(redis.port, count, f"rt{count}")},
                )
                reply_ms = (time.perf_counter() - sent) * 1e3
            if reply["added"] != count:
                raise RuntimeError(f"failover bench: PUT of {count} added {reply['added']!r}")
            commands, length, evalsha = put_window()
            results.schedules.append(
                _attribute(
                    f"source PUT, {count} new check{'s' if count > 1 else ''}",
                    commands,
                    operations=1,
                    window_s=length,
                    evalsha_delta=evalsha,
                    renewal_rate=renewal_rate,
                    reply_ms=reply_ms,
                )
            )
    finally:
        info.close()
        monitor.close()
    for replica in replicas:
        if replica.proc is not None and not replica.proc.alive():
            raise RuntimeError(f"{replica.identity} died:\n{replica.proc.output()[-3000:]}")
