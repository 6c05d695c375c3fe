"""Results are batched and sent at least every ``results_flush_s``; while the
dispatcher is unreachable they wait, up to a cap past which the oldest are dropped."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import structlog

from dispatcher.common.tasks import sleep_or_stop
from node_agent.client import DispatcherClient
from node_agent.errors import AgentError
from node_agent.metrics import AgentMetrics

log = structlog.get_logger(__name__)

MAX_BATCH = 1000


class ResultBatcher:
    def __init__(
        self,
        *,
        client: DispatcherClient,
        metrics: AgentMetrics,
        flush_s: float,
        max_pending: int,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._flush_s = flush_s
        self._pending: deque[dict[str, Any]] = deque()
        self._max_pending = max_pending
        self.sent = 0
        self.rejected = 0

    def add(self, result: dict[str, Any]) -> None:
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self._metrics.results_dropped.inc()
        self._pending.append(result)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self, stop: asyncio.Event) -> None:
        while not await sleep_or_stop(stop, self._flush_s):
            await self.flush()

    async def flush(self) -> bool:
        """Sends everything pending; False when the dispatcher could not take it."""
        while self._pending:
            batch = [self._pending[i] for i in range(min(MAX_BATCH, len(self._pending)))]
            try:
                reply = await self._client.results(batch)
            except AgentError as exc:
                log.warning("results_not_sent", pending=len(self._pending), error=str(exc))
                return False
            for _ in batch:
                self._pending.popleft()
            self.sent += reply.accepted
            self.rejected += len(reply.rejected)
            if reply.rejected:
                log.info(
                    "results_rejected",
                    count=len(reply.rejected),
                    reasons=sorted({r.reason for r in reply.rejected}),
                )
        return True
