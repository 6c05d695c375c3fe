"""Prometheus metrics of the dispatcher, all named ``clusterchecks_*``.

Counters and histograms are updated where things happen; gauges of the state are read
at scrape time from a snapshot function, so the hot paths pay nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(frozen=True, slots=True)
class CheckGauges:
    """The last result of one check, as the leader holds it."""

    digest: str
    check: str
    node: str
    ok: bool
    duration_s: float
    consecutive_failures: int
    last_run_at: float


@dataclass(frozen=True, slots=True)
class StateGauges:
    """What the state gauges show. The snapshot function gives a replica that does not
    lead (or has just lost its lease) only ``is_leader`` false and the known epoch, so
    its state gauges read zero and its per-node and per-check series vanish."""

    is_leader: bool
    epoch: int
    checks: int = 0
    dangling: int = 0
    dangling_long: int = 0
    checks_per_node: dict[str, int] = field(default_factory=dict)
    results: list[CheckGauges] = field(default_factory=list)


class DispatcherMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "clusterchecks_dispatch_decisions",
            "Dispatch decisions by reason (new_check, node_expired, drained, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.expiries = Counter(
            "clusterchecks_node_expiries",
            "Nodes removed because their heartbeat was too old.",
            registry=self.registry,
        )
        self.tick_seconds = Histogram(
            "clusterchecks_dispatch_tick_duration_seconds",
            "Time spent in one expiry and re-dispatch tick.",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
            registry=self.registry,
        )
        self.rebalance_moves = Counter(
            "clusterchecks_rebalance_moves",
            "Checks moved between live nodes, by trigger (rebalance, drain, isolate).",
            ["trigger"],
            registry=self.registry,
        )
        self.rebalances = Counter(
            "clusterchecks_rebalances",
            "Rebalance runs by trigger (api, periodic) and outcome (applied, dry_run, "
            "nothing_to_move, gain_too_small, warming_up).",
            ["trigger", "outcome"],
            registry=self.registry,
        )
        self.rebalance_seconds = Histogram(
            "clusterchecks_rebalance_duration_seconds",
            "Time to plan and apply one rebalance.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.health = Gauge(
            "clusterchecks_health_status",
            "Component health: 0 healthy, 1 unspecified, 2 degraded, 3 unhealthy.",
            ["component"],
            registry=self.registry,
        )
        self.requests = Counter(
            "clusterchecks_http_requests",
            "HTTP requests served, by route name, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "clusterchecks_http_request_duration_seconds",
            "HTTP request latency by route name.",
            ["route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 60.0),
            registry=self.registry,
        )

        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Counts a request; label children are cached (a labels() lookup per request
        costs more than the rest of the accounting)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(route=route, method=method, status=str(status)),
                self.request_seconds.labels(route=route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def watch_state(self, snapshot: Callable[[], StateGauges]) -> None:
        self.registry.register(_StateCollector(snapshot))


class _StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], StateGauges]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        yield GaugeMetricFamily(
            "clusterchecks_leader", "1 when this replica is the leader.", value=int(s.is_leader)
        )
        yield GaugeMetricFamily(
            "clusterchecks_epoch",
            "The epoch of the current leadership term as this replica knows it (0: none).",
            value=s.epoch,
        )
        yield GaugeMetricFamily(
            "clusterchecks_nodes_reporting",
            "Node agents registered with the leader.",
            value=len(s.checks_per_node),
        )
        per_node = GaugeMetricFamily(
            "clusterchecks_checks_dispatched", "Checks dispatched to each node.", labels=["node"]
        )
        for node, count in sorted(s.checks_per_node.items()):
            per_node.add_metric([node], count)
        yield per_node
        yield GaugeMetricFamily("clusterchecks_checks", "Checks held.", value=s.checks)
        yield GaugeMetricFamily(
            "clusterchecks_checks_dangling", "Checks on no node.", value=s.dangling
        )
        yield GaugeMetricFamily(
            "clusterchecks_checks_dangling_long",
            "Checks dangling longer than the warning threshold.",
            value=s.dangling_long,
        )
        yield from _check_families(s.results)


def _check_families(results: list[CheckGauges]) -> Iterator[Metric]:
    labels = ["digest", "check", "node"]
    ok = GaugeMetricFamily(
        "clusterchecks_check_ok", "1 when the check's last result was ok.", labels=labels
    )
    duration = GaugeMetricFamily(
        "clusterchecks_check_duration_seconds",
        "Duration of the check's last run.",
        labels=labels,
    )
    failures = GaugeMetricFamily(
        "clusterchecks_check_consecutive_failures",
        "Failed runs in a row, up to the last result.",
        labels=labels,
    )
    last_run = GaugeMetricFamily(
        "clusterchecks_check_last_run_timestamp_seconds",
        "When the check's last reported run started (Unix seconds).",
        labels=labels,
    )
    for r in results:
        key = [r.digest, r.check, r.node]
        ok.add_metric(key, int(r.ok))
        duration.add_metric(key, r.duration_s)
        failures.add_metric(key, r.consecutive_failures)
        last_run.add_metric(key, r.last_run_at)
    yield from (ok, duration, failures, last_run)
