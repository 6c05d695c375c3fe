"""The agent's local server: /v1/check-report (Kuberhealthy-compatible), health, metrics."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from dispatcher.common.clock import FakeClock
from dispatcher.common.health import HealthRegistry, Status
from node_agent.metrics import AgentMetrics
from node_agent.reports import Report, RunRegistry
from node_agent.server import MAX_BODY_BYTES, create_app
from node_agent.settings import AgentSettings

ROUTE = "/v1/check-report"
DIGEST = "0123456789abcdef"
RUN = "3e1f0a9b8c7d6e5f3e1f0a9b8c7d6e5f"


@dataclass
class Agent:
    client: TestClient[web.Request, web.Application]
    clock: FakeClock
    runs: RunRegistry
    health: HealthRegistry
    metrics: AgentMetrics

    def open(self, run_id: str = RUN, timeout_s: float = 10.0) -> asyncio.Future[Report]:
        return self.runs.open(run_id, digest=DIGEST, deadline_unix_s=self.clock.time() + timeout_s)

    async def report(
        self,
        body: Any,
        *,
        run_id: str | None = RUN,
        header: str = "X-Run-Id",
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any, str]:
        headers = {"Content-Type": content_type}
        if run_id is not None:
            headers[header] = run_id
        data = raw if raw is not None else json.dumps(body).encode()
        # A stream: aiohttp warns about a bytes body above 1 MiB.
        async with self.client.post(ROUTE, data=io.BytesIO(data), headers=headers) as response:
            text = await response.text()
            assert response.headers.get("X-Request-Id")
            parsed = json.loads(text) if text else None
            return response.status, parsed, response.headers.get("Content-Type", "")


@pytest.fixture
async def agent(aiohttp_client: AiohttpClient) -> Agent:
    clock = FakeClock()
    runs = RunRegistry(clock)
    health = HealthRegistry(clock=clock)
    metrics = AgentMetrics()
    client = await aiohttp_client(create_app(runs=runs, health=health, metrics=metrics))
    return Agent(client=client, clock=clock, runs=runs, health=health, metrics=metrics)


def assert_error(body: Any, content_type: str, code: str) -> str:
    """API.md's error body: {"error": {"code", "message"[, "details"]}}."""
    assert content_type.startswith("application/json")
    assert isinstance(body, dict)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) <= {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"].strip()
    message: str = error["message"]
    return message


async def test_a_current_run_may_report_ok(agent: Agent) -> None:
    reported = agent.open()
    status, body, _ = await agent.report({"ok": True, "errors": []})
    assert status == 200
    assert body == {"accepted": True}
    assert reported.done()
    assert reported.result() == Report(ok=True, errors=[])


async def test_a_current_run_may_report_a_failure(agent: Agent) -> None:
    reported = agent.open()
    status, _, _ = await agent.report({"ok": False, "errors": ["db unreachable"]})
    assert status == 200
    assert reported.result() == Report(ok=False, errors=["db unreachable"])


async def test_ok_true_without_errors_key_is_accepted(agent: Agent) -> None:
    reported = agent.open()
    status, _, _ = await agent.report({"ok": True})
    assert status == 200
    assert reported.result() == Report(ok=True, errors=[])


async def test_kuberhealthy_keys_and_header_are_accepted(agent: Agent) -> None:
    reported = agent.open()
    status, _, _ = await agent.report(
        {"OK": False, "Errors": ["pod did not start"]}, header="kh-run-uuid"
    )
    assert status == 200
    assert reported.result() == Report(ok=False, errors=["pod did not start"])


async def test_an_unknown_run_id_is_gone(agent: Agent) -> None:
    agent.open()
    status, body, content_type = await agent.report({"ok": True}, run_id="f" * 32)
    assert status == 410
    assert_error(body, content_type, "gone")


async def test_a_run_past_its_deadline_is_gone(agent: Agent) -> None:
    reported = agent.open(timeout_s=10)
    agent.clock.advance(9)
    agent.open(run_id="a" * 32, timeout_s=10)
    assert (await agent.report({"ok": True}, run_id="a" * 32))[0] == 200  # still in time
    agent.clock.advance(1.5)
    status, body, content_type = await agent.report({"ok": True})
    assert status == 410
    assert_error(body, content_type, "gone")
    assert not reported.done()


async def test_a_closed_run_is_gone(agent: Agent) -> None:
    agent.open()
    agent.runs.close(RUN)
    status, body, content_type = await agent.report({"ok": True})
    assert status == 410
    assert_error(body, content_type, "gone")


async def test_a_second_report_for_the_same_run_is_refused(agent: Agent) -> None:
    reported = agent.open()
    assert (await agent.report({"ok": True}))[0] == 200
    status, body, content_type = await agent.report({"ok": False, "errors": ["late"]})
    assert status == 410
    assert_error(body, content_type, "gone")
    assert reported.result() == Report(ok=True, errors=[])  # the first verdict stands


@pytest.mark.parametrize(
    "body",
    [
        {"ok": True, "errors": ["but something failed"]},
        {"ok": False, "errors": []},
        {"ok": False},
        {"ok": False, "errors": ["", "   "]},
        {"OK": True, "Errors": ["x"]},
        {"OK": False, "Errors": []},
    ],
)
async def test_a_contradictory_report_is_400(agent: Agent, body: dict[str, Any]) -> None:
    reported = agent.open()
    status, reply, content_type = await agent.report(body)
    assert status == 400
    assert_error(reply, content_type, "invalid_request")
    assert not reported.done()  # nothing recorded: the run may still report properly
    assert (await agent.report({"ok": True}))[0] == 200


@pytest.mark.parametrize(
    "body",
    [
        {"errors": []},
        {"ok": "true", "errors": []},
        {"ok": False, "errors": "a string"},
        {"ok": False, "errors": [1, 2]},
        [{"ok": True}],
        "ok",
    ],
)
async def test_a_malformed_report_is_400(agent: Agent, body: Any) -> None:
    reported = agent.open()
    status, reply, content_type = await agent.report(body)
    assert status == 400
    assert_error(reply, content_type, "invalid_request")
    assert not reported.done()


async def test_a_missing_run_id_is_400(agent: Agent) -> None:
    agent.open()
    status, body, content_type = await agent.report({"ok": True}, run_id=None)
    assert status == 400
    message = assert_error(body, content_type, "invalid_request")
    assert "X-Run-Id" in message


async def test_invalid_json_is_400(agent: Agent) -> None:
    agent.open()
    status, body, content_type = await agent.report(None, raw=b'{"ok": tru')
    assert status == 400
    assert_error(body, content_type, "invalid_json")


async def test_a_body_over_the_limit_is_413_naming_the_real_limit(agent: Agent) -> None:
    reported = agent.open()
    padding = " " * (MAX_BODY_BYTES - len('{"ok": true}'))
    status, body, content_type = await agent.report(None, raw=b'{"ok": true}' + padding.encode())
    assert status == 200  # exactly at the limit: taken
    assert reported.done()
    agent.open(run_id="b" * 32)
    status, body, content_type = await agent.report(
        None, run_id="b" * 32, raw=b'{"ok": true}' + padding.encode() + b" "
    )
    assert status == 413
    message = assert_error(body, content_type, "body_too_large")
    assert message == ("The request body is larger than 1 MiB (1048576 bytes), this agent's limit.")


async def test_a_wrong_content_type_is_415(agent: Agent) -> None:
    agent.open()
    status, body, content_type = await agent.report({"ok": True}, content_type="text/plain")
    assert status == 415
    assert_error(body, content_type, "unsupported_media_type")


async def test_unknown_route_and_wrong_method_use_the_error_body(agent: Agent) -> None:
    async with agent.client.get("/nope") as response:
        assert response.status == 404
        assert_error(await response.json(), response.content_type, "not_found")
    async with agent.client.get(ROUTE) as response:
        assert response.status == 405
        assert_error(await response.json(), response.content_type, "method_not_allowed")


async def test_the_request_id_is_echoed(agent: Agent) -> None:
    async with agent.client.post(
        ROUTE, data=b"{}", headers={"X-Request-Id": "abc-123", "Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert response.headers["X-Request-Id"] == "abc-123"


async def test_healthz_and_readyz_follow_the_components(agent: Agent) -> None:
    agent.health.register("runners")
    agent.health.report("runners", Status.HEALTHY, "3 checks")
    for path in ("/healthz", "/readyz"):
        async with agent.client.get(path) as response:
            assert response.status == 200
            body = await response.json()
            assert body["status"] == "healthy"
            assert body["components"]["runners"]["message"] == "3 checks"
    agent.health.report("runners", Status.UNHEALTHY, "fenced")
    for path in ("/healthz", "/readyz"):
        async with agent.client.get(path) as response:
            assert response.status == 503
            assert (await response.json())["status"] == "unhealthy"


async def test_metrics_are_served_as_prometheus_text(agent: Agent) -> None:
    agent.metrics.checks_running.set(3)
    async with agent.client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert "clusterchecks_agent_checks_running 3.0" in text


async def test_health_components_one_by_one_and_all(agent: Agent) -> None:
    agent.health.register("runners")
    agent.health.register("dispatcher_link")
    agent.health.report("runners", Status.HEALTHY, "3 checks")
    agent.health.report("dispatcher_link", Status.DEGRADED, "retrying", metadata={"url": "x"})

    async with agent.client.get("/v1/api/health/components") as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "degraded"
    assert set(body["components"]) == {"runners", "dispatcher_link"}

    async with agent.client.get("/v1/api/health/components/dispatcher_link") as response:
        assert response.status == 200
        assert await response.json() == {
            "status": "degraded",
            "message": "retrying",
            "metadata": {"url": "x"},
        }
    async with agent.client.get("/v1/api/health/components/nope") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:5006/v1/check-report"),
        ("0.0.0.0", "http://127.0.0.1:5006/v1/check-report"),
        ("::", "http://[::1]:5006/v1/check-report"),
        ("10.1.2.3", "http://10.1.2.3:5006/v1/check-report"),
        ("fd00::7", "http://[fd00::7]:5006/v1/check-report"),
    ],
)
def test_exec_programs_report_to_loopback_when_the_agent_binds_every_address(
    host: str, url: str
) -> None:
    assert AgentSettings(host=host, port=5006).report_url == url
