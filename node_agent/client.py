"""The dispatcher's node-agent routes, over one keep-alive session, with failover over
several dispatcher URLs: a URL that does not answer (or has no leader) makes the
client move to the next one for the following request."""

from __future__ import annotations

import asyncio
import io
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
from pydantic import BaseModel, ValidationError

from dispatcher import wire
from node_agent.errors import DispatcherProtocolError, DispatcherUnavailable, UnknownNodeError

M = TypeVar("M", bound=BaseModel)
API = wire.API_PREFIX
STREAMED_BODY_BYTES = 1024 * 1024
"""Bodies above this go out as a stream, in chunks: aiohttp writes a bytes body in one go
(and warns that this may hold the event loop)."""
THREADED_PARSE_BYTES = 1024 * 1024
"""Replies above this are parsed in a worker thread (about 80 ms per MiB on the loop)."""


class DispatcherApi(Protocol):
    """The node-agent routes as the poller and the result batcher use them."""

    @property
    def url(self) -> str: ...

    @property
    def url_count(self) -> int:
        """How many dispatcher URLs the agent was given."""
        ...

    def next_url(self) -> None: ...

    async def status(
        self, body: dict[str, Any], *, timeout_s: float | None = None
    ) -> wire.StatusOut: ...

    async def configs(self, *, since: int | None, wait_s: float) -> wire.NodeConfigsOut: ...

    async def results(self, results: list[dict[str, Any]]) -> wire.ResultsOut: ...


class DispatcherClient:
    def __init__(
        self,
        *,
        urls: tuple[str, ...],
        node: str,
        session: aiohttp.ClientSession,
        token: str | None,
        timeout_s: float,
    ) -> None:
        self._urls = [u.rstrip("/") for u in urls]
        self._index = 0
        self._node = node
        self._session = session
        self._timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    @property
    def url(self) -> str:
        return self._urls[self._index]

    @property
    def url_count(self) -> int:
        return len(self._urls)

    def next_url(self) -> None:
        self._index = (self._index + 1) % len(self._urls)

    async def status(
        self, body: dict[str, Any], *, timeout_s: float | None = None
    ) -> wire.StatusOut:
        return await self._call(
            "POST", f"{API}/status/{self._node}", wire.StatusOut, body=body, timeout_s=timeout_s
        )

    async def configs(self, *, since: int | None, wait_s: float) -> wire.NodeConfigsOut:
        query = f"?since={since}&wait_s={wait_s:g}" if since is not None else ""
        return await self._call(
            "GET",
            f"{API}/configs/{self._node}{query}",
            wire.NodeConfigsOut,
            timeout_s=self._timeout_s + (wait_s if since is not None else 0),
        )

    async def results(self, results: list[dict[str, Any]]) -> wire.ResultsOut:
        return await self._call(
            "POST", f"{API}/results/{self._node}", wire.ResultsOut, body={"results": results}
        )

    async def _call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        body: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> M:
        url = self.url + path
        raw_body = orjson.dumps(body) if body is not None else None
        data: bytes | io.BytesIO | None = raw_body
        if raw_body is not None and len(raw_body) > STREAMED_BODY_BYTES:
            data = io.BytesIO(raw_body)
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s or self._timeout_s),
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.next_url()
            raise DispatcherUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
        if status == 200:
            try:
                if len(raw) > THREADED_PARSE_BYTES:
                    # Thousands of configs take a while to parse: in a worker thread the
                    # event loop keeps turning (heartbeats, the local server, signals).
                    return await asyncio.to_thread(model.model_validate_json, raw)
                return model.model_validate_json(raw)
            except ValidationError as exc:
                raise DispatcherProtocolError(f"{url}: malformed reply: {exc}") from exc
        code = _error_code(raw)
        if status == 404 and code == "unknown_node":
            raise UnknownNodeError(f"{url}: this node is not registered")
        if status >= 500:  # no leader, a loop, a broken replica: try the next URL
            self.next_url()
            raise DispatcherUnavailable(f"{url}: {status} {code or ''}".strip())
        raise DispatcherProtocolError(
            f"{url}: {status} {code or ''}: {raw[:300]!r}", fields=_field_paths(raw)
        )


def _error_code(raw: bytes) -> str | None:
    try:
        data = orjson.loads(raw)
        code = data["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def _field_paths(raw: bytes) -> tuple[str, ...]:
    """The paths of a 400 invalid_request's ``details.fields`` (API.md), if any."""
    try:
        fields = orjson.loads(raw)["error"]["details"]["fields"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ()
    if not isinstance(fields, list):
        return ()
    return tuple(
        f["path"] for f in fields if isinstance(f, dict) and isinstance(f.get("path"), str)
    )
