"""The poller against a dispatcher the test controls: epochs, re-registration, bad
replies, failover, fencing. One test runs it against the real dispatcher app; the last
ones cover the results batcher against the same fake.

The poller and the fake dispatcher's long polls share one ``FakeClock``: only loopback
requests take real time. ``World.until`` and ``World.run_until`` wait until every request
the agent has in flight is a long poll the fake holds (the agent waits on the clock), then
move the clock to the next timer, so "at once" means "with no time passed on the clock",
and "not before the expiry" is checked at an exact fake time."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from dispatcher import wire
from dispatcher.common.clock import Clock, FakeClock, SystemClock
from dispatcher.common.health import HealthRegistry, Status
from dispatcher.service import build
from dispatcher.settings import DispatchSettings, Settings, StoreSettings
from node_agent.client import DispatcherApi, DispatcherClient
from node_agent.errors import DispatcherProtocolError, DispatcherUnavailable, UnknownNodeError
from node_agent.metrics import AgentMetrics
from node_agent.poller import (
    COMPONENT,
    FAILOVER_DELAY_S,
    JITTER,
    MIN_STATS_BYTES,
    POLL_JITTER,
    RETRY_BASE_S,
    STATUS_BODY_BYTES,
    Poller,
)
from node_agent.results import ResultBatcher
from node_agent.runner import CheckSpec
from node_agent.settings import AgentSettings
from tests.node_agent.helpers import GUARD_S, eventually
from tests.processes import free_port

API = "/v1/api/clusterchecks"
NODE = "node-a"
D1 = "d1d1d1d1d1d1d1d1"
D2 = "d2d2d2d2d2d2d2d2"
RUNNING = "abcdefabcdef0123"


def config(digest: str, name: str = "http") -> dict[str, Any]:
    return {
        "name": name,
        "instances": [{"url": "http://127.0.0.1:9/"}],
        "init_config": {},
        "interval_s": 15.0,
        "timeout_s": 10.0,
        "node_selector": {},
        "weight": 1.0,
        "digest": digest,
        "sources": ["test"],
        "node": NODE,
    }


def error(status: int, code: str) -> web.Response:
    body = {"error": {"code": code, "message": f"{code}."}}
    return web.json_response(body, status=status)


Canned = Callable[[], web.Response]


class FakeDispatcher:
    """The node-agent routes of API.md, with every reply under the test's control. Long
    polls wait on the test's clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.epoch = 1
        self.leader = "dispatcher-0"
        self.heartbeat_interval_s = 10.0
        self.expiry_s = 30.0
        self.last_change = 1
        self.configs: list[dict[str, Any]] = []
        self.registered = False
        self.down = False  # every route answers 503 no_leader
        self.status_down = False  # only the status route answers 503 no_leader
        self.status_replies: list[Canned] = []  # canned replies, used first
        self.running_configs_replies: list[Canned] = []  # for statuses that carry them
        self.configs_replies: list[Canned] = []
        self.statuses: list[tuple[float, dict[str, Any]]] = []
        self.answered: list[float] = []  # when a status got a 200 (clock time)
        self.polls_waiting = 0  # long polls held right now
        self.config_queries: list[tuple[float, dict[str, str]]] = []
        self.configs_served = 0
        self.results: list[dict[str, Any]] = []
        self.results_down = False
        self.warmup = False
        self.results_interval_s: float | None = None  # None: not in the reply (older leaders)
        self.send_running_configs = False
        """Asked in every status reply until a status carries running_configs, as a
        leader rebuilding from the agents does."""
        self._wake = asyncio.Event()
        self.app = web.Application(client_max_size=4 * 1024 * 1024)  # as the dispatcher's
        self.app.router.add_post(f"{API}/status/{{node}}", self._status)
        self.app.router.add_get(f"{API}/configs/{{node}}", self._configs)
        self.app.router.add_post(f"{API}/results/{{node}}", self._results)

    def change(self, configs: list[dict[str, Any]]) -> None:
        self.configs = configs
        self.last_change += 1
        self.wake()

    def forget_node(self) -> None:
        """As if the node expired: a pending long poll answers 404 unknown_node."""
        self.registered = False
        self.wake()

    def wake(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    def _problem(self) -> web.Response | None:
        if self.down:
            return error(503, "no_leader")
        if not self.registered:
            return error(404, "unknown_node")
        return None

    def running_sent(self) -> list[list[str]]:
        return [body["running"] for _, body in self.statuses if "running" in body]

    def running_configs_sent(self) -> list[list[dict[str, Any]]]:
        return [body["running_configs"] for _, body in self.statuses if "running_configs" in body]

    async def _status(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.statuses.append((self.clock.monotonic(), body))
        if self.down or self.status_down:
            return error(503, "no_leader")
        if self.status_replies:
            return self.status_replies.pop(0)()
        if "running_configs" in body and self.running_configs_replies:
            return self.running_configs_replies.pop(0)()
        if "running_configs" in body:
            self.send_running_configs = False
        if body.get("leaving"):
            self.registered = False
        elif not self.registered:
            self.registered = True
            self.last_change += 1  # a fresh counter: a (re-)registered node refetches
        self.answered.append(self.clock.monotonic())
        reply = {
            "is_up_to_date": body["last_change"] in (-1, self.last_change),
            "epoch": self.epoch,
            "leader": self.leader,
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "node_expiration_timeout_s": self.expiry_s,
            "warmup": self.warmup,
            "send_running_configs": self.send_running_configs,
        }
        if self.results_interval_s is not None:
            reply["results_interval_s"] = self.results_interval_s
        return web.json_response(reply)

    async def _configs(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.config_queries.append((self.clock.monotonic(), query))
        if self.down:
            return error(503, "no_leader")
        if self.configs_replies:
            return self.configs_replies.pop(0)()
        if not self.registered:
            return error(404, "unknown_node")
        since = query.get("since")
        wait_s = float(query.get("wait_s", "0"))
        if since is not None and int(since) == self.last_change and wait_s > 0:
            wake = self._wake
            # Counted while held, up to the agent hanging up (the server cancels the
            # handler then): the test's clock moves only while every request is held.
            self.polls_waiting += 1
            try:
                with contextlib.suppress(TimeoutError):
                    async with self.clock.timeout(wait_s):
                        await wake.wait()
            finally:
                self.polls_waiting -= 1
        # The state may have changed during the wait.
        problem = self._problem()
        if problem is not None:
            return problem
        self.configs_served += 1
        return web.json_response(
            {
                "last_change": self.last_change,
                "epoch": self.epoch,
                "configs": self.configs,
                "warmup": self.warmup,
            }
        )

    async def _results(self, request: web.Request) -> web.Response:
        if self.results_down:
            return error(503, "no_leader")
        body = await request.json()
        self.results.extend(body["results"])
        return web.json_response(
            {"epoch": self.epoch, "accepted": len(body["results"]), "rejected": []}
        )


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


class CountingClient:
    """The real client, counting the calls in flight (long polls apart)."""

    def __init__(self, inner: DispatcherClient) -> None:
        self.inner = inner
        self.calls = 0
        self.long_polls = 0
        self.ended = 0  # calls and long polls that have returned or raised

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def url_count(self) -> int:
        return self.inner.url_count

    def next_url(self) -> None:
        self.inner.next_url()

    async def status(
        self, body: dict[str, Any], *, timeout_s: float | None = None
    ) -> wire.StatusOut:
        self.calls += 1
        try:
            return await self.inner.status(body, timeout_s=timeout_s)
        finally:
            self.calls -= 1
            self.ended += 1

    async def configs(self, *, since: int | None, wait_s: float) -> wire.NodeConfigsOut:
        long_poll = since is not None and wait_s > 0
        if long_poll:
            self.long_polls += 1
        else:
            self.calls += 1
        try:
            return await self.inner.configs(since=since, wait_s=wait_s)
        finally:
            if long_poll:
                self.long_polls -= 1
            else:
                self.calls -= 1
            self.ended += 1

    async def results(self, results: list[dict[str, Any]]) -> wire.ResultsOut:
        self.calls += 1
        try:
            return await self.inner.results(results)
        finally:
            self.calls -= 1
            self.ended += 1


class Agent:
    """A poller with recording callbacks, in place of the node agent."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: tuple[str, ...],
        *,
        clock: Clock,
        fence: bool = False,
        long_poll_s: float = 0.5,
    ) -> None:
        self.clock = clock
        self.health = HealthRegistry(clock=self.clock)
        self.settings = AgentSettings(
            dispatcher_urls=urls,
            name=NODE,
            labels={"zone": "z1"},
            capacity=4,
            fence_on_disconnect=fence,
            heartbeat_interval_s=10.0,
            long_poll_s=long_poll_s,
            request_timeout_s=2.0,
        )
        self.client = CountingClient(
            DispatcherClient(urls=urls, node=NODE, session=session, token=None, timeout_s=2.0)
        )
        self.applied: list[dict[str, CheckSpec]] = []
        self.running: list[str] = [RUNNING]
        self.stats_budgets: list[int] = []
        self.paced: list[float] = []  # every results_interval_s the poller passed on
        client: DispatcherApi = self.client
        self.poller = Poller(
            settings=self.settings,
            client=client,
            apply=self._apply,
            running=lambda: list(self.running),
            stats=self._stats,
            clock=self.clock,
            health=self.health,
            rng=random.Random(3),
            pace_results=self.paced.append,
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _apply(self, specs: Mapping[str, CheckSpec]) -> None:
        self.applied.append(dict(specs))

    def _stats(self, budget_bytes: int) -> dict[str, Any]:
        self.stats_budgets.append(budget_bytes)
        return {RUNNING: {"avg_execution_s": 0.1, "runs": 3, "errors": 0, "last_error": None}}

    def desired(self) -> list[str] | None:
        return sorted(self.applied[-1]) if self.applied else None

    def start(self) -> None:
        self._task = asyncio.create_task(self.poller.run(self._stop), name="poller-under-test")

    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stop.set()
        async with asyncio.timeout(GUARD_S):
            await self._task  # raises if the poller crashed
        self._task = None

    def fenced(self) -> bool:
        return self.poller.fenced

    def link(self) -> Status:
        return self.health.components()[COMPONENT].status


class World:
    """Fake dispatchers and agents on one fake clock."""

    def __init__(self, aiohttp_server: AiohttpServer, session: aiohttp.ClientSession) -> None:
        self.clock = FakeClock()
        self._aiohttp_server = aiohttp_server
        self._session = session
        self.fakes: list[FakeDispatcher] = []
        self.agents: list[Agent] = []

    async def serve(self) -> tuple[FakeDispatcher, TestServer]:
        fake = FakeDispatcher(self.clock)
        # The test server cancels the handler of a request whose client hung up: a long
        # poll the agent gives up stops being counted as held.
        server = await self._aiohttp_server(fake.app)
        self.fakes.append(fake)
        return fake, server

    def agent(self, urls: tuple[str, ...], **kwargs: Any) -> Agent:
        kwargs.setdefault("clock", self.clock)
        agent = Agent(self._session, urls, **kwargs)
        self.agents.append(agent)
        return agent

    def held(self) -> bool:
        """Every request in flight is a long poll a fake dispatcher holds."""
        calls = sum(a.client.calls for a in self.agents)
        polls = sum(a.client.long_polls for a in self.agents)
        return calls == 0 and polls <= sum(f.polls_waiting for f in self.fakes)

    def _ended(self) -> int:
        return sum(a.client.ended for a in self.agents)

    async def quiesce(self) -> None:
        """Waits until everything waits on the clock (or on a held long poll): nothing
        in flight, and nothing ended while the loop had a few more turns (what a request
        that just ended wakes has run)."""
        while True:
            await eventually(self.held)
            ended = self._ended()
            await self.clock.settle()
            # A long poll given up a moment ago is still counted until the fake sees
            # the hang-up: look again after the loopback has had its turn.
            await asyncio.sleep(0.001)
            await self.clock.settle()
            if self.held() and self._ended() == ended:
                return

    async def until(self, condition: Callable[[], bool], *, within_s: float = 3600) -> None:
        """Moves the clock on, timer by timer, until ``condition()`` holds; fails when it
        does not within ``within_s`` of the fake clock."""
        limit = self.clock.monotonic() + within_s
        while True:
            await self.quiesce()
            if condition():
                return
            due = self.clock.next_deadline()
            assert due is not None, "nothing waits on the clock and the condition is false"
            assert due <= limit, f"not within {within_s:g} s of the fake clock (next: {due})"
            self.clock.advance(max(0.0, due - self.clock.monotonic()))

    async def run_until(self, when: float) -> None:
        """Moves the clock to ``when``, timer by timer, letting each step's requests end."""
        while True:
            await self.quiesce()
            due = self.clock.next_deadline()
            if due is None or due > when:
                break
            self.clock.advance(max(0.0, due - self.clock.monotonic()))
        self.clock.advance(max(0.0, when - self.clock.monotonic()))
        await self.quiesce()

    async def close(self) -> None:
        for agent in self.agents:
            await agent.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = aiohttp.ClientSession()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def world(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> AsyncIterator[World]:
    w = World(aiohttp_server, session)
    try:
        yield w
    finally:
        await w.close()


# ----------------------------------------------------------------- epochs, one step


async def test_a_heartbeat_sends_labels_capacity_stats_and_running(world: World) -> None:
    fake, server = await world.serve()
    agent = world.agent((url_of(server),))
    reply = await agent.poller.heartbeat_once()
    assert reply is not None
    _, body = fake.statuses[0]
    assert body["last_change"] == 0
    assert body["labels"] == {"zone": "z1"}
    assert body["capacity"] == 4
    assert body["running"] == [RUNNING]
    assert body["stats"][RUNNING]["runs"] == 3
    assert "leaving" not in body or body["leaving"] is False
    assert agent.poller.epoch == 1
    assert agent.link() == Status.HEALTHY


async def test_the_stats_of_a_heartbeat_fill_what_running_leaves_of_its_budget(
    world: World,
) -> None:
    """A heartbeat must fit the dispatcher's body limit however many checks run:
    ``running`` goes whole, the stats get the rest of the budget."""
    fake, server = await world.serve()
    agent = world.agent((url_of(server),))
    agent.running = [f"{n:032x}" for n in range(30_000)]  # about 1 MiB of digests
    await agent.poller.heartbeat_once()  # first contact: running is sent
    await agent.poller.heartbeat_once()  # then not
    running_bytes = sum(len(d) + 3 for d in agent.running)
    assert agent.stats_budgets == [STATUS_BODY_BYTES - running_bytes, STATUS_BODY_BYTES]
    assert [len(body.get("running", [])) for _, body in fake.statuses] == [30_000, 0]
    agent.running = [f"{n:032x}" for n in range(100_000)]  # more than the budget alone
    fake.epoch = 2
    await agent.poller.heartbeat_once()
    await agent.poller.heartbeat_once()
    assert agent.stats_budgets[-1] == MIN_STATS_BYTES


async def test_the_leaders_results_interval_is_passed_on_and_absent_means_the_agents_own(
    world: World,
) -> None:
    fake, server = await world.serve()
    agent = world.agent((url_of(server),))
    await agent.poller.heartbeat_once()  # an older leader: no field
    fake.results_interval_s = 7.5
    await agent.poller.heartbeat_once()
    assert agent.paced == [0.0, 7.5]


async def test_heartbeats_and_long_polls_are_shortened_at_random_within_the_jitter(
    world: World,
) -> None:
    """Agents that start together (or are all woken by one change) drift apart: each
    heartbeat comes a random part of JITTER early, and each long poll asks a random part
    of POLL_JITTER less than ``long_poll_s``; never later or longer than configured."""
    fake, server = await world.serve()
    agent = world.agent((url_of(server),), long_poll_s=30.0)
    agent.start()
    await world.until(lambda: len(fake.statuses) >= 12, within_s=200)
    times = [t for t, _ in fake.statuses]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(10.0 * (1 - JITTER) - 1e-9 <= g <= 10.0 + 1e-9 for g in gaps), gaps
    assert len({round(g, 6) for g in gaps}) > 1, gaps  # not one fixed shortening
    waits = [float(q["wait_s"]) for _, q in fake.config_queries if "since" in q]
    assert waits
    assert all(30.0 * (1 - POLL_JITTER) <= w <= 30.0 for w in waits), waits


async def test_a_stale_epoch_on_status_is_ignored(world: World) -> None:
    fake, server = await world.serve()
    agent = world.agent((url_of(server),))
    fake.epoch = 5
    assert await agent.poller.heartbeat_once() is not None
    assert agent.poller.epoch == 5
    assert agent.poller.heartbeat_interval_s == 10.0
    # A deposed leader answers with epoch 4 and other timings: nothing of it is used.
    fake.epoch, fake.heartbeat_interval_s, fake.expiry_s = 4, 1.0, 3.0
    assert await agent.poller.heartbeat_once() is None
    assert agent.poller.epoch == 5
    assert agent.poller.heartbeat_interval_s == 10.0
    assert agent.poller.expiry_s == 30.0


async def test_a_stale_epoch_on_configs_is_ignored(world: World) -> None:
    fake, server = await world.serve()
    agent = world.agent((url_of(server),))
    fake.epoch = 5
    fake.change([config(D1)])
    await agent.poller.heartbeat_once()
    await agent.poller.fetch_once(wait_s=0)
    assert agent.applied == [{D1: agent.applied[0][D1]}]
    assert agent.applied[0][D1].name == "http"
    seen_change = agent.poller.last_change
    fake.epoch = 4
    fake.change([config(D2)])
    await agent.poller.fetch_once(wait_s=0)
    assert len(agent.applied) == 1  # nothing applied from the deposed leader
    assert agent.poller.last_change == seen_change
    assert agent.poller.epoch == 5


async def test_a_stale_reply_moves_to_the_next_dispatcher(world: World) -> None:
    old, old_server = await world.serve()
    new, new_server = await world.serve()
    agent = world.agent((url_of(old_server), url_of(new_server)))
    old.epoch = 5
    await agent.poller.heartbeat_once()
    old.epoch, new.epoch = 4, 6  # the first one was deposed meanwhile
    assert await agent.poller.heartbeat_once() is None
    assert agent.client.url == url_of(new_server)
    reply = await agent.poller.heartbeat_once()
    assert reply is not None
    assert reply.epoch == 6
    assert agent.poller.epoch == 6


async def test_running_is_sent_on_first_contact_with_each_epoch_only(world: World) -> None:
    fake, server = await world.serve()
    agent = world.agent((url_of(server),))
    for _ in range(3):
        await agent.poller.heartbeat_once()
    assert ["running" in body for _, body in fake.statuses] == [True, False, False]
    fake.epoch = 2
    agent.running = [RUNNING, D1]
    for _ in range(3):
        await agent.poller.heartbeat_once()
    # The first reply of epoch 2 tells the agent; the next heartbeat carries `running`.
    assert ["running" in body for _, body in fake.statuses] == [
        *(True, False, False),
        *(False, True, False),
    ]
    assert fake.running_sent() == [[RUNNING], [RUNNING, D1]]


async def test_a_new_epoch_seen_on_configs_also_sends_running(world: World) -> None:
    fake, server = await world.serve()
    agent = world.agent((url_of(server),))
    await agent.poller.heartbeat_once()
    await agent.poller.fetch_once(wait_s=0)
    fake.epoch = 3
    await agent.poller.fetch_once(wait_s=0)
    assert agent.poller.epoch == 3
    await agent.poller.heartbeat_once()
    assert "running" in fake.statuses[-1][1]


async def test_configs_are_refetched_in_full_when_the_epoch_changes(world: World) -> None:
    fake, server = await world.serve()
    agent = world.agent((url_of(server),))
    await agent.poller.heartbeat_once()
    await agent.poller.fetch_once(wait_s=0)
    await agent.poller.fetch_once(wait_s=0)
    fake.epoch = 2
    await agent.poller.heartbeat_once()
    await agent.poller.fetch_once(wait_s=0)
    sinces = [query.get("since") for _, query in fake.config_queries]
    assert sinces == [None, str(fake.last_change), None]


async def test_unknown_node_on_configs_raises_for_re_registration(world: World) -> None:
    _, server = await world.serve()
    agent = world.agent((url_of(server),))
    with pytest.raises(UnknownNodeError):
        await agent.poller.fetch_once(wait_s=0)


# ------------------------------------------------------------------ the loops


async def test_a_held_long_poll_is_cut_off_only_when_two_heartbeats_find_the_node_behind(
    world: World,
) -> None:
    """After a change to thousands of nodes the leader answers their long polls one per
    turn of its loop, so a heartbeat may find an agent behind while its poll's answer is
    on its way: one such heartbeat leaves the held poll alone (cutting it off costs the
    leader a connection and a reply); a second at the same counter means the poll missed
    the change, and the configs are fetched again at once."""
    fake, server = await world.serve()
    fake.change([config(D1)])
    agent = world.agent((url_of(server),), long_poll_s=30.0)
    agent.start()
    await world.until(lambda: agent.desired() == [D1] and fake.polls_waiting == 1)
    queries = len(fake.config_queries)
    # The change is made but the held poll is not woken (its answer still queued).
    fake.configs = [config(D1), config(D2)]
    fake.last_change += 1
    statuses = len(fake.statuses)
    await world.until(lambda: len(fake.statuses) == statuses + 1)
    assert fake.statuses[-1][1]["last_change"] != fake.last_change  # behind
    assert len(fake.config_queries) == queries, "one heartbeat behind: the poll is kept"
    assert fake.polls_waiting == 1
    await world.until(lambda: len(fake.statuses) == statuses + 2)
    await world.until(lambda: agent.desired() == [D1, D2], within_s=1)
    assert len(fake.config_queries) > queries, "behind twice at one counter: fetched again"


async def test_a_config_change_reaches_the_agent_through_the_long_poll(world: World) -> None:
    fake, server = await world.serve()
    fake.change([config(D1)])
    agent = world.agent((url_of(server),), long_poll_s=10.0)
    agent.start()
    await world.until(lambda: agent.desired() == [D1] and fake.polls_waiting == 1)
    changed_at = world.clock.monotonic()
    fake.change([config(D1), config(D2)])
    await world.quiesce()
    assert agent.desired() == [D1, D2]
    # The held long poll answered: no time passed, no timer had to fire.
    assert world.clock.monotonic() == changed_at
    waits = [q for _, q in fake.config_queries if "since" in q]
    assert waits
    # The agent's long_poll_s, shortened at random by up to POLL_JITTER.
    assert all(10 * (1 - POLL_JITTER) <= float(q["wait_s"]) <= 10 for q in waits)
    assert len(fake.statuses) == 1  # heartbeats at the dispatcher's interval (10 s)


async def test_running_reaches_a_new_leader_at_once(world: World) -> None:
    fake, server = await world.serve()
    agent = world.agent((url_of(server),), long_poll_s=10.0)
    agent.start()
    await world.until(lambda: fake.polls_waiting == 1)
    before = world.clock.monotonic()
    fake.epoch = 2  # a new leader; the long poll answers with its epoch
    fake.change([config(D1)])
    await world.quiesce()
    assert len(fake.running_sent()) == 2
    assert world.clock.monotonic() == before  # at once, not at the next heartbeat
    # Three more heartbeats at the dispatcher's interval: none repeats `running`.
    heartbeats = len(fake.statuses)
    await world.run_until(before + 3 * fake.heartbeat_interval_s)
    assert len(fake.statuses) == heartbeats + 3
    assert len(fake.running_sent()) == 2  # once per epoch, not on every heartbeat
    assert agent.poller.epoch == 2


async def test_unknown_node_makes_the_agent_register_again(world: World) -> None:
    fake, server = await world.serve()
    fake.change([config(D1)])
    agent = world.agent((url_of(server),), long_poll_s=10.0)
    agent.start()
    await world.until(lambda: agent.desired() == [D1] and fake.polls_waiting == 1)
    statuses = len(fake.statuses)
    forgotten_at = world.clock.monotonic()
    fake.forget_node()  # the pending long poll answers 404 unknown_node
    await world.quiesce()
    # At once, not at the next regular heartbeat (10 s): the 404 triggered it.
    assert len(fake.statuses) == statuses + 1
    assert fake.statuses[statuses][0] == forgotten_at
    assert fake.registered
    served = fake.configs_served
    fake.change([config(D2)])
    await world.quiesce()
    assert agent.desired() == [D2]
    assert fake.configs_served > served
    assert agent.alive()


@pytest.mark.parametrize(
    ("route", "reply"),
    [
        ("status", lambda: web.Response(status=200, text="{not json")),
        ("status", lambda: web.json_response({"epoch": 1, "leader": "x"})),  # fields missing
        ("status", lambda: web.json_response([1, 2, 3])),
        ("status", lambda: web.Response(status=200, text="")),
        ("status", lambda: web.json_response({"is_up_to_date": "maybe"}, status=400)),
        ("configs", lambda: web.Response(status=200, text="<html>proxy</html>")),
        ("configs", lambda: web.json_response({"last_change": 1, "epoch": 1})),
        (
            "configs",
            lambda: web.json_response({"last_change": 1, "epoch": 1, "configs": [{"digest": D1}]}),
        ),
    ],
)
async def test_a_malformed_reply_is_logged_and_retried(
    world: World, route: str, reply: Callable[[], web.Response]
) -> None:
    fake, server = await world.serve()
    fake.change([config(D1)])
    (fake.status_replies if route == "status" else fake.configs_replies).extend([reply, reply])
    agent = world.agent((url_of(server),))
    with structlog.testing.capture_logs() as logs:
        agent.start()
        # Retried after a backoff of at most a few seconds, not at the next interval.
        await world.until(lambda: agent.desired() == [D1], within_s=5.0)
    assert agent.alive()
    unusable = [e for e in logs if e["event"] == "dispatcher_reply_unusable"]
    assert len(unusable) == 2, logs
    assert all(e["log_level"] == "error" for e in unusable)
    assert agent.link() == Status.HEALTHY  # the link recovered with the next success


async def test_a_malformed_reply_raises_a_protocol_error(world: World) -> None:
    fake, server = await world.serve()
    agent = world.agent((url_of(server),))
    fake.status_replies.append(lambda: web.Response(status=200, text="{not json"))
    with pytest.raises(DispatcherProtocolError):
        await agent.poller.heartbeat_once()
    assert agent.poller.epoch == -1  # nothing taken from it


async def test_the_client_moves_to_the_next_url_when_one_is_down(world: World) -> None:
    fake, server = await world.serve()
    dead = dead_url()
    agent = world.agent((dead, url_of(server)))
    with pytest.raises(DispatcherUnavailable):
        await agent.client.status({"last_change": -1})
    assert agent.client.url == url_of(server)
    reply = await agent.client.status({"last_change": -1})
    assert reply.leader == "dispatcher-0"
    assert len(fake.statuses) == 1


async def test_the_poller_fails_over_to_the_second_dispatcher(world: World) -> None:
    fake, server = await world.serve()
    fake.change([config(D1)])
    agent = world.agent((dead_url(), url_of(server)))
    agent.start()
    started = world.clock.monotonic()
    await world.until(lambda: agent.desired() == [D1])
    # The second URL was tried after the failover delay, not after a backoff.
    assert fake.statuses[0][0] - started == pytest.approx(FAILOVER_DELAY_S)
    assert agent.client.url == url_of(server)
    assert agent.alive()


async def test_no_leader_moves_to_the_next_dispatcher(world: World) -> None:
    follower, follower_server = await world.serve()
    follower.down = True
    leader, leader_server = await world.serve()
    leader.change([config(D2)])
    agent = world.agent((url_of(follower_server), url_of(leader_server)))
    agent.start()
    started = world.clock.monotonic()
    await world.until(lambda: agent.desired() == [D2])
    assert leader.statuses[0][0] - started == pytest.approx(FAILOVER_DELAY_S)
    assert agent.client.url == url_of(leader_server)
    assert len(follower.statuses) >= 1


@pytest.mark.parametrize(
    ("urls", "delays"),
    [
        pytest.param(1, ["backoff1", "backoff2", "backoff3"], id="one-url"),
        pytest.param(
            3,
            ["next", "next", "backoff1", "next", "next", "backoff2", "next"],
            id="three-urls",
        ),
    ],
)
def test_a_failed_dispatcher_is_followed_at_once_by_the_next_and_rounds_back_off(
    world: World, urls: int, delays: list[str]
) -> None:
    """A node that loses the leader has only the expiry timeout to reach another replica:
    each URL of a round is tried at once, and only full rounds back off."""
    agent = world.agent(tuple(f"http://127.0.0.{n + 1}:1" for n in range(urls)))
    poller = agent.poller
    unavailable = DispatcherUnavailable("down")
    seen = []
    for failures in range(1, len(delays) + 1):
        delay = poller.retry_delay(failures, unavailable)
        if delay == FAILOVER_DELAY_S:
            seen.append("next")
        else:
            rounds = failures // urls
            low, high = (
                RETRY_BASE_S * 2 ** (rounds - 1) * 0.5,
                RETRY_BASE_S * 2 ** (rounds - 1) * 1.5,
            )
            assert low <= delay <= high, (failures, delay)
            seen.append(f"backoff{rounds}")
    assert seen == delays
    # A reply it cannot use is not a replica that is down: it backs off at once.
    assert poller.retry_delay(1, DispatcherProtocolError("bad")) != FAILOVER_DELAY_S


async def test_fence_on_disconnect_stops_the_checks_after_the_expiry(world: World) -> None:
    fake, server = await world.serve()
    fake.heartbeat_interval_s = 0.2
    fake.expiry_s = 30.0
    fake.change([config(D1)])
    agent = world.agent((url_of(server),), fence=True, long_poll_s=10.0)
    agent.start()
    await world.until(lambda: agent.desired() == [D1] and fake.polls_waiting == 1)
    fake.down = True
    fake.wake()  # the pending long poll answers 503 too
    fake.registered = False  # meanwhile the dispatcher expires the silent node
    await world.until(lambda: agent.link() == Status.DEGRADED)
    last_ok = fake.answered[-1]
    # Not yet expired: the checks keep running.
    await world.run_until(last_ok + fake.expiry_s - 0.05)
    assert agent.desired() == [D1]
    assert not agent.fenced()
    # Expired: stopped at the next look (every 0.25 s).
    await world.run_until(last_ok + fake.expiry_s + 0.25)
    assert agent.desired() == []
    assert agent.fenced()
    # Degraded, not unhealthy: a liveness failure would restart every agent in an outage.
    await world.until(lambda: "fenced" in agent.health.components()["dispatcher_link"].message)
    assert agent.link() == Status.DEGRADED
    # The dispatcher is back: the node registers again, is unfenced, and its configs
    # run again (at once after that heartbeat, not after a long poll of 10 s).
    fake.down = False
    await world.until(lambda: not agent.fenced())
    unfenced_at = world.clock.monotonic()
    await world.quiesce()
    assert agent.desired() == [D1]
    assert world.clock.monotonic() == unfenced_at
    assert fake.registered
    assert agent.alive()


async def test_a_fenced_agent_waits_for_a_heartbeat_before_running_checks_again(
    world: World,
) -> None:
    fake, server = await world.serve()
    fake.heartbeat_interval_s = 0.2
    fake.change([config(D1)])
    agent = world.agent((url_of(server),), fence=True, long_poll_s=0.2)
    agent.start()
    await world.until(lambda: agent.desired() == [D1])
    fake.status_down = True  # heartbeats fail; configs still answer
    await world.until(lambda: agent.link() == Status.DEGRADED)
    await world.until(lambda: agent.desired() == [], within_s=fake.expiry_s + 1)
    served = fake.configs_served
    await world.until(lambda: fake.configs_served >= served + 2)
    # Config replies alone do not prove this node is still registered: still fenced.
    assert agent.desired() == []
    assert agent.fenced()
    fake.status_down = False
    await world.until(lambda: agent.desired() == [D1])
    assert not agent.fenced()


async def test_without_fencing_the_checks_keep_running_when_cut_off(world: World) -> None:
    fake, server = await world.serve()
    fake.heartbeat_interval_s = 0.2
    fake.change([config(D1)])
    agent = world.agent((url_of(server),), fence=False)
    agent.start()
    await world.until(lambda: agent.desired() == [D1])
    fake.down = True
    fake.wake()
    await world.until(lambda: agent.link() == Status.DEGRADED)
    statuses = len(fake.statuses)
    await world.run_until(world.clock.monotonic() + fake.expiry_s + 10)  # past the expiry
    assert len(fake.statuses) > statuses + 10  # it kept trying all along
    assert agent.applied[-1].keys() == {D1}
    assert all(specs for specs in agent.applied)  # never an empty set
    assert not agent.fenced()
    assert agent.alive()


async def test_leave_sends_leaving(world: World) -> None:
    fake, server = await world.serve()
    agent = world.agent((dead_url(), url_of(server)))
    assert await agent.poller.leave() is True
    assert fake.statuses[-1][1] == {"last_change": -1, "leaving": True}


# -------------------------------------------------------- the real dispatcher app


async def test_against_the_real_dispatcher(
    aiohttp_server: AiohttpServer, world: World, session: aiohttp.ClientSession
) -> None:
    service = build(
        Settings(
            dispatch=DispatchSettings(node_expiration_timeout_s=5, heartbeat_interval_s=1),
            store=StoreSettings(backend="memory"),
        )
    )
    server = await aiohttp_server(service.app)
    base = url_of(server)
    # Real processes' clocks: the dispatcher answers on its own time.
    agent = world.agent((base,), long_poll_s=5.0, clock=SystemClock())
    agent.running = []
    agent.start()
    await eventually(lambda: agent.poller.epoch >= 0)
    source = {"configs": [{"name": "tcp", "instances": [{"host": "localhost", "port": 1}]}]}
    async with session.put(f"{base}{API}/sources/ci", json=source) as response:
        assert response.status == 200, await response.text()
        digest = (await response.json())["digests"][0]
    await eventually(lambda: agent.desired() == [digest])
    spec = agent.applied[-1][digest]
    assert spec.name == "tcp"
    assert spec.instances == ({"host": "localhost", "port": 1},)
    assert agent.alive()


# -------------------------------------------------------------------- results


def batcher_for(world: World, server: TestServer, session: aiohttp.ClientSession) -> ResultBatcher:
    client = DispatcherClient(
        urls=(url_of(server),), node=NODE, session=session, token=None, timeout_s=2.0
    )
    return ResultBatcher(
        client=client, metrics=AgentMetrics(), flush_s=0.1, max_pending=3, clock=world.clock
    )


def result(n: int) -> dict[str, Any]:
    return {
        "digest": D1,
        "run_id": f"run{n}",
        "ok": True,
        "errors": [],
        "started_at": 1.0,
        "duration_s": 0.1,
        "output": "",
    }


async def test_results_wait_while_the_dispatcher_is_down_and_the_oldest_go_first(
    world: World, session: aiohttp.ClientSession
) -> None:
    fake, server = await world.serve()
    batcher = batcher_for(world, server, session)
    fake.results_down = True
    for n in range(5):
        batcher.add(result(n))
    assert batcher.pending == 3
    assert await batcher.flush() is False
    assert batcher.pending == 3
    fake.results_down = False
    assert await batcher.flush() is True
    assert batcher.pending == 0
    assert [r["run_id"] for r in fake.results] == ["run2", "run3", "run4"]
    assert batcher.sent == 3


async def test_results_are_sent_by_the_loop(world: World, session: aiohttp.ClientSession) -> None:
    fake, server = await world.serve()
    batcher = batcher_for(world, server, session)
    stop = asyncio.Event()
    task = asyncio.create_task(batcher.run(stop))
    try:
        await world.clock.wait_for_timers(1)  # the loop waits for its first flush
        batcher.add(result(1))
        world.clock.advance(0.09)
        await world.clock.settle()
        assert fake.results == []  # not before the flush interval
        world.clock.advance(0.02)
        await eventually(lambda: len(fake.results) == 1)
    finally:
        stop.set()
        async with asyncio.timeout(GUARD_S):
            await task
    assert json.loads(json.dumps(fake.results[0])) == result(1)


async def test_a_warming_up_leader_does_not_make_the_agent_stop_its_checks(world: World) -> None:
    """A new leader warming up knows only part of the placement: a configs reply marked
    warmup is not applied (the agent keeps running what it runs); the full set is
    fetched and applied once a heartbeat says warm-up is over."""
    fake, server = await world.serve()
    fake.configs = [config(D1)]
    agent = world.agent((url_of(server),))
    agent.start()
    await world.until(lambda: agent.desired() == [D1] and fake.polls_waiting == 1)

    # Failover: a new epoch whose leader is warming up and knows nothing yet.
    fake.epoch = 2
    fake.warmup = True
    fake.configs = []
    fake.last_change += 1
    fake.wake()
    await world.until(lambda: fake.configs_served >= 2 and fake.polls_waiting == 1)
    # Several long polls later, still nothing applied from the warm-up set.
    served = fake.configs_served
    await world.until(lambda: fake.configs_served >= served + 3)
    assert agent.desired() == [D1], "the agent applied a warm-up set and stopped its checks"
    assert agent.poller.leader_warming_up

    # Warm-up ends: the leader has adopted D1 and placed D2 here.
    fake.warmup = False
    fake.configs = [config(D1), config(D2)]
    fake.last_change += 1
    await world.until(lambda: agent.desired() == sorted([D1, D2]))
    assert not agent.poller.leader_warming_up


# ------------------------------------------------------- rebuild from the agents


async def test_after_a_reply_that_asks_the_next_status_carries_what_runs_then_stops(
    world: World,
) -> None:
    """A leader rebuilding from the agents asks; the next status, at once, carries the
    full config (output form, with its sources) of every check the agent runs, and the
    ones after it do not."""
    fake, server = await world.serve()
    fake.configs = [config(D1), config(D2), config(RUNNING)]
    agent = world.agent((url_of(server),), long_poll_s=10.0)
    agent.start()
    await world.until(lambda: agent.desired() == sorted([D1, D2, RUNNING]))
    agent.running = [D1, RUNNING]  # D2 is still starting: it does not run yet

    fake.send_running_configs = True
    await world.until(lambda: len(fake.statuses) >= 2)
    asked_at, _ = fake.statuses[-1]
    await world.quiesce()

    assert fake.running_configs_sent() == [[config(D1), config(RUNNING)]]
    sent_at, body = next((t, b) for t, b in fake.statuses if "running_configs" in b)
    assert sent_at == asked_at, "sent at once, not at the next heartbeat"
    assert body["running_configs"][0]["sources"] == ["test"]
    statuses = len(fake.statuses)
    await world.run_until(world.clock.monotonic() + 3 * fake.heartbeat_interval_s)
    assert len(fake.statuses) == statuses + 3
    assert len(fake.running_configs_sent()) == 1, "sent once, until asked again"
    assert all("running" not in b for _, b in fake.statuses[statuses:])


async def test_an_agent_that_runs_nothing_answers_with_an_empty_list(world: World) -> None:
    fake, server = await world.serve()
    agent = world.agent((url_of(server),))
    agent.running = []
    fake.send_running_configs = True
    await agent.poller.heartbeat_once()
    await agent.poller.heartbeat_once()
    await agent.poller.heartbeat_once()
    assert fake.running_configs_sent() == [[]]
    assert not fake.send_running_configs


async def test_running_configs_that_do_not_get_through_are_sent_again(world: World) -> None:
    fake, server = await world.serve()
    fake.configs = [config(D1)]
    agent = world.agent((url_of(server),))
    agent.running = [D1]
    await agent.poller.heartbeat_once()
    await agent.poller.fetch_once(wait_s=0)
    assert agent.desired() == [D1]
    fake.send_running_configs = True
    await agent.poller.heartbeat_once()  # asked
    fake.status_replies.append(lambda: error(503, "no_leader"))
    with pytest.raises(DispatcherUnavailable):
        await agent.poller.heartbeat_once()
    await agent.poller.heartbeat_once()
    sent = [b.get("running_configs") for _, b in fake.statuses]
    assert sent == [None, None, [config(D1)], [config(D1)]]
    assert not fake.send_running_configs


async def test_running_configs_beyond_one_status_go_over_the_next_ones_at_once(
    world: World,
) -> None:
    """The body limit holds: configs that do not fit one status follow in the next
    ones, sent at once, and every one is sent exactly once."""
    fake, server = await world.serve()
    big = "x" * (STATUS_BODY_BYTES // 5)
    fake.configs = [{**config(f"{n:016x}"), "init_config": {"pad": big}} for n in range(1, 9)]
    digests = sorted(c["digest"] for c in fake.configs)
    agent = world.agent((url_of(server),), long_poll_s=10.0)
    agent.start()
    await world.until(lambda: agent.desired() == digests)
    agent.running = digests

    fake.send_running_configs = True
    await world.until(lambda: len(fake.running_configs_sent()) >= 1)
    first_at = next(t for t, b in fake.statuses if "running_configs" in b)
    await world.quiesce()

    batches = fake.running_configs_sent()
    assert len(batches) >= 2
    assert sorted(c["digest"] for batch in batches for c in batch) == digests
    times = [t for t, b in fake.statuses if "running_configs" in b]
    assert times == [first_at] * len(batches), "the rest follows at once"
    for _, body in fake.statuses:
        assert len(json.dumps(body)) <= STATUS_BODY_BYTES


def invalid_request(*paths: str) -> web.Response:
    """A 400 invalid_request naming these fields, as API.md says (what a dispatcher of
    another build answers to an entry it cannot read)."""
    fields = [{"path": path, "message": "invalid"} for path in paths]
    body = {"error": {"code": "invalid_request", "message": "bad.", "details": {"fields": fields}}}
    return web.json_response(body, status=400)


async def test_a_refused_status_leaves_out_the_entries_it_names_and_sends_the_rest_at_once(
    world: World,
) -> None:
    """One entry a leader refuses (with the whole status, as a leader of another build
    does) must not cost the agent every other check: it is left out, and the rest go
    again at once."""
    fake, server = await world.serve()
    fake.configs = [config(D1), config(D2), config(RUNNING)]
    agent = world.agent((url_of(server),), long_poll_s=10.0)
    agent.start()
    await world.until(lambda: agent.desired() == sorted([D1, D2, RUNNING]))
    agent.running = [D1, D2, RUNNING]
    fake.send_running_configs = True
    fake.running_configs_replies.append(
        lambda: invalid_request("running_configs.1.sources.0", "running_configs.1.name")
    )

    with structlog.testing.capture_logs() as logs:
        await world.until(lambda: not fake.send_running_configs)

    batches = fake.running_configs_sent()
    assert [[c["digest"] for c in batch] for batch in batches] == [
        [D1, D2, RUNNING],
        [D1, RUNNING],
    ]
    times = [t for t, b in fake.statuses if "running_configs" in b]
    assert times[1] == times[0], "sent again at once"
    [refused] = [e for e in logs if e["event"] == "running_configs_refused"]
    assert refused["digests"] == [D2]


async def test_a_refusal_that_names_no_entry_drops_only_that_statuss_share(
    world: World,
) -> None:
    fake, server = await world.serve()
    big = "x" * (STATUS_BODY_BYTES // 5)
    fake.configs = [{**config(f"{n:016x}"), "init_config": {"pad": big}} for n in range(1, 9)]
    digests = sorted(c["digest"] for c in fake.configs)
    agent = world.agent((url_of(server),))
    agent.running = digests
    await agent.poller.heartbeat_once()
    await agent.poller.fetch_once(wait_s=0)
    fake.send_running_configs = True
    await agent.poller.heartbeat_once()  # asked
    fake.status_replies.append(lambda: error(413, "body_too_large"))
    with pytest.raises(DispatcherProtocolError):
        await agent.poller.heartbeat_once()
    while fake.send_running_configs or len(fake.running_configs_sent()) < 2:
        await agent.poller.heartbeat_once()
        assert len(fake.statuses) < 20

    [refused, *rest] = fake.running_configs_sent()
    refused_digests = [c["digest"] for c in refused]
    assert refused_digests, "the first share was refused"
    sent_after = sorted(c["digest"] for batch in rest for c in batch)
    assert sent_after == [d for d in digests if d not in refused_digests]


async def test_the_sources_of_a_refetched_check_are_the_ones_sent_in_a_rebuild(
    world: World,
) -> None:
    """Another source came to hold a check this agent runs: the dispatcher moves the
    node's counter, the agent refetches (same digest: nothing restarts) and keeps the
    new form, so a leader that rebuilds from it gets every holder."""
    fake, server = await world.serve()
    fake.configs = [config(D1)]
    agent = world.agent((url_of(server),), long_poll_s=10.0)
    agent.start()
    await world.until(lambda: agent.desired() == [D1])
    agent.running = [D1]
    specs = agent.applied[-1]

    fake.change([{**config(D1), "sources": ["other", "test"]}])
    await world.until(lambda: fake.configs_served >= 2 and fake.polls_waiting == 1)
    assert agent.applied[-1] == specs, "the same check: nothing restarts"
    fake.send_running_configs = True
    await world.until(lambda: len(fake.running_configs_sent()) == 1)

    [[sent]] = fake.running_configs_sent()
    assert sent["sources"] == ["other", "test"]


async def test_a_warming_up_leaders_set_updates_the_sources_of_the_checks_kept(
    world: World,
) -> None:
    """A warm-up set is not applied, but it is the current form of the checks it holds:
    a leader that rebuilds later (this one failing in its warm-up) gets those sources."""
    fake, server = await world.serve()
    fake.configs = [config(D1)]
    agent = world.agent((url_of(server),), long_poll_s=10.0)
    agent.start()
    await world.until(lambda: agent.desired() == [D1])
    agent.running = [D1]

    fake.warmup = True
    fake.change([{**config(D1), "sources": ["other", "test"]}, config(D2)])
    await world.until(lambda: agent.poller.leader_warming_up and fake.polls_waiting == 1)
    assert agent.desired() == [D1]
    fake.send_running_configs = True
    await world.until(lambda: len(fake.running_configs_sent()) == 1)

    [[sent]] = fake.running_configs_sent()
    assert sent["digest"] == D1, "only what runs here"
    assert sent["sources"] == ["other", "test"]


async def test_a_warming_up_real_dispatcher_rebuilds_from_the_agent(
    aiohttp_server: AiohttpServer, world: World, session: aiohttp.ClientSession
) -> None:
    """The agent runs a source's checks from one dispatcher; that one goes away and an
    empty one, warming up, takes over: it ends up with the same checks, held by the same
    source, on this node, and serves the agent exactly that set after its warm-up."""
    memory = StoreSettings(backend="memory")
    fast = DispatchSettings(node_expiration_timeout_s=5, heartbeat_interval_s=1)
    first = build(Settings(dispatch=fast, store=memory))
    # The new one's own clock: its epoch (start time in ms) is later, and its warm-up
    # ends when the test says so.
    second_clock = FakeClock(wall=SystemClock().time() + 60)
    second = build(
        Settings(dispatch=replace(fast, warmup_duration_s=30), store=memory), clock=second_clock
    )
    first_server = await aiohttp_server(first.app)
    second_server = await aiohttp_server(second.app)
    agent = world.agent(
        (url_of(first_server), url_of(second_server)), long_poll_s=5.0, clock=SystemClock()
    )
    agent.running = []
    agent.start()
    await eventually(lambda: agent.poller.epoch >= 0)
    source = {"configs": [{"name": "tcp", "instances": [{"host": "localhost", "port": p}]}
                          for p in (1, 2, 3)]}  # fmt: skip
    async with session.put(f"{url_of(first_server)}{API}/sources/ci", json=source) as response:
        assert response.status == 200, await response.text()
        digests = sorted((await response.json())["digests"])
    await eventually(lambda: agent.desired() == digests)
    agent.running = list(digests)
    specs = agent.applied[-1]

    await first_server.close()
    state = second.dispatcher.state
    await eventually(lambda: sorted(state.placement) == digests)
    assert set(state.placement.values()) == {NODE}
    assert {d: state.sources_of(d) for d in digests} == {d: ["ci"] for d in digests}
    assert second.dispatcher.warming_up()
    applied = len(agent.applied)

    second_clock.advance(30)  # the warm-up is over: the agent fetches its set
    await eventually(lambda: len(agent.applied) > applied)
    assert agent.applied[-1] == specs, "served exactly what it runs: nothing restarts"


async def test_the_set_is_fetched_at_once_when_warm_up_ends_even_unchanged(
    world: World,
) -> None:
    """A leader that adopted during its warm-up changed the node's counter then, not at
    the end of it: the agent must not wait a long poll to apply the set."""
    fake, server = await world.serve()
    fake.configs = [config(D1)]
    agent = world.agent((url_of(server),), long_poll_s=30.0)
    agent.start()
    await world.until(lambda: agent.desired() == [D1] and fake.polls_waiting == 1)

    fake.epoch = 2
    fake.warmup = True
    fake.configs = [config(D1), config(D2)]  # adopted: the counter moves during warm-up
    fake.last_change += 1
    fake.wake()
    await world.until(lambda: agent.poller.leader_warming_up and fake.polls_waiting == 1)
    assert agent.desired() == [D1]

    fake.warmup = False  # the counter stays as it is
    ended_at = fake.answered[-1] + agent.poller.next_heartbeat_s
    await world.until(lambda: agent.desired() == sorted([D1, D2]))
    assert world.clock.monotonic() == pytest.approx(ended_at), "at the next heartbeat"
