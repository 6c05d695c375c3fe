"""The result batcher: nothing lost or sent twice around a send, poison batches dropped,
batches bounded in bytes."""

from __future__ import annotations

import asyncio
from typing import Any

from dispatcher import wire
from dispatcher.common.clock import FakeClock
from node_agent.errors import DispatcherProtocolError, DispatcherUnavailable
from node_agent.metrics import AgentMetrics
from node_agent.results import MAX_BATCH, MAX_BATCH_BYTES, ResultBatcher


def result(n: int, output: str = "") -> dict[str, Any]:
    return {
        "digest": "d" * 16,
        "run_id": f"run-{n}",
        "ok": True,
        "errors": [],
        "started_at": 1.0 + n,
        "duration_s": 0.1,
        "output": output,
    }


class FakeApi:
    """Records what arrives; can hold a send open, fail it, or refuse it."""

    def __init__(self) -> None:
        self.received: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.sending = asyncio.Event()  # set once a send has begun
        self.fail: type[Exception] | None = None
        self.url = "http://fake"
        self.url_count = 1

    def next_url(self) -> None:
        pass

    async def status(
        self, body: dict[str, Any], *, timeout_s: float | None = None
    ) -> wire.StatusOut:
        raise NotImplementedError

    async def configs(self, *, since: int | None, wait_s: float) -> wire.NodeConfigsOut:
        raise NotImplementedError

    async def results(self, results: list[dict[str, Any]]) -> wire.ResultsOut:
        self.sending.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail("refused" if self.fail is DispatcherProtocolError else "down")
        self.received.append([r["run_id"] for r in results])
        return wire.ResultsOut(epoch=1, accepted=len(results), rejected=[])


def batcher(api: FakeApi, *, max_pending: int = 100) -> ResultBatcher:
    return ResultBatcher(
        client=api,
        metrics=AgentMetrics(),
        flush_s=1.0,
        max_pending=max_pending,
        clock=FakeClock(),
    )


def sent(api: FakeApi) -> list[str]:
    return [run for batch in api.received for run in batch]


async def test_results_added_during_a_send_at_the_cap_are_neither_lost_nor_sent_twice() -> None:
    api = FakeApi()
    api.gate = asyncio.Event()
    b = batcher(api, max_pending=5)
    for n in range(5):
        b.add(result(n))
    flushing = asyncio.create_task(b.flush())
    await api.sending.wait()  # the first batch is on its way
    for n in range(5, 8):
        b.add(result(n))
    api.gate.set()
    assert await flushing
    assert sent(api) == [f"run-{n}" for n in range(8)]
    assert b.pending == 0


async def test_an_unreachable_dispatcher_keeps_the_batch_in_order_for_the_next_flush() -> None:
    api = FakeApi()
    b = batcher(api)
    for n in range(3):
        b.add(result(n))
    api.fail = DispatcherUnavailable
    assert not await b.flush()
    b.add(result(3))
    api.fail = None
    assert await b.flush()
    assert sent(api) == ["run-0", "run-1", "run-2", "run-3"]


async def test_a_refused_batch_is_dropped_so_later_results_still_go() -> None:
    api = FakeApi()
    b = batcher(api)
    b.add(result(0))
    api.fail = DispatcherProtocolError
    assert await b.flush()  # dropped, not retried forever
    assert b.pending == 0
    api.fail = None
    b.add(result(1))
    assert await b.flush()
    assert sent(api) == ["run-1"]


async def test_a_cancelled_send_puts_its_batch_back() -> None:
    api = FakeApi()
    api.gate = asyncio.Event()
    b = batcher(api)
    for n in range(3):
        b.add(result(n))
    flushing = asyncio.create_task(b.flush())
    await api.sending.wait()
    flushing.cancel()
    await asyncio.gather(flushing, return_exceptions=True)
    assert b.pending == 3
    api.gate.set()
    assert await b.flush()
    assert sent(api) == ["run-0", "run-1", "run-2"]


async def test_batches_are_bounded_in_bytes() -> None:
    api = FakeApi()
    b = batcher(api, max_pending=10_000)
    big = "x" * 4000
    count = 2 * MAX_BATCH_BYTES // 4000 + 10
    for n in range(count):
        b.add(result(n, output=big))
    assert await b.flush()
    assert len(api.received) >= 3
    assert sent(api) == [f"run-{n}" for n in range(count)]
    for batch in api.received:
        assert len(batch) * 4000 <= MAX_BATCH_BYTES + 4200


async def test_the_leader_paces_the_flushes_and_never_below_the_agents_own_interval() -> None:
    """``results_interval_s`` from the leader (a large fleet): batches go that often; a
    told interval below the agent's own flush interval (1 s here) changes nothing."""
    api = FakeApi()
    clock = FakeClock()
    b = ResultBatcher(client=api, metrics=AgentMetrics(), flush_s=1.0, max_pending=100, clock=clock)
    stop = asyncio.Event()
    b.pace(5.0)
    assert b.interval_s == 5.0
    task = asyncio.create_task(b.run(stop), name="batcher-under-test")
    try:
        await clock.wait_for_timers(1)
        b.add(result(0))
        await clock.run_for(4.9)
        assert api.received == []  # not at the agent's own 1 s
        await clock.run_for(0.2)
        assert sent(api) == ["run-0"]
        b.pace(0.3)  # below the agent's own: its own 1 s again, from the next wait
        assert b.interval_s == 1.0
        await clock.run_for(5.0)  # the wait under way (5 s) ends first
        b.add(result(1))
        await clock.run_for(1.1)
        assert sent(api) == ["run-0", "run-1"]
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await task


async def test_a_whole_batch_goes_at_once_whatever_the_pacing() -> None:
    """An agent of many checks told to post seldom would reach its cap and drop results:
    a whole batch (MAX_BATCH) is sent as soon as it waits."""
    api = FakeApi()
    clock = FakeClock()
    b = ResultBatcher(
        client=api, metrics=AgentMetrics(), flush_s=1.0, max_pending=10 * MAX_BATCH, clock=clock
    )
    b.pace(30.0)
    stop = asyncio.Event()
    task = asyncio.create_task(b.run(stop), name="batcher-under-test")
    try:
        await clock.wait_for_timers(1)
        for n in range(MAX_BATCH - 1):
            b.add(result(n))
        await clock.settle()
        assert api.received == []  # not a whole batch yet: it waits for the interval
        b.add(result(MAX_BATCH))
        await clock.settle()
        assert len(sent(api)) == MAX_BATCH  # no time passed on the clock
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await task
