"""The big-change benchmark: one PUT of 100,000 checks must not stall the event loop.

A real dispatcher runs in its own process (``python -m tests.bench.bigput serve``): the
service ``dispatcher.service`` builds from default settings (and the garbage-collector
settings ``dispatcher.service.run`` makes), serving on loopback, logging JSON at info
level to a file as in production, plus what measures it: a loop-lag probe task that
sleeps ``LAG_PERIOD_S`` again and again and records by how much each sleep overran (the
time the loop could run nothing else); a thread that samples the loop's stack while it
is stalled (where the time goes); and a timer on the collector's full collections. With
``--redis`` the dispatcher uses a real Redis (``--election redis --store redis``), so
every step is also written through the store.

This process is the client. It registers ``nodes`` node agents; each heartbeats every
10 s with its change counter and refetches when told it is not up to date, and keeps a
30 s long poll for its configs open, as ``node_agent`` does. Then, one after the other:
PUTs ``checks`` distinct configs to one source (all new: placed over the agents), PUTs
the same set again (nothing changes), POSTs the same configs to a second source (each
check gains a holder), PUTs an empty set to the first source (nothing goes: the second
holds them) and to the second (every check goes), and PUTs 105,000 configs (4.09 MB, the
hostile report's request) to a third source: over the per-source limit, refused whole.
Throughout, one task GETs ``/healthz`` and another sends a heartbeat every
``PROBE_PERIOD_S``; both record their latencies (as this process sees them: its own loop
is busy decoding the agents' replies, so these run higher than the server's stalls).

The goals are judged on the loop-lag probe: the longest stall overlapping any of the
requests should stay under ``GOAL_STALL_S`` (the target, reported), and the longest
counting only the time the dispatcher was on a CPU must stay under ``HARD_BUSY_S``
(missing it exits 1: ``make bench`` fails; on a busy machine a stall also holds the time
the process waited for a CPU, which is not the dispatcher's doing); every request must
get the status expected.

Run alone: ``python -m tests.bench.bigput [--checks N] [--nodes N] [--redis] [--profile]
[--gc-default]`` (``--profile`` runs the dispatcher under cProfile and prints its top
costs; times are then about twice as long and the goals are not judged. ``--gc-default``
leaves the collector as Python sets it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import os
import pstats
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import orjson

from tests.bench.machine import machine_busy_s, process_cpu_s
from tests.bench.stats import percentile
from tests.processes import ROOT, Proc, free_port, wait_http_ok

API = "/v1/api/clusterchecks"
HEADERS = {"Content-Type": "application/json"}
CHECKS = 100_000
"""The biggest set a source may hold by default (``max_checks_per_source``)."""
OVER_LIMIT = 105_000
"""The hostile report's PUT: 105,000 distinct configs in one body under the 4 MiB limit
(now refused whole with ``413 too_many_checks``)."""
NODES = 25
GOAL_STALL_S = 0.1
"""The target: the longest the dispatcher's event loop stalls during a big request."""
HARD_BUSY_S = 0.15
"""What ``make bench`` fails on: the longest stall counting only the time the dispatcher
was on a CPU (the loop busy without yielding: what the code does, not what the machine
does to it). On the project's 2-core machine, shared with other processes that used up
to 1.5 of its CPUs, stalls were 27 to 260 ms from run to run, the CPU part of them at
most 84 ms; the unsliced dispatcher stalled 5.9 to 7.4 s."""
LAG_PERIOD_S = 0.005
STALL_SAMPLE_AFTER_S = 0.05
STALL_SAMPLE_S = 0.01
PROBE_PERIOD_S = 0.02
DISTURBED_PCT = 20.0  # other processes' CPU during the requests, in % of one CPU
HEARTBEAT_S = 10.0
"""As agents do by default (the dispatcher's ``heartbeat_interval_s``)."""
LONG_POLL_S = 30.0
REQUEST_TIMEOUT_S = 300.0
BODY_LIMIT = 4 * 1024 * 1024


# ------------------------------------------------------------------ the server side


async def _probe_lag(
    stop: asyncio.Event, samples: list[tuple[float, float, float]], tick: list[float]
) -> None:
    """(start, overrun, CPU) of every sleep: the loop could run nothing else for
    ``overrun``; of that, the process ran on a CPU for ``CPU`` seconds (the rest it waited
    for one: other processes on the machine)."""
    while not stop.is_set():
        started = time.monotonic()
        cpu = time.process_time()
        await asyncio.sleep(LAG_PERIOD_S)
        tick[0] = time.monotonic()
        busy = time.process_time() - cpu
        samples.append((started, tick[0] - started - LAG_PERIOD_S, busy))


class _StallWatch:
    """Where the time of the stalls goes: a thread that, whenever the loop-lag probe has
    not run for ``STALL_SAMPLE_AFTER_S``, samples the event loop thread's stack every
    ``STALL_SAMPLE_S``; and the collector's full collections (generation 2), timed."""

    def __init__(self, tick: list[float]) -> None:
        self.tick = tick
        self.stacks: Counter[str] = Counter()
        self.gc_pauses: list[tuple[float, float]] = []  # (start, seconds) of gen-2 runs
        self._gc_started = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)
        self._main = threading.get_ident()

    def start(self) -> None:
        gc.callbacks.append(self._gc)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        gc.callbacks.remove(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_started = time.monotonic()
        else:
            self.gc_pauses.append((self._gc_started, time.monotonic() - self._gc_started))

    def _watch(self) -> None:
        while not self._done.wait(STALL_SAMPLE_S):
            if time.monotonic() - self.tick[0] < STALL_SAMPLE_AFTER_S:
                continue
            frame = sys._current_frames().get(self._main)
            if frame is None:
                continue
            ours = [
                f"{f.name} ({Path(f.filename).name}:{f.lineno})"
                for f in traceback.extract_stack(frame)
                if "/dispatcher/" in f.filename or "pydantic" in f.filename
            ]
            self.stacks[" < ".join(reversed(ours[-6:])) or "(outside the dispatcher)"] += 1


async def _serve(args: argparse.Namespace) -> None:
    from dispatcher.common import logs
    from dispatcher.service import build, serve
    from dispatcher.settings import (
        ElectionSettings,
        RedisSettings,
        ServerSettings,
        Settings,
        StoreSettings,
    )

    logs.configure(fmt="json", level="info")
    if not args.gc_default:
        from dispatcher.service import settle_garbage_collector

        settle_garbage_collector()  # as dispatcher.service.run does
    settings = Settings(
        server=ServerSettings(port=args.port, identity=f"bigput-{args.port}"),
        election=ElectionSettings(backend="redis" if args.redis_url else "standalone"),
        store=StoreSettings(backend="redis" if args.redis_url else "memory"),
        redis=RedisSettings(url=args.redis_url or RedisSettings().url),
    ).validate()
    service = build(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    samples: list[tuple[float, float, float]] = []
    tick = [time.monotonic()]
    watch = _StallWatch(tick)
    watch.start()
    profile = cProfile.Profile() if args.profile else None
    if profile is not None:
        profile.enable()
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_probe_lag(stop, samples, tick), name="loop_lag_probe")
            tasks.create_task(serve(service, stop=stop), name="dispatcher")
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
        watch.stop()
        out = {"lags": samples, "stacks": dict(watch.stacks), "gc": watch.gc_pauses}
        Path(args.lag_out).write_bytes(orjson.dumps(out))  # noqa: ASYNC240 (at exit)


def serve_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bigput serve")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lag-out", required=True)
    parser.add_argument("--profile", default=None, help="write a cProfile dump here")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--gc-default", action="store_true")
    asyncio.run(_serve(parser.parse_args(argv)))


# ------------------------------------------------------------------ the client side


@dataclass
class Phase:
    name: str
    method: str
    checks: int
    body_bytes: int
    status: int
    expected: int
    reply: dict[str, object]
    started: float  # time.monotonic, comparable with the server's on Linux
    request_s: float
    max_stall_s: float = 0.0
    max_busy_s: float = 0.0  # the longest stall counting only the time on a CPU
    stalls_over_goal: int = 0
    healthz: int = 0  # /healthz answered while the request ran
    healthz_max_ms: float = 0.0
    heartbeats: int = 0  # heartbeats answered while the request ran
    heartbeat_max_ms: float = 0.0
    heartbeat_p99_ms: float = 0.0


@dataclass
class BigPutResults:
    checks: int
    nodes: int
    store: str
    profiled: bool
    phases: list[Phase] = field(default_factory=list)
    fetches: int = 0  # config fetches by the node agents over the run
    fetch_max_configs: int = 0
    configs_per_node: list[int] = field(default_factory=list)
    dangling_after_add: int = 0
    log_lines: dict[str, int] = field(default_factory=dict)  # event -> lines
    stall_stacks: dict[str, int] = field(default_factory=dict)  # stack -> 10 ms samples
    gc_pauses: list[tuple[float, float]] = field(default_factory=list)
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (start, s) over goal
    log_bytes: int = 0
    profile_top: str = ""
    other_cpu_pct: float | None = None  # other processes during the requests, % of 1 CPU

    @property
    def max_stall_s(self) -> float:
        return max((p.max_stall_s for p in self.phases), default=0.0)

    @property
    def max_busy_s(self) -> float:
        return max((p.max_busy_s for p in self.phases), default=0.0)

    @property
    def all_ok(self) -> bool:
        return all(p.status == p.expected for p in self.phases)


def configs_body(count: int) -> list[dict[str, object]]:
    """``count`` distinct configs, as small as the schema allows (the hostile shape: 105,000
    of them make 4.09 MB, under the 4 MiB body limit; the dispatcher does not know check
    kinds, so the name ``h`` is as good as ``http``)."""
    return [{"name": "h", "instances": [{"u": i}]} for i in range(count)]


@dataclass
class _Probe:
    """Latencies of a periodic request: (sent at, latency) of each answer."""

    answers: list[tuple[float, float]] = field(default_factory=list)

    def during(self, start: float, end: float) -> list[float]:
        return [lat for sent, lat in self.answers if start <= sent and sent + lat <= end]


async def _probe(
    session: aiohttp.ClientSession,
    probe: _Probe,
    stop: asyncio.Event,
    send: Callable[[aiohttp.ClientSession], object],
) -> None:
    while not stop.is_set():
        sent = time.monotonic()
        async with send(session) as response:  # type: ignore[attr-defined]
            await response.read()
            if response.status == 200:
                probe.answers.append((sent, time.monotonic() - sent))
        await asyncio.sleep(PROBE_PERIOD_S)


@dataclass
class _Agent:
    """What a bench agent knows: its change counter, and a nudge to refetch."""

    name: str
    since: int = 0
    refetch: asyncio.Event = field(default_factory=asyncio.Event)


async def _heartbeats(
    session: aiohttp.ClientSession, url: str, agent: _Agent, stop: asyncio.Event, offset_s: float
) -> None:
    """An agent's heartbeat every ``HEARTBEAT_S`` with its change counter; not up to date:
    refetch now (as ``node_agent.poller`` does)."""
    await asyncio.sleep(offset_s)
    while not stop.is_set():
        body = orjson.dumps({"last_change": agent.since, "capacity": 8})
        async with session.post(
            f"{url}{API}/status/{agent.name}", data=body, headers=HEADERS
        ) as response:
            reply = orjson.loads(await response.read())
        if response.status == 200 and not reply["is_up_to_date"]:
            agent.refetch.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HEARTBEAT_S):
                await stop.wait()


async def _configs(
    session: aiohttp.ClientSession,
    url: str,
    agent: _Agent,
    stop: asyncio.Event,
    counts: dict[str, int],
) -> None:
    """An agent's config loop: a long poll of ``LONG_POLL_S``, cut short by a nudge."""
    while not stop.is_set():
        agent.refetch.clear()
        poll = asyncio.ensure_future(_fetch(session, url, agent))
        nudge = asyncio.ensure_future(agent.refetch.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({poll, nudge, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (poll, nudge, stopping):
                task.cancel()
            await asyncio.gather(poll, nudge, stopping, return_exceptions=True)
        polled = not poll.cancelled() and poll.exception() is None
        if not polled and agent.refetch.is_set() and not stop.is_set():
            poll = asyncio.ensure_future(_fetch(session, url, agent, wait=False))
            await poll
        if not poll.cancelled() and poll.exception() is None and poll.result() is not None:
            counts["fetches"] += 1
            counts["max"] = max(counts["max"], poll.result() or 0)


async def _fetch(
    session: aiohttp.ClientSession, url: str, agent: _Agent, *, wait: bool = True
) -> int | None:
    """One config fetch; the number of configs when the set changed, else None."""
    params = {"since": str(agent.since), "wait_s": str(LONG_POLL_S if wait else 0)}
    async with session.get(f"{url}{API}/configs/{agent.name}", params=params) as response:
        raw = await response.read()
    if response.status != 200:
        await asyncio.sleep(0.5)
        return None
    body = orjson.loads(raw)
    changed = body["last_change"] != agent.since
    agent.since = body["last_change"]
    return len(body["configs"]) if changed else None


async def _client(url: str, checks: int, nodes: int, results: BigPutResults) -> None:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        names = [f"node-{i:03d}" for i in range(nodes)]
        for name in names:
            status = {"last_change": 0, "capacity": 8}
            # With --redis, /readyz answers before the lease is won (a follower on standby
            # is ready): wait for the leader.
            async with asyncio.timeout(30):
                while True:
                    async with session.post(f"{url}{API}/status/{name}", json=status) as reply:
                        text = await reply.text()
                    if reply.status == 200:
                        break
                    assert reply.status == 503, text
                    await asyncio.sleep(0.2)
        stop = asyncio.Event()
        healthz, heartbeat = _Probe(), _Probe()
        counts = {"fetches": 0, "max": 0}
        agents = [_Agent(name) for name in names]
        beat = orjson.dumps({"last_change": -1})
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(
                _probe(session, healthz, stop, lambda s: s.get(f"{url}/healthz")),
                name="healthz_probe",
            )
            tasks.create_task(
                _probe(
                    session,
                    heartbeat,
                    stop,
                    lambda s: s.post(f"{url}{API}/status/{names[0]}", data=beat, headers=HEADERS),
                ),
                name="heartbeat_probe",
            )
            for i, agent in enumerate(agents):
                offset = HEARTBEAT_S * i / len(agents)
                tasks.create_task(
                    _heartbeats(session, url, agent, stop, offset), name=f"beat-{agent.name}"
                )
                tasks.create_task(
                    _configs(session, url, agent, stop, counts), name=f"configs-{agent.name}"
                )
            try:
                configs = configs_body(checks)
                over = configs_body(OVER_LIMIT)
                steps: list[tuple[str, str, str, dict[str, object], int]] = [
                    ("PUT new", "PUT", "/sources/bench", {"configs": configs}, 200),
                    ("PUT same", "PUT", "/sources/bench", {"configs": configs}, 200),
                    (
                        "POST to 2nd source",
                        "POST",
                        "/checks",
                        {"source": "b", "configs": configs},
                        200,
                    ),
                    ("PUT empty", "PUT", "/sources/bench", {"configs": []}, 200),
                    ("PUT empty 2nd", "PUT", "/sources/b", {"configs": []}, 200),
                    ("PUT over the limit", "PUT", "/sources/c", {"configs": over}, 413),
                ]
                for label, method, path, payload, expected in steps:
                    await asyncio.sleep(1.0)  # the agents have fetched; the loop is quiet
                    body = orjson.dumps(payload)
                    started = time.monotonic()
                    async with session.request(
                        method, f"{url}{API}{path}", data=body, headers=HEADERS
                    ) as response:
                        raw = await response.read()
                    elapsed = time.monotonic() - started
                    reply = orjson.loads(raw)
                    reply.pop("digests", None)
                    results.phases.append(
                        Phase(
                            name=label,
                            method=method,
                            checks=len(payload["configs"]),  # type: ignore[arg-type]
                            body_bytes=len(body),
                            status=response.status,
                            expected=expected,
                            reply=reply,
                            started=started,
                            request_s=elapsed,
                        )
                    )
                    if label == "PUT new":
                        await asyncio.sleep(2.0)
                        async with session.get(f"{url}{API}") as response:
                            state = orjson.loads(await response.read())
                        results.dangling_after_add = state["totals"]["dangling"]
                        results.configs_per_node = sorted(len(n["configs"]) for n in state["nodes"])
                await asyncio.sleep(1.0)
            finally:
                stop.set()
        for phase in results.phases:
            end = phase.started + phase.request_s
            h = healthz.during(phase.started, end)
            b = heartbeat.during(phase.started, end)
            phase.healthz = len(h)
            phase.healthz_max_ms = max(h, default=0.0) * 1e3
            phase.heartbeats = len(b)
            phase.heartbeat_max_ms = max(b, default=0.0) * 1e3
            phase.heartbeat_p99_ms = percentile(b, 99) * 1e3 if b else 0.0
        results.fetches = counts["fetches"]
        results.fetch_max_configs = counts["max"]


def _apply_lag(results: BigPutResults, samples: list[tuple[float, float, float]]) -> None:
    results.stalls = [(start, lag) for start, lag, _ in samples if lag > GOAL_STALL_S]
    for phase in results.phases:
        end = phase.started + phase.request_s
        during = [
            (lag, min(lag, busy))
            for start, lag, busy in samples
            if start < end and start + LAG_PERIOD_S + lag > phase.started
        ]
        phase.max_stall_s = max((lag for lag, _ in during), default=0.0)
        phase.max_busy_s = max((busy for _, busy in during), default=0.0)
        phase.stalls_over_goal = sum(1 for lag, _ in during if lag > GOAL_STALL_S)


def _count_log(results: BigPutResults, path: Path) -> None:
    raw = path.read_bytes()
    results.log_bytes = len(raw)
    for line in raw.splitlines():
        try:
            event = orjson.loads(line).get("event", "?")
        except orjson.JSONDecodeError:
            event = "(not json)"
        results.log_lines[event] = results.log_lines.get(event, 0) + 1


def run_bigput(
    *,
    log_dir: Path,
    checks: int = CHECKS,
    nodes: int = NODES,
    profile: bool = False,
    redis: bool = False,
    gc_default: bool = False,
    progress: Callable[[str], None] = print,
) -> BigPutResults:
    log_dir.mkdir(parents=True, exist_ok=True)
    results = BigPutResults(
        checks=checks, nodes=nodes, store="redis" if redis else "memory", profiled=profile
    )
    with tempfile.TemporaryDirectory() as work:
        lag_path = Path(work) / "lag.json"
        prof_path = Path(work) / "dispatcher.prof"
        log_path = log_dir / f"bigput-{results.store}.log"
        log_path.unlink(missing_ok=True)
        redis_server = None
        if redis:
            from tests.redis_server import RedisServer

            redis_server = RedisServer(port=free_port(), workdir=Path(work))
            redis_server.start()
        port = free_port()
        argv = [sys.executable, "-m", "tests.bench.bigput", "serve", "--port", str(port)]
        argv += ["--lag-out", str(lag_path)]
        if profile:
            argv += ["--profile", str(prof_path)]
        if redis_server is not None:
            argv += ["--redis-url", redis_server.url]
        if gc_default:
            argv += ["--gc-default"]
        proc = Proc("dispatcher", argv, log_path).start()
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{url}/readyz", timeout_s=30, proc=proc)
            progress(f"bigput: {checks:,} checks, {nodes} agents, {results.store} store")
            started = time.monotonic()
            busy_before = machine_busy_s()
            ours_before = _cpu_s(proc.pid, redis_server)
            asyncio.run(_client(url, checks, nodes, results))
            busy_after = machine_busy_s()
            ours_after = _cpu_s(proc.pid, redis_server)
            spans = (busy_before, busy_after, ours_before, ours_after)
            if all(span is not None for span in spans):
                b0, b1, o0, o1 = (float(span or 0.0) for span in spans)
                other = max(0.0, (b1 - b0) - (o1 - o0))
                results.other_cpu_pct = other / (time.monotonic() - started) * 100
        finally:
            proc.stop(timeout_s=60)
            if redis_server is not None:
                redis_server.stop()
        measured = orjson.loads(lag_path.read_bytes())
        _apply_lag(results, measured["lags"])
        results.stall_stacks = measured["stacks"]
        results.gc_pauses = [tuple(p) for p in measured["gc"]]
        _count_log(results, log_path)
        if profile:
            out = io.StringIO()
            stats = pstats.Stats(str(prof_path), stream=out)
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(45)
            results.profile_top = out.getvalue()
    return results


@dataclass(frozen=True)
class BigPutGoal:
    name: str
    ok: bool
    detail: str
    hard: bool  # missing it fails make bench


def goals(results: BigPutResults) -> list[BigPutGoal]:
    failed = "" if results.all_ok else "; a request did not get the status expected"
    where = f"a {results.checks:,}-check request, {results.store} store"
    complete = bool(results.phases) and results.all_ok
    other = (
        f" (other processes used {results.other_cpu_pct:.0f}% of a CPU)"
        if results.other_cpu_pct is not None
        else ""
    )
    return [
        BigPutGoal(
            f"bigput: the event loop is never busy over {HARD_BUSY_S * 1e3:g} ms without"
            f" yielding during {where}",
            complete and results.max_busy_s <= HARD_BUSY_S,
            f"longest {results.max_busy_s * 1e3:.1f} ms on a CPU{failed}",
            hard=True,
        ),
        BigPutGoal(
            f"bigput: target, no stall over {GOAL_STALL_S * 1e3:g} ms during {where}",
            complete and results.max_stall_s <= GOAL_STALL_S,
            f"longest {results.max_stall_s * 1e3:.1f} ms{other}{failed}",
            hard=False,
        ),
    ]


def _cpu_s(server: int, redis_server: object) -> float | None:
    """CPU seconds of this process, the dispatcher and redis-server (when there is one)."""
    pids = [os.getpid(), server]
    popen = getattr(redis_server, "process", None)
    if popen is not None:
        pids.append(popen.pid)
    times = [process_cpu_s(pid) for pid in pids]
    return None if None in times else sum(t for t in times if t is not None)


def report(results: BigPutResults) -> tuple[str, list[BigPutGoal]]:
    """The section's text (goals not included) and the goals."""
    out = [
        f"Big change: {results.checks:,} distinct checks in one request, {results.nodes} node"
        f" agents long polling, {results.store} store; the dispatcher's loop-lag probe sleeps"
        f" {LAG_PERIOD_S * 1e3:g} ms again and again; /healthz and a heartbeat every"
        f" {PROBE_PERIOD_S * 1e3:g} ms"
        + (" (UNDER cProfile: times inflated)" if results.profiled else ""),
        "",
    ]
    header = (
        f"{'request':<20} {'status':>6} {'MB':>5} {'request s':>9} {'max stall ms':>12}"
        f" {'on CPU ms':>9}"
        f" {'stalls>goal':>11} {'healthz':>7} {'healthz max ms':>14} {'heartbeats':>10}"
        f" {'hb max ms':>9} {'hb p99 ms':>9}  reply"
    )
    out += [header, "-" * len(header)]
    for p in results.phases:
        out.append(
            f"{p.name:<20} {p.status:>6} {p.body_bytes / 1e6:>5.2f} {p.request_s:>9.2f}"
            f" {p.max_stall_s * 1e3:>12.1f} {p.max_busy_s * 1e3:>9.1f}"
            f" {p.stalls_over_goal:>11} {p.healthz:>7}"
            f" {p.healthz_max_ms:>14.1f} {p.heartbeats:>10} {p.heartbeat_max_ms:>9.1f}"
            f" {p.heartbeat_p99_ms:>9.1f}  {orjson.dumps(p.reply).decode()[:120]}"
        )
    per_node = results.configs_per_node
    spread = f"{per_node[0]:,}-{per_node[-1]:,}" if per_node else "-"
    out.append(
        f"  after the first PUT: {spread} checks per node, {results.dangling_after_add:,}"
        f" dangling; {results.fetches:,} config fetches by the agents over the run (largest"
        f" {results.fetch_max_configs:,} configs)"
    )
    top = sorted(results.log_lines.items(), key=lambda kv: -kv[1])[:6]
    out.append(
        f"  dispatcher log: {results.log_bytes / 1e6:.1f} MB, lines by event: "
        + ", ".join(f"{event} {n:,}" for event, n in top)
    )
    pauses = sorted((d for _, d in results.gc_pauses), reverse=True)
    out.append(
        f"  full garbage collections: {len(pauses)}, longest "
        + ", ".join(f"{d * 1e3:.0f}" for d in pauses[:5])
        + " ms"
    )
    total = sum(results.stall_stacks.values())
    if total:
        out.append(
            f"  where the loop stalled (> {STALL_SAMPLE_AFTER_S * 1e3:g} ms; samples every"
            f" {STALL_SAMPLE_S * 1e3:g} ms, {total} in all), innermost first:"
        )
        for stack, count in sorted(results.stall_stacks.items(), key=lambda kv: -kv[1])[:12]:
            out.append(f"    {count:>5}  {stack[:230]}")
    if results.other_cpu_pct is not None and results.other_cpu_pct > DISTURBED_PCT:
        out.append(
            f"  NOTE: other processes used {results.other_cpu_pct:.0f}% of a CPU during the"
            " run; stalls include the time the dispatcher waited for a CPU."
        )
    if results.profile_top:
        out += ["", results.profile_top]
    return "\n".join(out), goals(results)


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bigput", description=__doc__)
    parser.add_argument("--checks", type=int, default=CHECKS)
    parser.add_argument("--nodes", type=int, default=NODES)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--redis", action="store_true", help="--store redis (real redis-server)")
    parser.add_argument(
        "--gc-default",
        action="store_true",
        help="leave the collector as Python sets it (what the dispatcher did before)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    results = run_bigput(
        log_dir=args.out / "logs",
        checks=args.checks,
        nodes=args.nodes,
        profile=args.profile,
        redis=args.redis,
        gc_default=args.gc_default,
    )
    text, checked = report(results)
    print(text)
    print()
    for goal in checked:
        print(f"{'GOAL MET   ' if goal.ok else 'GOAL MISSED'}: {goal.name}: {goal.detail}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"bigput-{results.store}.json").write_bytes(
        orjson.dumps(asdict(results), option=orjson.OPT_INDENT_2)
    )
    if not args.profile and not all(g.ok for g in checked if g.hard):
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
