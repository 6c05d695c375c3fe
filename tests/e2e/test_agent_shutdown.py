"""An agent exits promptly on SIGTERM even when its dispatcher hangs mid-request."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import Proc, agent_argv, dispatcher_argv, free_port, wait_http_ok


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
        agent_argv(port, "agent-x", url, "--heartbeat-interval", "0.5", "--long-poll", "30"),
        tmp_path / "agent.log",
    ).start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc=agent, timeout_s=30)
        time.sleep(1.5)  # registered, a long poll in flight
        dispatcher.signal(signal.SIGSTOP)  # every request now hangs (10 s client timeout)
        time.sleep(1.0)
        started = time.monotonic()
        agent.signal(signal.SIGTERM)
        code = agent.wait(timeout_s=30)
        took = time.monotonic() - started
        assert code == 0, agent.output()[-3000:]
        # The shutdown budget is 5 s: stopping checks, flushing and leaving all fit in it.
        assert took < 7.0, f"took {took:.1f}s to exit\n{agent.output()[-3000:]}"
        assert "agent_stopped" in agent.output()
    finally:
        agent.stop()
