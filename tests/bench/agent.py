"""The node agent benchmark: one real agent running 1,000 ``http`` checks at a 1 s interval.

Three processes on loopback: a local HTTP target (``tests.bench.target_server``, records
every hit), a real dispatcher and ONE real agent (``--capacity`` at least the number of
checks, so the concurrency cap never queues a run; ``--log-level warning``). With two or
more CPUs the agent is pinned to the first and the target and dispatcher to the second,
so the agent has a CPU of its own.

Steps: the agent registers with no checks (its resident size then is the baseline), the
checks are PUT as one source (distinct URLs on the target, ``interval_s`` 1, ``timeout_s``
1), the agent's ``clusterchecks_agent_checks_running`` reaches the count, a warm-up lets
the first-run jitter (uniform within one interval) pass, then a measured window:

- lateness, two ways: the agent's own histogram
  (``clusterchecks_agent_scheduling_lateness_seconds``, scheduled time to start, after the
  concurrency cap), its delta over the window, p50/p99 interpolated inside buckets; and,
  per run, the target's arrival times: per check, how far each hit lies behind the
  check's 1 s grid through its best run in the window, i.e. start lateness plus the time
  the request takes to go out, relative to that check's best run (``arrival_lateness``);
- the agent's CPU (utime + stime from /proc) and resident size, per check and per run;
- runs per second against the expected rate, and failed runs (the agent's counters);
- what else took CPU meanwhile: the target and dispatcher, interrupts (loopback TCP),
  hypervisor steal and other processes; over 20 % of a CPU marks the window disturbed.

Lateness is judged on the histogram: it is the agent's absolute lateness against its
schedule, and 100 ms is a bucket boundary, so the share of runs at most 100 ms late, and
with it whether p99 is under 100 ms, is exact despite the buckets.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.bench.api import pick_cpus
from tests.bench.machine import (
    machine_busy_s,
    machine_irq_s,
    machine_steal_s,
    process_cpu_split_s,
)
from tests.bench.stats import percentile
from tests.processes import BIN, Proc, dispatcher_argv, free_port, wait_http_ok

LATENESS_GOAL_S = 0.1  # p99 lateness under this
GOAL_SHARE = 0.99
DISTURBED_PCT = 20.0  # other processes' CPU during the window, in % of one CPU
SOURCE = "bench"
API = "/v1/api/clusterchecks"
LATENESS = "clusterchecks_agent_scheduling_lateness_seconds"
RUNNING = "clusterchecks_agent_checks_running"
RUNS = "clusterchecks_agent_check_runs_total"
FAILURES = "clusterchecks_agent_check_failures_total"
DROPPED = "clusterchecks_agent_results_dropped_total"

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)", re.M)
_LE = re.compile(r'le="([^"]+)"')


@dataclass
class Lateness:
    source: str
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float  # histogram: the upper bound of the highest bucket with a run in it
    within_goal_pct: float  # share of runs at most LATENESS_GOAL_S late


@dataclass
class ProcessUse:
    name: str
    cpu: int | None  # the CPU it was pinned to
    cpu_s: float | None  # user + system over the window
    cpu_pct: float | None  # of one CPU, over the window
    system_pct: float | None  # the share of cpu_s spent in the kernel
    rss_idle_mib: float | None = None
    rss_mib: float | None = None
    hwm_mib: float | None = None


@dataclass
class AgentResults:
    checks: int
    interval_s: float
    timeout_s: float
    capacity: int
    warmup_s: float
    window_s: float  # measured, wall clock
    settle_s: float  # PUT to every check running on the agent
    histogram: Lateness
    histogram_buckets: dict[str, int]  # window delta, cumulative, by upper bound
    arrivals: Lateness
    runs_expected: int  # checks x window / interval
    runs_seen: int  # hits at the target inside the window
    runs_per_s: float
    expected_per_s: float
    agent_runs: int  # the agent's run counter over (about) the window
    failures: int
    results_dropped: int
    checks_hit: int  # checks with at least one hit in the window
    checks_off_count: int  # checks hit more than once off the expected count
    hits_per_check: dict[str, int]  # how many checks were hit so many times in the window
    agent_cpu_us_per_run: float | None
    agent_cpu_pct_per_1000_checks: float | None
    rss_per_check_kib: float | None
    processes: list[ProcessUse] = field(default_factory=list)
    other_cpu_pct: float | None = None  # other processes, not counting interrupts
    irq_cpu_pct: float | None = None  # interrupts and softirqs (loopback TCP), all CPUs
    steal_cpu_pct: float | None = None  # taken by the hypervisor (virtual machines), all CPUs
    slots_skipped: int = 0  # scheduled slots with no run, between a check's hits
    goal_s: float = LATENESS_GOAL_S
    goal_ok: bool = False
    judged_on: str = "agent histogram"

    @property
    def disturbed(self) -> bool:
        return (self.other_cpu_pct or 0.0) + (self.steal_cpu_pct or 0.0) > DISTURBED_PCT


# ---------------------------------------------------------------------------- helpers


def _http(method: str, url: str, body: object = None, *, timeout_s: float = 10.0) -> bytes:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        payload: bytes = response.read()
        return payload


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format: ``name{labels}`` (as written) to value."""
    return {m[1] + (m[2] or ""): float(m[3]) for m in _SAMPLE.finditer(text)}


def buckets_of(samples: dict[str, float], name: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets, (upper bound, count), ascending, ending at +Inf."""
    found = []
    for key, value in samples.items():
        if key.startswith(name + "_bucket{"):
            le = _LE.search(key)
            if le:
                found.append((float(le[1]), value))
    return sorted(found)


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """As Prometheus' histogram_quantile: linear inside the bucket holding the rank."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: that bound, a floor
            if cumulative == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    return lower


def histogram_lateness(delta: list[tuple[float, float]]) -> Lateness:
    total = delta[-1][1] if delta else 0.0
    within = next((c for le, c in delta if math.isclose(le, LATENESS_GOAL_S)), math.nan)
    # The highest bucket with a run in it: the first bound whose count is the total
    # (+Inf when a run was later than the last finite bound).
    top = next((le for le, c in delta if c >= total), math.nan) if total else math.nan
    return Lateness(
        source="agent histogram (bucketed, interpolated)",
        runs=int(total),
        p50_ms=bucket_quantile(delta, 0.50) * 1e3,
        p90_ms=bucket_quantile(delta, 0.90) * 1e3,
        p99_ms=bucket_quantile(delta, 0.99) * 1e3,
        max_ms=top * 1e3,
        within_goal_pct=100.0 * within / total if total else math.nan,
    )


def arrival_lateness(
    hits: dict[str, list[float]], interval_s: float
) -> tuple[Lateness, dict[str, int], int]:
    """Per run, from the target's arrival times: how far behind its check's best run.

    A check's runs are scheduled on a grid ``phase + k * interval`` (a run that overran
    skips the slots it missed). Walking a check's hits in order, each gets the slot of the
    one before plus the gap in whole intervals (at least one); its offset from the grid
    through the first hit, minus the smallest offset of the check (its best run), is how
    late it arrived. That is start lateness plus request latency, relative to the check's
    best run in the window; it holds while the lateness of consecutive runs of a check
    differs by less than half an interval. Also returns the hits per check and the slots
    skipped between hits.
    """
    late: list[float] = []
    counts: dict[str, int] = {}
    skipped = 0
    for path, times in hits.items():
        if not times:
            continue
        counts[path] = len(times)
        first = previous = times[0]
        slot = 0
        offsets = [0.0]
        for t in times[1:]:
            step = max(1, round((t - previous) / interval_s))
            skipped += step - 1
            slot += step
            offsets.append(t - first - slot * interval_s)
            previous = t
        best = min(offsets)
        late += [o - best for o in offsets]
    lateness = Lateness(
        source="target arrivals (per run, behind the check's best run)",
        runs=len(late),
        p50_ms=percentile(late, 50) * 1e3,
        p90_ms=percentile(late, 90) * 1e3,
        p99_ms=percentile(late, 99) * 1e3,
        max_ms=max(late, default=math.nan) * 1e3,
        within_goal_pct=100.0 * sum(1 for v in late if v <= LATENESS_GOAL_S) / len(late)
        if late
        else math.nan,
    )
    return lateness, counts, skipped


def status_kib(pid: int, field_name: str) -> float | None:
    """A size from /proc/<pid>/status (VmRSS, VmHWM), in KiB; None when unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def pin(pid: int, cpu: int | None) -> None:
    """Pins every thread of a process to one CPU (threads started later inherit it)."""
    if cpu is None:
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(tid, {cpu})


def _wait(what: str, probe: Callable[[], bool], *, timeout_s: float, procs: list[Proc]) -> float:
    """Polls ``probe`` until true; the seconds it took. Fails early if a process died."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.output()[-3000:]}")
        try:
            if probe():
                return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    tails = "\n".join(f"--- {p.name}:\n{p.output()[-2000:]}" for p in procs)
    raise RuntimeError(f"agent bench: timed out after {timeout_s:g} s waiting for {what}\n{tails}")


@dataclass
class _Snapshot:
    wall: float
    own: float
    machine: float | None
    irq: float | None
    steal: float | None
    cpu: dict[str, tuple[float, float] | None]  # (user, system)


def _snapshot(procs: dict[str, Proc]) -> _Snapshot:
    return _Snapshot(
        wall=time.monotonic(),
        own=time.process_time(),
        machine=machine_busy_s(),
        irq=machine_irq_s(),
        steal=machine_steal_s(),
        cpu={name: process_cpu_split_s(p.pid) for name, p in procs.items()},
    )


def _configs(target_url: str, checks: int, interval_s: float, timeout_s: float) -> list[Any]:
    return [
        {
            "name": "http",
            "instances": [{"url": f"{target_url}/check/{i:05d}"}],
            "interval_s": interval_s,
            "timeout_s": timeout_s,
        }
        for i in range(checks)
    ]


# ------------------------------------------------------------------------------ run


def run_agent(
    *,
    log_dir: Path,
    checks: int = 1_000,
    interval_s: float = 1.0,
    timeout_s: float = 1.0,
    warmup_s: float = 3.0,
    window_s: float = 20.0,
    progress: Callable[[str], None] = print,
) -> AgentResults:
    log_dir.mkdir(parents=True, exist_ok=True)
    agent_cpu, other_cpu = pick_cpus()
    capacity = max(checks, 1)
    ports = {name: free_port() for name in ("target", "dispatcher", "agent")}
    target_url = f"http://127.0.0.1:{ports['target']}"
    dispatcher_url = f"http://127.0.0.1:{ports['dispatcher']}"
    agent_url = f"http://127.0.0.1:{ports['agent']}"
    argv = {
        "target": [
            str(BIN / "python"), "-m", "tests.bench.target_server",
            "--port", str(ports["target"]),
        ],
        "dispatcher": dispatcher_argv(ports["dispatcher"], "--log-level", "warning"),
        "agent": [
            str(BIN / "clusterchecks-agent"),
            "--dispatcher-url", dispatcher_url,
            "--name", "bench-agent",
            "--host", "127.0.0.1",
            "--port", str(ports["agent"]),
            "--capacity", str(capacity),
            "--log-format", "json",
            "--log-level", "warning",
        ],
    }  # fmt: skip
    cpus = {"target": other_cpu, "dispatcher": other_cpu, "agent": agent_cpu}
    procs: dict[str, Proc] = {}
    for name in ("target", "dispatcher", "agent"):
        path = log_dir / f"agent-bench-{name}.log"
        path.unlink(missing_ok=True)
        procs[name] = Proc(name, argv[name], path)
    try:
        progress(f"agent: starting a target, a dispatcher and one agent (capacity {capacity:,})")
        for name in ("target", "dispatcher"):
            procs[name].start()
            pin(procs[name].pid, cpus[name])
        wait_http_ok(target_url + "/__bench/healthz", timeout_s=20.0, proc=procs["target"])
        wait_http_ok(dispatcher_url + "/healthz", timeout_s=20.0, proc=procs["dispatcher"])
        agent = procs["agent"].start()
        pin(agent.pid, agent_cpu)
        wait_http_ok(agent_url + "/healthz", timeout_s=20.0, proc=agent)
        alive = list(procs.values())

        def registered() -> bool:
            state = orjson.loads(_http("GET", dispatcher_url + API))
            return any(n.get("name") == "bench-agent" for n in state.get("nodes", []))

        _wait("the agent to register", registered, timeout_s=20.0, procs=alive)
        # Again, for threads started before the first pin (later ones inherit it).
        for name, proc in procs.items():
            pin(proc.pid, cpus[name])
        time.sleep(1.0)
        rss_idle = status_kib(agent.pid, "VmRSS")

        progress(f"agent: PUT {checks:,} http checks (interval {interval_s:g} s)")
        configs = _configs(target_url, checks, interval_s, timeout_s)
        _http("PUT", f"{dispatcher_url}{API}/sources/{SOURCE}", {"configs": configs})

        def all_running() -> bool:
            samples = parse_metrics(_http("GET", agent_url + "/metrics").decode())
            return samples.get(RUNNING, 0.0) >= checks

        settle_s = _wait(
            f"{checks:,} checks running on the agent", all_running, timeout_s=60.0, procs=alive
        )
        progress(
            f"agent: all running after {settle_s:.1f} s; warm-up {warmup_s:g} s,"
            f" then {window_s:g} s measured"
        )
        time.sleep(warmup_s)

        before_metrics = parse_metrics(_http("GET", agent_url + "/metrics").decode())
        start = _snapshot(procs)
        time.sleep(window_s)
        end = _snapshot(procs)
        after_metrics = parse_metrics(_http("GET", agent_url + "/metrics").decode())
        rss = {name: status_kib(p.pid, "VmRSS") for name, p in procs.items()}
        hwm = {name: status_kib(p.pid, "VmHWM") for name, p in procs.items()}
        hits_url = f"{target_url}/__bench/hits?since={start.wall!r}&until={end.wall!r}"
        hits: dict[str, list[float]] = orjson.loads(_http("GET", hits_url, timeout_s=30.0))["hits"]
        for name, proc in procs.items():
            if not proc.alive():
                raise RuntimeError(f"{name} died during the window:\n{proc.output()[-3000:]}")
    finally:
        for name in ("agent", "dispatcher", "target"):
            procs[name].stop()

    wall = end.wall - start.wall
    before_b, after_b = buckets_of(before_metrics, LATENESS), buckets_of(after_metrics, LATENESS)
    before_counts = dict(before_b)
    delta = [(le, count - before_counts.get(le, 0.0)) for le, count in after_b]
    histogram = histogram_lateness(delta)
    arrivals, counts, skipped = arrival_lateness(hits, interval_s)
    runs_seen = sum(counts.values())
    expected_per_check = wall / interval_s

    def diff(key: str) -> int:
        return int(after_metrics.get(key, 0.0) - before_metrics.get(key, 0.0))

    processes: list[ProcessUse] = []
    used = 0.0
    for name in ("agent", "target", "dispatcher"):
        c0, c1 = start.cpu[name], end.cpu[name]
        cpu_s = system_s = None
        if c0 is not None and c1 is not None:
            cpu_s, system_s = sum(c1) - sum(c0), c1[1] - c0[1]
        used += cpu_s or 0.0
        processes.append(
            ProcessUse(
                name=name,
                cpu=cpus[name],
                cpu_s=cpu_s,
                cpu_pct=100.0 * cpu_s / wall if cpu_s is not None else None,
                system_pct=100.0 * system_s / cpu_s if cpu_s and system_s is not None else None,
                rss_mib=_mib(rss[name]),
                hwm_mib=_mib(hwm[name]),
            )
        )
    agent_use = processes[0]
    agent_use.rss_idle_mib = _mib(rss_idle)
    other: float | None = None
    irq: float | None = None
    if start.irq is not None and end.irq is not None:
        irq = end.irq - start.irq
    steal: float | None = None
    if start.steal is not None and end.steal is not None:
        steal = end.steal - start.steal
    if start.machine is not None and end.machine is not None:
        other = end.machine - start.machine - used - (end.own - start.own)
        other = max(0.0, other - (irq or 0.0) - (steal or 0.0))
    rss_per_check = (
        (rss["agent"] - rss_idle) / checks if rss["agent"] is not None and rss_idle else None
    )
    agent_cpu_s = agent_use.cpu_s
    within = histogram.within_goal_pct
    return AgentResults(
        checks=checks,
        interval_s=interval_s,
        timeout_s=timeout_s,
        capacity=capacity,
        warmup_s=warmup_s,
        window_s=wall,
        settle_s=settle_s,
        histogram=histogram,
        histogram_buckets={_le(le): int(c) for le, c in delta},
        arrivals=arrivals,
        runs_expected=round(checks * expected_per_check),
        runs_seen=runs_seen,
        runs_per_s=runs_seen / wall,
        expected_per_s=checks / interval_s,
        agent_runs=diff(RUNS + '{check="http"}'),
        failures=diff(FAILURES + '{check="http"}'),
        results_dropped=diff(DROPPED),
        checks_hit=len(counts),
        hits_per_check={str(n): k for n, k in sorted(Counter(counts.values()).items())},
        checks_off_count=sum(
            1 for c in counts.values() if abs(c - expected_per_check) > 1.0 + 1e-9
        ),
        agent_cpu_us_per_run=agent_cpu_s / runs_seen * 1e6
        if agent_cpu_s is not None and runs_seen
        else None,
        agent_cpu_pct_per_1000_checks=agent_use.cpu_pct * 1000.0 / checks
        if agent_use.cpu_pct is not None
        else None,
        rss_per_check_kib=rss_per_check,
        processes=processes,
        other_cpu_pct=100.0 * other / wall if other is not None else None,
        irq_cpu_pct=100.0 * irq / wall if irq is not None else None,
        steal_cpu_pct=100.0 * steal / wall if steal is not None else None,
        slots_skipped=skipped,
        goal_ok=not math.isnan(within) and within >= GOAL_SHARE * 100.0,
    )


def _mib(kib: float | None) -> float | None:
    return kib / 1024.0 if kib is not None else None


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"
