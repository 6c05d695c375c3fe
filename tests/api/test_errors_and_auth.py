"""The error contract, request ids, the leader header, auth and leadership."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient
from structlog.testing import capture_logs

from dispatcher.election.base import LeaderInfo
from dispatcher.settings import AuthSettings, Settings
from tests.api.conftest import (
    ADMIN_TOKEN,
    API,
    AUTH,
    CALLS,
    DEFAULT,
    IDENTITY,
    MIB,
    NODE_TOKEN,
    PROTECTED,
    PUBLIC,
    SOURCE_TOKEN,
    TOKENS,
    Api,
    ApiFactory,
    Call,
    call_id,
    check,
    follower_client,
    prepare,
    send,
)

# ------------------------------------------------------------ every route


@pytest.mark.parametrize("call", CALLS, ids=call_id)
async def test_every_route_of_the_contract_answers_200(api: Api, call: Call) -> None:
    digest = await prepare(api)
    reply = await send(api, call, digest)
    assert reply.status == 200, reply.text
    assert reply.headers["X-Request-Id"]
    assert reply.headers["X-Clusterchecks-Leader"] == IDENTITY


@pytest.mark.parametrize("call", [c for c in CALLS if c.role in ("node", "source")], ids=call_id)
async def test_every_node_and_source_reply_carries_the_epoch(api: Api, call: Call) -> None:
    """API.md, Leadership: every successful reply of a node-agent or config-source route
    carries ``epoch``."""
    digest = await prepare(api)

    reply = await send(api, call, digest)

    assert reply.status == 200, reply.text
    assert reply.json.get("epoch") == api.service.dispatcher.epoch, reply.text


# ------------------------------------------------------------ bad bodies

BODY_CALLS = tuple(c for c in CALLS if c.body is not DEFAULT)


BAD_BODIES = (
    # (name, raw body, content type, status, code)
    ("cut", b'{"last_change": ', "application/json", 400, "invalid_json"),
    ("single-quotes", b"{'a': 1}", "application/json", 400, "invalid_json"),
    ("nan", b'{"a": NaN}', "application/json", 400, "invalid_json"),
    ("not-utf8", b'"\xff\xfe"', "application/json", 400, "invalid_json"),
    ("two-documents", b"{} {}", "application/json", 400, "invalid_json"),
    ("deep", b"[" * 5000, "application/json", 400, "invalid_json"),
    ("array", b"[]", "application/json", 400, "invalid_request"),
    ("null", b"null", "application/json", 400, "invalid_request"),
    ("number", b"42", "application/json", 400, "invalid_request"),
    ("unknown-field", b'{"zz": 1}', "application/json", 400, "invalid_request"),
    ("text-plain", b"{}", "text/plain", 415, "unsupported_media_type"),
    ("form", b"a=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("no-content-type", b"{}", None, 415, "unsupported_media_type"),
)


@pytest.mark.parametrize("call", BODY_CALLS, ids=call_id)
async def test_a_bad_body_gets_its_4xx_and_changes_nothing(api: Api, call: Call) -> None:
    digest = await prepare(api)
    before = await api.snapshot()
    wrong: list[tuple[str, int, str]] = []

    for name, raw, content_type, status, code in BAD_BODIES:
        reply = await send(api, call, digest, raw=raw, content_type=content_type)
        if (reply.status, reply.code() if reply.status >= 400 else "") != (status, code):
            wrong.append((name, reply.status, reply.text))

    assert wrong == []
    assert await api.snapshot() == before


async def test_unknown_fields_are_named_in_details(api: Api) -> None:
    reply = await api.post(f"{API}/status/node-a", {"last_change": 0, "mood": "happy"})

    assert reply.status == 400
    assert reply.field_paths() == ["mood"]
    assert reply.error()["details"]["fields"][0]["message"] == "unknown field"
    assert "mood" in reply.error()["message"]


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        pytest.param({}, ["last_change"], id="missing"),
        pytest.param({"last_change": -2}, ["last_change"], id="below-minus-one"),
        pytest.param({"last_change": "3"}, ["last_change"], id="string"),
        pytest.param({"last_change": 1.5}, ["last_change"], id="float"),
        pytest.param({"last_change": 0, "capacity": 0}, ["capacity"], id="capacity-zero"),
        pytest.param({"last_change": 0, "labels": {"a": 1}}, ["labels.a"], id="label-value"),
        pytest.param({"last_change": 0, "labels": []}, ["labels"], id="labels-list"),
        pytest.param({"last_change": 0, "running": ["XYZ"]}, ["running.0"], id="running"),
        pytest.param({"last_change": 0, "leaving": "yes"}, ["leaving"], id="leaving"),
        pytest.param(
            {"last_change": 0, "stats": {"0" * 32: {"runs": 1}}},
            ["stats", "avg_execution_s"],
            id="stats",
        ),
        pytest.param(
            {"last_change": "x", "capacity": -1, "surprise": True},
            ["last_change", "capacity", "surprise"],
            id="several",
        ),
    ],
)
async def test_invalid_status_bodies_list_the_bad_paths_and_register_nothing(
    api: Api, body: dict[str, Any], paths: list[str]
) -> None:
    reply = await api.post(f"{API}/status/node-a", body)

    assert reply.status == 400, reply.text
    listed = " ".join(reply.field_paths())
    for path in paths:
        assert path in listed, (path, listed)
    assert (await api.state())["nodes"] == []


@pytest.mark.parametrize(
    # The import takes a whole export: its own, larger limit (tests/api/test_transfer.py).
    "call",
    [c for c in BODY_CALLS if c.name != "state_import"],
    ids=call_id,
)
async def test_a_body_above_4_MiB_is_413_body_too_large(api: Api, call: Call) -> None:
    digest = await prepare(api)
    before = await api.snapshot()
    raw = b'{"x": "' + b"a" * (4 * MIB) + b'"}'

    reply = await send(api, call, digest, raw=raw)

    assert reply.status == 413, reply.text[:200]
    assert reply.code() == "body_too_large"
    assert reply.headers["X-Request-Id"]
    assert await api.snapshot() == before


async def test_a_body_of_exactly_4_MiB_is_accepted(api: Api) -> None:
    head = b'{"last_change": -1}'
    raw = head + b" " * (4 * MIB - len(head))
    assert len(raw) == 4 * MIB

    reply = await api.post(f"{API}/status/node-a", raw=raw)

    assert reply.status == 200, reply.text
    over = await api.post(f"{API}/status/node-b", raw=raw + b" ")
    assert over.status == 413
    assert over.code() == "body_too_large"


async def test_a_json_content_type_with_a_charset_is_accepted(api: Api) -> None:
    reply = await api.post(
        f"{API}/status/node-a",
        raw=b'{"last_change": 0}',
        content_type="application/json; charset=utf-8",
    )
    assert reply.status == 200, reply.text


async def test_a_missing_body_is_a_4xx(api: Api) -> None:
    reply = await api.post(f"{API}/status/node-a")
    assert reply.status in (400, 415)
    reply.error()
    assert (await api.state())["nodes"] == []


# ---------------------------------------------------------- paths, methods


@pytest.mark.parametrize(
    "path",
    ["/nope", f"{API}/bogus", f"{API}/nodes/node-a/explode", "/v1/api", f"{API}/status"],
)
async def test_an_unknown_path_is_404_not_found(api: Api, path: str) -> None:
    reply = await api.get(path)
    assert reply.status == 404
    assert reply.code() == "not_found"
    assert reply.headers["X-Request-Id"]


async def test_an_unknown_health_component_is_404_not_found(api: Api) -> None:
    reply = await api.get("/v1/api/health/components/bogus")
    assert reply.status == 404
    assert reply.code() == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"{API}/status/node-a"),
        ("PUT", f"{API}/status/node-a"),
        ("POST", f"{API}/configs/node-a"),
        ("GET", f"{API}/results/node-a"),
        ("POST", f"{API}/sources/ci"),
        ("PATCH", f"{API}/sources/ci"),
        ("PUT", f"{API}/checks"),
        ("POST", f"{API}/checks/{'0' * 32}"),
        ("DELETE", API),
        ("GET", f"{API}/rebalance"),
        ("GET", f"{API}/nodes/node-a/cordon"),
        ("DELETE", f"{API}/isolate/{'0' * 32}"),
        ("POST", f"{API}/results"),
        ("POST", "/healthz"),
        ("PUT", "/metrics"),
        ("POST", "/v1/api/openapi.json"),
    ],
)
async def test_a_wrong_method_is_405_method_not_allowed(
    auth_api: Api, method: str, path: str
) -> None:
    reply = await auth_api.request(method, path, token=None)
    assert reply.status == 405, reply.text
    assert reply.code() == "method_not_allowed"
    assert method in reply.error()["message"]


NAMED_ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("POST", f"{API}/status/{{name}}", {"last_change": 0}),
    ("GET", f"{API}/configs/{{name}}", DEFAULT),
    ("POST", f"{API}/results/{{name}}", {"results": []}),
    ("PUT", f"{API}/sources/{{name}}", {"configs": [check(9)]}),
    ("GET", f"{API}/sources/{{name}}", DEFAULT),
    ("POST", f"{API}/nodes/{{name}}/cordon", DEFAULT),
    ("POST", f"{API}/nodes/{{name}}/uncordon", DEFAULT),
    ("POST", f"{API}/nodes/{{name}}/drain", DEFAULT),
)
NAMED_IDS = [f"{m}-{p.removeprefix(API)}" for m, p, _ in NAMED_ROUTES]
BAD_NAMES = ("a" * 254, "a%20b", "caf%C3%A9", "node%0A", "a%3Ab", "%00", "%E2%80%8B")


@pytest.mark.parametrize(("method", "path", "body"), NAMED_ROUTES, ids=NAMED_IDS)
async def test_a_bad_name_in_the_path_is_400_and_changes_nothing(
    api: Api, method: str, path: str, body: Any
) -> None:
    await prepare(api)
    before = await api.snapshot()
    wrong: list[tuple[str, int, str]] = []

    # Source names may also hold ':' (the dispatcher's own sources are file:<name>).
    names = [n for n in BAD_NAMES if not ("/sources/" in path and n == "a%3Ab")]
    for name in names:
        reply = await api.request(method, path.format(name=name), body)
        if reply.status != 400 or reply.code() != "invalid_request":
            wrong.append((name, reply.status, reply.text))

    assert wrong == []
    assert await api.snapshot() == before


@pytest.mark.parametrize(("method", "path", "body"), NAMED_ROUTES[:5], ids=NAMED_IDS[:5])
async def test_a_name_of_253_characters_is_fine(
    api: Api, method: str, path: str, body: Any
) -> None:
    name = "n" * 250 + "._-"
    await api.heartbeat(name, 0)
    reply = await api.request(method, path.format(name=name), body)
    assert reply.status == 200, reply.text


DIGEST_CALLS = (
    ("GET", f"{API}/checks/{{digest}}"),
    ("DELETE", f"{API}/checks/{{digest}}?source=ci"),
    ("DELETE", f"{API}/checks/{{digest}}"),
    ("POST", f"{API}/isolate/{{digest}}"),
)


DIGEST_VARIANTS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("well-formed-unknown", lambda d: "f" * len(d)),
    ("upper-case-of-a-held-one", lambda d: d.upper()),
    ("held-one-plus-a-char", lambda d: d + "0"),
    ("held-one-minus-a-char", lambda d: d[:-1]),
    ("malformed", lambda d: "not-a-digest"),
    ("space", lambda d: "%20"),
    ("5000-chars", lambda d: "g" * 5000),
)


@pytest.mark.parametrize(("method", "path"), DIGEST_CALLS, ids=lambda v: str(v)[-30:])
async def test_a_digest_not_held_is_404_unknown_check(api: Api, method: str, path: str) -> None:
    digest = await prepare(api)
    before = await api.snapshot()
    wrong: list[tuple[str, int, str]] = []

    for name, variant in DIGEST_VARIANTS:
        reply = await api.request(method, path.format(digest=variant(digest)))
        if reply.status != 404 or reply.code() != "unknown_check":
            wrong.append((name, reply.status, reply.text[:200]))

    assert wrong == []
    assert await api.snapshot() == before


JUNK_BODIES = (
    b"",
    b"{",
    b"[]",
    b"null",
    b'{"last_change": 0, "configs": [], "results": [], "source": "ci"}',
    b'{"configs": [{"name": "http", "instances": [{"n": 1e308}], "init_config": {"a": [[[]]]}}]}',
    b'{"configs": [{"name": "http", "instances": [{"n": 18446744073709551616}]}]}',
    b'{"configs": [{"name": "http", "instances": [{"k": "\\u0000\\ud83d\\ude00"}]}]}',
    b'{"results": [{"digest": "' + b"0" * 32 + b'", "run_id": "r", "ok": false, '
    b'"errors": ["x"], "started_at": 1e300, "duration_s": 1e300, "output": "\\u0000"}]}',
    b'{"last_change": 9223372036854775807, "labels": {"k": ""}, "capacity": 1000000, '
    b'"running": [], "stats": {}, "leaving": false}',
    b'{"last_change": 9223372036854775808}',
    bytes(range(256)),
)
JUNK_QUERIES = ("", "?since=x&wait_s=y&source=%00&x=1")


@pytest.mark.parametrize("call", CALLS, ids=call_id)
async def test_no_bad_input_gets_a_500(api: Api, call: Call) -> None:
    digest = await prepare(api)
    for query in JUNK_QUERIES:
        for raw in JUNK_BODIES:
            path = call.path.format(digest=digest).split("?")[0] + query
            reply = await api.request(call.method, path, raw=raw)
            assert reply.status < 500, (raw, reply.text)
            if reply.status >= 400:
                reply.error()


# -------------------------------------------------- request ids, leader header


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", API, DEFAULT),
        ("POST", f"{API}/status/node-a", {"last_change": "x"}),
        ("GET", f"{API}/configs/ghost", DEFAULT),
        ("GET", "/nope", DEFAULT),
        ("DELETE", "/healthz", DEFAULT),
        ("GET", "/healthz", DEFAULT),
        ("GET", "/metrics", DEFAULT),
        ("GET", "/v1/api/openapi.json", DEFAULT),
    ],
)
async def test_every_response_has_a_request_id_and_the_leader(
    api: Api, method: str, path: str, body: Any
) -> None:
    first = await api.request(method, path, body)
    second = await api.request(method, path, body)
    echoed = await api.request(method, path, body, headers={"X-Request-Id": "abc-123.X:y_z"})

    for reply in (first, second, echoed):
        assert reply.headers["X-Clusterchecks-Leader"] == IDENTITY
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", reply.headers["X-Request-Id"])
    assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]
    assert echoed.headers["X-Request-Id"] == "abc-123.X:y_z"


@pytest.mark.parametrize(
    "incoming", ["has space", "x" * 129, "caf\u00e9", "a\tb", "<script>", "a,b"]
)
async def test_an_insane_request_id_is_replaced(api: Api, incoming: str) -> None:
    reply = await api.get(API, headers={"X-Request-Id": incoming})
    assert reply.status == 200
    replaced = reply.headers["X-Request-Id"]
    assert replaced
    assert replaced != incoming
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", replaced)


async def test_a_413_and_a_405_carry_the_request_id_too(api: Api) -> None:
    big = await api.post(
        f"{API}/status/node-a", raw=b" " * (4 * MIB + 1), headers={"X-Request-Id": "req-413"}
    )
    wrong = await api.request("PATCH", API, headers={"X-Request-Id": "req-405"})
    assert (big.status, big.headers["X-Request-Id"]) == (413, "req-413")
    assert (wrong.status, wrong.headers["X-Request-Id"]) == (405, "req-405")


# ------------------------------------------------------------------- auth


DENIED_HEADERS = (
    # (who, Authorization header or None)
    ("nobody", None),
    ("wrong-token", "Bearer not-a-token"),
    ("empty-bearer", "Bearer "),
    ("basic-scheme", f"Basic {ADMIN_TOKEN}"),
    ("bare-token", ADMIN_TOKEN),
    ("admin-token-prefix", f"Bearer {ADMIN_TOKEN[:-1]}"),
    ("admin-token-longer", f"Bearer {ADMIN_TOKEN}x"),
)


@pytest.mark.parametrize("call", PROTECTED, ids=call_id)
async def test_auth_matrix(make_api: ApiFactory, call: Call) -> None:
    callers = [*DENIED_HEADERS, *((role, f"Bearer {token}") for role, token in TOKENS.items())]
    expected = {
        who: (200 if who in ("admin", call.role) else 403) if who in TOKENS else 401
        for who, _ in callers
    }
    denied = await make_api(Settings(auth=AUTH), token=ADMIN_TOKEN)
    digest = await prepare(denied)
    before = await denied.snapshot()
    got: dict[str, int] = {}

    for who, header in callers:
        api = denied
        if expected[who] == 200:
            # A fresh dispatcher for each allowed caller: the call may change the state.
            api = await make_api(Settings(auth=AUTH), token=ADMIN_TOKEN)
            digest = await prepare(api)
        headers = {"Authorization": header} if header is not None else {}
        reply = await send(api, call, digest, token=None, headers=headers)
        got[who] = reply.status
        if reply.status in (401, 403):
            assert reply.code() == {401: "unauthorized", 403: "forbidden"}[reply.status]

    assert got == expected
    assert await denied.snapshot() == before  # no refused call changed anything


@pytest.mark.parametrize("call", PUBLIC, ids=call_id)
@pytest.mark.parametrize("header", [None, "Bearer not-a-token", f"Bearer {NODE_TOKEN}"])
async def test_public_routes_need_no_token(auth_api: Api, call: Call, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    reply = await send(auth_api, call, token=None, headers=headers)
    assert reply.status == 200, reply.text


@pytest.mark.parametrize(
    ("call_name", "token", "expected"),
    [
        # No node token is set: the node routes take only the admin token.
        ("status", None, 401),
        ("status", "node-token-0123456789", 401),
        ("status", SOURCE_TOKEN, 403),
        ("status", ADMIN_TOKEN, 200),
        ("configs", SOURCE_TOKEN, 403),
        ("configs", ADMIN_TOKEN, 200),
        ("source_get", SOURCE_TOKEN, 200),
        ("state", SOURCE_TOKEN, 403),
    ],
)
async def test_a_role_whose_token_is_unset_takes_only_the_admin_token(
    make_api: ApiFactory, call_name: str, token: str | None, expected: int
) -> None:
    auth = AuthSettings(source_token=SOURCE_TOKEN, admin_token=ADMIN_TOKEN)
    api = await make_api(Settings(auth=auth), token=ADMIN_TOKEN)
    digest = await prepare(api)
    call = next(c for c in CALLS if c.name == call_name)

    reply = await send(api, call, digest, token=token)

    assert reply.status == expected, reply.text


async def test_an_empty_token_never_authenticates(make_api: ApiFactory) -> None:
    auth = AuthSettings(node_token="", source_token=SOURCE_TOKEN, admin_token=ADMIN_TOKEN)
    api = await make_api(Settings(auth=auth), token=ADMIN_TOKEN)

    reply = await api.request(
        "POST", f"{API}/status/node-a", {"last_change": 0}, token=None,
        headers={"Authorization": "Bearer  "},
    )  # fmt: skip

    assert reply.status == 401
    assert (await api.state())["nodes"] == []


# ------------------------------------------------------------- leadership


LEADER_ONLY = PROTECTED


def wrong_role(call: Call) -> str:
    return SOURCE_TOKEN if call.role == "node" else NODE_TOKEN


@pytest.mark.parametrize("call", LEADER_ONLY, ids=call_id)
async def test_without_a_leader_auth_comes_first_then_503_no_leader(
    aiohttp_client: AiohttpClient, call: Call
) -> None:
    client = await follower_client(aiohttp_client)

    missing = await send(client, call)
    wrong = await send(client, call, token="not-a-token")
    forbidden = await send(client, call, token=wrong_role(call))
    valid = await send(client, call, token=TOKENS[str(call.role)])

    assert (missing.status, missing.code()) == (401, "unauthorized")
    assert (wrong.status, wrong.code()) == (401, "unauthorized")
    assert (forbidden.status, forbidden.code()) == (403, "forbidden")
    assert (valid.status, valid.code()) == (503, "no_leader")
    retry_after = valid.headers["Retry-After"]
    assert retry_after.isdigit()
    assert int(retry_after) >= 1
    for reply in (missing, wrong, forbidden, valid):
        assert "X-Clusterchecks-Leader" not in reply.headers
        assert reply.headers["X-Request-Id"]


@pytest.mark.parametrize("call", LEADER_ONLY, ids=call_id)
@pytest.mark.parametrize(
    "known", [None, LeaderInfo("dispatcher-0", "http://10.0.0.1:5005", 7)], ids=["none", "other"]
)
async def test_a_forwarded_request_that_reaches_a_non_leader_is_508(
    aiohttp_client: AiohttpClient, call: Call, known: LeaderInfo | None
) -> None:
    client = await follower_client(aiohttp_client, known)
    forwarded = {"X-Clusterchecks-Forwarded": "1"}

    reply = await send(client, call, token=ADMIN_TOKEN, headers=forwarded)
    unauthenticated = await send(client, call, token=None, headers=forwarded)

    assert reply.status == 508, reply.text
    assert reply.code() == "loop_detected"
    assert unauthenticated.status == 401
    if known is not None:
        assert reply.headers["X-Clusterchecks-Leader"] == "dispatcher-0"


async def test_a_non_leader_without_tokens_answers_503(aiohttp_client: AiohttpClient) -> None:
    client = await follower_client(aiohttp_client, settings=Settings())
    reply = await client.get(API)
    assert reply.status == 503
    assert reply.code() == "no_leader"
    assert "Retry-After" in reply.headers


@pytest.mark.parametrize("call", PUBLIC, ids=call_id)
async def test_a_non_leader_serves_the_local_routes_without_a_token(
    aiohttp_client: AiohttpClient, call: Call
) -> None:
    client = await follower_client(aiohttp_client)
    reply = await send(client, call, token=None)
    assert reply.status == 200, reply.text
    if call.name != "metrics":
        json.loads(reply.text)


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        pytest.param(
            "/sources/s1",
            b'{"configs": [{"name": "http", "instances": [{"n": 1234567890123456789012345}]}]}',
            id="huge-integer-in-instances",
        ),
        pytest.param(
            "/status/n1",
            b'{"last_change": 123456789012345678901234567890}',
            id="huge-last-change",
        ),
        pytest.param(
            "/sources/s1",
            b'{"configs": [{"name": "http", "instances": [{"n": NaN}]}]}',
            id="nan",
        ),
    ],
)
async def test_numbers_json_cannot_carry_exactly_are_refused_not_rounded(
    api: Api, path: str, raw: bytes
) -> None:
    """An integer beyond 64 bits must not be silently turned into a float (and so into
    a different check); NaN is not JSON."""
    before = await api.snapshot()
    method = "PUT" if path.startswith("/sources") else "POST"
    reply = await api.request(method, API + path, raw=raw)
    assert reply.status == 400, reply.text
    assert reply.code() in ("invalid_request", "invalid_json")
    assert await api.snapshot() == before


async def test_a_handler_that_fails_gets_a_500_error_body_and_a_logged_traceback(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that is no client's doing: the error body with ``internal`` and
    nothing of the internals, the request id, and the traceback in the log only."""

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.service.dispatcher, "node_configs", broken)
    with capture_logs() as logs:
        reply = await api.get(f"{API}/configs/node-0", headers={"X-Request-Id": "req-500"})
    assert reply.status == 500
    assert reply.json == {  # the error body (API.md lists no code for a 500: ours)
        "error": {"code": "internal", "message": "The server failed to handle this request."}
    }
    assert "secret" not in reply.text
    assert reply.headers["X-Request-Id"] == "req-500"
    failed = [entry for entry in logs if entry["event"] == "request_failed"]
    assert len(failed) == 1, logs
    assert isinstance(failed[0]["exc_info"], RuntimeError)
    assert [entry["status"] for entry in logs if entry["event"] == "request"] == [500]
