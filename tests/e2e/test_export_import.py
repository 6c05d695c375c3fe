"""End to end: ``clusterchecks-dispatcher export`` from one dispatcher process and
``import`` into a second, fresh one (the move from one deployment to another), with the
installed command line.

The first dispatcher holds checks from two API sources (one check in both) and a
cordoned node. Its export, imported into the second and exported from there, gives the
same bytes apart from ``exported_at``; the imported checks keep off the cordoned node.
A file with one bad entry changes nothing on the target, and the command names that
entry.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import API, call
from tests.processes import BIN, Proc, dispatcher_argv, free_port, wait_http_ok

pytestmark = pytest.mark.e2e

TOKEN = "export-import-admin-token"
NODES = ("node-a", "node-b")
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERCHECKS_")}
_EXPORTED_AT = re.compile(rb'\n  "exported_at": [0-9.e+-]+,\n')


def http_check(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": "http", "instances": [{"url": f"http://{name}.example/healthz"}], **extra}


class Dispatcher:
    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        reply = call(method, f"{self.base}{API}{path}", body, token=TOKEN)
        assert reply.status == 200, (method, path, reply, self.proc.output()[-3000:])
        return reply.body

    def register(self, *nodes: str) -> None:
        for node in nodes:  # the admin token may use the node routes
            self.ok("POST", f"/status/{node}", {"last_change": -1})

    def cli(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(BIN / "clusterchecks-dispatcher"), *args, "--url", self.base],
            input=stdin,
            capture_output=True,
            env={**CLEAN_ENV, "CLUSTERCHECKS_ADMIN_TOKEN": TOKEN, "NO_COLOR": "1"},
            timeout=60,
            check=False,
        )

    def export(self) -> bytes:
        run = self.cli("export")
        assert run.returncode == 0, run.stderr.decode()
        assert run.stderr == b""
        return run.stdout


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[Proc] = []

    def launch(name: str) -> Dispatcher:
        port = free_port()
        # Nodes registered by hand stay for the whole test (no agent heartbeats here).
        argv = dispatcher_argv(port, "--node-expiration-timeout", "300")
        proc = Proc(name, argv, tmp_path / f"{name}.log", {"CLUSTERCHECKS_ADMIN_TOKEN": TOKEN})
        started.append(proc.start())
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", timeout_s=20, proc=proc)
        return Dispatcher(proc, port)

    yield launch
    for proc in started:
        proc.stop(timeout_s=10)


def without_exported_at(document: bytes) -> bytes:
    normalised, count = _EXPORTED_AT.subn(b'\n  "exported_at": 0,\n', document)
    assert count == 1, document[:300]
    return normalised


def test_export_then_import_into_a_fresh_dispatcher_round_trips(start: Any, tmp_path: Path) -> None:
    source = start("source")
    source.register(*NODES)
    shared = http_check("shared", weight=3.0)
    source.ok("PUT", "/sources/api:team-a", {"configs": [
        http_check("a1", interval_s=30, timeout_s=5),
        http_check("a2", node_selector={"zone": "eu-1a"}, init_config={"proxy": "none"}),
        shared,
    ]})  # fmt: skip
    source.ok("PUT", "/sources/ci", {"configs": [shared, http_check("c1", weight=0.5)]})
    source.ok("POST", "/nodes/node-a/cordon")

    state_file = tmp_path / "state.json"
    state_file.write_bytes(source.export())
    document = json.loads(state_file.read_bytes())
    assert sorted(document["sources"]) == ["api:team-a", "ci"]
    assert [len(document["sources"][s]) for s in ("api:team-a", "ci")] == [3, 2]
    assert document["cordoned"] == ["node-a"]

    target = start("target")
    target.register(*NODES)
    run = target.cli("import", str(state_file))

    assert run.returncode == 0, run.stderr.decode()
    out = run.stdout.decode()
    assert out.startswith("imported (replace): 2 sources written (5 added, 0 removed")
    assert "cordoned: node-a" in out
    assert without_exported_at(target.export()) == without_exported_at(state_file.read_bytes())
    checks = target.ok("GET", "/checks")["checks"]
    assert len(checks) == 4
    # Cordoned before its checks came: none went to node-a (the selector's check dangles).
    assert {c["node"] for c in checks} <= {"node-b", None}


def test_a_bad_file_changes_nothing_and_the_command_names_the_entry(
    start: Any, tmp_path: Path
) -> None:
    target = start("target")
    target.register(*NODES)
    target.ok("PUT", "/sources/ci", {"configs": [http_check("kept")]})
    before = target.export()
    bad = json.loads(before)
    bad["sources"]["api:team-a"] = [http_check("new"), http_check("bad", interval_s=0)]
    bad["cordoned"] = ["node-a"]
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(bad), encoding="utf-8")

    run = target.cli("import", str(bad_file))
    piped = target.cli("import", "-", "--mode", "merge", stdin=bad_file.read_bytes())

    for refused in (run, piped):
        assert refused.returncode == 7, refused
        assert refused.stdout == b""
        lines = refused.stderr.decode().splitlines()
        assert lines[0].startswith(
            "error: the dispatcher refused the request (400 invalid_request)"
        )
        assert "  sources.api:team-a[1].interval_s: Input should be greater than or equal to 1" in (
            lines
        )
    assert without_exported_at(target.export()) == without_exported_at(before)
    assert all(not n["cordoned"] for n in target.ok("GET", "")["nodes"])
