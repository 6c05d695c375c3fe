"""End to end: `make run`'s script (scripts/demo.py) with its real processes, on free
ports and a copy of the example checks that probe the demo's own target there.

What the README promises a newcomer: the first table shows every agent registered and
no check dangling; ``kill -9`` an agent and the demo goes on, reports it, and shows its
checks moving to the others once it has missed heartbeats for the demo's expiry;
Ctrl-C (SIGINT) stops every child and exits 0. And what it does when it cannot go on:
the dispatcher dying ends the demo with a clear message and exit status 1.

Bounds are seconds derived from the demo's own settings (read from the script), plus a
margin for a busy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dispatcher.settings import TICK_INTERVAL_S
from tests.processes import ROOT, free_port

pytestmark = pytest.mark.e2e

SCRIPT = ROOT / "scripts" / "demo.py"
MARGIN_S = 10.0
"""Slack for a loaded machine on top of every bound the demo's settings give."""


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("clusterchecks_demo", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up while the class is made.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


DEMO = load_demo()
EVERY_S = 1.0
"""The tests ask for a table every second (the demo's default is five)."""
TICK_S = min(TICK_INTERVAL_S, DEMO.EXPIRY_S / 4)
"""The dispatcher's expiry tick (DispatchSettings.tick_interval_s)."""
START_BOUND_S = DEMO.READY_TIMEOUT_S + DEMO.REGISTER_TIMEOUT_S + MARGIN_S
"""From start to the first table: the dispatcher ready, then the agents registered and
the checks placed (its warm-up, WARMUP_S, is within REGISTER_TIMEOUT_S)."""
MOVE_BOUND_S = DEMO.EXPIRY_S + TICK_S + EVERY_S + MARGIN_S
"""From kill -9 to the table showing the agent's checks elsewhere: its last heartbeat
was before the kill, so it expires within EXPIRY_S of it, on the next tick; the next
table shows it."""
STOP_BOUND_S = 2 * DEMO.STOP_GRACE_S + MARGIN_S
"""Agents, then the dispatcher, each group within its grace."""


@dataclass
class Output:
    """The demo's stdout and stderr, line by line, read by a thread as they come."""

    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False

    def follow(self, stream: Any) -> None:
        for line in stream:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def wait_for(self, matches: Callable[[str], bool], *, after: int = 0, timeout_s: float) -> int:
        """The index of the first line from ``after`` on that ``matches``."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while True:
                for i in range(after, len(self.lines)):
                    if matches(self.lines[i]):
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    text = "\n".join(self.lines[-80:])
                    raise AssertionError(f"no such line within {timeout_s:g}s:\n{text}")
                self.changed.wait(timeout=left)

    def text(self) -> str:
        with self.changed:
            return "\n".join(self.lines)


@dataclass
class Running:
    popen: subprocess.Popen[str]
    out: Output
    url: str
    run_dir: Path

    def pids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in self.run_dir.glob("*.pid")}

    def placement(self) -> dict[str, str | None]:
        with urllib.request.urlopen(f"{self.url}/v1/api/clusterchecks/checks", timeout=5) as r:
            checks: list[dict[str, Any]] = json.load(r)["checks"]
        return {c["digest"]: c["node"] for c in checks}

    def table_start(self, after: int = 0) -> int:
        return self.out.wait_for(
            lambda line: "agents registered" in line, after=after, timeout_s=MOVE_BOUND_S
        )


def starts_and_has(start: str, part: str) -> Callable[[str], bool]:
    return lambda line: line.startswith(start) and part in line


def alive(pid: int) -> bool:
    """Whether a clusterchecks process still runs under that pid (not a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"clusterchecks" in cmdline and "\nState:\tZ" not in status


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Running]:
    with running_demo(tmp_path) as running:
        yield running


@contextlib.contextmanager
def running_demo(tmp_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[Running]:
    port, agent_ports = free_port(), [free_port() for _ in range(3)]
    conf = tmp_path / "conf.d"
    saved = tmp_path / "target-port"
    if saved.exists():  # a second run on the same directory: the same checks
        target_port = int(saved.read_text())
    else:
        target_port = free_port()
        saved.write_text(str(target_port))
        conf.mkdir()
        for example in (ROOT / "examples" / "conf.d").glob("*.yaml"):
            text = example.read_text().replace("127.0.0.1:8099", f"127.0.0.1:{target_port}")
            (conf / example.name).write_text(text.replace("port: 8099", f"port: {target_port}"))
    run_dir = tmp_path / "run"
    argv = [
        sys.executable, str(SCRIPT), "--port", str(port),
        "--agent-ports", ",".join(map(str, agent_ports)), "--target-port", str(target_port),
        "--config-dir", str(conf), "--run-dir", str(run_dir), "--every", f"{EVERY_S:g}",
    ]  # fmt: skip
    popen = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("CLUSTERCHECKS_")}
        | (extra_env or {}),
    )  # fmt: skip
    out = Output()
    reader = threading.Thread(target=out.follow, args=(popen.stdout,), daemon=True)
    reader.start()
    running = Running(popen, out, f"http://127.0.0.1:{port}", run_dir)
    pids: dict[str, int] = {}
    try:
        out.wait_for(lambda line: line.startswith("agents "), timeout_s=START_BOUND_S)
        pids = running.pids()
        yield running
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGINT)
            try:
                popen.wait(timeout=STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        for pid in pids.values():  # never leave a child behind, even when a test failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        reader.join(timeout=5)
        if popen.stdout is not None:
            popen.stdout.close()


def test_the_first_table_has_every_agent_and_no_check_dangling(demo: Running) -> None:
    first = demo.table_start()
    assert re.search(r"3 agents registered, 7 checks \(7 running, 0 dangling\)",
                     demo.out.lines[first]), demo.out.text()  # fmt: skip
    text = demo.out.text()
    assert "dangling" not in "\n".join(demo.out.lines[first + 1 : first + 16])
    assert set(demo.placement().values()) == {"agent-a", "agent-b", "agent-c"}
    # The agents started after the dispatcher was ready: none logged a refused connection.
    for name in ("agent-a", "agent-b", "agent-c"):
        log = (demo.run_dir / f"{name}.log").read_text()
        assert "onnection refused" not in log, log[-2000:]
    assert "ready after" in text


def test_the_banner_points_at_the_dashboard_which_answers(demo: Running) -> None:
    demo.table_start()
    assert f"dashboard   {demo.url}/ui/" in demo.out.text()
    with urllib.request.urlopen(f"{demo.url}/", timeout=5) as response:  # follows the 302
        assert response.url == f"{demo.url}/ui/"
        assert response.headers["Content-Type"].startswith("text/html")
        assert b"clusterchecks" in response.read()
    with urllib.request.urlopen(f"{demo.url}/v1/api/clusterchecks/overview", timeout=5) as r:
        overview = json.load(r)
    assert overview["auth"] is False  # loopback without tokens: the page asks for none
    assert {n["name"] for n in overview["nodes"]} == {"agent-a", "agent-b", "agent-c"}


SLOW_START_S = {"agent-a": DEMO.WARMUP_S + 4, "agent-b": DEMO.WARMUP_S, "agent-c": 0}
"""How long each agent sleeps before it starts in the slow-start test, as on a busy
machine: one past the dispatcher's warm-up, and seconds apart (several of its ticks)."""


@pytest.mark.timeout(120)
def test_agents_slower_to_start_than_the_warm_up_still_all_get_checks(tmp_path: Path) -> None:
    # A sitecustomize on PYTHONPATH delays every agent process before it runs (the
    # dispatcher is started with the same environment, so it spares that one).
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        "if sys.argv and sys.argv[0].endswith('clusterchecks-agent'):\n"
        f"    time.sleep({SLOW_START_S!r}[sys.argv[sys.argv.index('--name') + 1]])\n"
        f"    open(os.path.join({str(site)!r}, f'slept-{{os.getpid()}}'), 'w').close()\n"
    )
    with running_demo(tmp_path, {"PYTHONPATH": str(site)}) as demo:
        first = demo.table_start()
        assert re.search(r"3 agents registered, 7 checks \(7 running, 0 dangling\)",
                         demo.out.lines[first]), demo.out.text()  # fmt: skip
        assert set(demo.placement().values()) == {"agent-a", "agent-b", "agent-c"}
        # Not vacuous: each agent did sleep before it started.
        slept = {int(p.name.removeprefix("slept-")) for p in site.glob("slept-*")}
        agents = {pid for name, pid in demo.pids().items() if name.startswith("agent-")}
        assert slept == agents


def readme_demo_commands() -> list[str]:
    """The shell lines of the README's `make run` section (its first ```sh block after
    the words "While it runs")."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("While it runs", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.timeout(120)
def test_the_readme_s_admin_commands_work_against_the_demo(demo: Running) -> None:
    demo.table_start()
    admin = [c for c in readme_demo_commands() if c.startswith(".venv/bin/clusterchecks-")]
    assert len(admin) >= 3, readme_demo_commands()
    # The README's commands use the default URL; this demo runs on a free port.
    env = {**os.environ, "CLUSTERCHECKS_URL": demo.url}
    for command in admin:
        argv = shlex.split(command)
        argv[0] = str(ROOT / argv[0])
        done = subprocess.run(
            argv, check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=30
        )
        # results exits 1 while a check fails (the target's /flaky does every third time)
        allowed = (0, 1) if argv[1] == "results" else (0,)
        assert done.returncode in allowed, (command, done.stdout, done.stderr)
        assert done.stderr == "", (command, done.stderr)
        assert done.stdout.strip(), command
    pid_file = next(c for c in readme_demo_commands() if c.startswith("kill -9 "))
    assert pid_file == "kill -9 $(cat .run/agent-a.pid)"
    assert (demo.run_dir / "agent-a.pid").read_text().strip() == str(demo.pids()["agent-a"])


@pytest.mark.timeout(180)
def test_an_agent_killed_is_reported_its_checks_move_and_ctrl_c_stops_everything(
    demo: Running,
) -> None:
    demo.table_start()
    pids = demo.pids()
    assert set(pids) == {"dispatcher", "agent-a", "agent-b", "agent-c"}
    on_a = {d for d, node in demo.placement().items() if node == "agent-a"}
    assert on_a, "the dispatcher gave agent-a nothing to run"

    os.kill(pids["agent-a"], signal.SIGKILL)
    killed_at = time.monotonic()

    seen = demo.out.wait_for(
        lambda line: "agent-a killed by SIGKILL; the demo goes on" in line,
        timeout_s=DEMO.POLL_S + MARGIN_S,
    )
    # The table reports it: first still listed at the dispatcher, then gone, and each of
    # its checks moved to another agent.
    row = demo.out.wait_for(
        lambda line: line.startswith("agent-a ") and "gone: expired" in line,
        after=seen,
        timeout_s=MOVE_BOUND_S,
    )
    assert "killed by SIGKILL" in demo.out.lines[row]
    moves: dict[str, int] = {}
    for digest in sorted(on_a):
        moved_from_a = f"({digest[:12]}): agent-a -> "
        moves[digest] = demo.out.wait_for(
            starts_and_has("moved: ", moved_from_a),
            after=seen,
            timeout_s=max(0.0, MOVE_BOUND_S - (time.monotonic() - killed_at)),
        )
    for index in moves.values():
        assert re.search(r": agent-a -> agent-[bc]$", demo.out.lines[index])
    assert all(node in ("agent-b", "agent-c") for node in demo.placement().values())

    # Still running, tables still coming.
    after = max(moves.values())
    demo.table_start(after=after)
    assert demo.popen.poll() is None

    demo.popen.send_signal(signal.SIGINT)
    assert demo.popen.wait(timeout=STOP_BOUND_S) == 0, demo.out.text()[-3000:]
    demo.out.wait_for(lambda line: line == "stopped", after=after, timeout_s=MARGIN_S)
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert list(demo.run_dir.glob("*.pid")) == []
    assert "Traceback" not in demo.out.text()


@pytest.mark.timeout(180)
def test_stopped_and_started_again_it_has_every_check_where_it_ran(tmp_path: Path) -> None:
    # What the README shows: a check pushed through the API (no file holds it) is still
    # there after Ctrl-C and a new `make run`, and every check is on the agent it was on.
    check = {"name": "tcp", "instances": [{"host": "127.0.0.1", "port": 9}], "interval_s": 5}
    with running_demo(tmp_path) as demo:
        demo.table_start()
        reply = urllib.request.urlopen(urllib.request.Request(
            f"{demo.url}/v1/api/clusterchecks/sources/api:readme",
            data=json.dumps({"configs": [check]}).encode(), method="PUT",
            headers={"Content-Type": "application/json"},
        ), timeout=5)  # fmt: skip
        assert reply.status == 200
        placed = demo.out.wait_for(
            lambda line: "agents registered, 8 checks (8 running, 0 dangling)" in line,
            timeout_s=MOVE_BOUND_S,
        )
        before = demo.placement()
        demo.popen.send_signal(signal.SIGINT)
        assert demo.popen.wait(timeout=STOP_BOUND_S) == 0, demo.out.text()[-3000:]
        assert placed
    assert (tmp_path / "run" / "data" / DEMO.DATA_FILE).exists()
    with running_demo(tmp_path) as again:
        first = again.table_start()
        assert "8 checks (8 running, 0 dangling)" in again.out.lines[first], again.out.text()
        assert again.placement() == before
        # It loaded its data dir: a term with no warm-up (an empty store would have one).
        log = (again.run_dir / "dispatcher.log").read_text().splitlines()
        records = [json.loads(line) for line in log if line.startswith("{")]
        leading = [record for record in records if record.get("event") == "leading"]
        assert [record["warmup_s"] for record in leading] == [0], log[-20:]
        assert leading[0]["checks"] == 8, leading


@pytest.mark.timeout(120)
def test_the_dispatcher_dying_ends_the_demo_with_a_message_and_status_1(demo: Running) -> None:
    demo.table_start()
    pids = demo.pids()
    os.kill(pids["dispatcher"], signal.SIGKILL)
    assert demo.popen.wait(timeout=DEMO.POLL_S + STOP_BOUND_S) == 1
    demo.out.wait_for(lambda line: line.startswith("stopped"), timeout_s=MARGIN_S)
    text = demo.out.text()
    assert "error: the dispatcher killed by SIGKILL: the demo cannot go on without it" in text
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert "Traceback" not in text


@pytest.mark.timeout(60)
def test_a_dispatcher_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    # The demo passes its environment on: a bad setting there stops the dispatcher.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERCHECKS_")}
    done = subprocess.run(
        demo_argv(tmp_path), check=False, capture_output=True, text=True, cwd=ROOT,
        env={**env, "CLUSTERCHECKS_LOG_LEVEL": "loud"}, timeout=DEMO.READY_TIMEOUT_S + MARGIN_S,
    )  # fmt: skip
    assert done.returncode == 1, done
    assert "error: the dispatcher exited with code 2" in done.stderr
    assert "dispatcher.log" in done.stderr
    assert "--log-level" in done.stderr.split("dispatcher.log", 1)[1]  # the log's own words
    assert list((tmp_path / "run").glob("agent-*.log")) == []  # no agent was started


def test_a_config_dir_that_is_not_a_directory_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    not_a_dir = tmp_path / "conf.d"
    not_a_dir.write_text("")
    done = subprocess.run(
        [*demo_argv(tmp_path), "--config-dir", str(not_a_dir)],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=MARGIN_S,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert f"--config-dir: {not_a_dir} is not a directory" in done.stderr
    assert not (tmp_path / "run" / "dispatcher.log").exists()


def demo_argv(tmp_path: Path, port: int | None = None) -> list[str]:
    return [
        sys.executable, str(SCRIPT), "--port", str(port or free_port()),
        "--agent-ports", ",".join(str(free_port()) for _ in range(3)),
        "--target-port", str(free_port()), "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            demo_argv(tmp_path, port), check=False, capture_output=True, text=True, cwd=ROOT,
            timeout=MARGIN_S,
        )  # fmt: skip
    assert done.returncode == 1, done
    assert f"error: port {port} (dispatcher) in use: is another `make run` running?" in (
        done.stderr
    )
    assert list((tmp_path / "run").glob("*.log")) == []


def test_children_of_an_earlier_run_still_alive_are_refused(tmp_path: Path) -> None:
    # A stand-in for an agent left behind by a demo killed outright.
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "clusterchecks-agent"]
    )
    try:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        (run_dir / "agent-a.pid").write_text(f"{stand_in.pid}\n")
        done = subprocess.run(
            demo_argv(tmp_path), check=False, capture_output=True, text=True, cwd=ROOT,
            timeout=MARGIN_S,
        )  # fmt: skip
        assert done.returncode == 1, done
        assert f"agent-a (pid {stand_in.pid})" in done.stderr
        assert f"kill $(cat {run_dir}/*.pid)" in done.stderr
        assert list(run_dir.glob("*.log")) == []
    finally:
        stand_in.kill()
        stand_in.wait()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """Stands for a dispatcher process that runs but never becomes ready."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


async def test_a_dispatcher_never_ready_is_reported_with_what_readyz_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sleeper: subprocess.Popen[bytes]
) -> None:
    from aiohttp import web

    async def not_ready(_: web.Request) -> web.Response:
        return web.json_response({"status": "unhealthy", "reason": "no leader"}, status=503)

    app = web.Application()
    app.router.add_get("/readyz", not_ready)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    monkeypatch.setattr(DEMO, "READY_TIMEOUT_S", 1.0)
    try:
        opts = DEMO.parse(["--port", str(port), "--run-dir", str(tmp_path)])
        demo = DEMO.Demo(opts, DEMO.SystemClock(), asyncio.Event())
        demo.dispatcher = DEMO.Child(
            "dispatcher", sleeper, tmp_path / "dispatcher.log", tmp_path / "d.pid"
        )
        with pytest.raises(DEMO.DemoFailed) as failed:
            await demo.wait_ready()
        message = str(failed.value)
        assert message.startswith("the dispatcher did not become ready within 1s (")
        assert f"127.0.0.1:{port}/readyz: answered 503: " in message
        assert "no leader" in message
    finally:
        await runner.cleanup()
