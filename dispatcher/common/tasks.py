"""Owned background work: every loop is named, logs its crash, and sleeps interruptibly.

Every wait here is on an injected ``Clock``, so that loops built on these helpers run on a
``FakeClock`` in tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from dispatcher.common.clock import Clock

log = structlog.get_logger(__name__)


async def sleep_or_stop(stop: asyncio.Event, seconds: float, *, clock: Clock) -> bool:
    """Sleeps up to ``seconds`` of ``clock``'s time; returns True as soon as ``stop`` is set."""
    return await clock.wait(stop, timeout_s=max(0.0, seconds))


async def run_periodically(
    name: str,
    step: Callable[[], Awaitable[None]],
    *,
    period_s: float,
    stop: asyncio.Event,
    clock: Clock,
) -> None:
    """Runs ``step`` every ``period_s`` until ``stop``; a failing step is logged and retried.

    A crash of one step must not end the loop (an expiry loop that dies silently leaves
    dead nodes holding checks forever).
    """
    while not stop.is_set():
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("periodic_step_failed", task=name)
        if await sleep_or_stop(stop, period_s, clock=clock):
            return


async def wait_any(*events: asyncio.Event, timeout_s: float, clock: Clock) -> None:
    """Returns when any event is set or after ``timeout_s`` of ``clock``'s time."""
    await clock.wait(*events, timeout_s=timeout_s)
