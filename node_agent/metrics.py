"""Prometheus metrics of the node agent, named ``clusterchecks_agent_*``."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.check_ok = Gauge(
            "clusterchecks_agent_check_ok",
            "1 when the check's last run was ok, else 0.",
            ["digest", "check"],
            registry=self.registry,
        )
        self.check_duration = Gauge(
            "clusterchecks_agent_check_duration_seconds",
            "Duration of the check's last run.",
            ["digest", "check"],
            registry=self.registry,
        )
        self.runs = Counter(
            "clusterchecks_agent_check_runs",
            "Runs of each check.",
            ["digest", "check"],
            registry=self.registry,
        )
        self.failures = Counter(
            "clusterchecks_agent_check_failures",
            "Failed runs of each check.",
            ["digest", "check"],
            registry=self.registry,
        )
        self.lateness = Histogram(
            "clusterchecks_agent_scheduling_lateness_seconds",
            "How late runs start compared with their schedule.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
            registry=self.registry,
        )
        self.checks_running = Gauge(
            "clusterchecks_agent_checks_running",
            "Checks this agent runs now.",
            registry=self.registry,
        )
        self.results_dropped = Counter(
            "clusterchecks_agent_results_dropped",
            "Results dropped because too many were waiting to be sent.",
            registry=self.registry,
        )

        self.health = Gauge(
            "clusterchecks_agent_health_status",
            "Component health: 0 healthy, 1 unspecified, 2 degraded, 3 unhealthy.",
            ["component"],
            registry=self.registry,
        )

    def forget(self, digest: str, check: str) -> None:
        """Drops a stopped check's series (the agent may never run it again)."""
        for metric in (self.check_ok, self.check_duration, self.runs, self.failures):
            with contextlib.suppress(KeyError):
                metric.remove(digest, check)
