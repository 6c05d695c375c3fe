"""End to end, real processes: the /metrics of a dispatcher and of a node agent are
valid Prometheus text (``promtool check metrics``), hold the expected families, and a
real Prometheus server scrapes both.

One dispatcher, one agent, two http checks against a local target (one answering 200,
one 503). promtool and prometheus come from Debian's ``prometheus`` package
(scripts/ensure-system-packages); without them the tests fail, they do not skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.e2e.harness import API, Target, call, wait_until
from tests.processes import Proc, agent_argv, dispatcher_argv, free_port, wait_http_ok

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

HEARTBEAT_S = 0.5
EXPIRY_S = 3.0
AGENT = "agent-metrics"
SOURCE = "metrics-e2e"
OK_PATH = "/ok"
FAIL_PATH = "/fail"
SCRAPE_WAIT_S = 30.0

INSTALL_HINT = "install Debian's prometheus package (scripts/ensure-system-packages)"
ALERT_RULES = Path(__file__).resolve().parents[2] / "deploy/prometheus/clusterchecks-rules.yaml"


def tool(name: str) -> str:
    """The path of a command from the prometheus package; fails (no skip) without it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: {INSTALL_HINT}")
    return path


# --------------------------------------------------------------------------- stack


@dataclass
class Stack:
    root: Path
    target: Target
    dispatcher: Proc
    dispatcher_port: int
    agent: Proc
    agent_port: int
    digests: dict[str, str] = field(default_factory=dict)
    """OK_PATH / FAIL_PATH -> digest"""
    extra: list[Proc] = field(default_factory=list)
    """Other processes (Prometheus) whose logs belong in failure reports."""

    @property
    def dispatcher_url(self) -> str:
        return f"http://127.0.0.1:{self.dispatcher_port}"

    @property
    def agent_url(self) -> str:
        return f"http://127.0.0.1:{self.agent_port}"

    def results(self) -> dict[str, Any]:
        reply = call("GET", f"{self.dispatcher_url}{API}/results", timeout_s=5)
        assert reply.status == 200, f"results: {reply}\n{self.logs()}"
        checks: dict[str, Any] = reply.body["checks"]
        return checks

    def logs(self, chars: int = 3000) -> str:
        """The tail of every process's log, without the per-request lines."""
        parts = []
        for proc in (self.dispatcher, self.agent, *self.extra):
            lines = [line for line in proc.output().splitlines() if '"event":"request"' not in line]
            parts.append(f"--- {proc.name} log tail ---\n" + "\n".join(lines)[-chars:])
        return "\n".join(parts)


def http_check(url: str) -> dict[str, Any]:
    return {"name": "http", "instances": [{"url": url}], "interval_s": 1}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("metrics")
    target = Target().start()
    target.failing.add(FAIL_PATH)
    dispatcher_port, agent_port = free_port(), free_port()
    timings = ("--heartbeat-interval", str(HEARTBEAT_S))
    dispatcher = Proc(
        "dispatcher",
        dispatcher_argv(dispatcher_port, *timings, "--node-expiration-timeout", str(EXPIRY_S)),
        root / "dispatcher.log",
    )
    agent = Proc(
        AGENT,
        agent_argv(agent_port, AGENT, f"http://127.0.0.1:{dispatcher_port}", *timings),
        root / "agent.log",
    )
    s = Stack(root, target, dispatcher, dispatcher_port, agent, agent_port)
    try:
        dispatcher.start()
        wait_http_ok(f"{s.dispatcher_url}/healthz", timeout_s=30, proc=dispatcher)
        agent.start()
        wait_http_ok(f"{s.agent_url}/healthz", timeout_s=30, proc=agent)

        def registered() -> bool:
            state = call("GET", f"{s.dispatcher_url}{API}", timeout_s=5).body
            return AGENT in {n["name"] for n in state["nodes"]}

        wait_until(registered, timeout_s=15, what=f"{AGENT} registered", context=s.logs)

        paths = (OK_PATH, FAIL_PATH)
        body = {"configs": [http_check(target.url(p)) for p in paths]}
        reply = call("PUT", f"{s.dispatcher_url}{API}/sources/{SOURCE}", body)
        assert reply.status == 200, f"PUT source: {reply}\n{s.logs()}"
        s.digests = dict(zip(paths, reply.body["digests"], strict=True))

        def reported() -> bool:
            results = s.results()
            return all(d in results for d in s.digests.values())

        wait_until(reported, timeout_s=20, what="results of both checks", context=s.logs)
        yield s
    finally:
        agent.stop(timeout_s=10)
        dispatcher.stop(timeout_s=10)
        target.stop()


# ----------------------------------------------------------------------- expositions


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200, f"{url}: {response.status}"
        content_type = response.headers.get("Content-Type", "")
        assert content_type.startswith("text/plain"), f"{url}: Content-Type {content_type!r}"
        text: str = response.read().decode()
        return text


def promtool_check(text: str, what: str, context: str) -> None:
    """``promtool check metrics`` on the exposition: exit 0 and nothing to say."""
    done = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    output = (done.stdout + done.stderr).decode(errors="replace").strip()
    report = (
        f"promtool check metrics on the {what} exposition: exit {done.returncode}\n"
        f"{output}\n--- exposition ---\n{text}\n{context}"
    )
    assert done.returncode == 0, report
    assert not output, report


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    samples: list[Sample]

    def values(self, suffix: str = "", **labels: str) -> list[float]:
        """Values of the samples named ``name + suffix`` whose labels include ``labels``."""
        return [
            s.value
            for s in self.samples
            if s.name == self.name + suffix and labels.items() <= s.labels.items()
        ]

    def label_values(self, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if label in s.labels}


def families(text: str) -> dict[str, Family]:
    """Family name (counters without ``_total``) -> its type and samples."""
    return {
        f.name: Family(f.name, f.type, list(f.samples))
        for f in text_string_to_metric_families(text)
    }


class Expect:
    """Collects every problem with an exposition, so one run names all of them."""

    def __init__(self, found: dict[str, Family]) -> None:
        self.found = found
        self.missing: list[str] = []
        self.problems: list[str] = []

    def family(self, name: str, kind: str) -> Family | None:
        family = self.found.get(name)
        if family is None:
            self.missing.append(name)
            return None
        if family.type != kind:
            self.problems.append(f"{name} is a {family.type}, not a {kind}")
        return family

    def value(self, name: str, kind: str, wanted: float, **labels: str) -> None:
        family = self.family(name, kind)
        if family is None:
            return
        values = family.values(**labels)
        if values != [wanted]:
            self.problems.append(f"{name}{labels or ''}: {values}, wanted [{wanted}]")

    def labelled(self, name: str, kind: str, *labels: str) -> Family | None:
        """A family with samples, every one of them with these labels."""
        family = self.family(name, kind)
        if family is None:
            return None
        if not family.samples:
            self.problems.append(f"{name} has no samples")
        for sample in family.samples:
            absent = [label for label in labels if label not in sample.labels]
            if absent:
                self.problems.append(f"{name}: samples without the labels {absent}")
                break
        return family

    def components(self, name: str, wanted: set[str]) -> None:
        family = self.labelled(name, "gauge", "component")
        if family is None:
            return
        absent = wanted - family.label_values("component")
        if absent:
            self.problems.append(f"{name} lacks components {sorted(absent)}")

    def per_check(
        self, name: str, kind: str, digests: dict[str, str], *labels: str
    ) -> Family | None:
        """A family with a sample for each of these checks (path -> digest)."""
        family = self.labelled(name, kind, "digest", *labels)
        if family is None:
            return None
        suffix = "_total" if kind == "counter" else ""
        for path, digest in digests.items():
            if not family.values(suffix, digest=digest):
                self.problems.append(f"{name}: no sample for the {path} check ({digest})")
        return family

    def report(self, what: str, text: str, context: str) -> None:
        lines = []
        if self.missing:
            lines.append(f"missing families: {', '.join(self.missing)}")
        lines.extend(self.problems)
        assert not lines, (
            f"{what} /metrics:\n  "
            + "\n  ".join(lines)
            + f"\n--- exposition ---\n{text}\n{context}"
        )


# ----------------------------------------------------------------------------- tests


def test_dispatcher_metrics_pass_promtool(stack: Stack) -> None:
    text = scrape(f"{stack.dispatcher_url}/metrics")
    promtool_check(text, "dispatcher", stack.logs())


def test_agent_metrics_pass_promtool(stack: Stack) -> None:
    text = scrape(f"{stack.agent_url}/metrics")
    promtool_check(text, "agent", stack.logs())


def test_dispatcher_metric_families(stack: Stack) -> None:
    text = scrape(f"{stack.dispatcher_url}/metrics")
    e = Expect(families(text))
    ok, failing = stack.digests[OK_PATH], stack.digests[FAIL_PATH]

    e.value("clusterchecks_leader", "gauge", 1)
    e.family("clusterchecks_epoch", "gauge")
    e.value("clusterchecks_nodes_reporting", "gauge", 1)
    e.value("clusterchecks_checks_dispatched", "gauge", 2, node=AGENT)
    e.value("clusterchecks_checks", "gauge", 2)
    e.value("clusterchecks_checks_dangling", "gauge", 0)
    e.value("clusterchecks_checks_dangling_long", "gauge", 0)
    e.family("clusterchecks_dispatch_decisions", "counter")
    e.family("clusterchecks_rebalance_moves", "counter")
    e.family("clusterchecks_node_expiries", "counter")
    e.family("clusterchecks_dispatch_tick_duration_seconds", "histogram")
    e.labelled("clusterchecks_http_requests", "counter", "route")
    e.family("clusterchecks_http_request_duration_seconds", "histogram")
    e.components(
        "clusterchecks_health_status",
        {"api", "election", "store", "dispatch_loop", "config_sources"},
    )
    labels = ("check", "node")
    check_ok = e.per_check("clusterchecks_check_ok", "gauge", stack.digests, *labels)
    if check_ok is not None:
        for path, digest, wanted in ((OK_PATH, ok, 1.0), (FAIL_PATH, failing, 0.0)):
            values = check_ok.values(digest=digest, check="http", node=AGENT)
            if values != [wanted]:
                e.problems.append(
                    f"clusterchecks_check_ok for {path} (digest {digest}, check http, "
                    f"node {AGENT}): {values}, wanted [{wanted}]"
                )
    failures = e.per_check(
        "clusterchecks_check_consecutive_failures", "gauge", stack.digests, *labels
    )
    if failures is not None:
        in_a_row = {path: failures.values(digest=d) for path, d in stack.digests.items()}
        if in_a_row[OK_PATH] != [0.0] or not in_a_row[FAIL_PATH] or in_a_row[FAIL_PATH][0] < 1:
            e.problems.append(
                f"clusterchecks_check_consecutive_failures: {in_a_row}, wanted 0 for "
                f"{OK_PATH} and at least 1 for {FAIL_PATH}"
            )
    for name in (
        "clusterchecks_check_duration_seconds",
        "clusterchecks_check_last_run_timestamp_seconds",
    ):
        e.per_check(name, "gauge", stack.digests, *labels)
    e.report("dispatcher", text, stack.logs())


def test_agent_metric_families(stack: Stack) -> None:
    text = scrape(f"{stack.agent_url}/metrics")
    e = Expect(families(text))
    ok, failing = stack.digests[OK_PATH], stack.digests[FAIL_PATH]

    check_ok = e.per_check("clusterchecks_agent_check_ok", "gauge", stack.digests, "check")
    if check_ok is not None:
        for path, digest, wanted in ((OK_PATH, ok, 1.0), (FAIL_PATH, failing, 0.0)):
            values = check_ok.values(digest=digest, check="http")
            if values != [wanted]:
                e.problems.append(
                    f"clusterchecks_agent_check_ok for {path}: {values}, wanted [{wanted}]"
                )
    e.per_check("clusterchecks_agent_check_duration_seconds", "gauge", stack.digests, "check")
    e.per_check("clusterchecks_agent_check_runs", "counter", stack.digests, "check")
    e.per_check("clusterchecks_agent_check_failures", "counter", {FAIL_PATH: failing}, "check")
    e.family("clusterchecks_agent_scheduling_lateness_seconds", "histogram")
    e.value("clusterchecks_agent_checks_running", "gauge", 2)
    e.components(
        "clusterchecks_agent_health_status", {"dispatcher_link", "runners", "report_server"}
    )
    e.report("agent", text, stack.logs())


# ------------------------------------------------------------------------ prometheus


@dataclass
class Prometheus:
    proc: Proc
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.base}{path}{query}", timeout=5) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return {"status": "error", "error": repr(exc)}

    def vector(self, query: str) -> list[dict[str, Any]] | None:
        """The samples of an instant query, or None when it did not answer a vector."""
        body = self.api("/api/v1/query", query=query)
        if body.get("status") != "success" or body["data"]["resultType"] != "vector":
            return None
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets(self) -> str:
        """The scrape targets' health and last errors, for failure reports."""
        body = self.api("/api/v1/targets")
        if body.get("status") != "success":
            return f"targets: {body}"
        return "\n".join(
            f"{t['labels'].get('job')} {t['scrapeUrl']}: {t['health']} {t['lastError']!r}"
            for t in body["data"]["activeTargets"]
        )


@pytest.fixture(scope="module")
def prometheus(stack: Stack) -> Iterator[Prometheus]:
    binary = tool("prometheus")
    root = stack.root / "prometheus"
    root.mkdir()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        # The alerting rules of deploy/prometheus, as a user loads them.
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            }
            for job, port in (("dispatcher", stack.dispatcher_port), ("agent", stack.agent_port))
        ],
    }
    config_path = root / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = free_port()
    proc = Proc(
        "prometheus",
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        root / "prometheus.log",
    )
    stack.extra.append(proc)
    try:
        proc.start()
        wait_http_ok(f"http://127.0.0.1:{port}/-/ready", timeout_s=20, proc=proc)
        yield Prometheus(proc, port)
    finally:
        proc.stop(timeout_s=10)
        stack.extra.remove(proc)


def test_prometheus_scrapes_both(stack: Stack, prometheus: Prometheus) -> None:
    def context() -> str:
        return f"--- prometheus targets ---\n{prometheus.targets()}\n{stack.logs()}"

    def equals(query: str, wanted: str, **labels: str) -> list[dict[str, Any]] | None:
        result = prometheus.vector(query)
        if result is None:
            return None
        matching = [r for r in result if labels.items() <= r["metric"].items()]
        return matching if [r["value"][1] for r in matching] == [wanted] else None

    for query, wanted, labels in (
        ("clusterchecks_nodes_reporting", "1", {"job": "dispatcher"}),
        ("clusterchecks_agent_checks_running", "2", {"job": "agent"}),
        ("up", "1", {"job": "dispatcher"}),
        ("up", "1", {"job": "agent"}),
    ):
        wait_until(
            lambda: equals(query, wanted, **labels),  # noqa: B023 (called at once)
            timeout_s=SCRAPE_WAIT_S,
            what=f"Prometheus: {query}{labels} == {wanted}",
            context=context,
            interval_s=0.2,
        )
    # Both scraped from the targets configured, not from anything else on the machine.
    up = prometheus.vector("up") or []
    instances = {r["metric"]["job"]: r["metric"]["instance"] for r in up}
    assert instances == {
        "dispatcher": f"127.0.0.1:{stack.dispatcher_port}",
        "agent": f"127.0.0.1:{stack.agent_port}",
    }, f"{up}\n{context()}"


def test_prometheus_alerts_on_the_failing_check_only(stack: Stack, prometheus: Prometheus) -> None:
    """deploy/prometheus's rules, loaded by a real Prometheus: the check failing on
    purpose fires ClusterchecksCheckFailing (3 runs in a row, 1 s apart), naming its check,
    digest and node; the ok check does not, and no other alert fires."""
    failing = stack.digests[FAIL_PATH]

    def alerts() -> list[dict[str, Any]]:
        body = prometheus.api("/api/v1/alerts")
        found: list[dict[str, Any]] = body["data"]["alerts"] if "data" in body else []
        return found

    def check_failing() -> list[dict[str, Any]] | None:
        firing = [
            a
            for a in alerts()
            if a["labels"]["alertname"] == "ClusterchecksCheckFailing" and a["state"] == "firing"
        ]
        return firing or None

    firing, _ = wait_until(
        check_failing,
        timeout_s=SCRAPE_WAIT_S,
        what="Prometheus: ClusterchecksCheckFailing firing",
        context=lambda: f"{prometheus.api('/api/v1/rules')}\n{stack.logs()}",
        interval_s=0.2,
    )
    assert [a["labels"] for a in firing] == [
        {
            "alertname": "ClusterchecksCheckFailing",
            "severity": "warning",
            "job": "dispatcher",
            "digest": failing,
            "check": "http",
            "node": AGENT,
        }
    ], firing
    others = [
        a
        for a in alerts()
        if a["state"] == "firing" and a["labels"]["alertname"] != "ClusterchecksCheckFailing"
    ]
    assert others == [], others
