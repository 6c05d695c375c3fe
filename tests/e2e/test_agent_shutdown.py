"""An agent exits within its shutdown grace on SIGTERM even when its dispatcher hangs
mid-request. The bound is the agent's ``--shutdown-timeout`` plus what a process needs
to be gone once its shutdown is over."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import API, call, wait_until
from tests.processes import Proc, agent_argv, dispatcher_argv, free_port, wait_http_ok

SHUTDOWN_S = 5.0
EXIT_S = 2.0
"""What a process needs past its own shutdown to be gone (interpreter teardown)."""


@pytest.fixture
def frozen_dispatcher(tmp_path: Path) -> Iterator[tuple[Proc, str]]:
    port = free_port()
    proc = Proc(
        "dispatcher",
        dispatcher_argv(port, "--node-expiration-timeout", "3", "--heartbeat-interval", "0.5"),
        tmp_path / "dispatcher.log",
    ).start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc=proc, timeout_s=30)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.alive():
            proc.signal(signal.SIGCONT)
        proc.stop()


@pytest.mark.timeout(90)
def test_sigterm_with_a_hung_dispatcher_exits_within_the_shutdown_budget(
    frozen_dispatcher: tuple[Proc, str], tmp_path: Path
) -> None:
    dispatcher, url = frozen_dispatcher
    port = free_port()
    agent = Proc(
        "agent",
        agent_argv(
            port, "agent-x", url,
            "--heartbeat-interval", "0.5",
            "--long-poll", "30",
            "--shutdown-timeout", str(SHUTDOWN_S),
        ),
        tmp_path / "agent.log",
    ).start()  # fmt: skip

    def registered() -> bool:
        reply = call("GET", url + API)
        return reply.status == 200 and any(n["name"] == "agent-x" for n in reply.body["nodes"])

    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc=agent, timeout_s=30)
        wait_until(registered, timeout_s=30, what="agent-x registered")
        # Registered: a long poll is in flight. Now every request hangs (10 s client
        # timeout): the results, the leave.
        dispatcher.signal(signal.SIGSTOP)
        started = time.monotonic()
        agent.signal(signal.SIGTERM)
        code = agent.wait(timeout_s=SHUTDOWN_S + EXIT_S + 20)
        took = time.monotonic() - started
        assert code == 0, agent.output()[-3000:]
        # Stopping checks, flushing and leaving all fit in the grace.
        assert took <= SHUTDOWN_S + EXIT_S, f"took {took:.1f}s to exit\n{agent.output()[-3000:]}"
        assert "agent_stopped" in agent.output()
    finally:
        agent.stop()
