"""What the rest of the dispatcher needs to know about leadership."""

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
