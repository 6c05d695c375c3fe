"""``http``: a request whose status, body and certificate are judged."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from pydantic import Field, field_validator

from dispatcher.common.clock import Clock
from node_agent.checks import InstanceModel, Outcome, RunContext, validate_instance

MAX_BODY_BYTES = 1024 * 1024


class HttpInstance(InstanceModel):
    url: str
    method: str = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: list[int] | None = None
    body_contains: str | None = None
    body_regex: str | None = None
    verify_tls: bool = True
    cert_expiry_warning_days: float = Field(default=14, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("body_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class HttpCheck:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        clock: Clock,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context`` replaces the system trust store for verified requests; ``clock``
        tells how long a certificate has left."""
        self._session = session
        self._clock = clock
        self._ssl_context = ssl_context
        # Built once: loading the trust store per run would cost more than the check.
        self._verify_context = ssl_context or ssl.create_default_context()

    def parse(self, instance: dict[str, Any], init_config: dict[str, Any]) -> HttpInstance:
        parsed: HttpInstance = validate_instance(HttpInstance, instance)
        return parsed

    async def run(self, instance: HttpInstance, context: RunContext) -> Outcome:
        errors: list[str] = []
        label = f"{instance.method} {instance.url}"
        try:
            async with self._session.request(
                instance.method,
                instance.url,
                headers=instance.headers,
                ssl=(self._ssl_context or True) if instance.verify_tls else False,
                allow_redirects=True,
            ) as response:
                body = await response.content.read(MAX_BODY_BYTES)
                status = response.status
        except aiohttp.ClientError as exc:
            return Outcome(errors=[f"{label}: {type(exc).__name__}: {exc}"])
        except ssl.SSLError as exc:
            return Outcome(errors=[f"{label}: TLS: {exc}"])
        text = body.decode("utf-8", errors="replace")
        expected = instance.expect_status
        if (expected is None and not 200 <= status <= 399) or (
            expected is not None and status not in expected
        ):
            errors.append(f"{label}: {status}")
        if instance.body_contains is not None and instance.body_contains not in text:
            errors.append(f"{label}: body does not contain {instance.body_contains!r}")
        if instance.body_regex is not None and not re.search(instance.body_regex, text):
            errors.append(f"{label}: body does not match /{instance.body_regex}/")
        if instance.verify_tls and instance.url.startswith("https://"):
            cert_error = await self._certificate_problem(instance)
            if cert_error:
                errors.append(f"{label}: {cert_error}")
        return Outcome(errors=errors, output=f"{status} {text[:512]}")

    async def _certificate_problem(self, instance: HttpInstance) -> str | None:
        """Reads the server's certificate through its own verified handshake.

        aiohttp does not expose the peer certificate once a small response is read (the
        connection is already released), so the check asks the server itself.
        """
        url = urlsplit(instance.url)
        if url.hostname is None:
            return None
        context = self._verify_context
        try:
            _, writer = await asyncio.open_connection(
                url.hostname, url.port or 443, ssl=context, server_hostname=url.hostname
            )
        except (OSError, ssl.SSLError) as exc:
            return f"certificate: {exc}"
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            cert = ssl_object.getpeercert() if ssl_object is not None else None
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        if not cert or "notAfter" not in cert:
            return None
        expires_at = ssl.cert_time_to_seconds(str(cert["notAfter"]))
        days_left = (expires_at - self._clock.time()) / 86400
        if days_left < instance.cert_expiry_warning_days:
            return (
                f"certificate expires in {days_left:.1f} days "
                f"(warning at {instance.cert_expiry_warning_days:g})"
            )
        return None
