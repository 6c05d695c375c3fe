"""Prometheus metrics of the dispatcher, all named ``clusterchecks_*``.

Counters and histograms are updated where things happen; gauges of the state are read
at scrape time from a snapshot function, so the hot paths pay nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(frozen=True, slots=True)
class StateGauges:
    is_leader: bool
    epoch: int
    checks: int
    dangling: int
    dangling_long: int
    checks_per_node: dict[str, int] = field(default_factory=dict)
    health: dict[str, int] = field(default_factory=dict)
    """Component name -> status (0 healthy, 1 unspecified, 2 degraded, 3 unhealthy)."""


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
            "clusterchecks_epoch", "The leadership epoch this replica knows.", value=s.epoch
        )
        yield GaugeMetricFamily(
            "clusterchecks_nodes_reporting",
            "Node agents registered with the leader.",
            value=len(s.checks_per_node) if s.is_leader else 0,
        )
        per_node = GaugeMetricFamily(
            "clusterchecks_checks_dispatched",
            "Checks dispatched to each node.",
            labels=["node"],
        )
        if s.is_leader:
            for node, count in sorted(s.checks_per_node.items()):
                per_node.add_metric([node], count)
        yield per_node
        yield GaugeMetricFamily(
            "clusterchecks_checks", "Checks held.", value=s.checks if s.is_leader else 0
        )
        yield GaugeMetricFamily(
            "clusterchecks_checks_dangling",
            "Checks on no node.",
            value=s.dangling if s.is_leader else 0,
        )
        yield GaugeMetricFamily(
            "clusterchecks_checks_dangling_long",
            "Checks dangling longer than the warning threshold.",
            value=s.dangling_long if s.is_leader else 0,
        )
        health = GaugeMetricFamily(
            "clusterchecks_health_status",
            "Component health: 0 healthy, 1 unspecified, 2 degraded, 3 unhealthy.",
            labels=["component"],
        )
        for component, status in sorted(s.health.items()):
            health.add_metric([component], status)
        yield health
