"""Small helpers shared by the node agent tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

GUARD_S = 15.0


async def eventually(check: Callable[[], bool], *, within_s: float = GUARD_S) -> None:
    """Waits until ``check()`` holds: for work the test does not drive on a fake clock
    (a loopback request, a child process). ``within_s`` only keeps a broken test from
    hanging: it is no measure of speed, so it is generous, never under a second."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within_s} s")
        await asyncio.sleep(0.01)
