"""The built-in checks: http, tcp, dns and exec, each against something local."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from dispatcher.common.clock import FakeClock, SystemClock
from dispatcher.common.health import HealthRegistry
from dispatcher.errors import Gone
from node_agent.checks import InstanceError, RunContext
from node_agent.checks.dns import DnsCheck
from node_agent.checks.exec import ExecCheck
from node_agent.checks.http import HttpCheck
from node_agent.checks.tcp import TcpCheck
from node_agent.metrics import AgentMetrics
from node_agent.reports import Report, RunRegistry
from node_agent.server import create_app
from tests.node_agent.helpers import GUARD_S, eventually
from tests.processes import free_port

DIGEST = "0123456789abcdef"


def context(*, name: str = "check", timeout_s: float = 5.0) -> RunContext:
    return RunContext(
        check_name=name,
        digest=DIGEST,
        run_id=uuid.uuid4().hex,
        timeout_s=timeout_s,
        deadline_unix_s=time.time() + timeout_s,
    )


# ---------------------------------------------------------------------------- http


class HttpTarget:
    """A local HTTP target that records every request it receives."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/status/{code}", self._status)
        self.app.router.add_route("*", "/body", self._body)
        self.app.router.add_route("*", "/redirect", self._redirect)

    def _record(self, request: web.Request, body: bytes) -> None:
        self.requests.append((request.method, request.path, dict(request.headers), body))

    async def _status(self, request: web.Request) -> web.Response:
        self._record(request, await request.read())
        return web.Response(status=int(request.match_info["code"]), text="status page")

    async def _body(self, request: web.Request) -> web.Response:
        self._record(request, await request.read())
        return web.Response(text="service healthy: version=4.2.1 uptime=99")

    async def _redirect(self, request: web.Request) -> web.Response:
        self._record(request, b"")
        raise web.HTTPFound("/body")


@pytest.fixture
async def target(aiohttp_server: AiohttpServer) -> tuple[HttpTarget, TestServer]:
    http_target = HttpTarget()
    server = await aiohttp_server(http_target.app)
    return http_target, server


@pytest.fixture
async def http_check() -> AsyncIterator[HttpCheck]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    try:
        yield HttpCheck(session, clock=SystemClock())
    finally:
        await session.close()


async def run_http(check: HttpCheck, instance: dict[str, Any]) -> list[str]:
    outcome = await check.run(check.parse(instance, {}), context(name="http"))
    return outcome.errors


@pytest.mark.parametrize("code", [200, 204, 301, 399])
async def test_http_is_ok_for_200_to_399_by_default(
    http_check: HttpCheck, target: tuple[HttpTarget, TestServer], code: int
) -> None:
    _, server = target
    url = str(server.make_url(f"/status/{code}"))
    assert await run_http(http_check, {"url": url}) == []


@pytest.mark.parametrize("code", [400, 404, 500, 503])
async def test_http_fails_outside_200_to_399_by_default(
    http_check: HttpCheck, target: tuple[HttpTarget, TestServer], code: int
) -> None:
    _, server = target
    url = str(server.make_url(f"/status/{code}"))
    errors = await run_http(http_check, {"url": url})
    assert errors == [f"GET {url}: {code}"]


async def test_http_follows_redirects(
    http_check: HttpCheck, target: tuple[HttpTarget, TestServer]
) -> None:
    recorder, server = target
    url = str(server.make_url("/redirect"))
    outcome = await http_check.run(http_check.parse({"url": url}, {}), context())
    assert outcome.errors == []
    assert outcome.output.startswith("200 service healthy")
    assert [path for _, path, _, _ in recorder.requests] == ["/redirect", "/body"]


async def test_http_expect_status_replaces_the_default_range(
    http_check: HttpCheck, target: tuple[HttpTarget, TestServer]
) -> None:
    _, server = target
    not_found = str(server.make_url("/status/404"))
    ok = str(server.make_url("/status/200"))
    assert await run_http(http_check, {"url": not_found, "expect_status": [404, 410]}) == []
    errors = await run_http(http_check, {"url": ok, "expect_status": [404, 410]})
    assert errors == [f"GET {ok}: 200"]


async def test_http_body_contains(
    http_check: HttpCheck, target: tuple[HttpTarget, TestServer]
) -> None:
    _, server = target
    url = str(server.make_url("/body"))
    assert await run_http(http_check, {"url": url, "body_contains": "healthy"}) == []
    errors = await run_http(http_check, {"url": url, "body_contains": "degraded"})
    assert errors == [f"GET {url}: body does not contain 'degraded'"]


async def test_http_body_regex(
    http_check: HttpCheck, target: tuple[HttpTarget, TestServer]
) -> None:
    _, server = target
    url = str(server.make_url("/body"))
    assert await run_http(http_check, {"url": url, "body_regex": r"version=4\.\d+\.\d+"}) == []
    errors = await run_http(http_check, {"url": url, "body_regex": r"version=5\."})
    assert len(errors) == 1
    assert "body does not match" in errors[0]
    assert r"version=5\." in errors[0]


async def test_http_status_and_body_errors_are_all_reported(
    http_check: HttpCheck, target: tuple[HttpTarget, TestServer]
) -> None:
    _, server = target
    url = str(server.make_url("/status/500"))
    errors = await run_http(http_check, {"url": url, "body_contains": "nope"})
    assert len(errors) == 2
    assert errors[0].endswith(": 500")
    assert "body does not contain" in errors[1]


async def test_http_sends_the_headers_and_the_method(
    http_check: HttpCheck, target: tuple[HttpTarget, TestServer]
) -> None:
    recorder, server = target
    url = str(server.make_url("/status/200"))
    instance = {"url": url, "method": "PUT", "headers": {"X-Probe": "clusterchecks-7"}}
    assert await run_http(http_check, instance) == []
    method, path, headers, _ = recorder.requests[-1]
    assert method == "PUT"
    assert path == "/status/200"
    assert headers.get("X-Probe") == "clusterchecks-7"


async def test_http_label_names_the_method(
    http_check: HttpCheck, target: tuple[HttpTarget, TestServer]
) -> None:
    recorder, server = target
    url = str(server.make_url("/status/502"))
    errors = await run_http(http_check, {"url": url, "method": "DELETE"})
    assert errors == [f"DELETE {url}: 502"]
    assert recorder.requests[-1][0] == "DELETE"


async def test_http_connection_refused_is_a_failed_result(http_check: HttpCheck) -> None:
    url = f"http://127.0.0.1:{free_port()}/healthz"
    errors = await run_http(http_check, {"url": url})
    assert len(errors) == 1
    assert errors[0].startswith(f"GET {url}: ")
    assert "Connect" in errors[0]  # ClientConnectorError: Cannot connect to host ...


@pytest.mark.parametrize(
    ("instance", "problem"),
    [
        ({}, "missing field 'url'"),
        ({"url": "http://x/", "bogus": 1}, "unknown field 'bogus'"),
        ({"url": "ftp://x/"}, "url"),
        ({"url": "http://x/", "body_regex": "(unclosed"}, "body_regex"),
        ({"url": "http://x/", "expect_status": "200"}, "expect_status"),
    ],
)
async def test_http_bad_instances_name_the_field(
    http_check: HttpCheck, instance: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InstanceError) as raised:
        http_check.parse(instance, {})
    assert problem in str(raised.value)


def test_missing_and_unknown_fields_are_all_named() -> None:
    with pytest.raises(InstanceError) as raised:
        TcpCheck().parse({"port": 80, "bogus": True, "other": 1}, {})
    message = str(raised.value)
    assert "missing field 'host'" in message
    assert "unknown field 'bogus'" in message
    assert "unknown field 'other'" in message


# ----------------------------------------------------------------------------- tcp


class TcpTarget:
    """Answers "PING" with "PONG", anything else with "WHAT"; the connection then closes."""

    def __init__(self) -> None:
        self.connections = 0
        self.received: list[bytes] = []
        self.handlers: set[asyncio.Task[Any]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.connections += 1
        try:
            line = await reader.readline()
            self.received.append(line)
            if line:
                writer.write(b"PONG\n" if line.strip() == b"PING" else b"WHAT\n")
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.fixture
async def tcp_target() -> AsyncIterator[tuple[TcpTarget, int]]:
    target = TcpTarget()
    server = await asyncio.start_server(target.handle, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield target, port
    finally:
        server.close()
        await server.wait_closed()
        if target.handlers:
            async with asyncio.timeout(GUARD_S):
                await asyncio.gather(*target.handlers, return_exceptions=True)


async def run_tcp(instance: dict[str, Any]) -> tuple[list[str], str]:
    check = TcpCheck()
    outcome = await check.run(check.parse(instance, {}), context(name="tcp"))
    return outcome.errors, outcome.output


async def test_tcp_connects(tcp_target: tuple[TcpTarget, int]) -> None:
    target, port = tcp_target
    errors, output = await run_tcp({"host": "127.0.0.1", "port": port})
    assert errors == []
    assert output == "connected"
    await eventually(lambda: bool(target.received))
    assert target.connections == 1


async def test_tcp_connection_refused_fails() -> None:
    port = free_port()
    errors, _ = await run_tcp({"host": "127.0.0.1", "port": port})
    assert len(errors) == 1
    assert errors[0].startswith(f"tcp 127.0.0.1:{port}: ")
    assert errors[0].removeprefix(f"tcp 127.0.0.1:{port}: ").strip()  # says why


async def test_tcp_send_and_expect(tcp_target: tuple[TcpTarget, int]) -> None:
    target, port = tcp_target
    errors, output = await run_tcp(
        {"host": "127.0.0.1", "port": port, "send": "PING\n", "expect": "PONG"}
    )
    assert errors == []
    assert "PONG" in output
    assert target.received == [b"PING\n"]


async def test_tcp_expect_not_received_fails(tcp_target: tuple[TcpTarget, int]) -> None:
    _, port = tcp_target
    errors, _ = await run_tcp(
        {"host": "127.0.0.1", "port": port, "send": "HELLO\n", "expect": "PONG"}
    )
    assert len(errors) == 1
    assert "expected 'PONG'" in errors[0]
    assert "WHAT" in errors[0]  # what was received instead is shown


@pytest.mark.parametrize(
    ("instance", "problem"),
    [
        ({"host": "localhost"}, "missing field 'port'"),
        ({"port": 80}, "missing field 'host'"),
        ({"host": "localhost", "port": 80, "bogus": 1}, "unknown field 'bogus'"),
        ({"host": "localhost", "port": 70000}, "port"),
    ],
)
def test_tcp_bad_instances_name_the_field(instance: dict[str, Any], problem: str) -> None:
    with pytest.raises(InstanceError) as raised:
        TcpCheck().parse(instance, {})
    assert problem in str(raised.value)


# ----------------------------------------------------------------------------- dns


async def run_dns(instance: dict[str, Any]) -> tuple[list[str], str]:
    check = DnsCheck()
    outcome = await check.run(check.parse(instance, {}), context(name="dns"))
    return outcome.errors, outcome.output


async def test_dns_resolves_localhost() -> None:
    errors, output = await run_dns({"name": "localhost", "expect": ["127.0.0.1"]})
    assert errors == []
    assert "127.0.0.1" in output.split(", ")


async def test_dns_missing_expected_address_fails() -> None:
    errors, _ = await run_dns({"name": "localhost", "expect": ["127.0.0.1", "10.11.12.13"]})
    assert len(errors) == 1
    assert errors[0].startswith("dns A localhost: ")
    assert "missing ['10.11.12.13']" in errors[0]


async def test_dns_unresolvable_name_fails() -> None:
    errors, _ = await run_dns({"name": "no-such-host.invalid"})
    assert len(errors) == 1
    assert errors[0].startswith("dns A no-such-host.invalid: ")


@pytest.mark.parametrize(
    ("instance", "problem"),
    [
        ({}, "missing field 'name'"),
        ({"name": "localhost", "bogus": 1}, "unknown field 'bogus'"),
        ({"name": "localhost", "record_type": "MX"}, "record_type"),
        ({"name": "localhost", "expect": ["not-an-address"]}, "expect"),
    ],
)
def test_dns_bad_instances_name_the_field(instance: dict[str, Any], problem: str) -> None:
    with pytest.raises(InstanceError) as raised:
        DnsCheck().parse(instance, {})
    assert problem in str(raised.value)


# ---------------------------------------------------------------------------- exec


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    directory = tmp_path / "allowed"
    directory.mkdir()
    return directory


def exec_check(allowed: Path, registry: RunRegistry | None = None, url: str = "") -> ExecCheck:
    return ExecCheck(
        allow=(allowed,),
        registry=registry or RunRegistry(SystemClock()),
        report_url=url or "http://127.0.0.1:1/v1/check-report",
    )


def test_exec_outside_the_allowed_prefixes_is_refused(allowed: Path) -> None:
    check = exec_check(allowed)
    with pytest.raises(InstanceError) as raised:
        check.parse({"command": ["/bin/sh", "-c", "true"]}, {})
    assert "not allowed" in str(raised.value)
    assert str(allowed) in str(raised.value)  # says where programs may live


def test_exec_with_no_prefix_at_all_is_refused(allowed: Path) -> None:
    script = write_script(allowed / "ok.sh", "#!/bin/sh\nexit 0\n")
    check = ExecCheck(allow=(), registry=RunRegistry(SystemClock()), report_url="http://x/")
    with pytest.raises(InstanceError, match="not allowed"):
        check.parse({"command": [str(script)]}, {})


def test_exec_symlink_out_of_the_prefix_is_refused(allowed: Path) -> None:
    link = allowed / "sh"
    link.symlink_to("/bin/sh")
    with pytest.raises(InstanceError, match="not allowed"):
        exec_check(allowed).parse({"command": [str(link), "-c", "true"]}, {})


def test_exec_sibling_directory_with_the_prefix_as_its_start_is_refused(
    allowed: Path, tmp_path: Path
) -> None:
    sibling = tmp_path / "allowed-not"
    sibling.mkdir()
    script = write_script(sibling / "x.sh", "#!/bin/sh\nexit 0\n")
    with pytest.raises(InstanceError, match="not allowed"):
        exec_check(allowed).parse({"command": [str(script)]}, {})


def test_exec_program_not_on_path_is_named(allowed: Path) -> None:
    with pytest.raises(InstanceError, match="'no-such-program-xyz' not found"):
        exec_check(allowed).parse({"command": ["no-such-program-xyz"]}, {})


@pytest.mark.parametrize(
    ("instance", "problem"),
    [
        ({}, "missing field 'command'"),
        ({"command": ["/bin/true"], "bogus": 1}, "unknown field 'bogus'"),
        ({"command": []}, "command"),
    ],
)
def test_exec_bad_instances_name_the_field(
    allowed: Path, instance: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InstanceError) as raised:
        exec_check(allowed).parse(instance, {})
    assert problem in str(raised.value)


async def test_exec_exit_zero_is_ok_and_sees_its_environment(allowed: Path) -> None:
    script = write_script(
        allowed / "env.sh",
        "#!/bin/sh\n"
        'echo "run=$CLUSTERCHECKS_RUN_ID kh=$KH_RUN_UUID"\n'
        'echo "url=$CLUSTERCHECKS_REPORTING_URL khurl=$KH_REPORTING_URL"\n'
        'echo "deadline=$CLUSTERCHECKS_RUN_DEADLINE khdeadline=$KH_CHECK_RUN_DEADLINE"\n'
        'echo "name=$CLUSTERCHECKS_CHECK_NAME extra=$EXTRA arg=$1"\n',
    )
    url = "http://127.0.0.1:5999/v1/check-report"
    check = exec_check(allowed, url=url)
    ctx = context(name="exec")
    parsed = check.parse({"command": [str(script), "first"], "env": {"EXTRA": "yes"}}, {})
    outcome = await check.run(parsed, ctx)
    assert outcome.errors == []
    deadline = str(int(ctx.deadline_unix_s))
    assert f"run={ctx.run_id} kh={ctx.run_id}" in outcome.output
    assert f"url={url} khurl={url}" in outcome.output
    assert f"deadline={deadline} khdeadline={deadline}" in outcome.output
    assert "name=exec extra=yes arg=first" in outcome.output


async def test_exec_nonzero_exit_fails_with_the_stderr_tail(allowed: Path) -> None:
    lines = "".join(f"echo line{i} >&2\n" for i in range(1, 8))
    script = write_script(allowed / "fail.sh", f"#!/bin/sh\n{lines}exit 3\n")
    check = exec_check(allowed)
    outcome = await check.run(check.parse({"command": [str(script)]}, {}), context())
    assert len(outcome.errors) == 1
    error = outcome.errors[0]
    assert error.startswith("fail.sh exited with 3: ")
    for kept in range(3, 8):
        assert f"line{kept}" in error
    assert "line1" not in error
    assert "line2" not in error


async def test_exec_nonzero_exit_without_stderr_says_so(allowed: Path) -> None:
    script = write_script(allowed / "quiet.sh", "#!/bin/sh\nexit 1\n")
    check = exec_check(allowed)
    outcome = await check.run(check.parse({"command": [str(script)]}, {}), context())
    assert outcome.errors == ["quiet.sh exited with 1: no output on stderr"]


REPORTER = """#!{python}
import json, os, sys, urllib.request
style, verdict, code = sys.argv[1], sys.argv[2], int(sys.argv[3])
if style == "kh":
    url, run, header = os.environ["KH_REPORTING_URL"], os.environ["KH_RUN_UUID"], "kh-run-uuid"
    body = {{"OK": verdict == "ok", "Errors": [] if verdict == "ok" else ["kh says no"]}}
else:
    url, run, header = (
        os.environ["CLUSTERCHECKS_REPORTING_URL"], os.environ["CLUSTERCHECKS_RUN_ID"], "X-Run-Id"
    )
    body = {{"ok": verdict == "ok", "errors": [] if verdict == "ok" else ["reported failure"]}}
request = urllib.request.Request(
    url, data=json.dumps(body).encode(), method="POST",
    headers={{"Content-Type": "application/json", header: run}},
)
with urllib.request.urlopen(request, timeout=5) as reply:
    print("reported", reply.status, run)
sys.exit(code)
"""


@pytest.fixture
async def report_server(
    aiohttp_server: AiohttpServer,
) -> tuple[RunRegistry, TestServer]:
    registry = RunRegistry(SystemClock())
    app = create_app(runs=registry, health=HealthRegistry(), metrics=AgentMetrics())
    server = await aiohttp_server(app)
    return registry, server


@pytest.mark.parametrize(
    "case",
    [
        ("cc", "fail", 0, ["reported failure"]),  # the report wins over exit 0
        ("cc", "ok", 0, []),
        ("kh", "ok", 3, []),  # the report wins over a failing exit code
        ("kh", "fail", 0, ["kh says no"]),
    ],
)
async def test_exec_reports_through_the_report_route(
    allowed: Path,
    report_server: tuple[RunRegistry, TestServer],
    case: tuple[str, str, int, list[str]],
) -> None:
    style, verdict, exit_code, errors = case
    registry, server = report_server
    script = write_script(allowed / "reporter.py", REPORTER.format(python=sys.executable))
    check = exec_check(allowed, registry, str(server.make_url("/v1/check-report")))
    ctx = context(name="exec")
    parsed = check.parse({"command": [str(script), style, verdict, str(exit_code)]}, {})
    outcome = await check.run(parsed, ctx)
    assert outcome.errors == errors
    assert f"reported 200 {ctx.run_id}" in outcome.output
    # The run is over: a late report for it is gone.
    with pytest.raises(Gone):
        registry.report(ctx.run_id, Report(ok=True, errors=[]))


async def test_exec_report_through_the_registry_while_it_runs(
    allowed: Path, tmp_path: Path
) -> None:
    # The program runs until the test lets it end, so the report surely comes first.
    script = write_script(
        allowed / "waits.sh",
        '#!/bin/sh\necho $$ > "$PIDFILE"\nwhile [ ! -e "$GOFILE" ]; do sleep 0.01; done\n',
    )
    pidfile, gofile = tmp_path / "pid", tmp_path / "go"
    registry = RunRegistry(SystemClock())
    check = exec_check(allowed, registry)
    ctx = context()
    parsed = check.parse(
        {"command": [str(script)], "env": {"PIDFILE": str(pidfile), "GOFILE": str(gofile)}}, {}
    )
    running = asyncio.create_task(check.run(parsed, ctx))
    await wait_for_pid(pidfile)
    registry.report(ctx.run_id, Report(ok=False, errors=["seen by a sidecar"]))
    gofile.touch()
    outcome = await running
    assert outcome.errors == ["seen by a sidecar"]  # although the program exited 0


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


async def wait_for_pid(path: Path) -> int:
    await eventually(lambda: read_pid(path) is not None)
    pid = read_pid(path)
    assert pid is not None
    return pid


async def wait_gone(pid: int) -> bool:
    try:
        await eventually(lambda: not alive(pid))
    except AssertionError:
        return False
    return True


async def test_exec_is_killed_with_its_children_at_the_deadline(
    allowed: Path, tmp_path: Path
) -> None:
    script = write_script(
        allowed / "hang.sh",
        '#!/bin/sh\necho $$ > "$PIDFILE"\nsleep 30 &\necho $! > "$CHILDFILE"\nwait\n',
    )
    pidfile, childfile = tmp_path / "pid", tmp_path / "child"
    registry = RunRegistry(SystemClock())
    check = exec_check(allowed, registry)
    ctx = context(timeout_s=0.5)
    parsed = check.parse(
        {"command": [str(script)], "env": {"PIDFILE": str(pidfile), "CHILDFILE": str(childfile)}},
        {},
    )
    clock = FakeClock()

    async def run_until_the_deadline() -> None:
        # The runner's timeout, on a clock the test moves.
        async with clock.timeout(0.5):
            await check.run(parsed, ctx)

    running = asyncio.create_task(run_until_the_deadline())
    pid = await wait_for_pid(pidfile)
    child = await wait_for_pid(childfile)
    assert alive(pid)
    assert alive(child)
    clock.advance(0.5)  # the deadline: the run ends now, not when the program would
    with pytest.raises(TimeoutError):
        await running
    try:
        assert await wait_gone(pid), f"exec program {pid} still alive after its deadline"
        assert await wait_gone(child), f"its child {child} still alive after the deadline"
    finally:
        for leftover in (pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, 9)
    # And the run no longer takes reports.
    with pytest.raises(Gone):
        registry.report(ctx.run_id, Report(ok=True, errors=[]))


async def test_exec_stopped_while_its_program_starts_kills_its_whole_group(
    allowed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped (or timed out) before the program's start has returned: once it has
    started, the program and its children go, not the program alone or nothing."""
    script = write_script(
        allowed / "forks.sh",
        '#!/bin/sh\necho $$ > "$PIDFILE"\nsleep 30 &\necho $! > "$CHILDFILE"\nwait\n',
    )
    pidfile, childfile = tmp_path / "pid", tmp_path / "child"
    registry = RunRegistry(SystemClock())
    check = exec_check(allowed, registry)
    ctx = context()
    parsed = check.parse(
        {"command": [str(script)], "env": {"PIDFILE": str(pidfile), "CHILDFILE": str(childfile)}},
        {},
    )
    started = asyncio.Event()
    release = asyncio.Event()
    spawn = asyncio.create_subprocess_exec

    async def slow_spawn(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await spawn(*args, **kwargs)
        started.set()
        await release.wait()  # the start has not returned yet
        return process

    monkeypatch.setattr(asyncio, "create_subprocess_exec", slow_spawn)
    running = asyncio.create_task(check.run(parsed, ctx))
    await started.wait()
    pid = await wait_for_pid(pidfile)
    child = await wait_for_pid(childfile)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    release.set()
    try:
        assert await wait_gone(pid), f"exec program {pid} still alive after its run was stopped"
        assert await wait_gone(child), f"its child {child} still alive after the run was stopped"
    finally:
        for leftover in (pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, 9)
    with pytest.raises(Gone):
        registry.report(ctx.run_id, Report(ok=True, errors=[]))


async def test_exec_cancelled_run_kills_the_program(allowed: Path, tmp_path: Path) -> None:
    script = write_script(allowed / "hang.sh", '#!/bin/sh\necho $$ > "$PIDFILE"\nexec sleep 30\n')
    pidfile = tmp_path / "pid"
    check = exec_check(allowed)
    parsed = check.parse({"command": [str(script)], "env": {"PIDFILE": str(pidfile)}}, {})
    run: asyncio.Task[Any] = asyncio.create_task(check.run(parsed, context()))
    pid = await wait_for_pid(pidfile)
    assert alive(pid)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    try:
        assert await wait_gone(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


async def test_exec_keeps_only_the_tail_of_a_chatty_program(tmp_path: Path) -> None:
    """A program that prints megabytes cannot fill the agent's memory; the end of its
    stderr still explains the failure."""
    from node_agent.checks.exec import OUTPUT_KEEP_BYTES, ExecCheck
    from node_agent.reports import RunRegistry

    program = tmp_path / "chatty.py"
    program.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "sys.stdout.write('o' * 5_000_000)\n"
        "sys.stderr.write('e' * 5_000_000 + '\\nthe real reason\\n')\n"
        "sys.exit(4)\n"
    )
    program.chmod(0o755)
    check = ExecCheck(allow=(tmp_path,), registry=RunRegistry(SystemClock()), report_url="x")
    instance = check.parse({"command": [str(program)]}, {})
    context = RunContext(
        check_name="exec", digest="d" * 16, run_id="r1", timeout_s=20,
        deadline_unix_s=time.time() + 20,
    )  # fmt: skip
    outcome = await check.run(instance, context)
    assert len(outcome.errors) == 1
    assert "exited with 4" in outcome.errors[0]
    assert "the real reason" in outcome.errors[0]
    assert len(outcome.output) <= OUTPUT_KEEP_BYTES
