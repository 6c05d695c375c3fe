"""The http check over TLS: verification and the certificate expiry warning, against a
real HTTPS server whose certificate (valid 5 days) is signed by a throwaway CA. The check
reads the time from a fake clock set against the certificate's own expiry, so the days it
reports are exact."""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from dispatcher.common.clock import FakeClock, SystemClock
from node_agent.checks import RunContext
from node_agent.checks.http import HttpCheck

CONTEXT = RunContext(
    check_name="http", digest="d" * 32, run_id="r", timeout_s=5, deadline_unix_s=time.time() + 5
)


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path

    def expires_at(self) -> float:
        """The server certificate's notAfter, in Unix seconds."""
        out = subprocess.run(
            ["openssl", "x509", "-enddate", "-noout", "-in", str(self.cert)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        return float(ssl.cert_time_to_seconds(out.strip().removeprefix("notAfter=")))

    def days_before_expiry(self, days: float) -> FakeClock:
        """A clock that reads ``days`` before the certificate expires."""
        return FakeClock(wall=self.expires_at() - days * 86400)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "30",
        "-subj",
        "/CN=clusterchecks test CA",
        cwd=d,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
        cwd=d,
    )
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "srv.crt", "-days", "5",
             "-extfile", "ext.cnf", cwd=d)  # fmt: skip
    return Pki(ca=d / "ca.crt", cert=d / "srv.crt", key=d / "srv.key")


@pytest.fixture
async def https_url(pki: Pki) -> AsyncIterator[str]:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="secure ok")

    app = web.Application()
    app.router.add_get("/", ok)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.cert, pki.key)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


def trusting(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


async def test_a_certificate_expiring_within_the_warning_fails(
    pki: Pki, https_url: str, session: aiohttp.ClientSession
) -> None:
    check = HttpCheck(session, clock=pki.days_before_expiry(4.5), ssl_context=trusting(pki))
    outcome = await check.run(check.parse({"url": https_url}, {}), CONTEXT)
    assert outcome.errors == [
        f"GET {https_url}: certificate expires in 4.5 days (warning at 14)"
    ], outcome


async def test_a_certificate_outside_the_warning_is_ok(
    pki: Pki, https_url: str, session: aiohttp.ClientSession
) -> None:
    check = HttpCheck(session, clock=pki.days_before_expiry(4.5), ssl_context=trusting(pki))
    instance = check.parse({"url": https_url, "cert_expiry_warning_days": 4.4}, {})
    outcome = await check.run(instance, CONTEXT)
    assert outcome.errors == []
    assert "secure ok" in outcome.output


async def test_an_untrusted_certificate_fails_verification(
    https_url: str, session: aiohttp.ClientSession
) -> None:
    check = HttpCheck(session, clock=SystemClock())  # the system trust store lacks the CA
    outcome = await check.run(check.parse({"url": https_url}, {}), CONTEXT)
    assert len(outcome.errors) == 1
    assert "certificate verify failed" in outcome.errors[0].lower(), outcome.errors


async def test_verify_tls_false_accepts_the_untrusted_certificate(
    https_url: str, session: aiohttp.ClientSession
) -> None:
    check = HttpCheck(session, clock=SystemClock())
    outcome = await check.run(check.parse({"url": https_url, "verify_tls": False}, {}), CONTEXT)
    assert outcome.errors == []
