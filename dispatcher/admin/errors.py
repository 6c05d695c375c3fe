"""What can go wrong when the admin command line talks to a dispatcher, and its exit code.

::

    AdminError                   (a ClusterchecksError)
    ├── Unreachable          3   no connection, connection lost, no reply in --timeout
    ├── ServerError          3   503 (no_leader, ...), 508 loop_detected, any other 5xx
    ├── BadReply             3   a reply this command cannot read (not JSON, wrong shape;
    │                            a 4xx other than 401/403 without an API.md error body)
    ├── TokenRefused         4   401 unauthorized, 403 forbidden
    ├── Missing              5   404 (unknown_node, unknown_check, not_found); a digest
    │                            prefix that matches no check, or more than one
    ├── Conflicting          6   409 (not_dispatched, no_other_node, conflict)
    └── Refused              7   any other 4xx (invalid_request, ...)

Exit codes 0 (success), 1 (``results`` found a failing check) and 2 (usage error,
click's own) are not errors of this tree. :func:`exit_code_for_status` and
:func:`error_from_reply` are pure, so the table is tested without a server.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any

from dispatcher.errors import ClusterchecksError

MESSAGE_LIMIT = 300
"""An error message from the server is cut to this many characters (one line)."""


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILING = 1
    USAGE = 2
    UNAVAILABLE = 3
    AUTH = 4
    NOT_FOUND = 5
    CONFLICT = 6
    REFUSED = 7
    INTERRUPTED = 130


EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.CHECK_FAILING: "`results`: the last result of at least one check failed",
    ExitCode.USAGE: "usage error: unknown flag, bad flag value, missing argument",
    ExitCode.UNAVAILABLE: (
        "dispatcher unreachable or timed out, 503 no_leader, 508, any other 5xx, "
        "or a reply that cannot be read"
    ),
    ExitCode.AUTH: "the token was refused (401 unauthorized, 403 forbidden)",
    ExitCode.NOT_FOUND: "unknown node or check (404), or a digest prefix matching none or several",
    ExitCode.CONFLICT: "conflict (409), e.g. not_dispatched, no_other_node",
    ExitCode.REFUSED: "any other 4xx (e.g. 400 invalid_request)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}
"""Every exit code a script may see, with its meaning (the README shows the same table)."""


class AdminError(ClusterchecksError):
    """A failure reported as one line on stderr and an exit code; ``fields``: the bad
    fields the dispatcher listed (``path: message``), printed below that line; ``code``:
    the dispatcher's error code, when it answered with one."""

    exit_code = ExitCode.UNAVAILABLE

    def __init__(
        self, message: str, *, fields: tuple[str, ...] = (), code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        self.code = code


class Unreachable(AdminError):
    exit_code = ExitCode.UNAVAILABLE


class ServerError(AdminError):
    """The dispatcher answered, but could not serve the request (no leader, a
    forwarding loop, a server-side failure): retry later or elsewhere."""

    exit_code = ExitCode.UNAVAILABLE


class BadReply(AdminError):
    exit_code = ExitCode.UNAVAILABLE


class TokenRefused(AdminError):
    exit_code = ExitCode.AUTH


class Missing(AdminError):
    exit_code = ExitCode.NOT_FOUND


class Conflicting(AdminError):
    exit_code = ExitCode.CONFLICT


class Refused(AdminError):
    exit_code = ExitCode.REFUSED


def exit_code_for_status(status: int) -> ExitCode:
    """The exit code of an HTTP status (a 2xx is success; anything unexpected is 3)."""
    if 200 <= status < 300:
        return ExitCode.OK
    if status in (401, 403):
        return ExitCode.AUTH
    if status == 404:
        return ExitCode.NOT_FOUND
    if status == 409:
        return ExitCode.CONFLICT
    if 400 <= status < 500:
        return ExitCode.REFUSED
    return ExitCode.UNAVAILABLE


_ERROR_CLASS: dict[ExitCode, type[AdminError]] = {
    ExitCode.AUTH: TokenRefused,
    ExitCode.NOT_FOUND: Missing,
    ExitCode.CONFLICT: Conflicting,
    ExitCode.REFUSED: Refused,
    ExitCode.UNAVAILABLE: ServerError,
}


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Collapses whitespace (newlines included) and cuts to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def parse_error_body(raw: bytes) -> tuple[str | None, str | None]:
    """The (code, message) of an API.md error body, or (None, None) for anything else."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        return None, None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else None,
    )


def parse_error_fields(raw: bytes) -> tuple[str, ...]:
    """The ``details.fields`` of an API.md error body as ``path: message`` lines (one
    line each), with a last line saying so when the dispatcher listed only some."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        return ()
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, dict) or not isinstance(details.get("fields"), list):
        return ()
    fields = details["fields"]
    lines = tuple(
        one_line(f"{field.get('path')}: {field.get('message')}")
        for field in fields
        if isinstance(field, dict)
    )
    if details.get("truncated") is True:
        lines += ("(the dispatcher lists no more problems)",)
    return lines


def error_from_reply(
    status: int,
    raw: bytes,
    *,
    url: str,
    reason: str = "",
    subject: str | None = None,
    action: str | None = None,
    token_given: bool = True,
    retry_after: str | None = None,
) -> AdminError:
    """The error of a reply that is not a 2xx.

    ``subject`` names what the request was about (``node 'a'``) for a 404; ``action``
    what it tried (``isolate check 'ab12'``) for a 409.
    """
    code, message = parse_error_body(raw)
    exit_code = exit_code_for_status(status)
    if code is None and exit_code in (ExitCode.NOT_FOUND, ExitCode.CONFLICT, ExitCode.REFUSED):
        # Not the dispatcher's answer (a proxy, another server, a wrong --url): a 404 from
        # it must not read as "unknown node" to a script.
        return BadReply(
            f"the server at {url} answered {status} {one_line(reason, 40)} without an API "
            "error body: is --url a clusterchecks dispatcher?"
        )
    label = f"{status} {code or one_line(reason, 40) or 'error'}"
    detail = one_line(message or reason or "no message")
    if exit_code is ExitCode.AUTH:
        if token_given:
            lead = "the dispatcher refused the token"
        else:
            detail += "; give --token or --token-file (or set CLUSTERCHECKS_ADMIN_TOKEN)"
            lead = "the dispatcher requires a token"
    elif exit_code is ExitCode.NOT_FOUND:
        known = code in ("unknown_node", "unknown_check")
        lead = f"unknown {subject}" if subject and known else "not found"
    elif exit_code is ExitCode.CONFLICT:
        lead = f"cannot {action}" if action else "conflict"
    elif exit_code is ExitCode.REFUSED:
        lead = "the dispatcher refused the request"
    elif status == 503:
        if code == "no_leader":
            lead = f"the dispatcher at {url} knows no leader right now"
        else:
            lead = f"the dispatcher at {url} cannot answer right now"
        if retry_after and retry_after.isdigit():
            detail += f" (retry after {retry_after} s)"
    else:
        lead = f"the dispatcher at {url} failed"
    error_class = _ERROR_CLASS.get(exit_code, BadReply)
    return error_class(f"{lead} ({label}): {detail}", fields=parse_error_fields(raw), code=code)
