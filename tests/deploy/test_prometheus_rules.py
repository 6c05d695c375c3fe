"""The Prometheus alerting rules of ``deploy/prometheus``.

``promtool`` (Debian's ``prometheus`` package, installed by
``scripts/ensure-system-packages``; the tests fail, not skip, without it) checks the rules
file and runs its unit tests (``clusterchecks-rules.test.yaml``). The tests here also check
what promtool cannot: that every alert the issue asks for exists, is tested both firing and
not firing (and its firing case really fails when the rule never fires), carries a
severity, a summary and a description naming the labels that say where, reads only metrics
the two processes really export, and that the Operator's PrometheusRule holds the same
rules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from dispatcher.metrics import CheckGauges, DispatcherMetrics, StateGauges
from node_agent.metrics import AgentMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "clusterchecks-rules.yaml"
RULE_TESTS = RULES_DIR / "clusterchecks-rules.test.yaml"
OPERATOR_DIR = RULES_DIR / "operator"
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("standalone", "ha-lease", "ha-redis")
NAMESPACE = "clusterchecks"
SCRAPED = {
    "clusterchecks-dispatcher": 5005,
    "clusterchecks-agent": 5006,
    "clusterchecks-runner": 5006,
}
"""The workloads of every overlay whose pods serve /metrics, and on which port."""
INSTALL_HINT = "`make sysdeps` (scripts/ensure-system-packages) installs Debian's prometheus"

DESCRIPTION_LABELS = {
    "ClusterchecksNoLeader": {"job", "namespace"},
    "ClusterchecksDispatchersAbsent": set(),  # absent() has no labels to name
    "ClusterchecksStoreUnhealthy": {"instance", "pod", "job"},
    "ClusterchecksChecksDangling": {"job", "namespace"},
    "ClusterchecksCheckFailing": {"check", "digest", "node", "job"},
    "ClusterchecksNodeExpiriesSpiking": {"job", "namespace"},
    "ClusterchecksAgentLateness": {"instance", "pod", "job"},
}
"""Every alert (issue 15, point 3), and the labels its description names: which
installation, replica, check or node it is about."""
SEVERITIES = {"critical", "warning"}
METRIC = re.compile(r"\bclusterchecks_[a-z_]+")
LABEL_REF = re.compile(r"\$labels\.([a-z_]+)")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: {INSTALL_HINT}")
    return path


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd, check=False)


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _rules() -> list[dict[str, Any]]:
    groups = _load(RULES)["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def test_promtool_checks_the_rules() -> None:
    done = _run([_tool("promtool"), "check", "rules", str(RULES)])
    assert done.returncode == 0, f"promtool check rules:\n{done.stdout}{done.stderr}"
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout, done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = _run([_tool("promtool"), "test", "rules", RULE_TESTS.name], cwd=RULES_DIR)
    assert done.returncode == 0, f"promtool test rules:\n{done.stdout}{done.stderr}"
    assert "SUCCESS" in done.stdout, done.stdout


def test_the_alerts_asked_for_and_no_others() -> None:
    assert set(_alerts()) == set(DESCRIPTION_LABELS)
    assert len(_rules()) == len(DESCRIPTION_LABELS), "a recording rule or a duplicate alert"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = _load(RULE_TESTS)
    assert cases["rule_files"] == [RULES.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in cases["tests"]:
        for case in group["alert_rule_test"]:
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == set(DESCRIPTION_LABELS), "alerts never expected to fire"
    assert quiet == set(DESCRIPTION_LABELS), "alerts never expected to stay quiet"


@pytest.mark.parametrize("alert", sorted(DESCRIPTION_LABELS))
def test_a_rule_that_never_fires_fails_its_unit_test(alert: str, tmp_path: Path) -> None:
    """The unit tests hold each alert to firing: with its expression replaced by one
    that is never true, ``promtool test rules`` fails and names the alert."""
    doc = _load(RULES)
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = "vector(1) < 0"
    (tmp_path / RULES.name).write_text(yaml.safe_dump(doc), encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    done = _run([_tool("promtool"), "test", "rules", RULE_TESTS.name], cwd=tmp_path)
    report = done.stdout + done.stderr  # promtool writes the failures to stderr
    assert done.returncode != 0, report
    failed = set(re.findall(r"alertname: (\w+),", report))
    assert failed == {alert}, report


@pytest.mark.parametrize("alert", sorted(DESCRIPTION_LABELS))
def test_every_alert_has_a_severity_a_summary_and_a_description(alert: str) -> None:
    rule = _alerts()[alert]
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    description = rule["annotations"]["description"]
    assert set(LABEL_REF.findall(description)) == DESCRIPTION_LABELS[alert], description


def _exported_series_names() -> set[str]:
    """Every series name the dispatcher and the agent can serve on /metrics."""
    dispatcher = DispatcherMetrics()
    # One leader's state with one check, so the scrape-time families are all collected.
    check = CheckGauges(
        digest="d",
        check="c",
        node="n",
        ok=False,
        duration_s=0.1,
        consecutive_failures=1,
        last_run_at=0.0,
    )
    dispatcher.watch_state(lambda: StateGauges(is_leader=True, epoch=1, checks=1, results=[check]))
    names: set[str] = set()
    registries: list[CollectorRegistry] = [dispatcher.registry, AgentMetrics().registry]
    for registry in registries:
        for family in registry.collect():
            suffixes = {
                "counter": ("_total",),
                "histogram": ("_bucket", "_sum", "_count"),
            }.get(family.type, ("",))
            names.update(family.name + suffix for suffix in suffixes)
    return names


def test_the_rules_read_only_metrics_the_processes_export() -> None:
    exported = _exported_series_names()
    assert "clusterchecks_agent_scheduling_lateness_seconds_bucket" in exported
    for rule in _rules():
        used = set(METRIC.findall(rule["expr"]))
        assert used, rule["expr"]
        assert used <= exported, f"{rule['alert']}: not exported: {sorted(used - exported)}"


def _kustomize(path: Path) -> list[dict[str, Any]]:
    built = _run([_tool("kubectl"), "kustomize", str(path)])
    assert built.returncode == 0, f"kubectl kustomize {path}:\n{built.stderr}"
    return list(yaml.safe_load_all(built.stdout))


def _operator(kind: str) -> dict[str, Any]:
    found = [d for d in _kustomize(OPERATOR_DIR) if d["kind"] == kind]
    assert len(found) == 1, f"{OPERATOR_DIR}: {len(found)} {kind}"
    doc = found[0]
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["namespace"] == NAMESPACE
    return doc


def test_the_operator_directory_holds_a_rule_and_a_pod_monitor() -> None:
    kinds = sorted(d["kind"] for d in _kustomize(OPERATOR_DIR))
    assert kinds == ["PodMonitor", "PrometheusRule"]


def test_the_operator_rule_holds_the_same_groups(tmp_path: Path) -> None:
    rule = _operator("PrometheusRule")
    assert rule["spec"]["groups"] == _load(RULES)["groups"]
    # And what the Operator hands to Prometheus passes promtool as it stands.
    extracted = tmp_path / "operator-rules.yaml"
    extracted.write_text(yaml.safe_dump(rule["spec"]), encoding="utf-8")
    done = _run([_tool("promtool"), "check", "rules", str(extracted)])
    assert done.returncode == 0, f"promtool check rules (operator):\n{done.stdout}{done.stderr}"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector's verdict on a pod's labels (matchLabels and the ``In``
    expressions, all the PodMonitor uses)."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_monitor_scrapes_every_pod_of_an_overlay_on_its_metrics_port(
    overlay: str,
) -> None:
    """Every pod template (dispatcher, agents, runners) is selected, each pod on its
    own, on a named container port that serves /metrics."""
    monitor = _operator("PodMonitor")
    selector = monitor["spec"]["selector"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    workloads = [
        d
        for d in _kustomize(KUSTOMIZE_DIR / "overlays" / overlay)
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
    ]
    assert {w["metadata"]["name"] for w in workloads} >= SCRAPED.keys(), overlay
    for workload in workloads:
        name = workload["metadata"]["name"]
        template = workload["spec"]["template"]
        selected = _selects(selector, template["metadata"]["labels"])
        assert selected == (name in SCRAPED), f"{overlay}: {name} selected: {selected}"
        if not selected:
            continue
        assert workload["metadata"].get("namespace") == NAMESPACE, name
        ports = {
            p["name"]: p["containerPort"]
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
        }
        assert ports.get(endpoint["port"]) == SCRAPED[name], f"{name}: ports {ports}"


def test_the_readme_lists_every_alert() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Prometheus alerts", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(Clusterchecks\w+)` \|", section, flags=re.M))
    assert listed == set(DESCRIPTION_LABELS)
