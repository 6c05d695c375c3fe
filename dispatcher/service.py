"""Builds a dispatcher from settings and runs it until told to stop.

Every background loop is a named task in one TaskGroup; the HTTP server is an
``AppRunner`` whose cleanup runs on the way out, after long polls have been woken.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from dataclasses import dataclass

import structlog
from aiohttp import web

from dispatcher.api.app import create_app
from dispatcher.common.clock import Clock, SystemClock
from dispatcher.common.health import HealthRegistry, Status
from dispatcher.election.standalone import StandaloneLeadership
from dispatcher.engine import Dispatcher
from dispatcher.metrics import DispatcherMetrics, StateGauges
from dispatcher.settings import Settings
from dispatcher.sources.configdir import ConfigDirSource

log = structlog.get_logger("dispatcher")


@dataclass
class DispatcherService:
    settings: Settings
    dispatcher: Dispatcher
    leadership: StandaloneLeadership
    health: HealthRegistry
    metrics: DispatcherMetrics
    app: web.Application
    config_dir: ConfigDirSource | None
    clock: Clock


def build(settings: Settings, *, clock: Clock | None = None) -> DispatcherService:
    clock = clock or SystemClock()
    health = HealthRegistry(clock=clock)
    for component in ("api", "election", "store", "dispatch_loop"):
        health.register(component)
    metrics = DispatcherMetrics()
    leadership = StandaloneLeadership(
        identity=settings.server.identity, url=settings.server.url, started_at_s=clock.time()
    )
    dispatcher = Dispatcher(settings=settings.dispatch, clock=clock, metrics=metrics)
    health.report("election", Status.HEALTHY, "standalone: this replica is the leader")
    health.report("store", Status.HEALTHY, "memory")
    config_dir = None
    if settings.config_dir is not None:
        config_dir = ConfigDirSource(
            directory=settings.config_dir,
            dispatcher=dispatcher,
            health=health,
            clock=clock,
            poll_s=settings.config_dir_poll_s,
        )

    def gauges() -> StateGauges:
        state = dispatcher.state
        now = clock.monotonic()
        threshold = settings.dispatch.dangling_warning_s
        info = leadership.leader()
        return StateGauges(
            is_leader=leadership.is_leader(),
            epoch=info.epoch,
            checks=len(state.configs),
            dangling=len(state.dangling),
            dangling_long=sum(1 for t in state.dangling.values() if now - t > threshold),
            checks_per_node={name: len(node.digests) for name, node in state.nodes.items()},
            health={name: int(c.status) for name, c in health.components().items()},
        )

    metrics.watch_state(gauges)
    app = create_app(
        settings=settings,
        dispatcher=dispatcher,
        leadership=leadership,
        health=health,
        metrics=metrics,
        clock=clock,
    )
    return DispatcherService(
        settings=settings,
        dispatcher=dispatcher,
        leadership=leadership,
        health=health,
        metrics=metrics,
        app=app,
        config_dir=config_dir,
        clock=clock,
    )


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
    runner = web.AppRunner(service.app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.server.host,
            settings.server.port,
            ssl_context=_ssl_context(settings),
            reuse_address=True,
        )
        await site.start()
        service.health.report("api", Status.HEALTHY, f"listening on {settings.server.url}")
        service.health.report("dispatch_loop", Status.HEALTHY, "ticking")
        log.info(
            "dispatcher_started",
            url=settings.server.url,
            identity=settings.server.identity,
            epoch=service.leadership.leader().epoch,
            election=settings.election.backend,
            store=settings.store.backend,
            config_dir=str(settings.config_dir) if settings.config_dir else None,
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(service.dispatcher.run(stop), name="dispatch_tick")
            tasks.create_task(service.health.run_probes(stop), name="health_probes")
            if service.config_dir is not None:
                tasks.create_task(service.config_dir.run(stop), name="config_dir")
            await stop.wait()
    finally:
        service.dispatcher.wake_all()
        await runner.cleanup()
        log.info("dispatcher_stopped")


async def run(settings: Settings) -> None:
    """The process's main coroutine: SIGTERM and SIGINT stop it gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(build(settings), stop=stop)
