"""The dispatcher answers as its OpenAPI document says: schemathesis against a real
``clusterchecks-dispatcher`` process, with auth on and the admin token.

Schemathesis reads ``/v1/api/openapi.json`` from the process and sends generated
requests to every operation (valid ones, invalid ones, without the token, with methods
the path does not take), then a few call sequences. Every built-in check runs: no server
error, statuses, content types, headers and bodies as documented, invalid input refused,
the token required; ``tests/e2e/schemathesis.toml`` turns one check off for five
operations, with its reasons. The seed and the number of examples are fixed, so a
run is the same every time and its length is bounded.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dispatcher.api.routes import ROUTES
from tests.processes import BIN, Proc, dispatcher_argv, free_port, wait_http_ok

pytestmark = pytest.mark.e2e

CONFIG = Path(__file__).with_name("schemathesis.toml")
ADMIN_TOKEN = "conformance-admin-token-0123456789"
MAX_EXAMPLES = 10
"""Per operation and phase; about 600 requests in all, some 20 s on an idle 2-core machine."""
SEED = 20261207
RUN_TIMEOUT_S = 150.0


# The run takes longer than the suite's 60 s default on a busy machine; RUN_TIMEOUT_S
# bounds it (and the process stops either way).
@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_every_reply_conforms_to_the_openapi_document(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Nodes expire 2 s after their last heartbeat: a long poll schemathesis makes on a node
    # it registered (wait_s up to 60 s) ends with that node's expiry, not after a minute.
    argv = dispatcher_argv(port, "--node-expiration-timeout", "2", "--heartbeat-interval", "0.5")
    dispatcher = Proc(
        "dispatcher",
        argv,
        tmp_path / "dispatcher.log",
        {"CLUSTERCHECKS_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    dispatcher.start()
    try:
        wait_http_ok(f"{base}/readyz", timeout_s=20, proc=dispatcher)
        run = subprocess.run(
            [
                str(BIN / "st"), "--no-color", "--config-file", str(CONFIG),
                "run", f"{base}/v1/api/openapi.json",
                "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
                "--max-examples", str(MAX_EXAMPLES),
                "--seed", str(SEED),
                "--generation-database", "none",
                "--workers", "1",
                "--request-timeout", "10",
            ],
            cwd=tmp_path,  # where schemathesis may keep files of its own
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )  # fmt: skip
        alive = dispatcher.alive()
    finally:
        dispatcher.stop(timeout_s=10)

    report = f"{run.stdout[-12000:]}\n{run.stderr[-4000:]}"
    log_tail = dispatcher.output()[-4000:]
    assert run.returncode == 0, f"{report}\n--- dispatcher log tail ---\n{log_tail}"
    assert alive, dispatcher.output()[-4000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert summary is not None, report
    generated, passed = map(int, summary.groups())
    assert generated == passed, report
    assert generated >= 300, report  # every operation was really exercised
    tested = re.search(r"Tested: (\d+)\b", run.stdout)
    assert tested is not None, report
    # Every operation of the table but the document's own URL, which schemathesis reads
    # and leaves out.
    assert int(tested[1]) == len(ROUTES) - 1, report
