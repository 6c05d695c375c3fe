"""One HTTP status per error class and the error body of API.md, for both servers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from dispatcher import errors

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS: dict[type[errors.RequestError], int] = {
    errors.InvalidJson: 400,
    errors.InvalidRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.RequestTimeout: 408,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.BodyTooLarge: 413,
    errors.TooManyChecks: 413,
    errors.UnsupportedMediaType: 415,
    errors.HeadersTooLarge: 431,
    errors.Unavailable: 503,
    errors.LoopDetected: 508,
}


def status_of(exc: errors.RequestError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


def error_response(exc: errors.RequestError) -> web.Response:
    response = web.Response(
        body=error_body(exc.code, exc.message, exc.details),
        status=status_of(exc),
        content_type="application/json",
    )
    if isinstance(exc, errors.Unavailable):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, errors.MethodNotAllowed) and exc.allowed:
        response.headers["Allow"] = ", ".join(exc.allowed)
    return response


def internal_error_response() -> web.Response:
    return web.Response(
        body=error_body("internal", "The server failed to handle this request."),
        status=500,
        content_type="application/json",
    )


def from_http_exception(exc: web.HTTPException) -> errors.RequestError:
    """Maps aiohttp's own errors (no route, wrong method, body too large) to ours."""
    if isinstance(exc, web.HTTPNotFound):
        return errors.NotFound()
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        return errors.MethodNotAllowed(
            f"This route takes {', '.join(allowed)}, not {exc.method}.", allowed=allowed
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return errors.BodyTooLarge()
    if isinstance(exc, web.HTTPUnsupportedMediaType):
        return errors.UnsupportedMediaType()
    return errors.InvalidRequest(exc.text or exc.reason)


async def respond(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Runs a handler; every failure becomes the error body (``failure_response``)."""
    try:
        return await handler(request)
    except Exception as exc:  # not CancelledError: a BaseException, it goes on up
        return failure_response(request, exc)


def failure_response(request: web.Request, exc: Exception) -> web.Response:
    """The reply to a request whose handler raised ``exc``: ours and aiohttp's errors
    with their 4xx, anything else a logged 500 that says nothing of the internals.
    (``respond`` around a handler; a server's own middleware may call it directly, one
    coroutine less for every request.)"""
    if isinstance(exc, errors.RequestError):
        return error_response(exc)
    if isinstance(exc, web.HTTPException):
        return error_response(from_http_exception(exc))
    log.error("request_failed", method=request.method, path=request.path, exc_info=exc)
    return internal_error_response()
