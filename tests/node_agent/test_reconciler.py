"""The reconciler: desired against actual state, after the kubelet plugin manager."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from dispatcher.common.clock import FakeClock
from node_agent import reconciler as reconciler_module
from node_agent.reconciler import BACKOFF_BASE_S, BACKOFF_MAX_S, LAUNCH_SLICE, Reconciler
from tests.node_agent.helpers import GUARD_S


@dataclass(frozen=True)
class Spec:
    digest: str
    version: int = 1


@dataclass(frozen=True)
class Handle:
    spec: Spec


class Harness:
    """Start and stop callables that record every call and can be slowed down or broken."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.events: list[tuple[str, str, int]] = []
        self.finished: list[tuple[str, str, int]] = []
        self.start_gates: dict[str, asyncio.Event] = {}
        self.stop_gates: dict[str, asyncio.Event] = {}
        self.start_failures: dict[str, int] = {}
        self.stop_failures: dict[str, int] = {}
        self.reconciler: Reconciler[Spec, Handle] = Reconciler(
            start=self.start, stop=self.stop, clock=self.clock
        )

    async def start(self, spec: Spec) -> Handle:
        self.events.append(("start", spec.digest, spec.version))
        gate = self.start_gates.get(spec.digest)
        if gate is not None:
            await gate.wait()
        if self.start_failures.get(spec.digest, 0) > 0:
            self.start_failures[spec.digest] -= 1
            raise RuntimeError(f"cannot start {spec.digest}")
        self.finished.append(("start", spec.digest, spec.version))
        return Handle(spec)

    async def stop(self, handle: Handle) -> None:
        self.events.append(("stop", handle.spec.digest, handle.spec.version))
        gate = self.stop_gates.get(handle.spec.digest)
        if gate is not None:
            await gate.wait()
        if self.stop_failures.get(handle.spec.digest, 0) > 0:
            self.stop_failures[handle.spec.digest] -= 1
            raise RuntimeError(f"cannot stop {handle.spec.digest}")
        self.finished.append(("stop", handle.spec.digest, handle.spec.version))

    def starts(self, digest: str) -> int:
        return sum(1 for kind, d, _ in self.events if kind == "start" and d == digest)

    async def settle(self) -> None:
        """One pass, then wait for the operations it launched."""
        self.reconciler.reconcile_once()
        await self.reconciler.wait_idle()


def specs(*items: Spec) -> dict[str, Spec]:
    return {s.digest: s for s in items}


async def test_a_pass_starts_what_is_desired_and_missing() -> None:
    h = Harness()
    h.reconciler.set_desired(specs(Spec("a"), Spec("b")))
    assert h.reconciler.actual == {}
    await h.settle()
    assert sorted(h.reconciler.actual) == ["a", "b"]
    assert h.reconciler.actual["a"] == Handle(Spec("a"))
    assert sorted(h.events) == [("start", "a", 1), ("start", "b", 1)]
    # A second pass with nothing changed does nothing.
    await h.settle()
    assert len(h.events) == 2


async def test_a_pass_stops_before_it_starts() -> None:
    h = Harness()
    h.reconciler.set_desired(specs(Spec("a"), Spec("z")))
    await h.settle()
    h.events.clear()
    # "z" goes away and "b" is new; both operations are launched in the same pass:
    # the stop must be issued first although "b" sorts before "z".
    h.reconciler.set_desired(specs(Spec("a"), Spec("b")))
    await h.settle()
    assert h.events == [("stop", "z", 1), ("start", "b", 1)]
    assert sorted(h.reconciler.actual) == ["a", "b"]


async def test_a_changed_spec_is_stopped_then_started_again() -> None:
    h = Harness()
    h.reconciler.set_desired(specs(Spec("a", 1)))
    await h.settle()
    h.events.clear()
    h.stop_gates["a"] = asyncio.Event()
    h.reconciler.set_desired(specs(Spec("a", 2)))
    h.reconciler.reconcile_once()
    await h.clock.settle()
    assert h.events == [("stop", "a", 1)]
    # While the old one is still stopping, no pass starts the new one beside it.
    for _ in range(3):
        h.reconciler.reconcile_once()
        await asyncio.sleep(0)
    assert h.events == [("stop", "a", 1)]
    assert h.reconciler.actual["a"] == Handle(Spec("a", 1))
    h.stop_gates["a"].set()
    await h.reconciler.wait_idle()
    assert "a" not in h.reconciler.actual
    await h.settle()
    assert h.events == [("stop", "a", 1), ("start", "a", 2)]
    assert h.reconciler.actual["a"] == Handle(Spec("a", 2))


async def test_a_slow_start_is_not_started_twice() -> None:
    h = Harness()
    gate = h.start_gates["slow"] = asyncio.Event()
    h.reconciler.set_desired(specs(Spec("slow"), Spec("fast")))
    for _ in range(5):
        h.reconciler.reconcile_once()
        await h.clock.settle()
    assert h.starts("slow") == 1
    assert h.starts("fast") == 1
    assert sorted(h.reconciler.actual) == ["fast"]  # actual only after success
    gate.set()
    await h.reconciler.wait_idle()
    assert sorted(h.reconciler.actual) == ["fast", "slow"]
    await h.settle()
    assert h.starts("slow") == 1


async def test_a_check_removed_while_it_starts_is_stopped_once_started() -> None:
    h = Harness()
    gate = h.start_gates["a"] = asyncio.Event()
    h.reconciler.set_desired(specs(Spec("a")))
    h.reconciler.reconcile_once()
    await h.clock.settle()
    h.reconciler.set_desired({})
    h.reconciler.reconcile_once()
    await h.clock.settle()
    assert h.events == [("start", "a", 1)]  # no stop issued beside the pending start
    gate.set()
    await h.reconciler.wait_idle()
    assert "a" in h.reconciler.actual
    await h.settle()
    assert h.events == [("start", "a", 1), ("stop", "a", 1)]
    assert h.reconciler.actual == {}


async def test_a_failed_start_backs_off_exponentially_and_recovers() -> None:
    clock = FakeClock()
    h = Harness(clock)
    h.start_failures["a"] = 3
    h.reconciler.set_desired(specs(Spec("a"), Spec("b")))
    await h.settle()
    assert h.starts("a") == 1
    assert "a" not in h.reconciler.actual
    assert "b" in h.reconciler.actual  # one broken check does not hold up the others

    expected_delays = [BACKOFF_BASE_S, BACKOFF_BASE_S * 2, BACKOFF_BASE_S * 4]
    for attempt, delay in enumerate(expected_delays, start=2):
        # Not before the delay...
        clock.advance(delay * 0.9)
        await h.settle()
        assert h.starts("a") == attempt - 1, (attempt, delay)
        # ...but once it has passed.
        clock.advance(delay * 0.1 + 1e-6)
        await h.settle()
        assert h.starts("a") == attempt, (attempt, delay)
    assert h.reconciler.actual["a"] == Handle(Spec("a"))
    assert h.starts("b") == 1


async def test_a_success_resets_the_backoff() -> None:
    clock = FakeClock()
    h = Harness(clock)
    h.start_failures["a"] = 3
    h.reconciler.set_desired(specs(Spec("a")))
    await h.settle()
    for delay in (0.5, 1.0, 2.0):
        clock.advance(delay)
        await h.settle()
    assert "a" in h.reconciler.actual
    # Stopped, then wanted again, and the first start fails once more: the wait is the
    # base delay again, not the fourth step of the old sequence.
    h.reconciler.set_desired({})
    await h.settle()
    h.start_failures["a"] = 1
    h.reconciler.set_desired(specs(Spec("a")))
    await h.settle()
    assert "a" not in h.reconciler.actual
    clock.advance(BACKOFF_BASE_S + 1e-6)
    await h.settle()
    assert "a" in h.reconciler.actual


async def test_the_backoff_is_capped() -> None:
    clock = FakeClock()
    h = Harness(clock)
    h.start_failures["a"] = 1000
    h.reconciler.set_desired(specs(Spec("a")))
    await h.settle()
    for _ in range(12):  # 0.5 * 2**11 is far above the cap
        clock.advance(BACKOFF_MAX_S + 1e-6)
        await h.settle()
    assert h.starts("a") == 13
    clock.advance(BACKOFF_MAX_S * 0.9)
    await h.settle()
    assert h.starts("a") == 13
    clock.advance(BACKOFF_MAX_S * 0.1 + 1e-6)
    await h.settle()
    assert h.starts("a") == 14


async def test_actual_state_does_not_change_when_a_start_fails() -> None:
    h = Harness()
    h.start_failures["a"] = 1
    h.reconciler.set_desired(specs(Spec("a")))
    await h.settle()
    assert h.reconciler.actual == {}
    assert h.finished == []


async def test_a_failed_stop_keeps_the_check_in_the_actual_state() -> None:
    """The actual state changes only when an operation succeeds (module docstring,
    kubelet's plugin manager): a stop that fails leaves the check running as far as
    anyone can tell, so it must stay in ``actual`` (reported as ``running`` and
    stopped again by the next pass), not be forgotten."""
    h = Harness()
    h.reconciler.set_desired(specs(Spec("a")))
    await h.settle()
    h.stop_failures["a"] = 1
    h.reconciler.set_desired({})
    await h.settle()
    assert h.events[-1] == ("stop", "a", 1)
    assert "a" in h.reconciler.actual
    await h.settle()  # within its backoff: not tried again yet
    assert [e for e in h.events if e[0] == "stop"] == [("stop", "a", 1)]
    h.clock.advance(0.5)
    await h.settle()
    assert [e for e in h.events if e[0] == "stop"] == [("stop", "a", 1)] * 2
    assert h.reconciler.actual == {}


async def test_stop_all_stops_everything_including_a_pending_start() -> None:
    h = Harness()
    h.reconciler.set_desired(specs(Spec("a"), Spec("b")))
    await h.settle()
    gate = h.start_gates["c"] = asyncio.Event()
    h.reconciler.set_desired(specs(Spec("a"), Spec("b"), Spec("c")))
    h.reconciler.reconcile_once()
    await h.clock.settle()
    stopping = asyncio.create_task(h.reconciler.stop_all())
    await h.clock.settle()
    assert not stopping.done()  # it waits for the pending start...
    gate.set()
    async with asyncio.timeout(GUARD_S):
        await stopping
    # ...and then stops that one too.
    assert h.reconciler.actual == {}
    assert h.reconciler.desired == {}
    stopped = sorted(d for kind, d, _ in h.finished if kind == "stop")
    assert stopped == ["a", "b", "c"]


async def test_stop_all_with_nothing_running_returns_at_once() -> None:
    h = Harness()
    stopping = asyncio.create_task(h.reconciler.stop_all())
    await h.clock.settle()
    assert stopping.done()
    assert h.events == []


async def test_the_run_loop_reacts_to_a_new_desired_state_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A long pass period: whatever happens within the test comes from the wake-ups.
    monkeypatch.setattr(reconciler_module, "PASS_PERIOD_S", 30.0)
    h = Harness()
    stop = asyncio.Event()
    loop = asyncio.create_task(h.reconciler.run(stop))
    try:
        await h.clock.wait_for_timers(1)  # the loop waits for its next pass
        started = h.clock.monotonic()
        h.reconciler.set_desired(specs(Spec("a", 1)))
        await h.clock.settle()
        assert "a" in h.reconciler.actual
        # A changed spec: the stop, then (woken by the stop's completion) the new start.
        h.reconciler.set_desired(specs(Spec("a", 2)))
        await h.clock.settle()
        assert h.reconciler.actual.get("a") == Handle(Spec("a", 2))
        assert h.events == [("start", "a", 1), ("stop", "a", 1), ("start", "a", 2)]
        assert h.clock.monotonic() == started  # no pass period had to pass
    finally:
        stop.set()
        async with asyncio.timeout(GUARD_S):
            await loop
    await h.reconciler.stop_all()


async def test_a_check_that_died_by_itself_is_started_again_after_a_backoff() -> None:
    h = Harness()
    h.reconciler.set_desired(specs(Spec("a")))
    await h.settle()
    handle = h.reconciler.actual["a"]
    h.reconciler.lost("a", handle)
    assert "a" not in h.reconciler.actual
    await h.settle()
    assert "a" not in h.reconciler.actual  # within its backoff
    h.clock.advance(0.5)
    await h.settle()
    assert "a" in h.reconciler.actual
    assert h.reconciler.actual["a"] is not handle


async def test_losing_a_stale_handle_changes_nothing() -> None:
    h = Harness()
    h.reconciler.set_desired(specs(Spec("a")))
    await h.settle()
    current = h.reconciler.actual["a"]
    h.reconciler.lost("a", object())  # type: ignore[arg-type]  # a handle that is not current
    assert h.reconciler.actual["a"] is current


async def test_a_big_pass_launches_in_slices_and_lets_the_loop_turn() -> None:
    h = Harness()
    h.reconciler.set_desired(specs(*(Spec(f"{n:04d}") for n in range(1_000))))
    passing = asyncio.create_task(h.reconciler.reconcile())
    launched_per_turn = []
    while not passing.done():
        before = len(h.events)
        await asyncio.sleep(0)
        launched_per_turn.append(len(h.events) - before)
    await h.reconciler.wait_idle()
    assert len(h.reconciler.actual) == 1_000
    assert max(launched_per_turn) <= LAUNCH_SLICE
    assert len(launched_per_turn) >= 1_000 // LAUNCH_SLICE


async def test_a_new_desired_state_during_a_pass_starts_the_pass_over() -> None:
    h = Harness()
    h.reconciler.set_desired(specs(*(Spec(f"old-{n:04d}") for n in range(1_000))))
    passing = asyncio.create_task(h.reconciler.reconcile())
    await turns_until(lambda: len(h.events) > 0)
    h.reconciler.set_desired(specs(Spec("new")))
    await passing
    await h.reconciler.wait_idle()
    # The old batch stopped being started within a slice; the new state was reconciled.
    assert h.starts("new") == 1
    old_starts = [d for kind, d, _ in h.events if kind == "start" and d.startswith("old")]
    assert len(old_starts) <= 2 * LAUNCH_SLICE
    await h.settle()  # the next pass stops what the old state started
    assert sorted(h.reconciler.actual) == ["new"]


async def turns_until(condition: Callable[[], bool], *, turns: int = 10_000) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not within {turns} turns of the event loop")
