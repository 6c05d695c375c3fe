"""End to end, rebuild from the agents (ARCHITECTURE.md; API.md, status): a leader that
starts with nothing (the memory store) asks the agents, while it warms up, for the full
configs of what they run and adopts them where they run. No source re-sends anything.

(a) A memory-store HA pair (three replicas electing through a real redis-server, three
real agents): the leader is killed (-9); the new leader ends up with every check, held
by its source, on the same node, and the agents never stop running them.
(b) A standalone dispatcher on the memory store, killed (-9) and started again on the
same port: every check pushed through the API comes back from the agents.

Every timing assertion is a bound of seconds derived from the settings.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.ha_cluster import (
    FORWARDED,
    HEARTBEAT_S,
    LEASE_S,
    RETRY_S,
    SOURCE,
    WARMUP_S,
    HaCluster,
    Replica,
    ha_cluster,
)
from tests.e2e.harness import API, Reply, Target, call, wait_until
from tests.processes import Proc, agent_argv, dispatcher_argv, free_port, wait_http_ok

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

GAP_LIMIT_S = 2.5
"""Each check runs every second: a target path not hit for longer was stopped."""


def agent_events(log: str, event: str) -> list[dict[str, Any]]:
    """The JSON log records of one agent with that event."""
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == event:
                    found.append(record)
    return found


def checks_of(reply: Reply | None) -> dict[str, dict[str, Any]] | None:
    """digest -> check, from a GET /checks reply (None unless it is a 200)."""
    if reply is None or reply.status != 200:
        return None
    return {c["digest"]: c for c in reply.body["checks"]}


# ------------------------------------------------------------------- (a) HA pair


@pytest.fixture
def memory_cluster(tmp_path: Path) -> Iterator[HaCluster]:
    with ha_cluster(tmp_path, store="memory") as cluster:
        yield cluster


def test_memory_pair_kill_9_the_new_leader_rebuilds_every_check_from_the_agents(
    memory_cluster: HaCluster,
) -> None:
    c = memory_cluster
    leader, state = c.only_leader()
    before = HaCluster.placement_of(state)
    assert set(before) == set(c.digests.values()), state
    offsets = c.log_offsets()

    killed_at = time.time()
    started = time.monotonic()
    leader.proc.signal(signal.SIGKILL)
    survivors = [r for r in c.replicas if r is not leader]
    new, body, _ = c.wait_leader(survivors, timeout_s=15)
    took = time.monotonic() - started
    assert took <= LEASE_S + RETRY_S + 1, f"new leader after {took:.2f} s\n{c.logs()}"
    assert body["epoch"] > state["epoch"]
    assert body["warmup"] is True, f"a new leader on the memory store warms up: {body}"

    # Nothing is re-sent: the agents' reports are all the new leader gets.
    def rebuilt() -> dict[str, Any] | None:
        current = new.leads()
        if current is None or HaCluster.placement_of(current) != before:
            return None
        return current

    during, _ = c.wait("every check adopted where it runs", rebuilt, timeout_s=WARMUP_S)
    print(f"kill -9 to every check adopted: {time.monotonic() - started:.2f} s")
    assert during["warmup"] is True, "adopted during the warm-up"

    def warm() -> dict[str, Any] | None:
        current = new.leads()
        return current if current is not None and current["warmup"] is False else None

    warmed, _ = c.wait("warm-up over", warm, timeout_s=WARMUP_S + 2)
    assert HaCluster.placement_of(warmed) == before, f"{warmed}\n{c.logs()}"
    assert warmed["dangling"] == [], warmed
    assert warmed["totals"]["checks"] == len(before), warmed
    checks = checks_of(new.call("GET", API + "/checks", headers=FORWARDED, timeout_s=2.0))
    assert checks is not None
    assert {d: (ch["sources"], ch["node"]) for d, ch in checks.items()} == {
        d: ([SOURCE], n) for d, n in before.items()
    }
    source = new.call("GET", f"{API}/sources/{SOURCE}", headers=FORWARDED, timeout_s=2.0)
    assert source is not None, "the new leader did not answer"
    assert source.status == 200, source
    assert sorted(ch["digest"] for ch in source.body["configs"]) == sorted(before)

    # The agents fetch their sets after the warm-up: the same sets, nothing restarts.
    time.sleep(2 * HEARTBEAT_S)
    after = new.leads()
    assert after is not None, "the new leader stopped leading"
    assert HaCluster.placement_of(after) == before, after
    results_from(c, new, before, after=time.time())
    stopped = {a: ks for a, ks in c.agent_events(offsets, "check_stopped").items() if ks}
    started_again = {a: ks for a, ks in c.agent_events(offsets, "check_started").items() if ks}
    assert not stopped, f"agents stopped checks (agent: paths): {stopped}\n{c.logs()}"
    assert not started_again, f"agents started checks again: {started_again}\n{c.logs()}"
    gaps = {p: round(c.target.longest_gap(p, killed_at, time.time()), 2) for p in c.digests}
    assert all(g <= GAP_LIMIT_S for g in gaps.values()), f"gaps: {gaps}\n{c.logs()}"


def results_from(c: HaCluster, leader: Replica, placed: dict[str, str], *, after: float) -> None:
    """Every check reports to ``leader`` a run later than ``after``, from its node."""

    def probe() -> bool:
        results = leader.results()
        return results is not None and all(
            d in results and results[d]["last_run_at"] > after and results[d]["node"] == n
            for d, n in placed.items()
        )

    c.wait(f"results of every check at {leader.name}", probe, timeout_s=4 * HEARTBEAT_S + 2)


# --------------------------------------------------------- (b) standalone restart

SA_WARMUP_S = 3.0
SA_HEARTBEAT_S = 1.0
SA_EXPIRY_S = 4.0
SA_SOURCE = "restart"
SA_PATHS = tuple(f"/r{i}" for i in range(6))
SA_AGENTS = ("agent-a", "agent-b", "agent-c")


@dataclass
class Standalone:
    root: Path
    target: Target
    port: int = field(default_factory=free_port)
    dispatcher: Proc | None = None
    agents: list[Proc] = field(default_factory=list)
    starts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_dispatcher(self) -> Proc:
        self.starts += 1
        argv = dispatcher_argv(
            self.port,
            "--store", "memory",
            "--warmup-duration", str(SA_WARMUP_S),
            "--heartbeat-interval", str(SA_HEARTBEAT_S),
            "--node-expiration-timeout", str(SA_EXPIRY_S),
        )  # fmt: skip
        name = f"dispatcher-{self.starts}"
        self.dispatcher = Proc(name, argv, self.root / f"{name}.log").start()
        wait_http_ok(self.base + "/healthz", proc=self.dispatcher)
        return self.dispatcher

    def start_agents(self) -> None:
        for name in SA_AGENTS:
            port = free_port()
            argv = agent_argv(port, name, self.base, "--heartbeat-interval", str(SA_HEARTBEAT_S))
            proc = Proc(name, argv, self.root / f"{name}.log").start()
            self.agents.append(proc)
            wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc=proc)

    def get(self, path: str) -> Reply | None:
        try:
            return call("GET", self.base + path, timeout_s=2.0)
        except OSError:
            return None

    def state(self) -> dict[str, Any] | None:
        reply = self.get(API)
        return reply.body if reply is not None and reply.status == 200 else None

    def logs(self) -> str:
        procs = [p for p in (self.dispatcher, *self.agents) if p is not None]
        return "\n".join(f"--- {p.name} ---\n{p.output()[-2000:]}" for p in procs)

    def stop(self) -> None:
        for proc in [*self.agents, self.dispatcher]:
            if proc is not None:
                proc.stop(timeout_s=6)
        self.target.stop()


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    cluster = Standalone(tmp_path, Target().start())
    try:
        yield cluster
    finally:
        cluster.stop()


def test_standalone_memory_store_restarted_gets_every_check_back_from_the_agents(
    standalone: Standalone,
) -> None:
    s = standalone
    s.start_dispatcher()
    s.start_agents()
    configs = [
        {"name": "http", "instances": [{"url": s.target.url(p)}], "interval_s": 1} for p in SA_PATHS
    ]
    put = call("PUT", f"{s.base}{API}/sources/{SA_SOURCE}", {"configs": configs})
    assert put.status == 200, put
    digests = dict(zip(put.body["digests"], SA_PATHS, strict=True))
    put_at = time.time()

    def settled() -> dict[str, str] | None:
        state = s.state()
        results = s.get(API + "/results")
        if state is None or state["warmup"] or results is None or results.status != 200:
            return None
        placed = HaCluster.placement_of(state)
        ran = results.body["checks"]
        ok = set(placed) == set(digests) and all(
            d in ran and ran[d]["node"] == placed[d] and ran[d]["last_run_at"] > put_at
            for d in digests
        )
        return placed if ok else None

    before, _ = wait_until(
        settled, timeout_s=SA_WARMUP_S + 10, what="every check placed and run", context=s.logs
    )
    offsets = [len(a.output()) for a in s.agents]

    assert s.dispatcher is not None
    killed_at = time.time()
    s.dispatcher.signal(signal.SIGKILL)
    s.dispatcher.wait(timeout_s=5)
    s.start_dispatcher()
    restarted = time.monotonic()
    first = s.state()
    assert first is not None, s.logs()
    assert first["warmup"] is True, first

    def back() -> dict[str, Any] | None:
        state = s.state()
        if state is None or state["warmup"] or HaCluster.placement_of(state) != before:
            return None
        return state

    state, _ = wait_until(
        back, timeout_s=SA_WARMUP_S + 2, what="every check back where it ran", context=s.logs
    )
    print(f"restart to every check back and warm-up over: {time.monotonic() - restarted:.2f} s")
    assert state["dangling"] == [], state
    checks = checks_of(s.get(API + "/checks"))
    assert checks is not None
    assert {d: c["sources"] for d, c in checks.items()} == {d: [SA_SOURCE] for d in digests}

    # The agents refetch after the warm-up and get what they run: nothing stops.
    time.sleep(2 * SA_HEARTBEAT_S)
    again = s.state()
    assert again is not None, s.logs()
    assert HaCluster.placement_of(again) == before, again
    for agent, offset in zip(s.agents, offsets, strict=True):
        log = agent.output()[offset:]
        assert not agent_events(log, "check_stopped"), f"{agent.name} stopped checks\n{log}"
        assert not agent_events(log, "check_started"), f"{agent.name} started checks\n{log}"
        assert agent_events(log, "running_configs_sent"), f"{agent.name} was not asked\n{log}"
    end = time.time()
    gaps = {p: round(s.target.longest_gap(p, killed_at, end), 2) for p in SA_PATHS}
    assert all(g <= GAP_LIMIT_S for g in gaps.values()), f"gaps: {gaps}\n{s.logs()}"
