"""What the rest of the dispatcher needs to know about leadership, and the small
interface every lease backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    identity: str
    url: str
    epoch: int


class Leadership(Protocol):
    @property
    def identity(self) -> str:
        """This replica's identity."""
        ...

    def is_leader(self) -> bool:
        """Whether this replica may act as leader right now."""
        ...

    def leader(self) -> LeaderInfo | None:
        """The current leader as this replica knows it, or None."""
        ...


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The neutral lease record: who holds it, where to reach them, which term."""

    holder: str
    url: str
    epoch: int

    def info(self) -> LeaderInfo:
        return LeaderInfo(identity=self.holder, url=self.url, epoch=self.epoch)


class LeaseBackend(Protocol):
    """A lease store. Every call either answers or raises LeaseBackendError; the
    elector bounds each call with a timeout of its own."""

    async def acquire_or_renew(
        self, *, identity: str, url: str, lease_duration_s: float, held_epoch: int = 0
    ) -> LeaseRecord | None:
        """Takes the lease when free, extends it when ``identity`` holds it; returns the
        record as it stands afterwards (held by someone else: their record; None when
        the backend knows no holder).

        ``held_epoch`` is the epoch of the term the caller is leading (0: not leading).
        When the backend has lost the record while the caller still leads (Redis
        restarted empty or was flushed), the record is given back to the caller with
        that same epoch, so that its term goes on and nothing is dropped; the backend's
        epoch counter is raised to it, so later terms still get higher epochs. A backend
        that cannot lose its records may ignore it (and says so)."""
        ...

    async def release(self, *, identity: str) -> None:
        """Gives the lease up if ``identity`` holds it."""
        ...

    def free_in_s(self, *, identity: str) -> float | None:
        """As of ``identity``'s last ``acquire_or_renew``, how long until the lease it
        found held by another may be taken, by this replica's reading; None when it was
        not held by another. A hint for when to try next: the backend still decides at
        that attempt."""
        ...


class HolderView:
    """What one replica last read of a lease held by another, judged by its own clock.

    A lease key that vanishes before the time-to-live last read for it has run out did
    not expire: the backend lost it (Redis restarted empty, or was flushed). Its holder
    may still lead, and gives it back with its own epoch on its next renewal (within a
    retry period). So a replica that finds the lease gone early does not take it at
    once: it keeps the holder it read until that TTL has run out, and at least a lease
    duration after it first found the lease gone, by which time a holder that could
    not give it back has stopped acting (its renew deadline is shorter than a lease).
    A release is not a loss: the backend marks it, and a released lease is free at once.
    """

    __slots__ = ("_record", "_until", "_vanished")

    def __init__(self) -> None:
        self._record: LeaseRecord | None = None
        self._until = float("-inf")
        self._vanished = False

    def may_take(self, now: float) -> bool:
        """Whether a missing lease may be taken now."""
        return now >= self._until

    def free_in_s(self, now: float) -> float | None:
        """How long until the holder last read lets go of the lease (None: none read)."""
        if self._record is None:
            return None
        return max(0.0, self._until - now)

    def read(self, record: LeaseRecord | None, *, identity: str, now: float, ttl_s: float) -> None:
        """Notes the record an attempt found (or left) and its remaining time-to-live."""
        self._vanished = False
        if record is not None and record.holder != identity:
            self._record = record
            self._until = now + ttl_s
        else:
            self._record = None
            self._until = float("-inf")

    def vanished(self, *, now: float, lease_duration_s: float) -> LeaseRecord | None:
        """The lease was found missing before it could be taken: the holder last read,
        who is given a lease duration from now (once) to give it back."""
        if not self._vanished:
            self._vanished = True
            self._until = max(self._until, now + lease_duration_s)
        return self._record
