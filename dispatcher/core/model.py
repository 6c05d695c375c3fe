"""Check configs, their identity, stats and results: plain values, no behaviour beyond
what derives from them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, NewType

import orjson

Digest = NewType("Digest", str)
NodeName = NewType("NodeName", str)
SourceName = NewType("SourceName", str)

JsonObject = dict[str, Any]

DIGEST_HEX_CHARS = 32


@dataclass(frozen=True, slots=True, eq=False)
class CheckConfig:
    """A validated check config with its defaults filled in (see API.md, Check config).

    ``weight`` is not part of the identity: it is a cost hint that a source may change
    without the check being a different check.
    """

    name: str
    instances: tuple[JsonObject, ...]
    init_config: JsonObject
    interval_s: float
    timeout_s: float
    node_selector: Mapping[str, str]
    weight: float
    digest: Digest

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a node with these labels may run this check."""
        return all(labels.get(key) == value for key, value in self.node_selector.items())

    def content(self) -> JsonObject:
        """The config as a source sends it, defaults written out (without its digest):
        what the store, the export and the API's output form all start from."""
        return {
            "name": self.name,
            "instances": list(self.instances),
            "init_config": self.init_config,
            "interval_s": self.interval_s,
            "timeout_s": self.timeout_s,
            "node_selector": dict(self.node_selector),
            "weight": self.weight,
        }


def compute_digest(
    *,
    name: str,
    instances: Sequence[JsonObject],
    init_config: JsonObject,
    interval_s: float,
    timeout_s: float,
    node_selector: Mapping[str, str],
) -> Digest:
    """A stable hash of the fields that make a check what it is.

    Keys are sorted at every depth and durations normalised to floats, so the same
    content gives the same digest on every replica and after restarts.
    """
    payload = orjson.dumps(
        {
            "name": name,
            "instances": list(instances),
            "init_config": init_config,
            "interval_s": float(interval_s),
            "timeout_s": float(timeout_s),
            "node_selector": dict(node_selector),
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return Digest(hashlib.sha256(payload).hexdigest()[:DIGEST_HEX_CHARS])


def default_timeout_s(interval_s: float) -> float:
    return min(10.0, float(interval_s))


def make_config(
    *,
    name: str,
    instances: Sequence[JsonObject],
    init_config: JsonObject | None = None,
    interval_s: float = 15.0,
    timeout_s: float | None = None,
    node_selector: Mapping[str, str] | None = None,
    weight: float = 1.0,
) -> CheckConfig:
    """Builds a config from already validated fields (the wire layer validates)."""
    init = dict(init_config or {})
    selector = dict(node_selector or {})
    timeout = default_timeout_s(interval_s) if timeout_s is None else float(timeout_s)
    digest = compute_digest(
        name=name,
        instances=instances,
        init_config=init,
        interval_s=interval_s,
        timeout_s=timeout,
        node_selector=selector,
    )
    return CheckConfig(
        name=name,
        instances=tuple(dict(i) for i in instances),
        init_config=init,
        interval_s=float(interval_s),
        timeout_s=timeout,
        node_selector=selector,
        weight=float(weight),
        digest=digest,
    )


class CheckStats(NamedTuple):
    """What an agent measured of one check, as sent in its heartbeat.

    Named tuples rather than frozen dataclasses (this and ``CheckResult``), as
    immutable: a fleet of 10,000 agents sends 100,000 of each every few seconds, and a
    frozen dataclass took four times as long to build (each field set through
    ``object.__setattr__``)."""

    avg_execution_s: float
    runs: int
    errors: int
    last_error: str | None = None
    last_run_at: float | None = None


class CheckResult(NamedTuple):
    """One run of one check, as an agent reported it."""

    digest: Digest
    run_id: str
    ok: bool
    errors: tuple[str, ...]
    started_at: float
    duration_s: float
    output: str = ""


ResultKept = tuple[Digest, str, bool, tuple[str, ...], float, float, str]
"""A ``CheckResult``'s fields as a ``ResultSummary`` keeps them: a plain tuple, which the
garbage collector stops tracking, unlike a named tuple (see ``history.Kept``): at
10,000 agents a new last result for 10,000 checks a second, each kept until the next."""
_RESULT_OK: Final = 2  # CheckResult.ok (Final: mypy then knows the field's type)


@dataclass(slots=True)
class ResultSummary:
    """The last result of a check and its running counts (the status page)."""

    node: NodeName
    kept: ResultKept
    """The last result's fields (``last`` makes it a ``CheckResult`` again)."""
    ordered_at: float
    """When ``last`` ran as far as the dispatcher can vouch: its ``started_at``, but never
    later than the wall time it arrived at. Results are ordered by it, so a result dated
    in the future cannot hide the ones after it."""
    consecutive_failures: int = 0
    success_count: int = 0
    failure_count: int = 0
    last_ok_at: float | None = None

    @property
    def last(self) -> CheckResult:
        """The check's last result."""
        return CheckResult(*self.kept)

    @property
    def last_ok(self) -> bool:
        """Whether the last run succeeded (without making the result again)."""
        return self.kept[_RESULT_OK]
