"""End to end, real processes: a dispatcher (short timeouts), three node agents and a
local HTTP target that records every hit.

The cluster is started once for the module. The tests that take agents away (kill -9,
SIGTERM) come last, in that order; each picks among the agents still alive.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.e2e.harness import Target
from tests.processes import Proc, agent_argv, dispatcher_argv, free_port, wait_http_ok

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

EXPIRY_S = 2.0
HEARTBEAT_S = 0.5
INTERVAL_S = 1.0
EXEC_INTERVAL_S = 2.0
WINDOW_S = 6.0
SOURCE = "e2e"
OK_PATHS = [f"/svc{i}" for i in range(6)]
FAIL_PATH = "/fail"
HTTP_PATHS = [*OK_PATHS, FAIL_PATH]
AGENT_NAMES = ("agent-a", "agent-b", "agent-c")
KH_ERROR = "kh: disk /data is 97% full"
STDERR_LINE = "fatal: widget service unreachable"

CHECK_OK_DIGEST = re.compile(r'^clusterchecks_agent_check_ok\{[^}]*digest="([0-9a-f]+)"', re.M)

T = TypeVar("T")


PROGRAMS: dict[str, str] = {
    # Checks its environment, sees a contradictory report refused (400), reports ok through
    # the CLUSTERCHECKS_ names, then exits 1: the report decides, not the exit code.
    "allowed/report_ok.py": """
import json, os, sys, time, urllib.error, urllib.request
env = os.environ
problems = []
run_id = env["CLUSTERCHECKS_RUN_ID"]
if env.get("KH_RUN_UUID") != run_id:
    problems.append("KH_RUN_UUID differs from CLUSTERCHECKS_RUN_ID")
if env.get("KH_REPORTING_URL") != env["CLUSTERCHECKS_REPORTING_URL"]:
    problems.append("KH_REPORTING_URL differs from CLUSTERCHECKS_REPORTING_URL")
if env.get("CLUSTERCHECKS_CHECK_NAME") != "exec":
    problems.append("CLUSTERCHECKS_CHECK_NAME is %r" % env.get("CLUSTERCHECKS_CHECK_NAME"))
if env.get("KH_CHECK_RUN_DEADLINE") != env["CLUSTERCHECKS_RUN_DEADLINE"]:
    problems.append("KH_CHECK_RUN_DEADLINE differs from CLUSTERCHECKS_RUN_DEADLINE")
deadline = float(env["CLUSTERCHECKS_RUN_DEADLINE"])
if not time.time() - 1.5 < deadline < time.time() + 10:
    problems.append("deadline %s is not start + timeout" % deadline)
if env.get("E2E_EXTRA") != "from-instance-env":
    problems.append("the instance env did not reach the program")
def report(body):
    request = urllib.request.Request(
        env["CLUSTERCHECKS_REPORTING_URL"], data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "X-Run-Id": run_id},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
status = report({"ok": True, "errors": ["contradiction"]})
if status != 400:
    problems.append("a contradictory report got %s, not 400" % status)
status = report({"ok": not problems, "errors": problems})
if status != 200:
    sys.exit("the report got %s" % status)
sys.exit(1)
""",
    # Kuberhealthy style: KH_ names, "OK"/"Errors" keys, kh-run-uuid header; exits 0.
    "allowed/kh_report.py": f"""
import json, os, urllib.request
body = json.dumps({{"OK": False, "Errors": [{KH_ERROR!r}]}}).encode()
request = urllib.request.Request(
    os.environ["KH_REPORTING_URL"], data=body, method="POST",
    headers={{"Content-Type": "application/json", "kh-run-uuid": os.environ["KH_RUN_UUID"]}},
)
with urllib.request.urlopen(request, timeout=5) as response:
    assert response.status == 200, response.status
""",
    # No report: judged by the exit code.
    "allowed/exit3.py": f"""
import sys
print("starting up", file=sys.stderr)
print({STDERR_LINE!r}, file=sys.stderr)
sys.exit(3)
""",
    "allowed/exit0.py": """
print("all good")
""",
    # Outside every --allow-exec prefix; leaves a mark if it ever runs.
    "forbidden/sneaky.py": """
import pathlib, sys
pathlib.Path(sys.argv[0]).with_name("ran").write_text("it ran")
""",
}


def write_programs(root: Path) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for relative, body in PROGRAMS.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!{sys.executable}\n{body.lstrip()}", encoding="utf-8")
        path.chmod(0o755)
        paths[Path(relative).stem] = path
    return paths


# --------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    root: Path
    target: Target
    dispatcher: Proc
    dispatcher_url: str
    agents: dict[str, Proc] = field(default_factory=dict)
    agent_ports: dict[str, int] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    """key (an HTTP path, or the name of an exec/bad check) -> digest"""
    programs: dict[str, Path] = field(default_factory=dict)

    def request(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.dispatcher_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/api/clusterchecks")
        return result

    def results(self) -> dict[str, Any]:
        checks: dict[str, Any] = self.request("GET", "/v1/api/clusterchecks/results")["checks"]
        return checks

    def placement(self) -> dict[str, list[str]]:
        """digest -> the nodes whose configs hold it (exactly one when all is well)."""
        where: dict[str, list[str]] = {}
        for node in self.state()["nodes"]:
            for digest in node["configs"]:
                where.setdefault(digest, []).append(node["name"])
        return where

    def alive(self) -> list[str]:
        return [name for name, proc in self.agents.items() if proc.alive()]

    def key_of(self, digest: str) -> str:
        return next(k for k, d in self.digests.items() if d == digest)

    def paths_on(self, node: str) -> list[str]:
        placement = self.placement()
        return [p for p in HTTP_PATHS if placement.get(self.digests[p]) == [node]]

    def metrics(self, node: str) -> str:
        url = f"http://127.0.0.1:{self.agent_ports[node]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    def logs(self, chars: int = 2500) -> str:
        """The tail of every process's log, without the per-request lines."""
        parts = []
        for proc in (self.dispatcher, *self.agents.values()):
            lines = [line for line in proc.output().splitlines() if '"event":"request"' not in line]
            parts.append(f"--- {proc.name} ---\n" + "\n".join(lines)[-chars:])
        return "\n".join(parts)


def wait_for(what: str, probe: Callable[[], T | None], *, timeout_s: float, cluster: Cluster) -> T:
    """Polls until probe returns something truthy; fails with the process logs."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (urllib.error.URLError, OSError) as exc:
            last_error, value = repr(exc), None
        if value:
            return value
        time.sleep(0.05)
    message = f"timed out after {timeout_s}s waiting for {what} {last_error}"
    raise AssertionError(f"{message}\n{cluster.logs()}")


def configs(target: Target, programs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    def http(path: str) -> dict[str, Any]:
        return {"name": "http", "instances": [{"url": target.url(path)}], "interval_s": 1}

    def exec_(program: str, **instance: Any) -> dict[str, Any]:
        return {
            "name": "exec",
            "instances": [{"command": [str(programs[program])], **instance}],
            "interval_s": EXEC_INTERVAL_S,
            "timeout_s": EXEC_INTERVAL_S,
        }

    return {
        **{path: http(path) for path in HTTP_PATHS},
        "report_ok": exec_("report_ok", env={"E2E_EXTRA": "from-instance-env"}),
        "kh_report": exec_("kh_report"),
        "exit3": exec_("exit3"),
        "exit0": exec_("exit0"),
        "sneaky": exec_("sneaky"),
        "nosuch": {"name": "nosuch", "instances": [{"anything": 1}], "interval_s": 1},
        "bad_http": {"name": "http", "instances": [{"uri": target.url("/x")}], "interval_s": 1},
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("agents")
    port = free_port()
    target = Target().start()
    target.failing.add(FAIL_PATH)
    dispatcher = Proc(
        "dispatcher",
        dispatcher_argv(
            port,
            "--node-expiration-timeout", str(EXPIRY_S),
            "--heartbeat-interval", str(HEARTBEAT_S),
        ),
        root / "dispatcher.log",
    )  # fmt: skip
    c = Cluster(root, target, dispatcher, f"http://127.0.0.1:{port}")
    try:
        dispatcher.start()
        wait_http_ok(f"{c.dispatcher_url}/healthz", timeout_s=30, proc=dispatcher)
        c.programs = write_programs(root)
        for name in AGENT_NAMES:
            agent_port = free_port()
            c.agent_ports[name] = agent_port
            argv = agent_argv(
                agent_port, name, c.dispatcher_url,
                "--heartbeat-interval", str(HEARTBEAT_S),
                "--allow-exec", str(root / "allowed"),
                "--capacity", "8",
            )  # fmt: skip
            c.agents[name] = Proc(name, argv, root / f"{name}.log").start()
        for name, proc in c.agents.items():
            wait_http_ok(f"http://127.0.0.1:{c.agent_ports[name]}/healthz", timeout_s=30, proc=proc)
        # Every agent registers before the checks arrive, so they spread over all three.
        wait_for(
            "three registered nodes",
            lambda: {n["name"] for n in c.state()["nodes"]} == set(AGENT_NAMES),
            timeout_s=15,
            cluster=c,
        )
        wanted = configs(target, c.programs)
        body = {"configs": list(wanted.values())}
        reply = c.request("PUT", f"/v1/api/clusterchecks/sources/{SOURCE}", body)
        c.digests = dict(zip(wanted, reply["digests"], strict=True))
        put_at = time.time()

        def settled() -> bool:
            placement = c.placement()
            results = c.results()
            return (
                all(len(placement.get(d, [])) == 1 for d in c.digests.values())
                and all(d in results for d in c.digests.values())
                and all(target.first_after(p, put_at) is not None for p in HTTP_PATHS)
            )

        wait_for("every check placed, run and reported", settled, timeout_s=20, cluster=c)
        yield c
    finally:
        for proc in c.agents.values():
            proc.stop(timeout_s=10)
        dispatcher.stop(timeout_s=10)
        target.stop()


def log_events(proc: Proc, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of one process with that event, with "t" the unix time."""
    found = []
    for line in proc.output().splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            stamp = str(entry["timestamp"]).replace("Z", "+00:00")
            entry["t"] = datetime.fromisoformat(stamp).timestamp()
            found.append(entry)
    return found


# ----------------------------------------------------------------------------- tests


def test_each_check_runs_on_exactly_one_agent(cluster: Cluster) -> None:
    c = cluster
    placement = c.placement()
    doubled = {c.key_of(d): nodes for d, nodes in placement.items() if len(nodes) != 1}
    assert not doubled, f"checks not on exactly one node: {doubled}"
    assert c.state()["dangling"] == []

    start = time.time()
    time.sleep(WINDOW_S)
    end = time.time()
    expected = (end - start) / INTERVAL_S
    low, high = expected * 0.6, expected * 1.4
    counts = {p: c.target.count(p, start, end) for p in HTTP_PATHS}
    wrong = {p: n for p, n in counts.items() if not low <= n <= high}
    assert not wrong, (
        f"hits per path over {end - start:.1f}s should be {low:.1f}..{high:.1f} "
        f"(one agent at {INTERVAL_S}s), got {wrong}; all: {counts}\n{c.logs()}"
    )

    # The agents' own view: each check reported by the metrics of exactly one agent.
    seen: dict[str, list[str]] = {}
    for name in c.alive():
        for digest in set(CHECK_OK_DIGEST.findall(c.metrics(name))):
            seen.setdefault(digest, []).append(name)
    not_one = {c.key_of(d): seen.get(d) for d in c.digests.values() if len(seen.get(d, [])) != 1}
    assert not not_one, f"checks not run by exactly one agent (metrics): {not_one}\n{c.logs()}"
    for digest, nodes in seen.items():
        where = placement.get(digest)
        assert nodes == where, f"{c.key_of(digest)} runs on {nodes}, placed on {where}"


def _result_if(c: Cluster, digest: str, *, ok: bool) -> dict[str, Any] | None:
    result: dict[str, Any] | None = c.results().get(digest)
    return result if result is not None and result["ok"] is ok else None


def test_results_reach_the_status_page(cluster: Cluster) -> None:
    c = cluster
    page = c.request("GET", "/v1/api/clusterchecks/results")
    placement = c.placement()
    now = time.time()
    for path in OK_PATHS:
        result = page["checks"].get(c.digests[path])
        assert result is not None, f"no result for {path}: {page}\n{c.logs()}"
        assert result["ok"] is True, f"{path}: {result}\n{c.logs()}"
        assert result["errors"] == [], f"{path}: {result}"
        assert result["name"] == "http", f"{path}: {result}"
        assert [result["node"]] == placement[c.digests[path]], f"{path}: {result} {placement}"
        assert now - result["last_run_at"] < 3 * INTERVAL_S + 2, f"{path} stale: {result}"
        assert result["success_count"] >= 1, f"{path}: {result}"
    failing = page["checks"][c.digests[FAIL_PATH]]
    assert failing["ok"] is False, f"{FAIL_PATH}: {failing}\n{c.logs()}"
    assert any("503" in e and FAIL_PATH in e for e in failing["errors"]), failing
    assert failing["consecutive_failures"] >= 1, failing
    assert failing["success_count"] == 0, failing
    assert page["ok"] is False, page
    assert any("503" in e for e in page["errors"]), page["errors"]

    # Results keep arriving: a target that starts failing shows up, then recovers.
    flipped = OK_PATHS[-1]
    digest = c.digests[flipped]
    c.target.failing.add(flipped)
    try:
        down = wait_for(
            f"{flipped} to show ok: false",
            lambda: _result_if(c, digest, ok=False),
            timeout_s=3 * INTERVAL_S + 3,
            cluster=c,
        )
    finally:
        c.target.failing.discard(flipped)
    assert any("503" in e and flipped in e for e in down["errors"]), down
    up = wait_for(
        f"{flipped} to show ok: true again",
        lambda: _result_if(c, digest, ok=True),
        timeout_s=3 * INTERVAL_S + 3,
        cluster=c,
    )
    assert up["errors"] == [], up
    assert up["failure_count"] >= 1, up


def _exec_results(c: Cluster, keys: list[str], runs: int) -> dict[str, dict[str, Any]]:
    """Waits until each of those checks has at least ``runs`` results."""

    def enough() -> dict[str, dict[str, Any]] | None:
        results = c.results()
        chosen = {k: results.get(c.digests[k]) for k in keys}
        done = all(
            r is not None and r["success_count"] + r["failure_count"] >= runs
            for r in chosen.values()
        )
        return {k: r for k, r in chosen.items() if r is not None} if done else None

    return wait_for(f"{runs} results of {keys}", enough, timeout_s=15, cluster=c)


def test_exec_checks(cluster: Cluster) -> None:
    c = cluster
    results = _exec_results(c, ["report_ok", "kh_report", "exit3", "exit0", "sneaky"], runs=2)
    ok = results["report_ok"]
    assert ok["ok"] is True, f"report through CLUSTERCHECKS_REPORTING_URL: {ok}\n{c.logs()}"
    assert ok["failure_count"] == 0, ok

    kh = results["kh_report"]
    assert kh["ok"] is False, f"KH report with OK false: {kh}\n{c.logs()}"
    assert kh["errors"] == [KH_ERROR], kh

    exit3 = results["exit3"]
    assert exit3["ok"] is False, f"exit 3: {exit3}\n{c.logs()}"
    assert len(exit3["errors"]) == 1, exit3
    assert STDERR_LINE in exit3["errors"][0], exit3
    assert re.search(r"\b3\b", exit3["errors"][0].replace(STDERR_LINE, "")), exit3

    exit0 = results["exit0"]
    assert exit0["ok"] is True, f"exit 0: {exit0}\n{c.logs()}"
    assert exit0["failure_count"] == 0, exit0

    # A report for a run that is not current is gone.
    node = c.alive()[0]
    stale = urllib.request.Request(
        f"http://127.0.0.1:{c.agent_ports[node]}/v1/check-report",
        data=b'{"ok": true, "errors": []}',
        method="POST",
        headers={"Content-Type": "application/json", "X-Run-Id": "0" * 32},
    )
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(stale, timeout=5).close()
    assert gone.value.code == 410, gone.value
    gone.value.close()

    sneaky = results["sneaky"]
    assert sneaky["ok"] is False, f"program outside --allow-exec: {sneaky}\n{c.logs()}"
    assert any("not allowed" in e for e in sneaky["errors"]), sneaky
    assert not (c.programs["sneaky"].parent / "ran").exists(), "the refused program ran"


def test_unknown_check_fails_and_the_rest_keeps_running(cluster: Cluster) -> None:
    c = cluster
    results = _exec_results(c, ["nosuch", "bad_http"], runs=2)
    nosuch = results["nosuch"]
    assert nosuch["ok"] is False, nosuch
    assert any("unknown check" in e and "nosuch" in e for e in nosuch["errors"]), nosuch
    bad = results["bad_http"]
    assert bad["ok"] is False, bad
    assert any("uri" in e and "url" in e for e in bad["errors"]), bad

    # The agents holding them still run everything else.
    placement = c.placement()
    now = time.time()
    for key in ("nosuch", "bad_http"):
        node = placement[c.digests[key]][0]
        assert c.agents[node].alive(), f"{node} died\n{c.logs()}"
        others = [d for d, nodes in placement.items() if nodes == [node] and d != c.digests[key]]
        assert others, f"{node} holds nothing but {key}: {placement}"
        page = c.results()
        for digest in others:
            result = page.get(digest)
            assert result is not None, f"{node}: no result for {c.key_of(digest)}\n{c.logs()}"
            assert result["node"] == node
            assert now - result["last_run_at"] < EXEC_INTERVAL_S + 3, (
                f"{node} stopped running {c.key_of(digest)}: {result}\n{c.logs()}"
            )
        for path in c.paths_on(node):
            assert c.target.count(path, now - 3, now + 1) >= 1, f"{path} on {node} not hit"


def _busiest(c: Cluster) -> tuple[str, list[str]]:
    alive = c.alive()
    assert len(alive) >= 2, f"need two agents alive, have {alive}\n{c.logs()}"
    node = max(alive, key=lambda n: len(c.paths_on(n)))
    paths = c.paths_on(node)
    assert paths, f"no agent holds an http check: {c.placement()}"
    return node, paths


def test_kill_9_moves_checks_within_expiry(cluster: Cluster) -> None:
    c = cluster
    victim, paths = _busiest(c)
    digests = [d for d, nodes in c.placement().items() if nodes == [victim]]
    killed_at = time.time()
    c.agents[victim].signal(signal.SIGKILL)
    c.agents[victim].wait(timeout_s=5)

    def all_hit_again() -> dict[str, float] | None:
        firsts = {p: c.target.first_after(p, killed_at) for p in paths}
        return {p: t for p, t in firsts.items() if t is not None} if all(firsts.values()) else None

    firsts = wait_for("hits after the kill", all_hit_again, timeout_s=EXPIRY_S + 8, cluster=c)
    delays = {p: round(t - killed_at, 2) for p, t in firsts.items()}
    late = {p: d for p, d in delays.items() if d > EXPIRY_S + 2}
    assert not late, f"{victim}'s checks ran again only after {late}s\n{c.logs()}"
    # Not before the node could have expired: nothing ran them elsewhere meanwhile.
    early = {p: d for p, d in delays.items() if d < EXPIRY_S - HEARTBEAT_S - 0.5}
    assert not early, f"{victim}'s checks ran elsewhere too early: {early}\n{c.logs()}"

    placement = c.placement()
    assert victim not in {n["name"] for n in c.state()["nodes"]}
    for digest in digests:
        assert len(placement.get(digest, [])) == 1, f"{c.key_of(digest)}: {placement}"
        assert placement[digest][0] in c.alive()

    # Every one of its checks (exec and broken ones too) reports again from elsewhere.
    def reported_elsewhere() -> bool:
        page = c.results()
        return all(
            page[d]["node"] != victim and page[d]["last_run_at"] > killed_at for d in digests
        )

    wait_for("results from the new nodes", reported_elsewhere, timeout_s=10, cluster=c)


def test_sigterm_leaves_and_moves_checks_at_once(cluster: Cluster) -> None:
    c = cluster
    leaver, paths = _busiest(c)
    proc = c.agents[leaver]
    digests = [d for d, nodes in c.placement().items() if nodes == [leaver]]
    signalled_at = time.time()
    proc.signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout_s=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{leaver} still running 10s after SIGTERM\n{c.logs()}")
    exited_after = time.time() - signalled_at
    assert code == 0, f"{leaver} exited {code}\n{proc.output()[-4000:]}"
    assert exited_after < 5.0, f"{leaver} took {exited_after:.1f}s to exit"

    # It deregistered itself: gone from the dispatcher at once, not after the expiry.
    nodes = {n["name"] for n in c.state()["nodes"]}
    assert leaver not in nodes, f"{leaver} still registered after exit\n{c.logs()}"
    left = log_events(proc, "agent_left")
    assert left, f"{leaver} never logged agent_left\n{proc.output()[-4000:]}"
    assert left[-1].get("deregistered") is True, f"{left[-1]}\n{proc.output()[-4000:]}"
    assert left[-1].get("results_flushed") is True, f"{left[-1]}\n{proc.output()[-4000:]}"

    # The first hit after the leaving agent stopped a check is another agent's run.
    stopped = {e["digest"]: e["t"] for e in log_events(proc, "check_stopped")}
    missing = [c.key_of(d) for d in digests if d not in stopped]
    assert not missing, f"{leaver} never logged check_stopped for {missing}"

    def all_hit_again() -> dict[str, float] | None:
        firsts = {p: c.target.first_after(p, stopped[c.digests[p]]) for p in paths}
        return {p: t for p, t in firsts.items() if t is not None} if all(firsts.values()) else None

    firsts = wait_for("hits after the leave", all_hit_again, timeout_s=10, cluster=c)
    delays = {p: round(t - signalled_at, 2) for p, t in firsts.items()}
    late = {p: d for p, d in delays.items() if d > 2.0}
    assert not late, f"{leaver}'s checks ran again elsewhere only after {late}s\n{c.logs()}"
    placement = c.placement()
    for digest in digests:
        assert len(placement.get(digest, [])) == 1, f"{c.key_of(digest)}: {placement}"
        assert placement[digest][0] in c.alive()
