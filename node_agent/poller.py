"""Talks to the dispatcher: heartbeats, configs through a long poll, epoch fencing.

- A heartbeat every ``heartbeat_interval_s`` (as the dispatcher's replies say).
- Configs through a long poll, so a change reaches the agent well under a second; a
  heartbeat that says "not up to date", or a new epoch, restarts the fetch at once.
- Replies with an epoch below the highest seen are ignored (a deposed leader).
- ``running`` is sent on first contact with each new epoch, so a new leader can adopt
  the existing placement; after a reply with ``send_running_configs`` (a leader that
  rebuilds from the agents), the next status carries ``running_configs`` (``rebuild``).
- ``404 unknown_node``: register again with a heartbeat.
- No leader or no answer: keep running the checks, retry with backoff and jitter; with
  ``fence_on_disconnect``, stop them once this node would have been expired.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from dispatcher import wire
from dispatcher.common.clock import Clock
from dispatcher.common.health import HealthRegistry, Status
from dispatcher.common.tasks import sleep_or_stop, wait_any
from node_agent.client import DispatcherApi
from node_agent.errors import (
    AgentError,
    DispatcherProtocolError,
    DispatcherUnavailable,
    UnknownNodeError,
)
from node_agent.rebuild import RunningConfigsOutbox
from node_agent.runner import CheckSpec
from node_agent.settings import AgentSettings

log = structlog.get_logger(__name__)

COMPONENT = "dispatcher_link"
STATUS_BODY_BYTES = 2 * 1024 * 1024
"""What a heartbeat's body may weigh: half the dispatcher's 4 MiB body limit. ``running``
is sent whole (the dispatcher replaces its record with it); ``running_configs`` take what
they fit in, leaving ``MIN_STATS_BYTES``; ``stats`` fill what is left, at least that."""
MIN_STATS_BYTES = 64 * 1024
SPECS_ON_LOOP = 5_000
"""A configs reply with more checks has its specs built in a worker thread (about 4 us
each on the loop)."""
RETRY_BASE_S = 0.2
JITTER = 0.1
"""Heartbeat intervals are shortened by up to this fraction, at random."""
POLL_JITTER = 0.5
"""Long-poll waits are shortened by up to this fraction, at random: a change that
touches every agent (a fleet-wide PUT, a new leader) answers every long poll at once,
and with a tenth the renewals came back as one wave every ``long_poll_s`` for many
rounds (10,000 within 5.5 s at 10,000 agents, the leader saturated meanwhile); with half
they spread over half the wait from the first round on. It costs a third more
renewals than waiting the whole of it."""
FAILOVER_DELAY_S = 0.05
"""Between two dispatcher URLs after one fails: a moment, not a backoff."""


def specs_from_wire(configs: list[wire.CheckConfigOut]) -> dict[str, CheckSpec]:
    return {c.digest: spec_from_wire(c) for c in configs}


def spec_from_wire(config: wire.CheckConfigOut) -> CheckSpec:
    return CheckSpec(
        digest=config.digest,
        name=config.name,
        instances=tuple(config.instances),
        init_config=config.init_config,
        interval_s=config.interval_s,
        timeout_s=config.timeout_s,
    )


class Poller:
    def __init__(
        self,
        *,
        settings: AgentSettings,
        client: DispatcherApi,
        apply: Callable[[Mapping[str, CheckSpec]], None],
        running: Callable[[], list[str]],
        stats: Callable[[int], dict[str, Any]],
        clock: Clock,
        health: HealthRegistry,
        rng: random.Random | None = None,
        pace_results: Callable[[float], None] | None = None,
    ) -> None:
        self._settings = settings
        self._pace_results = pace_results
        self._client = client
        self._apply = apply
        self._running = running
        self._stats = stats
        self._clock = clock
        self._health = health
        self._rng = rng or random.Random()
        self.epoch = -1
        self.last_change: int | None = None
        self._configs_epoch = -1
        self._running_sent_epoch: int | None = None
        self.heartbeat_interval_s = settings.heartbeat_interval_s
        self.next_heartbeat_s = self.heartbeat_interval_s
        """How long after the last heartbeat the next one goes (without a reason to go
        sooner): the interval, shortened at random by up to ``JITTER``."""
        self.expiry_s = settings.heartbeat_interval_s * 3
        self._last_ok: float | None = None
        self._started = clock.monotonic()
        self.fenced = False
        self._registered = asyncio.Event()
        self._fetch_now = asyncio.Event()
        self._polling_since: int | None = None
        """The counter of the long poll in flight (None: none is)."""
        self._behind_at: int | None = None
        """The counter this agent reported in a heartbeat answered "not up to date"
        while a long poll was held (see ``_refetch``)."""
        self._heartbeat_now = asyncio.Event()
        self._desired: dict[str, CheckSpec] = {}
        self._running_configs = RunningConfigsOutbox()
        self.leader_warming_up = False
        self._partial_set = False
        """The last configs reply was a warm-up one (not applied)."""
        health.register(COMPONENT)

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._heartbeat_loop(stop), name="heartbeat")
            tasks.create_task(self._config_loop(stop), name="configs")
            if self._settings.fence_on_disconnect:
                tasks.create_task(self._fence_loop(stop), name="fence")

    # --------------------------------------------------------------- heartbeat

    async def heartbeat_once(self) -> wire.StatusOut | None:
        """One status report; returns the reply it acted on (None: ignored as stale)."""
        send_running = self._running_sent_epoch != self.epoch or self.epoch < 0
        running = self._running() if send_running else []
        running_bytes = sum(len(digest) + 3 for digest in running)
        configs, configs_bytes = self._running_configs.take(
            self._running,
            budget_bytes=STATUS_BODY_BYTES - MIN_STATS_BYTES - running_bytes,
            max_bytes=STATUS_BODY_BYTES - MIN_STATS_BYTES,
        )
        stats_budget = STATUS_BODY_BYTES - running_bytes - configs_bytes
        body: dict[str, Any] = {
            "last_change": self.last_change if self.last_change is not None else 0,
            "labels": self._settings.labels,
            "capacity": self._settings.capacity,
            "stats": self._stats(max(MIN_STATS_BYTES, stats_budget)),
        }
        if send_running:
            body["running"] = running
        if configs is not None:
            body["running_configs"] = configs
        # A replica that hangs (frozen, partitioned) must not keep this node from reaching
        # another one before it expires: bound the heartbeat by a third of the expiry.
        timeout_s = min(self._settings.request_timeout_s, max(1.0, self.expiry_s / 3))
        try:
            reply = await self._client.status(body, timeout_s=timeout_s)
        except DispatcherProtocolError as exc:
            if self._running_configs.failed(refused=True, fields=exc.fields):
                self._heartbeat_now.set()  # the entries it named are left out: again, now
            raise
        except AgentError:
            self._running_configs.failed(refused=False)
            raise
        if reply.epoch < self.epoch:
            log.warning("stale_epoch_ignored", route="status", epoch=reply.epoch, seen=self.epoch)
            self._client.next_url()
            self._running_configs.failed(refused=False)
            return None
        if self._running_configs.answered(asked=reply.send_running_configs):
            self._heartbeat_now.set()  # a leader rebuilding from the agents: at once
        new_epoch = reply.epoch > self.epoch
        if new_epoch:
            log.info("new_epoch", epoch=reply.epoch, leader=reply.leader, previous=self.epoch)
            self.epoch = reply.epoch
        if send_running:
            self._running_sent_epoch = reply.epoch
        elif new_epoch:
            self._heartbeat_now.set()  # tell the new leader what runs here, now
        self._last_ok = self._clock.monotonic()
        self._adopt_timings(reply)
        self._registered.set()
        self._health.report(
            COMPONENT, Status.HEALTHY, f"leader {reply.leader} at {self._client.url}"
        )
        if self.fenced:
            self.fenced = False
            log.warning("unfenced", leader=reply.leader)
        self._follow(reply, new_epoch=new_epoch, reported=body["last_change"])
        return reply

    def _follow(self, reply: wire.StatusOut, *, new_epoch: bool, reported: int) -> None:
        """What a status reply asks of the config loop: a fetch at once for a new epoch
        or the end of a warm-up, one for configs that changed (``_refetch``)."""
        warmup_ended = self.leader_warming_up and not reply.warmup
        self.leader_warming_up = reply.warmup
        if new_epoch or warmup_ended or self._configs_epoch != self.epoch:
            self._fetch_now.set()
        elif not reply.is_up_to_date:
            self._refetch(reported=reported)
        else:
            self._behind_at = None

    def _refetch(self, *, reported: int) -> None:
        """A heartbeat says this node's configs changed since ``reported``. A long poll
        held meanwhile is woken by the change itself, and its answer may be on its way:
        after a change to thousands of nodes the leader answers their polls one per turn
        of its loop, so heartbeats find many agents behind for a while. Cutting such a
        poll off to ask again would cost the leader a connection and a reply per agent,
        all at once. So a held poll is cut off only when the next heartbeat finds the node
        still behind at the same counter (that poll missed the change); without one in
        flight (after a failure, say) the configs are fetched at once."""
        held = self._polling_since is not None and self._polling_since == reported
        if not held or self._behind_at == reported:
            self._fetch_now.set()
        self._behind_at = reported

    def _adopt_timings(self, reply: wire.StatusOut) -> None:
        """The leader's intervals: heartbeats, expiry, and how often to post results."""
        self.heartbeat_interval_s = reply.heartbeat_interval_s
        self.expiry_s = reply.node_expiration_timeout_s
        if self._pace_results is not None:
            self._pace_results(reply.results_interval_s)

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            self._heartbeat_now.clear()
            try:
                await self.heartbeat_once()
                failures = 0
                # A little early, by a random part: agents that started (or were told of
                # a new leader) together drift apart instead of arriving together.
                delay = self.heartbeat_interval_s * self._rng.uniform(1 - JITTER, 1.0)
                self.next_heartbeat_s = delay
            except AgentError as exc:
                failures += 1
                delay = self.retry_delay(failures, exc)
                self._report_failure(exc, failures)
            await wait_any(self._heartbeat_now, stop, timeout_s=delay, clock=self._clock)

    # ----------------------------------------------------------------- configs

    async def fetch_once(self, *, wait_s: float) -> None:
        # Once warm-up is over, the whole set at once: the leader's counter need not
        # change when warm-up ends (what it adopted was counted during the warm-up).
        full = self._configs_epoch != self.epoch or (
            self._partial_set and not self.leader_warming_up
        )
        since = None if full else self.last_change
        self._polling_since = since if wait_s > 0 else None
        try:
            reply = await self._client.configs(since=since, wait_s=wait_s)
        finally:
            self._polling_since = None
        if reply.epoch < self.epoch:
            log.warning("stale_epoch_ignored", route="configs", epoch=reply.epoch, seen=self.epoch)
            self._client.next_url()
            return
        if reply.epoch > self.epoch:
            self.epoch = reply.epoch
            self._heartbeat_now.set()
        self.last_change = reply.last_change
        self._configs_epoch = reply.epoch
        self._partial_set = reply.warmup
        self._health.report(COMPONENT, Status.HEALTHY, f"configs from {self._client.url}")
        if reply.warmup:
            # A warming-up leader knows only part of the placement: keep running what
            # runs; the set is applied once a heartbeat says warm-up is over.
            self.leader_warming_up = True
            self._running_configs.refresh(reply.configs)  # current sources, for a rebuild
            log.info("leader_warming_up", configs=len(reply.configs))
            return
        # A full set from a leader past its warm-up: whatever a heartbeat said before.
        self.leader_warming_up = False
        if len(reply.configs) > SPECS_ON_LOOP:
            # Tens of thousands of specs take a while to build: in a worker thread the
            # event loop keeps turning meanwhile.
            self._desired = await asyncio.to_thread(specs_from_wire, reply.configs)
        else:
            self._desired = specs_from_wire(reply.configs)
        self._running_configs.desired(reply.configs)
        if not self.fenced:
            self._apply(self._desired)

    async def _config_loop(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            if not self._registered.is_set():
                await wait_any(self._registered, stop, timeout_s=1.0, clock=self._clock)
                continue
            self._fetch_now.clear()
            # Shortened by a random part, for the same reason: a change wakes many agents'
            # long polls at once, and their next ones would otherwise end together.
            wait_s = round(self._settings.long_poll_s * self._rng.uniform(1 - POLL_JITTER, 1.0), 1)
            fetch = asyncio.ensure_future(self.fetch_once(wait_s=wait_s))
            interrupt = asyncio.ensure_future(
                wait_any(self._fetch_now, stop, timeout_s=3600, clock=self._clock)
            )
            try:
                await asyncio.wait({fetch, interrupt}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                interrupt.cancel()
                fetch.cancel()  # no-op when it has finished
                await asyncio.gather(fetch, interrupt, return_exceptions=True)
            if fetch.cancelled():
                continue
            exc = fetch.exception()
            if exc is None:
                failures = 0
                continue
            if isinstance(exc, UnknownNodeError):
                log.info("reregistering", reason="unknown_node")
                self._registered.clear()
                self._heartbeat_now.set()
                continue
            if not isinstance(exc, AgentError):
                raise exc
            failures += 1
            self._report_failure(exc, failures)
            # A heartbeat that gets through meanwhile (the dispatcher is back, a new
            # leader) asks for the configs at once instead of after the backoff.
            await wait_any(
                self._fetch_now, stop, timeout_s=self._backoff(failures), clock=self._clock
            )

    # ----------------------------------------------------------------- fencing

    async def _fence_loop(self, stop: asyncio.Event) -> None:
        while not await sleep_or_stop(stop, 0.25, clock=self._clock):
            since = self._last_ok if self._last_ok is not None else self._started
            if not self.fenced and self._clock.monotonic() - since > self.expiry_s:
                self.fenced = True
                self._configs_epoch = -1  # after the outage, fetch the whole set at once
                log.warning(
                    "fenced", reason="no dispatcher answer past the expiry timeout",
                    expiry_s=self.expiry_s,
                )  # fmt: skip
                self._apply({})

    # ------------------------------------------------------------------- leave

    async def leave(self) -> bool:
        """The final status, ``leaving: true``: the dispatcher re-dispatches at once."""
        body = {"last_change": -1, "leaving": True}
        for _ in range(len(self._settings.dispatcher_urls)):
            try:
                await self._client.status(body)
                return True
            except AgentError as exc:
                log.warning("leave_failed", error=str(exc))
        return False

    # ---------------------------------------------------------------- internal

    def retry_delay(self, failures: int, exc: AgentError) -> float:
        """How long to wait after the ``failures``-th heartbeat failure in a row.

        Another replica may answer (a new leader, a follower that forwards): each URL of
        a round is tried at once, and only full rounds back off.
        """
        rounds, tried = divmod(failures, self._client.url_count)
        if isinstance(exc, DispatcherUnavailable) and tried:
            return FAILOVER_DELAY_S
        return self._backoff(max(1, rounds))

    def _backoff(self, failures: int) -> float:
        cap = max(RETRY_BASE_S, self.heartbeat_interval_s)
        base = min(cap, RETRY_BASE_S * 2 ** min(failures - 1, 16))
        return float(base * self._rng.uniform(0.5, 1.5))

    def _report_failure(self, exc: AgentError, failures: int) -> None:
        if isinstance(exc, DispatcherProtocolError):
            log.error("dispatcher_reply_unusable", error=str(exc))
        elif isinstance(exc, DispatcherUnavailable):
            log.warning("dispatcher_unavailable", error=str(exc), failures=failures)
        # Degraded, never unhealthy: restarting the agent would not bring the dispatcher
        # back, and a liveness failure would restart every agent in an outage.
        prefix = "fenced: " if self.fenced else ""
        self._health.report(COMPONENT, Status.DEGRADED, f"{prefix}{str(exc)[:300]}")
