"""Time as an injected dependency, so that tests of expiry, leases, long polls, retries and
schedules run on fake time: deterministic and fast.

A ``Clock`` reads time (``monotonic`` for deadlines and ages, ``time`` for what is shown or
sent) and waits on it (``sleep``, ``wait`` for events with a timeout, ``timeout`` around a
call). Code that waits takes the clock and never reads the event loop's clock or calls
``asyncio.sleep``/``asyncio.timeout`` with a duration itself, so that a test can hand it a
``FakeClock`` and move time on by hand (``advance``, ``run_for``).

The pure core never sees a clock: its callers pass ``now`` in.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None:
        """Stops the timer's callback from running (no effect once it has run)."""
        ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: deadlines and ages."""
        ...

    def time(self) -> float:
        """Unix seconds: only for what is shown or sent to others."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Waits ``seconds`` of this clock's time (a non-positive value yields once)."""
        ...

    async def wait(self, *events: asyncio.Event, timeout_s: float) -> bool:
        """Waits until any of ``events`` is set (True) or ``timeout_s`` passes (False)."""
        ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """Like ``asyncio.timeout``, on this clock: the body is cancelled when ``seconds``
        have passed, and ``TimeoutError`` is raised in its place."""
        ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Runs ``callback`` once ``seconds`` of this clock's time have passed (for
        synchronous code such as a protocol's timers), unless the timer is cancelled."""
        ...


async def _wait_any(clock: Clock, events: tuple[asyncio.Event, ...], timeout_s: float) -> bool:
    if any(event.is_set() for event in events):
        return True
    waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(e.wait()) for e in events]
    waiters.append(asyncio.ensure_future(clock.sleep(timeout_s)))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return any(event.is_set() for event in events)


class SystemClock:
    """The real clocks, and the event loop's timers for waiting."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, *events: asyncio.Event, timeout_s: float) -> bool:
        return await _wait_any(self, events, timeout_s)

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(max(0.0, seconds))

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, seconds), callback)


class _Timer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that moves only when told to.

    ``advance(s)`` moves both clocks on at once and fires every timer that fell due, in
    deadline order; the woken tasks run when the caller next yields to the event loop.
    ``await run_for(s)`` moves time on in steps, from one due timer to the next, letting
    the woken tasks run between steps, as real time would. ``await wait_for_timers(n)``
    returns once at least ``n`` timers are pending (the code under test is now waiting),
    so a test can order its steps by events instead of by guesses of real time.
    """

    def __init__(self, *, monotonic: float = 1000.0, wall: float = 1_763_700_000.0) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()
        self._timer_added: asyncio.Event | None = None

    # ------------------------------------------------------------------ reading

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    # ------------------------------------------------------------------ moving

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        target = self._monotonic + seconds
        while self._timers and self._timers[0][0] <= target:
            deadline, _, timer = heapq.heappop(self._timers)
            self._move_to(max(deadline, self._monotonic))
            if not timer.cancelled:
                timer.callback()
        self._move_to(target)

    async def run_for(self, seconds: float, *, settle_rounds: int = 20) -> None:
        """Moves time on by ``seconds``, one due timer at a time, yielding to the event
        loop after each so that what a timer woke runs (and may set new timers) before
        time moves on."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        target = self._monotonic + seconds
        await self.settle(settle_rounds)
        while True:
            due = self.next_deadline()
            if due is None or due > target:
                break
            self.advance(max(0.0, due - self._monotonic))
            await self.settle(settle_rounds)
        self.advance(target - self._monotonic)
        await self.settle(settle_rounds)

    @staticmethod
    async def settle(rounds: int = 20) -> None:
        """Yields to the event loop ``rounds`` times: ready tasks run, no time passes."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    def next_deadline(self) -> float | None:
        """The monotonic time of the earliest pending timer, or None."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def pending_timers(self) -> int:
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    async def wait_for_timers(self, count: int = 1) -> None:
        """Returns once at least ``count`` timers are pending (some code is waiting)."""
        while self.pending_timers() < count:
            if self._timer_added is None:
                self._timer_added = asyncio.Event()
            self._timer_added.clear()
            await self._timer_added.wait()

    # ------------------------------------------------------------------ waiting

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self._call_later(seconds, wake)
        try:
            await future
        finally:
            timer.cancel()

    async def wait(self, *events: asyncio.Event, timeout_s: float) -> bool:
        return await _wait_any(self, events, timeout_s)

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return self._timeout(seconds)

    @contextlib.asynccontextmanager
    async def _timeout(self, seconds: float) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always called inside a task
            raise RuntimeError("FakeClock.timeout needs a running task")
        fired = False

        def fire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        cancelling = task.cancelling()
        handle: asyncio.Handle | _Timer
        if seconds <= 0:
            handle = asyncio.get_running_loop().call_soon(fire)
        else:
            handle = self._call_later(seconds, fire)
        try:
            yield
        except asyncio.CancelledError:
            if fired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Fired by ``advance``/``run_for`` once the clock passes ``seconds`` from now."""
        return self._call_later(seconds, callback)

    def _call_later(self, seconds: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self._monotonic + seconds, callback)
        heapq.heappush(self._timers, (timer.deadline, next(self._order), timer))
        if self._timer_added is not None:
            self._timer_added.set()
        return timer

    def _move_to(self, monotonic: float) -> None:
        self._wall += monotonic - self._monotonic
        self._monotonic = monotonic
