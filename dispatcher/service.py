"""Builds a dispatcher from settings and runs it until told to stop.

Every background loop is a named task in one TaskGroup; the HTTP server is an
``AppRunner`` whose cleanup runs on the way out, after long polls have been woken.

Two shapes: the embedded default (standalone election, memory store) is leader from
the start, with no handler; every other combination runs a LeadershipHandler that
turns an elector's terms into terms of the dispatcher (and loads the shared store).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from dispatcher.api.app import create_app
from dispatcher.common.clock import Clock, SystemClock
from dispatcher.common.fdlimits import (
    FD_RESERVE,
    AcceptErrorLog,
    max_connections_for,
    open_file_limit,
    raise_fd_limit,
)
from dispatcher.common.health import HealthRegistry, Probe, ProbeResult, Status
from dispatcher.common.httpserver import ConnectionLimits, Listener
from dispatcher.election.base import Leadership, LeaseBackend
from dispatcher.election.elector import Elector
from dispatcher.election.standalone import StandaloneLeadership
from dispatcher.engine import Dispatcher
from dispatcher.errors import ConfigurationError
from dispatcher.leadership import (
    Callbacks,
    Campaign,
    LeadershipHandler,
    StandaloneCampaign,
    TermSource,
)
from dispatcher.metrics import CheckGauges, DispatcherMetrics, StateGauges
from dispatcher.replicas import ReplicaReporter
from dispatcher.settings import ServerSettings, Settings
from dispatcher.sources.configdir import COMPONENT as CONFIG_SOURCES
from dispatcher.sources.configdir import ConfigDirSource
from dispatcher.storage.base import StateStore
from dispatcher.storage.replicas import LocalReplicaDirectory, ReplicaDirectory

if TYPE_CHECKING:
    # Imported where a Kubernetes client is made (connect): the client library takes
    # about half a second to import, a third of every start, restarts included, of a
    # dispatcher that never talks to Kubernetes.
    from kubernetes_asyncio.client import ApiClient

log = structlog.get_logger("dispatcher")


@dataclass
class DispatcherService:
    settings: Settings
    dispatcher: Dispatcher
    leadership: Leadership
    health: HealthRegistry
    metrics: DispatcherMetrics
    app: web.Application
    sources: list[TermSource]
    """Every config source the dispatcher feeds itself (the leader runs them)."""
    clock: Clock
    replicas: ReplicaReporter
    handler: LeadershipHandler | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def build(
    settings: Settings,
    *,
    clock: Clock | None = None,
    lease_backend: LeaseBackend | None = None,
    store: StateStore | None = None,
    replica_directory: ReplicaDirectory | None = None,
    kube_client: ApiClient | None = None,
) -> DispatcherService:
    """The dispatcher the settings describe. ``lease_backend``, ``store`` and
    ``replica_directory`` replace the ones the settings name (tests pass in-memory
    ones; ``run`` connects Kubernetes)."""
    clock = clock or SystemClock()
    health = HealthRegistry(clock=clock)
    metrics = DispatcherMetrics()
    health.watch(lambda name, status: metrics.health.labels(component=name).set(int(status)))
    for component in ("api", "election", "store"):
        health.register(component)
    server = settings.server
    dispatcher = Dispatcher(settings=settings.dispatch, clock=clock, metrics=metrics)
    health.register("dispatch_loop", probe=_dispatch_loop_probe(dispatcher, clock))
    sources = _sources(settings, dispatcher, health, clock, kube_client)
    closers: list[Callable[[], Awaitable[None]]] = []
    handler: LeadershipHandler | None = None
    leadership: Leadership
    if settings.election.backend == "standalone" and settings.store.backend == "memory":
        standalone = StandaloneLeadership(
            identity=server.identity, url=server.url, started_at_s=clock.time()
        )
        dispatcher.begin_term(state=dispatcher.new_state(), epoch=standalone.leader().epoch)
        health.report("election", Status.HEALTHY, "standalone: this replica is the leader")
        health.report("store", Status.HEALTHY, "memory")
        leadership = standalone
    else:
        backend = lease_backend or _lease_backend(settings, closers)
        epoch_floor = 0
        if store is None and settings.store.backend == "redis":
            from dispatcher.storage.redis import RedisStateStore

            redis_store = RedisStateStore.from_url(
                settings.redis.url,
                name=settings.election.lease_name,
                timeout_s=settings.redis.timeout_s,
                history_max_results=settings.dispatch.history_max_results,
                history_max_age_s=settings.dispatch.history_max_age_s,
            )
            closers.append(redis_store.close)
            store = redis_store
        elif store is None and settings.store.backend == "sqlite":
            from dispatcher.storage.sqlite import SqliteStateStore

            # Opened here, before anything serves: a data dir another dispatcher holds,
            # or a file that cannot be read, stops the start with the file's name.
            sqlite_store = SqliteStateStore.open(
                settings.store.data_dir,
                history_max_results=settings.dispatch.history_max_results,
                history_max_age_s=settings.dispatch.history_max_age_s,
            )
            closers.append(sqlite_store.close)
            store = sqlite_store
            # Above the last run's epoch even when the clock was set back since: agents
            # ignore a lower one, and the file refuses it.
            epoch_floor = sqlite_store.last_epoch + 1

        def campaign(callbacks: Callbacks) -> Campaign:
            if backend is None:
                return StandaloneCampaign(
                    identity=server.identity,
                    url=server.url,
                    started_at_s=clock.time(),
                    on_started_leading=callbacks.started,
                    on_stopped_leading=callbacks.stopped,
                    epoch_floor=epoch_floor,
                )
            return Elector(
                backend=backend,
                identity=server.identity,
                url=server.url,
                settings=settings.election,
                clock=clock,
                on_started_leading=callbacks.started,
                on_stopped_leading=callbacks.stopped,
                on_new_leader=callbacks.new_leader,
                on_backend=callbacks.backend,
            )

        handler = LeadershipHandler(
            identity=server.identity,
            url=server.url,
            campaign=campaign,
            dispatcher=dispatcher,
            store=store,
            health=health,
            clock=clock,
            election=settings.election,
            sources=sources,
        )
        leadership = handler

    def gauges() -> StateGauges:
        info = leadership.leader()
        known_epoch = info.epoch if info is not None else 0
        if not (leadership.is_leader() and dispatcher.active):
            return StateGauges(is_leader=False, epoch=known_epoch)
        state = dispatcher.state
        now = clock.monotonic()
        threshold = settings.dispatch.dangling_warning_s
        return StateGauges(
            is_leader=True,
            epoch=dispatcher.epoch,
            checks=len(state.configs),
            dangling=len(state.dangling),
            dangling_long=sum(1 for t in state.dangling.values() if now - t > threshold),
            checks_per_node={name: len(node.digests) for name, node in state.nodes.items()},
            results=[
                CheckGauges(
                    digest=digest,
                    check=state.configs[digest].name,
                    node=summary.node,
                    ok=last.ok,
                    duration_s=last.duration_s,
                    consecutive_failures=summary.consecutive_failures,
                    last_run_at=last.started_at,
                )
                for digest, summary in state.results.items()
                for last in (summary.last,)
            ],
        )

    metrics.watch_state(gauges)
    replicas = ReplicaReporter(
        directory=replica_directory or _replica_directory(settings, clock, closers),
        leadership=leadership,
        health=health,
        url=server.url,
        period_s=settings.health.replica_status_period_s,
        clock=clock,
    )
    app = create_app(
        settings=settings,
        dispatcher=dispatcher,
        leadership=leadership,
        health=health,
        metrics=metrics,
        clock=clock,
        replicas=replicas,
    )
    return DispatcherService(
        settings=settings,
        dispatcher=dispatcher,
        leadership=leadership,
        health=health,
        metrics=metrics,
        app=app,
        sources=sources,
        clock=clock,
        replicas=replicas,
        handler=handler,
        closers=closers,
    )


def _sources(
    settings: Settings,
    dispatcher: Dispatcher,
    health: HealthRegistry,
    clock: Clock,
    kube_client: ApiClient | None,
) -> list[TermSource]:
    """The config sources the dispatcher feeds itself: the config directory and the
    Kubernetes objects, when the settings name them."""
    config_dir = None
    if settings.config_dir is not None:
        config_dir = ConfigDirSource(
            directory=settings.config_dir,
            dispatcher=dispatcher,
            health=health,
            clock=clock,
            poll_s=settings.config_dir_poll_s,
        )
    else:
        health.register(CONFIG_SOURCES, required=False)
        health.report(CONFIG_SOURCES, Status.HEALTHY, "API sources only (no --config-dir)")
    sources: list[TermSource] = [config_dir] if config_dir is not None else []
    if settings.kubernetes_source.enabled:
        if kube_client is None:
            raise ConfigurationError("--kubernetes-source needs a Kubernetes client (see run())")
        from dispatcher.sources.kubernetes import KubernetesSource

        k = settings.kubernetes_source
        sources.append(
            KubernetesSource(
                dispatcher=dispatcher,
                health=health,
                client=kube_client,
                clock=clock,
                namespace=k.namespace,
                cluster_domain=k.cluster_domain,
                watch_timeout_s=k.watch_timeout_s,
            )
        )
    return sources


def _replica_directory(
    settings: Settings, clock: Clock, closers: list[Callable[[], Awaitable[None]]]
) -> ReplicaDirectory:
    """Redis when the replicas share one (for the election or the store), else local."""
    if settings.election.backend != "redis" and settings.store.backend != "redis":
        return LocalReplicaDirectory(clock)
    from dispatcher.storage.replicas import RedisReplicaDirectory

    directory = RedisReplicaDirectory.from_url(
        settings.redis.url, name=settings.election.lease_name, timeout_s=settings.redis.timeout_s
    )
    closers.append(directory.close)
    return directory


def _dispatch_loop_probe(dispatcher: Dispatcher, clock: Clock) -> Probe:
    """Unhealthy when the leader's tick loop has stopped stepping: expiry and re-dispatch
    would silently stop, so liveness must fail and the replica be restarted."""
    tick_s = dispatcher.settings.tick_interval_s
    limit_s = max(5.0, 5 * tick_s)

    def probe() -> ProbeResult:
        if not dispatcher.active:
            return Status.HEALTHY, "standby: ticks only while leading"
        age = clock.monotonic() - dispatcher.last_tick_at
        if age > limit_s:
            return Status.UNHEALTHY, f"no tick for {age:.1f} s (expected every {tick_s:g} s)"
        return Status.HEALTHY, f"ticking every {tick_s:g} s"

    return probe


def _lease_backend(
    settings: Settings, closers: list[Callable[[], Awaitable[None]]]
) -> LeaseBackend | None:
    election = settings.election
    if election.backend == "redis":
        from dispatcher.election.redis import RedisLeaseBackend

        redis_backend = RedisLeaseBackend.from_url(
            settings.redis.url, name=election.lease_name, timeout_s=settings.redis.timeout_s
        )
        closers.append(redis_backend.close)
        return redis_backend
    if election.backend == "kubernetes":
        raise ConfigurationError("--election kubernetes needs a connected backend (see run())")
    return None


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    server = settings.server
    if server.tls_cert is None or server.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.tls_cert, server.tls_key)
    return context


async def serve(service: DispatcherService, *, stop: asyncio.Event) -> None:
    """Serves until ``stop`` is set, then shuts down in order."""
    settings = service.settings
    # Start-up (a store to load, a lease to win) must not get the replica restarted.
    service.health.suppress_liveness(settings.health.liveness_grace_s)
    runner = web.AppRunner(service.app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    listener = Listener(
        runner,
        _connection_limits(settings.server),
        host=settings.server.host,
        port=settings.server.port,
        clock=service.clock,
        ssl_context=_ssl_context(settings),
        log_interval_s=settings.server.accept_error_log_interval_s,
    )
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(
        AcceptErrorLog(
            clock=service.clock,
            interval_s=settings.server.accept_error_log_interval_s,
            previous=previous_handler,
        )
    )
    try:
        await listener.start()
        service.health.report("api", Status.HEALTHY, f"listening on {settings.server.url}")
        log.info(
            "dispatcher_started",
            url=settings.server.url,
            identity=settings.server.identity,
            epoch=service.dispatcher.epoch if service.handler is None else None,
            election=settings.election.backend,
            store=settings.store.backend,
            config_dir=str(settings.config_dir) if settings.config_dir else None,
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(service.health.run_probes(stop), name="health_probes")
            tasks.create_task(service.replicas.run(stop), name="replica_status")
            if service.handler is not None:
                tasks.create_task(service.handler.run(stop), name="leadership")
            else:
                tasks.create_task(service.dispatcher.run(stop), name="dispatch_tick")
                for source in service.sources:
                    tasks.create_task(source.run(stop), name=f"source-{type(source).__name__}")
            await stop.wait()
    finally:
        # A planned stop: components go down one by one, and that is no reason to kill.
        service.health.suppress_liveness(settings.health.liveness_grace_s)
        listener.close()
        service.dispatcher.wake_all()
        await runner.cleanup()
        loop.set_exception_handler(previous_handler)
        for close in service.closers:
            try:
                await close()
            except Exception:
                log.exception("close_failed")
        log.info("dispatcher_stopped")


def _connection_limits(server: ServerSettings) -> ConnectionLimits:
    """The settings' limits, with the connection cap fitted to the open-file limit
    when none is set (a cap above the limit would meet EMFILE first)."""
    fd_limit = open_file_limit()
    limits = ConnectionLimits(
        header_timeout_s=server.header_timeout_s,
        body_timeout_s=server.body_timeout_s,
        idle_timeout_s=server.idle_timeout_s,
        max_connections=max_connections_for(server.max_connections, fd_limit),
    )
    if server.max_connections is not None and server.max_connections + FD_RESERVE > fd_limit:
        log.warning(
            "max_connections_above_fd_limit",
            max_connections=server.max_connections,
            fd_limit=fd_limit,
            reason="accepts will fail with EMFILE before the cap is reached",
        )
    log.info(
        "connection_limits",
        max_connections=limits.max_connections,
        fd_limit=fd_limit,
        header_timeout_s=limits.header_timeout_s,
        body_timeout_s=limits.body_timeout_s,
        idle_timeout_s=limits.idle_timeout_s,
    )
    return limits


async def connect(settings: Settings) -> DispatcherService:
    """``build`` with what needs connecting first: one Kubernetes client for the Lease
    backend and the Kubernetes config source (closed with the service)."""
    kube: ApiClient | None = None
    if settings.election.backend == "kubernetes" or settings.kubernetes_source.enabled:
        from dispatcher.common.kubeclient import kube_client

        kubeconfig = str(settings.kubeconfig) if settings.kubeconfig is not None else None
        kube = await kube_client(kubeconfig=kubeconfig)
    lease_backend: LeaseBackend | None = None
    try:
        if settings.election.backend == "kubernetes":
            from dispatcher.election.kubernetes import KubernetesLeaseBackend

            assert kube is not None
            election = settings.election
            lease_backend = KubernetesLeaseBackend(
                kube,
                namespace=election.lease_namespace,
                name=election.lease_name,
                clock=SystemClock(),
                # An attempt may take two or three calls within the elector's own bound.
                call_timeout_s=election.retry_period_s / 2,
            )
        service = build(settings, lease_backend=lease_backend, kube_client=kube)
    except BaseException:
        if kube is not None:
            await kube.close()
        raise
    if kube is not None:
        service.closers.append(kube.close)
    return service


def settle_garbage_collector() -> None:
    """Moves what is alive after start-up out of the collector's reach and makes young
    collections rarer (as the agent does).

    Measured with one PUT of 100,000 checks (tests/bench/bigput.py): with the default
    thresholds, the objects of a big request or of an agent's config fetch outlived
    young collections, filled the oldest generation and set off about 100 full
    collections of the whole state, each stalling the event loop for 150 to 350 ms;
    with these thresholds, none."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


async def run(settings: Settings) -> None:
    """The process's main coroutine: SIGTERM and SIGINT stop it gracefully."""
    settle_garbage_collector()
    fd = raise_fd_limit()
    log.info("fd_limit", before=fd.before, soft=fd.soft, hard=fd.hard, error=fd.error)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(await connect(settings), stop=stop)
