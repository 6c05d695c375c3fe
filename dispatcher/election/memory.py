"""An in-memory lease backend on an injected clock: for tests of the elector, and for
several replicas in one process."""

from __future__ import annotations

import asyncio

from dispatcher.common.clock import Clock
from dispatcher.election.base import LeaseRecord
from dispatcher.errors import LeaseBackendError


class MemoryLeaseBackend:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._record: LeaseRecord | None = None
        self._expires_at = float("-inf")
        self._epoch = 0
        self.down = False
        self.hang = False

    async def acquire_or_renew(
        self, *, identity: str, url: str, lease_duration_s: float
    ) -> LeaseRecord | None:
        await self._gate()
        now = self._clock.monotonic()
        if self._record is not None and now >= self._expires_at:
            self._record = None
        if self._record is None:
            self._epoch += 1
            self._record = LeaseRecord(holder=identity, url=url, epoch=self._epoch)
        if self._record.holder == identity:
            self._expires_at = now + lease_duration_s
        return self._record

    async def release(self, *, identity: str) -> None:
        await self._gate()
        if self._record is not None and self._record.holder == identity:
            self._record = None

    async def _gate(self) -> None:
        if self.down:
            raise LeaseBackendError("memory lease backend is down")
        if self.hang:
            await asyncio.Event().wait()
