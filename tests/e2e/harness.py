"""Plain-HTTP helpers for end-to-end tests: JSON calls, simulated node agents, waiting."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from tests.processes import Proc

T = TypeVar("T")

API = "/v1/api/clusterchecks"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any

    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return str(code) if code is not None else None
        return None


def call(
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> Reply:
    """One HTTP request; any status comes back as a Reply (no exception for 4xx/5xx)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return _reply(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return _reply(exc.code, dict(exc.headers.items()), exc.read())


def _reply(status: int, headers: dict[str, str], raw: bytes) -> Reply:
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode(errors="replace")
    return Reply(status, headers, body)


def log_events(text: str, event: str) -> list[dict[str, Any]]:
    """The JSON log records of ``event`` in a process's output ``text``."""
    found = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    context: Callable[[], str] = lambda: "",
    interval_s: float = 0.05,
) -> tuple[T, float]:
    """Polls ``probe`` until it returns something other than None (or False).

    Returns the value and the seconds it took; fails with ``context()`` (a log tail).
    """
    started = time.monotonic()
    deadline = started + timeout_s
    last: T | None = None
    while True:
        last = probe()
        if last is not None and last is not False:
            return last, time.monotonic() - started
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"not within {timeout_s:g} s: {what} (last: {last!r})\n{context()}"
            )
        time.sleep(interval_s)


@dataclass
class DispatcherProcess:
    """A running clusterchecks-dispatcher process and its config directory."""

    proc: Proc
    port: int
    config_dir: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return call(method, self.url(path), body, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return call("GET", self.url(path), **kwargs)

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.proc.name} log tail ---\n{self.proc.output()[-chars:]}"

    def log_lines(self) -> list[str]:
        return [line for line in self.proc.output().splitlines() if line.strip()]

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_lines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def checks(self, **kwargs: Any) -> list[dict[str, Any]]:
        reply = self.get(API + "/checks", **kwargs)
        assert reply.status == 200, f"{reply}\n{self.tail()}"
        checks: list[dict[str, Any]] = reply.body["checks"]
        return checks

    def check_urls(self, **kwargs: Any) -> set[str]:
        return {c["instances"][0]["url"] for c in self.checks(**kwargs)}

    def component(self, name: str) -> dict[str, Any]:
        reply = self.get("/healthz")
        component: dict[str, Any] = reply.body["components"].get(name, {})
        return component


@dataclass
class SimAgent:
    """A node agent reduced to its protocol: heartbeat, and fetch configs when told to.

    ``start()`` runs the loop in a thread (every ``interval_s``); ``stop()`` ends it, as
    a crashed agent would, without saying goodbye.
    """

    base: str
    name: str
    token: str | None = None
    interval_s: float = 0.5
    last_change: int = 0
    digests: frozenset[str] = frozenset()
    errors: list[str] = field(default_factory=list)
    heartbeats: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self, last_change: int | None = None, **extra: Any) -> Reply:
        body = {"last_change": self.last_change if last_change is None else last_change, **extra}
        return call("POST", f"{self.base}{API}/status/{self.name}", body, token=self.token)

    def configs(self, query: str = "", timeout_s: float = 10.0) -> Reply:
        return call(
            "GET", f"{self.base}{API}/configs/{self.name}{query}", token=self.token,
            timeout_s=timeout_s,
        )  # fmt: skip

    def sync_once(self) -> None:
        reply = self.status()
        if reply.status != 200:
            raise AssertionError(f"{self.name}: status {reply.status} {reply.body}")
        self.heartbeats += 1
        if reply.body["is_up_to_date"]:
            return
        fetched = self.configs()
        if fetched.status != 200:
            raise AssertionError(f"{self.name}: configs {fetched.status} {fetched.body}")
        with self._lock:
            self.last_change = int(fetched.body["last_change"])
            self.digests = frozenset(c["digest"] for c in fetched.body["configs"])

    def held(self) -> frozenset[str]:
        with self._lock:
            return self.digests

    def start(self) -> SimAgent:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"agent-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception as exc:  # recorded for the test; a thread must not raise
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.interval_s)


class Target:
    """A loopback HTTP server in a thread; records (path, unix time) of every hit.

    Paths in ``failing`` answer 503, every other path 200; paths in ``delays`` answer
    after that many seconds (a check that costs more)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits: list[tuple[str, float]] = []
        self.failing: set[str] = set()
        self.delays: dict[str, float] = {}
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                now = time.time()
                path = self.path.split("?", 1)[0]
                with target._lock:
                    target._hits.append((path, now))
                    failing = path in target.failing
                    delay = target.delays.get(path, 0.0)
                if delay:
                    time.sleep(delay)
                status, body = (503, b"unavailable\n") if failing else (200, b"ok\n")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the agent went away mid-request (kill -9)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def start(self) -> Target:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def times(self, path: str) -> list[float]:
        with self._lock:
            return [t for p, t in self._hits if p == path]

    def count(self, path: str, start: float, end: float) -> int:
        return sum(1 for t in self.times(path) if start <= t < end)

    def first_after(self, path: str, after: float) -> float | None:
        return next((t for t in self.times(path) if t > after), None)

    # -------------------------------------------------------------------------- programs

    def longest_gap(self, path: str, start: float, end: float) -> float:
        """The longest time in [start, end] without a hit of ``path``."""
        stamps = [start, *(t for t in self.times(path) if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(stamps))


# ------------------------------------------------------------------------- processes


@dataclass
class Timings:
    """Seconds a module's tests measured, printed after the run (where pytest's summary
    shows them, captured output or not): ``report`` from a module-scoped fixture."""

    label: str
    taken: list[tuple[str, float]] = field(default_factory=list)

    def measured(self, what: str, seconds: float) -> float:
        self.taken.append((what, round(seconds, 2)))
        print(f"{what}: {seconds:.2f} s")
        return seconds

    def report(self, config: Any) -> None:
        reporter = config.pluginmanager.getplugin("terminalreporter")
        capture = config.pluginmanager.getplugin("capturemanager")
        if reporter is None or capture is None or not self.taken:
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for what, seconds in self.taken:
                reporter.write_line(f"{self.label} timing: {what}: {seconds:.2f} s")
