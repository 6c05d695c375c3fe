"""The poller against a dispatcher the test controls: epochs, re-registration, bad
replies, failover, fencing. One test runs it against the real dispatcher app; the last
ones cover the results batcher against the same fake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from dispatcher.common.clock import Clock, FakeClock, SystemClock
from dispatcher.common.health import HealthRegistry, Status
from dispatcher.service import build
from dispatcher.settings import DispatchSettings, Settings
from node_agent.client import DispatcherClient
from node_agent.errors import DispatcherProtocolError, DispatcherUnavailable, UnknownNodeError
from node_agent.metrics import AgentMetrics
from node_agent.poller import COMPONENT, FAILOVER_DELAY_S, RETRY_BASE_S, Poller
from node_agent.results import ResultBatcher
from node_agent.runner import CheckSpec
from node_agent.settings import AgentSettings
from tests.node_agent.helpers import eventually, free_port

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
    """The node-agent routes of API.md, with every reply under the test's control."""

    def __init__(self) -> None:
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
        self.configs_replies: list[Canned] = []
        self.statuses: list[tuple[float, dict[str, Any]]] = []
        self.config_queries: list[tuple[float, dict[str, str]]] = []
        self.configs_served = 0
        self.results: list[dict[str, Any]] = []
        self.results_down = False
        self.warmup = False
        self._wake = asyncio.Event()
        self.app = web.Application()
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

    async def _status(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.statuses.append((time.monotonic(), body))
        if self.down or self.status_down:
            return error(503, "no_leader")
        if self.status_replies:
            return self.status_replies.pop(0)()
        if body.get("leaving"):
            self.registered = False
        elif not self.registered:
            self.registered = True
            self.last_change += 1  # a fresh counter: a (re-)registered node refetches
        return web.json_response(
            {
                "is_up_to_date": body["last_change"] in (-1, self.last_change),
                "epoch": self.epoch,
                "leader": self.leader,
                "heartbeat_interval_s": self.heartbeat_interval_s,
                "node_expiration_timeout_s": self.expiry_s,
                "warmup": self.warmup,
            }
        )

    async def _configs(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.config_queries.append((time.monotonic(), query))
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
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await wake.wait()
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


async def serve(aiohttp_server: AiohttpServer) -> tuple[FakeDispatcher, TestServer]:
    fake = FakeDispatcher()
    server = await aiohttp_server(fake.app)
    return fake, server


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


class Agent:
    """A poller with recording callbacks, in place of the node agent."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: tuple[str, ...],
        *,
        clock: Clock | None = None,
        fence: bool = False,
        long_poll_s: float = 0.5,
    ) -> None:
        self.clock = clock or SystemClock()
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
        self.client = DispatcherClient(
            urls=urls, node=NODE, session=session, token=None, timeout_s=2.0
        )
        self.applied: list[dict[str, CheckSpec]] = []
        self.running: list[str] = [RUNNING]
        self.poller = Poller(
            settings=self.settings,
            client=self.client,
            apply=self._apply,
            running=lambda: list(self.running),
            stats=lambda: {
                RUNNING: {"avg_execution_s": 0.1, "runs": 3, "errors": 0, "last_error": None}
            },
            clock=self.clock,
            health=self.health,
            rng=random.Random(3),
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _apply(self, specs: Mapping[str, CheckSpec]) -> None:
        self.applied.append(dict(specs))

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
        async with asyncio.timeout(3):
            await self._task  # raises if the poller crashed
        self._task = None

    def fenced(self) -> bool:
        return self.poller.fenced

    def link(self) -> Status:
        return self.health.components()[COMPONENT].status


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = aiohttp.ClientSession()
    try:
        yield s
    finally:
        await s.close()


AgentFactory = Callable[..., Agent]


@pytest.fixture
async def make_agent(session: aiohttp.ClientSession) -> AsyncIterator[AgentFactory]:
    agents: list[Agent] = []

    def make(urls: tuple[str, ...], **kwargs: Any) -> Agent:
        agent = Agent(session, urls, **kwargs)
        agents.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in agents:
            await agent.stop()


# ----------------------------------------------------------------- epochs, one step


async def test_a_heartbeat_sends_labels_capacity_stats_and_running(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    agent = make_agent((url_of(server),))
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


async def test_a_stale_epoch_on_status_is_ignored(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    agent = make_agent((url_of(server),))
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


async def test_a_stale_epoch_on_configs_is_ignored(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    agent = make_agent((url_of(server),))
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


async def test_a_stale_reply_moves_to_the_next_dispatcher(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    old, old_server = await serve(aiohttp_server)
    new, new_server = await serve(aiohttp_server)
    agent = make_agent((url_of(old_server), url_of(new_server)))
    old.epoch = 5
    await agent.poller.heartbeat_once()
    old.epoch, new.epoch = 4, 6  # the first one was deposed meanwhile
    assert await agent.poller.heartbeat_once() is None
    assert agent.client.url == url_of(new_server)
    reply = await agent.poller.heartbeat_once()
    assert reply is not None
    assert reply.epoch == 6
    assert agent.poller.epoch == 6


async def test_running_is_sent_on_first_contact_with_each_epoch_only(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    agent = make_agent((url_of(server),))
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


async def test_a_new_epoch_seen_on_configs_also_sends_running(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    agent = make_agent((url_of(server),))
    await agent.poller.heartbeat_once()
    await agent.poller.fetch_once(wait_s=0)
    fake.epoch = 3
    await agent.poller.fetch_once(wait_s=0)
    assert agent.poller.epoch == 3
    await agent.poller.heartbeat_once()
    assert "running" in fake.statuses[-1][1]


async def test_configs_are_refetched_in_full_when_the_epoch_changes(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    agent = make_agent((url_of(server),))
    await agent.poller.heartbeat_once()
    await agent.poller.fetch_once(wait_s=0)
    await agent.poller.fetch_once(wait_s=0)
    fake.epoch = 2
    await agent.poller.heartbeat_once()
    await agent.poller.fetch_once(wait_s=0)
    sinces = [query.get("since") for _, query in fake.config_queries]
    assert sinces == [None, str(fake.last_change), None]


async def test_unknown_node_on_configs_raises_for_re_registration(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    _, server = await serve(aiohttp_server)
    agent = make_agent((url_of(server),))
    with pytest.raises(UnknownNodeError):
        await agent.poller.fetch_once(wait_s=0)


# ------------------------------------------------------------------ the loops


async def test_a_config_change_reaches_the_agent_through_the_long_poll(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    fake.change([config(D1)])
    agent = make_agent((url_of(server),), long_poll_s=10.0)
    agent.start()
    await eventually(lambda: agent.desired() == [D1])
    await asyncio.sleep(0.1)  # the agent is now in a long poll
    changed_at = time.monotonic()
    fake.change([config(D1), config(D2)])
    await eventually(lambda: agent.desired() == [D1, D2], within_s=1.0)
    assert time.monotonic() - changed_at < 0.5
    waits = [q for _, q in fake.config_queries if "since" in q]
    assert waits
    assert all(q["wait_s"] == "10" for q in waits)
    assert len(fake.statuses) == 1  # heartbeats at the dispatcher's interval (10 s)


async def test_running_reaches_a_new_leader_at_once(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    agent = make_agent((url_of(server),), long_poll_s=10.0)
    agent.start()
    await eventually(lambda: fake.configs_served >= 1)
    await asyncio.sleep(0.1)
    fake.epoch = 2  # a new leader; the long poll answers with its epoch
    fake.change([config(D1)])
    await eventually(lambda: len(fake.running_sent()) == 2, within_s=1.0)
    await asyncio.sleep(0.3)
    assert len(fake.running_sent()) == 2  # once per epoch, not on every heartbeat
    assert agent.poller.epoch == 2


async def test_unknown_node_makes_the_agent_register_again(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    fake.change([config(D1)])
    agent = make_agent((url_of(server),), long_poll_s=10.0)
    agent.start()
    await eventually(lambda: agent.desired() == [D1])
    await asyncio.sleep(0.1)
    statuses = len(fake.statuses)
    forgotten_at = time.monotonic()
    fake.forget_node()  # the pending long poll answers 404 unknown_node
    await eventually(lambda: len(fake.statuses) > statuses, within_s=1.5)
    # Well before the next regular heartbeat (10 s): the 404 triggered it.
    assert fake.statuses[statuses][0] - forgotten_at < 1.5
    assert fake.registered
    served = fake.configs_served
    fake.change([config(D2)])
    await eventually(lambda: agent.desired() == [D2])
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
    aiohttp_server: AiohttpServer,
    make_agent: AgentFactory,
    route: str,
    reply: Callable[[], web.Response],
) -> None:
    fake, server = await serve(aiohttp_server)
    fake.change([config(D1)])
    (fake.status_replies if route == "status" else fake.configs_replies).extend([reply, reply])
    agent = make_agent((url_of(server),))
    with structlog.testing.capture_logs() as logs:
        agent.start()
        await eventually(lambda: agent.desired() == [D1], within_s=5.0)
    assert agent.alive()
    unusable = [e for e in logs if e["event"] == "dispatcher_reply_unusable"]
    assert len(unusable) >= 2, logs
    assert all(e["log_level"] == "error" for e in unusable)
    if route == "status":  # the link recovers with the next heartbeat
        await eventually(lambda: agent.link() == Status.HEALTHY, within_s=3.0)


async def test_a_malformed_reply_raises_a_protocol_error(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    agent = make_agent((url_of(server),))
    fake.status_replies.append(lambda: web.Response(status=200, text="{not json"))
    with pytest.raises(DispatcherProtocolError):
        await agent.poller.heartbeat_once()
    assert agent.poller.epoch == -1  # nothing taken from it


async def test_the_client_moves_to_the_next_url_when_one_is_down(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    dead = dead_url()
    agent = make_agent((dead, url_of(server)))
    with pytest.raises(DispatcherUnavailable):
        await agent.client.status({"last_change": -1})
    assert agent.client.url == url_of(server)
    reply = await agent.client.status({"last_change": -1})
    assert reply.leader == "dispatcher-0"
    assert len(fake.statuses) == 1


async def test_the_poller_fails_over_to_the_second_dispatcher(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    fake.change([config(D1)])
    agent = make_agent((dead_url(), url_of(server)))
    agent.start()
    await eventually(lambda: agent.desired() == [D1])
    assert agent.client.url == url_of(server)
    assert agent.alive()


async def test_no_leader_moves_to_the_next_dispatcher(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    follower, follower_server = await serve(aiohttp_server)
    follower.down = True
    leader, leader_server = await serve(aiohttp_server)
    leader.change([config(D2)])
    agent = make_agent((url_of(follower_server), url_of(leader_server)))
    agent.start()
    await eventually(lambda: agent.desired() == [D2])
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
    make_agent: AgentFactory, urls: int, delays: list[str]
) -> None:
    """A node that loses the leader has only the expiry timeout to reach another replica:
    each URL of a round is tried at once, and only full rounds back off."""
    agent = make_agent(tuple(f"http://127.0.0.{n + 1}:1" for n in range(urls)))
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


async def test_fence_on_disconnect_stops_the_checks_after_the_expiry(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    fake.heartbeat_interval_s = 0.2
    fake.expiry_s = 30.0
    fake.change([config(D1)])
    clock = FakeClock()
    agent = make_agent((url_of(server),), clock=clock, fence=True, long_poll_s=10.0)
    agent.start()
    await eventually(lambda: agent.desired() == [D1])
    fake.down = True
    fake.wake()  # the pending long poll answers 503 too
    fake.registered = False  # meanwhile the dispatcher expires the silent node
    await eventually(lambda: agent.link() == Status.DEGRADED)
    clock.advance(29)  # not yet expired: the checks keep running
    await asyncio.sleep(0.6)
    assert agent.desired() == [D1]
    assert not agent.fenced()
    clock.advance(2)
    await eventually(lambda: agent.desired() == [], within_s=1.5)
    assert agent.fenced()
    # Degraded, not unhealthy: a liveness failure would restart every agent in an outage.
    await eventually(lambda: "fenced" in agent.health.components()["dispatcher_link"].message)
    assert agent.link() == Status.DEGRADED
    # The dispatcher is back: the node registers again, is unfenced, and its configs
    # run again (at once, not after a long poll of 10 s).
    fake.down = False
    await eventually(lambda: not agent.fenced())
    await eventually(lambda: agent.desired() == [D1], within_s=2.0)
    assert fake.registered
    assert agent.alive()


async def test_a_fenced_agent_waits_for_a_heartbeat_before_running_checks_again(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    fake.heartbeat_interval_s = 0.2
    fake.change([config(D1)])
    clock = FakeClock()
    agent = make_agent((url_of(server),), clock=clock, fence=True, long_poll_s=0.2)
    agent.start()
    await eventually(lambda: agent.desired() == [D1])
    fake.status_down = True  # heartbeats fail; configs still answer
    await eventually(lambda: agent.link() == Status.DEGRADED)
    clock.advance(31)
    await eventually(lambda: agent.desired() == [])
    served = fake.configs_served
    await eventually(lambda: fake.configs_served >= served + 2)
    # Config replies alone do not prove this node is still registered: still fenced.
    assert agent.desired() == []
    assert agent.fenced()
    fake.status_down = False
    await eventually(lambda: agent.desired() == [D1])
    assert not agent.fenced()


async def test_without_fencing_the_checks_keep_running_when_cut_off(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    fake, server = await serve(aiohttp_server)
    fake.heartbeat_interval_s = 0.2
    fake.change([config(D1)])
    clock = FakeClock()
    agent = make_agent((url_of(server),), clock=clock, fence=False)
    agent.start()
    await eventually(lambda: agent.desired() == [D1])
    fake.down = True
    fake.wake()
    await eventually(lambda: agent.link() == Status.DEGRADED)
    clock.advance(1000)
    await asyncio.sleep(0.8)
    assert agent.applied[-1].keys() == {D1}
    assert all(specs for specs in agent.applied)  # never an empty set
    assert not agent.fenced()
    assert agent.alive()


async def test_leave_sends_leaving(aiohttp_server: AiohttpServer, make_agent: AgentFactory) -> None:
    fake, server = await serve(aiohttp_server)
    agent = make_agent((dead_url(), url_of(server)))
    assert await agent.poller.leave() is True
    assert fake.statuses[-1][1] == {"last_change": -1, "leaving": True}


# -------------------------------------------------------- the real dispatcher app


async def test_against_the_real_dispatcher(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory, session: aiohttp.ClientSession
) -> None:
    service = build(
        Settings(dispatch=DispatchSettings(node_expiration_timeout_s=5, heartbeat_interval_s=1))
    )
    server = await aiohttp_server(service.app)
    base = url_of(server)
    agent = make_agent((base,), long_poll_s=5.0)
    agent.running = []
    agent.start()
    await eventually(lambda: agent.poller.epoch >= 0)
    source = {"configs": [{"name": "tcp", "instances": [{"host": "localhost", "port": 1}]}]}
    async with session.put(f"{base}{API}/sources/ci", json=source) as response:
        assert response.status == 200, await response.text()
        digest = (await response.json())["digests"][0]
    await eventually(lambda: agent.desired() == [digest], within_s=1.5)
    spec = agent.applied[-1][digest]
    assert spec.name == "tcp"
    assert spec.instances == ({"host": "localhost", "port": 1},)
    assert agent.alive()


# -------------------------------------------------------------------- results


@pytest.fixture
async def batcher_for(
    session: aiohttp.ClientSession,
) -> Callable[[TestServer], Awaitable[ResultBatcher]]:
    async def make(server: TestServer) -> ResultBatcher:
        client = DispatcherClient(
            urls=(url_of(server),), node=NODE, session=session, token=None, timeout_s=2.0
        )
        return ResultBatcher(
            client=client, metrics=AgentMetrics(), flush_s=0.1, max_pending=3, clock=SystemClock()
        )

    return make


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
    aiohttp_server: AiohttpServer, batcher_for: Callable[[TestServer], Awaitable[ResultBatcher]]
) -> None:
    fake, server = await serve(aiohttp_server)
    batcher = await batcher_for(server)
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


async def test_results_are_sent_by_the_loop(
    aiohttp_server: AiohttpServer, batcher_for: Callable[[TestServer], Awaitable[ResultBatcher]]
) -> None:
    fake, server = await serve(aiohttp_server)
    batcher = await batcher_for(server)
    stop = asyncio.Event()
    task = asyncio.create_task(batcher.run(stop))
    try:
        batcher.add(result(1))
        await eventually(lambda: len(fake.results) == 1, within_s=1.0)
    finally:
        stop.set()
        async with asyncio.timeout(2):
            await task
    assert json.loads(json.dumps(fake.results[0])) == result(1)


async def test_a_warming_up_leader_does_not_make_the_agent_stop_its_checks(
    aiohttp_server: AiohttpServer, make_agent: AgentFactory
) -> None:
    """A new leader warming up knows only part of the placement: a configs reply marked
    warmup is not applied (the agent keeps running what it runs); the full set is
    fetched and applied once a heartbeat says warm-up is over."""
    fake, server = await serve(aiohttp_server)
    fake.configs = [config(D1)]
    agent = make_agent((url_of(server),))
    agent.start()
    await eventually(lambda: agent.desired() == [D1])

    # Failover: a new epoch whose leader is warming up and knows nothing yet.
    fake.epoch = 2
    fake.warmup = True
    fake.configs = []
    fake.last_change += 1
    fake.wake()
    await agent.poller.heartbeat_once()
    await eventually(lambda: fake.configs_served >= 2)
    await asyncio.sleep(0.3)
    assert agent.desired() == [D1], "the agent applied a warm-up set and stopped its checks"
    assert agent.poller.leader_warming_up

    # Warm-up ends: the leader has adopted D1 and placed D2 here.
    fake.warmup = False
    fake.configs = [config(D1), config(D2)]
    fake.last_change += 1
    await agent.poller.heartbeat_once()
    await eventually(lambda: agent.desired() == sorted([D1, D2]))
    assert not agent.poller.leader_warming_up
