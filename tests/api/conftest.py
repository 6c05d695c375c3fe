"""Fixtures for the HTTP API tests: a dispatcher app on aiohttp's test client.

Every app is built by ``dispatcher.service.build`` on a fake clock (time moves only when
a test says so), so state snapshots compare exactly and expiry is driven by hand.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from typing import Any, Protocol

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy
from pytest_aiohttp import AiohttpClient

from dispatcher.api.app import create_app
from dispatcher.common.clock import Clock, FakeClock
from dispatcher.common.health import HealthRegistry, Status
from dispatcher.election.base import LeaderInfo
from dispatcher.engine import Dispatcher
from dispatcher.metrics import DispatcherMetrics
from dispatcher.service import DispatcherService, build
from dispatcher.settings import AuthSettings, Settings, StoreSettings

API = "/v1/api/clusterchecks"
NODE_TOKEN = "node-token-0123456789"
SOURCE_TOKEN = "source-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"
AUTH = AuthSettings(node_token=NODE_TOKEN, source_token=SOURCE_TOKEN, admin_token=ADMIN_TOKEN)
IDENTITY = "dispatcher-test"
MIB = 1024 * 1024

ERROR_CODES_BY_STATUS: dict[int, set[str]] = {
    400: {"invalid_json", "invalid_request"},
    401: {"unauthorized"},
    403: {"forbidden"},
    404: {"unknown_node", "unknown_check", "not_found"},
    405: {"method_not_allowed"},
    408: {"request_timeout"},
    409: {"conflict", "not_dispatched", "no_other_node"},
    410: {"gone"},
    413: {"body_too_large", "too_many_checks"},
    415: {"unsupported_media_type"},
    431: {"headers_too_large"},
    503: {"no_leader", "store_unavailable", "unavailable"},
    508: {"loop_detected"},
}


class _Default:
    """Marks an argument left out (so that ``None`` can mean "no token", "null body")."""


DEFAULT: Any = _Default()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    def error(self) -> dict[str, Any]:
        """The error object, after checking that the body has API.md's error shape."""
        assert 400 <= self.status < 600, (self.status, self.text)
        assert self.headers.get("Content-Type", "").startswith("application/json"), self.headers
        body = self.json
        assert isinstance(body, dict), body
        assert set(body) == {"error"}, body
        error = body["error"]
        assert isinstance(error, dict), error
        assert set(error) <= {"code", "message", "details"}, error
        assert isinstance(error["code"], str), error
        assert error["code"] in ERROR_CODES_BY_STATUS.get(self.status, set()), (
            self.status,
            error["code"],
        )
        assert isinstance(error["message"], str), error
        assert error["message"].strip(), error
        if "details" in error:
            assert isinstance(error["details"], dict), error
        return error

    def code(self) -> str:
        code = self.error()["code"]
        assert isinstance(code, str)
        return code

    def field_paths(self) -> list[str]:
        """The bad field paths listed by a 400 invalid_request."""
        error = self.error()
        assert error["code"] == "invalid_request", error
        fields = error["details"]["fields"]
        assert isinstance(fields, list), error
        assert fields, error
        return [str(f["path"]) for f in fields]


class Client:
    """A thin client: JSON bodies, a default bearer token, replies read eagerly."""

    def __init__(
        self, client: TestClient[web.Request, web.Application], token: str | None = None
    ) -> None:
        self.client = client
        self.token = token

    async def request(
        self,
        method: str,
        path: str,
        body: Any = DEFAULT,
        *,
        raw: bytes | None = None,
        content_type: str | None = "application/json",
        token: Any = DEFAULT,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent: dict[str, str] = dict(headers or {})
        token = self.token if token is DEFAULT else token
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data: bytes | None = raw
        if body is not DEFAULT:
            data = json.dumps(body).encode()
        if data is not None and content_type is not None:
            sent["Content-Type"] = content_type
        payload: bytes | io.BytesIO | None = data
        if data is not None and len(data) > MIB:
            payload = io.BytesIO(data)  # aiohttp warns on large raw bytes
        async with self.client.request(method, path, data=payload, headers=sent) as response:
            text = await response.text()
            return Reply(status=response.status, headers=response.headers, text=text)

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, body: Any = DEFAULT, **kwargs: Any) -> Reply:
        return await self.request("POST", path, body, **kwargs)

    async def put(self, path: str, body: Any = DEFAULT, **kwargs: Any) -> Reply:
        return await self.request("PUT", path, body, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("DELETE", path, **kwargs)


class Api(Client):
    """A client of a dispatcher built by ``service.build``, with steps that must succeed."""

    def __init__(
        self,
        client: TestClient[web.Request, web.Application],
        service: DispatcherService,
        token: str | None = None,
    ) -> None:
        super().__init__(client, token)
        self.service = service

    async def ok(self, method: str, path: str, body: Any = DEFAULT, **kwargs: Any) -> Any:
        reply = await self.request(method, path, body, **kwargs)
        assert reply.status == 200, (method, path, reply.status, reply.text)
        return reply.json

    async def heartbeat(self, node: str, last_change: int = -1, **fields: Any) -> Any:
        return await self.ok(
            "POST", f"{API}/status/{node}", {"last_change": last_change, **fields}, token=ADMIN
        )

    async def put_source(self, source: str, configs: list[dict[str, Any]]) -> list[str]:
        body = await self.ok("PUT", f"{API}/sources/{source}", {"configs": configs}, token=ADMIN)
        digests = body["digests"]
        assert isinstance(digests, list)
        return [str(d) for d in digests]

    async def configs(self, node: str) -> Any:
        return await self.ok("GET", f"{API}/configs/{node}", token=ADMIN)

    async def state(self) -> Any:
        return await self.ok("GET", API, token=ADMIN)

    async def check(self, digest: str) -> Any:
        return await self.ok("GET", f"{API}/checks/{digest}", token=ADMIN)

    async def node(self, name: str) -> Any:
        nodes = {n["name"]: n for n in (await self.state())["nodes"]}
        return nodes.get(name)

    async def placement(self) -> dict[str, str | None]:
        checks = (await self.ok("GET", f"{API}/checks", token=ADMIN))["checks"]
        return {c["digest"]: c["node"] for c in checks}

    async def snapshot(self) -> dict[str, Any]:
        """Everything the API shows of the state (the fake clock keeps ages still)."""
        return {
            "state": await self.state(),
            "checks": await self.ok("GET", f"{API}/checks", token=ADMIN),
            "results": await self.ok("GET", f"{API}/results", token=ADMIN),
        }


ADMIN: Any = DEFAULT
"""Used by the helper steps: the Api's own token (the admin token when auth is on)."""


def check(n: int = 0, **fields: Any) -> dict[str, Any]:
    """A valid CheckConfigIn, distinct per ``n``."""
    return {"name": "http", "instances": [{"url": f"http://svc-{n}.default.svc/healthz"}], **fields}


def result(digest: str, *, ok: bool = True, **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "digest": digest,
        "run_id": f"run-{digest[:6]}",
        "ok": ok,
        "errors": [] if ok else ["GET http://shop/healthz: 503"],
        "started_at": 1_763_700_000.5,
        "duration_s": 0.21,
        "output": "",
    }
    item.update(fields)
    return item


class ApiFactory(Protocol):
    async def __call__(
        self,
        settings: Settings | None = None,
        *,
        token: str | None = None,
        clock: Clock | None = None,
    ) -> Api: ...


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_api(aiohttp_client: AiohttpClient, clock: FakeClock) -> ApiFactory:
    fake_clock = clock

    async def make(
        settings: Settings | None = None,
        *,
        token: str | None = None,
        clock: Clock | None = None,
    ) -> Api:
        settings = settings or Settings()
        if settings.store.backend == "sqlite":
            # The API tests run on the memory store (the default, sqlite, would keep its
            # file in the working directory); the sqlite store has tests of its own.
            settings = replace(settings, store=StoreSettings(backend="memory"))
        settings = replace(settings, server=replace(settings.server, identity=IDENTITY))
        service = build(settings, clock=clock or fake_clock)
        # What ``serve`` reports once its port is open; the test client opens it here.
        service.health.report("api", Status.HEALTHY, "test client")
        service.health.report("dispatch_loop", Status.HEALTHY, "ticked by the tests")
        client = await aiohttp_client(service.app)
        return Api(client, service, token)

    return make


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    """A dispatcher without auth (loopback), on the fake clock."""
    return await make_api()


@pytest.fixture
async def auth_api(make_api: ApiFactory) -> Api:
    """A dispatcher with all three tokens set; the client uses the admin token."""
    return await make_api(Settings(auth=AUTH), token=ADMIN_TOKEN)


# --------------------------------------------- one call of every route


@dataclass(frozen=True)
class Call:
    """One request of API.md that succeeds on the state ``prepare`` makes."""

    name: str
    method: str
    path: str  # ``{digest}`` is the prepared check's digest
    role: str | None  # None: public
    body: Any = DEFAULT


CALLS: tuple[Call, ...] = (
    Call("status", "POST", f"{API}/status/node-a", "node", {"last_change": -1}),
    Call("configs", "GET", f"{API}/configs/node-a", "node"),
    Call("results", "POST", f"{API}/results/node-a", "node", {"results": []}),
    Call("source_put", "PUT", f"{API}/sources/ci", "source", {"configs": [check(0)]}),
    Call("source_get", "GET", f"{API}/sources/ci", "source"),
    Call("checks_add", "POST", f"{API}/checks", "source", {"source": "ci", "configs": [check(1)]}),
    Call("check_delete", "DELETE", f"{API}/checks/{{digest}}?source=ci", "source"),
    Call("state", "GET", API, "admin"),
    Call("checks_list", "GET", f"{API}/checks", "admin"),
    Call("check_get", "GET", f"{API}/checks/{{digest}}", "admin"),
    Call("check_history", "GET", f"{API}/checks/{{digest}}/history?limit=10", "admin"),
    Call("check_delete_all", "DELETE", f"{API}/checks/{{digest}}", "admin"),
    Call("rebalance", "POST", f"{API}/rebalance", "admin", {"force": False, "dry_run": False}),
    Call("cordon", "POST", f"{API}/nodes/node-a/cordon", "admin"),
    Call("uncordon", "POST", f"{API}/nodes/node-a/uncordon", "admin"),
    Call("drain", "POST", f"{API}/nodes/node-a/drain", "admin"),
    Call("isolate", "POST", f"{API}/isolate/{{digest}}", "admin"),
    Call("results_page", "GET", f"{API}/results", "admin"),
    Call("replicas", "GET", f"{API}/replicas", "admin"),
    Call("state_export", "GET", f"{API}/export", "admin"),
    Call(
        "state_import",
        "POST",
        f"{API}/import?mode=merge",
        "admin",
        {"format": "clusterchecks-export", "version": 1, "sources": {"ci": [check(0)]}},
    ),
    Call("healthz", "GET", "/healthz", None),
    Call("readyz", "GET", "/readyz", None),
    Call("components", "GET", "/v1/api/health/components", None),
    Call("component", "GET", "/v1/api/health/components/store", None),
    Call("metrics", "GET", "/metrics", None),
    Call("openapi", "GET", "/v1/api/openapi.json", None),
)
PROTECTED = tuple(c for c in CALLS if c.role is not None)
PUBLIC = tuple(c for c in CALLS if c.role is None)
TOKENS = {"node": NODE_TOKEN, "source": SOURCE_TOKEN, "admin": ADMIN_TOKEN}


async def prepare(api: Api) -> str:
    """node-a registered, source ci holding one check placed on node-a."""
    await api.heartbeat("node-a", 0)
    [digest] = await api.put_source("ci", [check(0)])
    return digest


async def send(client: Client, call: Call, digest: str = "0" * 32, **kwargs: Any) -> Reply:
    body = DEFAULT if "raw" in kwargs else call.body
    return await client.request(call.method, call.path.format(digest=digest), body, **kwargs)


def call_id(call: Call) -> str:
    return call.name


# -------------------------------------------------------------- followers


class Follower:
    """A replica that is not the leader and knows ``known`` as the leader (or none)."""

    def __init__(self, known: LeaderInfo | None = None) -> None:
        self.known = known

    @property
    def identity(self) -> str:
        return "follower-1"

    def is_leader(self) -> bool:
        return False

    def leader(self) -> LeaderInfo | None:
        return self.known


async def follower_client(
    aiohttp_client: AiohttpClient,
    known: LeaderInfo | None = None,
    *,
    settings: Settings | None = None,
) -> Client:
    """The API of a follower replica that knows ``known`` as the leader (with the
    tokens of ``AUTH`` unless ``settings`` say otherwise): what it does not answer
    itself, it forwards there."""
    settings = settings if settings is not None else Settings(auth=AUTH)
    clock = FakeClock()
    health = HealthRegistry(clock=clock)
    for component in ("election", "store"):
        health.register(component)
        health.report(component, Status.HEALTHY, "following")
    app = create_app(
        settings=settings,
        dispatcher=Dispatcher(settings=settings.dispatch, clock=clock),
        leadership=Follower(known),
        health=health,
        metrics=DispatcherMetrics(),
        clock=clock,
    )
    return Client(await aiohttp_client(app))
