"""The embedded default: this process is the leader from before its port opens."""

from __future__ import annotations

from dispatcher.election.base import LeaderInfo


class StandaloneLeadership:
    def __init__(
        self, *, identity: str, url: str, started_at_s: float, epoch_floor: int = 0
    ) -> None:
        """The epoch is the start time in milliseconds, or ``epoch_floor`` when that is
        higher (a clock set back since the last start: agents ignore lower epochs)."""
        epoch = max(int(started_at_s * 1000), epoch_floor)
        self._info = LeaderInfo(identity=identity, url=url, epoch=epoch)

    @property
    def identity(self) -> str:
        return self._info.identity

    def is_leader(self) -> bool:
        return True

    def leader(self) -> LeaderInfo:
        return self._info
