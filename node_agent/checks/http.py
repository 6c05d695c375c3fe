"""``http``: a request whose status, body and certificate are judged."""

from __future__ import annotations

import re
import ssl
import time
from typing import Any

import aiohttp
from pydantic import Field, field_validator

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
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

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
                ssl=instance.verify_tls,
                allow_redirects=True,
            ) as response:
                cert_error = _certificate_problem(response, instance)
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
        if cert_error:
            errors.append(f"{label}: {cert_error}")
        return Outcome(errors=errors, output=f"{status} {text[:512]}")


def _certificate_problem(response: aiohttp.ClientResponse, instance: HttpInstance) -> str | None:
    if not instance.verify_tls or response.connection is None:
        return None
    transport = response.connection.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert or "notAfter" not in cert:
        return None
    expires_at = ssl.cert_time_to_seconds(str(cert["notAfter"]))
    days_left = (expires_at - time.time()) / 86400
    if days_left < instance.cert_expiry_warning_days:
        return (
            f"certificate expires in {days_left:.1f} days "
            f"(warning at {instance.cert_expiry_warning_days:g})"
        )
    return None
