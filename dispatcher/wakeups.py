"""Where long polls wait, and how they are woken: a bounded number per turn of the
event loop.

Every long poll of a node's configs waits on that node's future, shared by all its
polls; a step that changes the node's configs wakes it. A woken poll builds its reply at
once (thousands of configs), and one step may change thousands of nodes, with as many
agents then fetching: waking them, or handing out their answers, all in one turn of the
loop would leave it serving nothing else (heartbeats, ``/healthz``) for that long. So
wake-ups go ``WAKE_NODES_PER_TURN`` nodes per turn, and answers a bounded amount of
configs per turn.

Wake-ups went one node per turn until the fleet benchmark showed what that costs: at
10,000 agents a turn of the busy loop takes about a millisecond, so a rebalance that
moved checks of 6,400 agents took 3 to 4 s only to wake them all (p99 of the agents'
new sets 3.2-3.8 s after the reply). The answers' budget bounds the turn anyway.

Answers were once handed out one per turn too. At 10,000 agents a turn of the loop
serves hundreds of requests, and the fleet benchmark saw the queue of answers grow
without end (65,000 waiting after 145 s, long polls answered minutes late, nodes
expiring): one per turn is fewer than the fleet's ordinary fetches. A budget of configs
per turn keeps the turn short for big answers and lets many small ones through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable

from dispatcher.core.model import NodeName

WAKE_NODES_PER_TURN = 200
"""Nodes whose long polls are woken per turn of the event loop: about as many answers of
10 configs as ``ANSWER_CONFIGS_PER_TURN`` lets through per turn."""
ANSWER_CONFIGS_PER_TURN = 2_000
"""Configs handed out in answers per turn of the event loop (an answer of more is let
through alone): about 200 answers of 10. Measured in the fleet benchmark, an answer
costs the leader about 50-75 microseconds a config (built and written), so a full turn
is 0.1-0.15 s; 500 a turn did not shorten the longest heartbeat wait behind a big
change there, and made the fan-out slower."""


class WakeUps:
    """The futures long polls wait on, one per poll, by node, and their waking.

    One future per poll, not one per node shared by its polls: a shared one had to be
    awaited through ``asyncio.shield`` (one poll cancelled by its client must not cancel
    the others), and with its timeout and their callbacks a held poll kept a dozen
    objects more for the garbage collector to walk: at 10,000 agents, each holding one
    most of the time, those were walked in every collection of the middle generation."""

    def __init__(self) -> None:
        self._waiters: dict[NodeName, list[asyncio.Future[None]]] = {}
        self._answers = AnswerPacer(ANSWER_CONFIGS_PER_TURN)

    def waiter(self, name: NodeName) -> asyncio.Future[None]:
        """A future for one long poll of ``name``, done when the node's configs change;
        the poll ``forget``s it when it is done waiting, however it ends."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._waiters.get(name)
        if waiting is None:
            self._waiters[name] = [waiter]
        else:
            waiting.append(waiter)
        return waiter

    def forget(self, name: NodeName, waiter: asyncio.Future[None]) -> None:
        waiting = self._waiters.get(name)
        if waiting is None:
            return  # woken: already taken out
        with contextlib.suppress(ValueError):
            waiting.remove(waiter)
        if not waiting:
            del self._waiters[name]

    def waiting(self) -> int:
        """Long polls waiting now (tests)."""
        return sum(len(polls) for polls in self._waiters.values())

    def wake(self, names: Iterable[NodeName]) -> None:
        """Wakes the long polls of these nodes, ``WAKE_NODES_PER_TURN`` nodes per turn of
        the event loop: each then builds its node's configs reply, and a step that
        changes thousands of nodes must not have every reply built in one turn (the loop
        could serve nothing else)."""
        waiting = [polls for name in names if (polls := self._waiters.pop(name, None)) is not None]
        if not waiting:
            return
        loop = asyncio.get_running_loop()

        def wake(start: int) -> None:
            end = start + WAKE_NODES_PER_TURN
            for polls in waiting[start:end]:
                for waiter in polls:
                    settle(waiter)
            if end < len(waiting):
                loop.call_soon(wake, end)

        wake(0)

    def wake_all(self) -> None:
        """Wakes every pending long poll at once (the term ended, or shutdown)."""
        for polls in self._waiters.values():
            for waiter in polls:
                settle(waiter)
        self._waiters.clear()

    async def answer_turn(self, configs: int) -> None:
        """Waits for this answer's turn: the caller builds its reply (``configs`` of
        them) as soon as this returns, and many agents fetch at once after a change;
        their replies must not all be built in one turn (``AnswerPacer``)."""
        await self._answers.turn(configs)


class AnswerPacer:
    """Lets through at most ``budget`` units of work per turn of the event loop, in the
    order asked; a request larger than the budget goes alone, at the start of a turn.
    A waiter cancelled meanwhile (its client gave up) takes nothing."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._left = budget
        self._queue: deque[tuple[asyncio.Future[None], int]] = deque()
        self._refill_due = False

    async def turn(self, weight: int) -> None:
        weight = max(1, weight)
        if not self._queue and (weight <= self._left or self._left == self._budget):
            self._left -= weight
            self._schedule_refill()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append((waiter, weight))
        self._schedule_refill()
        await waiter

    def _schedule_refill(self) -> None:
        if not self._refill_due:
            self._refill_due = True
            asyncio.get_running_loop().call_soon(self._refill)

    def _refill(self) -> None:
        """At the next turn: a fresh budget, spent on the waiters in order."""
        self._refill_due = False
        self._left = self._budget
        while self._queue:
            waiter, weight = self._queue[0]
            if waiter.done():  # cancelled
                self._queue.popleft()
                continue
            if weight > self._left and self._left < self._budget:
                break  # the next turn's
            self._queue.popleft()
            self._left -= weight
            waiter.set_result(None)
        if self._queue or self._left < self._budget:
            self._schedule_refill()


def settle(waiter: asyncio.Future[None]) -> None:
    """Ends a long poll's wait (woken, or its time is up), unless it has ended."""
    if not waiter.done():
        waiter.set_result(None)
