"""The event loop a process runs on: uvloop's by default, the standard library's on
request (``--event-loop``).

Measured with ``tests/bench/routes.py`` (10,000 nodes, 100,000 checks; dispatcher and
load generator on separate cores): uvloop's loop took the leader's CPU per heartbeat
from about 290 to 190 microseconds with requests in flight together, and from 375 to
305 with one at a time; config fetches and results posts alike. The request handling
itself is the same Python either way: what uvloop saves is the loop's own work per
socket event (reading, writing, waking), which a fleet of agents makes thousands of
times a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

EVENT_LOOPS = ("uvloop", "asyncio")


def factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``asyncio.Runner`` (None: the standard library's loop)."""
    if name == "uvloop":
        import uvloop  # only when chosen: the standard loop needs none of it

        return uvloop.new_event_loop
    if name == "asyncio":
        return None
    raise ValueError(f"unknown event loop {name!r}: use one of {', '.join(EVENT_LOOPS)}")
