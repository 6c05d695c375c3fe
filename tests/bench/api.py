"""The heartbeat API benchmark: the real dispatcher next to a bare aiohttp server.

Each server runs in its own process pinned to one CPU, the load generator
(``tests.bench.loadgen``) in another pinned to the other CPU, on loopback with keep-alive.
Every server is started fresh for each measured run and stopped after it. The dispatcher
runs twice: at log level warning (no line per request) and at the default info level
(one JSON line per request, to a file as in production; never to a terminal).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tests.bench.loadgen import LoadResult
from tests.processes import Proc, dispatcher_argv, free_port, wait_http_ok

RATE_GOAL = 0.5  # the dispatcher's heartbeat rate over the bare handler's, at least
# A run is bound by the load generator when it is this busy and the server is not.
CLIENT_BUSY_PCT = 90.0
SERVER_SATURATED_PCT = 95.0
DISTURBED_PCT = 20.0  # other processes' CPU during a run, in % of one CPU


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    argv: Callable[[int, int | None], list[str]]  # (port, cpu) -> argv


def _bare_argv(port: int, cpu: int | None) -> list[str]:
    argv = [sys.executable, "-m", "tests.bench.bare_server", "--port", str(port)]
    return [*argv, "--cpu", str(cpu)] if cpu is not None else argv


def _dispatcher(level: str) -> Callable[[int, int | None], list[str]]:
    def argv(port: int, cpu: int | None) -> list[str]:
        return dispatcher_argv(port, "--log-level", level)

    return argv


TARGETS = (
    Target("bare", "bare aiohttp handler", _bare_argv),
    Target("dispatcher_warning", "dispatcher, log level warning", _dispatcher("warning")),
    Target("dispatcher_info", "dispatcher, log level info (default)", _dispatcher("info")),
)


@dataclass
class ApiRun:
    target: str
    label: str
    round: int
    load: LoadResult
    server_log_bytes: int

    @property
    def client_bound(self) -> bool:
        server = self.load.server_cpu_pct
        return (
            self.load.client_cpu_pct >= CLIENT_BUSY_PCT
            and server is not None
            and server < SERVER_SATURATED_PCT
        )

    @property
    def disturbed(self) -> bool:
        return (self.load.other_cpu_pct or 0.0) > DISTURBED_PCT


@dataclass
class ApiResults:
    server_cpu: int | None
    client_cpu: int | None
    nodes: int
    concurrency: int
    warmup_s: float
    duration_s: float
    rounds: int
    runs: list[ApiRun] = field(default_factory=list)
    best: dict[str, ApiRun] = field(default_factory=dict)  # per target: the fastest round
    rate_ratio: dict[str, float] = field(default_factory=dict)  # dispatcher rps / bare rps
    server_us: dict[str, float] = field(default_factory=dict)  # per target: least CPU per req
    cpu_ratio: dict[str, float] = field(default_factory=dict)  # bare / dispatcher CPU per req
    # What the goal is judged on: the rate ratio, unless either run was bound by the load
    # generator (its rate is then a floor) or disturbed by other processes, in which case
    # the ratio of server CPU per request (what a saturated server's rate is made of).
    judged_ratio: dict[str, float] = field(default_factory=dict)
    judged_on: dict[str, str] = field(default_factory=dict)  # "rate" | "server_cpu"
    goal: float = RATE_GOAL

    def to_json(self) -> dict[str, object]:
        def run(r: ApiRun) -> dict[str, object]:
            return {
                "target": r.target,
                "label": r.label,
                "round": r.round,
                "server_log_bytes": r.server_log_bytes,
                "client_bound": r.client_bound,
                "disturbed": r.disturbed,
                **dataclasses.asdict(r.load),
            }

        return {
            "server_cpu": self.server_cpu,
            "client_cpu": self.client_cpu,
            "nodes": self.nodes,
            "concurrency": self.concurrency,
            "warmup_s": self.warmup_s,
            "duration_s": self.duration_s,
            "rounds": self.rounds,
            "goal_rate_ratio": self.goal,
            "runs": [run(r) for r in self.runs],
            "best": {key: run(r) for key, r in self.best.items()},
            "rate_ratio": self.rate_ratio,
            "server_us_per_request_least": self.server_us,
            "server_cpu_ratio": self.cpu_ratio,
            "judged_ratio": self.judged_ratio,
            "judged_on": self.judged_on,
        }


def pick_cpus() -> tuple[int | None, int | None]:
    """One CPU for the server, another for the client; no pinning with fewer than two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def measure(
    target: Target,
    *,
    round_no: int,
    log_dir: Path,
    server_cpu: int | None,
    client_cpu: int | None,
    nodes: int,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
) -> ApiRun:
    port = free_port()
    log_path = log_dir / f"{target.key}-{round_no}.log"
    log_path.unlink(missing_ok=True)
    proc = Proc(target.key, target.argv(port, server_cpu), log_path).start()
    try:
        if server_cpu is not None:
            os.sched_setaffinity(proc.pid, {server_cpu})
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(url + "/healthz", timeout_s=20.0, proc=proc)
        argv = [
            sys.executable, "-m", "tests.bench.loadgen",
            "--url", url,
            "--nodes", str(nodes),
            "--concurrency", str(concurrency),
            "--warmup", str(warmup_s),
            "--duration", str(duration_s),
            "--server-pid", str(proc.pid),
        ]  # fmt: skip
        if client_cpu is not None:
            argv += ["--cpu", str(client_cpu)]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=warmup_s + duration_s + 60.0,
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"load generator failed against {target.label} ({done.returncode}):\n"
                f"{done.stderr[-3000:]}\nserver log:\n{proc.output()[-3000:]}"
            )
        load = LoadResult(**orjson.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        proc.stop()
    return ApiRun(
        target=target.key,
        label=target.label,
        round=round_no,
        load=load,
        server_log_bytes=log_path.stat().st_size if log_path.exists() else 0,
    )


def run_api(
    *,
    log_dir: Path,
    nodes: int = 200,
    concurrency: int = 32,
    warmup_s: float = 1.0,
    duration_s: float = 5.0,
    rounds: int = 2,
    progress: Callable[[str], None] = print,
) -> ApiResults:
    log_dir.mkdir(parents=True, exist_ok=True)
    server_cpu, client_cpu = pick_cpus()
    results = ApiResults(
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        nodes=nodes,
        concurrency=concurrency,
        warmup_s=warmup_s,
        duration_s=duration_s,
        rounds=rounds,
    )
    # Rounds alternate the targets, so a slow spell on the machine hits each alike.
    for round_no in range(1, rounds + 1):
        for target in TARGETS:
            progress(
                f"api: round {round_no}/{rounds}: {target.label} ({warmup_s:g}+{duration_s:g} s)"
            )
            results.runs.append(
                measure(
                    target,
                    round_no=round_no,
                    log_dir=log_dir,
                    server_cpu=server_cpu,
                    client_cpu=client_cpu,
                    nodes=nodes,
                    concurrency=concurrency,
                    warmup_s=warmup_s,
                    duration_s=duration_s,
                )
            )
    for target in TARGETS:
        mine = [r for r in results.runs if r.target == target.key]
        results.best[target.key] = max(mine, key=lambda r: r.load.requests_per_s)
        costs = [c for r in mine if (c := r.load.server_cpu_us_per_request)]
        if costs:
            # Other load only ever adds to it (shared caches, sibling hyper-threads).
            results.server_us[target.key] = min(costs)
    bare = results.best["bare"]
    for key, best in results.best.items():
        if key == "bare":
            continue
        if bare.load.requests_per_s > 0:
            results.rate_ratio[key] = best.load.requests_per_s / bare.load.requests_per_s
        mine_cpu, bare_cpu = results.server_us.get(key), results.server_us.get("bare")
        if mine_cpu and bare_cpu:
            results.cpu_ratio[key] = bare_cpu / mine_cpu
        unreliable_rate = any(r.client_bound or r.disturbed for r in (best, bare))
        if unreliable_rate and key in results.cpu_ratio:
            results.judged_ratio[key], results.judged_on[key] = results.cpu_ratio[key], "server_cpu"
        elif key in results.rate_ratio:
            results.judged_ratio[key], results.judged_on[key] = results.rate_ratio[key], "rate"
    return results
