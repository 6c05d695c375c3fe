"""In-process benchmark of the load-aware rebalance on the real ``ClusterState``.

1,000 nodes and 20,000 checks, seeded and deterministic. Every check is placed by the
dispatcher's own placement while nothing is measured yet (every check costs its weight,
1), so each node holds about its share of the check *count*. Then every node reports
stats for its checks (``node_status(stats=...)``, ``avg_execution_s = cost x interval``)
with costs drawn from a lognormal distribution (sigma 1), and an ok result for each
(``record_results``: only a check that ran and passed may move). Counted evenly, the
measured loads are skewed: that is the arbitrary placement the rebalance starts from.

The costs are capped so that no check exceeds half the mean load of a capacity-1 node
(a fixed point: the cap is computed on the capped costs): a check near the mean node
load would, on its own, leave no node with room for it under the bound.

Per variant (capacity 1 everywhere; capacities 1/2/4 in turn), each run rebuilds the
state, times ``plan_rebalance`` (planning alone: the planner's inputs built from the
state, then the pure planner; and the garbage collector's share of it), then
``rebalance`` (planning and applying) on the same state, with its planning and the pure
planner inside it timed by wrapping them (apply time: the rest), then a second
``rebalance`` that must move nothing.

Then, once per variant on a state built afresh, the loop stall: the dispatcher's own
``Dispatcher.rebalance`` (inputs read in slices under its lock, the planner in slices with
the lock free, the moves made in one step, a log line per move) on an event loop where a
probe task sleeps 5 ms over and over; the stall is the longest a probe woke late. It runs
with the service's garbage-collector thresholds (``settle_garbage_collector``; without
them one full collection of the state, 0.2 to 0.4 s, can fall in any slice) and its JSON
logs, written to /dev/null. Its moves must be those of the in-process rebalance.

The lower bound on moves: for every node above the bound (mean x (1 + margin) x
capacity), the fewest of its checks that must leave for it to fit, taking its largest
first; no plan that leaves every node within the bound moves fewer checks in total.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog

from dispatcher.common import logs
from dispatcher.common.clock import SystemClock
from dispatcher.core import state as state_module
from dispatcher.core.model import CheckConfig, CheckResult, CheckStats, NodeName, SourceName
from dispatcher.core.outcomes import RebalanceOutcome
from dispatcher.core.state import ClusterState
from dispatcher.engine import Dispatcher
from dispatcher.settings import DispatchSettings
from tests.bench.core import GcTimer, build_configs, node_labels, node_name
from tests.bench.stats import median

WALL = 1e9
"""The wall time results arrive at here: after every run's ``started_at``."""

NODES = 1_000
CHECKS = 20_000
MARGIN = 0.1
MIN_IMPROVEMENT = 0.1
MAX_OVER_MEAN = 1.0 + MARGIN  # the goal: the busiest node at most 10 % above the mean
PLAN_BUDGET_S = 1.0
PROBE_S = 0.005  # the loop-stall probe's sleep
LOOP_STALL_GOAL_S = 0.1  # issue 16: no heartbeat waits behind a large change > 100 ms
SERVICE_GC_THRESHOLDS = (10_000, 50, 100)  # dispatcher.service.settle_garbage_collector
SEED = 6
COST_SIGMA = 1.0  # lognormal sigma of the check costs
COST_CAP_SHARE = 0.5  # no check above this share of the mean load of a capacity-1 node
MEDIAN_EXECUTION_S = 0.03  # a median check runs 30 ms (every 15 s: utilisation 0.002)
STAT_RUNS = 10
_EPS = 1e-9

VARIANTS: dict[str, Callable[[int], int]] = {
    "capacity 1": lambda i: 1,
    "capacity 1/2/4": lambda i: (1, 2, 4)[i % 3],
}


@dataclass
class RebalanceResult:
    variant: str
    nodes: int
    checks: int
    total_capacity: int
    capped_checks: int  # costs cut to the cap
    largest_check_share: float  # the largest cost / the mean load of a capacity-1 node
    checks_per_node: tuple[int, int]  # fewest and most checks on a node, before
    initial_spread: float  # the busiest relative load / the mean - 1, before
    final_max_over_mean: float  # after one rebalance, measured on the state
    final_min_over_mean: float
    reason: str  # the first rebalance's outcome
    moves: int
    distinct_checks_moved: int
    lower_bound: int  # the fewest checks any plan must move (see the module doc)
    moves_over_bound: float
    moved_load: float  # the cost moved, over the sum of the nodes' excess load
    excess_load: float
    second_moves: int
    second_reason: str
    deterministic: bool  # every run planned the same moves
    plan_fingerprint: str  # sha256 of the moves (the same across processes)
    plan_runs_s: list[float] = field(default_factory=list)  # state.plan_rebalance, alone
    plan_gc_runs_s: list[float] = field(default_factory=list)  # of which garbage collection
    planner_runs_s: list[float] = field(default_factory=list)  # pure planner, in rebalance
    rebalance_runs_s: list[float] = field(default_factory=list)  # state.rebalance
    apply_runs_s: list[float] = field(default_factory=list)  # rebalance - its planning
    second_runs_s: list[float] = field(default_factory=list)  # the second rebalance
    build_runs_s: list[float] = field(default_factory=list)  # state + placement + stats
    loop_stall_s: float = 0.0  # the longest a 5 ms probe woke late during Dispatcher.rebalance
    loop_rebalance_s: float = 0.0  # Dispatcher.rebalance, start to end, on the loop
    loop_apply_s: float = 0.0  # of which its one step that makes the moves
    loop_probes: int = 0  # how many times the probe woke meanwhile
    loop_moves: int = 0
    loop_skipped: int = 0  # planned moves it skipped (the state did not change: 0)
    plan_median_s: float = 0.0
    planner_median_s: float = 0.0
    plan_gc_median_s: float = 0.0
    rebalance_median_s: float = 0.0
    apply_median_s: float = 0.0
    second_median_s: float = 0.0
    balanced: bool = False
    stable: bool = False
    fast: bool = False


@dataclass
class RebalanceResults:
    seed: int
    runs: int
    margin: float
    min_improvement: float
    cost_sigma: float
    cost_cap_share: float
    plan_budget_s: float
    variants: list[RebalanceResult] = field(default_factory=list)


def draw_costs(count: int, *, seed: int) -> list[float]:
    """Lognormal factors around 1 (the median), before the cap."""
    rng = random.Random(seed)
    return [rng.lognormvariate(0.0, COST_SIGMA) for _ in range(count)]


def capped(raw: Sequence[float], *, checks_per_capacity: float) -> tuple[list[float], float]:
    """The costs cut at ``COST_CAP_SHARE`` of the mean load of a capacity-1 node, with
    that mean taken over the capped costs (iterated to a fixed point)."""
    cap = max(raw)
    for _ in range(100):
        mean = sum(min(c, cap) for c in raw) / len(raw)
        new_cap = COST_CAP_SHARE * checks_per_capacity * mean
        if abs(new_cap - cap) <= 1e-12 * cap:
            break
        cap = new_cap
    return [min(c, cap) for c in raw], cap


def build_state(
    configs: Sequence[CheckConfig],
    factors: Sequence[float],
    capacities: Sequence[int],
) -> ClusterState:
    """Placed by count, then measured: the loads follow the costs, not the placement."""
    state = ClusterState()
    for i, capacity in enumerate(capacities):
        state.node_status(
            node_name(i), now=0.0, last_change=-1, labels=node_labels(i), capacity=capacity
        )
    state.replace_source(SourceName("all"), configs, now=1.0)
    execution = {c.digest: MEDIAN_EXECUTION_S * f for c, f in zip(configs, factors, strict=True)}
    for name in sorted(state.nodes):
        digests = sorted(state.nodes[name].digests)
        stats = {
            d: CheckStats(avg_execution_s=execution[d], runs=STAT_RUNS, errors=0) for d in digests
        }
        state.node_status(name, now=2.0, last_change=-1, stats=stats)
        results = [
            CheckResult(d, f"run-{d}", ok=True, errors=(), started_at=2.0, duration_s=execution[d])
            for d in digests
        ]
        state.record_results(name, results, now_wall=WALL)
    state.take_events()
    return state


def relative_loads(state: ClusterState) -> tuple[dict[NodeName, float], float]:
    """Every node's load over its capacity, and the mean (total load / total capacity)."""
    mean_cost = state.mean_measured_cost()
    loads = {name: node.load(mean_cost) for name, node in state.nodes.items()}
    total_capacity = sum(node.capacity for node in state.nodes.values())
    relative = {name: loads[name] / state.nodes[name].capacity for name in loads}
    return relative, sum(loads.values()) / total_capacity


def lower_bound(state: ClusterState, *, margin: float) -> tuple[int, float]:
    """The fewest checks that must leave the nodes above the bound, and their excess
    load (the least cost that must move)."""
    _, mean = relative_loads(state)
    mean_cost = state.mean_measured_cost()
    count = 0
    excess = 0.0
    for node in state.nodes.values():
        limit = mean * (1 + margin) * node.capacity
        load = node.load(mean_cost)
        if load <= limit + _EPS * limit:
            continue
        excess += load - limit
        for cost in sorted((state.cost(d) for d in node.digests), reverse=True):
            load -= cost
            count += 1
            if load <= limit + _EPS * limit:
                break
    return count, excess


@contextmanager
def timed_calls(owner: object, attribute: str, spent: list[float]) -> Iterator[None]:
    """Appends the wall time of every call of ``owner.attribute`` (a function of a
    module, or a method of a class) to ``spent`` while in the block."""
    original = getattr(owner, attribute)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    setattr(owner, attribute, timed)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


@contextmanager
def timed_planning(plan: list[float], planner: list[float]) -> Iterator[None]:
    """Times ``ClusterState.plan_rebalance`` (the planner's inputs from the state, then
    the planner) and, inside it, the pure planner (``rebalance.plan_rebalance``)."""
    with (
        timed_calls(ClusterState, "plan_rebalance", plan),
        timed_calls(state_module, "plan_rebalance", planner),
    ):
        yield


def fingerprint(outcome: RebalanceOutcome) -> str:
    text = "\n".join(f"{m.digest} {m.source_node} {m.dest_node}" for m in outcome.moves)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def bench_variant(
    configs: Sequence[CheckConfig],
    raw: Sequence[float],
    *,
    variant: str,
    capacities: Sequence[int],
    runs: int,
) -> RebalanceResult:
    total_capacity = sum(capacities)
    factors, cap = capped(raw, checks_per_capacity=len(configs) / total_capacity)
    mean_factor = sum(factors) / len(factors)
    plan_s: list[float] = []
    planner_s: list[float] = []
    plan_gc_s: list[float] = []
    rebalance_s: list[float] = []
    apply_s: list[float] = []
    second_s: list[float] = []
    build_s: list[float] = []
    prints: list[str] = []
    result: RebalanceResult | None = None
    for _ in range(runs):
        started = time.perf_counter()
        state = build_state(configs, factors, capacities)
        build_s.append(time.perf_counter() - started)
        counts = [len(node.digests) for node in state.nodes.values()]
        before, mean = relative_loads(state)
        bound_moves, excess = lower_bound(state, margin=MARGIN)
        gc.collect()

        spent: list[float] = []
        with GcTimer() as gc_timer:
            started = time.perf_counter()
            plan = state.plan_rebalance(margin=MARGIN, min_improvement=MIN_IMPROVEMENT)
            plan_s.append(time.perf_counter() - started)
        plan_gc_s.append(gc_timer.total_s)
        gc.collect()

        # The timed run: planning (split as above) and applying, on the same state.
        inner: list[float] = []
        with timed_planning(inner, spent):
            started = time.perf_counter()
            first = state.rebalance(now=3.0, margin=MARGIN, min_improvement=MIN_IMPROVEMENT)
            rebalance_s.append(time.perf_counter() - started)
        planner_s.append(spent[0])
        apply_s.append(rebalance_s[-1] - inner[0])
        state.take_events()
        if len(first.plan.moves) != len(plan.moves):
            raise AssertionError("rebalance planned differently from plan_rebalance on one state")
        after, mean_after = relative_loads(state)

        started = time.perf_counter()
        second = state.rebalance(now=4.0, margin=MARGIN, min_improvement=MIN_IMPROVEMENT)
        second_s.append(time.perf_counter() - started)
        prints.append(fingerprint(first))

        moved = len(first.moves) if first.applied else 0
        result = RebalanceResult(
            variant=variant,
            nodes=len(capacities),
            checks=len(configs),
            total_capacity=total_capacity,
            capped_checks=sum(1 for c in raw if c > cap),
            largest_check_share=max(factors) / (len(configs) / total_capacity * mean_factor),
            checks_per_node=(min(counts), max(counts)),
            initial_spread=max(before.values()) / mean - 1.0,
            final_max_over_mean=max(after.values()) / mean_after,
            final_min_over_mean=min(after.values()) / mean_after,
            reason=first.reason,
            moves=moved,
            distinct_checks_moved=len({m.digest for m in first.moves}) if first.applied else 0,
            lower_bound=bound_moves,
            moves_over_bound=moved / bound_moves if bound_moves else float("nan"),
            moved_load=sum(m.cost for m in first.moves) if first.applied else 0.0,
            excess_load=excess,
            second_moves=len(second.moves) if second.applied else 0,
            second_reason=second.reason,
            deterministic=True,
            plan_fingerprint=prints[0],
        )
        del state, plan, first, second
        gc.collect()
    if result is None:
        raise ValueError("runs must be at least 1")
    stall = measure_loop_stall(configs, factors, capacities)
    gc.collect()
    prints.append(stall.fingerprint)
    result.loop_stall_s = stall.longest_s
    result.loop_rebalance_s = stall.total_s
    result.loop_apply_s = stall.apply_s
    result.loop_probes = stall.probes
    result.loop_moves = stall.moves
    result.loop_skipped = stall.skipped
    result.deterministic = len(set(prints)) == 1
    result.plan_runs_s = plan_s
    result.planner_runs_s = planner_s
    result.plan_gc_runs_s = plan_gc_s
    result.rebalance_runs_s = rebalance_s
    result.apply_runs_s = apply_s
    result.second_runs_s = second_s
    result.build_runs_s = build_s
    result.plan_median_s = median(plan_s)
    result.planner_median_s = median(planner_s)
    result.rebalance_median_s = median(rebalance_s)
    result.plan_gc_median_s = median(plan_gc_s)
    result.apply_median_s = median(apply_s)
    result.second_median_s = median(second_s)
    result.balanced = result.final_max_over_mean <= MAX_OVER_MEAN + _EPS
    result.stable = result.second_moves == 0
    result.fast = result.plan_median_s <= PLAN_BUDGET_S
    return result


@dataclass
class LoopStall:
    longest_s: float
    total_s: float
    apply_s: float
    probes: int
    moves: int
    skipped: int
    fingerprint: str


@contextmanager
def service_like() -> Iterator[None]:
    """The service's garbage-collector thresholds and JSON logs (to /dev/null, not
    cached, so that nothing keeps writing there after the block)."""
    thresholds = gc.get_threshold()
    with open(os.devnull, "wb") as sink:
        logs.configure(fmt="json", level="info")
        structlog.configure(
            logger_factory=structlog.BytesLoggerFactory(file=sink),
            cache_logger_on_first_use=False,
        )
        gc.set_threshold(*SERVICE_GC_THRESHOLDS)
        try:
            yield
        finally:
            gc.set_threshold(*thresholds)
            structlog.reset_defaults()


def measure_loop_stall(
    configs: Sequence[CheckConfig], factors: Sequence[float], capacities: Sequence[int]
) -> LoopStall:
    """``Dispatcher.rebalance`` on a fresh state, with a probe sleeping ``PROBE_S`` over
    and over on the same loop: how late it woke at worst."""
    with service_like():
        state = build_state(configs, factors, capacities)
        gc.collect()
        return asyncio.run(_stall_run(state))


async def _stall_run(state: ClusterState) -> LoopStall:
    settings = DispatchSettings(rebalance_margin=MARGIN, rebalance_min_gain=MIN_IMPROVEMENT)
    dispatcher = Dispatcher(settings=settings, clock=SystemClock())
    dispatcher.begin_term(state=state, epoch=1)
    late: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(PROBE_S)
            late.append(time.perf_counter() - started - PROBE_S)

    prober = asyncio.create_task(probe(), name="loop_stall_probe")
    await asyncio.sleep(PROBE_S * 4)  # the probe running before the rebalance starts
    late.clear()
    applying: list[float] = []
    with timed_calls(ClusterState, "apply_rebalance", applying):
        started = time.perf_counter()
        outcome = await dispatcher.rebalance(trigger="bench")
        total = time.perf_counter() - started
    done.set()
    await prober
    return LoopStall(
        longest_s=max(late, default=total),
        total_s=total,
        apply_s=sum(applying),
        probes=len(late),
        moves=len(outcome.moves) if outcome.applied else 0,
        skipped=sum(outcome.skipped.values()),
        fingerprint=fingerprint(outcome),
    )


def run_rebalance(
    *,
    nodes: int = NODES,
    checks: int = CHECKS,
    runs: int = 3,
    seed: int = SEED,
    progress: Callable[[str], None] = print,
) -> RebalanceResults:
    progress(f"rebalance: building {checks:,} check configs and their costs (seed {seed})")
    configs = build_configs(checks)
    raw = draw_costs(checks, seed=seed)
    results = RebalanceResults(
        seed=seed,
        runs=runs,
        margin=MARGIN,
        min_improvement=MIN_IMPROVEMENT,
        cost_sigma=COST_SIGMA,
        cost_cap_share=COST_CAP_SHARE,
        plan_budget_s=PLAN_BUDGET_S,
    )
    for variant, capacity_of in VARIANTS.items():
        progress(f"rebalance: {checks:,} checks on {nodes:,} nodes ({variant}, {runs} runs)")
        capacities = [capacity_of(i) for i in range(nodes)]
        results.variants.append(
            bench_variant(configs, raw, variant=variant, capacities=capacities, runs=runs)
        )
    return results
