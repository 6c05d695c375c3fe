"""Leaders a follower could not connect to a moment ago.

A leader killed (or its node gone) keeps its lease until it runs out: up to a lease
duration, 15 s by default. Meanwhile its followers' agents keep sending, and each
request a follower forwards tried to connect, failed and logged a warning: thousands a
second behind a Service, on the very event loop that must take the lease over when it
runs out (the fleet benchmark with two replicas and 5,000 agents: 65,000 failed
forwards, and the survivor took the lease four seconds after it ran out). So after a
connection to a leader fails, the follower answers ``503 no_leader`` at once, without
trying, for ``HOLD_S``; then one round of requests tries again.

Only a connection that cannot be made counts: a leader that accepts it and answers late
is slow, not gone, and each request still waits for it.
"""

from __future__ import annotations

from dispatcher.common.clock import Clock
from dispatcher.election.base import LeaderInfo

HOLD_S = 0.5
"""How long requests for a leader that refused a connection are answered 503 without
trying it: short enough that a leader back at once (a restarted listener) is reached
again within a heartbeat's retry, long enough to spare the loop the attempts."""


class UnreachableLeaders:
    """Which leaders (identity and epoch) refused a connection lately, on the clock."""

    def __init__(self, clock: Clock, *, hold_s: float = HOLD_S) -> None:
        self._clock = clock
        self.hold_s = hold_s
        self._until: dict[tuple[str, int], float] = {}
        self.not_tried = 0
        """Requests answered without trying the leader, since the start (its log line)."""

    def refuses(self, leader: LeaderInfo) -> bool:
        """Whether a request for ``leader`` is to be answered 503 without trying it."""
        key = (leader.identity, leader.epoch)
        until = self._until.get(key)
        if until is None:
            return False
        if self._clock.monotonic() >= until:
            del self._until[key]  # try again
            return False
        self.not_tried += 1
        return True

    def failed(self, leader: LeaderInfo) -> bool:
        """Notes a connection to ``leader`` that could not be made; True when that starts
        a hold (the first failure since it answered), for one log line a hold."""
        key = (leader.identity, leader.epoch)
        starts = key not in self._until
        # One leader at a time: an older one's entry is of no more use.
        self._until = {key: self._clock.monotonic() + self.hold_s}
        return starts

    def answered(self, leader: LeaderInfo) -> None:
        """A connection to ``leader`` was made: no hold."""
        self._until.pop((leader.identity, leader.epoch), None)
