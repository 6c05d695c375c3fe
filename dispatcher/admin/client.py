"""A small client of the dispatcher's admin routes (API.md), over aiohttp.

Each command opens one session (:func:`connect`), makes one to three requests and
closes it. Replies are parsed with the wire models the dispatcher answers with; every
failure comes out as an :class:`~dispatcher.admin.errors.AdminError`.
"""

from __future__ import annotations

import errno
import io
import json
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
from pydantic import ValidationError

from dispatcher import wire
from dispatcher.admin.errors import (
    BadReply,
    Missing,
    Unreachable,
    error_from_reply,
    one_line,
)

API = wire.API_PREFIX
DEFAULT_URL = "http://127.0.0.1:5005"
DEFAULT_TIMEOUT_S = 10.0
NODE_ACTIONS = ("cordon", "uncordon", "drain")

_DIGEST = re.compile(wire.DIGEST_PATTERN)
M = TypeVar("M", bound=wire.WireOut)


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to reach the dispatcher."""

    url: str
    """Base URL without a trailing slash (a path prefix behind a proxy is kept)."""
    token: str | None
    timeout_s: float
    """The longest a whole request (connect, send, read the reply) may take."""


@dataclass(frozen=True, slots=True)
class Reply(Generic[M]):
    """A parsed reply and the JSON it came from (what ``--json`` prints)."""

    model: M
    raw: Any


def short(digest: str) -> str:
    return digest[:12]


def match_digest(prefix: str, digests: Iterable[str]) -> str:
    """The one digest that ``prefix`` names: itself, or the only digest it starts."""
    matches = sorted({d for d in digests if d.startswith(prefix)})
    if prefix in matches:
        return prefix
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise Missing(f"unknown check {prefix!r}: no check's digest starts with it")
    width = max(12, len(prefix) + 4)
    shown = ", ".join(m[:width] for m in matches[:5]) + (", ..." if len(matches) > 5 else "")
    raise Missing(
        f"unknown check {prefix!r}: the prefix matches {len(matches)} checks ({shown}); "
        "give more characters"
    )


def connection_problem(exc: aiohttp.ClientError) -> str:
    """What went wrong on the wire, in a few words."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not accepted: {one_line(str(exc.certificate_error), 160)}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS failed: {one_line(str(exc), 160)}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve host {exc.host!r}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        if isinstance(err, ConnectionRefusedError) or err.errno == errno.ECONNREFUSED:
            return "connection refused"
        return one_line(err.strerror or str(err) or type(err).__name__, 160)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection closed before a reply came"
    return one_line(str(exc) or type(exc).__name__, 160)


class AdminClient:
    """The admin routes, one method each."""

    def __init__(self, session: aiohttp.ClientSession, target: Target) -> None:
        self._session = session
        self.target = target

    async def state(self) -> Reply[wire.StateOut]:
        return await self._call("GET", API, wire.StateOut)

    async def checks(self) -> Reply[wire.ChecksOut]:
        return await self._call("GET", API + "/checks", wire.ChecksOut)

    async def check(self, digest: str) -> Reply[wire.CheckDetailOut]:
        return await self._call(
            "GET",
            f"{API}/checks/{quote(digest, safe='')}",
            wire.CheckDetailOut,
            subject=f"check {digest!r}",
        )

    async def find_check(self, prefix: str) -> Reply[wire.CheckDetailOut]:
        """One check by digest or unique digest prefix."""
        if _DIGEST.fullmatch(prefix):
            try:
                return await self.check(prefix)
            except Missing:
                pass  # a long prefix of a longer digest: look it up in the list
        listing = await self.checks()
        return await self.check(match_digest(prefix, (c.digest for c in listing.model.checks)))

    async def history(self, digest: str, *, limit: int) -> Reply[wire.HistoryOut]:
        return await self._call(
            "GET",
            f"{API}/checks/{quote(digest, safe='')}/history?limit={limit}",
            wire.HistoryOut,
            subject=f"check {digest!r}",
        )

    async def results(self) -> Reply[wire.ResultsPageOut]:
        return await self._call("GET", API + "/results", wire.ResultsPageOut)

    async def rebalance(self, *, force: bool, dry_run: bool) -> Reply[wire.RebalanceOut]:
        body = wire.RebalanceIn(force=force, dry_run=dry_run).model_dump()
        return await self._call(
            "POST", API + "/rebalance", wire.RebalanceOut, body=body, action="rebalance"
        )

    async def node_action(self, node: str, action: str) -> Reply[wire.NodeOut]:
        if action not in NODE_ACTIONS:
            raise ValueError(f"unknown node action {action!r}")
        return await self._call(
            "POST",
            f"{API}/nodes/{quote(node, safe='')}/{action}",
            wire.NodeOut,
            subject=f"node {node!r}",
            action=f"{action} node {node!r}",
        )

    async def isolate(self, digest: str) -> Reply[wire.IsolateOut]:
        return await self._call(
            "POST",
            f"{API}/isolate/{quote(digest, safe='')}",
            wire.IsolateOut,
            subject=f"check {digest!r}",
            action=f"isolate check {short(digest)!r}",
        )

    async def replicas(self) -> Reply[wire.ReplicasOut]:
        return await self._call("GET", API + "/replicas", wire.ReplicasOut)

    async def export(self) -> Reply[wire.ExportOut]:
        return await self._call("GET", API + "/export", wire.ExportOut)

    async def import_document(
        self, document: bytes, *, mode: str, dry_run: bool
    ) -> Reply[wire.ImportOut]:
        """Sends an export document as it is: the dispatcher validates it (and names
        the bad entries), so this command needs no rules of its own."""
        query = urlencode({"mode": mode, "dry_run": "true" if dry_run else "false"})
        return await self._call(
            "POST", f"{API}/import?{query}", wire.ImportOut, raw=document, action="import"
        )

    async def _call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        body: dict[str, Any] | None = None,
        raw: bytes | None = None,
        subject: str | None = None,
        action: str | None = None,
    ) -> Reply[M]:
        """``body`` goes as JSON; ``raw``, bytes that are JSON already, as they are."""
        base = self.target.url
        sent: dict[str, Any] = {"json": body}
        if raw is not None:
            # A stream: aiohttp warns that big bytes would hold the loop while sent.
            sent = {"data": io.BytesIO(raw), "headers": {"Content-Type": "application/json"}}
        try:
            async with self._session.request(
                method, base + path, allow_redirects=False, **sent
            ) as response:
                raw = await response.read()
                status, reason = response.status, response.reason or ""
                retry_after = response.headers.get("Retry-After")
        except TimeoutError as exc:
            raise Unreachable(
                f"no reply from the dispatcher at {base} within "
                f"{self.target.timeout_s:g} s (--timeout)"
            ) from exc
        except aiohttp.ClientError as exc:
            raise Unreachable(
                f"cannot reach the dispatcher at {base}: {connection_problem(exc)}"
            ) from exc
        except OSError as exc:  # what aiohttp leaves unwrapped (a reset mid-reply, say)
            raise Unreachable(
                f"cannot reach the dispatcher at {base}: {one_line(str(exc), 160)}"
            ) from exc
        if not 200 <= status < 300:
            raise error_from_reply(
                status,
                raw,
                url=base,
                reason=reason,
                subject=subject,
                action=action,
                token_given=self.target.token is not None,
                retry_after=retry_after,
            )
        try:
            data = json.loads(raw)
            return Reply(model.model_validate(data), data)
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
            where = ".".join(str(p) for p in first["loc"]) or "the body"
            raise BadReply(
                f"the dispatcher at {base} sent a reply this command cannot read "
                f"({status}, {method} {path}): {where}: {one_line(str(first['msg']), 160)}"
            ) from exc
        except ValueError as exc:
            raise BadReply(
                f"the dispatcher at {base} sent a reply that is not JSON "
                f"({status}, {method} {path}): {one_line(raw.decode(errors='replace'), 80)!r}"
            ) from exc


@asynccontextmanager
async def connect(target: Target) -> AsyncIterator[AdminClient]:
    """A client with its own session, closed on exit."""
    headers = {"Accept": "application/json", "User-Agent": "clusterchecks-dispatcher-admin"}
    if target.token is not None:
        headers["Authorization"] = f"Bearer {target.token}"
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        yield AdminClient(session, target)
