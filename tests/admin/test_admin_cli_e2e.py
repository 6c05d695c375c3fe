"""End to end: the admin subcommands against a real ``clusterchecks-dispatcher`` process.

One dispatcher (with tokens) serves the whole module: two simulated node agents, five
checks put through the source route (one dangling, two whose digests share a prefix).
Most invocations run in-process through click's CliRunner; one runs the installed
command as a child process, and two run it on a pseudo-terminal to see colour appear
only there. Tests that steer (cordon, drain, isolate) undo what they did.
"""

from __future__ import annotations

import itertools
import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dispatcher import wire
from dispatcher.cli import main
from dispatcher.core.model import make_config
from tests.e2e.harness import API, Reply, SimAgent, call
from tests.processes import BIN, ROOT, Proc, dispatcher_argv, free_port, wait_http_ok

pytestmark = pytest.mark.e2e

ADMIN, NODE, SOURCE = "admin-secret", "node-secret", "source-secret"
CLEAN_ENV: dict[str, str | None] = dict.fromkeys(
    (
        "CLUSTERCHECKS_URL",
        "CLUSTERCHECKS_ADMIN_TOKEN",
        "CLUSTERCHECKS_ADMIN_TOKEN_FILE",
        "CLUSTERCHECKS_TIMEOUT",
        "NO_COLOR",
    )
)
"""Unset in every in-process run, so the caller's environment cannot leak in."""
_run_ids = itertools.count()


def http_check(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "http", "instances": [{"url": url}], **extra}


def urls_sharing_a_prefix() -> list[str]:
    """Two check URLs whose digests share their first two hex characters."""
    seen: dict[str, str] = {}
    for i in range(2000):
        url = f"http://svc-{i}.example/healthz"
        digest = make_config(name="http", instances=[{"url": url}]).digest
        if digest[:2] in seen:
            return [seen[digest[:2]], url]
        seen[digest[:2]] = url
    raise AssertionError("no two digests share a prefix")  # pragma: no cover


@dataclass
class Cluster:
    base: str
    identity: str
    proc: Proc
    digests: list[str]
    """The four dispatched checks, in the order they were put."""
    dangling: str
    shared_prefix: str

    def admin(self, method: str, path: str = "", body: Any = None) -> Reply:
        reply = call(method, f"{self.base}{API}{path}", body, token=ADMIN)
        assert reply.status == 200, (reply, self.proc.output()[-3000:])
        return reply

    def placement(self) -> dict[str, str | None]:
        return {c["digest"]: c["node"] for c in self.admin("GET", "/checks").body["checks"]}

    def post_result(self, digest: str, *, ok: bool, error: str = "GET /healthz: 503") -> None:
        node = self.placement()[digest]
        assert node is not None
        result = {
            "digest": digest,
            "run_id": f"run-{next(_run_ids)}",
            "ok": ok,
            "errors": [] if ok else [error],
            "started_at": time.time() - 0.2,
            "duration_s": 0.1,
        }
        reply = call("POST", f"{self.base}{API}/results/{node}", {"results": [result]}, token=NODE)
        assert reply.status == 200, reply
        assert reply.body["accepted"] == 1, reply

    def unique_prefix(self, digest: str) -> str:
        others = [d for d in [*self.digests, self.dangling] if d != digest]
        length = next(n for n in range(1, 33) if not any(o.startswith(digest[:n]) for o in others))
        return digest[: max(length, 4)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("admin-e2e")
    port = free_port()
    argv = dispatcher_argv(
        port, "--admin-token", ADMIN, "--node-token", NODE, "--source-token", SOURCE
    )
    proc = Proc(f"dispatcher-{port}", argv, tmp / "dispatcher.log").start()
    agents: list[SimAgent] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(base + "/healthz", timeout_s=20, proc=proc)
        for name, labels, capacity in (("node-a", {"zone": "eu-1a"}, 4), ("node-b", {}, 2)):
            agent = SimAgent(base, name, token=NODE, interval_s=0.5)
            assert agent.status(labels=labels, capacity=capacity).status == 200
            agents.append(agent.start())
        urls = [*urls_sharing_a_prefix(), "http://shop.example/healthz", "http://db.example/"]
        configs = [http_check(u) for u in urls]
        configs.append(http_check("http://nowhere.example/", node_selector={"zone": "mars"}))
        reply = call("PUT", f"{base}{API}/sources/ci", {"configs": configs}, token=SOURCE)
        assert reply.status == 200, reply
        digests: list[str] = reply.body["digests"]
        assert digests[0][:2] == digests[1][:2], "the server's digests differ from make_config's"
        yield Cluster(
            base=base,
            identity=f"dispatcher-{port}",
            proc=proc,
            digests=digests[:4],
            dangling=digests[4],
            shared_prefix=digests[0][:2],
        )
    finally:
        for agent in agents:
            agent.stop()
        proc.stop(timeout_s=5)


def cli(cluster: Cluster, *args: str, token: str | None = ADMIN, url: str | None = None) -> Result:
    argv = [*args, "--url", url or cluster.base]
    if token is not None:
        argv += ["--token", token]
    return CliRunner().invoke(main, argv, env=CLEAN_ENV, catch_exceptions=False)


def ok(result: Result) -> list[str]:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout.splitlines()


def one_error(result: Result, exit_code: int) -> str:
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def json_like(result: Result, direct: Reply, model: type[wire.WireOut]) -> dict[str, Any]:
    """The --json output: valid JSON, of the reply's model, with the API reply's keys."""
    assert result.exit_code in (0, 1), result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    model.model_validate(parsed)
    assert set(parsed) == set(direct.body)
    return parsed


# ------------------------------------------------------------------- reading


def test_state(cluster: Cluster) -> None:
    lines = ok(cli(cluster, "state"))
    assert lines[0].startswith(f"leader: {cluster.identity}   epoch: ")
    assert "nodes: 2   checks: 5 (4 dispatched, 1 dangling)" in lines[0]
    header = lines[2].split()
    assert header == ["NODE", "CHECKS", "BUSYNESS", "CAPACITY", "HEARTBEAT", "CORDONED", "LABELS"]
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert rows["node-a"][3] == "4"
    assert rows["node-a"][6] == "zone=eu-1a"
    assert rows["node-b"][3] == "2"
    assert lines[-2:] == ["dangling checks (1):", f"  {cluster.dangling[:12]}"]

    parsed = json_like(cli(cluster, "state", "--json"), cluster.admin("GET"), wire.StateOut)
    assert [n["name"] for n in parsed["nodes"]] == ["node-a", "node-b"]
    assert parsed["dangling"] == [cluster.dangling]


def test_checks(cluster: Cluster) -> None:
    lines = ok(cli(cluster, "checks"))
    assert lines[0].split() == ["DIGEST", "NAME", "NODE", "SOURCES", "INTERVAL", "LAST", "RESULT"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {d[:12] for d in [*cluster.digests, cluster.dangling]}
    assert rows[cluster.dangling[:12]][2:4] == ["-", "(dangling)"]
    placement = cluster.placement()
    for digest in cluster.digests:
        assert rows[digest[:12]][2] == placement[digest]
        assert rows[digest[:12]][3:5] == ["ci", "15s"]

    direct = cluster.admin("GET", "/checks")
    parsed = json_like(cli(cluster, "checks", "--json"), direct, wire.ChecksOut)
    assert {c["digest"] for c in parsed["checks"]} == {c["digest"] for c in direct.body["checks"]}


def test_one_check_by_unique_prefix(cluster: Cluster) -> None:
    digest = cluster.digests[2]
    prefix = cluster.unique_prefix(digest)
    lines = ok(cli(cluster, "checks", prefix))
    values = {line[:15].strip(): line[15:] for line in lines}
    assert values["digest"] == digest
    assert values["instances"] == '[{"url": "http://shop.example/healthz"}]'
    assert values["explain"].startswith("Dispatched to ")

    direct = cluster.admin("GET", f"/checks/{digest}")
    parsed = json_like(
        cli(cluster, "checks", prefix.upper(), "--json"), direct, wire.CheckDetailOut
    )
    assert parsed["digest"] == digest
    assert parsed["explain"] == direct.body["explain"]

    dangling = ok(cli(cluster, "checks", cluster.dangling))
    assert any(line.startswith("explain        Dangling") for line in dangling), dangling


def test_ambiguous_or_unknown_prefix_is_an_unknown_check(cluster: Cluster) -> None:
    line = one_error(cli(cluster, "checks", cluster.shared_prefix), 5)
    assert f"unknown check '{cluster.shared_prefix}': the prefix matches" in line
    assert "give more characters" in line
    line = one_error(cli(cluster, "isolate", cluster.shared_prefix), 5)
    assert "the prefix matches" in line
    absent = next(
        p
        for p in (f"{i:x}{j:x}" for i in range(16) for j in range(16))
        if not any(d.startswith(p) for d in [*cluster.digests, cluster.dangling])
    )
    line = one_error(cli(cluster, "checks", absent), 5)
    assert f"unknown check '{absent}': no check's digest starts with it" in line
    # A full-length digest the dispatcher does not hold: its 404 unknown_check.
    line = one_error(cli(cluster, "checks", "f" * 32), 5)
    assert f"unknown check '{'f' * 32}'" in line


def test_results_exit_0_when_all_ok_and_1_when_one_fails(cluster: Cluster) -> None:
    for digest in cluster.digests:
        cluster.post_result(digest, ok=True)
    lines = ok(cli(cluster, "results"))
    assert lines[0].split()[:4] == ["DIGEST", "NAME", "NODE", "STATUS"]
    assert len(lines) == 6
    assert lines[-1] == "overall: ok: 4 checks"

    failing = cluster.digests[1]
    cluster.post_result(failing, ok=False, error="GET http://svc.example/healthz: 503\nretry")
    try:
        result = cli(cluster, "results")
        assert result.exit_code == 1, result.stderr
        lines = result.stdout.splitlines()
        row = lines[1].split()
        assert row[:4] == [failing[:12], "http", cluster.placement()[failing], "FAIL"]
        assert row[4:6] == ["1", "1/1"]
        assert "GET http://svc.example/healthz: 503 retry" in lines[1]
        assert lines[-1] == "overall: FAIL: 1 of 4 checks failing"

        result = cli(cluster, "results", "--json")
        assert result.exit_code == 1
        parsed = json_like(result, cluster.admin("GET", "/results"), wire.ResultsPageOut)
        assert parsed["ok"] is False
        assert parsed["checks"][failing]["consecutive_failures"] == 1
    finally:
        cluster.post_result(failing, ok=True)
    assert cli(cluster, "results").exit_code == 0


def test_history_by_prefix(cluster: Cluster) -> None:
    digest = cluster.digests[3]
    cluster.post_result(digest, ok=False, error="GET http://db.example/: 502")
    cluster.post_result(digest, ok=True)
    prefix = cluster.unique_prefix(digest)

    lines = ok(cli(cluster, "history", prefix))

    assert lines[0] == f"http {digest[:12]}"
    assert lines[1].startswith("uptime:   1h ")
    assert lines[3].split()[1].endswith("x▁"), "the failure, then the last run"
    assert lines[4].split() == ["STARTED", "NODE", "RESULT", "DURATION", "RUN", "ERROR"]
    assert lines[5].split()[3:5] == ["ok", "0.100s"]
    assert lines[6].split()[3] == "FAIL"
    assert lines[6].endswith("GET http://db.example/: 502")

    direct = cluster.admin("GET", f"/checks/{digest}/history")
    parsed = json_like(cli(cluster, "history", prefix, "--json"), direct, wire.HistoryOut)
    assert parsed["results"][0]["ok"] is True
    assert parsed["results"][1]["errors"] == ["GET http://db.example/: 502"]
    line = one_error(cli(cluster, "history", cluster.shared_prefix), 5)
    assert "the prefix matches" in line


def test_replicas(cluster: Cluster) -> None:
    lines = ok(cli(cluster, "replicas"))
    assert lines[0].split() == ["IDENTITY", "ROLE", "URL", "STATUS", "READY", "EPOCH", "REPORTED"]
    row = lines[1].split()
    assert row[:2] == [cluster.identity, "leader"]
    direct = cluster.admin("GET", "/replicas")
    parsed = json_like(cli(cluster, "replicas", "--json"), direct, wire.ReplicasOut)
    assert [r["identity"] for r in parsed["replicas"]] == [cluster.identity]


# ------------------------------------------------------------------ steering


def test_rebalance(cluster: Cluster) -> None:
    lines = ok(cli(cluster, "rebalance", "--dry-run"))
    assert lines[0].startswith("dry run: ")
    lines = ok(cli(cluster, "rebalance", "--force"))
    if lines[-1] != "no moves":
        assert lines[1].split()[:4] == ["DIGEST", "CHECK", "WEIGHT", "COST"]
    direct = cluster.admin("POST", "/rebalance", {"dry_run": True})
    parsed = json_like(cli(cluster, "rebalance", "--dry-run", "--json"), direct, wire.RebalanceOut)
    assert isinstance(parsed["moves"], list)


def test_cordon_and_uncordon(cluster: Cluster) -> None:
    try:
        lines = ok(cli(cluster, "cordon", "node-b"))
        assert lines[0] == "node node-b cordoned"
        assert lines[1].split()[0] == "NODE"
        assert lines[2].split()[0] == "node-b"
        assert lines[2].split()[5] == "yes"
        state = cluster.admin("GET").body
        assert next(n for n in state["nodes"] if n["name"] == "node-b")["cordoned"] is True

        parsed = json.loads(ok_json(cli(cluster, "uncordon", "node-b", "--json")))
        wire.NodeOut.model_validate(parsed)
        assert parsed["name"] == "node-b"
        assert parsed["cordoned"] is False
        assert set(parsed) == set(state["nodes"][0])
    finally:
        cluster.admin("POST", "/nodes/node-b/uncordon")


def ok_json(result: Result) -> str:
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_drain(cluster: Cluster) -> None:
    try:
        lines = ok(cli(cluster, "drain", "node-b"))
        assert lines[0] == "node node-b drained"
        row = lines[2].split()
        assert row[:2] == ["node-b", "0"]
        assert row[5] == "yes"
        assert "node-b" not in cluster.placement().values()
        parsed = json.loads(ok_json(cli(cluster, "drain", "node-b", "--json")))
        assert parsed["configs"] == []
        assert parsed["cordoned"] is True
    finally:
        cluster.admin("POST", "/nodes/node-b/uncordon")


def test_isolate(cluster: Cluster) -> None:
    nodes = cluster.admin("GET").body["nodes"]
    crowded = next(n for n in nodes if len(n["configs"]) >= 2)
    name, (kept, *others) = crowded["name"], sorted(crowded["configs"])
    try:
        lines = ok(cli(cluster, "isolate", cluster.unique_prefix(kept)))
        assert lines[0].startswith(f"check {kept[:12]} isolated on node {name}, now cordoned")
        assert lines[1].split() == ["DIGEST", "CHECK", "WEIGHT", "COST", "FROM", "TO"]
        assert lines[-1].startswith("WEIGHT: the check's configured weight; COST: ")
        moved = {line.split()[0]: line.split() for line in lines[2:-1]}
        assert set(moved) == {d[:12] for d in others}
        weights = {
            c["digest"][:12]: c["weight"] for c in cluster.admin("GET", "/checks").body["checks"]
        }
        assert all(float(row[2]) == weights[digest] for digest, row in moved.items())
        assert all(row[4] == name and row[5] != name for row in moved.values())
        placement = cluster.placement()
        assert placement[kept] == name
        assert all(placement[d] != name for d in others)

        result = cli(cluster, "isolate", kept, "--json")
        parsed = json.loads(ok_json(result))
        wire.IsolateOut.model_validate(parsed)
        assert parsed == {"digest": kept, "node": name, "moves": []}
    finally:
        cluster.admin("POST", f"/nodes/{name}/uncordon")


# -------------------------------------------------------------------- errors


def test_isolating_a_dangling_check_is_a_conflict(cluster: Cluster) -> None:
    line = one_error(cli(cluster, "isolate", cluster.dangling[:10]), 6)
    assert f"cannot isolate check '{cluster.dangling[:12]}' (409 not_dispatched)" in line


def test_cordoning_an_unknown_node(cluster: Cluster) -> None:
    line = one_error(cli(cluster, "cordon", "ghost"), 5)
    assert line.startswith("error: unknown node 'ghost' (404 unknown_node): ")


def test_a_wrong_or_missing_token(cluster: Cluster) -> None:
    line = one_error(cli(cluster, "state", token="wrong"), 4)
    assert line.startswith("error: the dispatcher refused the token (401 unauthorized): ")
    line = one_error(cli(cluster, "cordon", "node-a", token=NODE), 4)
    assert "(403 forbidden)" in line
    line = one_error(cli(cluster, "state", token=None), 4)
    assert "the dispatcher requires a token (401 unauthorized)" in line
    assert "--token" in line


def test_an_unreachable_dispatcher(cluster: Cluster) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = one_error(cli(cluster, "state", url=url), 3)
    assert line == f"error: cannot reach the dispatcher at {url}: connection refused"


# ------------------------------------------------------ the installed command


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    return {**env, **extra}


def test_the_installed_command_piped(cluster: Cluster) -> None:
    command = str(BIN / "clusterchecks-dispatcher")
    done = subprocess.run(
        [command, "state", "--url", cluster.base],
        capture_output=True,
        timeout=30,
        env=child_env(CLUSTERCHECKS_ADMIN_TOKEN=ADMIN),
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"\x1b[" not in done.stdout
    assert b"node-a" in done.stdout
    assert done.stdout.splitlines()[2].split() == [
        b"NODE", b"CHECKS", b"BUSYNESS", b"CAPACITY", b"HEARTBEAT", b"CORDONED", b"LABELS",
    ]  # fmt: skip

    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [command, "results", "--url", url, "--token", ADMIN],
        capture_output=True,
        timeout=30,
        env=child_env(),
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 3
    assert done.stdout == b""
    assert done.stderr.decode() == (
        f"error: cannot reach the dispatcher at {url}: connection refused\n"
    )


def run_on_a_terminal(argv: list[str], env: Mapping[str, str]) -> tuple[int, bytes]:
    """Runs argv with stdout on a pseudo-terminal; returns its exit code and output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=slave, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
    return code, b"".join(chunks)


def test_colour_on_a_terminal_only(cluster: Cluster) -> None:
    argv = [str(BIN / "clusterchecks-dispatcher"), "state", "--url", cluster.base]
    code, output = run_on_a_terminal(argv, child_env(CLUSTERCHECKS_ADMIN_TOKEN=ADMIN))
    assert code == 0, output
    assert b"\x1b[1mNODE" in output
    assert b"node-a" in output

    code, output = run_on_a_terminal(argv, child_env(CLUSTERCHECKS_ADMIN_TOKEN=ADMIN, NO_COLOR="1"))
    assert code == 0, output
    assert b"\x1b[" not in output
    assert b"NODE" in output
