"""The fake clock: timers fire in order when time is moved on, and only then."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher.common.clock import Clock, FakeClock, SystemClock


async def test_sleep_returns_only_once_time_is_moved_past_it() -> None:
    clock = FakeClock()
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(5)
        woke.append(clock.monotonic())

    task = asyncio.create_task(sleeper())
    await clock.wait_for_timers(1)
    clock.advance(4.999)
    await clock.settle()
    assert woke == []
    clock.advance(0.001)
    await task
    assert woke == [1005.0]


async def test_run_for_wakes_timers_in_deadline_order_and_lets_them_rearm() -> None:
    clock = FakeClock()
    ticks: list[tuple[str, float]] = []

    async def every(name: str, period: float) -> None:
        while True:
            await clock.sleep(period)
            ticks.append((name, clock.monotonic() - 1000.0))

    tasks = [asyncio.create_task(every("a", 2)), asyncio.create_task(every("b", 3))]
    await clock.run_for(7)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # At 6 both are due: b set its timer first (at 3), so b fires first.
    assert ticks == [("a", 2), ("b", 3), ("a", 4), ("b", 6), ("a", 6)]
    assert clock.monotonic() == 1007.0


async def test_wait_returns_true_for_an_event_and_false_on_timeout() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    waiter = asyncio.create_task(clock.wait(event, timeout_s=10))
    await clock.wait_for_timers(1)
    event.set()
    assert await waiter is True
    assert clock.pending_timers() == 0  # the timeout's timer was cancelled with the wait

    waiter = asyncio.create_task(clock.wait(asyncio.Event(), timeout_s=10))
    await clock.wait_for_timers(1)
    await clock.run_for(10)
    assert await waiter is False


async def test_timeout_cancels_the_body_at_its_deadline() -> None:
    clock = FakeClock()
    never = asyncio.Event()

    async def bounded() -> str:
        try:
            async with clock.timeout(3):
                await never.wait()
        except TimeoutError:
            return f"timed out at {clock.monotonic() - 1000.0:g}"
        return "finished"

    task = asyncio.create_task(bounded())
    await clock.wait_for_timers(1)
    await clock.run_for(2.5)
    assert not task.done()
    await clock.run_for(0.5)
    assert await task == "timed out at 3"


async def test_timeout_lets_an_outside_cancellation_through() -> None:
    clock = FakeClock()

    async def bounded() -> None:
        async with clock.timeout(3):
            await asyncio.Event().wait()

    task = asyncio.create_task(bounded())
    await clock.wait_for_timers(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending_timers() == 0


async def test_a_body_that_finishes_in_time_is_not_cancelled() -> None:
    clock = FakeClock()
    async with clock.timeout(3):
        await clock.settle()
    await clock.run_for(5)  # the cancelled timer does nothing now
    await asyncio.sleep(0)


def test_the_clock_does_not_go_back() -> None:
    with pytest.raises(ValueError, match="does not go back"):
        FakeClock().advance(-1)


async def test_the_system_clock_waits_on_events_and_times_out() -> None:
    clock: Clock = SystemClock()
    event = asyncio.Event()
    event.set()
    assert await clock.wait(event, timeout_s=30) is True
    assert await clock.wait(asyncio.Event(), timeout_s=0) is False
    with pytest.raises(TimeoutError):
        async with clock.timeout(0):
            await asyncio.Event().wait()


def test_call_later_fires_in_deadline_order_once_time_passes_and_not_when_cancelled() -> None:
    clock = FakeClock()
    fired: list[tuple[str, float]] = []
    clock.call_later(3, lambda: fired.append(("late", clock.monotonic())))
    clock.call_later(1, lambda: fired.append(("early", clock.monotonic())))
    cancelled = clock.call_later(2, lambda: fired.append(("cancelled", clock.monotonic())))
    cancelled.cancel()
    clock.advance(0.999)
    assert fired == []
    clock.advance(5)
    assert fired == [("early", 1001.0), ("late", 1003.0)]


async def test_the_system_clock_calls_later_on_the_loop() -> None:
    clock: Clock = SystemClock()
    fired = asyncio.Event()
    never = clock.call_later(0, lambda: pytest.fail("a cancelled timer ran"))
    never.cancel()
    clock.call_later(0, fired.set)
    async with asyncio.timeout(10):
        await fired.wait()
    assert fired.is_set()
