"""JSON wire types of API.md, shared by the dispatcher, node agents and tests.

A leaf module: it imports nothing of ours. Input models are strict (no type coercion,
unknown fields refused); output models describe what the dispatcher sends and feed the
OpenAPI document, so the contract has one source.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

API_PREFIX = "/v1/api/clusterchecks"
"""Where the leader-only routes of API.md live; node agents and admin commands build
their URLs from it, so the prefix is written once."""


def _name_pattern(chars: str) -> str:
    """1 to 253 of ``chars`` (a character class holding '.'), except ``.`` and ``..``:
    URL libraries and proxies resolve those path segments, so such a node or source
    could not be reached reliably. Spelled without look-ahead, so that JSON Schema
    (ECMA), pydantic-core (Rust regex) and Python's ``re`` read it alike."""
    other = chars.replace(".", "")
    return (
        rf"^(?:[{other}][{chars}]{{0,252}}|\.[{other}][{chars}]{{0,251}}|\.\.[{chars}]{{1,251}})$"
    )


NAME_PATTERN = _name_pattern("A-Za-z0-9._-")
SOURCE_NAME_PATTERN = _name_pattern("A-Za-z0-9._:-")
"""Source names may also hold ':', as the dispatcher's own sources do (``file:web.yaml``)."""
INTERNAL_SOURCE_PREFIXES = ("file:", "k8s:")
"""Sources the dispatcher feeds itself: readable through the API, not writable."""
DIGEST_PATTERN = r"^[0-9a-f]{16,64}$"
CHECK_NAME_PATTERN = r"^[a-z0-9_]{1,64}$"
COMPONENT_NAME_PATTERN = r"^[a-z0-9_]{1,64}$"
"""Health component names (``store``, ``config_sources``): snake_case, as the code names them."""
MAX_INT64 = 2**63 - 1
MAX_WAIT_S = 60.0
MAX_CLOCK_SKEW_S = 300.0
"""How far ahead of the dispatcher's clock a time an agent reports may be. Clocks of
two machines disagree a little; a time further ahead is a broken clock or a forged
value, and would outrank every later result of that check (the newest run is shown)."""
MAX_DURATION_S = 86_400.0
"""The longest a check can run: its timeout_s is at most its interval_s, at most a day."""


def _whole_float_as_int(value: Any) -> Any:
    """JSON Schema counts 5.0 as an integer (the OpenAPI document says "integer"), and
    some encoders write whole numbers so: a whole float reads as that integer. Strict
    validation still refuses every other float, and booleans."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WHOLE_FLOAT_AS_INT = BeforeValidator(_whole_float_as_int)
"""Put after the field's bounds (``Annotated[int, Field(ge=0), WHOLE_FLOAT_AS_INT]``), so
that the bounds still show in the JSON schema."""
SourceNameStr = Annotated[str, StringConstraints(pattern=SOURCE_NAME_PATTERN)]
DigestStr = Annotated[str, StringConstraints(pattern=DIGEST_PATTERN)]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=317)]
LabelValue = Annotated[str, StringConstraints(max_length=1024)]
Labels = dict[LabelKey, LabelValue]
Seconds = Annotated[float, Field(ge=0)]
UnixTime = Annotated[float, Field(ge=0)]
Duration = Annotated[float, Field(ge=0, le=MAX_DURATION_S)]
"""How long a check ran, as an agent reports it."""

# Bounds an agent's heartbeats and results are held to, shared by the full models and
# their fast paths (``FastStatusIn``, ``FastResultsIn``), so the two cannot drift apart.
Count = Annotated[int, Field(ge=0, le=MAX_INT64)]
ChangeCounter = Annotated[int, Field(ge=-1, le=MAX_INT64)]
Capacity = Annotated[int, Field(ge=1, le=1_000_000)]
RunningDigests = Annotated[list[DigestStr], Field(max_length=1_000_000)]
ErrorText = Annotated[str, StringConstraints(max_length=4096)]
RunId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ResultErrors = Annotated[list[ErrorText], Field(max_length=100)]


def _within_skew(value: float | None, now_s: float) -> bool:
    """The clock-skew rule of a reported time (``ReportedTime``; the fast path's too)."""
    return value is None or value <= now_s + MAX_CLOCK_SKEW_S


def _not_far_ahead(value: float, info: ValidationInfo) -> float:
    """Refuses a time more than ``MAX_CLOCK_SKEW_S`` ahead of now: the dispatcher's
    clock when the caller passes it (``context={"now_s": ...}``), else the system's."""
    context = info.context if isinstance(info.context, dict) else {}
    now = context.get("now_s")
    if not isinstance(now, int | float):
        now = time.time()
    if not _within_skew(value, now):
        raise ValueError(
            f"must not be more than {MAX_CLOCK_SKEW_S:g} s ahead of the dispatcher's clock "
            f"(now {now:.0f})"
        )
    return value


ReportedTime = Annotated[
    float,
    Field(
        ge=0,
        description=f"Unix seconds, at most {MAX_CLOCK_SKEW_S:g} s ahead of the dispatcher's "
        "clock.",
    ),
    AfterValidator(_not_far_ahead),
]
"""A Unix time an agent reports (a run's start): finite, not before 1970, and not
further ahead than clocks may disagree."""


class WireIn(BaseModel):
    """Strict input: exact JSON types, finite numbers, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class WireOut(BaseModel):
    """Replies. Readers ignore fields they do not know: the contract grows by adding."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# ---------------------------------------------------------------- check configs


class CheckConfigIn(WireIn):
    """A check config as a source sends it."""

    name: Annotated[str, StringConstraints(pattern=CHECK_NAME_PATTERN)] = Field(
        description="Selects the check implementation on the agent."
    )
    instances: Annotated[list[dict[str, Any]], Field(min_length=1)] = Field(
        description="A non-empty list of JSON objects, opaque to the dispatcher."
    )
    init_config: dict[str, Any] = Field(default_factory=dict)
    interval_s: Annotated[float, Field(ge=1, le=86400)] = 15.0
    timeout_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="At most interval_s; default min(10, interval_s)."
    )
    node_selector: Labels = Field(default_factory=dict)
    weight: Annotated[float, Field(gt=0, le=1e9)] = 1.0

    @field_validator("instances", "init_config")
    @classmethod
    def _json_numbers_fit(cls, value: Any) -> Any:
        _check_json_value(value)
        return value

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> CheckConfigIn:
        if self.timeout_s is not None and self.timeout_s > self.interval_s:
            raise ValueError(
                f"timeout_s ({self.timeout_s}) must not exceed interval_s ({self.interval_s})"
            )
        return self


def _check_json_value(value: Any, depth: int = 0) -> None:
    """Refuses what cannot round-trip through JSON: non-finite floats, huge integers."""
    if depth > 64:
        raise ValueError("nested deeper than 64 levels")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -(2**63) <= value <= 2**64 - 1:
            raise ValueError("integers must fit in 64 bits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("object keys must be strings")
            _check_json_value(item, depth + 1)
        return
    if isinstance(value, list):
        for item in value:
            _check_json_value(item, depth + 1)
        return
    raise ValueError(f"{type(value).__name__} is not a JSON value")


class LastResultOut(WireOut):
    run_id: str
    node: str
    ok: bool
    errors: list[str]
    started_at: float
    duration_s: float
    output: str


class CheckConfigOut(WireOut):
    """A check config with defaults filled in, its identity, sources and node."""

    name: str
    instances: list[dict[str, Any]]
    init_config: dict[str, Any]
    interval_s: float
    timeout_s: float
    node_selector: dict[str, str]
    weight: float
    digest: str
    sources: list[str]
    node: str | None


class CheckDetailOut(CheckConfigOut):
    last_result: LastResultOut | None = None
    explain: str | None = None
    uptime_24h: float | None = None
    """Share of ok runs over the last 24 h (null without a run in them)."""


class HistoryResultOut(WireOut):
    run_id: str
    node: str
    ok: bool
    errors: list[str]
    started_at: float
    duration_s: float


class DurationPercentilesOut(WireOut):
    p50: float | None
    p95: float | None
    p99: float | None


class HistoryOut(WireOut):
    """A check's recent results, newest first, its uptime per window (``1h``, ``24h``,
    ``7d``; null without a run in it) and its runs' duration percentiles."""

    digest: str
    results: list[HistoryResultOut]
    uptime: dict[str, float | None]
    duration_s: DurationPercentilesOut


class ChecksOut(WireOut):
    checks: list[CheckDetailOut]


# ------------------------------------------------------------------ node agents


class CheckStatsIn(WireIn):
    avg_execution_s: Duration
    runs: Annotated[Count, WHOLE_FLOAT_AS_INT]
    errors: Annotated[Count, WHOLE_FLOAT_AS_INT] = 0
    last_error: ErrorText | None = None
    last_run_at: ReportedTime | None = None


MAX_RUNNING_CONFIGS = 100_000
"""The most configs one status may carry in ``running_configs`` (a 4 MiB body holds
about 25,000 of the smallest; an agent with more sends them over several statuses)."""
MAX_SOURCES_PER_CHECK = 10_000


class RunningConfigIn(CheckConfigIn):
    """A check an agent runs, in the output form it got it in (``CheckConfigOut``), sent
    back to a leader that rebuilds from the agents.

    Validated one entry at a time (``StatusIn.running_configs`` takes any objects): an
    entry this leader cannot read is dropped, not the whole status, or one agent's bad
    entry would keep all of its checks from being rebuilt."""

    digest: DigestStr = Field(
        description="The digest the agent got; a leader checks it against the content."
    )
    sources: Annotated[
        list[SourceNameStr], Field(min_length=1, max_length=MAX_SOURCES_PER_CHECK)
    ] = Field(
        description="The sources that held the check: they hold it again. The dispatcher's "
        "own (file:, k8s:) are left out before any check of their names."
    )
    node: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="Ignored: the check is adopted on the node reporting it."
    )

    @field_validator("sources", mode="wrap")
    @classmethod
    def _own_sources_left_out(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """The dispatcher's own sources are never adopted (they send their whole sets at
        the start of every term), and their names need not be valid source names: the
        config-dir source names its sources after any ``*.yaml`` file (``file:my
        checks.yaml``). So they go before the names are checked; a check held by them
        alone is kept with no source (its placement may still be adopted)."""
        if isinstance(value, list) and 0 < len(value) <= MAX_SOURCES_PER_CHECK:
            own = [s for s in value if not (isinstance(s, str) and _internal(s))]
            if not own:
                return []
            value = own
        return handler(value)


def _internal(source: str) -> bool:
    return source.startswith(INTERNAL_SOURCE_PREFIXES)


def _an_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "must be a JSON object (a check config)")
    return value


RunningConfigEntry = Annotated[
    dict[str, Any],
    PlainValidator(_an_object, json_schema_input_type=RunningConfigIn | dict[str, Any]),
]
"""One entry of ``running_configs``: any object here, read as a ``RunningConfigIn`` on its
own, so that a bad one is dropped alone. The document says just that: the form an entry
should have, or any other object (dropped with a warning), so that what it declares is
what the dispatcher accepts."""


class StatusIn(WireIn):
    """A node agent's heartbeat."""

    last_change: Annotated[ChangeCounter, WHOLE_FLOAT_AS_INT] = Field(
        description="The change counter the agent last fetched; -1: heartbeat only."
    )
    labels: Labels | None = None
    capacity: Annotated[Capacity, WHOLE_FLOAT_AS_INT] | None = None
    running: RunningDigests | None = None
    # Keys that are not digests are refused: say so (pydantic lists only the pattern).
    stats: (
        Annotated[
            dict[DigestStr, CheckStatsIn], Field(json_schema_extra={"additionalProperties": False})
        ]
        | None
    ) = None
    leaving: bool = False
    running_configs: (
        Annotated[list[RunningConfigEntry], Field(max_length=MAX_RUNNING_CONFIGS)] | None
    ) = Field(
        default=None,
        description="Sent after a reply with send_running_configs true: the full config "
        "(output form) of every check the agent runs, so that a leader whose store is "
        "empty or lost rebuilds from the agents. An agent with many checks may spread "
        "them over several statuses. Each entry is read on its own: one the leader cannot "
        "read (a field it refuses, a digest that does not match the content) is dropped "
        "and logged, and the others are adopted.",
    )


class StatusOut(WireOut):
    is_up_to_date: bool
    epoch: int
    leader: str
    heartbeat_interval_s: Annotated[float, Field(gt=0)]
    node_expiration_timeout_s: Annotated[float, Field(gt=0)]
    results_interval_s: float = Field(
        default=0.0,
        ge=0,
        description="Post results at most this often (seconds; an extension): the leader "
        "paces the whole fleet's results posts to --result-posts-per-s (registered nodes "
        "over that rate, at most three heartbeat intervals). An agent whose own flush "
        "interval is longer keeps it; 0 or absent: the agent's own.",
    )
    warmup: bool = Field(
        default=False,
        description="The leader is warming up: keep running what runs; configs may be partial.",
    )
    send_running_configs: bool = Field(
        default=False,
        description="The leader rebuilds from the agents (its store was empty or lost): "
        "send running_configs in the next status.",
    )


class NodeConfigsOut(WireOut):
    last_change: int
    epoch: int
    configs: list[CheckConfigOut]
    warmup: bool = Field(
        default=False,
        description="The leader is warming up: this set may be partial; do not stop checks.",
    )


def _ok_errors_problem(ok: bool, errors: list[str]) -> str | None:
    """What is wrong with a result's ``ok`` against its ``errors`` (None: nothing)."""
    if ok and errors:
        return "ok is true but errors is not empty"
    if not ok and not any(e.strip() for e in errors):
        return "ok is false but errors holds no non-blank error"
    return None


class CheckResultIn(WireIn):
    # The rule of _ok_matches_errors, in the document too (a schema-valid result is one
    # the dispatcher accepts).
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"ok": {"const": True}, "errors": {"maxItems": 0}}},
                {
                    "properties": {
                        "ok": {"const": False},
                        "errors": {"contains": {"type": "string", "pattern": r"\S"}},
                    },
                    "required": ["errors"],
                },
            ]
        }
    )

    digest: DigestStr
    run_id: RunId
    ok: bool
    errors: ResultErrors = Field(default_factory=list)
    started_at: ReportedTime
    duration_s: Duration
    output: str = ""

    @model_validator(mode="after")
    def _ok_matches_errors(self) -> CheckResultIn:
        problem = _ok_errors_problem(self.ok, self.errors)
        if problem is not None:
            raise ValueError(problem)
        return self


class ResultsIn(WireIn):
    results: Annotated[list[CheckResultIn], Field(max_length=100_000)]


# ------------------------------------------------- the agents' bodies, fast path
#
# A fleet's heartbeats and results posts are most of what the leader validates (10,000
# agents: 1,000 heartbeats of 10 stats and 340 posts of 30 results a second), and the
# models above call Python for some of their rules: whole floats read as integers, the
# clock-skew bound of a reported time, a result's ok against its errors. Each call is
# cheap; tens per body at that rate are a tenth of the leader's CPU. The models below
# are the same fields with the same bounds, all checked in pydantic's core, and none of
# those Python rules: an integer field takes integers alone, and ``holds`` checks the
# other two afterwards, in one pass. The route validates with one of these first; a
# body it refuses, or one that does not hold, goes through the model above, which
# gives the answer (and the error) it always did. Tests hold the two paths to the same
# outcome.


class FastCheckStatsIn(WireIn):
    """``CheckStatsIn`` for the fast path."""

    avg_execution_s: Duration
    runs: Count
    errors: Count = 0
    last_error: ErrorText | None = None
    last_run_at: UnixTime | None = None


class FastStatusIn(WireIn):
    """``StatusIn`` for the fast path."""

    last_change: ChangeCounter
    labels: Labels | None = None
    capacity: Capacity | None = None
    running: RunningDigests | None = None
    stats: dict[DigestStr, FastCheckStatsIn] | None = None
    leaving: bool = False
    running_configs: (
        Annotated[list[RunningConfigEntry], Field(max_length=MAX_RUNNING_CONFIGS)] | None
    ) = None

    def holds(self, now_s: float) -> bool:
        """Whether ``StatusIn`` would take it as it is (its Python rules)."""
        return self.stats is None or all(
            _within_skew(s.last_run_at, now_s) for s in self.stats.values()
        )


class FastCheckResultIn(WireIn):
    """``CheckResultIn`` for the fast path."""

    digest: DigestStr
    run_id: RunId
    ok: bool
    errors: ResultErrors = Field(default_factory=list)
    started_at: UnixTime
    duration_s: Duration
    output: str = ""


class FastResultsIn(WireIn):
    """``ResultsIn`` for the fast path."""

    results: Annotated[list[FastCheckResultIn], Field(max_length=100_000)]

    def holds(self, now_s: float) -> bool:
        """Whether ``ResultsIn`` would take it as it is (its Python rules)."""
        return all(
            _within_skew(r.started_at, now_s) and _ok_errors_problem(r.ok, r.errors) is None
            for r in self.results
        )


class RejectedOut(WireOut):
    digest: str
    reason: Literal["not_assigned", "unknown_check"]


class ResultsOut(WireOut):
    epoch: int
    accepted: int
    rejected: list[RejectedOut]


# --------------------------------------------------------------- config sources


class SourcePutIn(WireIn):
    configs: list[CheckConfigIn]


class SourcePutOut(WireOut):
    epoch: int
    digests: list[str]
    added: int
    removed: int
    unchanged: int


class SourceGetOut(WireOut):
    epoch: int
    configs: list[CheckConfigOut]


class ChecksPostIn(WireIn):
    source: SourceNameStr
    configs: list[CheckConfigIn]


class ChecksPostOut(WireOut):
    epoch: int
    digests: list[str]


class RemovedOut(WireOut):
    epoch: int
    removed: bool


# ----------------------------------------------------------------------- admins


class NodeOut(WireOut):
    name: str
    labels: dict[str, str]
    heartbeat_age_s: float
    last_change: int
    cordoned: bool
    busyness: float
    capacity: int
    configs: list[str]


class TotalsOut(WireOut):
    nodes: int
    checks: int
    dispatched: int
    dangling: int


class StateOut(WireOut):
    leader: str | None
    is_leader: bool
    epoch: int
    warmup: bool
    nodes: list[NodeOut]
    dangling: list[str]
    totals: TotalsOut


class RebalanceIn(WireIn):
    force: bool = False
    dry_run: bool = False


class MoveOut(WireOut):
    digest: str
    check_name: str
    weight: float
    """The check's cost when it moved: its measured utilisation, or weight x mean."""
    source_node: str
    dest_node: str
    source_load_before: float | None = None
    source_load_after: float | None = None
    dest_load_before: float | None = None
    dest_load_after: float | None = None
    """Rebalance moves: relative loads (load / capacity) of both nodes around the move."""


RebalanceOutcomeName = Literal[
    "applied", "dry_run", "nothing_to_move", "gain_too_small", "warming_up"
]


class RebalanceOut(WireOut):
    applied: bool
    moves: list[MoveOut]
    """The moves made; when not applied (dry run, gain too small), the moves planned."""
    outcome: RebalanceOutcomeName | None = None
    mean_load: float | None = None
    """Mean relative load over the nodes that take checks."""
    spread_before: float | None = None
    spread_after: float | None = None
    """How far the busiest node is above the mean, as a fraction of the mean."""


class IsolateOut(WireOut):
    digest: str
    node: str
    moves: list[MoveOut]


class CheckStatusOut(WireOut):
    name: str
    node: str
    ok: bool
    errors: list[str]
    last_run_at: float
    duration_s: float
    consecutive_failures: int
    success_count: int
    failure_count: int
    last_ok_at: float | None
    uptime_24h: float | None = None
    """Share of ok runs over the last 24 h (null without a run in them)."""


class ResultsPageOut(WireOut):
    ok: bool
    errors: list[str]
    checks: dict[str, CheckStatusOut]


# ------------------------------------------------------------- health and errors

HealthStatus = Literal["unspecified", "healthy", "degraded", "unhealthy"]
ReplicaRole = Literal["unknown", "follower", "leader"]


class ReplicaOut(WireOut):
    identity: str
    role: ReplicaRole
    url: str
    """The advertise URL: where followers and agents reach this replica."""
    status: HealthStatus
    """The replica's overall health (its worst component) when it reported."""
    ready: bool
    epoch: int
    """The epoch of the term this replica leads or follows (0 while none is known)."""
    reported_at: UnixTime
    age_s: Seconds
    """Seconds since it reported, by the clock of the replica that answers."""


class ReplicasOut(WireOut):
    replicas: list[ReplicaOut]
    """Sorted by identity; a replica that stopped reporting drops out after its TTL."""


class ComponentOut(WireOut):
    status: HealthStatus
    message: str
    metadata: dict[str, Any]


class HealthOut(WireOut):
    status: HealthStatus
    components: dict[str, ComponentOut]


class ErrorDetail(WireOut):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorOut(WireOut):
    error: ErrorDetail


# ------------------------------------------------------------ export and import

EXPORT_FORMAT = "clusterchecks-export"
EXPORT_VERSION = 1
ImportModeName = Literal["replace", "merge"]
NodeNameStr = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class ExportOut(WireOut):
    """The whole desired state (``GET /export``), and what ``POST /import`` takes."""

    format: Literal["clusterchecks-export"]
    version: Literal[1]
    exported_at: UnixTime
    sources: dict[str, list[CheckConfigIn]] = Field(
        description="Every source's configs, sources sorted by name and configs by digest; "
        "the dispatcher's own sources (file:, k8s:) for reference."
    )
    cordoned: list[str]


class ImportIn(WireIn):
    """An export document (``ExportOut``), validated as a whole before anything changes."""

    format: Literal["clusterchecks-export"]
    version: Literal[1]
    exported_at: UnixTime | None = None
    # Keys that are not source names are refused: say so (pydantic lists only the pattern).
    sources: Annotated[
        dict[SourceNameStr, list[CheckConfigIn]],
        Field(json_schema_extra={"additionalProperties": False}),
    ] = Field(
        description="Each source's whole set; sources the dispatcher feeds itself (file:, "
        "k8s:) are skipped."
    )
    cordoned: list[NodeNameStr] = Field(
        default_factory=list,
        description="Nodes to cordon; one that is not registered is skipped (and reported).",
    )


class ImportCountsOut(WireOut):
    added: int
    removed: int
    unchanged: int


class ImportOut(WireOut):
    epoch: int
    mode: ImportModeName
    dry_run: bool
    """True: nothing was changed; the counts are what the import would do now."""
    sources: dict[str, ImportCountsOut]
    """Every source written, with its counts against its own set (replace: a source the
    document does not name is emptied: all removed)."""
    skipped_sources: list[str]
    """The document's sources that the dispatcher feeds itself (file:, k8s:)."""
    cordoned: list[str]
    """The document's cordoned nodes, cordoned here (registered nodes)."""
    skipped_cordons: list[str]
    """The document's cordoned nodes that are not registered here: not cordoned."""


# -------------------------------------------------------------- the dashboard

CheckStatusName = Literal["failing", "dangling", "pending", "ok"]


class RecentRunOut(WireOut):
    started_at: float
    duration_s: float
    ok: bool


class OverviewCheckOut(WireOut):
    digest: str
    name: str
    target: str
    """What the check looks at, from its first instance (a URL, host:port, a name...)."""
    status: CheckStatusName
    node: str | None
    sources: list[str]
    interval_s: float
    last_run_at: float | None
    duration_s: float | None
    consecutive_failures: int
    last_error: str | None
    """The first error of the last result, when it failed."""
    uptime_24h: float | None
    recent: list[RecentRunOut]
    """The last runs, oldest first (a sparkline's points)."""


class OverviewNodeOut(WireOut):
    name: str
    labels: dict[str, str]
    heartbeat_age_s: float
    cordoned: bool
    drained: bool
    """Cordoned and holding no check (what a finished drain leaves)."""
    busyness: float
    """Load per unit of capacity (what placement compares)."""
    capacity: int
    checks: int
    failing: int


class OverviewTotalsOut(WireOut):
    """``dispatched`` counts the checks with a node; ``failing``, ``dangling``,
    ``pending`` and ``ok`` count the checks by status (they add up to ``checks``: a
    failed check that lost its node is failing)."""

    nodes: int
    cordoned_nodes: int
    checks: int
    dispatched: int
    dangling: int
    failing: int
    pending: int
    ok: int


class SourceCountOut(WireOut):
    name: str
    checks: int


class OverviewPageOut(WireOut):
    matching: int
    """Checks that pass the filter; ``checks`` is the slice from ``offset``."""
    offset: int
    limit: int
    checks: list[OverviewCheckOut]


class OverviewOut(WireOut):
    """What the dashboard shows, in one reply: the leader and its health, the replicas,
    totals, every node, the sources, and one page of checks (failing first)."""

    generated_at: UnixTime
    leader: str | None
    is_leader: bool
    epoch: int
    warmup: bool
    auth: bool
    """Whether the dispatcher asks for tokens (the dashboard then asks for one)."""
    refresh_s: float
    """How often the dashboard asks again (``--ui-refresh``)."""
    health: HealthOut
    """The readiness of the replica that answered (the leader)."""
    replicas: list[ReplicaOut] | None
    replicas_error: str | None = None
    """Why ``replicas`` is null: the replica directory could not be read."""
    totals: OverviewTotalsOut
    nodes: list[OverviewNodeOut]
    sources: list[SourceCountOut]
    page: OverviewPageOut
