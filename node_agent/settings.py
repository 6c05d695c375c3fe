"""Node agent settings: one frozen dataclass, units in the field names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dispatcher.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class AgentSettings:
    dispatcher_urls: tuple[str, ...] = ("http://127.0.0.1:5005",)
    name: str = "node"
    labels: dict[str, str] = field(default_factory=dict)
    capacity: int = 8
    """At most this many checks run at the same time; reported to the dispatcher."""
    host: str = "127.0.0.1"
    port: int = 5006
    """Local server: /healthz, /readyz, /metrics, /v1/check-report."""
    token: str | None = None
    allow_exec: tuple[Path, ...] = ()
    """exec checks may only start programs under one of these prefixes."""
    fence_on_disconnect: bool = False
    heartbeat_interval_s: float = 10.0
    """Used until the dispatcher's replies say otherwise."""
    long_poll_s: float = 55.0
    """The longest wait of a config long poll (API.md allows 60; each wait is shortened
    at random by up to ``poller.POLL_JITTER``): a change wakes it at once, so a longer
    wait only means fewer requests (at 10,000 agents, about 240 renewals a second
    instead of 350 at 30 s), and a held poll that stops answering is cut anyway by the
    heartbeats that find the node behind (``poller``)."""
    request_timeout_s: float = 10.0
    results_flush_s: float = 1.0
    max_pending_results: int = 10_000
    shutdown_timeout_s: float = 5.0
    """From SIGTERM to exit, however many checks run: stop them, send the results, leave."""
    liveness_grace_s: float = 30.0
    """After start-up and during shutdown, liveness passes whatever the components say."""
    header_timeout_s: float = 10.0
    """Local server: a request head must be complete this long after the connection
    opens (or the next request's first byte); else ``408`` and the connection closes."""
    body_timeout_s: float = 30.0
    """Local server: a request body must be complete this long after its head (a report
    is at most 1 MiB); else ``408``."""
    idle_timeout_s: float = 75.0
    """Local server: a kept-alive connection with no request in progress closes after
    this long (aiohttp's own default is an hour)."""
    max_connections: int = 1024
    """Local server: open connections at most; at the limit the longest idle one is
    closed, or, when all are in a request, the new one gets ``503``. The checks' own
    connections (up to ``capacity``) need file descriptors too."""

    @property
    def report_url(self) -> str:
        """Where exec programs on this host report: loopback when bound to every address."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1/check-report"

    def validate(self) -> AgentSettings:
        if not self.dispatcher_urls:
            raise ConfigurationError("--dispatcher-url needs at least one URL.")
        for url in self.dispatcher_urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigurationError(
                    f"--dispatcher-url {url!r}: must start with http:// or https://."
                )
        for prefix in self.allow_exec:
            if not prefix.is_absolute():
                raise ConfigurationError(f"--allow-exec {prefix}: must be an absolute path.")
        for flag, value in (
            ("--header-timeout", self.header_timeout_s),
            ("--body-timeout", self.body_timeout_s),
            ("--idle-timeout", self.idle_timeout_s),
            ("--shutdown-timeout", self.shutdown_timeout_s),
        ):
            if not value > 0:
                raise ConfigurationError(f"{flag} {value:g}: must be more than 0 seconds.")
        if self.max_connections < 1:
            raise ConfigurationError(
                f"--max-connections {self.max_connections}: must be at least 1."
            )
        return self
