"""End to end, real processes: a heavy node is relieved by the load-aware rebalancer.

One dispatcher and two node agents. Agent A registers alone and gets four http checks
(interval 1 s): two against a target path that answers after 0.3 s (utilisation about
0.3 each), two against a fast path. Agent B registers afterwards, empty. Once A's stats
have measured the costs and every check has an ok result, ``POST /rebalance`` moves
exactly one slow check to B (by count the nodes stay 3 to 1: load, not count, is
spread); B then runs it and reports its results, and a second rebalance moves nothing.
A dry run first shows the same plan and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import API, Target, call, wait_until
from tests.processes import Proc, agent_argv, dispatcher_argv, free_port, wait_http_ok

pytestmark = pytest.mark.e2e

HEARTBEAT_S = 0.5
SLOW_S = 0.3
SLOW = ("/slow-1", "/slow-2")
FAST = ("/fast-1", "/fast-2")


@dataclass
class Stack:
    target: Target
    url: str
    dispatcher: Proc
    agents: dict[str, Proc]

    def get(self, path: str) -> Any:
        reply = call("GET", f"{self.url}{API}{path}", timeout_s=5)
        assert reply.status == 200, reply
        return reply.body

    def rebalance(self, **body: bool) -> Any:
        reply = call("POST", f"{self.url}{API}/rebalance", body, timeout_s=5)
        assert reply.status == 200, reply
        return reply.body

    def logs(self) -> str:
        procs = [self.dispatcher, *self.agents.values()]
        return "\n".join(f"--- {p.name} ---\n{p.output()[-2000:]}" for p in procs)

    def placement(self) -> dict[str, list[str]]:
        return {n["name"]: sorted(n["configs"]) for n in self.get("")["nodes"]}

    def start_agent(self, root: Path, name: str) -> None:
        port = free_port()
        argv = agent_argv(port, name, self.url, "--heartbeat-interval", str(HEARTBEAT_S))
        self.agents[name] = proc = Proc(name, argv, root / f"{name}.log").start()
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc=proc)
        wait_until(
            lambda: name in self.placement(), timeout_s=10, what=f"{name} registered",
            context=self.logs,
        )  # fmt: skip


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    target = Target().start()
    for path in SLOW:
        target.delays[path] = SLOW_S
    port = free_port()
    argv = dispatcher_argv(
        port, "--node-expiration-timeout", "3", "--heartbeat-interval", str(HEARTBEAT_S)
    )
    dispatcher = Proc("dispatcher", argv, tmp_path / "dispatcher.log").start()
    s = Stack(target, f"http://127.0.0.1:{port}", dispatcher, {})
    try:
        wait_http_ok(f"{s.url}/healthz", proc=dispatcher)
        yield s
    finally:
        for proc in s.agents.values():
            proc.stop(timeout_s=10)
        dispatcher.stop(timeout_s=10)
        target.stop()


def test_a_heavy_node_is_relieved_by_moving_load_not_count(stack: Stack, tmp_path: Path) -> None:
    s = stack
    s.start_agent(tmp_path, "agent-a")
    configs = [
        {"name": "http", "instances": [{"url": s.target.url(p)}], "interval_s": 1}
        for p in (*SLOW, *FAST)
    ]
    reply = call("PUT", f"{s.url}{API}/sources/e2e", {"configs": configs}, timeout_s=5)
    assert reply.status == 200, reply
    digests = dict(zip((*SLOW, *FAST), reply.body["digests"], strict=True))
    slow = {digests[p] for p in SLOW}
    s.start_agent(tmp_path, "agent-b")
    assert s.placement() == {"agent-a": sorted(digests.values()), "agent-b": []}

    def measured() -> dict[str, Any] | None:
        """Every check has an ok result and A's stats have priced the slow ones."""
        checks = s.get("/results")["checks"]
        plan = s.rebalance(dry_run=True)
        every_ok = set(checks) == set(digests.values()) and all(c["ok"] for c in checks.values())
        return plan if every_ok and plan["moves"] else None

    plan, _ = wait_until(measured, timeout_s=20, what="costs measured", context=s.logs)
    assert plan["applied"] is False
    assert plan["outcome"] == "dry_run"
    assert s.placement()["agent-b"] == [], "a dry run changes nothing"

    applied = s.rebalance()

    assert applied["applied"] is True, applied
    assert applied["outcome"] == "applied"
    [move] = applied["moves"]
    assert move["digest"] in slow, "the move that relieves A most with one check"
    assert (move["source_node"], move["dest_node"]) == ("agent-a", "agent-b")
    assert move["weight"] == pytest.approx(SLOW_S, abs=0.15)  # utilisation: 0.3 s / 1 s
    assert move["source_load_after"] < move["source_load_before"]
    assert move["dest_load_after"] <= move["source_load_after"] * 1.25
    assert applied["spread_after"] < applied["spread_before"]
    placement = s.placement()
    assert len(placement["agent-a"]) == 3
    assert placement["agent-b"] == [move["digest"]]

    # Agent B runs the moved check and reports it; agent A stops it.
    moved_at = time.time()

    def reported_by_b() -> bool:
        entry = s.get("/results")["checks"].get(move["digest"])
        return bool(entry and entry["node"] == "agent-b" and entry["last_run_at"] > moved_at)

    wait_until(reported_by_b, timeout_s=10, what="agent-b runs the moved check", context=s.logs)

    again = s.rebalance()
    assert again["moves"] == [], again
    assert again["outcome"] == "nothing_to_move"
