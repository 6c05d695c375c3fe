"""The admin commands against a scripted HTTP server: what they send, and how every kind
of failure comes out (one line on stderr, the documented exit code, nothing on stdout).

The real dispatcher cannot be made to answer 500, 508 or garbage on demand; the
end-to-end tests (test_admin_cli_e2e.py) cover the replies it does give.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dispatcher.cli import main

API = "/v1/api/clusterchecks"


@dataclass
class Scripted:
    """Answers every request with ``status``/``body``; records them.

    ``status`` 0 closes the connection without a reply.
    """

    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False
    """Keep every reply back until ``release`` is set (the fixture sets it at the end)."""
    release: threading.Event = field(default_factory=threading.Event)
    replied: int = 0
    by_path: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    """Replies for some paths (method aside), instead of ``status``/``body``."""
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    def reply(self, status: int, body: Any, **headers: str) -> None:
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.headers = headers


@pytest.fixture
def server() -> Iterator[Scripted]:
    scripted = Scripted()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            scripted.requests.append((self.command, self.path, dict(self.headers), body))
            if scripted.hold:
                scripted.release.wait(timeout=30)
            status, reply = scripted.by_path.get(self.path, (scripted.status, scripted.body))
            if status == 0:
                return
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                for key, value in scripted.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(reply)
                scripted.replied += 1
            except OSError:
                pass  # the client gave up (timeout test)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    scripted.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield scripted
    scripted.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


CLEAN_ENV: dict[str, str | None] = dict.fromkeys(
    ("CLUSTERCHECKS_URL", "CLUSTERCHECKS_ADMIN_TOKEN", "CLUSTERCHECKS_ADMIN_TOKEN_FILE",
     "CLUSTERCHECKS_TIMEOUT", "NO_COLOR")
)  # fmt: skip


def run(*args: str, env: dict[str, str] | None = None, color: bool = False) -> Result:
    """One in-process run; the caller's CLUSTERCHECKS_* and NO_COLOR do not leak in."""
    return CliRunner().invoke(
        main, list(args), env={**CLEAN_ENV, **(env or {})}, color=color, catch_exceptions=False
    )


def assert_one_error_line(result: Result, exit_code: int, *words: str) -> str:
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]
    return lines[0]


STATE = {
    "leader": "d-0",
    "is_leader": True,
    "epoch": 3,
    "warmup": False,
    "nodes": [],
    "dangling": [],
    "totals": {"nodes": 0, "checks": 0, "dispatched": 0, "dangling": 0},
}


# ------------------------------------------------------------ what is sent


def test_token_url_and_timeout_come_from_the_environment(server: Scripted) -> None:
    server.reply(200, STATE)
    env = {"CLUSTERCHECKS_URL": server.url + "/", "CLUSTERCHECKS_ADMIN_TOKEN": "s3cret"}
    result = run("state", env=env)
    assert result.exit_code == 0, result.stderr
    method, path, headers, _ = server.requests[0]
    assert (method, path) == ("GET", API)
    assert headers["Authorization"] == "Bearer s3cret"


def test_token_file(server: Scripted, tmp_path: Path) -> None:
    server.reply(200, STATE)
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n", encoding="utf-8")
    result = run("state", "--url", server.url, "--token-file", str(token_file))
    assert result.exit_code == 0, result.stderr
    assert server.requests[0][2]["Authorization"] == "Bearer from-file"


def test_no_token_sends_no_authorization(server: Scripted) -> None:
    server.reply(200, STATE)
    assert run("state", "--url", server.url).exit_code == 0
    assert "Authorization" not in server.requests[0][2]


@pytest.mark.parametrize(
    ("args", "method", "path", "body"),
    [
        (["rebalance"], "POST", "/rebalance", {"force": False, "dry_run": False}),
        (["rebalance", "--force", "--dry-run"], "POST", "/rebalance",
         {"force": True, "dry_run": True}),
        (["cordon", "node-a"], "POST", "/nodes/node-a/cordon", None),
        (["uncordon", "node.b_1"], "POST", "/nodes/node.b_1/uncordon", None),
        (["drain", "node-a"], "POST", "/nodes/node-a/drain", None),
        (["results"], "GET", "/results", None),
        (["replicas"], "GET", "/replicas", None),
        (["checks"], "GET", "/checks", None),
        (["export"], "GET", "/export", None),
    ],
)  # fmt: skip
def test_each_command_calls_its_route(
    server: Scripted, args: list[str], method: str, path: str, body: Any
) -> None:
    server.reply(500, {"error": {"code": "internal", "message": "scripted"}})
    run(*args, "--url", server.url)
    sent_method, sent_path, _, sent_body = server.requests[0]
    assert (sent_method, sent_path) == (method, API + path)
    assert (json.loads(sent_body) if sent_body else None) == body


# ------------------------------------------------------------ failures


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@pytest.mark.parametrize(
    ("reply", "exit_code", "words"),
    [
        pytest.param(
            (503, error("no_leader", "No leader."), {"Retry-After": "3"}), 3,
            ["knows no leader right now (503 no_leader): No leader. (retry after 3 s)"],
            id="503-no-leader",
        ),
        pytest.param(
            (508, error("loop_detected", "Loop."), {}), 3,
            ["failed (508 loop_detected): Loop."], id="508",
        ),
        pytest.param(
            (500, b"<html>oops</html>", {}), 3, ["failed (500 Internal Server Error)"],
            id="500-html",
        ),
        pytest.param((200, b"not json", {}), 3, ["a reply that is not JSON"], id="200-not-json"),
        pytest.param(
            (200, {"leader": "d-0"}, {}), 3, ["a reply this command cannot read", "is_leader"],
            id="200-wrong-shape",
        ),
        pytest.param(
            (400, error("invalid_request", "Bad."), {}), 7,
            ["the dispatcher refused the request (400 invalid_request): Bad."], id="400",
        ),
        pytest.param(
            (403, error("forbidden", "Wrong role."), {}), 4,
            ["the dispatcher refused the token (403 forbidden): Wrong role."], id="403",
        ),
        pytest.param(
            (404, b"<html>404</html>", {}), 3, ["without an API error body"], id="404-not-ours",
        ),
    ],
)  # fmt: skip
def test_failures_are_one_line_with_their_exit_code(
    server: Scripted, reply: tuple[int, Any, dict[str, str]], exit_code: int, words: list[str]
) -> None:
    status, body, headers = reply
    server.reply(status, body, **headers)
    assert_one_error_line(run("state", "--url", server.url, "--token", "t"), exit_code, *words)


def test_a_slow_dispatcher_times_out(server: Scripted) -> None:
    # The server holds its reply until the test releases it, so the command can only
    # have ended by giving up: an order of events, not a measured duration.
    server.reply(200, STATE)
    server.hold = True
    result = run("state", "--url", server.url, "--timeout", "0.2")
    assert server.replied == 0
    assert len(server.requests) == 1
    assert_one_error_line(result, 3, f"no reply from the dispatcher at {server.url} within 0.2 s")


def test_a_connection_closed_without_a_reply(server: Scripted) -> None:
    server.status = 0
    result = run("state", "--url", server.url)
    assert_one_error_line(result, 3, f"cannot reach the dispatcher at {server.url}: ")


def test_json_prints_the_reply_and_nothing_else(server: Scripted) -> None:
    server.reply(200, STATE)
    result = run("state", "--url", server.url, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == STATE
    assert result.stdout.startswith('{\n  "leader": "d-0"')
    assert result.stderr == ""


RESULTS_FAILING = {
    "ok": False,
    "errors": ["http: 503"],
    "checks": {
        "ab" * 16: {
            "name": "http", "node": "n", "ok": False, "errors": ["503"], "last_run_at": 1.0,
            "duration_s": 0.1, "consecutive_failures": 1, "success_count": 0,
            "failure_count": 1, "last_ok_at": None,
        }
    },
}  # fmt: skip


def test_results_exit_1_on_a_failing_check_with_json_too(server: Scripted) -> None:
    server.reply(200, RESULTS_FAILING)
    assert run("results", "--url", server.url).exit_code == 1
    result = run("results", "--url", server.url, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == RESULTS_FAILING


# ------------------------------------------------------- weight and cost

D1, D2 = "a1" * 16, "b2" * 16
REBALANCED = {
    "applied": True, "outcome": "applied", "spread_before": 0.5, "spread_after": 0.1,
    "moves": [{"digest": D1, "check_name": "http", "weight": 0.0123, "source_node": "n-a",
               "dest_node": "n-b", "source_load_before": 1.5, "source_load_after": 1.2,
               "dest_load_before": 0.5, "dest_load_after": 0.8}],
}  # fmt: skip


def listing(weight: float) -> bytes:
    check = {
        "digest": D1, "name": "http", "instances": [{"url": "http://x/"}], "init_config": {},
        "interval_s": 15.0, "timeout_s": 10.0, "weight": weight, "node_selector": {},
        "sources": ["s"], "node": "n-b",
    }  # fmt: skip
    return json.dumps({"checks": [check]}).encode()


def test_rebalance_shows_the_configured_weight_apart_from_the_measured_cost(
    server: Scripted,
) -> None:
    server.reply(200, REBALANCED)
    server.by_path[API + "/checks"] = (200, listing(weight=3.0))
    result = run("rebalance", "--url", server.url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2].split()[:4] == ["DIGEST", "CHECK", "WEIGHT", "COST"]
    assert lines[3].split()[:4] == [D1[:12], "http", "3", "0.0123"]
    # The move first; the weights are read after it.
    assert [(m, p) for m, p, _, _ in server.requests] == [
        ("POST", API + "/rebalance"), ("GET", API + "/checks")
    ]  # fmt: skip


def test_weights_that_cannot_be_read_after_a_rebalance_do_not_fail_it(server: Scripted) -> None:
    server.reply(200, REBALANCED)
    server.by_path[API + "/checks"] = (503, json.dumps(error("no_leader", "Gone.")).encode())
    result = run("rebalance", "--url", server.url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[3].split()[:4] == [D1[:12], "http", "-", "0.0123"]
    assert lines[-1].startswith("weights not shown: ")
    assert "503 no_leader" in lines[-1]


def test_json_rebalance_prints_the_reply_alone_without_reading_weights(server: Scripted) -> None:
    server.reply(200, REBALANCED)
    result = run("rebalance", "--url", server.url, "--json")
    assert json.loads(result.stdout) == REBALANCED
    assert [p for _, p, _, _ in server.requests] == [API + "/rebalance"]


# ------------------------------------------------------------- colour


def test_colour_on_a_terminal_unless_no_color(server: Scripted) -> None:
    server.reply(200, RESULTS_FAILING)
    coloured = run("results", "--url", server.url, color=True)
    assert "\x1b[31mFAIL" in coloured.stdout
    assert "\x1b[1mDIGEST" in coloured.stdout
    muted = run("results", "--url", server.url, color=True, env={"NO_COLOR": "1"})
    assert "\x1b[" not in muted.stdout
    assert "FAIL" in muted.stdout
    piped = run("results", "--url", server.url)
    assert "\x1b[" not in piped.stdout


# --------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["state", "--url", "ftp://x"], ["--url", "http:// or https://"]),
        (["state", "--url", "http://h:99999"], ["--url", "not a valid URL"]),
        (["state", "--url", "http://h/?a=1"], ["--url", "without ?query"]),
        (["state", "--timeout", "0"], ["--timeout", "0<x<=3600"]),
        (["state", "--timeout", "soon"], ["--timeout", "not a valid float"]),
        (["state", "--token", "a b"], ["--token", "printable ASCII"]),
        (["state", "--token", "t", "--token-file", "/dev/null"], ["--token", "not both"]),
        (["state", "--token-file", "/nonexistent/token"], ["--token-file", "cannot read"]),
        (["cordon"], ["Missing argument 'NODE'"]),
        (["cordon", "a/b"], ["NODE", "not a node name"]),
        (["checks", "xyz"], ["DIGEST", "not a digest or digest prefix"]),
        (["isolate"], ["Missing argument 'DIGEST'"]),
        (["rebalance", "--forse"], ["No such option '--forse'"]),
        (["import"], ["Missing argument 'FILE'"]),
        (["import", "/nonexistent/state.json"], ["FILE", "No such file"]),
        (["import", "-", "--mode", "overwrite"], ["--mode", "'replace', 'merge'"]),
    ],
)
def test_usage_errors_exit_2_naming_the_flag(args: list[str], words: list[str]) -> None:
    result = run(*args, "--url", "http://127.0.0.1:9") if "--url" not in args else run(*args)
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.stderr


def test_an_empty_token_file(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n", encoding="utf-8")
    result = run("state", "--token-file", str(empty))
    assert result.exit_code == 2
    assert "--token-file" in result.stderr
    assert "is empty" in result.stderr


def test_help_lists_the_admin_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for name in (
        "serve", "state", "checks", "results", "rebalance", "cordon", "uncordon", "drain",
        "isolate", "replicas", "export", "import",
    ):  # fmt: skip
        assert name in result.stdout
    state_help = run("state", "--help").stdout
    for flag in ("--url", "CLUSTERCHECKS_URL", "--token-file", "--timeout", "--json"):
        assert flag in state_help


# --------------------------------------------------------- option order


def _options(url: str, *, joined: bool) -> list[str]:
    pairs = [("--url", url), ("--token", "s3cret"), ("--timeout", "5")]
    if joined:
        return [*(f"{flag}={value}" for flag, value in pairs), "--json"]
    return [*(part for pair in pairs for part in pair), "--json"]


@pytest.mark.parametrize("where", ["after", "before", "before-joined", "around"])
def test_common_options_go_before_or_after_the_subcommand(server: Scripted, where: str) -> None:
    server.reply(200, STATE)
    options = _options(server.url, joined=where == "before-joined")
    args = {
        "after": ["state", *options],
        "before": [*options, "state"],
        "before-joined": [*options, "state"],
        "around": [*options[:4], "state", *options[4:]],
    }[where]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == STATE
    method, path, headers, _ = server.requests[0]
    assert (method, path) == ("GET", API)
    assert headers["Authorization"] == "Bearer s3cret"


@pytest.mark.parametrize(
    ("args", "method", "path"),
    [
        (["cordon", "node-a"], "POST", "/nodes/node-a/cordon"),
        (["rebalance", "--dry-run"], "POST", "/rebalance"),
        (["checks"], "GET", "/checks"),
    ],
)
def test_options_before_a_subcommand_with_its_own_arguments(
    server: Scripted, args: list[str], method: str, path: str
) -> None:
    server.reply(500, {"error": {"code": "internal", "message": "scripted"}})
    result = run("--url", server.url, "--json", *args)
    assert_one_error_line(result, 3, "(500 internal)")
    assert [(m, p) for m, p, _, _ in server.requests] == [(method, API + path)]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--json"], ["--json is an option of the admin commands", "state, checks", "name one"]),
        (["--url", "http://127.0.0.1:9"], ["--url is an option of the admin commands"]),
        (["--json", "serve"], ["serve does not take it"]),
        (["--token=t", "--port", "1"], ["--token is an option of the admin commands"]),
    ],
)
def test_admin_options_without_an_admin_subcommand_name_the_commands(
    args: list[str], words: list[str]
) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr


def test_a_bad_value_before_the_subcommand_is_that_subcommand_s_usage_error() -> None:
    result = run("--timeout", "soon", "state")
    assert result.exit_code == 2
    assert " state [OPTIONS]" in result.stderr.splitlines()[0]
    assert "--timeout" in result.stderr
    assert "not a valid float" in result.stderr


# ---------------------------------------------------------- export, import

EXPORTED = {
    "format": "clusterchecks-export", "version": 1, "exported_at": 1_763_700_000.25,
    "sources": {"api:é": [{"name": "http", "instances": [{"url": "http://x/"}],
                           "init_config": {}, "interval_s": 15.0, "timeout_s": 10.0,
                           "node_selector": {}, "weight": 1.0}]},
    "cordoned": ["node-a"],
}  # fmt: skip
IMPORTED = {
    "epoch": 3, "mode": "merge", "dry_run": True,
    "sources": {"api:a": {"added": 1, "removed": 0, "unchanged": 2}},
    "skipped_sources": [], "cordoned": [], "skipped_cordons": [],
}  # fmt: skip


def test_export_prints_the_document_indented(server: Scripted) -> None:
    server.reply(200, EXPORTED)
    result = run("export", "--url", server.url)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == json.dumps(EXPORTED, indent=2, ensure_ascii=False) + "\n"
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("flags", "query"),
    [
        ([], "mode=replace&dry_run=false"),
        (["--mode", "merge", "--dry-run"], "mode=merge&dry_run=true"),
    ],
)
def test_import_sends_the_document_without_its_indentation(
    server: Scripted, tmp_path: Path, flags: list[str], query: str
) -> None:
    raw = json.dumps(EXPORTED, indent=2, ensure_ascii=False).encode()
    state = tmp_path / "state.json"
    state.write_bytes(raw)
    server.reply(200, IMPORTED)

    result = run("import", str(state), *flags, "--url", server.url)

    assert result.exit_code == 0, result.stderr
    method, path, headers, body = server.requests[0]
    assert (method, path) == ("POST", f"{API}/import?{query}")
    assert headers["Content-Type"] == "application/json"
    assert body == json.dumps(EXPORTED, separators=(",", ":"), ensure_ascii=False).encode()
    assert result.stdout.startswith("dry run (merge), nothing changed: would write 1 sources")


def test_import_reads_stdin_and_prints_json(server: Scripted) -> None:
    server.reply(200, IMPORTED)
    result = CliRunner().invoke(
        main,
        ["import", "-", "--url", server.url, "--json"],
        input=json.dumps(EXPORTED),
        env=CLEAN_ENV,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == IMPORTED
    assert json.loads(server.requests[0][3]) == EXPORTED


def test_a_bad_file_prints_each_entry_the_dispatcher_names_and_exits_7(
    server: Scripted, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    state.write_text("{}", encoding="utf-8")
    fields = [
        {"path": "sources.api:team-a[3].interval_s", "message": "Input should be >= 1"},
        {"path": "cordoned[0]", "message": "not a node name"},
    ]
    server.reply(
        400,
        {"error": {"code": "invalid_request", "message": "Invalid request: sources...",
                   "details": {"fields": fields, "truncated": True}}},
    )  # fmt: skip

    result = run("import", str(state), "--url", server.url)

    assert result.exit_code == 7
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: the dispatcher refused the request (400 invalid_request): Invalid request: "
        "sources...",
        "  sources.api:team-a[3].interval_s: Input should be >= 1",
        "  cordoned[0]: not a node name",
        "  (the dispatcher lists no more problems)",
    ]


@pytest.mark.parametrize("raw", [b"not json {", b"[" * 100_000, b'"\xff"'])
def test_a_file_that_is_not_json_goes_as_it_is_for_the_dispatcher_to_explain(
    server: Scripted, tmp_path: Path, raw: bytes
) -> None:
    state = tmp_path / "state.json"
    state.write_bytes(raw)
    server.reply(400, error("invalid_json", "The request body is not valid JSON: line 1."))
    result = run("import", str(state), "--url", server.url)
    assert_one_error_line(result, 7, "(400 invalid_json): The request body is not valid JSON")
    assert server.requests[0][3] == raw


def test_a_file_over_the_body_limit_exits_7_saying_how_to_split_it(
    server: Scripted, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"pad": "x" * (5 * 1024 * 1024)}), encoding="utf-8")
    server.reply(413, error("body_too_large", "The request body is larger than 4194304 bytes."))
    result = run("import", str(state), "--url", server.url)
    assert_one_error_line(
        result, 7, "(413 body_too_large)", "This document is 5.0 MiB", "--mode merge"
    )


# ------------------------------------------------------------------ history


def history_reply(digest: str) -> dict[str, Any]:
    return {
        "digest": digest,
        "results": [
            {"run_id": "r3", "node": "n-b", "ok": True, "errors": [], "started_at": 1e9 + 30,
             "duration_s": 0.4},
            {"run_id": "r2", "node": "n-b", "ok": False, "errors": ["GET http://x/: 503"],
             "started_at": 1e9 + 20, "duration_s": 2.0},
            {"run_id": "r1", "node": "n-a", "ok": True, "errors": [], "started_at": 1e9 + 10,
             "duration_s": 0.1},
        ],
        "uptime": {"1h": 0.6667, "24h": 0.6667, "7d": None},
        "duration_s": {"p50": 0.4, "p95": 2.0, "p99": 2.0},
    }  # fmt: skip


def one_check(server: Scripted) -> None:
    """The listing (to match a prefix) and the check's detail."""
    server.by_path[API + "/checks"] = (200, listing(weight=1.0))
    detail = json.loads(listing(weight=1.0))["checks"][0]
    server.by_path[f"{API}/checks/{D1}"] = (200, json.dumps(detail).encode())


def test_history_finds_the_check_by_prefix_and_shows_uptime_sparkline_and_runs(
    server: Scripted,
) -> None:
    one_check(server)
    path = f"{API}/checks/{D1}/history?limit=20"
    server.by_path[path] = (200, json.dumps(history_reply(D1)).encode())

    result = run("history", D1[:6], "--url", server.url)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"http {D1[:12]}"
    assert lines[1].split() == ["uptime:", "1h", "66.7%", "24h", "66.7%", "7d", "-"]
    assert lines[2].split() == ["duration:", "p50", "0.400s", "p95", "2.000s", "p99", "2.000s"]
    # Oldest first: the shortest ok run, a failure, the longest ok run.
    assert lines[3].split()[:2] == ["runs:", "▁x█"]
    assert lines[4].split() == ["STARTED", "NODE", "RESULT", "DURATION", "RUN", "ERROR"]
    assert lines[5].split()[2:] == ["n-b", "ok", "0.400s", "r3", "-"]
    assert lines[6].split()[2:] == ["n-b", "FAIL", "2.000s", "r2", "GET", "http://x/:", "503"]
    assert [p for _, p, _, _ in server.requests] == [API + "/checks", f"{API}/checks/{D1}", path]


def test_history_json_prints_the_reply_alone(server: Scripted) -> None:
    server.by_path[f"{API}/checks/{D1}"] = (
        200,
        json.dumps(json.loads(listing(1.0))["checks"][0]).encode(),
    )
    server.by_path[f"{API}/checks/{D1}/history?limit=5"] = (
        200,
        json.dumps(history_reply(D1)).encode(),
    )
    result = run("history", D1, "--limit", "5", "--url", server.url, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == history_reply(D1)


def test_history_of_a_check_without_runs_says_so(server: Scripted) -> None:
    one_check(server)
    empty = {"digest": D1, "results": [], "uptime": {"1h": None, "24h": None, "7d": None},
             "duration_s": {"p50": None, "p95": None, "p99": None}}  # fmt: skip
    server.by_path[f"{API}/checks/{D1}/history?limit=20"] = (200, json.dumps(empty).encode())
    result = run("history", "a1", "--url", server.url)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "no results yet"


def test_history_of_no_matching_check_is_exit_5(server: Scripted) -> None:
    server.by_path[API + "/checks"] = (200, listing(weight=1.0))
    result = run("history", "ffff", "--url", server.url)
    assert_one_error_line(result, 5, "ffff")


@pytest.mark.parametrize(
    "args", [["history"], ["history", "XYZ"], ["history", "a1", "--limit", "0"]]
)
def test_history_usage_errors_are_exit_2(args: list[str]) -> None:
    assert run(*args).exit_code == 2
