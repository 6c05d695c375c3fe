"""In-process benchmarks of the pure core (``ClusterState``), timed with perf_counter.

- schedule: 10,000 nodes registered, then 100,000 checks placed, either in sources of
  1,000 checks (``add_to_source``) or as one source (``replace_source``);
- expiry: one node holding ~10 checks expires, at 1,000 and at 10,000 nodes;
- memory: the peak resident size of a fresh process holding the 100k-check / 10k-node
  state (``tests.bench.memory``).
"""

from __future__ import annotations

import cProfile
import gc
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from dispatcher.core.model import CheckConfig, NodeName, SourceName, make_config
from dispatcher.core.state import ClusterState
from tests.bench.machine import machine_busy_s
from tests.bench.stats import median

SCHEDULE_BUDGET_S = 1.0
# Ten times the nodes may cost at most this much more to expire one node of equal size:
# the geometric middle between a constant cost (1x) and one proportional to the cluster
# (10x). Index operations (log n) and cache misses in a 10x bigger heap measure 1-2x.
EXPIRY_MAX_GROWTH = 3.0
EXPIRY_TIMEOUT_S = 30.0
HEARTBEAT_STEP_S = 100.0  # between rounds; above the expiry offset, as `now` never goes back
EXPIRY_OFFSET_S = 25.0  # expire at round time + this: deadline 5 s before the round

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ScheduleResult:
    mode: str
    nodes: int
    checks: int
    batch: int
    runs_s: list[float]
    cpu_runs_s: list[float]  # process CPU time of the same runs (other load does not count)
    gc_s: list[float]
    median_s: float
    best_s: float
    cpu_median_s: float
    per_check_us: float
    placed: int
    max_checks_per_node: int
    min_checks_per_node: int
    budget_s: float
    within_budget: bool


@dataclass
class ExpiryResult:
    nodes: int
    checks: int
    victim_checks: list[int]
    runs_us: list[float]
    median_us: float
    per_check_us: float
    heartbeat_us: float  # one in-process node_status, measured on the rounds' heartbeats
    function_calls: int  # Python calls made by one expiry (cProfile): the work, without caches


@dataclass
class MemoryResult:
    nodes: int
    checks: int
    baseline_rss_mib: float  # the fresh process after its imports
    peak_rss_mib: float  # the same process once every check is scheduled
    state_rss_mib: float  # the difference: configs + state
    traced_current_mib: float | None  # with --tracemalloc: Python allocations held
    traced_peak_mib: float | None


@dataclass
class CoreResults:
    config_build_s: float
    config_build_per_check_us: float
    schedule: list[ScheduleResult] = field(default_factory=list)
    expiry: list[ExpiryResult] = field(default_factory=list)
    expiry_growth: float = 0.0
    expiry_max_growth: float = EXPIRY_MAX_GROWTH
    expiry_ok: bool = True
    memory: MemoryResult | None = None
    other_cpu_pct: float | None = None  # other processes during the core runs, % of a CPU


def node_name(i: int) -> NodeName:
    return NodeName(f"node-{i:05d}")


def node_labels(i: int) -> dict[str, str]:
    return {
        "kubernetes.io/hostname": node_name(i),
        "topology.kubernetes.io/zone": f"zone-{i % 3}",
        "node.kubernetes.io/instance-type": "m5.large",
    }


def build_configs(count: int) -> list[CheckConfig]:
    return [
        make_config(
            name="http_check",
            instances=[{"name": f"svc-{i}", "url": f"http://svc-{i}.default.svc:8080/healthz"}],
            interval_s=15.0,
        )
        for i in range(count)
    ]


def register_nodes(state: ClusterState, count: int, *, now: float) -> list[NodeName]:
    names = [node_name(i) for i in range(count)]
    for i, name in enumerate(names):
        state.node_status(name, now=now, last_change=-1, labels=node_labels(i))
    state.take_events()
    return names


def schedule_batched(
    state: ClusterState, configs: Sequence[CheckConfig], *, batch: int, now: float
) -> None:
    """Sources of ``batch`` checks each, draining events after each as the engine does."""
    for start in range(0, len(configs), batch):
        source = SourceName(f"source-{start // batch:04d}")
        state.add_to_source(source, configs[start : start + batch], now=now)
        state.take_events()


def schedule_single(state: ClusterState, configs: Sequence[CheckConfig], *, now: float) -> None:
    state.replace_source(SourceName("all"), configs, now=now)
    state.take_events()


class GcTimer:
    """Wall time spent in the garbage collector while installed."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total_s += time.perf_counter() - self._started

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def bench_schedule(
    configs: Sequence[CheckConfig],
    *,
    nodes: int,
    mode: str,
    batch: int,
    runs: int,
) -> ScheduleResult:
    times: list[float] = []
    cpu_times: list[float] = []
    gc_times: list[float] = []
    counts: list[int] = []
    placed = 0
    for _ in range(runs):
        state = ClusterState()
        register_nodes(state, nodes, now=0.0)
        gc.collect()
        with GcTimer() as gc_timer:
            cpu_started = time.process_time()
            started = time.perf_counter()
            if mode == "add_to_source":
                schedule_batched(state, configs, batch=batch, now=1.0)
            else:
                schedule_single(state, configs, now=1.0)
            elapsed = time.perf_counter() - started
            cpu_elapsed = time.process_time() - cpu_started
        times.append(elapsed)
        cpu_times.append(cpu_elapsed)
        gc_times.append(gc_timer.total_s)
        placed = len(state.placement)
        counts = [len(node.digests) for node in state.nodes.values()]
        del state
        gc.collect()
    mid = median(times)
    return ScheduleResult(
        mode=mode,
        nodes=nodes,
        checks=len(configs),
        batch=batch,
        runs_s=times,
        cpu_runs_s=cpu_times,
        gc_s=gc_times,
        median_s=mid,
        best_s=min(times),
        cpu_median_s=median(cpu_times),
        per_check_us=mid / len(configs) * 1e6,
        placed=placed,
        max_checks_per_node=max(counts),
        min_checks_per_node=min(counts),
        budget_s=SCHEDULE_BUDGET_S,
        within_budget=mid <= SCHEDULE_BUDGET_S,
    )


def bench_expiry(
    configs: Sequence[CheckConfig], *, nodes: int, checks: int, repetitions: int
) -> ExpiryResult:
    """Expires one node at a time: every other node heartbeats later first."""
    state = ClusterState()
    names = register_nodes(state, nodes, now=0.0)
    schedule_batched(state, configs[:checks], batch=1_000, now=0.0)
    gc.collect()
    step = max(1, nodes // (repetitions + 1))
    # The last victim is not timed: it expires under cProfile to count the work done.
    victims = [names[(k * step + step // 2) % nodes] for k in range(repetitions + 1)]
    runs: list[float] = []
    held: list[int] = []
    heartbeat_times: list[float] = []
    calls = 0
    now = 0.0
    for k, victim in enumerate(victims):
        now += HEARTBEAT_STEP_S
        started = time.perf_counter()
        beats = 0
        for name in names:
            if name != victim and name in state.nodes:
                state.node_status(name, now=now, last_change=-1)
                beats += 1
        heartbeat_times.append((time.perf_counter() - started) / beats)
        state.take_events()
        if k == repetitions:
            profile = cProfile.Profile()
            profile.enable()
            expired = state.expire_nodes(now=now + EXPIRY_OFFSET_S, timeout_s=EXPIRY_TIMEOUT_S)
            profile.disable()
            calls = sum(entry.callcount for entry in profile.getstats())
        else:
            held.append(len(state.nodes[victim].digests))
            started = time.perf_counter()
            expired = state.expire_nodes(now=now + EXPIRY_OFFSET_S, timeout_s=EXPIRY_TIMEOUT_S)
            runs.append((time.perf_counter() - started) * 1e6)
        if expired != [victim]:
            raise AssertionError(f"expected to expire only {victim}, expired {expired[:5]}")
        state.take_events()
    mid = median(runs)
    return ExpiryResult(
        nodes=nodes,
        checks=checks,
        victim_checks=held,
        runs_us=runs,
        median_us=mid,
        per_check_us=mid / max(1.0, median([float(h) for h in held])),
        heartbeat_us=median(heartbeat_times) * 1e6,
        function_calls=calls,
    )


def bench_memory(*, nodes: int, checks: int, traced: bool) -> MemoryResult:
    """Runs ``tests.bench.memory`` in a fresh process: only the state counts."""
    argv = [sys.executable, "-m", "tests.bench.memory", "--nodes", str(nodes)]
    argv += ["--checks", str(checks), *(["--tracemalloc"] if traced else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True, cwd=ROOT)
    data = orjson.loads(done.stdout.strip().splitlines()[-1])
    peak = max(float(data["peak_rss_mib"]), float(data["current_rss_mib"]))
    return MemoryResult(
        nodes=nodes,
        checks=checks,
        baseline_rss_mib=float(data["baseline_rss_mib"]),
        peak_rss_mib=peak,
        state_rss_mib=peak - float(data["baseline_rss_mib"]),
        traced_current_mib=data["traced_current_mib"],
        traced_peak_mib=data["traced_peak_mib"],
    )


def run_core(
    *,
    nodes: int = 10_000,
    checks: int = 100_000,
    batch: int = 1_000,
    runs: int = 3,
    expiry_repetitions: int = 15,
    memory: bool = True,
    traced: bool = False,
    progress: Callable[[str], None] = print,
) -> CoreResults:
    checks_per_node = checks // nodes
    machine0, own0, wall0 = machine_busy_s(), time.process_time(), time.perf_counter()
    progress(f"core: building {checks:,} check configs")
    started = time.perf_counter()
    configs = build_configs(checks)
    build_s = time.perf_counter() - started
    results = CoreResults(config_build_s=build_s, config_build_per_check_us=build_s / checks * 1e6)
    for mode in ("add_to_source", "replace_source"):
        progress(f"core: scheduling {checks:,} checks on {nodes:,} nodes ({mode}, {runs} runs)")
        results.schedule.append(
            bench_schedule(
                configs,
                nodes=nodes,
                mode=mode,
                batch=batch if mode == "add_to_source" else checks,
                runs=runs,
            )
        )
    for size in (nodes // 10, nodes):
        progress(f"core: expiring one node of {checks_per_node} checks at {size:,} nodes")
        results.expiry.append(
            bench_expiry(
                configs,
                nodes=size,
                checks=size * checks_per_node,
                repetitions=expiry_repetitions,
            )
        )
    small, large = results.expiry[0], results.expiry[-1]
    results.expiry_growth = large.median_us / small.median_us if small.median_us else 0.0
    results.expiry_ok = results.expiry_growth <= EXPIRY_MAX_GROWTH
    del configs
    gc.collect()
    machine1, own1, wall1 = machine_busy_s(), time.process_time(), time.perf_counter()
    if machine0 is not None and machine1 is not None:
        other = max(0.0, (machine1 - machine0) - (own1 - own0))
        results.other_cpu_pct = 100.0 * other / (wall1 - wall0)
    if memory:
        progress("core: measuring memory (in a fresh process)")
        results.memory = bench_memory(nodes=nodes, checks=checks, traced=traced)
    return results
