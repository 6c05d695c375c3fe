"""The exit-code table of the admin command line and the one-line error messages, pure."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from dispatcher.admin import errors
from dispatcher.admin.client import match_digest
from dispatcher.admin.errors import (
    EXIT_CODES,
    ExitCode,
    error_from_reply,
    exit_code_for_status,
    one_line,
)

ROOT = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:5005"


def body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "exit_code"),
    [
        (200, ExitCode.OK),
        (204, ExitCode.OK),
        (400, ExitCode.REFUSED),
        (401, ExitCode.AUTH),
        (403, ExitCode.AUTH),
        (404, ExitCode.NOT_FOUND),
        (405, ExitCode.REFUSED),
        (409, ExitCode.CONFLICT),
        (410, ExitCode.REFUSED),
        (413, ExitCode.REFUSED),
        (415, ExitCode.REFUSED),
        (500, ExitCode.UNAVAILABLE),
        (502, ExitCode.UNAVAILABLE),
        (503, ExitCode.UNAVAILABLE),
        (508, ExitCode.UNAVAILABLE),
        (302, ExitCode.UNAVAILABLE),
        (101, ExitCode.UNAVAILABLE),
    ],
)
def test_exit_code_of_each_status(status: int, exit_code: ExitCode) -> None:
    assert exit_code_for_status(status) is exit_code


def test_exit_code_values_are_the_documented_ones() -> None:
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "CHECK_FAILING": 1,
        "USAGE": 2,
        "UNAVAILABLE": 3,
        "AUTH": 4,
        "NOT_FOUND": 5,
        "CONFLICT": 6,
        "REFUSED": 7,
        "INTERRUPTED": 130,
    }
    assert set(EXIT_CODES) == set(ExitCode)


def test_readme_and_docstring_list_every_exit_code() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Admin command line", 1)[1].split("\n## ", 1)[0]
    documented = {int(n) for n in re.findall(r"^\| `(\d+)` \|", section, flags=re.M)}
    assert documented == {int(c) for c in ExitCode}
    from dispatcher.admin import commands

    doc = commands.__doc__ or ""
    assert {int(n) for n in re.findall(r"^    (\d+) ", doc, flags=re.M)} == {
        int(c) for c in ExitCode
    }


@pytest.mark.parametrize(
    ("status", "raw", "kwargs", "expected"),
    [
        pytest.param(
            401, body("unauthorized", "The bearer token is not valid."), {},
            (errors.TokenRefused, 4,
            "the dispatcher refused the token (401 unauthorized): The bearer token is not valid."),
            id="401-wrong-token",
        ),
        pytest.param(
            401, body("unauthorized", "A valid bearer token is required."),
            {"token_given": False}, (errors.TokenRefused, 4,
            "the dispatcher requires a token (401 unauthorized): A valid bearer token is "
            "required.; give --token or --token-file (or set CLUSTERCHECKS_ADMIN_TOKEN)"),
            id="401-no-token",
        ),
        pytest.param(
            403, body("forbidden", "This token's role may not use this route."), {},
            (errors.TokenRefused, 4,
            "the dispatcher refused the token (403 forbidden): This token's role may not use "
            "this route."),
            id="403",
        ),
        pytest.param(
            404, body("unknown_node", "Node 'x' is not registered (or has expired)."),
            {"subject": "node 'x'"}, (errors.Missing, 5,
            "unknown node 'x' (404 unknown_node): Node 'x' is not registered (or has expired)."),
            id="404-unknown-node",
        ),
        pytest.param(
            404, body("not_found", "No such route."), {"subject": "node 'x'"},
            (errors.Missing, 5, "not found (404 not_found): No such route."),
            id="404-no-route",
        ),
        pytest.param(
            404, b"<html>nope</html>", {"reason": "Not Found"}, (errors.BadReply, 3,
            f"the server at {URL} answered 404 Not Found without an API error body: "
            "is --url a clusterchecks dispatcher?"),
            id="404-not-a-dispatcher",
        ),
        pytest.param(
            409, body("not_dispatched", "Check 'ab' is dangling."),
            {"action": "isolate check 'ab'"}, (errors.Conflicting, 6,
            "cannot isolate check 'ab' (409 not_dispatched): Check 'ab' is dangling."),
            id="409-not-dispatched",
        ),
        pytest.param(
            409, body("no_other_node", "No other node."), {}, (errors.Conflicting, 6,
            "conflict (409 no_other_node): No other node."),
            id="409-without-action",
        ),
        pytest.param(
            400, body("invalid_request", "force: Input should be a valid boolean"), {},
            (errors.Refused, 7,
            "the dispatcher refused the request (400 invalid_request): force: Input should "
            "be a valid boolean"),
            id="400",
        ),
        pytest.param(
            503, body("no_leader", "No dispatcher leader is known right now; retry shortly."),
            {"retry_after": "2"}, (errors.ServerError, 3,
            f"the dispatcher at {URL} knows no leader right now (503 no_leader): No dispatcher "
            "leader is known right now; retry shortly. (retry after 2 s)"),
            id="503-no-leader",
        ),
        pytest.param(
            503, body("store_unavailable", "The shared store does not answer."), {},
            (errors.ServerError, 3,
            f"the dispatcher at {URL} cannot answer right now (503 store_unavailable): The "
            "shared store does not answer."),
            id="503-other",
        ),
        pytest.param(
            508, body("loop_detected", "A forwarded request reached a follower."), {},
            (errors.ServerError, 3,
            f"the dispatcher at {URL} failed (508 loop_detected): A forwarded request reached "
            "a follower."),
            id="508",
        ),
        pytest.param(
            500, b"Internal Server Error\n\ntrace...", {"reason": "Internal Server Error"},
            (errors.ServerError, 3,
            f"the dispatcher at {URL} failed (500 Internal Server Error): Internal Server Error"),
            id="500-not-json",
        ),
        pytest.param(
            502, b"", {}, (errors.ServerError, 3,
            f"the dispatcher at {URL} failed (502 error): no message"),
            id="502-empty",
        ),
    ],
)  # fmt: skip
def test_error_from_reply(
    status: int,
    raw: bytes,
    kwargs: dict[str, Any],
    expected: tuple[type[errors.AdminError], int, str],
) -> None:
    cls, exit_code, message = expected
    error = error_from_reply(status, raw, url=URL, **kwargs)
    assert type(error) is cls
    assert error.exit_code == exit_code
    assert error.message == message


def test_server_messages_come_out_on_one_line_and_short() -> None:
    error = error_from_reply(400, body("invalid_request", "a\nb\r\n  c" + "x" * 1000), url=URL)
    assert "\n" not in error.message
    assert "a b c" in error.message
    assert len(error.message) < 400
    assert one_line("x" * 10, 5) == "xxxx…"


DIGESTS = ["ab12000000000000", "ab34000000000000", "cd56000000000000"]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("c", "cd56000000000000"),
        ("ab1", "ab12000000000000"),
        ("ab34000000000000", "ab34000000000000"),
    ],
)
def test_a_unique_prefix_names_its_digest(prefix: str, expected: str) -> None:
    assert match_digest(prefix, DIGESTS) == expected


def test_an_exact_digest_wins_over_longer_ones_it_prefixes() -> None:
    assert match_digest("ab12", ["ab12", "ab1234"]) == "ab12"


@pytest.mark.parametrize(
    ("prefix", "words"),
    [
        ("ab", ["unknown check 'ab'", "matches 2 checks", "ab12000000000000"[:12]]),
        ("ef", ["unknown check 'ef'", "no check's digest starts with it"]),
    ],
)
def test_an_ambiguous_or_unmatched_prefix_is_an_unknown_check(
    prefix: str, words: list[str]
) -> None:
    with pytest.raises(errors.Missing) as caught:
        match_digest(prefix, DIGESTS)
    assert caught.value.exit_code == 5
    for word in words:
        assert word in caught.value.message
