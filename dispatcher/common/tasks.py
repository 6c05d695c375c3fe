"""Owned background work: every loop is named, logs its crash, and sleeps interruptibly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleeps up to ``seconds``; returns True as soon as ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    return stop.is_set()


async def run_periodically(
    name: str,
    step: Callable[[], Awaitable[None]],
    *,
    period_s: float,
    stop: asyncio.Event,
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
        if await sleep_or_stop(stop, period_s):
            return


async def wait_any(*events: asyncio.Event, timeout_s: float) -> None:
    """Returns when any event is set or after ``timeout_s``."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
