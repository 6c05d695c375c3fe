"""The configs of the checks this agent runs, kept for a leader that rebuilds from the
agents (API.md, status: ``send_running_configs`` / ``running_configs``).

A leader that starts with an empty or lost store asks, while it warms up, for the full
config of every check an agent runs, in the output form the agent got it in (with its
``digest`` and ``sources``), and adopts them where they run. So the agent keeps that form
of every check the dispatcher last asked it to run, and after a reply that asked, sends
those of the checks it runs in the next status; more than one status's share (the body
limit) goes over the next statuses, sent at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
import structlog

from dispatcher import wire

log = structlog.get_logger(__name__)


class RunningConfigsOutbox:
    def __init__(self) -> None:
        self._configs: dict[str, wire.CheckConfigOut] = {}
        self._asked = False
        self._queue: list[str] | None = None  # digests still to send; None: nothing asked
        self._in_flight: list[str] = []

    def desired(self, configs: Iterable[wire.CheckConfigOut]) -> None:
        """The set the dispatcher asks this agent to run, as it sent it."""
        self._configs = {c.digest: c for c in configs}

    def take(
        self, running: Callable[[], list[str]], *, budget_bytes: int, max_bytes: int
    ) -> tuple[list[dict[str, Any]] | None, int]:
        """The configs for the next status (None: none to send) and their JSON size:
        as many as fit in ``budget_bytes``, in the order of ``running``. A config larger
        than ``max_bytes`` (a status's whole share) can never be sent: it is left out.
        Call ``answered`` or ``failed`` once the status has an answer."""
        if self._asked:
            self._asked = False
            self._queue = [d for d in running() if d in self._configs]
        if self._queue is None:
            return None, 0
        items: list[dict[str, Any]] = []
        size = 0
        while self._queue:
            digest = self._queue[0]
            config = self._configs.get(digest)
            item = config.model_dump(mode="json") if config is not None else None
            item_bytes = len(orjson.dumps(item)) + 1 if item is not None else 0
            if item is None or item_bytes > max_bytes:
                self._queue.pop(0)
                if item is not None:
                    log.warning("running_config_too_large", digest=digest, bytes=item_bytes)
                continue
            if size + item_bytes > budget_bytes:
                break  # the next status takes it
            items.append(item)
            size += item_bytes
            self._in_flight.append(self._queue.pop(0))
        return items, size

    def answered(self, *, asked: bool) -> bool:
        """The status got a reply (``asked``: its ``send_running_configs``); returns
        whether the next status should go at once (asked, or more to send)."""
        if self._queue is not None:
            log.info("running_configs_sent", count=len(self._in_flight), left=len(self._queue))
            self._in_flight = []
            if not self._queue:
                self._queue = None
        if asked and self._queue is None:
            self._asked = True  # a sending under way goes on: it holds all that runs
        return self._asked or self._queue is not None

    def failed(self, *, refused: bool) -> None:
        """The status did not get through: send the same again, unless the dispatcher
        refused it (a leader that cannot read them would refuse them again)."""
        if self._queue is None:
            return
        if refused:
            log.warning("running_configs_refused", dropped=len(self._in_flight))
            self._queue = None
        else:
            self._queue = self._in_flight + self._queue
        self._in_flight = []
