"""Builds a node agent from settings and runs it until told to stop.

Shutdown order (SIGTERM/SIGINT): stop polling, stop every check, flush results, send
the final status with ``leaving: true``, close the local server.
"""

from __future__ import annotations

import asyncio
import gc
import random
import signal
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from dispatcher.common.clock import Clock, SystemClock
from dispatcher.common.health import HealthRegistry, Status
from node_agent.checks import CheckKind
from node_agent.checks.dns import DnsCheck
from node_agent.checks.exec import ExecCheck
from node_agent.checks.http import HttpCheck
from node_agent.checks.tcp import TcpCheck
from node_agent.client import DispatcherClient
from node_agent.metrics import AgentMetrics
from node_agent.poller import Poller
from node_agent.reconciler import Reconciler
from node_agent.reports import RunRegistry
from node_agent.results import ResultBatcher
from node_agent.runner import CheckLoop, CheckSpec
from node_agent.server import create_app
from node_agent.settings import AgentSettings

log = structlog.get_logger("node_agent")


@dataclass
class _Running:
    loop: CheckLoop
    task: asyncio.Task[None]


class NodeAgent:
    def __init__(self, settings: AgentSettings, *, clock: Clock | None = None) -> None:
        self.settings = s = settings
        self.clock = clock or SystemClock()
        self.health = HealthRegistry(clock=self.clock)
        self.metrics = AgentMetrics()
        self.health.watch(
            lambda name, status: self.metrics.health.labels(component=name).set(int(status))
        )
        self.runs = RunRegistry(self.clock)
        self._rng = random.Random()
        self._capacity = asyncio.Semaphore(settings.capacity)
        # A fresh connection per check run: a check must see the TCP and TLS handshake.
        self._checks_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0)
        )
        self._dispatcher_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8))
        client = DispatcherClient(
            urls=s.dispatcher_urls,
            node=s.name,
            session=self._dispatcher_session,
            token=s.token,
            timeout_s=s.request_timeout_s,
        )
        self.kinds: dict[str, CheckKind] = {
            "http": HttpCheck(self._checks_session, clock=self.clock),
            "tcp": TcpCheck(),
            "dns": DnsCheck(),
            "exec": ExecCheck(allow=s.allow_exec, registry=self.runs, report_url=s.report_url),
        }
        self.reconciler: Reconciler[CheckSpec, _Running] = Reconciler(
            start=self._start_check, stop=self._stop_check, clock=self.clock
        )
        self.results = ResultBatcher(
            client=client,
            metrics=self.metrics,
            flush_s=s.results_flush_s,
            max_pending=s.max_pending_results,
            clock=self.clock,
        )
        self.poller = Poller(
            settings=s,
            client=client,
            apply=self.reconciler.set_desired,
            running=lambda: sorted(self.reconciler.actual),
            stats=self._stats,
            clock=self.clock,
            health=self.health,
            rng=self._rng,
        )
        for component in ("runners", "report_server"):
            self.health.register(component)

    async def run(self, stop: asyncio.Event) -> None:
        """Runs until ``stop``; then stops checks, flushes results and leaves, all within
        ``shutdown_timeout_s`` even when the dispatcher hangs."""
        s = self.settings
        self.health.suppress_liveness(s.liveness_grace_s)
        runner = web.AppRunner(
            create_app(runs=self.runs, health=self.health, metrics=self.metrics),
            access_log=None,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        _settle_garbage_collector()
        try:
            await web.TCPSite(runner, s.host, s.port, reuse_address=True).start()
            self.health.report("report_server", Status.HEALTHY, f"listening on {s.report_url}")
            self.health.report("runners", Status.HEALTHY, "0 checks")
            log.info(
                "agent_started",
                name=s.name,
                dispatchers=list(s.dispatcher_urls),
                capacity=s.capacity,
                labels=s.labels,
            )
            loops_stop = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                loops = [
                    tasks.create_task(self.poller.run(loops_stop), name="poller"),
                    tasks.create_task(self.reconciler.run(loops_stop), name="reconciler"),
                    tasks.create_task(self.results.run(loops_stop), name="results"),
                    tasks.create_task(self.health.run_probes(loops_stop), name="health_probes"),
                ]
                await stop.wait()
                self.health.suppress_liveness(s.liveness_grace_s)  # a planned stop
                loops_stop.set()
                for loop in loops:  # requests in flight end now, not at their timeout
                    loop.cancel()
            await self._shutdown()
        finally:
            await runner.cleanup()
            await self._checks_session.close()
            await self._dispatcher_session.close()
            log.info("agent_stopped")

    async def _shutdown(self) -> None:
        try:
            async with self.clock.timeout(self.settings.shutdown_timeout_s):
                await self.reconciler.stop_all()
                flushed = await self.results.flush()
                left = await self.poller.leave()
            log.info("agent_left", results_flushed=flushed, deregistered=left)
        except TimeoutError:
            log.warning("shutdown_timed_out", timeout_s=self.settings.shutdown_timeout_s)

    def _stats(self) -> dict[str, Any]:
        return {digest: r.loop.stats.to_wire() for digest, r in self.reconciler.actual.items()}

    async def _start_check(self, spec: CheckSpec) -> _Running:
        loop = CheckLoop(
            spec,
            kinds=self.kinds,
            capacity=self._capacity,
            emit=self.results.add,
            clock=self.clock,
            metrics=self.metrics,
            rng=self._rng,
        )
        task = asyncio.create_task(loop.run(), name=f"check:{spec.name}:{spec.digest[:8]}")
        running = _Running(loop=loop, task=task)
        task.add_done_callback(lambda t: self._check_ended(spec, running, t))
        log.info("check_started", digest=spec.digest, check=spec.name, interval_s=spec.interval_s)
        self._running_changed(+1)
        return running

    def _check_ended(self, spec: CheckSpec, running: _Running, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return  # stopped on purpose
        error = task.exception()
        log.error("check_loop_crashed", digest=spec.digest, check=spec.name, error=repr(error))
        self.reconciler.lost(spec.digest, running)
        self._running_changed(0)

    async def _stop_check(self, running: _Running) -> None:
        running.task.cancel()
        await asyncio.gather(running.task, return_exceptions=True)
        spec = running.loop.spec
        self.metrics.forget(spec.digest, spec.name)
        log.info("check_stopped", digest=spec.digest, check=spec.name)
        self._running_changed(-1)

    def _running_changed(self, delta: int) -> None:
        count = len(self.reconciler.actual) + delta
        self.metrics.checks_running.set(count)
        self.health.report("runners", Status.HEALTHY, f"{count} checks")


def _settle_garbage_collector() -> None:
    """Moves everything alive after start-up (modules, classes, ~50k objects) out of the
    collector's reach and makes young collections rarer.

    Measured at 1,000 checks/s: a full collection walked every import-time object and
    paused every run due meanwhile by up to ~75 ms, which alone set the p99 lateness.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


async def run(settings: AgentSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await NodeAgent(settings).run(stop)
