"""Builds a node agent from settings and runs it until told to stop.

Shutdown order (SIGTERM/SIGINT): stop polling, stop every check, flush results, send
the final status with ``leaving: true``, close the local server, all within
``shutdown_timeout_s`` (the grace) however many checks run and whatever the dispatcher
does. The leave matters most (the dispatcher moves the checks at once instead of after
the expiry), so each step before it has only its share of the grace: stopping the checks
half of it (what is still stopping then is cancelled and left behind), flushing the
results a quarter; the local server gets the last tenth, up to a second.
"""

from __future__ import annotations

import asyncio
import gc
import random
import signal
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import structlog
from aiohttp import web

from dispatcher.common.clock import Clock, SystemClock
from dispatcher.common.fdlimits import AcceptErrorLog, raise_fd_limit
from dispatcher.common.health import HealthRegistry, Status
from dispatcher.common.httpserver import ConnectionLimits, Listener
from node_agent.checks import CheckKind
from node_agent.checks.dns import DnsCheck
from node_agent.checks.exec import ExecCheck
from node_agent.checks.http import HttpCheck
from node_agent.checks.tcp import TcpCheck
from node_agent.client import DispatcherApi, DispatcherClient
from node_agent.metrics import AgentMetrics
from node_agent.poller import Poller
from node_agent.reconciler import Reconciler
from node_agent.reports import RunRegistry
from node_agent.results import ResultBatcher
from node_agent.runner import CheckLoop, CheckSpec
from node_agent.server import create_app
from node_agent.settings import AgentSettings
from node_agent.stats import StatsOutbox

log = structlog.get_logger("node_agent")
T = TypeVar("T")
CANCEL_SLICE = 1_000
"""Check tasks cancelled between two yields at shutdown."""


@dataclass
class _Running:
    loop: CheckLoop
    task: asyncio.Task[None]


class NodeAgent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        clock: Clock | None = None,
        client: DispatcherApi | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``client`` replaces the HTTP client of the dispatcher and ``rng`` the source of
        the first runs' offsets and retry jitter (tests)."""
        self.settings = s = settings
        self.clock = clock or SystemClock()
        self.health = HealthRegistry(clock=self.clock)
        self.metrics = AgentMetrics()
        self.health.watch(
            lambda name, status: self.metrics.health.labels(component=name).set(int(status))
        )
        self.runs = RunRegistry(self.clock)
        self._rng = rng or random.Random()
        self._capacity = asyncio.Semaphore(settings.capacity)
        # A fresh connection per check run: a check must see the TCP and TLS handshake.
        self._checks_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0)
        )
        self._dispatcher_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8))
        if client is None:
            client = DispatcherClient(
                urls=s.dispatcher_urls,
                node=s.name,
                session=self._dispatcher_session,
                token=s.token,
                timeout_s=s.request_timeout_s,
            )
        self._stats_outbox = StatsOutbox()
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
            pace_results=self.results.pace,
        )
        for component in ("runners", "report_server"):
            self.health.register(component)
        self._server_close_s = min(1.0, s.shutdown_timeout_s / 10)
        self.port = s.port
        """The local server's port (the bound one once running, with port 0)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Runs until ``stop``; then stops checks, flushes results and leaves, all within
        ``shutdown_timeout_s`` even when the dispatcher hangs."""
        s = self.settings
        self.health.suppress_liveness(s.liveness_grace_s)
        runner = web.AppRunner(
            create_app(runs=self.runs, health=self.health, metrics=self.metrics),
            access_log=None,
            shutdown_timeout=self._server_close_s,
        )
        await runner.setup()
        # The connection layer the dispatcher serves with: a client that is idle, slow
        # or sends malformed HTTP cannot hold the agent's sockets (a DaemonSet agent
        # bound to every address is reachable by every pod on the node).
        listener = Listener(
            runner,
            ConnectionLimits(
                header_timeout_s=s.header_timeout_s,
                body_timeout_s=s.body_timeout_s,
                idle_timeout_s=s.idle_timeout_s,
                max_connections=s.max_connections,
            ),
            host=s.host,
            port=s.port,
            clock=self.clock,
        )
        try:
            await listener.start()
            self.port = listener.port
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
            listener.close()
            await runner.cleanup()
            await self._checks_session.close()
            await self._dispatcher_session.close()
            log.info("agent_stopped")

    async def _shutdown(self) -> None:
        grace = self.settings.shutdown_timeout_s
        deadline = self.clock.monotonic() + grace
        stopped = await self._within(deadline - grace / 2, "stop_checks", self._stop_checks())
        if not stopped:
            # Cancelled without waiting: no run starts after the leave, and the exit
            # does not wait for thousands of cleanups either.
            left_behind = self._abandon_checks()
            log.warning("checks_left_running", count=left_behind, within_s=grace / 2)
        flushed = await self._within(deadline - grace / 4, "flush_results", self.results.flush())
        left = await self._within(deadline - self._server_close_s, "leave", self.poller.leave())
        log.info("agent_left", results_flushed=bool(flushed), deregistered=bool(left))

    async def _within(self, until: float, step: str, work: Awaitable[T]) -> T | None:
        """``work``'s result, or None when it is still running at ``until``."""
        budget = until - self.clock.monotonic()
        try:
            async with self.clock.timeout(budget):
                return await work
        except TimeoutError:
            log.warning("shutdown_step_timed_out", step=step, budget_s=round(budget, 3))
            return None

    async def _stop_checks(self) -> bool:
        # Every check stops: cancel them all first, a slice at a time, so that none
        # starts another run while the reconciler stops them one by one, and their
        # cancellations are spread over turns of the loop instead of all due in one.
        for n, running in enumerate(list(self.reconciler.actual.values()), 1):
            running.task.cancel()
            if n % CANCEL_SLICE == 0:
                await self.clock.sleep(0)
        await self.reconciler.stop_all()
        return True

    def _abandon_checks(self) -> int:
        running = [r for r in self.reconciler.actual.values() if not r.task.done()]
        for r in running:
            r.task.cancel()
        return len(running)

    def _stats(self, budget_bytes: int) -> dict[str, Any]:
        def wire_of(digest: str) -> dict[str, Any] | None:
            running = self.reconciler.actual.get(digest)
            return running.loop.stats.to_wire() if running is not None else None

        return self._stats_outbox.take(wire_of, budget_bytes=budget_bytes)

    def _emit(self, result: dict[str, Any]) -> None:
        self.results.add(result)
        self._stats_outbox.changed(result["digest"])

    async def _start_check(self, spec: CheckSpec) -> _Running:
        loop = CheckLoop(
            spec,
            kinds=self.kinds,
            capacity=self._capacity,
            emit=self._emit,
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
        # asyncio.wait, not gather: when this stop is cancelled (the shutdown's share of
        # the grace is over), gather would still wait for a check that ignores its
        # cancellation, for ever; wait gives up at once.
        await asyncio.wait({running.task})
        spec = running.loop.spec
        if running.loop.ran:  # a check that never ran has no series to drop
            self.metrics.forget(spec.digest, spec.name)
        log.info("check_stopped", digest=spec.digest, check=spec.name)
        self._running_changed(-1)

    def _running_changed(self, delta: int) -> None:
        count = len(self.reconciler.actual) + delta
        self.metrics.checks_running.set(count)
        self.health.report("runners", Status.HEALTHY, f"{count} checks")


def settle_garbage_collector() -> None:
    """Moves everything alive after start-up (modules, classes, ~50k objects) out of the
    collector's reach and makes young collections rarer.

    Measured at 1,000 checks/s: a full collection walked every import-time object and
    paused every run due meanwhile by up to ~75 ms, which alone set the p99 lateness.
    The middle generation is collected every 10 young collections, not 50: while tens
    of thousands of new checks start (all long-lived objects), a collection of it walked
    up to 500,000 objects and stalled the loop ~100 ms; now ~20 ms
    (``python -m tests.bench.runner``).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 100)


async def run(settings: AgentSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Every check run opens a connection (the local server's take some too): the soft
    # limit of open files (often 1024) is low for a capacity of hundreds.
    fd = raise_fd_limit()
    log.info("fd_limit", before=fd.before, soft=fd.soft, hard=fd.hard, error=fd.error)
    clock = SystemClock()
    # Out of file descriptors, every accept fails: logged once per interval, not each.
    loop.set_exception_handler(
        AcceptErrorLog(clock=clock, interval_s=10.0, previous=loop.get_exception_handler())
    )
    agent = NodeAgent(settings, clock=clock)
    settle_garbage_collector()  # process-wide: here, not in the agent (tests build many)
    await agent.run(stop)
