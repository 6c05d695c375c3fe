"""The history benchmark: results ingestion with the check history on and off, per store.

For each store (sqlite with ``--data-dir`` on the repository's disk, memory, redis against
a real ``redis-server`` without persistence, one per dispatcher) two real standalone
dispatcher processes run side by side, configured alike (``--warmup-duration 0``, a long
``--node-expiration-timeout``, log level info to a file as in production) except that
one keeps the history (the defaults: 2,000 results and 7 days per check) and the other
runs with ``--history-max-results 0`` (no history: the baseline).

Each gets ``NODES`` simulated node agents, registered over HTTP (``POST /status/{node}``,
never heartbeating again) and ``CHECKS`` checks with ``interval_s`` 1 in one PUT; each
agent reads its configs (``GET /configs/{node}``) and then posts results as a real agent
does (``POST /results/{node}``, one batch per node per second, the nodes staggered over
the second, each check one result per second, ``run_id`` a uuid4, in order; a post that
comes late carries the results of every second it missed, as an agent's pending batch
would). That is 1,000 results/s offered to each dispatcher.

Measured in turns (a warm-up of ``WARMUP_S`` on each, then ``ROUNDS`` rounds of
``ROUND_S`` on each, on/off then off/on, so a slow spell of the shared machine hits both
alike): results/s the dispatcher accepted (the replies' ``accepted`` over the time from
the first post to the last reply), reply latency of the results posts, and the
dispatcher's CPU seconds over the round (utime + stime from ``/proc/<pid>/stat``, every
thread: the sqlite writer's too; redis-server's CPU is shown apart). The CPU overhead of
the history is CPU_on / CPU_off - 1 over all rounds.

Memory, after the rounds (both processes got the same results): RSS of the history-on
process minus the history-off one, per 1,000 results held (the results held are counted
with ``GET /checks/{digest}/history?limit=5000`` for every check; a sample of the off
process's histories is checked to be empty); and the store's own growth: the sqlite data
dir's files, Redis's ``used_memory``, on minus off, per 1,000 results.

Then the history-on process alone is offered more (``RAMP`` results/s: 2, 4, 8, 16
results per check per second, each result a second apart divided among them) for ``RAMP_S``
each: accepted results/s and reply latency p50/p99, to find what the leader sustains
with history on; its RSS growth over the ramp per 1,000 more results held is a second
estimate of the memory per result (no configs added meanwhile).

Goal (reported, not hard): the history adds under ``CPU_GOAL`` (20 %) leader CPU at
1,000 results/s, per store.

Run alone: ``python -m tests.bench.history [--stores sqlite,memory,redis] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import orjson

from tests.bench.machine import machine_busy_s, process_cpu_s
from tests.bench.stats import percentile, table
from tests.bench.stores import (
    API,
    FLAGS,
    HEADERS,
    _await_checks,
    _files,
    _redis_used_memory,
    _Server,
    _session,
    _Setup,
    _stop,
)
from tests.processes import ROOT

STORES = ("sqlite", "memory", "redis")
NODES = 20
CHECKS = 1_000
PERIOD_S = 1.0
"""Each check's interval, and how often each agent posts its batch."""
RATE = CHECKS  # results/s offered in the rounds: one per check per second
WARMUP_S = 3.0
ROUNDS = 3
ROUND_S = 5.0
RAMP = (2, 4, 8, 16)
"""Results per check per second offered to the history-on process after the rounds."""
RAMP_S = 4.0
CPU_GOAL = 0.20
FAIL_EVERY = 50
"""One result in this many fails (an error and ok false), so uptimes are not all 1."""
COUNT_CONNECTIONS = 8
OFF_SAMPLE = 20  # checks of the history-off process whose history is checked empty
DISTURBED_PCT = 20.0  # other processes' CPU during a round, in % of one CPU
REQUEST_TIMEOUT_S = 60.0


# ------------------------------------------------------------------ results


@dataclass
class Window:
    """One load at one offered rate on one dispatcher."""

    label: str  # "on" | "off"
    offered_per_s: float
    seconds: float  # first post to last reply
    posts: int
    offered: int
    accepted: int
    rejected: int
    errors: int
    accepted_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_s: float | None
    redis_cpu_s: float | None
    client_cpu_s: float
    other_cpu_pct: float | None

    @property
    def server_cpu_pct(self) -> float | None:
        return None if self.server_cpu_s is None else self.server_cpu_s / self.seconds * 100


@dataclass
class StoreRun:
    store: str
    flags: list[str]
    on: list[Window] = field(default_factory=list)
    off: list[Window] = field(default_factory=list)
    ramp: list[Window] = field(default_factory=list)
    accepted_on: int = 0  # results each process accepted before the memory step
    accepted_off: int = 0
    held_on: int | None = None  # counted through the history route
    held_off_sample: int | None = None  # results in the off process's sampled histories
    count_s: float | None = None  # the time counting the held results took
    rss_on_mib: float | None = None
    rss_off_mib: float | None = None
    store_bytes_on: int | None = None  # sqlite: data dir files; redis: used_memory
    store_bytes_off: int | None = None
    rss_on_after_ramp_mib: float | None = None
    held_after_ramp: int | None = None  # held_on + what the ramp had accepted

    def _cpu(self, windows: list[Window]) -> float | None:
        cpu = [w.server_cpu_s for w in windows]
        if not windows or None in cpu:
            return None
        return sum(c for c in cpu if c is not None) / sum(w.seconds for w in windows) * 100

    @property
    def cpu_pct_on(self) -> float | None:
        return self._cpu(self.on)

    @property
    def cpu_pct_off(self) -> float | None:
        return self._cpu(self.off)

    @property
    def cpu_overhead(self) -> float | None:
        """CPU_on / CPU_off - 1 (per second of load: the rounds are alike but not equal)."""
        on, off = self.cpu_pct_on, self.cpu_pct_off
        return None if on is None or not off else on / off - 1

    @property
    def rss_kib_per_1000(self) -> float | None:
        """(RSS on - RSS off) per 1,000 results held."""
        if self.rss_on_mib is None or self.rss_off_mib is None or not self.held_on:
            return None
        return (self.rss_on_mib - self.rss_off_mib) * 1024 / (self.held_on / 1000)

    @property
    def ramp_kib_per_1000(self) -> float | None:
        """RSS growth of the on process over the ramp per 1,000 more results held."""
        if (
            self.rss_on_mib is None
            or self.rss_on_after_ramp_mib is None
            or self.held_on is None
            or self.held_after_ramp is None
            or self.held_after_ramp <= self.held_on
        ):
            return None
        grown = (self.rss_on_after_ramp_mib - self.rss_on_mib) * 1024
        return grown / ((self.held_after_ramp - self.held_on) / 1000)

    @property
    def store_kib_per_1000(self) -> float | None:
        if self.store_bytes_on is None or self.store_bytes_off is None or not self.held_on:
            return None
        return (self.store_bytes_on - self.store_bytes_off) / 1024 / (self.held_on / 1000)


@dataclass
class HistoryResults:
    nodes: int
    checks: int
    rate: int
    round_s: float
    rounds: int
    stores: list[StoreRun] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        for item, run in zip(out["stores"], self.stores, strict=True):
            for name in (
                "cpu_pct_on",
                "cpu_pct_off",
                "cpu_overhead",
                "rss_kib_per_1000",
                "ramp_kib_per_1000",
                "store_kib_per_1000",
            ):
                item[name] = getattr(run, name)
        return out


# ------------------------------------------------------------------ helpers


def check_config(n: int) -> dict[str, object]:
    return {
        "name": "http",
        "instances": [{"url": f"http://svc-{n}.bench.svc.cluster.local:8080/healthz"}],
        "interval_s": 1,
    }


def rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


async def _post(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes | None = None
) -> tuple[int, bytes]:
    async with session.request(method, url, data=body, headers=HEADERS) as response:
        return response.status, await response.read()


async def _prepare(session: aiohttp.ClientSession, url: str) -> dict[str, list[str]]:
    """Registers the nodes, PUTs the checks, reads each node's configs: digests per node."""
    for i in range(NODES):
        body = orjson.dumps({"last_change": -1, "capacity": 8, "labels": {"zone": f"z-{i % 3}"}})
        status, raw = await _post(session, "POST", f"{url}{API}/status/{_node(i)}", body)
        if status != 200:
            raise RuntimeError(f"registering a node: {status} {raw[:300]!r}")
    body = orjson.dumps({"configs": [check_config(n) for n in range(CHECKS)]})
    status, raw = await _post(session, "PUT", f"{url}{API}/sources/bench", body)
    if status != 200:
        raise RuntimeError(f"PUT of the checks: {status} {raw[:300]!r}")
    placed: dict[str, list[str]] = {}
    for i in range(NODES):
        status, raw = await _post(session, "GET", f"{url}{API}/configs/{_node(i)}")
        if status != 200:
            raise RuntimeError(f"configs of {_node(i)}: {status} {raw[:300]!r}")
        placed[_node(i)] = [c["digest"] for c in orjson.loads(raw)["configs"]]
    total = sum(len(d) for d in placed.values())
    if total != CHECKS:
        raise RuntimeError(f"{total} of {CHECKS} checks placed on the {NODES} nodes")
    return placed


def _node(i: int) -> str:
    return f"bench-node-{i:02d}"


def _cpu(pid: int | None) -> float | None:
    return None if pid is None else process_cpu_s(pid)


def _less(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


async def _load(
    session: aiohttp.ClientSession,
    server: _Server,
    redis_pid: int | None,
    placed: dict[str, list[str]],
    *,
    label: str,
    per_check: int,
    seconds: float,
) -> Window:
    """Every node posts its checks' results once a second for ``seconds``: ``per_check``
    results per check per second (their ``started_at`` spread over the second, in order)."""
    assert server.proc is not None
    loop = asyncio.get_running_loop()
    url = f"{server.url}{API}/results/"
    # A little ahead, so that the first node's post is not already late.
    start = loop.time() + 0.05
    end = start + seconds
    wall_offset = time.time() - loop.time()
    times: list[float] = []
    counts = {"posts": 0, "offered": 0, "accepted": 0, "rejected": 0, "errors": 0}
    last_reply = start
    runs = 0

    async def agent(index: int, node: str, digests: list[str]) -> None:
        nonlocal last_reply, runs
        first = start + PERIOD_S * index / len(placed)
        last_tick = math.ceil((end - first) / PERIOD_S) - 1
        tick = 0
        while tick <= last_tick:
            await asyncio.sleep(max(0.0, first + tick * PERIOD_S - loop.time()))
            # Late (the last post took long): the results of every second missed go now.
            upto = min(last_tick, max(tick, int((loop.time() - first) / PERIOD_S)))
            results = []
            for t in range(tick, upto + 1):
                for j in range(per_check):
                    # Ran within the second before this tick, in order: never in the future.
                    started = wall_offset + first + (t - 1 + j / per_check) * PERIOD_S
                    for digest in digests:
                        runs += 1
                        ok = runs % FAIL_EVERY != 0
                        results.append(
                            {
                                "digest": digest,
                                "run_id": uuid.uuid4().hex,
                                "ok": ok,
                                "errors": [] if ok else ["GET http://svc/healthz: 503"],
                                "started_at": started,
                                "duration_s": 0.01 + (runs % 7) * 0.004,
                                "output": "HTTP 200" if ok else "HTTP 503",
                            }
                        )
            body = orjson.dumps({"results": results})
            sent = time.perf_counter()
            try:
                status, raw = await _post(session, "POST", url + node, body)
            except (aiohttp.ClientError, TimeoutError):
                status, raw = 0, b""
            times.append(time.perf_counter() - sent)
            last_reply = max(last_reply, loop.time())
            counts["posts"] += 1
            counts["offered"] += len(results)
            if status == 200:
                reply = orjson.loads(raw)
                counts["accepted"] += reply["accepted"]
                counts["rejected"] += len(reply["rejected"])
            else:
                counts["errors"] += 1
                if counts["errors"] == 1:
                    print(
                        f"history: results post answered {status}: {raw[:300]!r}", file=sys.stderr
                    )
            tick = upto + 1

    server0, redis0 = _cpu(server.proc.pid), _cpu(redis_pid)
    client0, machine0 = time.process_time(), machine_busy_s()
    async with asyncio.TaskGroup() as tasks:
        for index, (node, digests) in enumerate(placed.items()):
            tasks.create_task(agent(index, node, digests), name=f"bench-agent-{node}")
    server1, redis1 = _cpu(server.proc.pid), _cpu(redis_pid)
    client1, machine1 = time.process_time(), machine_busy_s()
    took = max(last_reply, end) - start
    server_cpu, redis_cpu = _less(server1, server0), _less(redis1, redis0)
    client_cpu = client1 - client0
    machine = _less(machine1, machine0)
    other = (
        None
        if machine is None or server_cpu is None
        else max(0.0, machine - server_cpu - (redis_cpu or 0.0) - client_cpu) / took * 100
    )
    return Window(
        label=label,
        offered_per_s=per_check * sum(len(d) for d in placed.values()) / PERIOD_S,
        seconds=took,
        posts=counts["posts"],
        offered=counts["offered"],
        accepted=counts["accepted"],
        rejected=counts["rejected"],
        errors=counts["errors"],
        accepted_per_s=counts["accepted"] / took,
        p50_ms=percentile(times, 50) * 1e3,
        p99_ms=percentile(times, 99) * 1e3,
        max_ms=max(times, default=math.nan) * 1e3,
        server_cpu_s=server_cpu,
        redis_cpu_s=redis_cpu,
        client_cpu_s=client_cpu,
        other_cpu_pct=other,
    )


async def _count_held(
    session: aiohttp.ClientSession, url: str, digests: list[str]
) -> tuple[int, float]:
    """Results held over ``digests`` (their history routes), and the time it took."""
    pending = iter(digests)
    held = 0
    started = time.perf_counter()

    async def reader() -> None:
        nonlocal held
        for digest in pending:  # one iterator shared by every reader: each digest once
            status, raw = await _post(
                session, "GET", f"{url}{API}/checks/{digest}/history?limit=5000"
            )
            if status != 200:
                raise RuntimeError(f"history of {digest}: {status} {raw[:300]!r}")
            held += len(orjson.loads(raw)["results"])

    async with asyncio.TaskGroup() as tasks:
        for k in range(COUNT_CONNECTIONS):
            tasks.create_task(reader(), name=f"bench-history-reader-{k}")
    return held, time.perf_counter() - started


def _store_bytes(setup: _Setup) -> int | None:
    if setup.data_dir is not None:
        return sum(_files(setup.data_dir).values())
    if setup.redis_server is not None:
        return _redis_used_memory(setup.redis_server.url)
    return None


def _redis_pid(setup: _Setup) -> int | None:
    process = setup.redis_server.process if setup.redis_server else None
    return process.pid if process is not None else None


def _run_store(
    store: str, *, work: Path, log_dir: Path, rounds: int, progress: Callable[[str], None]
) -> StoreRun:
    with contextlib.ExitStack() as stack:
        servers: dict[str, tuple[_Server, _Setup]] = {}
        for label, extra in (("on", []), ("off", ["--history-max-results", "0"])):
            setup = stack.enter_context(_Setup.open(store, work, f"history-{label}"))
            log_path = log_dir / f"history-{store}-{label}.log"
            log_path.unlink(missing_ok=True)
            server = _Server(store, [*setup.flags, *extra], log_path)
            started = server.start()
            stack.callback(_stop, server)
            servers[label] = (server, setup)
            _await_checks(server, started, 0)
        run = StoreRun(store=store, flags=FLAGS[store])

        async def measure() -> None:
            async with _session(NODES + COUNT_CONNECTIONS) as session:
                placed = {
                    label: await _prepare(session, server.url)
                    for label, (server, _) in servers.items()
                }

                async def load(label: str, per_check: int, seconds: float) -> Window:
                    server, setup = servers[label]
                    return await _load(
                        session,
                        server,
                        _redis_pid(setup),
                        placed[label],
                        label=label,
                        per_check=per_check,
                        seconds=seconds,
                    )

                progress(f"history: {store}: warm-up, {WARMUP_S:g} s on each at {RATE:,}/s")
                warm = {label: await load(label, 1, WARMUP_S) for label in servers}
                for round_no in range(rounds):
                    order = ("on", "off") if round_no % 2 == 0 else ("off", "on")
                    progress(
                        f"history: {store}: round {round_no + 1}/{rounds},"
                        f" {ROUND_S:g} s each at {RATE:,} results/s ({' then '.join(order)})"
                    )
                    for label in order:
                        window = await load(label, 1, ROUND_S)
                        (run.on if label == "on" else run.off).append(window)
                run.accepted_on = warm["on"].accepted + sum(w.accepted for w in run.on)
                run.accepted_off = warm["off"].accepted + sum(w.accepted for w in run.off)

                await asyncio.sleep(1.0)  # replies sent, the writers' last commits done
                on, on_setup = servers["on"]
                off, off_setup = servers["off"]
                assert on.proc is not None
                assert off.proc is not None
                run.rss_on_mib, run.rss_off_mib = rss_mib(on.proc.pid), rss_mib(off.proc.pid)
                run.store_bytes_on = _store_bytes(on_setup)
                run.store_bytes_off = _store_bytes(off_setup)
                progress(f"history: {store}: counting the results held (history route)")
                digests = [d for ds in placed["on"].values() for d in ds]
                run.held_on, run.count_s = await _count_held(session, on.url, digests)
                sample = [d for ds in placed["off"].values() for d in ds][:OFF_SAMPLE]
                run.held_off_sample, _ = await _count_held(session, off.url, sample)

                for per_check in RAMP:
                    progress(
                        f"history: {store}: history on, {per_check * CHECKS:,} results/s"
                        f" offered for {RAMP_S:g} s"
                    )
                    run.ramp.append(await load("on", per_check, RAMP_S))
                await asyncio.sleep(1.0)
                run.rss_on_after_ramp_mib = rss_mib(on.proc.pid)
                run.held_after_ramp = run.held_on + sum(w.accepted for w in run.ramp)

        asyncio.run(measure())
    return run


def run_history(
    *,
    log_dir: Path,
    work_dir: Path,
    stores: tuple[str, ...] = STORES,
    rounds: int = ROUNDS,
    progress: Callable[[str], None] = print,
) -> HistoryResults:
    log_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    results = HistoryResults(nodes=NODES, checks=CHECKS, rate=RATE, round_s=ROUND_S, rounds=rounds)
    # The sqlite data dirs next to the results, on the repository's disk (not a tmpfs).
    with tempfile.TemporaryDirectory(prefix="history-", dir=work_dir) as tmp:
        for store in stores:
            results.stores.append(
                _run_store(store, work=Path(tmp), log_dir=log_dir, rounds=rounds, progress=progress)
            )
    return results


# ------------------------------------------------------------------ the report


def _f(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def _rate(windows: list[Window]) -> float | None:
    seconds = sum(w.seconds for w in windows)
    return sum(w.accepted for w in windows) / seconds if seconds else None


def _p(windows: list[Window], attribute: str) -> float | None:
    """The median round's latency percentile (each round has its own)."""
    values = sorted(getattr(w, attribute) for w in windows)
    return values[len(values) // 2] if values else None


def goals(results: HistoryResults) -> list[tuple[str, bool, str]]:
    out: list[tuple[str, bool, str]] = []
    for run in results.stores:
        overhead = run.cpu_overhead
        errors = sum(w.errors for w in run.on + run.off)
        out.append(
            (
                f"history: adds under {CPU_GOAL * 100:g}% leader CPU at {results.rate:,}"
                f" results/s ({run.store})",
                overhead is not None and overhead < CPU_GOAL and errors == 0,
                f"{_f(run.cpu_pct_on)}% of a CPU with history vs {_f(run.cpu_pct_off)}% without"
                f" = {_f(None if overhead is None else overhead * 100, '+.1f')}%"
                + (f"; {errors} posts failed" if errors else ""),
            )
        )
    return out


def report(results: HistoryResults) -> tuple[str, list[tuple[str, bool, str]]]:
    """The section's text (goals not included) and the goals as (name, ok, detail)."""
    out = [
        f"History: results ingestion, a real standalone dispatcher per store with history on"
        f" (defaults) and off (--history-max-results 0); {results.nodes} agents posting"
        f" {results.checks:,} checks' results once a second over HTTP ({results.rate:,}"
        f" results/s), {results.rounds} rounds of {results.round_s:g} s on each, in turns",
        "",
    ]
    rows = []
    for run in results.stores:
        rows.append(
            [
                run.store,
                _f(_rate(run.on), ".0f"),
                _f(_rate(run.off), ".0f"),
                _f(run.cpu_pct_on),
                _f(run.cpu_pct_off),
                _f(None if run.cpu_overhead is None else run.cpu_overhead * 100, "+.1f"),
                f"{_f(_p(run.on, 'p50_ms'))} / {_f(_p(run.on, 'p99_ms'))}",
                f"{_f(_p(run.off, 'p50_ms'))} / {_f(_p(run.off, 'p99_ms'))}",
                _f(run.rss_on_mib, ".0f") + " / " + _f(run.rss_off_mib, ".0f"),
                "-" if run.held_on is None else f"{run.held_on:,}",
                _f(run.rss_kib_per_1000, ".0f"),
                _f(run.ramp_kib_per_1000, ".0f"),
                _f(run.store_kib_per_1000, ".0f"),
            ]
        )
    out.append(
        table(
            [
                "store",
                "accepted/s on",
                "off",
                "cpu % on",
                "off",
                "history cpu %",
                "post p50/p99 ms on",
                "off",
                "RSS MiB on / off",
                "results held",
                "RSS KiB/1,000 results",
                "ramp KiB/1,000",
                "store KiB/1,000",
            ],
            rows,
        )
    )
    out.append("")
    rows = []
    for run in results.stores:
        for w in run.ramp:
            rows.append(
                [
                    run.store,
                    f"{w.offered_per_s:,.0f}",
                    f"{w.accepted_per_s:,.0f}",
                    f"{w.accepted / w.offered * 100:.1f}" if w.offered else "-",
                    _f(w.p50_ms),
                    _f(w.p99_ms),
                    _f(w.max_ms),
                    _f(w.server_cpu_pct, ".0f"),
                    _f(None if w.redis_cpu_s is None else w.redis_cpu_s / w.seconds * 100, ".0f"),
                    str(w.errors),
                ]
            )
    out.append(
        table(
            [
                "history on: store",
                "offered/s",
                "accepted/s",
                "accepted %",
                "post p50 ms",
                "p99 ms",
                "max ms",
                "cpu %",
                "redis-server cpu %",
                "failed posts",
            ],
            rows,
        )
    )
    for run in results.stores:
        rounds = "; ".join(
            f"{w.label} {_f(w.server_cpu_pct)}% ({w.accepted_per_s:.0f}/s, other"
            f" {_f(w.other_cpu_pct, '.0f')}%)"
            for pair in zip(run.on, run.off, strict=False)
            for w in pair
        )
        out.append(f"  {run.store}: rounds {rounds}")
        redis_on = [w.redis_cpu_s for w in run.on]
        if run.on and None not in redis_on:
            on_s = sum(c for c in redis_on if c is not None) / sum(w.seconds for w in run.on)
            off_s = sum(w.redis_cpu_s or 0.0 for w in run.off) / sum(w.seconds for w in run.off)
            out.append(
                f"  {run.store}: redis-server CPU {on_s * 100:.1f}% with history vs"
                f" {off_s * 100:.1f}% without (not in the leader's CPU above)"
            )
        out.append(
            f"  {run.store}: accepted before the memory step {run.accepted_on:,} (on) /"
            f" {run.accepted_off:,} (off); held by the on process {run.held_on:,}"
            f" (counted in {_f(run.count_s, '.1f')} s), by the off process"
            f" {run.held_off_sample} in {OFF_SAMPLE} sampled checks; store size on / off:"
            f" {_f((run.store_bytes_on or 0) / 1e6, '.2f')} /"
            f" {_f((run.store_bytes_off or 0) / 1e6, '.2f')} MB"
            if run.held_on is not None and run.store_bytes_on is not None
            else f"  {run.store}: accepted before the memory step {run.accepted_on:,} (on) /"
            f" {run.accepted_off:,} (off); held by the on process {run.held_on or 0:,}, by the"
            f" off process {run.held_off_sample} in {OFF_SAMPLE} sampled checks"
        )
    noisy = [
        f"{run.store} {w.label}"
        for run in results.stores
        for w in run.on + run.off
        if (w.other_cpu_pct or 0.0) > DISTURBED_PCT
    ]
    if noisy:
        out.append(
            f"  NOTE: other processes used more than {DISTURBED_PCT:g}% of a CPU during rounds"
            f" of {', '.join(sorted(set(noisy)))}; those rounds are disturbed."
        )
    return "\n".join(out), goals(results)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.history", description=__doc__)
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    stores = tuple(s for s in args.stores.split(",") if s)
    unknown = set(stores) - set(STORES)
    if unknown:
        sys.exit(f"unknown store(s): {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    results = run_history(
        log_dir=args.out / "logs",
        work_dir=args.out,
        stores=stores,
        rounds=args.rounds,
        progress=lambda m: print(f"[{time.perf_counter() - started:5.1f} s] {m}", flush=True),
    )
    text, checked = report(results)
    print(text)
    print()
    for name, ok, detail in checked:
        print(f"{'GOAL MET   ' if ok else 'GOAL MISSED'}: {name}: {detail}")
    (args.out / "history.json").write_bytes(
        orjson.dumps(results.to_json(), option=orjson.OPT_INDENT_2)
    )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
