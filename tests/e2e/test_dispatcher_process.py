"""End to end: the real ``clusterchecks-dispatcher`` process, driven over plain HTTP.

Settings are short (nodes expire after 2 s, heartbeats every 0.5 s; the config
directory is polled every second) and every timing assertion is a bound with room to
spare: the machine running this may be small and busy.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.e2e.harness import API, DispatcherProcess, Reply, SimAgent, wait_until
from tests.processes import BIN, Proc, dispatcher_argv, free_port, wait_http_ok

pytestmark = pytest.mark.e2e

EXPIRY_S = 2.0
HEARTBEAT_S = 0.5
SHORT = (
    "--node-expiration-timeout", str(EXPIRY_S),
    "--heartbeat-interval", str(HEARTBEAT_S),
)  # fmt: skip
CONFIG_DIR_POLL_S = 1.0


def url(host: str) -> str:
    return f"http://{host}.example/healthz"


def listing(*hosts: str) -> str:
    return "".join(f"- name: http\n  instances: [{{url: '{url(h)}'}}]\n" for h in hosts)


def check_in(host: str) -> dict[str, Any]:
    return {"name": "http", "instances": [{"url": url(host)}]}


# ------------------------------------------------------------------ fixtures


class Start(Protocol):
    def __call__(
        self,
        *extra: str,
        env: Mapping[str, str] | None = None,
        files: Mapping[str, str] | None = None,
    ) -> DispatcherProcess: ...


@pytest.fixture
def start_dispatcher(tmp_path: Path) -> Iterator[Start]:
    """Starts dispatchers (with a config dir and short settings); stops them all after."""
    started: list[Proc] = []

    def start(
        *extra: str,
        env: Mapping[str, str] | None = None,
        files: Mapping[str, str] | None = None,
    ) -> DispatcherProcess:
        port = free_port()
        config_dir = tmp_path / f"conf-{port}"
        config_dir.mkdir()
        for name, text in (files or {}).items():
            (config_dir / name).write_text(text, encoding="utf-8")
        argv = dispatcher_argv(port, *SHORT, "--config-dir", str(config_dir), *extra)
        proc = Proc(
            f"dispatcher-{port}", argv, tmp_path / f"dispatcher-{port}.log", dict(env or {})
        )
        started.append(proc)
        proc.start()
        dispatcher = DispatcherProcess(proc, port, config_dir)
        wait_http_ok(dispatcher.url("/healthz"), timeout_s=20, proc=proc)
        return dispatcher

    yield start
    for proc in started:
        proc.stop(timeout_s=5)


@pytest.fixture
def agents() -> Iterator[list[SimAgent]]:
    """Simulated node agents started by a test; their threads end at teardown."""
    running: list[SimAgent] = []
    yield running
    for agent in running:
        agent.stop()


def run_to_exit(
    tmp_path: Path, args: Sequence[str], env: Mapping[str, str], timeout_s: float = 20
) -> tuple[int, str]:
    """Runs a dispatcher that is expected to exit by itself; returns (code, output)."""
    proc = Proc(
        "dispatcher-start",
        [str(BIN / "clusterchecks-dispatcher"), "--log-format", "json", *args],
        tmp_path / f"start-{time.monotonic_ns()}.log",
        {"CLUSTERCHECKS_HOST": "127.0.0.1", "CLUSTERCHECKS_PORT": str(free_port()), **env},
    )
    proc.start()
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"still running after {timeout_s} s:\n{proc.output()[-3000:]}"
        ) from None
    finally:
        proc.stop(timeout_s=5)
    return code, proc.output()


def healthz_component(
    dispatcher: DispatcherProcess, name: str, status: str
) -> dict[str, Any] | None:
    reply = dispatcher.get("/healthz")
    component = reply.body["components"].get(name) if isinstance(reply.body, dict) else None
    if reply.status == 200 and component and component["status"] == status:
        return {"reply": reply, **component}
    return None


# ------------------------------------------------------------------- startup


def test_process_starts_healthy_and_ready(start_dispatcher: Start) -> None:
    d = start_dispatcher()
    config_dir, _ = wait_until(
        lambda: healthz_component(d, "config_sources", "healthy"),
        timeout_s=10,
        what="config_dir healthy after the first scan",
        context=d.tail,
    )
    health = d.get("/healthz")
    assert health.status == 200, d.tail()
    assert health.body["status"] == "healthy", health.body
    for name in ("api", "config_sources", "dispatch_loop", "election", "store"):
        assert health.body["components"][name]["status"] == "healthy", health.body
    assert "0 file(s)" in config_dir["message"]
    assert re.fullmatch(r"[A-Za-z0-9._:-]{8,128}", health.headers["X-Request-Id"]), health.headers
    assert health.headers["X-Clusterchecks-Leader"] == f"dispatcher-{d.port}"

    ready = d.get("/readyz")
    assert ready.headers["X-Request-Id"] != health.headers["X-Request-Id"]
    assert ready.status == 200, f"{ready}\n{d.tail()}"
    assert ready.body["status"] == "healthy"


# ---------------------------------------------------------------- config dir


def test_config_dir_checks_follow_edits_and_survive_a_broken_edit(
    start_dispatcher: Start,
) -> None:
    d = start_dispatcher(files={"checks.yaml": listing("a", "b")})
    checks_file = d.config_dir / "checks.yaml"

    def urls_are(*hosts: str) -> Any:
        return d.check_urls() == {url(h) for h in hosts} or None

    wait_until(lambda: urls_are("a", "b"), timeout_s=5, what="file checks listed", context=d.tail)
    before = {c["instances"][0]["url"]: c for c in d.checks()}
    for check in before.values():
        assert check["sources"] == ["file:checks.yaml"], check
        assert re.fullmatch(r"[0-9a-f]{16,64}", check["digest"]), check
        assert check["node"] is None  # no node agent yet

    # Edit while running: b goes, c and d come, a stays the same check.
    checks_file.write_text(listing("a", "c", "d"), encoding="utf-8")
    _, took = wait_until(
        lambda: urls_are("a", "c", "d"), timeout_s=8, what="edit applied", context=d.tail
    )
    assert took < CONFIG_DIR_POLL_S + 4, f"edit took {took:.1f} s to show\n{d.tail()}"
    after = {c["instances"][0]["url"]: c for c in d.checks()}
    assert after[url("a")]["digest"] == before[url("a")]["digest"]

    # A broken edit: reported in /healthz, the checks stay as they were.
    checks_file.write_text(listing("e") + "  bogus_field: 1\n", encoding="utf-8")
    degraded, _ = wait_until(
        lambda: healthz_component(d, "config_sources", "degraded"),
        timeout_s=8,
        what="config_dir degraded",
        context=d.tail,
    )
    assert "checks.yaml" in degraded["message"], degraded
    assert "bogus_field" in degraded["message"], degraded
    assert degraded["metadata"]["broken_files"] == ["checks.yaml"], degraded
    assert degraded["reply"].body["status"] == "degraded"
    assert d.check_urls() == {url("a"), url("c"), url("d")}, d.tail()
    assert d.get("/readyz").status == 200, "a broken optional source must not unready"
    assert any(
        r["event"] == "config_file_invalid" and r["file"] == "checks.yaml" for r in d.log_records()
    ), d.tail()

    # Fixed: healthy again, with the new content.
    checks_file.write_text(listing("e"), encoding="utf-8")
    wait_until(lambda: urls_are("e"), timeout_s=8, what="fixed file applied", context=d.tail)
    wait_until(
        lambda: healthz_component(d, "config_sources", "healthy"),
        timeout_s=5,
        what="config_dir healthy again",
        context=d.tail,
    )

    # Deleted: its checks go.
    checks_file.unlink()
    wait_until(lambda: d.checks() == [] or None, timeout_s=8, what="checks gone", context=d.tail)


# ----------------------------------------------------------- agents, expiry


def test_two_agents_share_checks_and_take_over_from_a_silent_one(
    start_dispatcher: Start, agents: list[SimAgent]
) -> None:
    d = start_dispatcher()
    n1 = SimAgent(d.base, "n1").start()
    agents.append(n1)
    n2 = SimAgent(d.base, "n2").start()
    agents.append(n2)

    def node_names() -> set[str]:
        return {n["name"] for n in d.get(API).body["nodes"]}

    wait_until(
        lambda: node_names() == {"n1", "n2"} or None,
        timeout_s=5,
        what="both agents registered",
        context=d.tail,
    )

    (d.config_dir / "checks.yaml").write_text(listing("a", "b", "c", "d"), encoding="utf-8")
    wait_until(
        lambda: len(n1.held()) == 2 and len(n2.held()) == 2,
        timeout_s=8,
        what="each agent fetched two checks",
        context=lambda: (
            f"n1={n1.held()} n2={n2.held()} errors={n1.errors + n2.errors}\n" + d.tail()
        ),
    )
    every = {c["digest"] for c in d.checks()}
    assert len(every) == 4
    assert n1.held() | n2.held() == every
    assert not n1.held() & n2.held()
    on_n1, on_n2 = set(n1.held()), set(n2.held())
    placed = {c["digest"]: c["node"] for c in d.checks()}
    assert placed == {**dict.fromkeys(on_n1, "n1"), **dict.fromkeys(on_n2, "n2")}

    # n2 goes silent: within expiry + 2 s its checks are on n1.
    n2.stop()
    silent_since = time.monotonic()

    def all_on_n1() -> bool:
        return all(c["node"] == "n1" for c in d.checks())

    _, took = wait_until(
        all_on_n1, timeout_s=EXPIRY_S + 6, what="n2's checks moved to n1", context=d.tail
    )
    assert took <= EXPIRY_S + 2, f"took {took:.1f} s (expiry {EXPIRY_S} s)\n{d.tail()}"
    assert took >= EXPIRY_S - HEARTBEAT_S - 0.6, f"n2 expired early, after {took:.1f} s"
    wait_until(
        lambda: n1.held() == every,
        timeout_s=3,
        what="n1 fetched all four checks",
        context=lambda: f"n1={n1.held()}\n{d.tail()}",
    )
    assert time.monotonic() - silent_since < EXPIRY_S + 5
    assert node_names() == {"n1"}
    gone = n2.configs()
    assert gone.status == 404, gone
    assert gone.error_code() == "unknown_node"
    assert n1.errors == [], n1.errors

    # One dispatch_decision line per placement: once for n1's checks, twice for n2's.
    def placements() -> dict[str, list[tuple[str, Any]]]:
        found: dict[str, list[tuple[str, Any]]] = {digest: [] for digest in every}
        for record in d.log_records():
            if record["event"] == "dispatch_decision" and record["node"] is not None:
                found[record["digest"]].append((record["node"], record["previous"]))
        return found

    expected = {
        **{digest: [("n1", None)] for digest in on_n1},
        **{digest: [("n2", None), ("n1", "n2")] for digest in on_n2},
    }
    wait_until(
        lambda: placements() == expected or None,
        timeout_s=3,
        what="a dispatch_decision line per placement",
        context=lambda: f"{placements()}\n{d.tail()}",
    )


def test_long_poll_waits_answers_quickly_on_change_and_ends_when_the_node_expires(
    start_dispatcher: Start, agents: list[SimAgent]
) -> None:
    d = start_dispatcher()
    n1 = SimAgent(d.base, "n1").start()
    agents.append(n1)
    wait_until(lambda: n1.heartbeats > 0, timeout_s=5, what="n1 registered", context=d.tail)
    first = n1.configs()
    assert first.status == 200, first
    since = first.body["last_change"]

    def poll(agent: SimAgent, query: str) -> tuple[Reply, float]:
        started = time.monotonic()
        reply = agent.configs(query, timeout_s=45)
        return reply, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=2) as pool:
        # n2 registers once and then goes silent, with a long poll pending: the poll
        # ends with 404 unknown_node when n2 expires (checked below).
        n2 = SimAgent(d.base, "n2")
        n2.sync_once()
        n2_since = n2.configs().body["last_change"]
        n2_poll = pool.submit(poll, n2, f"?since={n2_since}&wait_s=30")

        # Nothing changes for n1: it waits for wait_s, then answers with the same set.
        unchanged, waited = poll(n1, f"?since={since}&wait_s=1")
        assert unchanged.status == 200, unchanged
        assert unchanged.body["last_change"] == since
        assert unchanged.body["configs"] == []
        assert 0.8 <= waited <= 4, f"a 1 s long poll took {waited:.2f} s"

        # A file appears in the config dir: the pending poll answers within a poll period.
        pending = pool.submit(poll, n1, f"?since={since}&wait_s=15")
        time.sleep(0.3)
        (d.config_dir / "checks.yaml").write_text(listing("a"), encoding="utf-8")
        changed, took = pending.result(timeout=40)
        assert changed.status == 200, f"{changed}\n{d.tail()}"
        assert took < CONFIG_DIR_POLL_S + 4, f"long poll answered after {took:.1f} s\n{d.tail()}"
        assert changed.body["last_change"] != since
        assert [c["instances"][0]["url"] for c in changed.body["configs"]] == [url("a")]

        # n2 has expired by now (before the push below, which would otherwise go to it).
        expired, took = n2_poll.result(timeout=40)
        assert expired.status == 404, f"{expired}\n{d.tail()}"
        assert expired.error_code() == "unknown_node"
        assert took <= EXPIRY_S + 2, f"the poll of an expired node ended after {took:.1f} s"

        # A source pushes a check over the API: the poll answers at once.
        since = changed.body["last_change"]
        pending = pool.submit(poll, n1, f"?since={since}&wait_s=15")
        time.sleep(0.3)
        pushed = d.call("PUT", API + "/sources/e2e", {"configs": [check_in("b")]})
        assert pushed.status == 200, pushed
        changed, took = pending.result(timeout=40)
        assert changed.status == 200, changed
        assert took < 0.3 + 2.5, f"long poll answered {took:.1f} s after a push\n{d.tail()}"
        assert {c["instances"][0]["url"] for c in changed.body["configs"]} == {
            url("a"),
            url("b"),
        }


# ----------------------------------------------------------------- shutdown


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_stops_the_process_with_exit_code_0(
    start_dispatcher: Start, agents: list[SimAgent]
) -> None:
    d = start_dispatcher(files={"checks.yaml": listing("a")})
    n1 = SimAgent(d.base, "n1").start()
    agents.append(n1)
    wait_until(lambda: len(n1.held()) == 1, timeout_s=5, what="n1 got its check", context=d.tail)

    started = time.monotonic()
    d.proc.signal(signal.SIGTERM)
    code = d.proc.wait(timeout_s=10)
    took = time.monotonic() - started
    assert code == 0, d.tail()
    assert took < 5, f"SIGTERM took {took:.1f} s\n{d.tail()}"
    assert not port_open(d.port)
    assert d.log_records()[-1]["event"] == "dispatcher_stopped", d.tail()
    assert "Traceback" not in d.proc.output()


def test_sigterm_answers_pending_long_polls_and_exits_promptly(start_dispatcher: Start) -> None:
    """The service wakes long polls before cleaning up the server, so that a pending
    poll gets its (unchanged) answer and shutdown does not wait for it."""
    d = start_dispatcher()
    n1 = SimAgent(d.base, "n1")
    n1.sync_once()
    n1.status(-1)
    since = n1.configs().body["last_change"]

    def poll() -> str | Reply:
        try:
            return n1.configs(f"?since={since}&wait_s=30", timeout_s=45)
        except Exception as exc:  # the connection may be cut: report it
            return f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(poll)
        time.sleep(0.5)
        started = time.monotonic()
        d.proc.signal(signal.SIGTERM)
        try:
            code: int | None = d.proc.wait(timeout_s=5)
        except subprocess.TimeoutExpired:
            code = None
            d.proc.stop(timeout_s=0.1)  # do not wait out the bug: kill it
        took = time.monotonic() - started
        outcome = pending.result(timeout=20)

    assert code == 0, (
        f"exit code {code} {took:.1f} s after SIGTERM with a long poll pending; "
        f"the poll got {outcome!r}\n{d.tail()}"
    )
    assert isinstance(outcome, Reply), outcome
    assert outcome.status == 200, outcome
    assert outcome.body["last_change"] == since


# ----------------------------------------------------------------------- logs


def test_log_lines_are_json_with_request_ids(start_dispatcher: Start) -> None:
    d = start_dispatcher()
    status = d.call(
        "POST", API + "/status/n1", {"last_change": 0}, headers={"X-Request-Id": "e2e-status-1"}
    )
    assert status.status == 200, status
    assert status.headers["X-Request-Id"] == "e2e-status-1"
    pushed = d.call(
        "PUT",
        API + "/sources/e2e",
        {"configs": [check_in("a")]},
        headers={"X-Request-Id": "e2e-put-1"},
    )
    assert pushed.status == 200, pushed
    [digest] = pushed.body["digests"]
    health = d.get("/healthz")
    generated = health.headers["X-Request-Id"]
    missing = d.get("/no/such/route")
    assert missing.status == 404
    unknown = d.call("GET", API + "/configs/nobody", headers={"X-Request-Id": "e2e-configs-1"})
    assert unknown.status == 404, unknown

    d.proc.stop(timeout_s=10)
    lines = d.log_lines()
    records = d.log_records()
    not_json = [line for line in lines if not line.startswith("{")]
    assert not_json == [], f"non-JSON log lines: {not_json[:5]}"
    assert len(records) == len(lines), d.tail()
    for record in records:
        assert {"event", "level", "timestamp"} <= record.keys(), record

    requests = [r for r in records if r["event"] == "request"]
    assert requests, d.tail()
    for record in requests:
        assert record.get("request_id"), record
    by_id = {r["request_id"]: r for r in requests}
    # An agent's routine request that succeeds is logged at debug (not at the default
    # info level); one that fails, at info.
    assert "e2e-status-1" not in by_id
    assert by_id["e2e-configs-1"]["path"] == API + "/configs/nobody"
    assert by_id["e2e-configs-1"]["status"] == 404
    assert by_id["e2e-put-1"]["status"] == 200
    assert by_id[generated]["path"] == "/healthz"
    assert any(r["status"] == 404 for r in requests)

    decisions = [r for r in records if r["event"] == "dispatch_decision" and r["digest"] == digest]
    assert len(decisions) == 1, decisions
    [decision] = decisions
    assert decision["node"] == "n1"
    assert decision["check"] == "http"
    assert decision["reason"]
    assert decision["request_id"] == "e2e-put-1", "a line logged while serving lacks its id"


# --------------------------------------------------------- bad flags and env

BAD_START = [
    pytest.param(["--election", "bogus"], {}, ["--election", "bogus", "standalone"],
                 id="election_flag"),
    pytest.param([], {"CLUSTERCHECKS_PORT": "99999"},
                 ["--port", "CLUSTERCHECKS_PORT", "99999", "65535"], id="port_env"),
    pytest.param(["--heartbeat-interval", "5", "--node-expiration-timeout", "2"], {},
                 ["--heartbeat-interval", "--node-expiration-timeout"],
                 id="heartbeat_not_below_expiry"),
    pytest.param(["--config-dir", "{tmp}/missing"], {}, ["--config-dir", "not a directory"],
                 id="config_dir_missing"),
    pytest.param(["--node-token", "n0de"], {}, ["--admin-token", "required"],
                 id="token_without_admin_token"),
    pytest.param(["--election", "redis", "--store", "sqlite"], {},
                 ["--store sqlite", "--election redis", "not shared", "--store redis"],
                 id="sqlite_with_an_elected_leader"),
    pytest.param(["--election", "kubernetes"], {"CLUSTERCHECKS_STORE": "sqlite"},
                 ["--store sqlite", "--election kubernetes"], id="sqlite_env_elected"),
    pytest.param(["--store", "sqlite", "--data-dir", "{tmp}/file"], {},
                 ["{tmp}/file"], id="data_dir_is_a_file"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "env", "words"), BAD_START)
def test_bad_flag_or_environment_value_stops_the_process_with_a_clear_message(
    tmp_path: Path, args: list[str], env: dict[str, str], words: list[str]
) -> None:
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    words = [word.replace("{tmp}", str(tmp_path)) for word in words]
    (tmp_path / "file").write_text("")  # for the data dir that is a file
    code, output = run_to_exit(tmp_path, args, env)
    assert code > 0, f"exit code {code}:\n{output}"
    assert "Traceback" not in output, output
    assert "Error" in output, output
    for word in words:
        assert word in output, output
    assert len(output.strip().splitlines()) <= 6, output


def test_refuses_to_serve_on_all_interfaces_without_tokens(tmp_path: Path) -> None:
    code, output = run_to_exit(tmp_path, ["--host", "0.0.0.0"], {})
    assert code > 0, output
    assert "Traceback" not in output, output
    for word in ("0.0.0.0", "without authentication", "--admin-token", "loopback"):
        assert word in output, output


def test_node_routes_need_the_admin_token_when_no_node_token_is_set(
    start_dispatcher: Start,
) -> None:
    # On every interface: allowed once tokens are set (the refusal is about auth).
    d = start_dispatcher("--host", "0.0.0.0", "--admin-token", "adm1n", "--source-token", "s0urce")
    status = API + "/status/n1"
    beat = {"last_change": 0}

    anonymous = d.call("POST", status, beat)
    assert anonymous.status == 401, anonymous
    assert anonymous.error_code() == "unauthorized"
    wrong = d.call("POST", status, beat, token="n0de")
    assert wrong.status == 401, wrong
    source = d.call("POST", status, beat, token="s0urce")
    assert source.status == 403, source
    assert source.error_code() == "forbidden"
    admin = d.call("POST", status, beat, token="adm1n")
    assert admin.status == 200, f"{admin}\n{d.tail()}"
    assert d.get(API + "/configs/n1").status == 401
    assert d.get(API + "/configs/n1", token="adm1n").status == 200

    pushed = d.call("PUT", API + "/sources/e2e", {"configs": [check_in("a")]}, token="s0urce")
    assert pushed.status == 200, pushed
    assert d.get(API + "/checks", token="s0urce").status == 403
    assert len(d.checks(token="adm1n")) == 1
    assert d.get("/healthz").status == 200
    assert d.get("/readyz").status == 200


def test_config_dir_file_loaded_at_start_reaches_an_agent(
    start_dispatcher: Start, agents: list[SimAgent]
) -> None:
    text = textwrap.dedent(
        """\
        configs:
          - name: tcp
            instances: [{host: db.default.svc, port: 5432}]
            interval_s: 30
            timeout_s: 5
            node_selector: {zone: eu-1a}
        """
    )
    d = start_dispatcher(files={"db.yaml": text})
    wrong_zone = SimAgent(d.base, "n0").start()
    agents.append(wrong_zone)
    wait_until(lambda: wrong_zone.heartbeats > 0, timeout_s=5, what="n0 up", context=d.tail)
    reply = wrong_zone.status(labels={"zone": "us-2b"})
    assert reply.status == 200
    right_zone = SimAgent(d.base, "n1")
    assert right_zone.status(labels={"zone": "eu-1a"}).status == 200
    right_zone.start()
    agents.append(right_zone)
    wait_until(
        lambda: len(right_zone.held()) == 1,
        timeout_s=5,
        what="the selected node got the check",
        context=d.tail,
    )
    [config] = right_zone.configs().body["configs"]
    assert config["name"] == "tcp"
    assert config["instances"] == [{"host": "db.default.svc", "port": 5432}]
    assert (config["interval_s"], config["timeout_s"]) == (30.0, 5.0)
    assert config["node_selector"] == {"zone": "eu-1a"}
    assert config["sources"] == ["file:db.yaml"]
    assert config["node"] == "n1"
    assert wrong_zone.held() == frozenset()
