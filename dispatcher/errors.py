"""The one exception tree of clusterchecks.

::

    ClusterchecksError
    ├── ConfigurationError          bad flags, environment or files at start
    ├── ConfigSourceError           a config source (file, object) that cannot be read
    ├── LeaseBackendError           the lease store (Redis, Kubernetes API) failed or timed out
    ├── StoreError                  the state store failed or timed out; retry
    │   ├── Fenced                  a newer leader has claimed the store: stop acting
    │   └── StoreLost               the store forgot what it held (Redis restarted empty)
    └── RequestError                what a caller did wrong; the API maps each to one status
        ├── InvalidJson             400 invalid_json
        ├── InvalidRequest          400 invalid_request (details list the bad fields)
        ├── Unauthorized            401 unauthorized
        ├── Forbidden               403 forbidden
        ├── NotFound                404 not_found
        │   ├── UnknownNode         404 unknown_node
        │   └── UnknownCheck        404 unknown_check
        ├── MethodNotAllowed        405 method_not_allowed
        ├── RequestTimeout          408 request_timeout (a head or body too slow to arrive)
        ├── Conflict                409 conflict
        │   ├── NotDispatched       409 not_dispatched
        │   └── NoOtherNode         409 no_other_node
        ├── Gone                    410 gone
        ├── BodyTooLarge            413 body_too_large
        ├── TooManyChecks           413 too_many_checks (a source would exceed its limit)
        ├── UnsupportedMediaType    415 unsupported_media_type
        ├── HeadersTooLarge         431 headers_too_large
        ├── Unavailable             503 unavailable (with Retry-After)
        │   ├── NoLeader            503 no_leader
        │   └── StoreUnavailable    503 store_unavailable
        └── LoopDetected            508 loop_detected

Beside this module, in the packages that raise them:

    ClusterchecksError
    ├── AdminError                  dispatcher.admin.errors: the admin command line's
    │   │                           failures, each with its exit code
    │   ├── Unreachable             3  no connection, or no reply in --timeout
    │   ├── ServerError             3  5xx, 503 no_leader, 508 loop_detected
    │   ├── BadReply                3  a reply the command cannot read
    │   ├── TokenRefused            4  401, 403
    │   ├── Missing                 5  404, or a digest prefix matching none or several
    │   ├── Conflicting             6  409
    │   └── Refused                 7  any other 4xx
    └── AgentError                  node_agent.errors: the node agent's
        ├── DispatcherUnavailable   no answer or 503: retry, then the next dispatcher URL
        ├── UnknownNodeError        404 unknown_node: register again
        ├── DispatcherProtocolError a reply the agent cannot use
        └── InstanceError           a check instance the agent cannot run

The core raises the domain members (UnknownNode, UnknownCheck, NotDispatched,
NoOtherNode, TooManyChecks); the HTTP status of each lives in
``dispatcher.common.httperrors``. Foreign errors are translated at the boundary that
meets them, with ``raise ... from exc``.

This module is a leaf: it imports nothing of ours, so node agents may use it too.
"""

from __future__ import annotations

from typing import Any


class ClusterchecksError(Exception):
    """Base of every error clusterchecks raises on purpose."""


class ConfigurationError(ClusterchecksError):
    """A setting is invalid; the message names the flag and what it accepts."""


class ConfigSourceError(ClusterchecksError):
    """A config source could not be read or holds invalid configs."""


class LeaseBackendError(ClusterchecksError):
    """The lease backend did not answer, or answered with an error; retry."""


class StoreError(ClusterchecksError):
    """The shared state store did not answer, or answered with an error; retry."""


class Fenced(StoreError):
    """The store has been claimed by a newer leadership term: this leader's writes are
    refused, and it must stop acting at once."""


class StoreLost(StoreError):
    """The store no longer holds what was written to it (its fencing mark is gone: Redis
    restarted without persistence, or was flushed): the leader claims it again and writes
    its whole state."""


class RequestError(ClusterchecksError):
    """A caller's mistake, reported with a stable snake_case code."""

    code = "invalid_request"
    default_message = "The request is not valid."

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.details = details


class InvalidJson(RequestError):
    code = "invalid_json"
    default_message = "The request body is not valid JSON."


class InvalidRequest(RequestError):
    code = "invalid_request"


class Unauthorized(RequestError):
    code = "unauthorized"
    default_message = "A valid bearer token is required."


class Forbidden(RequestError):
    code = "forbidden"
    default_message = "This token's role may not use this route."


class NotFound(RequestError):
    code = "not_found"
    default_message = "No such route."


class UnknownNode(NotFound):
    code = "unknown_node"
    default_message = "No node agent of that name is registered."


class UnknownCheck(NotFound):
    code = "unknown_check"
    default_message = "No check with that digest is held."


class MethodNotAllowed(RequestError):
    code = "method_not_allowed"
    default_message = "This route does not take that method."

    def __init__(self, message: str | None = None, *, allowed: list[str] | None = None):
        super().__init__(message)
        self.allowed = allowed or []


class Conflict(RequestError):
    code = "conflict"
    default_message = "The request conflicts with the current state."


class NotDispatched(Conflict):
    code = "not_dispatched"
    default_message = "The check is dangling: it is not dispatched to any node."


class NoOtherNode(Conflict):
    code = "no_other_node"
    default_message = "There is no other eligible node to move checks to."


class Gone(RequestError):
    code = "gone"
    default_message = "That run is no longer current."


class BodyTooLarge(RequestError):
    code = "body_too_large"
    default_message = "The request body is larger than 4 MiB."


class TooManyChecks(RequestError):
    """A write that would make one source hold more checks than the dispatcher allows;
    refused whole (nothing changes)."""

    code = "too_many_checks"
    default_message = "A source may not hold that many checks."


class RequestTimeout(RequestError):
    """A request head or body that did not arrive in time (the connection layer's
    header and body timeouts); the connection is closed after the answer."""

    code = "request_timeout"
    default_message = "The request did not arrive in time."


class HeadersTooLarge(RequestError):
    code = "headers_too_large"
    default_message = "The request line or its header fields are too large."


class UnsupportedMediaType(RequestError):
    code = "unsupported_media_type"
    default_message = "The request body must be application/json."


class Unavailable(RequestError):
    code = "unavailable"
    default_message = "The dispatcher cannot answer right now; retry shortly."

    def __init__(self, message: str | None = None, *, retry_after_s: int = 2):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NoLeader(Unavailable):
    code = "no_leader"
    default_message = "No dispatcher leader is known right now; retry shortly."


class StoreUnavailable(Unavailable):
    code = "store_unavailable"
    default_message = "The shared store does not answer; retry shortly."


class LoopDetected(RequestError):
    code = "loop_detected"
    default_message = "A forwarded request reached a dispatcher that is not the leader."
