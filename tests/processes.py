"""Real processes for end-to-end tests: free loopback ports, start, wait, stop."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


ALL_PORTS = range(10_000, 32_000)
"""Where test servers listen: below the kernel's ephemeral range (32768 and up by
default), so that no outgoing connection (an agent's, a client's) takes a port between
the moment it is chosen and the moment the server binds it. A port the kernel hands out
for ``bind(0)`` comes from that range: once, a dispatcher found its port taken that way
and its agents talked to another test's server."""


def _worker_ports(ports: range, worker: str, count: str) -> range:
    """This pytest-xdist worker's own slice of ``ports`` (all of it without xdist), so
    that two workers never choose the same port between the choice and the bind."""
    if not worker.startswith("gw") or not count.isdigit() or int(count) < 2:
        return ports
    index, workers = int(worker[2:]), int(count)
    size = len(ports) // workers
    return range(ports.start + index * size, ports.start + (index + 1) * size)


PORTS = _worker_ports(
    ALL_PORTS,
    os.environ.get("PYTEST_XDIST_WORKER", ""),
    os.environ.get("PYTEST_XDIST_WORKER_COUNT", ""),
)
_given: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never the same twice in this process."""
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.choice(PORTS)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the servers bind: a port in TIME_WAIT is free for them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise AssertionError(f"no free loopback port in {PORTS.start}-{PORTS.stop - 1}")


@dataclass
class Proc:
    """A child process whose output goes to a log file kept for failure reports."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            list(self.argv), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return self.popen.returncode if self.popen else None
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)
            return None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def wait_http_ok(url: str, *, timeout_s: float = 15.0, proc: Proc | None = None) -> None:
    """Waits until GET url answers 200; fails early if the process died."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited early:\n{proc.output()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.05)
    tail = proc.output()[-4000:] if proc else ""
    raise AssertionError(f"{url} not ready after {timeout_s}s ({last})\n{tail}")


def dispatcher_argv(port: int, *extra: str) -> list[str]:
    return [
        str(BIN / "clusterchecks-dispatcher"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--identity", f"dispatcher-{port}",
        "--log-format", "json",
        # The memory store unless a test names another (a later flag wins): the default,
        # sqlite, would keep its file in the working directory, shared by every test.
        "--store", "memory",
        *extra,
    ]  # fmt: skip


def agent_argv(port: int, name: str, dispatcher_url: str, *extra: str) -> list[str]:
    return [
        str(BIN / "clusterchecks-agent"),
        "--dispatcher-url", dispatcher_url,
        "--name", name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--log-format", "json",
        *extra,
    ]  # fmt: skip
