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
        self, *, identity: str, url: str, lease_duration_s: float
    ) -> LeaseRecord | None:
        """Takes the lease when free, extends it when ``identity`` holds it; returns the
        record as it stands afterwards (held by someone else: their record; None when
        the backend knows no holder)."""
        ...

    async def release(self, *, identity: str) -> None:
        """Gives the lease up if ``identity`` holds it."""
        ...
