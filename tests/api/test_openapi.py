"""The OpenAPI document, and the reply bodies checked against the models it names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.api.routes import ROUTES, ROUTES_BY_NAME
from dispatcher.settings import Settings
from tests.api.conftest import API, AUTH, CALLS, Api, ApiFactory, Call, call_id, prepare, send

# Every route of API.md, written out from the contract
# rather than read from the route table, so that a route missing from both is caught.
CONTRACT_ROUTES = (
    ("post", f"{API}/status/{{node}}"),
    ("get", f"{API}/configs/{{node}}"),
    ("post", f"{API}/results/{{node}}"),
    ("put", f"{API}/sources/{{source}}"),
    ("get", f"{API}/sources/{{source}}"),
    ("post", f"{API}/checks"),
    ("delete", f"{API}/checks/{{digest}}"),
    ("get", API),
    ("get", f"{API}/checks"),
    ("get", f"{API}/checks/{{digest}}"),
    ("post", f"{API}/rebalance"),
    ("post", f"{API}/nodes/{{node}}/cordon"),
    ("post", f"{API}/nodes/{{node}}/uncordon"),
    ("post", f"{API}/nodes/{{node}}/drain"),
    ("post", f"{API}/isolate/{{digest}}"),
    ("get", f"{API}/results"),
    ("get", f"{API}/replicas"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/v1/api/health/components"),
    ("get", "/v1/api/health/components/{name}"),
    ("get", "/metrics"),
    ("get", "/v1/api/openapi.json"),
)
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/v1/api/openapi.json"}

REQUEST_MODELS = ("StatusIn", "ResultsIn", "SourcePutIn", "ChecksPostIn", "RebalanceIn")
REPLY_MODELS = (
    "StatusOut",
    "NodeConfigsOut",
    "ResultsOut",
    "SourcePutOut",
    "SourceGetOut",
    "ChecksPostOut",
    "RemovedOut",
    "StateOut",
    "ChecksOut",
    "CheckDetailOut",
    "RebalanceOut",
    "NodeOut",
    "IsolateOut",
    "ResultsPageOut",
    "ReplicasOut",
    "HealthOut",
    "ComponentOut",
    "ErrorOut",
)

# Which route of the table each call of the shared table exercises.
ROUTE_OF_CALL = {
    "status": "node_status",
    "configs": "node_configs",
    "results": "node_results",
    "check_delete_all": "check_delete",
    "cordon": "node_cordon",
    "uncordon": "node_uncordon",
    "drain": "node_drain",
    "results_page": "results",
    "components": "health_components",
    "component": "health_component",
}


@pytest.fixture
async def doc(api: Api) -> dict[str, Any]:
    reply = await api.get("/v1/api/openapi.json")
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json
    assert isinstance(body, dict)
    return body


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def schema_name(ref: str) -> str:
    prefix = "#/components/schemas/"
    assert ref.startswith(prefix), ref
    return ref[len(prefix) :]


def test_the_contract_list_matches_the_route_table() -> None:
    table = {(r.method.lower(), r.path) for r in ROUTES}
    assert table == set(CONTRACT_ROUTES)


async def test_it_is_an_openapi_3_document(doc: dict[str, Any]) -> None:
    assert str(doc["openapi"]).startswith("3.")
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    assert isinstance(doc["servers"][0]["url"], str)


@pytest.mark.parametrize(("method", "path"), CONTRACT_ROUTES)
async def test_every_route_is_described(doc: dict[str, Any], method: str, path: str) -> None:
    operation = doc["paths"][path][method]
    assert operation["summary"]
    assert "200" in operation["responses"]
    if path in PUBLIC_PATHS or path.startswith("/v1/api/health/"):
        assert "security" not in operation
    else:
        assert operation["security"] == [{"bearer": []}]
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        for code in ("401", "403", "503"):
            assert code in operation["responses"], code
    for name in (part[1:-1] for part in path.split("/") if part.startswith("{")):
        params = {(p["name"], p["in"]) for p in operation["parameters"]}
        assert (name, "path") in params


async def test_there_are_no_undocumented_or_invented_paths(doc: dict[str, Any]) -> None:
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert described == set(CONTRACT_ROUTES)


async def test_components_hold_the_request_and_reply_models(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for name in (*REQUEST_MODELS, *REPLY_MODELS, "CheckConfigIn", "CheckResultIn"):
        assert name in schemas, (name, sorted(schemas))
    assert schemas["CheckConfigIn"]["additionalProperties"] is False
    assert set(schemas["CheckConfigIn"]["required"]) == {"name", "instances"}
    assert set(schemas["CheckConfigIn"]["properties"]) == {
        "name",
        "instances",
        "init_config",
        "interval_s",
        "timeout_s",
        "node_selector",
        "weight",
    }
    assert schemas["StatusIn"]["required"] == ["last_change"]
    assert set(schemas["StatusOut"]["properties"]) == {
        "is_up_to_date",
        "epoch",
        "leader",
        "heartbeat_interval_s",
        "node_expiration_timeout_s",
        "warmup",
    }
    error = schemas["ErrorDetail"]
    assert set(error["required"]) == {"code", "message"}


async def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    found = list(refs(doc))
    assert found
    for ref in found:
        assert schema_name(ref) in schemas, ref


@pytest.mark.parametrize("route", [r for r in ROUTES if r.body is not None], ids=lambda r: r.name)
async def test_request_bodies_are_the_models_the_handlers_parse(
    doc: dict[str, Any], route: Any
) -> None:
    operation = doc["paths"][route.path][route.method.lower()]
    body = operation["requestBody"]
    assert body["required"] is (route.name != "rebalance")  # rebalance: body optional
    ref = body["content"]["application/json"]["schema"]["$ref"]
    assert schema_name(ref) == route.body.__name__
    for code in ("400", "413", "415"):
        assert code in operation["responses"], code


@pytest.mark.parametrize("route", [r for r in ROUTES if r.reply is not None], ids=lambda r: r.name)
async def test_replies_are_the_models_the_handlers_send(doc: dict[str, Any], route: Any) -> None:
    operation = doc["paths"][route.path][route.method.lower()]
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_name(ref) == route.reply.__name__
    for code, response in operation["responses"].items():
        if code.startswith(("4", "5")):
            error_ref = response["content"]["application/json"]["schema"]["$ref"]
            assert schema_name(error_ref) == "ErrorOut"


async def test_the_long_poll_and_delete_query_parameters_are_described(
    doc: dict[str, Any],
) -> None:
    configs = doc["paths"][f"{API}/configs/{{node}}"]["get"]
    query = {p["name"]: p for p in configs["parameters"] if p["in"] == "query"}
    assert set(query) == {"since", "wait_s"}
    assert query["wait_s"]["schema"]["maximum"] == 60
    assert "404" in configs["responses"]
    delete = doc["paths"][f"{API}/checks/{{digest}}"]["delete"]
    assert [p["name"] for p in delete["parameters"] if p["in"] == "query"] == ["source"]
    isolate = doc["paths"][f"{API}/isolate/{{digest}}"]["post"]
    assert {"404", "409"} <= set(isolate["responses"])


async def test_the_document_needs_no_token(make_api: ApiFactory) -> None:
    api = await make_api(Settings(auth=AUTH))
    reply = await api.get("/v1/api/openapi.json", token=None)
    assert reply.status == 200
    assert f"{API}/status/{{node}}" in reply.json["paths"]


@pytest.mark.parametrize(
    "call", [c for c in CALLS if c.name not in ("metrics", "openapi")], ids=call_id
)
async def test_every_reply_validates_against_its_documented_model(api: Api, call: Call) -> None:
    route = ROUTES_BY_NAME[ROUTE_OF_CALL.get(call.name, call.name)]
    assert route.reply is not None
    digest = await prepare(api)
    await api.ok("POST", f"{API}/results/node-a", {"results": [_ok_result(digest)]})

    reply = await send(api, call, digest)

    assert reply.status == 200, reply.text
    route.reply.model_validate(reply.json)  # output models forbid extra fields


async def test_error_bodies_validate_against_the_documented_model(api: Api) -> None:
    from dispatcher.wire import ErrorOut

    for reply in (
        await api.get(f"{API}/configs/ghost"),
        await api.post(f"{API}/status/node-a", {"last_change": "x"}),
        await api.post(f"{API}/status/node-a", raw=b"{"),
        await api.request("PATCH", API),
    ):
        ErrorOut.model_validate(reply.json)


def _ok_result(digest: str) -> dict[str, Any]:
    return {
        "digest": digest,
        "run_id": "r1",
        "ok": True,
        "errors": [],
        "started_at": 1.0,
        "duration_s": 0.1,
        "output": "fine",
    }
