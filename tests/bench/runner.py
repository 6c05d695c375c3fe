"""In-process benchmarks of the node agent's scheduler on the system clock: how late runs
start, and what a flood of new checks does to the event loop.

Lateness: ``LATENESS_CHECKS`` check loops (``CheckLoop``, the agent's own) at a 1 s
interval, each run a no-op that yields once, with a capacity that never queues a run.
After a warm-up of one interval (the first runs are spread over it), every run's
lateness (its start against its schedule, as the agent's lateness histogram sees it) is
recorded for ``LATENESS_WINDOW_S``. Goal: p99 under ``LATENESS_GOAL_S``. This replaces
the unit tests' sub-second bounds on a run starting on time: a question of speed, not of
correctness.

Flood: a whole ``NodeAgent`` (poller, reconciler, check loops, results; the local
server on a free port) against a dispatcher in the same process that answers at once,
heartbeats every ``HEARTBEAT_S``, and hands it ``FLOOD_CHECKS`` new checks in one
configs reply (one PUT of a big source). A ticker every ``TICK_S`` notes the longest
stall of the loop while they start; then, with all of them running, the agent is told to
stop (SIGTERM) and the time until its leave reaches the dispatcher is taken. Goals: the
longest stall while the batch starts under ``STALL_GOAL_S``; no gap between heartbeats
longer than the interval plus ``STALL_GOAL_S``; the leave within the shutdown grace.
Logs at warning, as the agent benchmark runs the agent (the per-check ``check_started``
lines are the operator's choice of level).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dispatcher import wire
from dispatcher.common import logs
from dispatcher.common.clock import SystemClock
from node_agent.checks import CheckKind, InstanceModel, Outcome, RunContext, validate_instance
from node_agent.metrics import AgentMetrics
from node_agent.runner import CheckLoop, CheckSpec
from node_agent.service import NodeAgent, settle_garbage_collector
from node_agent.settings import AgentSettings
from tests.bench.stats import percentile

LATENESS_CHECKS = 1_000
LATENESS_INTERVAL_S = 1.0
LATENESS_WINDOW_S = 10.0
LATENESS_GOAL_S = 0.05
FLOOD_CHECKS = 50_000
FLOOD_INTERVAL_S = 300.0
HEARTBEAT_S = 1.0
GRACE_S = 5.0
TICK_S = 0.005
STALL_GOAL_S = 0.1


class NoOp(InstanceModel):
    pass


class NoOpKind:
    """A check that yields once and passes: the runner's own cost, nothing else."""

    def __init__(self) -> None:
        self.runs = 0

    def parse(self, instance: dict[str, Any], init_config: dict[str, Any]) -> NoOp:
        parsed: NoOp = validate_instance(NoOp, instance)
        return parsed

    async def run(self, instance: NoOp, context: RunContext) -> Outcome:
        self.runs += 1
        await asyncio.sleep(0)
        return Outcome(errors=[])


class _Lateness:
    """Stands in for the lateness histogram: keeps every observation."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.recording = False

    def observe(self, value: float, exemplar: object = None) -> None:
        if self.recording:
            self.values.append(value)


@dataclass
class RunnerResults:
    lateness_checks: int
    lateness_interval_s: float
    lateness_runs: int
    lateness_p50_ms: float
    lateness_p99_ms: float
    lateness_max_ms: float
    flood_checks: int
    flood_start_s: float
    flood_longest_stall_ms: float
    flood_longest_heartbeat_gap_s: float
    flood_heartbeats: int
    flood_leave_s: float
    flood_left: bool

    def goals(self) -> list[tuple[str, bool, str]]:
        return [
            (
                f"runner: p99 lateness of {self.lateness_checks:,} checks at "
                f"{self.lateness_interval_s:g} s < {LATENESS_GOAL_S * 1000:g} ms",
                self.lateness_p99_ms < LATENESS_GOAL_S * 1000,
                f"p99 {self.lateness_p99_ms:.1f} ms, p50 {self.lateness_p50_ms:.1f} ms, "
                f"max {self.lateness_max_ms:.1f} ms over {self.lateness_runs:,} runs",
            ),
            (
                f"runner: {self.flood_checks:,} new checks start without stalling the loop "
                f"over {STALL_GOAL_S * 1000:g} ms",
                self.flood_longest_stall_ms < STALL_GOAL_S * 1000,
                f"longest stall {self.flood_longest_stall_ms:.1f} ms; all started in "
                f"{self.flood_start_s:.2f} s",
            ),
            (
                f"runner: heartbeats every {HEARTBEAT_S:g} s while {self.flood_checks:,} "
                "checks start",
                self.flood_longest_heartbeat_gap_s < HEARTBEAT_S + STALL_GOAL_S,
                f"longest gap {self.flood_longest_heartbeat_gap_s:.3f} s over "
                f"{self.flood_heartbeats} heartbeats",
            ),
            (
                f"runner: SIGTERM with {self.flood_checks:,} checks leaves within the "
                f"{GRACE_S:g} s grace",
                self.flood_left and self.flood_leave_s <= GRACE_S,
                f"leave sent {self.flood_leave_s:.2f} s after the stop",
            ),
        ]


# ------------------------------------------------------------------------ lateness


async def _lateness() -> tuple[int, list[float]]:
    clock = SystemClock()
    metrics = AgentMetrics()
    recorder = _Lateness()
    metrics.lateness = recorder  # type: ignore[assignment]
    kind = NoOpKind()
    kinds: dict[str, CheckKind] = {"noop": kind}
    capacity = asyncio.Semaphore(LATENESS_CHECKS)
    rng = random.Random(5)
    loops = [
        CheckLoop(
            CheckSpec(
                digest=f"{n:032x}",
                name="noop",
                instances=({},),
                init_config={},
                interval_s=LATENESS_INTERVAL_S,
                timeout_s=LATENESS_INTERVAL_S,
            ),
            kinds=kinds,
            capacity=capacity,
            emit=lambda result: None,
            clock=clock,
            metrics=metrics,
            rng=rng,
        )
        for n in range(LATENESS_CHECKS)
    ]
    tasks = [asyncio.create_task(loop.run(), name=f"loop-{n}") for n, loop in enumerate(loops)]
    try:
        await asyncio.sleep(LATENESS_INTERVAL_S)  # the first runs, spread over it
        recorder.recording = True
        await asyncio.sleep(LATENESS_WINDOW_S)
        recorder.recording = False
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return kind.runs, recorder.values


# ------------------------------------------------------------------------- flood


class _Dispatcher:
    """The node-agent routes in process, answering at once."""

    def __init__(self, configs: list[wire.CheckConfigOut]) -> None:
        self.url = "http://dispatcher.bench"
        self.url_count = 1
        self.last_change = 1
        self.placed: list[wire.CheckConfigOut] = []
        self.pending = configs
        self.changed = asyncio.Event()
        self.heartbeats: list[float] = []
        self.left_at: float | None = None

    def next_url(self) -> None:
        pass

    def place(self) -> None:
        self.placed = self.pending
        self.last_change += 1
        self.changed.set()

    async def status(
        self, body: dict[str, Any], *, timeout_s: float | None = None
    ) -> wire.StatusOut:
        if body.get("leaving"):
            self.left_at = time.perf_counter()
        else:
            self.heartbeats.append(time.perf_counter())
        return wire.StatusOut(
            is_up_to_date=body["last_change"] in (-1, self.last_change),
            epoch=1,
            leader="bench",
            heartbeat_interval_s=HEARTBEAT_S,
            node_expiration_timeout_s=3 * HEARTBEAT_S,
        )

    async def configs(self, *, since: int | None, wait_s: float) -> wire.NodeConfigsOut:
        if since == self.last_change and wait_s > 0:
            changed = self.changed
            await SystemClock().wait(changed, timeout_s=wait_s)
            if changed.is_set():
                self.changed = asyncio.Event()
        return wire.NodeConfigsOut(last_change=self.last_change, epoch=1, configs=self.placed)

    async def results(self, results: list[dict[str, Any]]) -> wire.ResultsOut:
        return wire.ResultsOut(epoch=1, accepted=len(results), rejected=[])


def _configs(count: int) -> list[wire.CheckConfigOut]:
    return [
        wire.CheckConfigOut.model_validate(
            {
                "name": "noop",
                "instances": [{}],
                "init_config": {},
                "interval_s": FLOOD_INTERVAL_S,
                "timeout_s": 10.0,
                "node_selector": {},
                "weight": 1.0,
                "digest": f"{n:032x}",
                "sources": ["bench"],
                "node": "bench-node",
            }
        )
        for n in range(count)
    ]


async def _flood() -> dict[str, Any]:
    dispatcher = _Dispatcher(_configs(FLOOD_CHECKS))
    settings = AgentSettings(
        name="bench-node",
        port=0,
        capacity=1_000,
        heartbeat_interval_s=HEARTBEAT_S,
        shutdown_timeout_s=GRACE_S,
    )
    agent = NodeAgent(settings, client=dispatcher, rng=random.Random(3))
    agent.kinds["noop"] = NoOpKind()
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop), name="agent")
    gaps: list[float] = []
    ticking = True

    async def ticker() -> None:
        last = time.perf_counter()
        while ticking:
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            gaps.append(now - last - TICK_S)
            last = now

    async def until(condition: Callable[[], bool], limit_s: float) -> None:
        deadline = time.perf_counter() + limit_s
        while not condition():
            if time.perf_counter() > deadline:
                raise RuntimeError("the flood benchmark did not get there")
            await asyncio.sleep(0.01)

    await until(lambda: len(dispatcher.heartbeats) >= 2, 30)
    ticks = asyncio.create_task(ticker(), name="ticker")
    await asyncio.sleep(TICK_S * 5)
    started = time.perf_counter()
    first_heartbeat = len(dispatcher.heartbeats)
    dispatcher.place()
    await until(lambda: len(agent.reconciler.actual) == FLOOD_CHECKS, 300)
    start_s = time.perf_counter() - started
    await asyncio.sleep(2 * HEARTBEAT_S)  # heartbeats with every check running
    ticking = False
    await ticks
    beats = [started, *dispatcher.heartbeats[first_heartbeat:]]
    heartbeat_gaps = [b - a for a, b in itertools.pairwise(beats)]
    stopped = time.perf_counter()
    stop.set()
    async with asyncio.timeout(GRACE_S * 4):
        await running
    return {
        "start_s": start_s,
        "longest_stall_ms": max(gaps, default=0.0) * 1000,
        "longest_heartbeat_gap_s": max(heartbeat_gaps, default=0.0),
        "heartbeats": len(heartbeat_gaps),
        "leave_s": (dispatcher.left_at - stopped) if dispatcher.left_at else float("inf"),
        "left": dispatcher.left_at is not None,
    }


def run_runner(*, progress: Callable[[str], None]) -> RunnerResults:
    logs.configure(fmt="json", level="warning")
    settle_garbage_collector()  # as the agent process does at start
    progress(f"runner: lateness of {LATENESS_CHECKS:,} checks at {LATENESS_INTERVAL_S:g} s")
    _, lateness = asyncio.run(_lateness())
    progress(f"runner: {FLOOD_CHECKS:,} new checks at once, then SIGTERM")
    flood = asyncio.run(_flood())
    ms = [v * 1000 for v in lateness]
    return RunnerResults(
        lateness_checks=LATENESS_CHECKS,
        lateness_interval_s=LATENESS_INTERVAL_S,
        lateness_runs=len(ms),
        lateness_p50_ms=percentile(ms, 50),
        lateness_p99_ms=percentile(ms, 99),
        lateness_max_ms=max(ms, default=float("nan")),
        flood_checks=FLOOD_CHECKS,
        flood_start_s=flood["start_s"],
        flood_longest_stall_ms=flood["longest_stall_ms"],
        flood_longest_heartbeat_gap_s=flood["longest_heartbeat_gap_s"],
        flood_heartbeats=flood["heartbeats"],
        flood_leave_s=flood["leave_s"],
        flood_left=flood["left"],
    )


def runner_report(results: RunnerResults) -> tuple[str, list[tuple[str, bool, str]]]:
    r = results
    text = "\n".join(
        [
            "Node agent scheduler (in-process, system clock)",
            f"  lateness: {r.lateness_checks:,} checks at {r.lateness_interval_s:g} s, "
            f"{r.lateness_runs:,} runs: p50 {r.lateness_p50_ms:.2f} ms, "
            f"p99 {r.lateness_p99_ms:.2f} ms, max {r.lateness_max_ms:.2f} ms",
            f"  flood: {r.flood_checks:,} new checks started in {r.flood_start_s:.2f} s, "
            f"longest loop stall {r.flood_longest_stall_ms:.1f} ms, longest heartbeat gap "
            f"{r.flood_longest_heartbeat_gap_s:.3f} s ({r.flood_heartbeats} heartbeats), "
            f"leave {r.flood_leave_s:.2f} s after SIGTERM",
        ]
    )
    return text, r.goals()


if __name__ == "__main__":
    result = run_runner(progress=print)
    text, goals = runner_report(result)
    print(text)
    for name, ok, detail in goals:
        print(f"{'GOAL MET   ' if ok else 'GOAL MISSED'}: {name}: {detail}")
    raise SystemExit(0 if all(ok for _, ok, _ in goals) else 1)
