"""Where long polls wait, and how they are woken: one per turn of the event loop.

Every long poll of a node's configs waits on that node's future, shared by all its
polls; a step that changes the node's configs wakes it. A woken poll builds its reply at
once (thousands of configs), and one step may change thousands of nodes, with as many
agents then fetching: waking them, or handing out their answers, all in one turn of the
loop would leave it serving nothing else (heartbeats, ``/healthz``) for that long. So
both go one per turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from dispatcher.core.model import NodeName


class WakeUps:
    """The futures long polls wait on, one per node, and their waking."""

    def __init__(self) -> None:
        self._waiters: dict[NodeName, asyncio.Future[None]] = {}
        self._answering = asyncio.Lock()

    def waiter(self, name: NodeName) -> asyncio.Future[None]:
        """The future the long polls of ``name`` wait on; shared by all of them, so each
        awaits it shielded."""
        waiter = self._waiters.get(name)
        if waiter is None or waiter.done():
            waiter = self._waiters[name] = asyncio.get_running_loop().create_future()
        return waiter

    def wake(self, names: Iterable[NodeName]) -> None:
        """Wakes the long polls of these nodes, one node per turn of the event loop: each
        then builds its node's configs reply, and a step that changes thousands of nodes
        must not have every reply built in one turn (the loop could serve nothing else)."""
        waiters = [
            waiter
            for name in names
            if (waiter := self._waiters.pop(name, None)) is not None and not waiter.done()
        ]
        if not waiters:
            return
        loop = asyncio.get_running_loop()

        def wake(index: int) -> None:
            if not waiters[index].done():
                waiters[index].set_result(None)
            if index + 1 < len(waiters):
                loop.call_soon(wake, index + 1)

        wake(0)

    def wake_all(self) -> None:
        """Wakes every pending long poll at once (the term ended, or shutdown)."""
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def answer_turn(self) -> None:
        """Hands out config answers one per turn of the event loop: the caller builds
        its reply (thousands of configs) as soon as it has the answer, and many agents
        fetch at once after a change; their replies must not all be built in one turn."""
        await self._answering.acquire()
        asyncio.get_running_loop().call_soon(self._answering.release)
