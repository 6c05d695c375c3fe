"""Reports this replica's status to the shared replica directory, and reads them all.

The reporter writes every ``replica_status_period_s`` (with a time-to-live of three
periods), at once when started and whenever a health component changes status, and
removes its record on a graceful stop. A failed write is logged and retried on the next
period; it never affects serving.
"""

from __future__ import annotations

import asyncio

import structlog

from dispatcher import wire
from dispatcher.common.clock import Clock
from dispatcher.common.health import HealthRegistry
from dispatcher.common.tasks import wait_any
from dispatcher.election.base import Leadership
from dispatcher.errors import StoreError
from dispatcher.storage.replicas import ReplicaDirectory, ReplicaRecord, ReplicaStatus

log = structlog.get_logger(__name__)


class ReplicaReporter:
    def __init__(
        self,
        *,
        directory: ReplicaDirectory,
        leadership: Leadership,
        health: HealthRegistry,
        url: str,
        period_s: float,
        clock: Clock,
    ) -> None:
        self.directory = directory
        self._clock = clock
        self._leadership = leadership
        self._health = health
        self._url = url
        self.period_s = period_s
        self._failing = False
        self._changed = asyncio.Event()

    @property
    def ttl_s(self) -> float:
        return 3 * self.period_s

    def status(self) -> ReplicaStatus:
        leading = self._leadership.is_leader()
        info = self._leadership.leader()
        role: wire.ReplicaRole = (
            "leader" if leading else "follower" if info is not None else "unknown"
        )
        readiness = self._health.readiness()
        return ReplicaStatus(
            identity=self._leadership.identity,
            role=role,
            url=self._url,
            status=readiness.status.label,
            ready=readiness.ok,
            epoch=info.epoch if info is not None else 0,
        )

    async def publish(self) -> None:
        """Writes the current status now; raises StoreError when the directory fails."""
        await self.directory.publish(self.status(), ttl_s=self.ttl_s)

    async def list(self) -> list[ReplicaRecord]:
        """Every replica, with this one's record refreshed first so it is never stale."""
        await self.publish()
        return await self.directory.list()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()

        # Observers run in the reporting thread: hand the wake-up to the loop's thread.
        def changed(_: object) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._changed.set)

        self._health.observe(changed)
        try:
            while not stop.is_set():
                self._changed.clear()
                await self._publish_logged()
                await wait_any(stop, self._changed, timeout_s=self.period_s, clock=self._clock)
        finally:
            try:
                async with self._clock.timeout(self.period_s):
                    await self.directory.remove(self._leadership.identity)
            except (StoreError, TimeoutError) as exc:
                log.warning("replica_status_remove_failed", error=str(exc))

    async def _publish_logged(self) -> None:
        try:
            # A timeout on the clock (a context, not wait_for: on 3.11 wait_for can
            # swallow a cancellation).
            async with self._clock.timeout(self.period_s):
                await self.publish()
        except (StoreError, TimeoutError) as exc:
            if not self._failing:
                log.warning("replica_status_failed", error=str(exc) or "timed out")
            self._failing = True
            return
        if self._failing:
            log.info("replica_status_recovered")
        self._failing = False


def replica_out(record: ReplicaRecord) -> wire.ReplicaOut:
    s = record.status
    return wire.ReplicaOut(
        identity=s.identity,
        role=s.role,
        url=s.url,
        status=s.status,
        ready=s.ready,
        epoch=s.epoch,
        reported_at=record.reported_at,
        age_s=record.age_s,
    )
