"""The elector's client-go semantics, on a fake clock and the in-memory backend.

The elector's retries, per-call timeouts and deadline are all on the clock it is given,
so these tests move time by hand and never wait on real time."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from dispatcher.common.clock import FakeClock
from dispatcher.election.base import LeaderInfo, LeaseRecord
from dispatcher.election.elector import EXPIRY_MARGIN_S, Elector
from dispatcher.election.memory import MemoryLeaseBackend
from dispatcher.settings import ElectionSettings

SETTINGS = ElectionSettings(lease_duration_s=15, renew_deadline_s=10, retry_period_s=2)


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.leaders: list[LeaderInfo | None] = []

    def started(self, epoch: int) -> None:
        self.events.append(f"started:{epoch}")

    def stopped(self) -> None:
        self.events.append("stopped")

    def new_leader(self, info: LeaderInfo | None) -> None:
        self.leaders.append(info)


def elector(
    backend: MemoryLeaseBackend,
    clock: FakeClock,
    identity: str,
    recorder: Recorder,
    settings: ElectionSettings = SETTINGS,
) -> Elector:
    return Elector(
        backend=backend,
        identity=identity,
        url=f"http://{identity}:5005",
        settings=settings,
        clock=clock,
        on_started_leading=recorder.started,
        on_stopped_leading=recorder.stopped,
        on_new_leader=recorder.new_leader,
    )


async def test_the_first_replica_acquires_and_renews() -> None:
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    rec = Recorder()
    a = elector(backend, clock, "a", rec)
    await a.step()
    assert a.is_leader()
    assert a.epoch == 1
    assert a.leader() == LeaderInfo("a", "http://a:5005", 1)
    assert rec.events == ["started:1"]
    for _ in range(10):  # renewing every retry period keeps it, far past one lease
        clock.advance(2)
        await a.step()
        assert a.is_leader()
    assert rec.events == ["started:1"]
    assert a.epoch == 1


async def test_a_follower_sees_the_leader_and_does_not_act() -> None:
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    rec_a, rec_b = Recorder(), Recorder()
    a, b = elector(backend, clock, "a", rec_a), elector(backend, clock, "b", rec_b)
    await a.step()
    await b.step()
    assert not b.is_leader()
    assert b.leader() == LeaderInfo("a", "http://a:5005", 1)
    assert rec_b.events == []
    assert rec_b.leaders == [LeaderInfo("a", "http://a:5005", 1)]


async def test_a_leader_that_cannot_renew_stops_at_its_deadline_before_the_lease_ends() -> None:
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    rec = Recorder()
    a = elector(backend, clock, "a", rec)
    await a.step()
    backend.down = True
    clock.advance(9.9)
    await a.step()  # fails, but the deadline (10 s after the last renewal) is not reached
    assert a.is_leader()
    clock.advance(0.2)
    assert not a.is_leader(), "acting past the renew deadline"
    await a.step()
    assert rec.events == ["started:1", "stopped"]
    assert a.leader() is None  # its own lease, on which it may no longer act


async def test_a_hung_backend_cannot_keep_a_stale_leader_acting() -> None:
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    rec = Recorder()
    a = elector(backend, clock, "a", rec)
    await a.step()
    backend.hang = True
    attempt = asyncio.create_task(a.step())
    await clock.wait_for_timers(1)  # the attempt hangs, under the elector's own timeout
    call_timeout_s = min(SETTINGS.renew_deadline_s, SETTINGS.retry_period_s)
    await clock.run_for(call_timeout_s - 0.01)
    assert not attempt.done(), "the attempt ended before its timeout"
    await clock.run_for(0.01)
    assert attempt.done(), "a hung backend held the attempt past its timeout"
    await attempt  # a timeout is a failed attempt, not an error
    assert a.is_leader(), "the deadline is 10 s after the last renewal, not yet reached"
    clock.advance(SETTINGS.renew_deadline_s - call_timeout_s)
    assert not a.is_leader()


async def test_another_replica_takes_over_after_the_lease_with_a_higher_epoch() -> None:
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    rec_a, rec_b = Recorder(), Recorder()
    a, b = elector(backend, clock, "a", rec_a), elector(backend, clock, "b", rec_b)
    await a.step()
    clock.advance(14)  # a is frozen: no renewals
    await b.step()
    assert not b.is_leader(), "took a lease that had not expired"
    assert not a.is_leader(), "a acts past its renew deadline"
    clock.advance(1.1)
    await b.step()
    assert b.is_leader()
    assert b.epoch == 2
    assert rec_b.events == ["started:2"]
    await a.step()  # a wakes up: it sees b and does not act
    assert not a.is_leader()
    assert a.leader() == LeaderInfo("b", "http://b:5005", 2)


async def test_a_leader_releases_on_shutdown_so_the_next_need_not_wait() -> None:
    clock = FakeClock()  # never advanced: the lease can only be freed by a release
    backend = MemoryLeaseBackend(clock)
    rec_a, rec_b = Recorder(), Recorder()
    a, b = elector(backend, clock, "a", rec_a), elector(backend, clock, "b", rec_b)
    stop = asyncio.Event()
    running = asyncio.create_task(a.run(stop))
    await clock.wait_for_timers(1)  # it took the lease and sleeps until its next renewal
    assert a.is_leader()
    assert rec_a.events == ["started:1"]
    stop.set()
    await running
    assert rec_a.events == ["started:1", "stopped"]
    await b.step()  # no clock advance: the lease was released, not left to expire
    assert b.is_leader()
    assert b.epoch == 2


async def test_a_leader_whose_lease_comes_back_with_another_epoch_starts_a_new_term() -> None:
    """The record names us with an epoch that is not our term's (another process with
    our identity, say): the old term must end, and the new one carry that epoch (agents
    fence on it)."""
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    rec = Recorder()
    a = elector(backend, clock, "a", rec)
    await a.step()
    backend._record = LeaseRecord("a", "http://a:5005", 7)
    clock.advance(2)
    await a.step()
    assert a.is_leader()
    assert a.epoch == 7
    assert rec.events == ["started:1", "stopped", "started:7"]


# ------------------------------------------------- the backend loses the lease


async def test_a_leader_whose_lease_the_backend_lost_gets_it_back_and_its_term_goes_on() -> None:
    """Redis restarted empty: the leader's next renewal gives the record back with the
    epoch of its term, so the term (and the state it holds) goes on; later terms still
    get higher epochs."""
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    rec_a, rec_b = Recorder(), Recorder()
    a, b = elector(backend, clock, "a", rec_a), elector(backend, clock, "b", rec_b)
    await a.step()
    await b.step()
    backend.lose()
    clock.advance(SETTINGS.retry_period_s)
    await a.step()
    assert a.is_leader()
    assert a.epoch == 1
    assert a.leader() == LeaderInfo("a", "http://a:5005", 1)
    assert rec_a.events == ["started:1"], "the term ended and began again"
    await b.step()
    assert b.leader() == LeaderInfo("a", "http://a:5005", 1)
    assert rec_b.events == []
    # The lease is renewed as usual from then on, and the next term is a higher one.
    for _ in range(3):
        clock.advance(SETTINGS.retry_period_s)
        await a.step()
    await backend.release(identity="a")
    await b.step()
    assert b.is_leader()
    assert b.epoch == 2


async def test_a_follower_leaves_a_lost_lease_to_its_holder_for_a_lease_duration() -> None:
    """A follower that read the lease and finds it gone before it could have run out
    does not take it at once (it would start a term with an empty store while the
    leader still holds the state): it keeps that leader a lease duration, by which time
    a leader that could not give the lease back has stopped (renew deadline < lease)."""
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    rec_a, rec_b = Recorder(), Recorder()
    a, b = elector(backend, clock, "a", rec_a), elector(backend, clock, "b", rec_b)
    await a.step()
    clock.advance(SETTINGS.retry_period_s)
    await b.step()
    backend.lose()
    clock.advance(0.5)
    await b.step()  # before a renews: the lease is gone
    found_gone = clock.monotonic()
    assert not b.is_leader(), "took a lease its holder may still give back"
    assert b.leader() == LeaderInfo("a", "http://a:5005", 1), "forgot a leader still acting"
    assert rec_b.events == []

    # a never comes back (it was lost with Redis, say): b waits the lease duration out.
    clock.advance(found_gone + SETTINGS.lease_duration_s - 0.01 - clock.monotonic())
    assert not a.is_leader(), "a acts past its renew deadline"
    await b.step()
    assert not b.is_leader()
    clock.advance(0.01)
    await b.step()
    assert b.is_leader()
    assert b.epoch == 2
    assert rec_b.events == ["started:2"]


async def test_a_replica_that_takes_a_lost_lease_first_wins_and_the_old_leader_stops() -> None:
    """A replica that never read the lease (it just started) takes a missing one at once:
    the leader's renewal then finds it held and the leader stops, as for any takeover."""
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    rec_a, rec_c = Recorder(), Recorder()
    a, c = elector(backend, clock, "a", rec_a), elector(backend, clock, "c", rec_c)
    await a.step()
    backend.lose()
    await c.step()
    assert c.is_leader()
    assert c.epoch == 2
    clock.advance(SETTINGS.retry_period_s)
    await a.step()
    assert not a.is_leader()
    assert a.leader() == LeaderInfo("c", "http://c:5005", 2)
    assert rec_a.events == ["started:1", "stopped"]


async def test_a_leader_past_its_deadline_does_not_get_its_old_epoch_back() -> None:
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    rec = Recorder()
    a = elector(backend, clock, "a", rec)
    await a.step()
    backend.down = True
    clock.advance(SETTINGS.renew_deadline_s)
    await a.step()
    assert rec.events == ["started:1", "stopped"]
    backend.lose()
    backend.down = False
    await a.step()
    assert a.is_leader()
    assert a.epoch == 2, "a term over is not given back"
    assert rec.events == ["started:1", "stopped", "started:2"]


async def test_a_released_lease_is_taken_at_once_by_a_follower_that_read_it() -> None:
    """A release is not a loss: the follower need not leave it to its holder."""
    clock = FakeClock()  # never advanced
    backend = MemoryLeaseBackend(clock)
    rec_a, rec_b = Recorder(), Recorder()
    a, b = elector(backend, clock, "a", rec_a), elector(backend, clock, "b", rec_b)
    await a.step()
    await b.step()
    a.resign()
    await backend.release(identity="a")
    await b.step()
    assert b.is_leader()
    assert b.epoch == 2


async def test_a_resigned_leader_stops_at_once_releases_and_campaigns_again() -> None:
    clock = FakeClock()  # never advanced: the lease can only be freed by a release
    backend = MemoryLeaseBackend(clock)
    rec = Recorder()
    a = elector(backend, clock, "a", rec)
    await a.step()
    a.resign()
    assert not a.is_leader(), "a resigned leader acts no more"
    assert a.leader() is None
    await a.step()  # an attempt begun before the release does not make it lead again
    assert not a.is_leader()
    assert rec.events == ["started:1"], "resign() calls no callback: the caller knows"
    stop = asyncio.Event()
    running = asyncio.create_task(a.run(stop))
    try:
        await clock.wait_for_timers(1)  # one step of the loop done: it sleeps
        assert a.is_leader()
    finally:
        stop.set()
        await running
    # The loop released the lease, then won it back as a new term, with a new epoch.
    assert rec.events == ["started:1", "started:2", "stopped"]


async def test_a_follower_that_cannot_read_the_lease_forgets_the_leader_in_time() -> None:
    """The backend down: the follower keeps the leader it last read only while that
    leader may still act by the follower's own clock (a renew deadline from the last
    answer; the leader stops by then), then knows no leader (the API then answers 503
    no_leader, never a stale forward that meets a non-leader's 508)."""
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    rec_a, rec_b = Recorder(), Recorder()
    a, b = elector(backend, clock, "a", rec_a), elector(backend, clock, "b", rec_b)
    await a.step()
    await b.step()
    read_at = clock.monotonic()
    assert b.leader() == LeaderInfo("a", "http://a:5005", 1)

    backend.down = True
    clock.advance(SETTINGS.retry_period_s)
    await b.step()  # fails: the backend is down
    clock.advance(read_at + SETTINGS.renew_deadline_s - 0.01 - clock.monotonic())
    assert b.leader() == LeaderInfo("a", "http://a:5005", 1), "a may still act"
    clock.advance(0.01)
    assert b.leader() is None, "a has stopped by now, by the follower's own clock"

    backend.down = False
    clock.advance(SETTINGS.lease_duration_s - SETTINGS.renew_deadline_s)
    await b.step()  # the backend answers again: the lease expired there too, b takes it
    assert b.leader() == LeaderInfo("b", "http://b:5005", 2)


class StartedAt(Recorder):
    """Notes when (on the fake clock) each term began."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._clock = clock
        self.started_at: list[float] = []

    def started(self, epoch: int) -> None:
        super().started(epoch)
        self.started_at.append(self._clock.monotonic())


async def test_a_follower_tries_as_the_lease_it_read_runs_out_not_a_retry_period_later() -> None:
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    a = elector(backend, clock, "a", Recorder())
    await a.step()  # a leads, then freezes (killed): its lease runs out 15 s from now
    expires_at = clock.monotonic() + SETTINGS.lease_duration_s
    rec_b = StartedAt(clock)
    stop = asyncio.Event()
    running = asyncio.create_task(elector(backend, clock, "b", rec_b).run(stop))
    await clock.run_for(SETTINGS.lease_duration_s + 2 * SETTINGS.retry_period_s)
    stop.set()
    await clock.run_for(0)
    await running
    assert rec_b.events == ["started:2", "stopped"]
    # Up to a retry period (2-2.4 s) later before; now within twice the margin.
    assert expires_at <= rec_b.started_at[0] <= expires_at + 2 * EXPIRY_MARGIN_S


async def test_a_lease_held_past_the_end_a_follower_read_does_not_make_it_try_in_a_loop() -> None:
    """A holder that renews just after the end the follower read (or a record that never
    runs out): one early try, then a retry period between tries, as before."""
    clock = FakeClock()
    backend = MemoryLeaseBackend(clock)
    attempts: list[float] = []
    acquire = backend.acquire_or_renew

    async def counted(**kwargs: Any) -> LeaseRecord | None:
        if kwargs["identity"] == "b":
            attempts.append(clock.monotonic())
        return await acquire(**kwargs)

    backend.acquire_or_renew = counted  # type: ignore[method-assign]
    backend.free_in_s = lambda *, identity: 0.0  # type: ignore[method-assign]
    a = elector(backend, clock, "a", Recorder())
    await a.step()
    stop = asyncio.Event()
    running = asyncio.create_task(elector(backend, clock, "b", Recorder()).run(stop))
    await clock.run_for(10 * SETTINGS.retry_period_s)
    await a.step()  # a still holds it: every try of b found it held
    stop.set()
    await clock.run_for(0)
    await running
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    early = [gap for gap in gaps if gap < SETTINGS.retry_period_s]
    assert len(early) <= len(gaps) // 2 + 1, gaps  # never two early tries in a row
    assert all(gap >= SETTINGS.retry_period_s for gap in gaps[1::2]), gaps
    assert len(attempts) <= 2 * (10 + 1), attempts
