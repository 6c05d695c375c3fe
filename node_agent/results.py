"""Results are batched and sent every ``results_flush_s``, or as seldom as the leader
asks (``results_interval_s`` in its status replies, pacing a large fleet); while the
dispatcher is unreachable they wait, up to a cap past which the oldest are dropped."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import structlog

from dispatcher.common.clock import Clock
from dispatcher.common.tasks import wait_any
from node_agent.client import DispatcherApi
from node_agent.errors import AgentError, DispatcherProtocolError
from node_agent.metrics import AgentMetrics

log = structlog.get_logger(__name__)

MAX_BATCH = 1000
MAX_BATCH_BYTES = 1024 * 1024
"""Well under the dispatcher's 4 MiB body limit, whatever the outputs weigh."""


class ResultBatcher:
    def __init__(
        self,
        *,
        client: DispatcherApi,
        metrics: AgentMetrics,
        flush_s: float,
        max_pending: int,
        clock: Clock,
    ) -> None:
        self._client = client
        self._clock = clock
        self._metrics = metrics
        self._flush_s = flush_s
        self._interval_s = flush_s
        self._pending: deque[dict[str, Any]] = deque()
        self._full = asyncio.Event()
        """Set when a whole batch waits: it goes at once, whatever the pacing."""
        self._max_pending = max_pending
        self.sent = 0
        self.rejected = 0

    def add(self, result: dict[str, Any]) -> None:
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self._metrics.results_dropped.inc()
        self._pending.append(result)
        if len(self._pending) >= MAX_BATCH:
            self._full.set()

    def _take_batch(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        size = 0
        while self._pending and len(batch) < MAX_BATCH:
            item = self._pending[0]
            item_size = len(item.get("output", "")) + sum(len(e) for e in item["errors"]) + 200
            if batch and size + item_size > MAX_BATCH_BYTES:
                break
            batch.append(self._pending.popleft())
            size += item_size
        return batch

    @property
    def pending(self) -> int:
        return len(self._pending)

    def pace(self, told_s: float) -> None:
        """The leader's ``results_interval_s``: send at most that often (never more often
        than ``flush_s``), unless a whole batch (``MAX_BATCH``) waits. It takes effect
        from the next wait."""
        self._interval_s = max(self._flush_s, told_s)

    @property
    def interval_s(self) -> float:
        return self._interval_s

    async def run(self, stop: asyncio.Event) -> None:
        """A flush every interval, or as soon as a whole batch waits (an agent of many
        checks told to post seldom must not reach its cap and drop results)."""
        while not stop.is_set():
            await wait_any(self._full, stop, timeout_s=self._interval_s, clock=self._clock)
            if stop.is_set():
                return
            self._full.clear()
            await self.flush()

    async def flush(self) -> bool:
        """Sends everything pending; False when the dispatcher could not take it.

        A batch leaves the queue before it is sent and goes back to its front if the
        dispatcher is unreachable, so results added meanwhile are neither lost nor sent
        twice. A batch the dispatcher refuses outright (a 4xx) is dropped and logged:
        retrying it would block every later result.
        """
        while self._pending:
            batch = self._take_batch()
            try:
                reply = await self._client.results(batch)
            except asyncio.CancelledError:
                self._pending.extendleft(reversed(batch))  # the final flush sends them
                raise
            except DispatcherProtocolError as exc:
                self._metrics.results_dropped.inc(len(batch))
                log.error("results_refused", count=len(batch), error=str(exc)[:300])
                continue
            except AgentError as exc:
                self._pending.extendleft(reversed(batch))
                while len(self._pending) > self._max_pending:
                    self._pending.popleft()
                    self._metrics.results_dropped.inc()
                log.warning("results_not_sent", pending=len(self._pending), error=str(exc))
                return False
            self.sent += reply.accepted
            self.rejected += len(reply.rejected)
            if reply.rejected:
                log.info(
                    "results_rejected",
                    count=len(reply.rejected),
                    reasons=sorted({r.reason for r in reply.rejected}),
                )
        return True
