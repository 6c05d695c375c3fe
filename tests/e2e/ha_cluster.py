"""A highly available clusterchecks cluster of real processes for end-to-end tests.

One redis-server (optionally persistent), three dispatcher replicas electing a leader
through it (``--election redis``, with ``--store redis`` or ``--store memory``), three
node agents that list every replica's URL (rotated, so each starts at a different
replica) and a loopback HTTP target that records every hit of the agents' http checks.

Settings are short: lease 3 s, renew deadline 2 s, retry 1 s, nodes expire after 3 s,
heartbeats every second, every check runs every second.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from tests.e2e.harness import API, Reply, Target, call, log_events, wait_until
from tests.processes import Proc, agent_argv, dispatcher_argv, free_port
from tests.redis_server import RedisServer

T = TypeVar("T")

LEASE_S = 3.0
RENEW_DEADLINE_S = 2.0
RETRY_S = 1.0
EXPIRY_S = 3.0
HEARTBEAT_S = 1.0
WARMUP_S = 3.0
CHECK_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 6.0
"""SIGTERM to exit, at teardown: every process shuts down within 5 s by design."""

PREFIX = "clusterchecks-dispatcher"
LEASE_KEY = f"{PREFIX}:lease"
STORE_EPOCH_KEY = f"{PREFIX}:store:epoch"
PLACEMENT_KEY = f"{PREFIX}:store:placement"
CONFIGS_KEY = f"{PREFIX}:store:configs"
SOURCES_KEY = f"{PREFIX}:store:sources"

SOURCE = "ha"
PATHS = tuple(f"/c{i}" for i in range(6))
AGENT_NAMES = ("agent-a", "agent-b", "agent-c")
FORWARDED = {"X-Clusterchecks-Forwarded": "1"}
LEADER_HEADER = "X-Clusterchecks-Leader"


class PortTaken(Exception):
    """A port from free_port() was taken before the process bound it (by some process's
    outgoing connection): start again on other ports."""


def wait_healthy(procs: dict[int, Proc], *, timeout_s: float = 30) -> None:
    """Waits until every process answers /healthz on its port (the key)."""
    waiting = dict(procs)
    deadline = time.monotonic() + timeout_s
    while waiting:
        for port, proc in list(waiting.items()):
            if not proc.alive():
                if "address already in use" in proc.output():
                    raise PortTaken(proc.name)
                raise AssertionError(f"{proc.name} exited early:\n{proc.output()[-3000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if call("GET", f"http://127.0.0.1:{port}/healthz", timeout_s=1).status == 200:
                    del waiting[port]
        if waiting and time.monotonic() > deadline:
            names = [p.name for p in waiting.values()]
            raise AssertionError(f"not ready after {timeout_s:g} s: {names}")
        time.sleep(0.05)


@dataclass
class Replica:
    """One dispatcher replica; its identity is ``dispatcher-<port>``."""

    proc: Proc
    port: int

    @property
    def name(self) -> str:
        return f"dispatcher-{self.port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Reply | None:
        """One request; None when the replica does not answer (down, frozen, too slow)."""
        kwargs.setdefault("timeout_s", 1.0)
        try:
            return call(method, self.base + path, body, **kwargs)
        except (OSError, http.client.HTTPException):
            return None

    def state(self, *, direct: bool = False, timeout_s: float = 1.0) -> Reply | None:
        """The admin state route; ``direct`` asks this replica itself (a follower answers
        508 instead of forwarding)."""
        return self.call("GET", API, headers=FORWARDED if direct else None, timeout_s=timeout_s)

    def leads(self) -> dict[str, Any] | None:
        """The state this replica serves as the leader, or None when it does not lead."""
        reply = self.state(direct=True, timeout_s=0.5)
        if reply is not None and reply.status == 200 and reply.body.get("is_leader") is True:
            body: dict[str, Any] = reply.body
            return body
        return None

    def results(self) -> dict[str, dict[str, Any]] | None:
        """The results page of this replica as the leader (None when it does not lead)."""
        reply = self.call("GET", API + "/results", headers=FORWARDED, timeout_s=2.0)
        if reply is None or reply.status != 200:
            return None
        checks: dict[str, dict[str, Any]] = reply.body["checks"]
        return checks

    def tail(self, chars: int = 2500) -> str:
        return f"--- {self.proc.name} ---\n{self.proc.output()[-chars:]}"


@dataclass
class Agent:
    name: str
    port: int
    proc: Proc
    urls: str

    def events(self, event: str, *, since: int = 0) -> list[dict[str, Any]]:
        """The agent's JSON log records with that event, from character ``since`` on."""
        return log_events(self.proc.output()[since:], event)

    def log_size(self) -> int:
        return len(self.proc.output())


@dataclass
class HaCluster:
    root: Path
    redis_server: RedisServer
    target: Target
    store: str
    replicas: list[Replica] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    """path of the target -> digest of its check"""
    hung: dict[str, str] = field(default_factory=dict)
    """processes that did not exit on SIGTERM (killed at teardown) -> their log tail"""
    lease_s: float = LEASE_S
    renew_deadline_s: float = RENEW_DEADLINE_S

    # ------------------------------------------------------------------ start, stop

    def start_processes(self) -> None:
        """Starts the three replicas and the three agents at once, and waits until every
        one serves its /healthz (agents keep trying the replicas until a leader is up)."""
        for _ in range(3):
            replica_ports = [free_port() for _ in range(3)]
            urls = [f"http://127.0.0.1:{port}" for port in replica_ports]
            self.replicas = [Replica(self._replica(port).start(), port) for port in replica_ports]
            self.agents = []
            for index, name in enumerate(AGENT_NAMES):
                rotated = ",".join(urls[index:] + urls[:index])
                port = free_port()
                argv = agent_argv(port, name, rotated, "--heartbeat-interval", str(HEARTBEAT_S))
                proc = Proc(name, argv, self.root / f"{name}-{port}.log").start()
                self.agents.append(Agent(name, port, proc, rotated))
            procs = {r.port: r.proc for r in self.replicas} | {a.port: a.proc for a in self.agents}
            try:
                wait_healthy(procs)
                return
            except PortTaken:
                for proc in procs.values():
                    proc.stop(timeout_s=5)
        raise AssertionError("no free ports for the cluster in three attempts")

    def _replica(self, port: int) -> Proc:
        name = f"dispatcher-{port}"
        argv = dispatcher_argv(
            port,
            "--election", "redis",
            "--store", self.store,
            "--redis-url", self.redis_server.url,
            "--lease-duration", str(self.lease_s),
            "--renew-deadline", str(self.renew_deadline_s),
            "--retry-period", str(RETRY_S),
            "--node-expiration-timeout", str(EXPIRY_S),
            "--heartbeat-interval", str(HEARTBEAT_S),
            "--warmup-duration", str(WARMUP_S),
        )  # fmt: skip
        return Proc(name, argv, self.root / f"{name}.log")

    def stop(self) -> None:
        """Stops every process (a frozen one is continued first), the target, Redis.

        Processes still running ``STOP_TIMEOUT_S`` after SIGTERM are killed and listed
        in ``hung`` with their last log lines."""
        procs = [*(a.proc for a in self.agents), *(r.proc for r in self.replicas)]
        for proc in procs:
            if proc.alive():
                with contextlib.suppress(OSError):
                    proc.signal(signal.SIGCONT)
                    proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in procs:
            if proc.stop(timeout_s=max(0.1, deadline - time.monotonic())) is None:
                self.hung[proc.name] = proc.output()[-1500:]
        self.target.stop()
        self.redis_server.stop()

    # ----------------------------------------------------------------- the checks

    def configs(self) -> list[dict[str, Any]]:
        return [
            {"name": "http", "instances": [{"url": self.target.url(p)}],
             "interval_s": CHECK_INTERVAL_S}
            for p in PATHS
        ]  # fmt: skip

    def put_checks(self, via: Replica) -> Reply:
        reply = via.call(
            "PUT", f"{API}/sources/{SOURCE}", {"configs": self.configs()}, timeout_s=10.0
        )
        assert reply is not None, f"{via.name} did not answer the PUT\n{self.logs()}"
        assert reply.status == 200, f"PUT via {via.name}: {reply}\n{self.logs()}"
        return reply

    def key_of(self, digest: str) -> str:
        return next((p for p, d in self.digests.items() if d == digest), digest)

    # --------------------------------------------------------------- observations

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.proc.alive()]

    def leaders(self, among: list[Replica] | None = None) -> list[tuple[Replica, dict[str, Any]]]:
        """The replicas (of ``among``, default every live one) that serve as leader."""
        found = []
        for replica in self.alive() if among is None else among:
            body = replica.leads()
            if body is not None:
                found.append((replica, body))
        return found

    def wait_leader(
        self, among: list[Replica] | None = None, *, timeout_s: float = 15.0
    ) -> tuple[Replica, dict[str, Any], float]:
        """The first replica (of ``among``) that serves as leader, and the seconds taken."""

        def probe() -> tuple[Replica, dict[str, Any]] | None:
            found = self.leaders(among)
            return found[0] if found else None

        (replica, body), took = wait_until(
            probe, timeout_s=timeout_s, what="a replica serving as leader", context=self.logs,
            interval_s=0.05,
        )  # fmt: skip
        return replica, body, took

    def only_leader(self, *, settle_s: float = 3.0) -> tuple[Replica, dict[str, Any]]:
        """Asserts that exactly one live replica leads and that the others follow it.

        Two leaders fail at once. Followers learn of a new lease within a retry period,
        so their view (and a slow reply) may take up to ``settle_s`` to agree."""
        deadline = time.monotonic() + settle_s
        while True:
            found = self.leaders()
            assert len(found) <= 1, (
                f"two leaders: {[(r.name, b['epoch']) for r, b in found]}\n{self.logs()}"
            )
            problems = self._follower_problems(found[0]) if found else ["no replica leads"]
            if not problems:
                return found[0]
            if time.monotonic() >= deadline:
                raise AssertionError(f"not exactly one leader: {problems}\n{self.logs()}")
            time.sleep(0.1)

    def _follower_problems(self, found: tuple[Replica, dict[str, Any]]) -> list[str]:
        leader, body = found
        problems = []
        if body["leader"] != leader.name:
            problems.append(f"{leader.name} says the leader is {body['leader']}")
        for replica in self.alive():
            if replica is leader:
                continue
            direct = replica.state(direct=True, timeout_s=2.0)
            if direct is None or direct.status != 508:
                problems.append(f"{replica.name} asked directly: {direct} (want 508)")
            elif direct.headers.get(LEADER_HEADER) != leader.name:
                problems.append(f"{replica.name} names another leader: {direct.headers}")
            forwarded = replica.state(timeout_s=2.0)
            if forwarded is None or forwarded.status != 200:
                problems.append(f"{replica.name} forwarding: {forwarded}")
            elif (
                forwarded.body["leader"] != leader.name
                or forwarded.body["epoch"] != body["epoch"]
                or forwarded.headers.get(LEADER_HEADER) != leader.name
            ):
                problems.append(f"{replica.name} forwarded elsewhere: {forwarded}")
        return problems

    @staticmethod
    def placement_of(state: dict[str, Any]) -> dict[str, str]:
        """digest -> node, from an admin state body (its nodes and their configs)."""
        placed: dict[str, str] = {}
        for node in state["nodes"]:
            for digest in node["configs"]:
                assert digest not in placed, f"{digest} on {placed[digest]} and {node['name']}"
                placed[digest] = node["name"]
        return placed

    def redis(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.redis_server.port, socket_timeout=2,
            decode_responses=True,
        )  # fmt: skip

    def stored_placement(self) -> dict[str, str]:
        with self.redis() as client:
            placed: dict[str, str] = client.hgetall(PLACEMENT_KEY)
            return placed

    def stored_checks(self) -> dict[str, Any]:
        """What the Redis store holds of the checks: digests of the configs, the source's
        digests (sorted), the placement; all three read in one transaction."""
        with self.redis() as client:
            pipe = client.pipeline(transaction=True)
            pipe.hkeys(CONFIGS_KEY)
            pipe.hget(SOURCES_KEY, SOURCE)
            pipe.hgetall(PLACEMENT_KEY)
            configs, source, placement = pipe.execute()
        return {
            "configs": sorted(configs),
            "source": sorted(json.loads(source)) if source is not None else [],
            "placement": dict(placement),
        }

    def restart_redis_empty(self) -> float:
        """Stops redis-server and starts it again without its data (no persistence);
        returns when it answers again, with the seconds it was away."""
        assert not self.redis_server.persistent, "a persistent Redis keeps its data"
        started = time.monotonic()
        self.redis_server.stop()
        self.redis_server.start()
        with self.redis() as client:
            # What the new server loaded at start, not what it holds by now: the leader
            # may already be writing back (each results post reaches the store at once).
            loaded = client.info("persistence")["rdb_last_load_keys_loaded"]
            assert loaded == 0, "redis-server came back with data"
        return time.monotonic() - started

    def flushall(self) -> None:
        with self.redis() as client:
            client.flushall()
            assert client.dbsize() == 0

    def stored_epoch(self) -> int:
        """The store's fencing token."""
        with self.redis() as client:
            raw = client.get(STORE_EPOCH_KEY)
            return int(str(raw)) if raw is not None else 0

    def lease(self) -> dict[str, Any] | None:
        with self.redis() as client:
            raw = client.get(LEASE_KEY)
            record: dict[str, Any] | None = json.loads(str(raw)) if raw is not None else None
            return record

    def log_offsets(self) -> dict[str, int]:
        """Where each agent's log ends now (for events since then)."""
        return {a.name: a.log_size() for a in self.agents}

    def agent_events(self, offsets: dict[str, int], event: str) -> dict[str, list[str]]:
        """Per agent, the checks (target paths) of its ``event`` records since ``offsets``."""
        return {
            a.name: [
                self.key_of(str(r.get("digest"))) for r in a.events(event, since=offsets[a.name])
            ]
            for a in self.agents
        }

    def logs(self) -> str:
        parts = [r.tail() for r in self.replicas]
        parts += [f"--- {a.name} ---\n{a.proc.output()[-1500:]}" for a in self.agents]
        return "\n".join(parts)

    def wait(
        self, what: str, probe: Callable[[], T | None], *, timeout_s: float
    ) -> tuple[T, float]:
        return wait_until(probe, timeout_s=timeout_s, what=what, context=self.logs)


# ----------------------------------------------------------------------- the cluster


@contextlib.contextmanager
def ha_cluster(
    root: Path,
    *,
    store: str,
    persistent_redis: bool = False,
    lease_s: float = LEASE_S,
    renew_deadline_s: float = RENEW_DEADLINE_S,
) -> Iterator[HaCluster]:
    """Starts the whole cluster, puts the checks through a follower, and waits until each
    runs on exactly one agent and reports to the leader; stops everything afterwards."""
    server = RedisServer(port=free_port(), workdir=root, persistent=persistent_redis)
    target = Target().start()
    cluster = HaCluster(
        root, server, target, store, lease_s=lease_s, renew_deadline_s=renew_deadline_s
    )
    try:
        server.start()
        cluster.start_processes()
        leader, _, _ = cluster.wait_leader(timeout_s=15)
        cluster.wait(
            "three agents registered",
            lambda: len(body["nodes"]) == 3 if (body := leader.leads()) else None,
            timeout_s=15,
        )
        follower = next(r for r in cluster.replicas if r is not leader)
        put = cluster.put_checks(follower)
        assert put.headers.get(LEADER_HEADER) == leader.name, put.headers
        cluster.digests = dict(zip(PATHS, put.body["digests"], strict=True))
        put_at = time.time()

        def settled() -> bool:
            state = leader.leads()
            results = leader.results()
            if state is None or results is None:
                return False
            placed = HaCluster.placement_of(state)
            return all(
                d in placed
                and d in results
                and results[d]["node"] == placed[d]
                and results[d]["last_run_at"] > put_at
                for d in cluster.digests.values()
            )

        cluster.wait("every check placed, run and reported", settled, timeout_s=20)
        yield cluster
    finally:
        cluster.stop()
    # Reached unless the set-up or the clean-up raised: a process ignoring SIGTERM is a bug.
    assert not cluster.hung, (
        f"still running {STOP_TIMEOUT_S:g} s after SIGTERM (killed): {sorted(cluster.hung)}\n"
        + "\n".join(f"--- {name} ---\n{tail}" for name, tail in cluster.hung.items())
    )
