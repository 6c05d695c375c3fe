"""The dispatcher: the core state behind one external lock, the tick loop, long polls.

Every compound operation takes the lock, applies one step to the pure core, then
publishes what the step decided: a log line per decision, metrics, and a wake-up for
the long polls of every node whose configs changed. Nothing here waits on the network
while holding the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import structlog

from dispatcher.common.clock import Clock
from dispatcher.common.tasks import run_periodically
from dispatcher.core.model import (
    CheckConfig,
    CheckResult,
    CheckStats,
    Digest,
    NodeName,
    SourceName,
)
from dispatcher.core.placement import Node
from dispatcher.core.state import NEVER, ClusterState, Move, RejectedResult, SourceChange
from dispatcher.metrics import DispatcherMetrics
from dispatcher.settings import DispatchSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Dispatcher:
    def __init__(
        self,
        *,
        settings: DispatchSettings,
        clock: Clock,
        metrics: DispatcherMetrics | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._metrics = metrics
        warmup = settings.warmup_duration_s
        self.state = ClusterState(
            warmup_until=clock.monotonic() + warmup if warmup > 0 else NEVER,
        )
        self.lock = asyncio.Lock()
        self._waiters: dict[NodeName, asyncio.Future[None]] = {}
        self._flagged_dangling: set[Digest] = set()
        self._closing = False

    # ------------------------------------------------------------- node agents

    async def node_status(
        self,
        name: NodeName,
        *,
        last_change: int,
        labels: Mapping[str, str] | None = None,
        capacity: int | None = None,
        running: Iterable[Digest] | None = None,
        stats: Mapping[Digest, CheckStats] | None = None,
        leaving: bool = False,
    ) -> bool:
        async with self.lock:
            up_to_date = self.state.node_status(
                name,
                now=self._clock.monotonic(),
                last_change=last_change,
                labels=labels,
                capacity=capacity,
                running=running,
                stats=stats,
                leaving=leaving,
            )
            self._publish()
        if leaving:
            log.info("node_left", node=name)
        return up_to_date

    async def node_configs(
        self, name: NodeName, *, since: int | None = None, wait_s: float = 0.0
    ) -> tuple[int, list[CheckConfig]]:
        """The node's configs; with ``since``, waits up to ``wait_s`` for a change.

        Raises UnknownNode when the node is not registered or expires during the wait.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            async with self.lock:
                current = self.state.node(name).last_change  # raises UnknownNode
                remaining = deadline - loop.time()
                if since is None or current != since or remaining <= 0 or self._closing:
                    return self.state.node_configs(name)  # built only when answering
                waiter = self._waiters.get(name)
                if waiter is None or waiter.done():
                    waiter = self._waiters[name] = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), remaining)

    async def record_results(
        self, name: NodeName, results: Sequence[CheckResult]
    ) -> tuple[int, list[RejectedResult]]:
        async with self.lock:
            return self.state.record_results(name, results)

    # ---------------------------------------------------------- config sources

    async def replace_source(
        self, source: SourceName, configs: Sequence[CheckConfig]
    ) -> SourceChange:
        return (await self.replace_sources({source: configs}))[source]

    async def replace_sources(
        self, sets: Mapping[SourceName, Sequence[CheckConfig]]
    ) -> dict[SourceName, SourceChange]:
        async with self.lock:
            changes = self.state.replace_sources(sets, now=self._clock.monotonic())
            self._publish()
        for source, change in changes.items():
            if change.added or change.removed:
                log.info(
                    "source_replaced",
                    source=source,
                    added=change.added,
                    removed=change.removed,
                    unchanged=change.unchanged,
                )
        return changes

    async def add_to_source(
        self, source: SourceName, configs: Sequence[CheckConfig]
    ) -> list[Digest]:
        return await self._step(lambda now: self.state.add_to_source(source, configs, now=now))

    async def remove_check(self, digest: Digest, *, source: SourceName | None) -> None:
        await self._step(lambda now: self.state.remove_check(digest, source=source, now=now))

    # ------------------------------------------------------------------ admins

    async def cordon(self, name: NodeName) -> Node:
        return await self._step(lambda now: self.state.cordon(name))

    async def uncordon(self, name: NodeName) -> Node:
        return await self._step(lambda now: self.state.uncordon(name, now=now))

    async def drain(self, name: NodeName) -> tuple[Node, list[Move]]:
        """Drains the node; returns it and the moves, from the same step."""

        def drain(now: float) -> tuple[Node, list[Move]]:
            moves = self.state.drain(name, now=now)
            return self.state.node(name), moves

        return await self._step(drain)

    async def isolate(self, digest: Digest) -> tuple[NodeName, list[Move]]:
        return await self._step(lambda now: self.state.isolate(digest, now=now))

    async def read(self, view: Callable[[ClusterState], T]) -> T:
        """Runs a read-only view of the state under the lock: a consistent snapshot."""
        async with self.lock:
            return view(self.state)

    # -------------------------------------------------------------------- ticks

    async def tick(self) -> None:
        """Expires silent nodes (re-dispatching their checks) and places dangling ones."""
        started = self._clock.monotonic()
        async with self.lock:
            now = self._clock.monotonic()
            expired = self.state.expire_nodes(
                now=now, timeout_s=self.settings.node_expiration_timeout_s
            )
            self.state.dispatch_dangling(now=now)
            self._publish()
            dangling = dict(self.state.dangling)
        for name in expired:
            log.warning("node_expired", node=name)
        if self._metrics is not None:
            self._metrics.expiries.inc(len(expired))
            self._metrics.tick_seconds.observe(self._clock.monotonic() - started)
        self._flag_long_dangling(dangling, now=now)

    async def run(self, stop: asyncio.Event) -> None:
        await run_periodically(
            "dispatch_tick", self.tick, period_s=self.settings.tick_interval_s, stop=stop
        )

    def warming_up(self) -> bool:
        return self.state.warming_up(self._clock.monotonic())

    def wake_all(self) -> None:
        """Ends every pending long poll, and makes new ones answer at once (shutdown)."""
        self._closing = True
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    # ---------------------------------------------------------------- internal

    async def _step(self, operation: Callable[[float], T]) -> T:
        async with self.lock:
            try:
                return operation(self._clock.monotonic())
            finally:
                self._publish()

    def _publish(self) -> None:
        events = self.state.take_events()
        for decision in events.decisions:
            log.info(
                "dispatch_decision",
                digest=decision.digest,
                check=decision.check_name,
                node=decision.node,
                previous=decision.previous,
                reason=decision.reason,
            )
            if self._metrics is not None:
                self._metrics.decisions.labels(reason=decision.reason).inc()
        for name in (*events.changed_nodes, *events.removed_nodes):
            waiter = self._waiters.pop(name, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _flag_long_dangling(self, dangling: Mapping[Digest, float], *, now: float) -> None:
        threshold = self.settings.dangling_warning_s
        self._flagged_dangling &= dangling.keys()
        for digest, since in dangling.items():
            if now - since > threshold and digest not in self._flagged_dangling:
                self._flagged_dangling.add(digest)
                log.warning("check_dangling_long", digest=digest, dangling_s=round(now - since, 1))
