"""Dispatcher settings: one frozen dataclass per concern, units in the field names.

Read once at start (flags and ``CLUSTERCHECKS_*`` environment, see ``cli.py``);
cross-field rules are checked by ``validate()`` with a message naming the flags.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dispatcher.errors import ConfigurationError

ElectionBackend = Literal["standalone", "redis", "kubernetes"]
StoreBackend = Literal["sqlite", "memory", "redis"]

ELECTION_BACKENDS: tuple[str, ...] = ("standalone", "redis", "kubernetes")
STORE_BACKENDS: tuple[str, ...] = ("sqlite", "memory", "redis")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_LEASE_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_NAMESPACE = re.compile(r"(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DEFAULT_WARMUP_S = 30.0
"""Warm-up of an elected leader with the memory store (ARCHITECTURE.md, Warm-up)."""
MAX_SERVER_TIMEOUT_S = 3600.0
"""The server's timeouts are seconds to minutes; more than an hour is surely a typo."""


UI_REFRESH_MIN_S = 0.5
UI_REFRESH_MAX_S = 300.0


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 5005
    identity: str = "dispatcher"
    advertise_url: str = ""
    """URL followers and agents use to reach this replica; default http(s)://host:port."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    max_import_bytes: int = 16 * 1024 * 1024
    """The body limit of ``POST /import`` alone: a whole export (about 160 bytes per
    check without indentation: some 100,000 checks) in one request. Parsing and
    validating it takes about 12 times its size in memory (measured: 26.5 MB for a
    2.2 MB document of 20,000 checks), so the default stays within the manifests'
    512 MiB."""
    header_timeout_s: float = 10.0
    """A request head (request line and headers) must be complete this long after the
    connection opens, or after the first byte of the next request on a kept-alive one;
    else ``408`` and the connection closes (silently when nothing at all came)."""
    body_timeout_s: float = 60.0
    """A request body must be complete this long after its head (a 4 MiB body at 70
    KB/s); else ``408``, the handler waiting for it stops and the connection closes."""
    idle_timeout_s: float = 75.0
    """A kept-alive connection with no request in progress is closed after this long.
    Longer than the keep-alive of aiohttp's client (15 s), so that clients close first.
    No timeout applies while a request is handled: a long poll waits its ``wait_s``."""
    max_connections: int | None = None
    """Open connections at most. At the limit a new connection closes the one idle the
    longest; when every one is in a request, the new one gets ``503`` and is closed.
    None: 25,000 (``fdlimits.DEFAULT_MAX_CONNECTIONS``), or what the open-file limit
    leaves after a reserve for the process's other files, whichever is lower."""
    accept_error_log_interval_s: float = 10.0
    """Running out of file descriptors fails every accept: logged at most once per
    interval, with the count."""
    ui_refresh_s: float = 3.0
    """How often the dashboard (``/ui/``) asks for the overview again."""

    def validate(self) -> None:
        for flag, value in (
            ("--header-timeout", self.header_timeout_s),
            ("--body-timeout", self.body_timeout_s),
            ("--idle-timeout", self.idle_timeout_s),
            ("--accept-error-log-interval", self.accept_error_log_interval_s),
        ):
            if not 0 < value <= MAX_SERVER_TIMEOUT_S:
                raise ConfigurationError(
                    f"{flag} {value:g}: must be more than 0 and at most "
                    f"{MAX_SERVER_TIMEOUT_S:g} seconds."
                )
        if not UI_REFRESH_MIN_S <= self.ui_refresh_s <= UI_REFRESH_MAX_S:
            raise ConfigurationError(
                f"--ui-refresh {self.ui_refresh_s:g}: must be from {UI_REFRESH_MIN_S:g} to "
                f"{UI_REFRESH_MAX_S:g} seconds."
            )
        if self.max_import_bytes < self.max_body_bytes:
            raise ConfigurationError(
                f"--max-import-bytes {self.max_import_bytes}: must be at least the body "
                f"limit of every other route ({self.max_body_bytes} bytes)."
            )
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigurationError(
                f"--max-connections {self.max_connections}: must be at least 1 (or unset for "
                "the default)."
            )

    @property
    def url(self) -> str:
        if self.advertise_url:
            return self.advertise_url
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


TICK_INTERVAL_S = 0.25
"""The longest between two expiry and re-dispatch ticks (``tick_interval_s``)."""
RESULTS_INTERVAL_HEARTBEATS = 3
"""The longest ``results_interval_s`` told, in heartbeat intervals."""


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    node_expiration_timeout_s: float = 30.0
    """A node whose last heartbeat is older than this is removed; its checks move."""
    heartbeat_interval_s: float = 10.0
    """Told to agents in every status reply."""
    result_posts_per_s: float = 250.0
    """The rate of results posts the leader paces the fleet to: every status reply tells
    the agent to post its results at most every ``results_interval_s`` (registered nodes
    over this rate, at most three heartbeat intervals). Up to 250 agents post every
    second, 2,500 every 10 s, batching ten times as many results a post. A post costs
    the leader about as much as a heartbeat, whatever it holds (the fleet benchmark:
    about 0.4 ms of CPU for a post of one result), so this keeps what results cost the
    leader bounded as the fleet grows; a result then shows at most that much later."""
    warmup_duration_s: float = 0.0
    """Only for a leader that starts with an empty store: by default 30 s for an elected
    leader with the memory store, 0 for the standalone one and with the Redis store."""
    rebalance_period_s: float = 600.0
    rebalance_margin: float = 0.1
    """A rebalance brings every node within this fraction above the mean relative load."""
    rebalance_min_gain: float = 0.1
    """A rebalance that narrows the spread by less than this fraction of it moves
    nothing, unless forced."""
    dangling_warning_s: float = 60.0
    """A check dangling longer than this is flagged (logs, metrics)."""
    max_checks_per_source: int = 100_000
    """A PUT or POST that would make one source hold more checks than this is refused
    whole (``413 too_many_checks``). 100,000 is the largest cluster this release is
    built for (100,000 checks over 10,000 agents), so such a cluster fits in one source;
    a source beyond it is more likely a runaway sync than a real cluster, and each check
    costs the dispatcher about 1.7 KiB (README, benchmarks), so the limit caps what one
    source can take at about 170 MiB."""
    max_checks_per_node: int = 10_000
    """A node holding this many checks takes no more: placement skips it, and a check
    with no other eligible node dangles (its explanation says so) until room appears.
    10,000 checks at the default 15 s interval are about 670 runs a second, about what one
    agent core runs in time (the agent benchmark: plan for 800 ``http`` runs a second per
    core), so one agent cannot be handed a whole large source; a cluster balanced over
    its agents stays far below it. A node's ``capacity`` stays the balancing weight."""
    history_max_results: int = 2000
    """Results kept per check (``GET .../checks/{digest}/history``); the oldest goes when
    one more arrives. 2,000 runs are about 8 h at a 15 s interval, a week at 5 min.
    0 keeps no history (no uptime, nothing written to the store for a result)."""
    history_max_total: int = 500_000
    """Results kept for all checks together: each check keeps an equal share, at most
    ``history_max_results``. A result kept costs the leader about 0.3 KiB (the history
    benchmark), so the default holds the history within about 150 MiB whatever the
    cluster's size: 2,000 results each for up to 250 checks, 50 each at 10,000."""
    history_max_age_s: float = 7 * 24 * 3600.0
    """Results older than this are dropped from a check's history (uptime over 7 d)."""
    apply_slice_checks: int = 500
    """A change to more checks than this (a big PUT or POST) is validated and applied in
    slices of this many, the lock released and the event loop free between slices, so
    heartbeats and ``/healthz`` keep answering; the reply still waits for every slice."""

    def results_interval_s(self, nodes: int) -> float:
        """What a status reply tells an agent: post results at most this often. Rounded
        up to a tenth of a second, so that the value changes rarely as nodes come and go."""
        paced = math.ceil(nodes / self.result_posts_per_s * 10) / 10
        return min(RESULTS_INTERVAL_HEARTBEATS * self.heartbeat_interval_s, paced)

    @property
    def tick_interval_s(self) -> float:
        """Expiry and dangling re-dispatch run at least every quarter second: a node's
        checks go elsewhere within a quarter second of its expiry, not up to a second
        after it (a tick that expires nothing costs a few microseconds)."""
        return min(TICK_INTERVAL_S, self.node_expiration_timeout_s / 4)

    def validate(self) -> None:
        for flag, value in (
            ("--max-checks-per-source", self.max_checks_per_source),
            ("--max-checks-per-node", self.max_checks_per_node),
            ("--history-max-total", self.history_max_total),
            ("apply_slice_checks", self.apply_slice_checks),
            ("--result-posts-per-s", self.result_posts_per_s),
        ):
            if value < 1:
                raise ConfigurationError(f"{flag} ({value}) must be at least 1.")
        if self.history_max_results < 0:
            raise ConfigurationError(
                f"--history-max-results ({self.history_max_results}) must be 0 (no history)"
                " or more."
            )
        if not (self.history_max_age_s > 0 and math.isfinite(self.history_max_age_s)):
            raise ConfigurationError(
                f"--history-max-age ({self.history_max_age_s:g} s) must be a positive number."
            )


@dataclass(frozen=True, slots=True)
class AuthSettings:
    node_token: str | None = None
    source_token: str | None = None
    admin_token: str | None = None

    @property
    def enabled(self) -> bool:
        return any((self.node_token, self.source_token, self.admin_token))


@dataclass(frozen=True, slots=True)
class ElectionSettings:
    backend: ElectionBackend = "standalone"
    lease_duration_s: float = 15.0
    """How long a lease holds without renewal (others judge it by their own clocks)."""
    renew_deadline_s: float = 10.0
    """A leader stops acting this long after the start of its last successful renewal."""
    retry_period_s: float = 2.0
    """Between attempts to acquire or renew."""
    lease_name: str = "clusterchecks-dispatcher"
    """The Lease object (kubernetes) or the key prefix (redis, also for the store)."""
    lease_namespace: str = "default"
    """Namespace of the Lease object (kubernetes)."""


@dataclass(frozen=True, slots=True)
class StoreSettings:
    backend: StoreBackend = "sqlite"
    """sqlite: a file in ``data_dir`` (standalone only); redis: shared (HA); memory:
    nothing kept (tests, throwaway runs; a restart rebuilds from the agents)."""
    data_dir: Path = Path("data")
    """The sqlite store's directory (created when missing), relative to the working one."""

    def validate(self, *, election: str) -> None:
        if self.backend == "sqlite" and election != "standalone":
            raise ConfigurationError(
                f"--store sqlite cannot be used with --election {election}: its file is not "
                "shared between replicas; use --store redis (or memory)."
            )


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    """Used by the redis election and the redis store."""
    timeout_s: float = 2.0
    """Socket and pool timeout of every Redis call."""


@dataclass(frozen=True, slots=True)
class KubernetesSourceSettings:
    enabled: bool = False
    """Checks from annotated Services and labelled ConfigMaps (leader only)."""
    namespace: str = ""
    """Watch this namespace only; empty: every namespace."""
    cluster_domain: str = "cluster.local"
    """``%%host%%`` is ``<service>.<namespace>.svc.<cluster_domain>``."""
    watch_timeout_s: float = 300.0
    """The API server ends each watch after this long; it is resumed at once."""

    def validate(self) -> None:
        if self.namespace and not _NAMESPACE.fullmatch(self.namespace):
            raise ConfigurationError(
                f"--kubernetes-source-namespace {self.namespace!r}: must be a DNS label "
                "(lower-case letters, digits and '-', at most 63 characters), or empty for "
                "every namespace."
            )
        if not _LEASE_NAME.fullmatch(self.cluster_domain):
            raise ConfigurationError(
                f"--cluster-domain {self.cluster_domain!r}: must be a DNS name (lower-case "
                "letters, digits, '-' and '.')."
            )


@dataclass(frozen=True, slots=True)
class HealthSettings:
    replica_status_period_s: float = 10.0
    """How often each replica writes its status to the shared store (time-to-live: 3x)."""
    liveness_grace_s: float = 30.0
    """After start-up and during shutdown, liveness passes whatever the components say."""


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: Literal["json", "console"] = "json"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = ServerSettings()
    dispatch: DispatchSettings = DispatchSettings()
    auth: AuthSettings = AuthSettings()
    election: ElectionSettings = ElectionSettings()
    store: StoreSettings = StoreSettings()
    redis: RedisSettings = RedisSettings()
    log: LogSettings = LogSettings()
    health: HealthSettings = HealthSettings()
    kubernetes_source: KubernetesSourceSettings = KubernetesSourceSettings()
    kubeconfig: Path | None = None
    """For the Kubernetes API outside a pod (in a pod: its service account)."""
    config_dir: Path | None = None
    config_dir_poll_s: float = 1.0

    def validate(self) -> Settings:
        """Checks the rules that tie settings together; raises ConfigurationError."""
        d = self.dispatch
        if d.heartbeat_interval_s >= d.node_expiration_timeout_s:
            raise ConfigurationError(
                f"--heartbeat-interval ({d.heartbeat_interval_s:g} s) must be shorter than "
                f"--node-expiration-timeout ({d.node_expiration_timeout_s:g} s), or every "
                "node would expire between two heartbeats."
            )
        d.validate()
        e = self.election
        if not e.lease_duration_s > e.renew_deadline_s > e.retry_period_s:
            raise ConfigurationError(
                "--lease-duration must be greater than --renew-deadline, which must be "
                f"greater than --retry-period (got {e.lease_duration_s:g} > "
                f"{e.renew_deadline_s:g} > {e.retry_period_s:g})."
            )
        self.store.validate(election=e.backend)
        uses_redis = e.backend == "redis" or self.store.backend == "redis"
        if uses_redis and not self.redis.url.startswith(REDIS_SCHEMES):
            raise ConfigurationError(
                f"--redis-url {self.redis.url!r}: must start with one of "
                f"{', '.join(REDIS_SCHEMES)}."
            )
        s = self.server
        s.validate()
        if e.backend != "standalone" and not s.advertise_url and s.host in ("0.0.0.0", "::"):
            raise ConfigurationError(
                f"--advertise-url is required with --election {e.backend} when --host is "
                f"{s.host}: followers forward requests to the leader at that URL."
            )
        if not _LEASE_NAME.fullmatch(e.lease_name):
            raise ConfigurationError(
                f"--lease-name {e.lease_name!r}: must be a DNS subdomain name (lower-case "
                "letters, digits, '-' and '.', at most 253 characters)."
            )
        if not _NAMESPACE.fullmatch(e.lease_namespace):
            raise ConfigurationError(
                f"--lease-namespace {e.lease_namespace!r}: must be a DNS label (lower-case "
                "letters, digits and '-', at most 63 characters)."
            )
        if (s.tls_cert is None) != (s.tls_key is None):
            raise ConfigurationError("--tls-cert and --tls-key must be given together.")
        for flag, path in (("--tls-cert", s.tls_cert), ("--tls-key", s.tls_key)):
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigurationError(f"{flag} {path}: not a readable file.")
        a = self.auth
        if a.enabled and not a.admin_token:
            raise ConfigurationError(
                "--admin-token (or --admin-token-file) is required once any token is set."
            )
        if not a.enabled and not is_loopback(s.host):
            raise ConfigurationError(
                f"Refusing to serve on {s.host} without authentication: set --admin-token "
                "(and --node-token, --source-token), or bind --host to a loopback address."
            )
        self.kubernetes_source.validate()
        if self.config_dir is not None and not self.config_dir.is_dir():
            raise ConfigurationError(f"--config-dir {self.config_dir}: not a directory.")
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
