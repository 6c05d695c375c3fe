"""The fleet benchmark: N simulated node agents over the real wire against one real dispatcher.

A real dispatcher process (``clusterchecks-dispatcher``, standalone; ``--store memory`` by
default, ``sqlite`` or ``redis`` selectable, redis against a real ``redis-server``) serves
``--agents`` simulated agents run by ``--procs`` load-generator processes (aiohttp, one
session each, a connection pool large enough for one held long poll per agent plus its
heartbeats and results). Each simulated agent speaks the node protocol as the real one
does (``node_agent/poller.py``): a heartbeat at the interval the dispatcher's status reply
tells (``stats`` for what it holds; ``running`` on first contact with a new epoch), one
held long poll (``GET /configs/{node}?since=&wait_s=``), its checks' results posted in one
batch every ``--results-flush`` seconds (each check at its interval), and ``leaving: true``
at the end. When the machine has two CPUs, the dispatcher is pinned to CPU 0 and the load
generators (and the probe) to CPU 1.

Phases, each measured:

1. start: agents register (start spread over ``--ramp`` seconds), then ``agents x
   checks-per-agent`` checks are PUT in sources of at most ``SOURCE_CHECKS``; the time
   until every check is held by an agent.
2. steady (``--window`` seconds): heartbeat latency from a separate probe process (its
   own connection, a cordoned node of its own, one heartbeat every ``PROBE_PERIOD_S``; the
   loaded agents' own latencies are reported beside it), the leader's CPU (% of one CPU,
   and per heartbeat: all of the leader's CPU over the heartbeats of the window, so it
   includes the results and long polls), requests per second, results accepted per
   second (ingestion), the leader's RSS and open file descriptors.
3. change: one ``PUT`` of ``NEW_CHECKS`` new checks to a new source; per check, the time
   from the PUT's reply until the agent it is placed on has fetched it (p50/p99/max over
   the affected agents: an agent's time is that of the last of its new checks).
4. zone outage: the agents of one zone (10 %, ``zone-0``) stop at once, without leaving
   (their tasks cancelled, their connections closed); the time until every check they held
   has been fetched by a live agent, against the node expiration timeout.
5. leave: every remaining agent sends ``leaving: true``.

The probe also runs through phases 3 to 5; the heartbeat latency of each phase is shown.

Run alone: ``python -m tests.bench.fleet --agents 1000 --checks-per-agent 10
[--store memory|sqlite|redis] [--procs 1] [--window 20] [--py-spy 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

from tests.bench.machine import machine_busy_s, process_cpu_s, process_cpu_split_s
from tests.bench.stats import percentile, table
from tests.processes import ROOT, Proc, dispatcher_argv, free_port, wait_http_ok

API = "/v1/api/clusterchecks"
HEADERS = {"Content-Type": "application/json"}
SOURCE_CHECKS = 10_000
"""Checks per source PUT: 10,000 small configs are about 1.3 MB, under the 4 MiB body limit."""
NEW_CHECKS = 1_000
ZONES = 10  # zone-0 is the outage: a tenth of the agents
PROBE_PERIOD_S = 0.05
PROBE_NODE = "fleet-probe"
LONG_POLL_S = 30.0
REQUEST_TIMEOUT_S = 10.0
PHASE_TIMEOUT_S = 180.0
MAX_RANDOM = 2**32
DISTURBED_PCT = 20.0

GOAL_HEARTBEAT_P99_MS = 50.0
GOAL_LEADER_CPU_PCT = 50.0
GOAL_CHANGE_P99_S = 1.0
GOAL_OUTAGE_OVER_EXPIRY_S = 1.0
GOAL_RSS_BYTES = 1 << 30


# ------------------------------------------------------------------ the agents


def config(key: str, interval_s: int) -> dict[str, object]:
    """A realistic small http check; ``key`` makes it distinct (a new digest)."""
    return {
        "name": "http",
        "instances": [{"url": f"http://{key}.fleet.svc.cluster.local:8080/healthz"}],
        "interval_s": interval_s,
    }


def agent_name(index: int) -> str:
    return f"fleet-node-{index:05d}"


def agent_labels(index: int) -> dict[str, str]:
    name = agent_name(index)
    return {
        "kubernetes.io/hostname": name,
        "topology.kubernetes.io/zone": f"zone-{index % ZONES}",
        "node.kubernetes.io/instance-type": "m5.large",
        "kubernetes.io/os": "linux",
    }


@dataclass
class Counters:
    heartbeats: int = 0
    heartbeat_errors: int = 0
    heartbeat_latencies: list[float] = field(default_factory=list)
    fetches: int = 0
    fetch_errors: int = 0
    reregistrations: int = 0
    result_posts: int = 0
    result_errors: int = 0
    results_accepted: int = 0
    results_rejected: int = 0
    running_sent: int = 0
    left: int = 0


class Fleet:
    """The simulated agents of one load-generator process, and what they saw."""

    def __init__(
        self, url: str, indexes: list[int], *, ramp_s: float, flush_s: float, results: bool
    ) -> None:
        self.url = url
        self.ramp_s = ramp_s
        self.flush_s = flush_s
        self.results = results
        self.agents = {agent_name(i): Agent(self, i) for i in indexes}
        self.counters = Counters()
        self.measuring = False
        self.watched: set[str] = set()
        self.sightings: dict[str, list[tuple[str, float]]] = {}
        self.session: aiohttp.ClientSession | None = None

    def seen(self, agent: str, digests: set[str], at: float) -> None:
        for digest in digests & self.watched:
            self.sightings.setdefault(digest, []).append((agent, at))

    async def run(self, commands: asyncio.Queue[dict[str, Any]]) -> None:
        # One held long poll per agent plus its heartbeats and result posts in flight.
        connector = aiohttp.TCPConnector(
            limit=3 * len(self.agents) + 64, limit_per_host=0, keepalive_timeout=120.0
        )
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as self.session:
            for agent in self.agents.values():
                agent.start()
            while True:
                command = await commands.get()
                reply = await self.handle(command)
                sys.stdout.write(orjson.dumps(reply).decode() + "\n")
                sys.stdout.flush()
                if command["cmd"] == "quit":
                    return

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        cmd = command["cmd"]
        now = time.monotonic()
        if cmd == "stats":
            c = self.counters
            out = dataclasses.asdict(c)
            out.pop("heartbeat_latencies")
            out["registered"] = sum(1 for a in self.agents.values() if a.registered.is_set())
            out["held"] = sum(len(a.held) for a in self.agents.values() if a.alive)
            out["cpu_s"] = time.process_time()
            out["at"] = now
            return out
        if cmd == "measure":  # start or stop collecting the agents' own heartbeat latencies
            self.measuring = bool(command["on"])
            latencies = self.counters.heartbeat_latencies
            self.counters.heartbeat_latencies = []
            return {"latencies": latencies}
        if cmd == "watch":
            self.watched = set(command["digests"])
            self.sightings = {}
            return {"at": now}
        if cmd == "seen":
            return {"seen": len(self.sightings), "at": now}
        if cmd == "sightings":
            return {"sightings": self.sightings}
        if cmd == "stop":
            for name in command["agents"]:
                if name in self.agents:
                    self.agents[name].stop()
            return {"at": time.monotonic()}
        if cmd in ("leave", "quit"):
            live = [a for a in self.agents.values() if a.alive]
            limit = asyncio.Semaphore(64)

            async def leave(agent: Agent) -> None:
                async with limit:
                    await agent.leave()

            await asyncio.gather(*(leave(a) for a in live))
            return {"left": self.counters.left, "s": time.monotonic() - now}
        return {"error": f"unknown command {cmd}"}


class Agent:
    """One simulated node agent: heartbeat, long poll and results loops."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.name = agent_name(index)
        self.labels = agent_labels(index)
        base = fleet.url + API
        self.status_url = URL(f"{base}/status/{self.name}")
        self.configs_url = f"{base}/configs/{self.name}"
        self.results_url = URL(f"{base}/results/{self.name}")
        self.held: dict[str, int] = {}  # digest -> interval_s
        self.due: dict[str, float] = {}  # digest -> next run (monotonic)
        self.runs: dict[str, int] = {}
        self.last_change: int | None = None
        self.configs_epoch = -1
        self.epoch = -1
        self.running_sent_epoch = -1
        self.interval_s = 10.0
        self.registered = asyncio.Event()
        self.heartbeat_now = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.alive = True
        self.rng = random.Random(index)

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self.heartbeat_loop(), name=f"{self.name}-heartbeat"),
            asyncio.create_task(self.config_loop(), name=f"{self.name}-configs"),
        ]
        if self.fleet.results:
            self.tasks.append(asyncio.create_task(self.results_loop(), name=f"{self.name}-res"))

    def stop(self) -> None:
        """Gone at once, without a word: every task cancelled, its connection closed."""
        self.alive = False
        for task in self.tasks:
            task.cancel()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self.fleet.session is not None
        return self.fleet.session

    def status_body(self) -> tuple[bytes, bool]:
        now = time.time()
        send_running = self.running_sent_epoch != self.epoch or self.epoch < 0
        body: dict[str, Any] = {
            "last_change": self.last_change if self.last_change is not None else 0,
            "labels": self.labels,
            "capacity": 1,
            "stats": {
                digest: {
                    "avg_execution_s": 0.012,
                    "runs": self.runs.get(digest, 0),
                    "errors": 0,
                    "last_run_at": now - 1.0,
                }
                for digest in self.held
                if self.runs.get(digest)
            },
        }
        if send_running:
            body["running"] = list(self.held)
        return orjson.dumps(body), send_running

    async def heartbeat_loop(self) -> None:
        c = self.fleet.counters
        await asyncio.sleep(self.rng.random() * self.fleet.ramp_s)
        first = True
        while True:
            self.heartbeat_now.clear()
            body, send_running = self.status_body()
            sent = time.monotonic()
            delay = 1.0
            status, raw = await self.post(self.status_url, body)
            if status == 200:
                reply = orjson.loads(raw)
                c.heartbeats += 1
                if self.fleet.measuring:
                    c.heartbeat_latencies.append(time.monotonic() - sent)
                epoch = int(reply["epoch"])
                new_epoch = epoch > self.epoch
                self.epoch = max(self.epoch, epoch)
                if send_running:
                    self.running_sent_epoch = epoch
                    c.running_sent += 1
                elif new_epoch:
                    self.heartbeat_now.set()  # tell the new leader what runs here, now
                self.interval_s = float(reply["heartbeat_interval_s"])
                self.registered.set()
                # Spread over the interval from the second heartbeat on, as agents that
                # started at different times would be.
                delay = self.interval_s * (self.rng.random() if first else 1.0)
                first = False
            else:
                c.heartbeat_errors += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.heartbeat_now.wait()

    async def config_loop(self) -> None:
        c = self.fleet.counters
        while True:
            await self.registered.wait()
            if self.last_change is not None and self.configs_epoch == self.epoch:
                url = f"{self.configs_url}?since={self.last_change}&wait_s={LONG_POLL_S:g}"
            else:
                url = self.configs_url
            try:
                async with self.session.get(
                    url, timeout=aiohttp.ClientTimeout(total=LONG_POLL_S + REQUEST_TIMEOUT_S)
                ) as r:
                    raw = await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError):
                status, raw = 0, b""
            if status == 404:  # expired or unknown: register again
                c.reregistrations += 1
                self.registered.clear()
                self.last_change = None
                self.heartbeat_now.set()
                continue
            if status != 200:
                c.fetch_errors += 1
                await asyncio.sleep(1.0)
                continue
            at = time.monotonic()
            c.fetches += 1
            reply = orjson.loads(raw)
            epoch = int(reply["epoch"])
            if epoch < self.epoch:
                continue
            if epoch > self.epoch:
                self.epoch = epoch
                self.heartbeat_now.set()
            self.last_change = int(reply["last_change"])
            self.configs_epoch = epoch
            held = {str(cfg["digest"]): int(cfg["interval_s"]) for cfg in reply["configs"]}
            added = held.keys() - self.held.keys()
            if added:
                self.fleet.seen(self.name, set(added), at)
            for digest in added:
                self.due[digest] = at + self.rng.random() * held[digest]
            for digest in self.held.keys() - held.keys():
                self.due.pop(digest, None)
            self.held = held

    async def results_loop(self) -> None:
        c = self.fleet.counters
        await asyncio.sleep(self.rng.random() * self.fleet.flush_s)
        while True:
            await asyncio.sleep(self.fleet.flush_s)
            now = time.monotonic()
            due = [d for d, t in self.due.items() if t <= now]
            if not due:
                continue
            wall = time.time()
            items = []
            for digest in due:
                self.due[digest] += self.held.get(digest, 15)
                self.runs[digest] = self.runs.get(digest, 0) + 1
                items.append(
                    {
                        "digest": digest,
                        "run_id": f"{self.rng.randrange(MAX_RANDOM):08x}",
                        "ok": True,
                        "errors": [],
                        "started_at": wall - 0.012,
                        "duration_s": 0.012,
                    }
                )
            status, raw = await self.post(self.results_url, orjson.dumps({"results": items}))
            if status == 200:
                reply = orjson.loads(raw)
                c.result_posts += 1
                c.results_accepted += int(reply["accepted"])
                c.results_rejected += len(reply["rejected"])
            else:
                c.result_errors += 1

    async def leave(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.alive = False
        status, _ = await self.post(
            self.status_url, orjson.dumps({"last_change": -1, "leaving": True})
        )
        if status == 200:
            self.fleet.counters.left += 1

    async def post(self, url: URL, body: bytes) -> tuple[int, bytes]:
        """(status, body) of a JSON POST; (0, b"") when it fails or times out."""
        try:
            async with self.session.post(
                url,
                data=body,
                headers=HEADERS,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            ) as r:
                return r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError):
            return 0, b""


def agents_main(argv: list[str]) -> None:
    """``python -m tests.bench.fleet agents ...``: one load-generator process; commands
    (one JSON object a line) on stdin, one JSON reply a line on stdout."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fleet agents")
    parser.add_argument("--url", required=True)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ramp", type=float, default=5.0)
    parser.add_argument("--results-flush", type=float, default=1.0)
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    raise_fd_limit()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def read_stdin() -> None:  # a thread: stdin is a pipe, the loop has work to do
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, orjson.loads(line))
            loop.call_soon_threadsafe(commands.put_nowait, {"cmd": "quit"})

        threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
        fleet = Fleet(
            args.url,
            list(range(args.first, args.first + args.count)),
            ramp_s=args.ramp,
            flush_s=args.results_flush,
            results=not args.no_results,
        )
        await fleet.run(commands)

    asyncio.run(main())


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------ the dispatcher


def serve_main(argv: list[str]) -> None:
    """``python -m tests.bench.fleet serve --gc-out F -- <dispatcher flags>``: the real
    dispatcher command, with every collection of the oldest generation (a full one: the
    whole state scanned, the loop stopped meanwhile) written to ``F`` as it ends
    (monotonic start, seconds)."""
    import gc

    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fleet serve")
    parser.add_argument("--lag-out", type=Path, required=True)
    parser.add_argument("--gc-out", type=Path, required=True)
    args = parser.parse_args(argv[:split])
    out = args.gc_out.open("w", encoding="ascii")  # open for the process's life
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.monotonic()
        else:
            out.write(f"{started[0]:.6f} {time.monotonic() - started[0]:.6f}\n")
            out.flush()

    gc.callbacks.append(timed)
    lag_out = args.lag_out.open("w", encoding="ascii")  # open for the process's life
    from dispatcher import service
    from dispatcher.cli import main as dispatcher_main

    serve = service.serve

    async def serve_with_probe(*args: Any, **kwargs: Any) -> None:
        probe = asyncio.create_task(_lag_probe(lag_out), name="fleet_lag_probe")
        try:
            await serve(*args, **kwargs)
        finally:
            probe.cancel()

    # ``run`` looks ``serve`` up in its module when called: the real server, plus the probe.
    service.serve = serve_with_probe

    sys.argv = ["clusterchecks-dispatcher", *argv[split + 1 :]]
    dispatcher_main()


async def _lag_probe(out: Any) -> None:
    """Sleeps ``LAG_PERIOD_S`` again and again; every wake-up later than ``LAG_WRITE_S``
    is written (monotonic start, lag s, CPU s of the loop's thread meanwhile): a lag with
    little CPU is the process waiting for a CPU, not the loop working."""
    while True:
        started = time.monotonic()
        before = resource.getrusage(resource.RUSAGE_THREAD)
        await asyncio.sleep(LAG_PERIOD_S)
        lag = time.monotonic() - started - LAG_PERIOD_S
        if lag > LAG_WRITE_S:
            after = resource.getrusage(resource.RUSAGE_THREAD)
            user = after.ru_utime - before.ru_utime
            system = after.ru_stime - before.ru_stime
            faults = after.ru_minflt - before.ru_minflt + after.ru_majflt - before.ru_majflt
            out.write(f"{started:.6f} {lag:.6f} {user + system:.6f} {system:.6f} {faults}\n")
            out.flush()


LAG_PERIOD_S = 0.005
LAG_WRITE_S = 0.02


# ------------------------------------------------------------------ the probe


def probe_main(argv: list[str]) -> None:
    """``python -m tests.bench.fleet probe --url U --out F``: one heartbeat of its own
    node every ``PROBE_PERIOD_S`` over one keep-alive connection; each sample (monotonic
    send time, latency s, status) is written to ``--out`` as a line, flushed each time."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fleet probe")
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=1)
        body = orjson.dumps(
            {"last_change": -1, "labels": {"kubernetes.io/hostname": PROBE_NODE}, "capacity": 1}
        )
        target = URL(f"{args.url}{API}/status/{PROBE_NODE}")
        async with aiohttp.ClientSession(connector=connector) as session:
            with args.out.open("w", encoding="ascii") as out:
                while True:
                    sent = time.monotonic()
                    try:
                        async with session.post(
                            target,
                            data=body,
                            headers=HEADERS,
                            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                        ) as r:
                            await r.read()
                            status = r.status
                    except (aiohttp.ClientError, TimeoutError):
                        status = 0
                    done = time.monotonic()
                    out.write(f"{sent:.6f} {done - sent:.6f} {status}\n")
                    out.flush()
                    await asyncio.sleep(max(0.0, sent + PROBE_PERIOD_S - time.monotonic()))

    asyncio.run(main())


# ------------------------------------------------------------------ results


@dataclass
class Latencies:
    count: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float], errors: int = 0) -> Latencies:
        return cls(
            count=len(seconds),
            errors=errors,
            p50_ms=percentile(seconds, 50) * 1e3,
            p99_ms=percentile(seconds, 99) * 1e3,
            max_ms=max(seconds, default=math.nan) * 1e3,
        )


@dataclass
class FleetResults:
    agents: int
    checks: int
    store: str
    procs: int
    heartbeat_interval_s: float
    expiry_s: float
    check_interval_s: int
    results_flush_s: float | None  # None: no results posted
    pinned: bool
    register_s: float = math.nan  # the last agent's start to every agent registered
    load_s: float = math.nan  # the PUTs of the checks
    all_held_s: float = math.nan  # the first PUT to every check held by an agent
    window_s: float = math.nan
    probe: dict[str, Latencies] = field(default_factory=dict)  # by phase
    agents_heartbeat: Latencies | None = None  # the loaded agents' own, steady window
    heartbeats_per_s: float = math.nan
    fetches_per_s: float = math.nan
    result_posts_per_s: float = math.nan
    results_per_s: float = math.nan  # accepted, ingestion
    results_rejected: int = 0
    leader_cpu_pct: float = math.nan
    leader_cpu_us_per_heartbeat: float = math.nan
    leader_system_cpu_pct: float = math.nan  # of leader_cpu_pct, in the kernel
    loadgen_cpu_pct: float = math.nan
    other_cpu_pct: float | None = None
    redis_cpu_pct: float | None = None
    leader_rss_bytes: int = 0
    leader_rss_max_bytes: int = 0
    leader_fds: int = 0
    change_put_s: float = math.nan  # the PUT of NEW_CHECKS, its reply
    change_agents: int = 0
    change_fetch: Latencies | None = None  # per affected agent, from the PUT's reply
    change_missing: int = 0
    outage_agents: int = 0
    outage_orphans: int = 0
    outage_s: float = math.nan  # the stop to every orphan fetched by a live agent
    outage_missing: int = 0
    leave_s: float = math.nan
    left: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    profile: str | None = None  # py-spy output (text)
    loop_stalls: dict[str, dict[str, float]] = field(default_factory=dict)
    """By phase, from a lag probe inside the dispatcher (a 5 ms sleep again and again):
    wake-ups late by over 50 ms, the longest, and the share of their time the loop's
    thread was on a CPU (low: the process waited for a CPU)."""
    full_gc: dict[str, tuple[int, float]] = field(default_factory=dict)
    """By phase: the dispatcher's full collections (generation 2) and the longest, s."""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


# ------------------------------------------------------------------ orchestration


class Generators:
    """The load-generator processes and their command pipes."""

    def __init__(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs = procs

    def ask(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        line = orjson.dumps(command) + b"\n"
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(line)
            p.stdin.flush()
        replies = []
        for p in self.procs:
            assert p.stdout is not None
            raw = p.stdout.readline()
            if not raw:
                raise RuntimeError(f"load generator {p.pid} exited ({p.poll()})")
            replies.append(orjson.loads(raw))
        return replies

    def total(self, key: str) -> int:
        return sum(int(r[key]) for r in self.ask({"cmd": "stats"}))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)


def _http(method: str, url: str, body: object | None = None, timeout_s: float = 300.0) -> Any:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=HEADERS)
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        return orjson.loads(reply.read())


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _wait(what: str, ready: Callable[[], bool], timeout_s: float, period_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleet: timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(period_s)


def _probe_samples(path: Path) -> list[tuple[float, float, int]]:
    samples = []
    for line in path.read_text(encoding="ascii").splitlines():
        parts = line.split()
        if len(parts) == 3:
            samples.append((float(parts[0]), float(parts[1]), int(parts[2])))
    return samples


def _py_spy(pid: int, seconds: float, out: Path) -> str:
    """py-spy's view of the dispatcher's event-loop thread for ``seconds``: where its busy
    time goes, and where the time of its stalls goes (runs of consecutive samples outside
    ``select()`` of at least ``STALL_S``: the loop could answer nothing else meanwhile)."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        return "py-spy not installed (pip install py-spy)"
    done = subprocess.run(
        [binary, "record", "-p", str(pid), "-d", str(round(seconds)), "-r", str(SPY_RATE),
         "--idle", "-f", "speedscope", "-o", str(out), "--nonblocking"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not out.exists():
        return f"py-spy failed: {done.stderr[-2000:]}"
    return summarize_speedscope(orjson.loads(out.read_bytes()))


SPY_RATE = 200  # samples a second
STALL_S = 0.05


def summarize_speedscope(document: dict[str, Any], top: int = 18) -> str:
    """Own and total shares of each function over the busy samples of the thread that
    runs the event loop, and the same over its stalls."""
    frames = [f"{f['name']} ({Path(f.get('file') or '?').name}:{f.get('line')})"
              for f in document["shared"]["frames"]]  # fmt: skip
    profiles = document["profiles"]
    main = max(profiles, key=lambda p: len(p["samples"]))
    stacks = [[frames[i] for i in sample] for sample in main["samples"]]
    # An empty stack: the thread outside Python code (idle as well, for the loop).
    idle = [
        not stack or any("Selector.select (selectors.py" in name for name in stack)
        for stack in stacks
    ]
    busy = [stack for stack, quiet in zip(stacks, idle, strict=True) if not quiet]
    runs: list[list[list[str]]] = []
    current: list[list[str]] = []
    for stack, quiet in zip(stacks, idle, strict=True):
        if quiet:
            if len(current) >= STALL_S * SPY_RATE:
                runs.append(current)
            current = []
        else:
            current.append(stack)
    if len(current) >= STALL_S * SPY_RATE:
        runs.append(current)
    longest = sorted((len(r) / SPY_RATE * 1e3 for r in runs), reverse=True)
    lines = [
        f"py-spy, {len(stacks)} samples at {SPY_RATE}/s of the event loop's thread: busy"
        f" {100 * len(busy) / max(1, len(stacks)):.1f} % of the time; {len(runs)} stalls"
        f" >= {STALL_S * 1e3:g} ms, longest " + ", ".join(f"{ms:.0f}" for ms in longest[:8]) + " ms"
    ]
    lines += _shares("busy samples", busy, top)
    lines += _shares("stall samples", [s for run in runs for s in run], top)
    return "\n".join(lines)


def _shares(title: str, stacks: list[list[str]], top: int) -> list[str]:
    if not stacks:
        return [f"  {title}: none"]
    own: Counter[str] = Counter(stack[-1] for stack in stacks)
    total: Counter[str] = Counter(name for stack in stacks for name in set(stack))
    lines = [f"  {title} ({len(stacks)}), own time:"]
    lines += [
        f"    {100 * n / len(stacks):5.1f} %  {name[:140]}" for name, n in own.most_common(top)
    ]
    lines.append(f"  {title}, total time (with what it calls), below the loop's own frames:")
    deep = [(name, n) for name, n in total.most_common() if n < 0.97 * len(stacks)]
    lines += [f"    {100 * n / len(stacks):5.1f} %  {name[:140]}" for name, n in deep[: top + 8]]
    return lines


@dataclass
class _Run:
    """One fleet run: the processes, and the phases in order (each fills ``results``)."""

    results: FleetResults
    url: str
    dispatcher: Proc
    generators: Generators
    probe_path: Path
    work: Path
    redis_server: Any
    progress: Callable[[str], None]
    log_dir: Path
    gc_path: Path
    lag_path: Path
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    rss_max: int = 0

    def ask_all(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        return self.generators.ask(command)

    def seen(self) -> int:
        return sum(int(r["seen"]) for r in self.ask_all({"cmd": "seen"}))

    def sample_rss(self) -> None:
        self.rss_max = max(self.rss_max, _rss(self.dispatcher.pid))

    def register_and_load(self, check_interval_s: int) -> None:
        r = self.results
        started = time.monotonic()
        _wait(
            "every agent registered",
            lambda: self.generators.total("registered") == r.agents,
            PHASE_TIMEOUT_S,
            0.2,
        )
        r.register_s = time.monotonic() - started
        # The checks, in sources of at most SOURCE_CHECKS (a body under the 4 MiB limit).
        loaded = time.monotonic()
        for s in range(math.ceil(r.checks / SOURCE_CHECKS)):
            keys = range(s * SOURCE_CHECKS, min(r.checks, (s + 1) * SOURCE_CHECKS))
            body = {"configs": [config(f"c{k}", check_interval_s) for k in keys]}
            _http("PUT", f"{self.url}{API}/sources/fleet-{s}", body)
        r.load_s = time.monotonic() - loaded
        _wait(
            "every check held",
            lambda: self.generators.total("held") == r.checks,
            PHASE_TIMEOUT_S,
            0.2,
        )
        r.all_held_s = time.monotonic() - loaded
        self.progress(
            f"fleet: registered in {r.register_s:.1f} s, {r.checks:,} checks held"
            f" {r.all_held_s:.1f} s after the first PUT"
        )

    def steady(self, window_s: float) -> None:
        r = self.results
        pid = self.dispatcher.pid
        self.ask_all({"cmd": "measure", "on": True})
        before = self.ask_all({"cmd": "stats"})
        split0 = process_cpu_split_s(pid)
        cpu0, redis0, busy0 = process_cpu_s(pid), _redis_cpu(self.redis_server), machine_busy_s()
        t0 = time.monotonic()
        while time.monotonic() < t0 + window_s:
            time.sleep(0.5)
            self.sample_rss()
        t1 = time.monotonic()
        cpu1, redis1, busy1 = process_cpu_s(pid), _redis_cpu(self.redis_server), machine_busy_s()
        split1 = process_cpu_split_s(pid)
        after = self.ask_all({"cmd": "stats"})
        own = [
            x for reply in self.ask_all({"cmd": "measure", "on": False}) for x in reply["latencies"]
        ]
        self.phases.append(("steady", t0, t1))
        wall = r.window_s = t1 - t0

        def delta(key: str) -> float:
            return float(sum(a[key] for a in after) - sum(b[key] for b in before))

        heartbeats = delta("heartbeats")
        r.agents_heartbeat = Latencies.of(own, int(delta("heartbeat_errors")))
        r.heartbeats_per_s = heartbeats / wall
        r.fetches_per_s = delta("fetches") / wall
        r.result_posts_per_s = delta("result_posts") / wall
        r.results_per_s = delta("results_accepted") / wall
        r.results_rejected = int(delta("results_rejected"))
        loadgen_cpu = delta("cpu_s")
        r.loadgen_cpu_pct = 100 * loadgen_cpu / wall
        redis_cpu = redis1 - redis0 if redis0 is not None and redis1 is not None else None
        if redis_cpu is not None:
            r.redis_cpu_pct = 100 * redis_cpu / wall
        if cpu0 is not None and cpu1 is not None:
            r.leader_cpu_pct = 100 * (cpu1 - cpu0) / wall
            if heartbeats:
                r.leader_cpu_us_per_heartbeat = (cpu1 - cpu0) / heartbeats * 1e6
            if busy0 is not None and busy1 is not None:
                ours = (cpu1 - cpu0) + loadgen_cpu + (redis_cpu or 0.0)
                r.other_cpu_pct = 100 * max(0.0, busy1 - busy0 - ours) / wall
        if split0 is not None and split1 is not None:
            r.leader_system_cpu_pct = 100 * (split1[1] - split0[1]) / wall
        r.leader_rss_bytes = _rss(pid)
        r.leader_fds = _fds(pid)
        self.progress(
            f"fleet: steady {wall:.0f} s: {r.heartbeats_per_s:.0f} heartbeats/s,"
            f" leader {r.leader_cpu_pct:.0f}% CPU, probe p99"
            f" {self.probe_latencies(t0, t1).p99_ms:.1f} ms"
        )

    def profile(self, seconds: float) -> None:
        self.progress(f"fleet: py-spy on the dispatcher for {seconds:g} s")
        r = self.results
        out = self.log_dir / f"fleet-{r.agents}-{r.store}.speedscope.json"
        r.profile = _py_spy(self.dispatcher.pid, seconds, out)
        self.progress(f"fleet: the profile: {out} (speedscope.app)")

    def change(self, check_interval_s: int) -> None:
        """One PUT of NEW_CHECKS new checks; per affected agent, the time from the PUT's
        reply until it has fetched the last of its new checks."""
        r = self.results
        body = {"configs": [config(f"new{k}", check_interval_s) for k in range(NEW_CHECKS)]}
        digests = _digests_of(body)
        self.ask_all({"cmd": "watch", "digests": digests})
        t0 = time.monotonic()
        _http("PUT", f"{self.url}{API}/sources/fleet-new", body)
        replied = time.monotonic()
        r.change_put_s = replied - t0
        with contextlib.suppress(RuntimeError):  # what is missing is reported
            _wait("the new checks fetched", lambda: self.seen() >= len(digests), 30.0, 0.02)
        self.phases.append(("change", t0, time.monotonic()))
        sightings = _merge_sightings(self.ask_all({"cmd": "sightings"}))
        placement = _placement(self.url)
        per_agent: dict[str, float] = {}
        for digest in digests:
            node = placement.get(digest)
            seen_at = dict(sightings.get(digest, []))
            if node is None or node not in seen_at:
                r.change_missing += 1
                continue
            per_agent[node] = max(per_agent.get(node, -math.inf), seen_at[node] - replied)
        r.change_agents = len(per_agent)
        r.change_fetch = Latencies.of(list(per_agent.values()))
        self.progress(
            f"fleet: change of {NEW_CHECKS:,} checks: PUT {r.change_put_s * 1e3:.0f} ms,"
            f" fetched by {len(per_agent):,} agents, p99 {r.change_fetch.p99_ms:.0f} ms"
            " after the reply"
        )

    def outage(self) -> None:
        """Zone-0 (a tenth of the agents) stops at once, without leaving."""
        r = self.results
        victims = {agent_name(i) for i in range(r.agents) if i % ZONES == 0}
        orphans = [d for d, node in _placement(self.url).items() if node in victims]
        r.outage_agents, r.outage_orphans = len(victims), len(orphans)
        self.ask_all({"cmd": "watch", "digests": orphans})
        t0 = time.monotonic()
        replies = self.ask_all({"cmd": "stop", "agents": sorted(victims)})
        stopped = max(float(reply["at"]) for reply in replies)
        with contextlib.suppress(RuntimeError):  # what is missing is reported
            limit = r.expiry_s * 3 + 30
            _wait("the orphans on live agents", lambda: self.seen() >= len(orphans), limit, 0.05)
        self.phases.append(("outage", t0, time.monotonic()))
        self.sample_rss()
        sightings = _merge_sightings(self.ask_all({"cmd": "sightings"}))
        firsts = [min(t for _, t in sightings[d]) for d in orphans if d in sightings]
        r.outage_missing = len(orphans) - len(firsts)
        r.outage_s = max(firsts, default=math.nan) - stopped
        self.progress(
            f"fleet: outage of {len(victims):,} agents ({len(orphans):,} checks): every orphan"
            f" on a live agent after {r.outage_s:.2f} s (expiry {r.expiry_s:g} s)"
        )

    def leave(self) -> None:
        r = self.results
        t0 = time.monotonic()
        left = self.ask_all({"cmd": "leave"})
        t1 = time.monotonic()
        self.phases.append(("leave", t0, t1))
        r.leave_s = t1 - t0
        r.left = sum(int(reply["left"]) for reply in left)
        final = self.ask_all({"cmd": "stats"})
        r.errors = {
            key: sum(int(reply[key]) for reply in final)
            for key in ("heartbeat_errors", "fetch_errors", "result_errors", "reregistrations")
        }
        r.leader_rss_max_bytes = self.rss_max
        pauses = []
        if self.gc_path.exists():
            pauses = [
                (float(a), float(b))
                for a, b in (line.split() for line in self.gc_path.read_text().splitlines())
            ]
        for name, start, end in self.phases:
            r.probe[name] = self.probe_latencies(start, end)
            inside = [d for t, d in pauses if start <= t < end]
            r.full_gc[name] = (len(inside), max(inside, default=0.0))
            lags = [row[1:] for row in _lags(self.lag_path) if start <= row[0] < end]
            r.loop_stalls[name] = _stall_summary(lags)

    def probe_latencies(self, start: float, end: float) -> Latencies:
        inside = [s for s in _probe_samples(self.probe_path) if start <= s[0] < end]
        return Latencies.of(
            [lat for _, lat, status in inside if status == 200],
            sum(1 for s in inside if s[2] != 200),
        )


def run_fleet(
    *,
    log_dir: Path,
    work_dir: Path | None = None,
    agents: int = 1_000,
    checks_per_agent: int = 10,
    store: str = "memory",
    procs: int = 1,
    window_s: float = 20.0,
    heartbeat_interval_s: float = 10.0,
    expiry_s: float = 30.0,
    check_interval_s: int = 15,
    results_flush_s: float | None = 1.0,
    ramp_s: float | None = None,
    py_spy_s: float = 0.0,
    progress: Callable[[str], None] = print,
) -> FleetResults:
    log_dir.mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    pinned = len(cpus) >= 2
    server_cpu, load_cpu = (cpus[0], cpus[1]) if pinned else (None, None)
    results = FleetResults(
        agents=agents,
        checks=agents * checks_per_agent,
        store=store,
        procs=procs,
        heartbeat_interval_s=heartbeat_interval_s,
        expiry_s=expiry_s,
        check_interval_s=check_interval_s,
        results_flush_s=results_flush_s,
        pinned=pinned,
    )
    ramp = ramp_s if ramp_s is not None else max(2.0, agents / 1_000)
    cpu_flag = ["--cpu", str(load_cpu)] if load_cpu is not None else []
    with tempfile.TemporaryDirectory(dir=work_dir) as work_text:
        work = Path(work_text)
        redis_server = None
        flags = ["--store", store]
        if store == "redis":
            from tests.redis_server import RedisServer

            redis_server = RedisServer(port=free_port(), workdir=work)
            redis_server.start()
            flags += ["--redis-url", redis_server.url]
        elif store == "sqlite":
            flags += ["--data-dir", str(work / "data")]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = dispatcher_argv(
            port, *flags,
            "--warmup-duration", "0",
            "--heartbeat-interval", f"{heartbeat_interval_s:g}",
            "--node-expiration-timeout", f"{expiry_s:g}",
        )  # fmt: skip
        # The real command's flags, run through ``serve`` for the collector's timings.
        gc_path = work / "gc.txt"
        lag_path = work / "lag.txt"
        argv = [sys.executable, "-m", "tests.bench.fleet", "serve", "--lag-out", str(lag_path),
                "--gc-out", str(gc_path), "--", *argv[1:]]  # fmt: skip
        log_path = log_dir / f"fleet-{agents}-{store}.log"
        log_path.unlink(missing_ok=True)
        dispatcher = Proc("dispatcher", argv, log_path).start()
        generators = Generators([])
        probe: Proc | None = None
        try:
            if server_cpu is not None:
                os.sched_setaffinity(dispatcher.pid, {server_cpu})
                if redis_server is not None and redis_server.process is not None:
                    os.sched_setaffinity(redis_server.process.pid, {server_cpu})
            wait_http_ok(f"{url}/readyz", timeout_s=60, proc=dispatcher)
            probe_path = work / "probe.txt"
            probe_argv = [sys.executable, "-m", "tests.bench.fleet", "probe", "--url", url]
            probe_argv += ["--out", str(probe_path), *cpu_flag]
            probe = Proc("probe", probe_argv, log_dir / "fleet-probe.log").start()
            _wait("the probe", lambda: probe_path.exists() and probe_path.stat().st_size > 0, 30)
            # The probe's node takes no check: it never fetches or runs any.
            _http("POST", f"{url}{API}/nodes/{PROBE_NODE}/cordon", {})
            progress(f"fleet: {agents:,} agents ({procs} process(es)), {store} store")
            generators = _start_generators(
                url,
                agents=agents,
                procs=procs,
                ramp_s=ramp,
                results_flush_s=results_flush_s,
                cpu_flag=cpu_flag,
                log_dir=log_dir,
            )
            run = _Run(
                results,
                url,
                dispatcher,
                generators,
                probe_path,
                work,
                redis_server,
                progress,
                log_dir,
                gc_path,
                lag_path,
            )
            run.register_and_load(check_interval_s)
            # Settle: second heartbeats spread over an interval, result schedules started.
            time.sleep(heartbeat_interval_s + 2.0)
            run.steady(window_s)
            if py_spy_s > 0:
                run.profile(py_spy_s)
            run.change(check_interval_s)
            time.sleep(2.0)
            run.outage()
            run.leave()
        finally:
            generators.stop()
            if probe is not None:
                probe.stop()
            dispatcher.stop(timeout_s=30)
            if redis_server is not None:
                redis_server.stop()
    return results


def _start_generators(
    url: str,
    *,
    agents: int,
    procs: int,
    ramp_s: float,
    results_flush_s: float | None,
    cpu_flag: list[str],
    log_dir: Path,
) -> Generators:
    share = math.ceil(agents / procs)
    popens = []
    for k in range(procs):
        first, count = k * share, min(share, agents - k * share)
        argv = [sys.executable, "-m", "tests.bench.fleet", "agents", "--url", url]
        argv += ["--first", str(first), "--count", str(count), "--ramp", f"{ramp_s:g}"]
        if results_flush_s is None:
            argv.append("--no-results")
        else:
            argv += ["--results-flush", f"{results_flush_s:g}"]
        with (log_dir / f"fleet-agents-{k}.log").open("wb") as log:
            popens.append(
                subprocess.Popen(
                    [*argv, *cpu_flag],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    cwd=ROOT,
                )
            )
    return Generators(popens)


def _lags(path: Path) -> list[tuple[float, float, float, float, int]]:
    """(start, lag, CPU s, of it in the kernel, page faults) of each late wake-up."""
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text(encoding="ascii").splitlines()]
    return [
        (float(a), float(b), float(c), float(d), int(e)) for a, b, c, d, e in rows if e.isdigit()
    ]


def _stall_summary(lags: list[tuple[float, float, float, int]]) -> dict[str, float]:
    over = [row for row in lags if row[0] > STALL_S]
    total = sum(row[0] for row in over)
    cpu = sum(row[1] for row in over)
    return {
        "stalls_over_50ms": len(over),
        "longest_ms": max((row[0] for row in over), default=0.0) * 1e3,
        "on_cpu_share": cpu / total if total else math.nan,
        "kernel_share_of_cpu": sum(row[2] for row in over) / cpu if cpu else math.nan,
        "page_faults": sum(row[3] for row in over),
    }


def _redis_cpu(redis_server: object) -> float | None:
    popen = getattr(redis_server, "process", None)
    return process_cpu_s(popen.pid) if popen is not None else None


def _digests_of(body: dict[str, Any]) -> list[str]:
    """The digests the dispatcher will give these configs, known before the PUT (so the
    agents watch for them before any can be fetched): a digest is a pure function of the
    content, computed here by the dispatcher's own code."""
    from dispatcher.convert import config_in
    from dispatcher.wire import CheckConfigIn

    return [str(config_in(CheckConfigIn.model_validate(c)).digest) for c in body["configs"]]


def _merge_sightings(replies: list[dict[str, Any]]) -> dict[str, list[tuple[str, float]]]:
    merged: dict[str, list[tuple[str, float]]] = {}
    for reply in replies:
        for digest, seen in reply["sightings"].items():
            merged.setdefault(digest, []).extend((str(a), float(t)) for a, t in seen)
    return merged


def _placement(url: str) -> dict[str, str]:
    """Digest -> node, from the admin state."""
    state = _http("GET", f"{url}{API}")
    return {digest: node["name"] for node in state["nodes"] for digest in node["configs"]}


# ------------------------------------------------------------------ report


@dataclass(frozen=True)
class FleetGoal:
    name: str
    ok: bool
    detail: str


def goals(r: FleetResults) -> list[FleetGoal]:
    steady = r.probe.get("steady")
    change = r.change_fetch
    at = f"{r.agents:,} agents, {r.store}"
    out = []
    if steady is not None:
        out.append(
            FleetGoal(
                f"fleet: heartbeat p99 < {GOAL_HEARTBEAT_P99_MS:g} ms ({at})",
                steady.p99_ms < GOAL_HEARTBEAT_P99_MS and steady.errors == 0,
                f"p99 {steady.p99_ms:.1f} ms, max {steady.max_ms:.1f} ms, {steady.errors} errors",
            )
        )
    out.append(
        FleetGoal(
            f"fleet: leader CPU < {GOAL_LEADER_CPU_PCT:g} % of a core at a"
            f" {r.heartbeat_interval_s:g} s heartbeat ({at})",
            r.leader_cpu_pct < GOAL_LEADER_CPU_PCT,
            f"{r.leader_cpu_pct:.1f} %",
        )
    )
    if change is not None:
        out.append(
            FleetGoal(
                f"fleet: a change reaches its agents, p99 < {GOAL_CHANGE_P99_S:g} s ({at})",
                change.p99_ms < GOAL_CHANGE_P99_S * 1e3 and r.change_missing == 0,
                f"p99 {change.p99_ms:.0f} ms over {r.change_agents:,} agents,"
                f" {r.change_missing} checks not seen",
            )
        )
    out.append(
        FleetGoal(
            f"fleet: a {r.outage_agents:,}-agent outage re-dispatched within expiry +"
            f" {GOAL_OUTAGE_OVER_EXPIRY_S:g} s ({at})",
            r.outage_s <= r.expiry_s + GOAL_OUTAGE_OVER_EXPIRY_S and r.outage_missing == 0,
            f"{r.outage_s:.2f} s (expiry {r.expiry_s:g} s), {r.outage_missing} orphans not seen",
        )
    )
    out.append(
        FleetGoal(
            f"fleet: leader RSS < 1 GiB ({at})",
            r.leader_rss_max_bytes < GOAL_RSS_BYTES,
            f"{r.leader_rss_max_bytes / 2**20:.0f} MiB",
        )
    )
    return out


def _f(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def report_many(runs: list[FleetResults]) -> tuple[str, list[tuple[str, bool, str]]]:
    first = runs[0]
    flush = (
        f"results flushed every {first.results_flush_s:g} s"
        if first.results_flush_s is not None
        else "no results"
    )
    out = [
        "Fleet: simulated agents over HTTP against one dispatcher process"
        f" ({first.check_interval_s} s check interval, {flush},"
        f" heartbeat {first.heartbeat_interval_s:g} s, expiry"
        f" {first.expiry_s:g} s; "
        + (
            "dispatcher on CPU 0, load generators and probe on CPU 1"
            if first.pinned
            else "not pinned"
        )
        + ")",
        "",
    ]
    headers = [
        "agents", "checks", "store", "hb/s", "probe p50 ms", "p99 ms", "max ms",
        "agents' p99 ms", "leader CPU %", "us/hb", "RSS MiB", "fds", "results/s",
        "loadgen CPU %", "other CPU %",
    ]  # fmt: skip
    rows = []
    for r in runs:
        steady = r.probe.get("steady") or Latencies.of([])
        own = r.agents_heartbeat or Latencies.of([])
        rows.append(
            [
                f"{r.agents:,}",
                f"{r.checks:,}",
                r.store,
                _f(r.heartbeats_per_s, ".0f"),
                _f(steady.p50_ms),
                _f(steady.p99_ms),
                _f(steady.max_ms),
                _f(own.p99_ms),
                _f(r.leader_cpu_pct),
                _f(r.leader_cpu_us_per_heartbeat, ".0f"),
                f"{r.leader_rss_max_bytes / 2**20:.0f}",
                str(r.leader_fds),
                _f(r.results_per_s, ".0f"),
                _f(r.loadgen_cpu_pct, ".0f"),
                _f(r.other_cpu_pct, ".0f"),
            ]
        )
    out.append(table(headers, rows))
    out.append("")
    headers = [
        "agents", "change: PUT ms", "agents", "fetched p50 ms", "p99 ms", "max ms",
        "probe max ms", "outage: agents", "orphans", "all on live s", "expiry s",
        "probe max ms", "leave s",
    ]  # fmt: skip
    rows = []
    for r in runs:
        change = r.change_fetch or Latencies.of([])
        rows.append(
            [
                f"{r.agents:,}",
                _f(r.change_put_s * 1e3, ".0f"),
                f"{r.change_agents:,}",
                _f(change.p50_ms, ".0f"),
                _f(change.p99_ms, ".0f"),
                _f(change.max_ms, ".0f"),
                _f(r.probe["change"].max_ms if "change" in r.probe else None),
                f"{r.outage_agents:,}",
                f"{r.outage_orphans:,}",
                _f(r.outage_s, ".2f"),
                f"{r.expiry_s:g}",
                _f(r.probe["outage"].max_ms if "outage" in r.probe else None),
                _f(r.leave_s, ".1f"),
            ]
        )
    out.append(table(headers, rows))
    for r in runs:
        out.append(
            f"  {r.agents:,} agents: registered in {r.register_s:.1f} s; checks PUT in"
            f" {r.load_s:.1f} s, all held after {r.all_held_s:.1f} s; steady {r.window_s:.0f} s:"
            f" {r.fetches_per_s:.0f} config fetches/s, {r.result_posts_per_s:.0f} result posts/s,"
            f" {r.results_rejected} results rejected; leader CPU in the kernel"
            f" {r.leader_system_cpu_pct:.1f}%; left {r.left:,}; errors {r.errors}"
            + (f"; redis-server {r.redis_cpu_pct:.0f}% CPU" if r.redis_cpu_pct is not None else "")
        )
        out.append(
            "    dispatcher's loop stalls > 50 ms (count, longest ms, share on a CPU, of that the"
            " kernel's share, page faults) by phase: "
            + ", ".join(
                f"{k} {v['stalls_over_50ms']:.0f} ({v['longest_ms']:.0f}, {v['on_cpu_share']:.2f},"
                f" kernel {v['kernel_share_of_cpu']:.2f}, faults {v['page_faults']:.0f})"
                for k, v in r.loop_stalls.items()
            )
        )
        out.append(
            "    dispatcher's full garbage collections (count, longest ms) by phase: "
            + ", ".join(f"{k} {n} ({p * 1e3:.0f})" for k, (n, p) in r.full_gc.items())
        )
        if r.other_cpu_pct is not None and r.other_cpu_pct > DISTURBED_PCT:
            out.append(
                f"  NOTE: other processes used {r.other_cpu_pct:.0f}% of a CPU during the window"
            )
        if r.profile:
            out += [f"  profile of the dispatcher at {r.agents:,} agents:", r.profile]
    checked = [(g.name, g.ok, g.detail) for r in runs for g in goals(r)]
    return "\n".join(out), checked


@dataclass
class FleetRuns:
    runs: list[FleetResults]

    def to_json(self) -> dict[str, object]:
        return {"runs": [r.to_json() for r in self.runs]}


def run_fleets(
    *, log_dir: Path, work_dir: Path | None = None, sizes: tuple[int, ...] = (1_000,),
    progress: Callable[[str], None] = print, **options: Any,
) -> FleetRuns:  # fmt: skip
    """``make bench``'s section: one run per fleet size."""
    return FleetRuns(
        [
            run_fleet(log_dir=log_dir, work_dir=work_dir, agents=n, progress=progress, **options)
            for n in sizes
        ]
    )


def report(results: FleetRuns) -> tuple[str, list[tuple[str, bool, str]]]:
    return report_many(results.runs)


def main() -> None:
    if sys.argv[1:2] == ["agents"]:
        agents_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["serve"]:
        serve_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["probe"]:
        probe_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fleet", description=__doc__)
    parser.add_argument("--agents", type=int, nargs="+", default=[1_000])
    parser.add_argument("--checks-per-agent", type=int, default=10)
    parser.add_argument("--store", choices=("memory", "sqlite", "redis"), default="memory")
    parser.add_argument("--procs", type=int, default=1, help="load-generator processes")
    parser.add_argument("--window", type=float, default=20.0, help="steady seconds measured")
    parser.add_argument("--heartbeat-interval", type=float, default=10.0)
    parser.add_argument("--expiry", type=float, default=30.0)
    parser.add_argument("--interval", type=int, default=15, help="the checks' interval_s")
    parser.add_argument("--results-flush", type=float, default=1.0)
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument("--ramp", type=float, default=None, help="agents' start spread, s")
    parser.add_argument("--py-spy", type=float, default=0.0, help="profile seconds (steady)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    runs = FleetRuns(
        [
            run_fleet(
                log_dir=args.out / "logs",
                work_dir=None,
                agents=n,
                checks_per_agent=args.checks_per_agent,
                store=args.store,
                procs=args.procs,
                window_s=args.window,
                heartbeat_interval_s=args.heartbeat_interval,
                expiry_s=args.expiry,
                check_interval_s=args.interval,
                results_flush_s=None if args.no_results else args.results_flush,
                ramp_s=args.ramp,
                py_spy_s=args.py_spy,
            )
            for n in args.agents
        ]
    )
    text, checked = report(runs)
    print()
    print(text)
    print()
    for name, ok, detail in checked:
        print(f"{'GOAL MET   ' if ok else 'GOAL MISSED'}: {name}: {detail}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet.json").write_bytes(orjson.dumps(runs.to_json(), option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
