"""Hostile input at the API (issue 13, point 6): each is refused with API.md's error
body and a 4xx, never a 500 or a traceback.

Requests the aiohttp client would not send (bytes that are not UTF-8 in a header, a
path segment ``..`` that a URL library normalises away, a broken compressed body) go
over a raw socket to the test server.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import zlib
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from dispatcher import wire
from dispatcher.common import validation
from dispatcher.common.clock import FakeClock
from dispatcher.common.httpserver import ConnectionLimits, Listener
from dispatcher.service import build
from dispatcher.settings import Settings, StoreSettings
from tests.api.conftest import ADMIN_TOKEN, API, Api, prepare, result

# ------------------------------------------------------------------ helpers


async def raw_request(api: Api, head: bytes, body: bytes = b"") -> tuple[int, Any]:
    """Sends one request (``Connection: close`` added) and returns (status, JSON body)."""
    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        reply = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = reply.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload)


def error_of(body: Any) -> dict[str, Any]:
    """API.md's error object, after checking the body's shape."""
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), error
    assert set(error) <= {"code", "message", "details"}, error
    assert isinstance(error["message"], str), error
    assert error["message"].strip(), error
    return error


def json_head(method: str, path: str, body: bytes, *extra: bytes) -> bytes:
    return b"\r\n".join(
        [
            f"{method} {path} HTTP/1.1".encode(),
            b"Host: dispatcher",
            b"Content-Type: application/json",
            f"Content-Length: {len(body)}".encode(),
            *extra,
        ]
    )


# -------------------------------------------------------- the bearer token


@pytest.mark.parametrize(
    "token",
    [b"\xff\xfe\x80", b"admin-token-\xc3\x28", b"t\xc3\xb6ken-0123456789"],
    ids=["not-utf8", "broken-utf8", "utf8-not-ascii"],
)
async def test_a_bearer_token_that_is_not_ascii_is_refused_with_401(
    auth_api: Api, token: bytes
) -> None:
    head = b"GET " + API.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token
    status, body = await raw_request(auth_api, head)
    assert status == 401, body
    assert error_of(body)["code"] == "unauthorized"


async def test_the_admin_token_over_a_raw_socket_still_passes(auth_api: Api) -> None:
    """The raw-socket path itself works: the same request with the real token is 200."""
    head = b"GET " + API.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    status, body = await raw_request(auth_api, head + ADMIN_TOKEN.encode())
    assert status == 200, body


# ------------------------------------------------------------------- names


@pytest.mark.parametrize("name", [".", ".."])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", API + "/status/{}", b'{"last_change": -1}'),
        ("GET", API + "/configs/{}", b""),
        ("POST", API + "/results/{}", b'{"results": []}'),
        ("POST", API + "/nodes/{}/cordon", b""),
        ("PUT", API + "/sources/{}", b'{"configs": []}'),
        ("GET", API + "/sources/{}", b""),
    ],
    ids=["status", "configs", "results", "cordon", "source_put", "source_get"],
)
async def test_names_dot_and_dot_dot_are_refused_in_paths(
    api: Api, name: str, method: str, path: str, body: bytes
) -> None:
    for spelled in (name, name.replace(".", "%2E")):
        status, reply = await raw_request(api, json_head(method, path.format(spelled), body), body)
        assert status == 400, (spelled, reply)
        assert error_of(reply)["code"] == "invalid_request"
    assert (await api.state())["nodes"] == []


@pytest.mark.parametrize("name", [".", ".."])
async def test_a_source_named_dot_or_dot_dot_is_refused_in_a_body(api: Api, name: str) -> None:
    reply = await api.post(API + "/checks", {"source": name, "configs": []})
    assert reply.status == 400, reply.text
    assert reply.field_paths() == ["source"]


@pytest.mark.parametrize("pattern", [wire.NAME_PATTERN, wire.SOURCE_NAME_PATTERN])
def test_the_name_patterns_refuse_dot_and_dot_dot_alone(pattern: str) -> None:
    compiled = re.compile(pattern)
    for bad in (".", "..", "", "a" * 254, "a/b", "a b"):
        assert not compiled.fullmatch(bad), bad
    for good in ("...", ".a", "a.", "..a", "a..", ".-", "-", "_", "node-1.eu", "a" * 253):
        assert compiled.fullmatch(good), good


async def test_names_that_only_start_with_dots_are_still_names(api: Api) -> None:
    for name in ("...", ".hidden", "..x"):
        await api.heartbeat(name)
    assert sorted(n["name"] for n in (await api.state())["nodes"]) == ["...", "..x", ".hidden"]


# ------------------------------------------------------------------ results

SKEW_S = wire.MAX_CLOCK_SKEW_S


async def post_results(api: Api, *items: dict[str, Any]) -> Any:
    return await api.post(f"{API}/results/node-a", {"results": list(items)})


@pytest.mark.parametrize(
    "started_at",
    [1e308, 1.7e308, time.time() + 3600, time.time() + 10 * wire.MAX_CLOCK_SKEW_S],
    ids=["1e308", "max-float", "in-an-hour", "ten-skews-ahead"],
)
async def test_a_result_started_far_in_the_future_is_refused(api: Api, started_at: float) -> None:
    digest = await prepare(api)
    reply = await post_results(api, result(digest, ok=True, started_at=started_at))
    assert reply.status == 400, reply.text
    assert reply.field_paths() == ["results.0.started_at"]
    assert (await api.check(digest))["last_result"] is None, "nothing stored"


async def test_a_result_within_the_clock_skew_allowance_is_accepted(
    api: Api, clock: FakeClock
) -> None:
    digest = await prepare(api)
    started_at = clock.time() + wire.MAX_CLOCK_SKEW_S / 2
    reply = await post_results(api, result(digest, ok=True, started_at=started_at))
    assert reply.status == 200, reply.text
    assert reply.json["accepted"] == 1


async def test_the_clock_skew_allowance_is_judged_on_the_dispatcher_s_clock(
    api: Api, clock: FakeClock
) -> None:
    """Ahead of the injected clock by more than the allowance is refused, even when the
    time is in the past of the machine's own clock (the fake clock is set back)."""
    assert clock.time() + 2 * wire.MAX_CLOCK_SKEW_S < time.time()
    digest = await prepare(api)
    started_at = clock.time() + 2 * wire.MAX_CLOCK_SKEW_S
    reply = await post_results(api, result(digest, ok=True, started_at=started_at))
    assert reply.status == 400, reply.text
    assert reply.field_paths() == ["results.0.started_at"]


async def test_a_result_dated_ahead_within_the_allowance_does_not_mask_later_ones(
    api: Api, clock: FakeClock
) -> None:
    """A skewed agent clock (allowed by the API) must not hide the next run: the last
    result is ordered by when it ran as far as the dispatcher can vouch for it."""
    digest = await prepare(api)
    ahead = result(digest, ok=True, run_id="ahead", started_at=clock.time() + 0.9 * SKEW_S)
    assert (await post_results(api, ahead)).json["accepted"] == 1
    clock.advance(15.0)
    later = result(digest, ok=False, run_id="later", started_at=clock.time())
    assert (await post_results(api, later)).json["accepted"] == 1
    last = (await api.check(digest))["last_result"]
    assert (last["run_id"], last["ok"]) == ("later", False)
    page = (await api.ok("GET", f"{API}/results"))["checks"][digest]
    assert (page["ok"], page["consecutive_failures"]) == (False, 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("duration_s", -0.5),
        ("duration_s", 1e300),
        ("duration_s", wire.MAX_DURATION_S * 2),
        ("started_at", -1.0),
    ],
)
async def test_absurd_numbers_in_a_result_are_refused(api: Api, field: str, value: float) -> None:
    digest = await prepare(api)
    item = result(digest)
    item[field] = value
    reply = await post_results(api, item)
    assert reply.status == 400, reply.text
    assert reply.field_paths() == [f"results.0.{field}"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
async def test_non_finite_numbers_in_a_result_are_refused(api: Api, literal: bytes) -> None:
    digest = await prepare(api)
    raw = json.dumps({"results": [result(digest, started_at=0.0)]}).encode()
    raw = raw.replace(b'"started_at": 0.0', b'"started_at": ' + literal)
    reply = await api.post(f"{API}/results/node-a", raw=raw)
    assert reply.status == 400, reply.text
    assert reply.code() in ("invalid_json", "invalid_request")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("avg_execution_s", 1e300),
        ("avg_execution_s", -1.0),
        ("last_run_at", 1e308),
        ("last_run_at", time.time() + 3600),
    ],
    # Names that do not change from one collection to the next (pytest-xdist's workers
    # each collect, and must agree).
    ids=["avg-huge", "avg-negative", "last-run-huge", "last-run-an-hour-ahead"],
)
async def test_absurd_numbers_in_heartbeat_stats_are_refused(
    api: Api, field: str, value: float
) -> None:
    digest = await prepare(api)
    stats = {digest: {"avg_execution_s": 0.1, "runs": 3, field: value}}
    reply = await api.post(f"{API}/status/node-a", {"last_change": -1, "stats": stats})
    assert reply.status == 400, reply.text
    assert reply.field_paths() == [f"stats.{digest}.{field}"]


# ------------------------------------------------------------ request bodies


@pytest.mark.parametrize("encoding", [b"deflate", b"gzip"])
async def test_a_body_that_does_not_decompress_is_400_without_a_traceback(
    api: Api, encoding: bytes
) -> None:
    body = b"this is not " + encoding
    head = json_head("POST", API + "/status/node-a", body, b"Content-Encoding: " + encoding)
    with capture_logs() as logs:
        status, reply = await raw_request(api, head, body)
    assert status == 400, reply
    assert error_of(reply)["code"] == "invalid_request"
    assert not [e for e in logs if e.get("log_level") in ("error", "critical")], logs


async def test_a_body_that_decompresses_is_read(api: Api) -> None:
    """The refusal above is about broken bodies: a good deflate body is accepted."""
    body = zlib.compress(b'{"last_change": -1}')
    head = json_head("POST", API + "/status/node-a", body, b"Content-Encoding: deflate")
    status, reply = await raw_request(api, head, body)
    assert status == 200, reply


async def test_a_client_that_leaves_mid_body_is_logged_without_a_traceback() -> None:
    """As ``serve`` runs the app (aiohttp's test server would cancel the handler when the
    client leaves; the production runner lets it run and fail on the read)."""
    settings = Settings(store=StoreSettings(backend="memory"))
    runner = web.AppRunner(build(settings, clock=FakeClock()).app, access_log=None)
    await runner.setup()
    limits = ConnectionLimits(
        header_timeout_s=30.0, body_timeout_s=30.0, idle_timeout_s=30.0, max_connections=10
    )
    listener = Listener(runner, limits, host="127.0.0.1", port=0, clock=FakeClock())
    await listener.start()
    try:
        with capture_logs() as logs:
            _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(json_head("POST", API + "/status/node-a", b"x" * 100) + b"\r\n\r\n{")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            for _ in range(1000):
                if any(e.get("event") == "request" for e in logs):
                    break
                await asyncio.sleep(0.01)
    finally:
        listener.close()
        await runner.cleanup()
    [request] = [e for e in logs if e.get("event") == "request"]
    assert request["status"] == 400, logs
    assert not [e for e in logs if e.get("log_level") in ("error", "critical")], logs


@pytest.mark.parametrize("route", ["PUT", "POST"])
async def test_a_body_of_many_bad_configs_lists_a_bounded_number_of_problems(
    api: Api, route: str
) -> None:
    """200,000 bad items (under the body limit) would be 200,000 problems in one reply:
    the reply lists MAX_PROBLEMS of them, says it is truncated, and nothing changes."""
    bad = [1] * 200_000
    if route == "PUT":
        reply = await api.put(f"{API}/sources/ci", {"configs": bad})
    else:
        reply = await api.post(f"{API}/checks", {"source": "ci", "configs": bad})
    assert reply.status == 400, reply.text
    details = reply.error()["details"]
    assert len(details["fields"]) == validation.MAX_PROBLEMS
    assert details["truncated"] is True
    assert details["fields"][0]["path"] == "configs.0"
    assert len(reply.text) < 64 * 1024
    assert (await api.state())["totals"]["checks"] == 0
