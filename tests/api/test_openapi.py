"""The OpenAPI document, and the reply bodies checked against the models it names."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from dispatcher import wire
from dispatcher.api.keys import OPENAPI
from dispatcher.api.routes import ROUTES, ROUTES_BY_NAME, get_state
from dispatcher.api.table import Route
from dispatcher.common.health import Status
from dispatcher.settings import ServerSettings, Settings
from tests.api.conftest import (
    API,
    AUTH,
    CALLS,
    Api,
    ApiFactory,
    Call,
    Reply,
    call_id,
    check,
    prepare,
    send,
)

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
    ("get", f"{API}/checks/{{digest}}/history"),
    ("post", f"{API}/rebalance"),
    ("post", f"{API}/nodes/{{node}}/cordon"),
    ("post", f"{API}/nodes/{{node}}/uncordon"),
    ("post", f"{API}/nodes/{{node}}/drain"),
    ("post", f"{API}/isolate/{{digest}}"),
    ("get", f"{API}/results"),
    ("get", f"{API}/replicas"),
    ("get", f"{API}/export"),
    ("post", f"{API}/import"),
    ("get", f"{API}/overview"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/v1/api/health/components"),
    ("get", "/v1/api/health/components/{name}"),
    ("get", "/metrics"),
    ("get", "/v1/api/openapi.json"),
    # The dashboard: its page and each file it loads, and the redirects to it.
    ("get", "/ui/"),
    ("get", "/ui/app.js"),
    ("get", "/ui/app.css"),
    ("get", "/ui/icon.svg"),
    ("get", "/favicon.ico"),  # the icon, where a browser looks for one
    ("get", "/"),
    ("get", "/ui"),
)
UI_FILES = {"/ui/", "/ui/app.js", "/ui/app.css", "/ui/icon.svg", "/favicon.ico"}
REDIRECTS = {"/", "/ui"}
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/v1/api/openapi.json", *UI_FILES, *REDIRECTS}

REQUEST_MODELS = (
    "StatusIn",
    "ResultsIn",
    "SourcePutIn",
    "ChecksPostIn",
    "RebalanceIn",
    "ImportIn",
)
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
    "HistoryOut",
    "RebalanceOut",
    "NodeOut",
    "IsolateOut",
    "ResultsPageOut",
    "ReplicasOut",
    "ExportOut",
    "ImportOut",
    "OverviewOut",
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


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """The node a local reference (``#/a/b``) points at; fails if there is none."""
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict), (ref, part)
        assert part in node, (ref, part)
        node = node[part]
    return node


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
    assert ("302" if path in REDIRECTS else "200") in operation["responses"]
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
        "send_running_configs",
        "results_interval_s",
    }
    error = schemas["ErrorDetail"]
    assert set(error["required"]) == {"code", "message"}


async def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    found = list(refs(doc))
    assert any(ref.startswith("#/components/schemas/") for ref in found)
    assert any(ref.startswith("#/components/headers/") for ref in found)
    for ref in found:
        assert isinstance(resolve(doc, ref), dict), ref


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
    for status in route.reply_statuses:
        content = operation["responses"][str(status)]["content"]
        assert schema_name(content["application/json"]["schema"]["$ref"]) == route.reply.__name__
    for code, response in operation["responses"].items():
        if code.startswith(("4", "5")) and int(code) not in route.reply_statuses:
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


# The statuses each operation may answer, written out from API.md and README's "Limits
# and timeouts" (not read from the table). Every route with a token: 401, 403; every
# leader-only route: 503 (no leader, or the leader or the store does not answer) and 508;
# a body: 400, 413, 415; a node or source name in the path: 400 when it is not a name.
_LEADER = {401, 403, 503, 508}
# Every route: what the connection layer answers before any route runs (a slow head or
# body 408, too large headers 431, every connection busy 503).
_CONN = {408, 431, 503}
_BODY = {400, 413, 415}
DOCUMENTED_STATUSES: dict[tuple[str, str], set[int]] = {
    ("post", f"{API}/status/{{node}}"): {200, 400, *_LEADER, *_BODY, *_CONN},
    ("get", f"{API}/configs/{{node}}"): {200, 400, 404, *_LEADER, *_CONN},
    ("post", f"{API}/results/{{node}}"): {200, 400, *_LEADER, *_BODY, *_CONN},
    ("put", f"{API}/sources/{{source}}"): {200, 400, 409, *_LEADER, *_BODY, *_CONN},
    ("get", f"{API}/sources/{{source}}"): {200, 400, *_LEADER, *_CONN},
    ("post", f"{API}/checks"): {200, 409, *_LEADER, *_BODY, *_CONN},
    ("delete", f"{API}/checks/{{digest}}"): {200, 400, 404, 409, *_LEADER, *_CONN},
    ("get", API): {200, *_LEADER, *_CONN},
    ("get", f"{API}/checks"): {200, *_LEADER, *_CONN},
    ("get", f"{API}/checks/{{digest}}"): {200, 404, *_LEADER, *_CONN},
    # 400 for a bad ?since= or ?limit=.
    ("get", f"{API}/checks/{{digest}}/history"): {200, 400, 404, *_LEADER, *_CONN},
    ("post", f"{API}/rebalance"): {200, *_LEADER, *_BODY, *_CONN},
    ("post", f"{API}/nodes/{{node}}/cordon"): {200, 400, 404, *_LEADER, *_CONN},
    ("post", f"{API}/nodes/{{node}}/uncordon"): {200, 400, 404, *_LEADER, *_CONN},
    ("post", f"{API}/nodes/{{node}}/drain"): {200, 400, 404, *_LEADER, *_CONN},
    ("post", f"{API}/isolate/{{digest}}"): {200, 404, 409, *_LEADER, *_CONN},
    ("get", f"{API}/results"): {200, *_LEADER, *_CONN},
    ("get", f"{API}/replicas"): {200, *_LEADER, *_CONN},
    ("get", f"{API}/export"): {200, *_LEADER, *_CONN},
    # 400 for a bad ?mode= or ?dry_run= too; 413 also too_many_checks.
    ("post", f"{API}/import"): {200, 400, *_LEADER, *_BODY, *_CONN},
    ("get", "/healthz"): {200, 503, *_CONN},
    ("get", "/readyz"): {200, 503, *_CONN},
    ("get", "/v1/api/health/components"): {200, *_CONN},
    ("get", "/v1/api/health/components/{name}"): {200, 404, *_CONN},
    ("get", "/metrics"): {200, *_CONN},
    ("get", "/v1/api/openapi.json"): {200, *_CONN},
    # 400 for a bad ?q=, ?status=, ?node=, ?source=, ?offset= or ?limit=.
    ("get", f"{API}/overview"): {200, 400, *_LEADER, *_CONN},
    **{("get", path): {200, *_CONN} for path in UI_FILES},
    **{("get", path): {302, *_CONN} for path in REDIRECTS},
}
PATH_PATTERNS = {
    "node": wire.NAME_PATTERN,
    "source": wire.SOURCE_NAME_PATTERN,
    "digest": wire.DIGEST_PATTERN,
    "name": wire.COMPONENT_NAME_PATTERN,
}


def test_the_status_list_covers_every_contract_route() -> None:
    assert set(DOCUMENTED_STATUSES) == set(CONTRACT_ROUTES)


@pytest.mark.parametrize(("method", "path"), CONTRACT_ROUTES)
async def test_every_status_a_route_answers_is_documented(
    doc: dict[str, Any], method: str, path: str
) -> None:
    responses = doc["paths"][path][method]["responses"]
    assert {int(code) for code in responses} == DOCUMENTED_STATUSES[(method, path)]
    for code, response in responses.items():
        assert response["description"], code
        assert response["headers"]["X-Request-Id"] == {"$ref": "#/components/headers/RequestId"}
        if code == "503" and (method, path) not in {("get", "/healthz"), ("get", "/readyz")}:
            # Every 503 with the error body says when to retry.
            retry = resolve(doc, response["headers"]["Retry-After"]["$ref"])
            assert retry["required"] is True


@pytest.mark.parametrize(("method", "path"), CONTRACT_ROUTES)
async def test_every_path_parameter_declares_its_pattern(
    doc: dict[str, Any], method: str, path: str
) -> None:
    names = re.findall(r"{(\w+)}", path)
    params = [p for p in doc["paths"][path][method].get("parameters", []) if p["in"] == "path"]
    assert [p["name"] for p in params] == names
    for param in params:
        assert param["required"] is True
        schema = param["schema"]
        assert schema["type"] == "string"
        assert schema["pattern"] == PATH_PATTERNS[param["name"]]
        assert schema["examples"]
        for example in schema["examples"]:
            assert re.fullmatch(schema["pattern"], example), example


# (documented path, path parameter, value, the status the route answers for it)
_NAME_CASES = [
    (f"{API}/nodes/{{node}}/cordon", "node", "node-a.b_c", 404),
    (f"{API}/nodes/{{node}}/cordon", "node", "n" * 253, 404),
    (f"{API}/nodes/{{node}}/cordon", "node", "n" * 254, 400),
    (f"{API}/nodes/{{node}}/cordon", "node", "a:b", 400),
    (f"{API}/nodes/{{node}}/cordon", "node", "a b", 400),
    (f"{API}/sources/{{source}}", "source", "file:x.yaml", 200),
    (f"{API}/sources/{{source}}", "source", "s" * 254, 400),
    (f"{API}/sources/{{source}}", "source", "s\u00e9", 400),
    (f"{API}/checks/{{digest}}", "digest", "0" * 16, 404),
    (f"{API}/checks/{{digest}}", "digest", "not-a-digest", 404),
    ("/v1/api/health/components/{name}", "name", "store", 200),
    ("/v1/api/health/components/{name}", "name", "Store", 404),
]


@pytest.mark.parametrize("case", _NAME_CASES, ids=lambda case: f"{case[1]}={case[2][:12]}")
async def test_a_path_value_is_refused_as_its_documented_pattern_says(
    api: Api, doc: dict[str, Any], case: tuple[str, str, str, int]
) -> None:
    """A value that matches the documented pattern is never refused as invalid (400);
    one that does not gets a documented 4xx."""
    path, param, value, status = case
    [(method, operation)] = [
        (m, op) for m, op in doc["paths"][path].items() if m in {"get", "post"}
    ]
    [pattern] = [p["schema"]["pattern"] for p in operation["parameters"] if p["name"] == param]

    reply = await api.request(method.upper(), path.replace(f"{{{param}}}", value))

    assert reply.status == status, reply.text
    if re.fullmatch(pattern, value):
        assert reply.status != 400
    else:
        assert 400 <= reply.status < 500
    assert str(reply.status) in operation["responses"]


async def test_errors_that_only_some_states_give_are_documented_with_their_body(
    api: Api, doc: dict[str, Any]
) -> None:
    """Real error replies (the read-only sources' 409, unknown names' 404, an unhealthy
    replica's 503) carry a status and a body the document names for that operation."""
    digest = await prepare(api)
    [dangling] = await api.put_source("elsewhere", [check(4, node_selector={"zone": "none"})])
    replies: list[tuple[str, str, Reply]] = [
        ("put", f"{API}/sources/{{source}}",
         await api.put(f"{API}/sources/file:a.yaml", {"configs": []})),
        ("put", f"{API}/sources/{{source}}",
         await api.put(f"{API}/sources/k8s:default:svc", {"configs": []})),
        ("post", f"{API}/checks",
         await api.post(f"{API}/checks", {"source": "file:a.yaml", "configs": [check(3)]})),
        ("delete", f"{API}/checks/{{digest}}",
         await api.delete(f"{API}/checks/{digest}?source=k8s:default:svc")),
        ("delete", f"{API}/checks/{{digest}}",
         await api.delete(f"{API}/checks/{digest}?source=bad%20name")),
        ("get", f"{API}/configs/{{node}}", await api.get(f"{API}/configs/ghost")),
        ("get", f"{API}/configs/{{node}}", await api.get(f"{API}/configs/node-a?wait_s=61")),
        ("post", f"{API}/isolate/{{digest}}", await api.post(f"{API}/isolate/{dangling}")),
        ("post", f"{API}/nodes/{{node}}/drain", await api.post(f"{API}/nodes/ghost/drain")),
    ]  # fmt: skip
    api.service.health.report("store", Status.UNHEALTHY, "down")
    replies.append(("get", "/readyz", await api.get("/readyz")))

    assert [r.status for _, _, r in replies] == [409, 409, 409, 409, 400, 404, 400, 409, 404, 503]
    for method, path, reply in replies:
        response = doc["paths"][path][method]["responses"].get(str(reply.status))
        assert response is not None, (method, path, reply.status)
        model = response["content"]["application/json"]["schema"]["$ref"]
        getattr(wire, schema_name(model)).model_validate(reply.json)
        if reply.status != 503:
            assert schema_name(model) == "ErrorOut"
            reply.error()  # and the body has API.md's error shape


@pytest.mark.parametrize("call", CALLS, ids=call_id)
async def test_every_reply_has_its_documented_content_type(
    api: Api, doc: dict[str, Any], call: Call
) -> None:
    route = ROUTES_BY_NAME[ROUTE_OF_CALL.get(call.name, call.name)]
    digest = await prepare(api)

    reply = await send(api, call, digest)

    assert reply.status == 200, reply.text
    [media_type] = doc["paths"][route.path][route.method.lower()]["responses"]["200"]["content"]
    assert reply.headers["Content-Type"].partition(";")[0] == media_type
    assert media_type == ("text/plain" if route.name == "metrics" else "application/json")


async def test_the_document_is_built_with_the_app_and_kept_under_its_key(
    make_api: ApiFactory,
) -> None:
    """Each app holds its own document (no cache shared between apps), built from its
    settings before the first request."""
    first = await make_api()
    second = await make_api(
        Settings(server=replace(ServerSettings(), advertise_url="http://dispatcher-1.example:5005"))
    )

    held = [first.service.app[OPENAPI], second.service.app[OPENAPI]]
    served = [await first.get("/v1/api/openapi.json"), await second.get("/v1/api/openapi.json")]

    assert [reply.text.encode() for reply in served] == held
    urls = [json.loads(body)["servers"][0]["url"] for body in held]
    assert urls == [first.service.settings.server.url, "http://dispatcher-1.example:5005"]


def test_a_route_whose_path_names_an_undeclared_parameter_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="bogus"):
        Route("bogus", "GET", f"{API}/bogus/{{bogus}}", get_state, None, "Not a route.")


def test_the_table_has_no_route_special_cased_by_name() -> None:
    """Non-JSON replies say their content type in the table (the document reads it)."""
    assert {r.name: r.media_type for r in ROUTES if r.media_type != "application/json"} == {
        "metrics": "text/plain",
        "ui_index_html": "text/html",
        "ui_app_js": "text/javascript",
        "ui_app_css": "text/css",
        "ui_icon_svg": "image/svg+xml",
        "ui_favicon_ico": "image/svg+xml",
        "ui_root": "text/plain",
        "ui_bare": "text/plain",
    }


# Request bodies at the edges of what the document says, and whether the dispatcher
# takes them: a body the document's schema admits is accepted, and one it refuses is
# refused (the rules that were in the handlers only and not in the document).
_RESULT = {"digest": "0" * 16, "run_id": "r1", "started_at": 1.0, "duration_s": 0.1}
_BODIES = [
    ("status", {"last_change": 0.0, "capacity": 2.0}, True),  # JSON Schema: 2.0 is an integer
    ("status", {"last_change": 0.5}, False),
    ("status", {"last_change": True}, False),
    ("status", {"last_change": -1, "stats": {"not-a-digest": {}}}, False),
    ("status", {"last_change": -1, "stats": {"0" * 16: {"avg_execution_s": 1, "runs": 3.0}}}, True),
    ("results", {"results": [{**_RESULT, "ok": True}]}, True),
    ("results", {"results": [{**_RESULT, "ok": True, "errors": []}]}, True),
    ("results", {"results": [{**_RESULT, "ok": True, "errors": ["x"]}]}, False),
    ("results", {"results": [{**_RESULT, "ok": False}]}, False),
    ("results", {"results": [{**_RESULT, "ok": False, "errors": []}]}, False),
    ("results", {"results": [{**_RESULT, "ok": False, "errors": [" \t"]}]}, False),
    ("results", {"results": [{**_RESULT, "ok": False, "errors": ["", "GET /: 503"]}]}, True),
]


@pytest.mark.parametrize("case", _BODIES, ids=lambda case: json.dumps(case[1])[:60])
async def test_a_body_the_document_admits_is_accepted_and_one_it_refuses_is_refused(
    api: Api, doc: dict[str, Any], case: tuple[str, dict[str, Any], bool]
) -> None:
    # jsonschema_rs comes with schemathesis (pinned in constraints.txt), and is typed.
    import jsonschema_rs

    route, body, admitted = case
    path = f"{API}/{route}/{{node}}"
    ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = {**ref, "components": doc["components"]}
    assert jsonschema_rs.Draft202012Validator(schema).is_valid(body) is admitted

    reply = await api.post(path.format(node="node-a"), body)

    assert reply.status == (200 if admitted else 400), reply.text
