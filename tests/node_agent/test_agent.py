"""The whole node agent (poller, reconciler, check loops, results, shutdown) on a fake
clock, against an in-process dispatcher: what thousands of checks at once must not do to
it. It keeps heartbeating while a big batch starts, spreads the first runs over the
interval, and leaves within its shutdown grace however its checks stop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from dispatcher import wire
from dispatcher.common.clock import FakeClock
from node_agent.checks import InstanceModel, Outcome, RunContext, validate_instance
from node_agent.poller import JITTER
from node_agent.reconciler import LAUNCH_SLICE
from node_agent.service import NodeAgent
from node_agent.settings import AgentSettings
from tests.node_agent.helpers import GUARD_S

CHECKS = 5_000
FEWER = 2_000
"""For the tests that run the checks for a while (the runs cost real time)."""
INTERVAL_S = 60.0
HEARTBEAT_S = 10.0
GRACE_S = 4.0


def digest(n: int) -> str:
    return f"{n:032x}"


def config(n: int) -> wire.CheckConfigOut:
    return wire.CheckConfigOut.model_validate(
        {
            "name": "fake",
            "instances": [{}],
            "init_config": {},
            "interval_s": INTERVAL_S,
            "timeout_s": INTERVAL_S - 1,
            "node_selector": {},
            "weight": 1.0,
            "digest": digest(n),
            "sources": ["test"],
            "node": "node-a",
        }
    )


class Dispatcher:
    """The node-agent routes in process: heartbeats, a long poll on the fake clock,
    results. Records when each heartbeat came and how many checks ran then."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.url = "http://dispatcher.test"
        self.url_count = 1
        self.last_change = 1
        self.placed: list[wire.CheckConfigOut] = []
        self.changed = asyncio.Event()
        self.statuses: list[tuple[float, int, dict[str, Any]]] = []
        self.received: list[dict[str, Any]] = []
        self.running_now: Callable[[], int] = lambda: 0

    def change(self, configs: list[wire.CheckConfigOut]) -> None:
        self.placed = configs
        self.last_change += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def next_url(self) -> None:
        pass

    def heartbeats(self) -> list[tuple[float, int, dict[str, Any]]]:
        return [s for s in self.statuses if not s[2].get("leaving")]

    def left(self) -> bool:
        return any(body.get("leaving") for _, _, body in self.statuses)

    async def status(
        self, body: dict[str, Any], *, timeout_s: float | None = None
    ) -> wire.StatusOut:
        self.statuses.append((self.clock.monotonic(), self.running_now(), body))
        return wire.StatusOut(
            is_up_to_date=body["last_change"] in (-1, self.last_change),
            epoch=1,
            leader="dispatcher-0",
            heartbeat_interval_s=HEARTBEAT_S,
            node_expiration_timeout_s=3 * HEARTBEAT_S,
        )

    async def configs(self, *, since: int | None, wait_s: float) -> wire.NodeConfigsOut:
        if since == self.last_change and wait_s > 0:
            await self.clock.wait(self.changed, timeout_s=wait_s)
        return wire.NodeConfigsOut(last_change=self.last_change, epoch=1, configs=self.placed)

    async def results(self, results: list[dict[str, Any]]) -> wire.ResultsOut:
        self.received.extend(results)
        return wire.ResultsOut(epoch=1, accepted=len(results), rejected=[])


class Hold(InstanceModel):
    pass


class FakeKind:
    """Notes when each check runs. With ``hold`` set, a run waits for it, and once told
    to stop ignores it until ``stopped`` is set (a program that does not die)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.starts: dict[str, list[float]] = {}
        self.hold: asyncio.Event | None = None
        self.stopped = asyncio.Event()

    def parse(self, instance: dict[str, Any], init_config: dict[str, Any]) -> Hold:
        parsed: Hold = validate_instance(Hold, instance)
        return parsed

    async def run(self, instance: Hold, context: RunContext) -> Outcome:
        self.starts.setdefault(context.digest, []).append(self.clock.monotonic())
        if self.hold is not None:
            try:
                await self.hold.wait()
            except asyncio.CancelledError:
                # A program that does not die: every cancellation is ignored until the
                # test lets it go.
                while not self.stopped.is_set():
                    with contextlib.suppress(asyncio.CancelledError):
                        await self.stopped.wait()
                raise
        return Outcome(errors=[])


class Harness:
    def __init__(self, **settings_overrides: Any) -> None:
        self.clock = FakeClock()
        self.dispatcher = Dispatcher(self.clock)
        settings = AgentSettings(
            **{
                "name": "node-a",
                "port": 0,
                "capacity": 2 * CHECKS,  # the cap never holds a run back here
                "heartbeat_interval_s": HEARTBEAT_S,
                "long_poll_s": 30.0,
                "shutdown_timeout_s": GRACE_S,
                **settings_overrides,
            }
        )
        self.agent = NodeAgent(
            settings, clock=self.clock, client=self.dispatcher, rng=random.Random(11)
        )
        self.kind = FakeKind(self.clock)
        self.agent.kinds["fake"] = self.kind
        self.dispatcher.running_now = lambda: len(self.agent.reconciler.actual)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def running(self) -> int:
        return len(self.agent.reconciler.actual)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.agent.run(self.stop), name="agent-under-test")
        # Registered, and the configs long poll is held: the agent waits on the clock.
        await turns_until(lambda: bool(self.dispatcher.statuses))
        await self.clock.settle()

    async def start_checks(self, count: int) -> None:
        self.dispatcher.change([config(n) for n in range(count)])
        await turns_until(lambda: self.running() == count, turns=100_000)

    async def close(self) -> None:
        if self.kind.hold is not None:
            self.kind.hold.set()
        self.kind.stopped.set()
        if self.task is not None:
            self.stop.set()
            async with asyncio.timeout(GUARD_S):
                await self.task
        await self.clock.settle()  # checks left behind end now that they may


async def turns_until(condition: Callable[[], bool], *, turns: int = 10_000) -> int:
    """Lets the event loop turn (no clock time passes) until ``condition()`` holds;
    returns how many turns it took."""
    for turn in range(turns):
        if condition():
            return turn
        await asyncio.sleep(0)
    raise AssertionError(f"not within {turns} turns of the event loop")


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        await h.close()


async def test_a_heartbeat_due_while_thousands_of_checks_start_is_not_held_back(
    harness: Harness,
) -> None:
    h = harness
    await h.start()
    first_heartbeat_at = h.dispatcher.statuses[0][0]
    next_after = h.agent.poller.next_heartbeat_s  # the interval, a little shortened
    assert HEARTBEAT_S * (1 - JITTER) <= next_after <= HEARTBEAT_S
    # The configs arrive just before the next heartbeat is due.
    h.clock.advance(next_after - 0.001)
    h.dispatcher.change([config(n) for n in range(CHECKS)])
    await turns_until(lambda: h.running() > 0)
    assert h.running() < CHECKS  # the batch starts in slices, not in one turn
    h.clock.advance(0.001)  # the heartbeat is due now, with the batch half way or less
    await turns_until(lambda: len(h.dispatcher.heartbeats()) == 2, turns=100_000)
    sent_at, running_then, _ = h.dispatcher.heartbeats()[1]
    assert sent_at == pytest.approx(first_heartbeat_at + next_after)
    # Sent a few turns of the loop later, long before the last check of the batch started.
    assert running_then < CHECKS // 2, running_then
    await turns_until(lambda: h.running() == CHECKS, turns=100_000)
    assert h.agent.metrics.checks_running._value.get() == CHECKS


async def test_thousands_of_new_checks_spread_their_first_runs_over_the_interval(
    harness: Harness,
) -> None:
    h = harness
    await h.start()
    await h.start_checks(CHECKS)
    started_at = h.clock.monotonic()
    # Enough turns after each timer for a woken heartbeat to be sent before the next.
    await h.clock.run_for(INTERVAL_S, settle_rounds=10)
    firsts = sorted(times[0] - started_at for times in h.kind.starts.values())
    assert len(firsts) == CHECKS  # every check ran once in its first interval...
    assert all(len(times) == 1 for times in h.kind.starts.values())  # ...and only once
    # ...at a random point of it: each tenth of the interval holds about a tenth of them
    # (5,000 draws: 500 per tenth, a standard deviation of 21).
    tenths = [0] * 10
    for offset in firsts:
        tenths[int(offset / INTERVAL_S * 10)] += 1
    assert all(400 <= count <= 600 for count in tenths), tenths
    # Heartbeats kept their interval all along (shortened at random by up to JITTER).
    times = [t for t, _, _ in h.dispatcher.heartbeats()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= INTERVAL_S // HEARTBEAT_S
    assert all(HEARTBEAT_S * (1 - JITTER) - 1e-9 <= g <= HEARTBEAT_S + 1e-9 for g in gaps), gaps


async def test_a_heartbeat_carries_the_stats_of_the_checks_that_ran_within_its_budget(
    harness: Harness,
) -> None:
    h = harness
    await h.start()
    await h.start_checks(FEWER)
    await h.clock.run_for(INTERVAL_S, settle_rounds=3)
    # Every check ran once; the heartbeats sent the stats of those that had run, each
    # once, oldest first, none twice.
    sent: list[str] = []
    for _, _, body in h.dispatcher.heartbeats():
        sent.extend(body.get("stats", {}))
    assert len(sent) == len(set(sent))
    assert set(sent) <= {digest(n) for n in range(FEWER)}
    assert len(sent) >= FEWER * 0.8  # all but those run since the last heartbeat
    for _, _, body in h.dispatcher.heartbeats():
        for stats in body.get("stats", {}).values():
            wire.CheckStatsIn.model_validate(stats)


async def test_sigterm_with_thousands_of_checks_leaves_at_once(harness: Harness) -> None:
    h = harness
    await h.start()
    await h.start_checks(FEWER)
    await h.clock.run_for(INTERVAL_S / 2, settle_rounds=3)
    stopped_at = h.clock.monotonic()
    h.stop.set()
    assert h.task is not None
    await turns_until(h.task.done, turns=200_000)
    h.task.result()
    # Every check stopped, the results went out, the node left: no clock time passed.
    assert h.clock.monotonic() == stopped_at
    assert h.running() == 0
    assert h.dispatcher.left()
    assert len(h.dispatcher.received) == sum(len(t) for t in h.kind.starts.values())


async def test_sigterm_leaves_within_the_grace_when_checks_do_not_stop(
    harness: Harness,
) -> None:
    """Half the checks are in a run that ignores being stopped (a program that does not
    die): stopping them may take half the grace, then they are left behind, and the node
    still leaves, within the grace."""
    h = harness
    h.kind.hold = asyncio.Event()
    await h.start()
    await h.start_checks(FEWER)
    await h.clock.run_for(INTERVAL_S / 2, settle_rounds=3)
    in_a_run = len(h.kind.starts)
    assert FEWER // 3 < in_a_run < FEWER * 2 // 3
    stopped_at = h.clock.monotonic()
    h.stop.set()
    assert h.task is not None
    await turns_until(lambda: h.running() == in_a_run, turns=100_000)
    assert not h.dispatcher.left()  # still stopping the slow ones
    await h.clock.run_for(GRACE_S / 2, settle_rounds=3)  # half the grace: given up
    await turns_until(h.task.done, turns=100_000)
    h.task.result()
    assert h.dispatcher.left()
    left_at = next(t for t, _, body in h.dispatcher.statuses if body.get("leaving"))
    assert left_at - stopped_at == pytest.approx(GRACE_S / 2)
    assert h.clock.monotonic() - stopped_at <= GRACE_S


async def test_the_reconciler_starts_a_batch_in_slices(harness: Harness) -> None:
    """Between two turns of the loop at most a few slices of checks start."""
    h = harness
    await h.start()
    h.dispatcher.change([config(n) for n in range(FEWER)])
    counts = [h.running()]
    while counts[-1] < FEWER:
        await asyncio.sleep(0)
        counts.append(h.running())
        assert len(counts) < 100_000
    steps = [b - a for a, b in itertools.pairwise(counts)]
    assert max(steps) <= 2 * LAUNCH_SLICE, max(steps)


# ------------------------------------------------------------- hostile clients


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(GUARD_S):
        return await reader.read()


def status_and_body(reply: bytes) -> tuple[int, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_the_local_server_closes_idle_and_slow_connections() -> None:
    """A client that sends nothing, or half a request head, cannot hold a socket of the
    agent. The header timeout runs on the agent's clock (the harness's fake one): it
    fires when the test moves time past it, not when a busy machine is slow."""
    header_timeout_s = 5.0
    h = Harness(header_timeout_s=header_timeout_s)
    try:
        await h.start()
        async with (
            connection(h.agent.port) as (idle, _),
            connection(h.agent.port) as (slow, slow_writer),
            connection(h.agent.port) as (probe, probe_writer),
        ):
            slow_writer.write(b"POST /v1/check-report HTTP/1.1\r\nHost: agent\r\n")
            await slow_writer.drain()
            # On loopback the bytes are queued at the server when write returns: once a
            # later request is answered, the server has read the slow one's too.
            probe_writer.write(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n")
            assert (await probe.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await h.clock.run_for(header_timeout_s)
            assert await read_all(idle) == b""  # closed without a word
            status, body = status_and_body(await read_all(slow))
            assert status == 408
            assert b'"code":"request_timeout"' in body
    finally:
        await h.close()


async def test_malformed_http_to_the_local_server_gets_the_json_error_body() -> None:
    h = Harness()
    try:
        await h.start()
        async with connection(h.agent.port) as (reader, writer):
            writer.write(
                b"GET /healthz HTTP/1.1\r\nHost: agent\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
            )
            status, body = status_and_body(await read_all(reader))
        assert status == 431
        assert b'"code":"headers_too_large"' in body
    finally:
        await h.close()
