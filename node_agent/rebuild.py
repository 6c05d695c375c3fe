"""The configs of the checks this agent runs, kept for a leader that rebuilds from the
agents (API.md, status: ``send_running_configs`` / ``running_configs``).

A leader that starts with an empty or lost store asks, while it warms up, for the full
config of every check an agent runs, in the output form the agent got it in (with its
``digest`` and ``sources``), and adopts them where they run. So the agent keeps that form
of every check the dispatcher last asked it to run, and after a reply that asked, sends
those of the checks it runs in the next status; more than one status's share (the body
limit) goes over the next statuses, sent at once.

A status the dispatcher refuses does not cost the whole set: the entries its 400 names
(``running_configs.<i>``; a leader of another build may refuse one, where a current one
drops it alone) are left out and the rest sent again at once; a refusal that names no
entry drops that status's share only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import structlog

from dispatcher import wire

log = structlog.get_logger(__name__)

_ENTRY_PATH = re.compile(r"running_configs\.(\d{1,9})(?:\.|$)")
"""A 400's field path inside one entry of ``running_configs`` (API.md's error body)."""
DROPS_LOGGED = 20
"""Digests named in the warning of one refusal, at most."""


class RunningConfigsOutbox:
    def __init__(self) -> None:
        self._configs: dict[str, wire.CheckConfigOut] = {}
        self._asked = False
        self._queue: list[str] | None = None  # digests still to send; None: nothing asked
        self._in_flight: list[str] = []

    def desired(self, configs: Iterable[wire.CheckConfigOut]) -> None:
        """The set the dispatcher asks this agent to run, as it sent it."""
        self._configs = {c.digest: c for c in configs}

    def refresh(self, configs: Iterable[wire.CheckConfigOut]) -> None:
        """A warming-up leader's (partial) set: not applied, but for the checks kept here
        it is the current form (their ``sources`` may have changed since: another source
        came to hold one), and a leader that rebuilds later must get that one."""
        for config in configs:
            if config.digest in self._configs:
                self._configs[config.digest] = config

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

    def failed(self, *, refused: bool, fields: Sequence[str] = ()) -> bool:
        """The status did not get through: send the same again, unless the dispatcher
        refused it (it would refuse it again). Then the entries it named (``fields``, the
        400's paths) are left out and the rest of the share goes again; a refusal that
        names none of them drops the share only. Returns whether to send again at once
        (entries were left out: the status may get through now, and until one does the
        node's heartbeat is not counted)."""
        if self._queue is None:
            return False
        in_flight, self._in_flight = self._in_flight, []
        if not refused:
            self._queue = in_flight + self._queue
            return False
        named = {
            index
            for path in fields
            if (m := _ENTRY_PATH.match(path)) and (index := int(m.group(1))) < len(in_flight)
        }
        if named:
            left_out = [in_flight[i] for i in sorted(named)]
            log.warning(
                "running_configs_refused",
                dropped=len(left_out),
                digests=left_out[:DROPS_LOGGED],
                resent=len(in_flight) - len(left_out),
            )
            self._queue = [d for i, d in enumerate(in_flight) if i not in named] + self._queue
            return True
        log.warning("running_configs_refused", dropped=len(in_flight), left=len(self._queue))
        if not self._queue:
            self._queue = None
        return False
