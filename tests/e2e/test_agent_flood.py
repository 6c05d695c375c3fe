"""End to end, real processes: one agent given a few thousand checks in one PUT keeps
heartbeating while it starts them and runs them, and on SIGTERM leaves (the dispatcher
hears ``leaving``) and exits within its shutdown grace.

A dispatcher with a short expiry, one agent, and a loopback HTTP target that every check
hits. Bounds are in seconds, from the settings: the expiry (a node that stops
heartbeating is gone after it) and the agent's ``--shutdown-timeout``.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import API, Target, call, wait_until
from tests.processes import Proc, agent_argv, dispatcher_argv, free_port, wait_http_ok

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CHECKS = 3_000
INTERVAL_S = 15.0
HEARTBEAT_S = 0.5
EXPIRY_S = 3.0
SHUTDOWN_S = 3.0
EXIT_S = 2.0
"""What a process needs past its own shutdown to be gone (interpreter teardown)."""
AGENT = "flooded"
RUNNING = re.compile(r"^clusterchecks_agent_checks_running (\S+)$", re.M)


@dataclass
class Setup:
    dispatcher: Proc
    base: str
    agent: Proc
    agent_port: int
    target: Target

    def running(self) -> int:
        url = f"http://127.0.0.1:{self.agent_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            match = RUNNING.search(response.read().decode())
        return int(float(match.group(1))) if match else 0

    def node(self) -> dict[str, Any] | None:
        reply = call("GET", self.base + API)
        assert reply.status == 200, reply
        return next((n for n in reply.body["nodes"] if n["name"] == AGENT), None)

    def events(self, proc: Proc, event: str) -> list[dict[str, Any]]:
        found = []
        for line in proc.output().splitlines():
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("event") == event:
                    found.append(entry)
        return found

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.output()[-3000:]}" for p in (self.dispatcher, self.agent)
        )


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    target = Target().start()
    port = free_port()
    dispatcher = Proc(
        "dispatcher",
        dispatcher_argv(
            port,
            "--node-expiration-timeout", str(EXPIRY_S),
            "--heartbeat-interval", str(HEARTBEAT_S),
        ),
        tmp_path / "dispatcher.log",
    ).start()  # fmt: skip
    agent_port = free_port()
    base = f"http://127.0.0.1:{port}"
    agent = Proc(
        "agent",
        agent_argv(
            agent_port, AGENT, base,
            "--capacity", "64",
            "--heartbeat-interval", str(HEARTBEAT_S),
            "--shutdown-timeout", str(SHUTDOWN_S),
            "--log-level", "info",
        ),
        tmp_path / "agent.log",
    )  # fmt: skip
    try:
        wait_http_ok(f"{base}/readyz", proc=dispatcher, timeout_s=30)
        agent.start()
        wait_http_ok(f"http://127.0.0.1:{agent_port}/healthz", proc=agent, timeout_s=30)
        yield Setup(dispatcher, base, agent, agent_port, target)
    finally:
        agent.stop()
        dispatcher.stop()
        target.stop()


def test_a_flooded_agent_keeps_heartbeating_and_leaves_within_its_grace_on_sigterm(
    setup: Setup,
) -> None:
    s = setup
    wait_until(s.node, timeout_s=30, what="the agent registered", context=s.logs)
    configs = [
        {"name": "http", "instances": [{"url": s.target.url(f"/c{n}")}], "interval_s": INTERVAL_S}
        for n in range(CHECKS)
    ]
    reply = call("PUT", f"{s.base}{API}/sources/flood", {"configs": configs}, timeout_s=60)
    assert reply.status == 200, reply
    wait_until(
        lambda: s.running() == CHECKS, timeout_s=60, what=f"{CHECKS} checks running",
        context=s.logs,
    )  # fmt: skip
    # Two expiry timeouts while every check runs: a node whose heartbeats stopped for one
    # would be gone.
    deadline = time.monotonic() + 2 * EXPIRY_S
    while time.monotonic() < deadline:
        node = s.node()
        assert node is not None, f"the agent was expired while running its checks\n{s.logs()}"
        assert len(node["configs"]) == CHECKS
        time.sleep(HEARTBEAT_S)
    assert not s.events(s.dispatcher, "node_expired"), s.logs()
    sample = range(0, CHECKS, 10)
    ran = sum(1 for n in sample if s.target.times(f"/c{n}"))
    assert ran > len(sample) // 4, f"{ran} of {len(sample)} sampled checks ran"

    signalled = time.monotonic()
    s.agent.signal(signal.SIGTERM)
    try:
        code = s.agent.wait(timeout_s=SHUTDOWN_S + EXIT_S + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {SHUTDOWN_S + EXIT_S + 10:g} s after SIGTERM\n{s.logs()}")
    took = time.monotonic() - signalled
    print(f"exit {took:.2f} s after SIGTERM")
    assert code == 0, s.logs()
    assert took <= SHUTDOWN_S + EXIT_S, f"took {took:.1f} s to exit\n{s.logs()}"
    left = s.events(s.agent, "agent_left")
    assert left, s.logs()
    assert left[-1]["deregistered"] is True, left[-1]
    # The dispatcher heard the leave: the node is gone at once, not after the expiry.
    assert s.node() is None, s.logs()
    assert [e["node"] for e in s.events(s.dispatcher, "node_left")] == [AGENT]
    assert not s.events(s.dispatcher, "node_expired"), s.logs()
