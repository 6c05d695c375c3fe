"""Leader election with client-go's semantics over any LeaseBackend.

- Every backend call is bounded by a timeout: a hung backend cannot keep a stale
  leader acting. Timeouts, retries and the deadline are all on the injected clock, so
  that tests of them run on fake time.
- A leader acts only until its local deadline: the start of its last successful
  renewal plus ``renew_deadline_s`` (on the monotonic clock), which is shorter than
  the lease, so it stops before anyone else can take the lease over.
- Callbacks (plain functions, called inline; they must not block): on_started_leading(epoch),
  on_stopped_leading(), on_new_leader(info), and on_backend(problem) when the backend
  starts failing (the error) or answers again (None).
- A follower that read when the lease it found held runs out (``free_in_s``) tries
  again just then, not up to a retry period later; once per reading: if the lease is
  still held then, the next try is a retry period on, as usual (so a lease that never
  runs out does not make it try in a loop).
- On shutdown a leader releases the lease, so a successor need not wait it out.
- ``resign()`` stops leading at once (no callback: the caller knows) and releases the
  lease on the next step, after which the elector campaigns again: the way out for a
  leader whose term cannot go on (its store was claimed by a newer epoch).
- A leader renews with the epoch of its term: a backend that lost the record (Redis
  restarted empty, or flushed) gives it back with that same epoch, so the term goes on
  and its state is kept (the store writer then re-writes what the store lost). A holder
  whose record still comes back with another epoch ends its term and starts a new one
  with that epoch.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import structlog

from dispatcher.common.clock import Clock
from dispatcher.common.tasks import sleep_or_stop
from dispatcher.election.base import LeaderInfo, LeaseBackend, LeaseRecord
from dispatcher.errors import LeaseBackendError
from dispatcher.settings import ElectionSettings

log = structlog.get_logger(__name__)

EXPIRY_MARGIN_S = 0.05
"""How long after the time a follower read for a lease's end it tries to take it (up to
twice this, at random, so that followers do not all try at the same instant)."""


class Elector:
    def __init__(
        self,
        *,
        backend: LeaseBackend,
        identity: str,
        url: str,
        settings: ElectionSettings,
        clock: Clock,
        on_started_leading: Callable[[int], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        on_new_leader: Callable[[LeaderInfo | None], None] | None = None,
        on_backend: Callable[[str | None], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._backend = backend
        self._identity = identity
        self._url = url
        self._settings = settings
        self._clock = clock
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._on_backend = on_backend
        self._backend_problem: str | None = None
        self._rng = rng or random.Random()
        self._record: LeaseRecord | None = None
        self._read_at = float("-inf")
        """When the backend last answered (monotonic, at the start of that attempt)."""
        self._leading = False
        self._leading_epoch = 0
        self._resigned = False
        self._deadline = float("-inf")
        self._tried_at_expiry = False

    # ----------------------------------------------------------------- Leadership

    @property
    def identity(self) -> str:
        return self._identity

    def is_leader(self) -> bool:
        """True only while the last renewal's deadline has not passed."""
        return self._leading and self._clock.monotonic() < self._deadline

    def leader(self) -> LeaderInfo | None:
        """The holder of the last lease read, while it may still act on it by this
        replica's own clock. A holder that cannot renew stops acting at its renew
        deadline, so once the backend has not answered this replica for
        ``renew_deadline_s``, the leader it named may have stopped: forwarding to it
        would meet a non-leader (``508``), and a plain ``503 no_leader`` is the answer."""
        if self._record is None:
            return None
        if self._record.holder == self._identity and not self.is_leader():
            return None  # our own lease, but we may no longer act on it
        if self._clock.monotonic() >= self._read_at + self._settings.renew_deadline_s:
            return None  # by our clock, the holder may have stopped acting
        return self._record.info()

    @property
    def epoch(self) -> int:
        return self._record.epoch if self._record is not None else 0

    # ------------------------------------------------------------------- running

    async def run(self, stop: asyncio.Event) -> None:
        """Campaigns and renews until ``stop``; then releases a held lease."""
        try:
            while not stop.is_set():
                if self._resigned:
                    await self._release()
                    self._resigned = False
                await self.step()
                if self._leading:
                    # Wake in time to stop at the deadline even if nothing else happens
                    # (a renewal that keeps failing).
                    until_deadline = max(0.0, self._deadline - self._clock.monotonic())
                    delay = min(self._settings.retry_period_s, until_deadline)
                else:
                    delay = self._follower_delay()
                if await sleep_or_stop(stop, delay, clock=self._clock):
                    break
                self._check_deadline()
        finally:
            await self._shutdown()

    def _follower_delay(self) -> float:
        """Until the next attempt of a replica that does not lead: a retry period
        (jittered), or, when the lease it found held runs out sooner, just after that."""
        delay = self._settings.retry_period_s * self._rng.uniform(1.0, 1.2)
        free_in = self._backend.free_in_s(identity=self._identity)
        if free_in is None or free_in >= delay or self._tried_at_expiry:
            self._tried_at_expiry = False
            return delay
        self._tried_at_expiry = True
        return free_in + EXPIRY_MARGIN_S * self._rng.uniform(1.0, 2.0)

    async def step(self) -> None:
        """One attempt to acquire or renew, bounded by a timeout."""
        started = self._clock.monotonic()
        timeout = min(self._settings.renew_deadline_s, self._settings.retry_period_s)
        # Only a term that may still act asks for its epoch back: past its deadline the
        # term is over (another replica may have led meanwhile) and the next is new.
        held_epoch = self._leading_epoch if self.is_leader() else 0
        try:
            async with self._clock.timeout(timeout):
                record = await self._backend.acquire_or_renew(
                    identity=self._identity,
                    url=self._url,
                    lease_duration_s=self._settings.lease_duration_s,
                    held_epoch=held_epoch,
                )
        except (TimeoutError, LeaseBackendError) as exc:
            problem = str(exc) or f"no answer within {timeout:g} s"
            log.warning("lease_attempt_failed", error=problem)
            self._report_backend(problem)
            self._check_deadline()
            return
        self._report_backend(None)
        self._read_at = started
        self._observe(record)
        if self._resigned:
            return  # resigned while this attempt was under way: release first
        if record is not None and record.holder == self._identity:
            if self._leading and record.epoch != self._leading_epoch:
                self._stop_leading(f"the lease came back with epoch {record.epoch}")
            self._deadline = started + self._settings.renew_deadline_s
            if not self._leading:
                self._leading_epoch = record.epoch
                self._leading = True
                log.info("started_leading", identity=self._identity, epoch=record.epoch)
                if self._on_started is not None:
                    self._on_started(record.epoch)
        else:
            self._stop_leading("another replica holds the lease")

    def _report_backend(self, problem: str | None) -> None:
        changed = (problem is None) != (self._backend_problem is None)
        self._backend_problem = problem
        if changed and self._on_backend is not None:
            self._on_backend(problem)

    def _observe(self, record: LeaseRecord | None) -> None:
        previous = self._record
        self._record = record
        if (previous is None) != (record is None) or (
            previous is not None
            and record is not None
            and (previous.holder, previous.epoch) != (record.holder, record.epoch)
        ):
            log.info(
                "leader_observed",
                leader=record.holder if record else None,
                epoch=record.epoch if record else None,
            )
            if self._on_new_leader is not None:
                self._on_new_leader(record.info() if record else None)

    def _check_deadline(self) -> None:
        if self._clock.monotonic() >= self._deadline:
            self._stop_leading("renew deadline passed")

    def _stop_leading(self, reason: str) -> None:
        if self._leading:
            self._leading = False
            log.warning("lost_leadership", reason=reason)
            if self._on_stopped is not None:
                self._on_stopped()

    def resign(self) -> None:
        """Stops leading now, without the on_stopped callback; releases on the next step."""
        if self._leading:
            self._leading = False
            self._deadline = float("-inf")
            self._resigned = True
            log.warning("resigned", identity=self._identity, epoch=self._leading_epoch)

    async def _shutdown(self) -> None:
        if self._leading:
            self._stop_leading("shutting down")
        elif not self._resigned:
            return
        await self._release()

    async def _release(self) -> None:
        try:
            async with self._clock.timeout(self._settings.retry_period_s):
                await self._backend.release(identity=self._identity)
            log.info("lease_released", identity=self._identity)
        except (TimeoutError, LeaseBackendError) as exc:
            log.warning("lease_release_failed", error=str(exc) or type(exc).__name__)
