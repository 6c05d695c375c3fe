"""The pacing of config answers (``dispatcher.wakeups.AnswerPacer``): a budget of configs
per turn of the event loop, in the order asked; and of long polls' wake-ups
(``WakeUps.wake``); counted in turns, not timed."""

from __future__ import annotations

import asyncio
import itertools

from dispatcher.core.model import NodeName
from dispatcher.wakeups import WAKE_NODES_PER_TURN, AnswerPacer, WakeUps, settle


class Turns:
    """Counts the event loop's turns: a callback that puts itself back each turn."""

    def __init__(self) -> None:
        self.count = 0
        self._handle: asyncio.Handle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


async def answered_turns(pacer: AnswerPacer, weights: list[int]) -> list[int]:
    """The turn in which each request got through."""
    turns = Turns()
    turns.start()
    got: list[int] = [-1] * len(weights)

    async def ask(i: int, weight: int) -> None:
        await pacer.turn(weight)
        got[i] = turns.count

    try:
        await asyncio.gather(*(ask(i, w) for i, w in enumerate(weights)))
    finally:
        turns.stop()
    return got


async def test_small_answers_go_many_per_turn_up_to_the_budget() -> None:
    got = await answered_turns(AnswerPacer(100), [10] * 35)
    per_turn = [got.count(t) for t in sorted(set(got))]
    assert per_turn == [10, 10, 10, 5]  # 100 configs a turn
    assert got == sorted(got), "in the order asked"


async def test_an_answer_over_the_budget_goes_alone_and_nothing_is_starved() -> None:
    got = await answered_turns(AnswerPacer(100), [30, 500, 30, 30])
    assert got[0] < got[1] < got[2]  # the big one waits for a turn of its own
    assert got[2] == got[3]


async def turns_until_the_second_goes(*, cancel_first: bool) -> int:
    pacer = AnswerPacer(10)
    turns = Turns()
    turns.start()
    try:
        asked_at = turns.count
        spender = asyncio.ensure_future(pacer.turn(10))  # takes this turn's budget
        first = asyncio.ensure_future(pacer.turn(10))
        second = asyncio.ensure_future(pacer.turn(10))
        await asyncio.sleep(0)  # all three asked in one turn: two wait, in that order
        assert spender.done()
        assert not first.done()
        if cancel_first:
            first.cancel()  # its client gave up
        async with asyncio.timeout(5):
            await second
        await asyncio.gather(first, return_exceptions=True)
        return turns.count - asked_at
    finally:
        turns.stop()


async def test_a_waiter_whose_client_left_takes_nothing() -> None:
    """The budget a cancelled waiter would have taken goes to the one behind it."""
    kept = await turns_until_the_second_goes(cancel_first=False)
    cancelled = await turns_until_the_second_goes(cancel_first=True)
    assert cancelled < kept, (cancelled, kept)


async def test_wake_ups_go_a_bounded_number_of_nodes_per_turn_and_reach_every_one() -> None:
    """``WakeUps.wake``: a step that changes thousands of nodes wakes their long polls
    ``WAKE_NODES_PER_TURN`` nodes per turn of the loop, in order, none left behind."""
    wakeups = WakeUps()
    names = [NodeName(f"node-{i}") for i in range(2 * WAKE_NODES_PER_TURN + 5)]
    waiters = [wakeups.waiter(name) for name in names]
    wakeups.wake(names)
    woken = [[w.done() for w in waiters]]  # after each turn, the first in the call itself
    for _ in range(6):
        await asyncio.sleep(0)  # a turn of the loop
        woken.append([w.done() for w in waiters])
    counts = [sum(done) for done in woken]
    assert counts[0] == WAKE_NODES_PER_TURN
    assert all(0 <= b - a <= WAKE_NODES_PER_TURN for a, b in itertools.pairwise(counts))
    assert counts[-1] == len(waiters)
    # In the order the step named them: the woken ones are always the first ones.
    assert all(done == [True] * sum(done) + [False] * (len(done) - sum(done)) for done in woken)


async def test_each_long_poll_has_its_own_waiter_so_one_cancelled_leaves_the_others() -> None:
    """Two polls of one node (an agent's, and one a client gave up on): cancelling one
    leaves the other waiting and woken by the change; every waiter a poll forgets, or
    that a change wakes, leaves nothing behind."""
    wakeups = WakeUps()
    node = NodeName("node-0")
    kept, given_up = wakeups.waiter(node), wakeups.waiter(node)
    assert kept is not given_up
    given_up.cancel()
    wakeups.forget(node, given_up)
    assert not kept.done()
    wakeups.wake([node])
    assert kept.done()
    wakeups.forget(node, kept)  # after a wake: already gone, and forgetting is harmless

    timed_out = wakeups.waiter(node)
    settle(timed_out)  # its timer
    wakeups.forget(node, timed_out)
    assert wakeups.waiting() == 0, "a poll that timed out left its waiter behind"
    late = wakeups.waiter(NodeName("node-1"))
    wakeups.wake([node])  # nothing left of node-0's polls to wake
    assert not late.done()
    wakeups.wake_all()
    assert late.done()
    assert wakeups.waiting() == 0
