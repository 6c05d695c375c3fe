"""An in-memory lease backend on an injected clock: for tests of the elector, and for
several replicas in one process.

It keeps the Redis backend's rules, each replica (identity) with a view of its own: a
leader renewing with its held epoch gets a lost record back with that epoch; a record
that vanished before its lease ran out (``lose()``) is left to its holder for a while
(``HolderView``), while a released one is free at once."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from dispatcher.common.clock import Clock
from dispatcher.election.base import HolderView, LeaseRecord
from dispatcher.errors import LeaseBackendError


class MemoryLeaseBackend:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._record: LeaseRecord | None = None
        self._expires_at = float("-inf")
        self._released = False
        self._epoch = 0
        self._views: defaultdict[str, HolderView] = defaultdict(HolderView)
        self.down = False
        self.hang = False

    def lose(self) -> None:
        """Forgets the lease record, as Redis restarted empty (or flushed) does. The epoch
        counter keeps counting: it stands for Redis's, which is floored at its clock."""
        self._record = None
        self._released = False

    async def acquire_or_renew(
        self, *, identity: str, url: str, lease_duration_s: float, held_epoch: int = 0
    ) -> LeaseRecord | None:
        await self._gate()
        now = self._clock.monotonic()
        view = self._views[identity]
        if self._record is not None and now >= self._expires_at:
            self._record = None
            self._released = True  # expired: free, like a key whose TTL ran out
        record = self._record
        if record is not None and record.holder != identity:
            view.read(record, identity=identity, now=now, ttl_s=self._expires_at - now)
            return record
        if record is not None and (held_epoch == 0 or record.epoch >= held_epoch):
            self._expires_at = now + lease_duration_s  # renewed
            view.read(record, identity=identity, now=now, ttl_s=lease_duration_s)
            return record
        if record is None and held_epoch == 0 and not self._released and not view.may_take(now):
            return view.vanished(now=now, lease_duration_s=lease_duration_s)
        if held_epoch > 0:  # given back to the term that still leads, with its epoch
            epoch = held_epoch
            self._epoch = max(self._epoch, held_epoch)
        else:
            self._epoch += 1
            epoch = self._epoch
        self._record = LeaseRecord(holder=identity, url=url, epoch=epoch)
        self._expires_at = now + lease_duration_s
        self._released = False
        view.read(self._record, identity=identity, now=now, ttl_s=lease_duration_s)
        return self._record

    def free_in_s(self, *, identity: str) -> float | None:
        return self._views[identity].free_in_s(self._clock.monotonic())

    async def release(self, *, identity: str) -> None:
        await self._gate()
        if self._record is not None and self._record.holder == identity:
            self._record = None
            self._released = True

    async def _gate(self) -> None:
        if self.down:
            raise LeaseBackendError("memory lease backend is down")
        if self.hang:
            await asyncio.Event().wait()
