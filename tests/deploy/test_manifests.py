"""The Kubernetes manifests of ``deploy/kubernetes``, built as a user builds them.

Every overlay is built with the ``kubectl`` on PATH (``kubectl kustomize``; the test fails,
not skips, without one: ``scripts/ensure-system-packages`` installs it) and validated
offline by ``kubernetes-validate --strict`` against the schemas it bundles, oldest and
newest, so an unknown or misspelt field fails. The tests then check what the schemas
cannot: the dispatcher's mode per overlay (run through its own command line, with the
image's environment under the pod's), the standalone dispatcher's persistent volume and
that it never runs twice, probes on the ports the processes serve, security contexts,
resources, least-privilege RBAC, tokens from a Secret, selectors that select, and
environment variables that the commands really read.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from dispatcher.cli import serve as dispatcher_serve
from dispatcher.cli import settings_from_flags
from dispatcher.common.cli import ENV_PREFIX
from dispatcher.settings import ElectionSettings
from node_agent.cli import main as agent_main
from tests.deploy.dockerfile import runtime_env, runtime_user

Doc = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("standalone", "ha-lease", "ha-redis")
SCHEMA_VERSIONS = ("1.25.0", "1.37.0")
"""The oldest and the newest Kubernetes versions kubernetes-validate bundles schemas for."""

NAMESPACE = "clusterchecks"
DISPATCHER = "clusterchecks-dispatcher"
COMMAND_PORTS = {"clusterchecks-dispatcher": 5005, "clusterchecks-agent": 5006}
"""Our two commands, by ``args[0]``, and the port each serves health and metrics on."""
WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
SOURCE_RULES = {
    ("", "services"): {"get", "list", "watch"},
    ("", "configmaps"): {"get", "list", "watch"},
    ("", "events"): {"create"},
}
"""The Kubernetes source, cluster-wide: it watches every namespace by default."""
LEASE_RULES = {("coordination.k8s.io", "leases"): {"get", "create", "update", "watch"}}
DATA_DIR = "/var/lib/clusterchecks"
DISPATCHER_MODE: dict[str, dict[str, str | None]] = {
    "standalone": {
        "CLUSTERCHECKS_ELECTION": "standalone",
        "CLUSTERCHECKS_STORE": "sqlite",
        "CLUSTERCHECKS_DATA_DIR": DATA_DIR,
        "CLUSTERCHECKS_WARMUP_DURATION": None,
        "CLUSTERCHECKS_REDIS_URL": None,
    },
    "ha-lease": {
        "CLUSTERCHECKS_ELECTION": "kubernetes",
        "CLUSTERCHECKS_STORE": "memory",
        "CLUSTERCHECKS_DATA_DIR": None,
        "CLUSTERCHECKS_WARMUP_DURATION": "30",
        "CLUSTERCHECKS_REDIS_URL": None,
    },
    "ha-redis": {
        "CLUSTERCHECKS_ELECTION": "redis",
        "CLUSTERCHECKS_STORE": "redis",
        "CLUSTERCHECKS_DATA_DIR": None,
        "CLUSTERCHECKS_WARMUP_DURATION": None,
        "CLUSTERCHECKS_REDIS_URL": "redis://:$(REDIS_PASSWORD)@clusterchecks-redis:6379/0",
    },
}
MODE_ENV = {name for mode in DISPATCHER_MODE.values() for name in mode} | {"REDIS_PASSWORD"}
"""What the dispatcher's pod templates may differ in, besides the standalone data volume."""
REPLICAS = {"standalone": 1, "ha-lease": 3, "ha-redis": 3}
DISPATCHER_KIND = {"standalone": "StatefulSet", "ha-lease": "Deployment", "ha-redis": "Deployment"}
HA_OVERLAYS = ("ha-lease", "ha-redis")
FIELD_VALUES = {
    "metadata.name": "clusterchecks-dispatcher-0",
    "metadata.namespace": NAMESPACE,
    "status.podIP": "10.1.2.3",
}
"""Stand-ins for what the downward API gives the dispatcher."""
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass(frozen=True)
class Build:
    overlay: str
    docs: tuple[Doc, ...] = field(repr=False)
    validation: dict[str, list[str]] = field(repr=False)
    """kubernetes-validate's lines about each document, by ``kind/name``."""

    def all(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> Doc:
        found = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def workloads(self) -> Iterator[Doc]:
        for kind in WORKLOAD_KINDS:
            yield from self.all(kind)

    def containers(self) -> Iterator[tuple[Doc, Doc]]:
        """(workload, container) for every container, init containers included."""
        for workload in self.workloads():
            pod = workload["spec"]["template"]["spec"]
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                yield workload, container

    def ours(self) -> Iterator[tuple[Doc, Doc]]:
        """Containers that run one of our commands."""
        for workload, container in self.containers():
            if container.get("args", [None])[0] in COMMAND_PORTS:
                yield workload, container


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is not on PATH; `make sysdeps` (scripts/ensure-system-packages) installs it"
        )
    return path


def _kustomize(kubectl: str, overlay: str) -> tuple[Doc, ...]:
    built = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, f"kubectl kustomize {overlay} failed:\n{built.stderr}"
    # libyaml's loader when PyYAML has it: the pure Python one takes a good part of a second.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(d for d in yaml.load_all(built.stdout, Loader=loader) if d)


def _validate(version: str, files: list[Path]) -> list[str]:
    validated = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            f"--kubernetes-version={version}",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = (validated.stdout + validated.stderr).splitlines()
    # It names the file in every line about a document (checked per document); anything
    # else, or a failure without such a line, fails every test.
    unattributed = [line for line in lines if line and not any(str(f) in line for f in files)]
    assert not unattributed, "\n".join(unattributed)
    assert validated.returncode == 0 or any(not line.startswith("INFO ") for line in lines)
    return lines


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Build]:
    """Every overlay, built with kubectl and validated with kubernetes-validate --strict.

    The overlays share most documents: each distinct one is validated once, in a file of
    its own (the tool loads its schemas per document, and that is what takes time), by
    one process per Kubernetes version, in parallel.
    """
    kubectl = _kubectl()
    out_dir = tmp_path_factory.mktemp("manifests")
    with ThreadPoolExecutor(max_workers=len(OVERLAYS)) as pool:
        built = dict(
            zip(OVERLAYS, pool.map(lambda o: _kustomize(kubectl, o), OVERLAYS), strict=True)
        )
    files: dict[str, Path] = {}
    for docs in built.values():
        for doc in docs:
            text = json.dumps(doc, sort_keys=True)  # JSON is YAML, and quick to write
            if text not in files:
                files[text] = out_dir / f"doc-{len(files):03d}.yaml"
                files[text].write_text(text, encoding="utf-8")
    with ThreadPoolExecutor(max_workers=len(SCHEMA_VERSIONS)) as pool:
        outputs = list(pool.map(lambda v: _validate(v, list(files.values())), SCHEMA_VERSIONS))
    lines = [line for output in outputs for line in output]

    def validation(docs: tuple[Doc, ...]) -> dict[str, list[str]]:
        by_doc = {}
        for doc in docs:
            file = str(files[json.dumps(doc, sort_keys=True)])
            key = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
            by_doc[key] = [line for line in lines if f" {file} " in line]
        return by_doc

    return {o: Build(o, docs, validation(docs)) for o, docs in built.items()}


@pytest.fixture(params=OVERLAYS)
def build(request: pytest.FixtureRequest, builds: dict[str, Build]) -> Build:
    overlay: str = request.param
    return builds[overlay]


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def _value(container: Doc, name: str) -> str | None:
    entry = _env(container).get(name)
    return None if entry is None else entry.get("value")


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _dispatcher(build: Build) -> tuple[Doc, Doc]:
    """The dispatcher's workload (a StatefulSet or a Deployment) and its container."""
    workload = build.one(DISPATCHER_KIND[build.overlay], DISPATCHER)
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return workload, container


def _workload(build: Build, name: str) -> Doc:
    (found,) = [w for w in build.workloads() if w["metadata"]["name"] == name]
    return found


def _pod_security(workload: Doc) -> Doc:
    pod_sc: Doc = workload["spec"]["template"]["spec"].get("securityContext", {})
    return pod_sc


# --- the build itself -------------------------------------------------------------


def test_builds_and_validates_strictly_offline(build: Build) -> None:
    assert len(build.validation) == len(build.docs), "two documents of one kind and name"
    for key, lines in build.validation.items():
        # kubernetes-validate only warns (and exits 0) on a kind it has no schema for.
        assert len(lines) == len(SCHEMA_VERSIONS), lines
        for line, version in zip(lines, SCHEMA_VERSIONS, strict=True):
            short = version.rsplit(".", 1)[0]
            assert line.startswith("INFO "), line
            assert line.endswith(f"passed for resource {key} against version {short}"), line


def test_kinds_present(build: Build) -> None:
    kinds = {d["kind"] for d in build.docs}
    expected = {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Secret",
        "Deployment",
        "DaemonSet",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    if build.overlay == "ha-lease":
        expected |= {"Role", "RoleBinding"}
    if build.overlay != "ha-lease":
        expected |= {"StatefulSet"}
    assert kinds == expected
    names = {kind: {d["metadata"]["name"] for d in build.all(kind)} for kind in WORKLOAD_KINDS}
    if build.overlay == "standalone":
        assert names["Deployment"] == {"clusterchecks-runner"}
        assert names["StatefulSet"] == {DISPATCHER}
    else:
        assert names["Deployment"] == {DISPATCHER, "clusterchecks-runner"}
        redis = {"clusterchecks-redis"} if build.overlay == "ha-redis" else set()
        assert names["StatefulSet"] == redis
    assert names["DaemonSet"] == {"clusterchecks-agent"}


def test_everything_in_one_namespace_that_enforces_restricted(build: Build) -> None:
    (namespace,) = build.all("Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in build.docs:
        expected = None if doc["kind"] in CLUSTER_SCOPED else NAMESPACE
        assert doc["metadata"].get("namespace") == expected, doc["metadata"]
    for binding in [*build.all("RoleBinding"), *build.all("ClusterRoleBinding")]:
        for subject in binding["subjects"]:
            assert subject["namespace"] == NAMESPACE


def test_names_of_one_kind_are_not_prefixes_of_each_other(build: Build) -> None:
    """kustomize v2 (kubectl up to 1.20) and v5 sort ``a`` and ``a-b`` differently;
    without such pairs both print the same manifests, byte for byte."""
    for kind in {d["kind"] for d in build.docs}:
        names = sorted(d["metadata"]["name"] for d in build.all(kind))
        for a, b in itertools.pairwise(names):
            assert not b.startswith(a), f"{kind}: {a} / {b}"


# --- the dispatcher -----------------------------------------------------------------


def test_dispatcher_replicas_strategy_and_mode(build: Build) -> None:
    workload, container = _dispatcher(build)
    assert workload["spec"]["replicas"] == REPLICAS[build.overlay]
    if build.overlay != "standalone":  # its own tests follow
        # A new follower is ready before an old replica stops.
        strategy = workload["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0
        assert strategy["rollingUpdate"]["maxSurge"] == 1
    for name, value in DISPATCHER_MODE[build.overlay].items():
        assert _value(container, name) == value, name
    env = _env(container)
    assert env["CLUSTERCHECKS_IDENTITY"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert (
        env["CLUSTERCHECKS_LEASE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.namespace"
    )
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert _value(container, "CLUSTERCHECKS_HOST") == "0.0.0.0"
    assert _value(container, "CLUSTERCHECKS_PORT") == "5005"
    assert _value(container, "CLUSTERCHECKS_ADVERTISE_URL") == "http://$(POD_IP):5005"
    assert _value(container, "CLUSTERCHECKS_KUBERNETES_SOURCE") == "true"
    assert _value(container, "CLUSTERCHECKS_LOG_FORMAT") == "json"
    assert container["args"] == ["clusterchecks-dispatcher", "serve"]


def test_ha_redis_reaches_its_redis_with_the_secret_password(builds: dict[str, Build]) -> None:
    build = builds["ha-redis"]
    _, container = _dispatcher(build)
    password = _env(container)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    url = urlsplit(_value(container, "CLUSTERCHECKS_REDIS_URL") or "")
    service = build.one("Service", url.hostname or "")
    assert service["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in service["spec"]["ports"]] == [url.port]
    redis = build.one("StatefulSet", "clusterchecks-redis")
    assert redis["spec"]["replicas"] == 1
    assert redis["spec"]["serviceName"] == service["metadata"]["name"]
    assert _selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    (server,) = redis["spec"]["template"]["spec"]["containers"]
    assert "--requirepass" in server["args"]
    assert "$(REDIS_PASSWORD)" in server["args"]
    assert _env(server)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == password
    args = server["args"]
    # Durable before it answers, and never an eviction of stored checks.
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "always"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert [v["metadata"]["name"] for v in redis["spec"]["volumeClaimTemplates"]] == ["data"]
    assert {"name": "data", "mountPath": "/data"} in server["volumeMounts"]
    # Only the dispatchers reach Redis.
    policy = build.one("NetworkPolicy", "clusterchecks-redis")
    (rule,) = policy["spec"]["ingress"]
    dispatcher_labels = build.one("Deployment", DISPATCHER)["spec"]["template"]["metadata"]
    assert [
        _selects(p["podSelector"]["matchLabels"], dispatcher_labels["labels"]) for p in rule["from"]
    ] == [True]
    assert policy["spec"].get("egress", []) == []


# --- the standalone dispatcher's data ---------------------------------------------


def test_standalone_never_runs_two_dispatchers(builds: dict[str, Build]) -> None:
    """A second dispatcher on the data dir is refused (and would be a second leader): a
    StatefulSet of one never surges, and never starts a pod while its predecessor of the
    same name exists, terminating included (pod names are unique). A Deployment, even
    with ``Recreate``, replaces a deleted or evicted pod at once."""
    build = builds["standalone"]
    statefulset, _ = _dispatcher(build)
    spec = statefulset["spec"]
    assert statefulset["kind"] == "StatefulSet"
    assert spec["replicas"] == 1
    # Updated by the controller, one pod at a time (no partition that would skip it).
    assert spec.get("updateStrategy", {"type": "RollingUpdate"}) == {"type": "RollingUpdate"}
    assert "minReadySeconds" not in spec
    # Nothing else runs dispatcher pods, and nothing scales this one.
    service = build.one("Service", DISPATCHER)
    behind = [
        w["metadata"]["name"]
        for w in build.workloads()
        if _selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
    ]
    assert behind == [DISPATCHER]
    assert build.all("HorizontalPodAutoscaler") == []
    # The StatefulSet's governing Service exists and selects its pod.
    governing = build.one("Service", spec["serviceName"])
    assert _selects(governing["spec"]["selector"], spec["template"]["metadata"]["labels"])


def _data_mount(statefulset: Doc, container: Doc) -> tuple[Doc, Doc]:
    """The container's mount of the data dir its environment names, and the claim."""
    data_dir = PurePosixPath(_value(container, "CLUSTERCHECKS_DATA_DIR") or "")
    assert data_dir.is_absolute(), data_dir
    mounts = container["volumeMounts"]
    (mount,) = [m for m in mounts if PurePosixPath(m["mountPath"]) == data_dir]
    # Nothing mounted inside it or over a parent of it.
    for other in mounts:
        path = PurePosixPath(other["mountPath"])
        assert other is mount or not (data_dir in path.parents or path in data_dir.parents)
    claims = {c["metadata"]["name"]: c for c in statefulset["spec"]["volumeClaimTemplates"]}
    return mount, claims[mount["name"]]


def test_standalone_keeps_its_data_on_a_persistent_volume(builds: dict[str, Build]) -> None:
    statefulset, container = _dispatcher(builds["standalone"])
    assert _value(container, "CLUSTERCHECKS_DATA_DIR") == DATA_DIR
    mount, claim = _data_mount(statefulset, container)
    assert not mount.get("readOnly", False)
    assert "subPath" not in mount
    # From the claim, not from a pod volume of the same name.
    pod_volumes = {v["name"] for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert mount["name"] not in pod_volumes
    # One node at a time mounts it.
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert _bytes(claim["spec"]["resources"]["requests"]["storage"]) >= 1 << 30
    assert _selects(
        claim["metadata"]["labels"], statefulset["spec"]["template"]["metadata"]["labels"]
    )
    # Kept when the StatefulSet is deleted or scaled down.
    retention = statefulset["spec"].get("persistentVolumeClaimRetentionPolicy", {})
    assert retention.get("whenDeleted", "Retain") == "Retain"
    assert retention.get("whenScaled", "Retain") == "Retain"


def test_standalone_data_dir_is_writable_by_its_user(builds: dict[str, Build]) -> None:
    """Kubernetes gives a volume that supports ownership management to the pod's
    fsGroup, group-writable; the process runs as the image's user, in that group."""
    statefulset, container = _dispatcher(builds["standalone"])
    mount, _ = _data_mount(statefulset, container)
    pod_sc = _pod_security(statefulset)
    sc = container["securityContext"]
    uid = sc.get("runAsUser", pod_sc["runAsUser"])
    gid = sc.get("runAsGroup", pod_sc["runAsGroup"])
    assert (uid, gid) == runtime_user()
    assert pod_sc["fsGroup"] == gid
    assert pod_sc.get("fsGroupChangePolicy", "Always") in ("Always", "OnRootMismatch")
    assert not mount.get("readOnly", False)
    # The root filesystem is read-only: the data dir is writable only as this mount.
    assert sc["readOnlyRootFilesystem"] is True


def test_ha_dispatchers_never_use_sqlite(builds: dict[str, Build]) -> None:
    """sqlite is refused with an elected leader (its file is not shared): each HA
    overlay names its store rather than inherit a default, and keeps no data volume."""
    for overlay in HA_OVERLAYS:
        deployment, container = _dispatcher(builds[overlay])
        assert _value(container, "CLUSTERCHECKS_STORE") in ("memory", "redis"), overlay
        assert "CLUSTERCHECKS_DATA_DIR" not in _env(container), overlay
        assert "volumeClaimTemplates" not in deployment["spec"], overlay
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert not [v for v in volumes if "persistentVolumeClaim" in v], overlay


def test_dispatcher_command_line_accepts_each_overlay(
    build: Build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatcher's own command line, given what its process would see: the image's
    environment, then the container's, so a value the manifests leave to a default is
    checked too (the store above all)."""
    _, container = _dispatcher(build)
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in _process_environment(build, container, tmp_path).items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    settings = settings_from_flags(dispatcher_serve.make_context("serve", []).params)
    mode = DISPATCHER_MODE[build.overlay]
    assert settings.election.backend == mode["CLUSTERCHECKS_ELECTION"]
    assert settings.store.backend == mode["CLUSTERCHECKS_STORE"]
    if settings.store.backend == "sqlite":
        assert settings.store.data_dir == Path(DATA_DIR)
    assert settings.server.identity == FIELD_VALUES["metadata.name"]
    assert settings.server.url == f"http://{FIELD_VALUES['status.podIP']}:5005"
    assert settings.election.lease_namespace == NAMESPACE
    tokens = settings.auth
    assert [tokens.node_token, tokens.source_token, tokens.admin_token] == [
        "REPLACE-ME-node-token",
        "REPLACE-ME-source-token",
        "REPLACE-ME-admin-token",
    ]
    if build.overlay == "ha-redis":
        assert settings.redis.url.startswith("redis://:REPLACE-ME-redis-password@")


def _process_environment(build: Build, container: Doc, tmp_path: Path) -> dict[str, str]:
    """The image's environment, then the container's entries in order: ``$(VAR)``
    expanded from the entries before (as Kubernetes does), downward-API fields stood in
    for, Secret keys read from the built Secrets, and token files (mounted from a Secret)
    written under ``tmp_path`` with the Secret's value."""
    secrets = {s["metadata"]["name"]: s for s in build.all("Secret")}
    volumes = {
        v["name"]: v for v in _workload(build, DISPATCHER)["spec"]["template"]["spec"]["volumes"]
    }
    defined: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            value = VAR_REF.sub(lambda m: defined[m.group(1)], entry["value"])
        elif "fieldRef" in entry["valueFrom"]:
            value = FIELD_VALUES[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            value = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
        if entry["name"].endswith("TOKEN_FILE"):
            secret, key = _secret_key_of(value, container, volumes, secrets)
            copy_of = tmp_path / key
            copy_of.write_bytes(base64.b64decode(secrets[secret]["data"][key]))
            value = str(copy_of)
        defined[entry["name"]] = value
    return {**runtime_env(), **defined}


def _bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", quantity)
    assert match, quantity
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    units |= {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def _pod_template_but_mode(workload: Doc) -> Doc:
    template: Doc = copy.deepcopy(workload["spec"]["template"])
    claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
    for container in template["spec"]["containers"]:
        container["env"] = [e for e in container["env"] if e["name"] not in MODE_ENV]
        container["volumeMounts"] = [
            m for m in container["volumeMounts"] if m["name"] not in claims
        ]
    return template


def test_standalone_and_ha_dispatcher_pods_differ_only_in_mode_and_data(
    builds: dict[str, Build],
) -> None:
    """The standalone StatefulSet's pod template is written apart from the HA
    Deployment's (a kind cannot be patched into another): they must not drift."""
    standalone, _ = _dispatcher(builds["standalone"])
    for overlay in HA_OVERLAYS:
        ha, _ = _dispatcher(builds[overlay])
        assert _pod_template_but_mode(standalone) == _pod_template_but_mode(ha), overlay
        assert standalone["metadata"] == ha["metadata"], overlay
        for key in ("selector", "revisionHistoryLimit"):
            assert standalone["spec"][key] == ha["spec"][key], (overlay, key)


def test_our_containers_run_the_image_of_this_version(builds: dict[str, Build]) -> None:
    """The image's tag is set in three kustomizations (base, ha-common, standalone): a
    kustomization's images setting reaches only its own and its bases' workloads."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    image = f"clusterchecks:{pyproject['project']['version']}"
    for overlay, build in builds.items():
        assert {container["image"] for _, container in build.ours()} == {image}, overlay


def test_dispatcher_service_and_disruption_budgets(build: Build) -> None:
    deployment, container = _dispatcher(build)
    service = build.one("Service", DISPATCHER)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(service["spec"]["selector"], labels)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (port,) = service["spec"]["ports"]
    assert port["port"] == 5005
    assert ports[port["targetPort"]] == 5005
    budgets = {b["metadata"]["name"]: b["spec"] for b in build.all("PodDisruptionBudget")}
    assert set(budgets) == {DISPATCHER, "clusterchecks-runner"}
    for name, spec in budgets.items():
        workload = _workload(build, name)
        assert _selects(
            spec["selector"]["matchLabels"], workload["spec"]["template"]["metadata"]["labels"]
        )
        assert spec["maxUnavailable"] == 1


# --- node agents --------------------------------------------------------------------


def test_daemonset_agents_are_named_after_their_node(build: Build) -> None:
    (daemonset,) = build.all("DaemonSet")
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["clusterchecks-agent"]
    name = _env(container)["CLUSTERCHECKS_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert name == "spec.nodeName"
    _assert_agent_reaches_dispatcher(build, container)


def test_runner_agents_are_named_after_their_pod_and_spread(build: Build) -> None:
    runner = build.one("Deployment", "clusterchecks-runner")
    pod = runner["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["clusterchecks-agent"]
    name = _env(container)["CLUSTERCHECKS_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert name == "metadata.name"
    terms = pod["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms
    for term in terms:
        affinity = term["podAffinityTerm"]
        assert affinity["topologyKey"] == "kubernetes.io/hostname"
        assert _selects(affinity["labelSelector"]["matchLabels"], pod["metadata"]["labels"])
    _assert_agent_reaches_dispatcher(build, container)


def _assert_agent_reaches_dispatcher(build: Build, container: Doc) -> None:
    service = build.one("Service", DISPATCHER)
    for url in (_value(container, "CLUSTERCHECKS_DISPATCHER_URL") or "").split(","):
        parts = urlsplit(url)
        assert parts.scheme == "http"
        assert parts.hostname == service["metadata"]["name"]
        assert parts.port == service["spec"]["ports"][0]["port"]
    assert _value(container, "CLUSTERCHECKS_HOST") == "0.0.0.0"
    assert _value(container, "CLUSTERCHECKS_LOG_FORMAT") == "json"


def test_agents_have_no_kubernetes_api_access(build: Build) -> None:
    bound = {
        s["name"]
        for b in [*build.all("RoleBinding"), *build.all("ClusterRoleBinding")]
        for s in b["subjects"]
    }
    assert bound == {DISPATCHER}
    for workload in build.workloads():
        pod = workload["spec"]["template"]["spec"]
        if workload["metadata"]["name"] != DISPATCHER:
            assert pod["automountServiceAccountToken"] is False, workload["metadata"]["name"]
            assert pod["serviceAccountName"] != DISPATCHER


# --- every workload -----------------------------------------------------------------


def test_workload_selectors_select_their_pods(build: Build) -> None:
    templates = []
    for workload in build.workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert _selects(workload["spec"]["selector"]["matchLabels"], labels)
        templates.append(labels)
    # ... and no workload's selector takes another one's pods.
    for workload in build.workloads():
        selector = workload["spec"]["selector"]["matchLabels"]
        assert sum(_selects(selector, labels) for labels in templates) == 1
    for policy in build.all("NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert any(_selects(selector, labels) for labels in templates), policy["metadata"]


def test_probes_on_the_served_port(build: Build) -> None:
    seen = set()
    for workload, container in build.containers():
        assert "livenessProbe" in container, workload["metadata"]["name"]
        assert "readinessProbe" in container, workload["metadata"]["name"]
        command = container.get("args", [None])[0]
        if command not in COMMAND_PORTS:
            continue
        seen.add(command)
        port = COMMAND_PORTS[command]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path
            assert ports.get(get["port"], get["port"]) == port
        assert _value(container, "CLUSTERCHECKS_PORT") == str(port)
    assert seen == set(COMMAND_PORTS)


def test_security_context(build: Build) -> None:
    for workload, container in build.containers():
        where = f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}"
        pod = workload["spec"]["template"]["spec"]
        pod_sc = _pod_security(workload)
        sc = container["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, where
        assert pod_sc["runAsUser"] > 0, where
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert sc.get("runAsNonRoot", pod_sc["runAsNonRoot"]) is True, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"] == {"drop": ["ALL"]}, where
        assert not sc.get("privileged", False), where
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host, False), where
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v], where
        # With a read-only root, /tmp is the one writable place (an emptyDir).
        tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        assert len(tmp) == 1, where
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[tmp[0]["name"]], where
    for _, container in build.ours():
        assert _value(container, "PYTHONDONTWRITEBYTECODE") == "1"


def test_resources_on_every_container(build: Build) -> None:
    for workload, container in build.containers():
        resources = container["resources"]
        for bound in ("requests", "limits"):
            assert set(resources[bound]) >= {"cpu", "memory"}, (
                workload["metadata"]["name"],
                bound,
            )


def test_environment_references_are_defined_before_use(build: Build) -> None:
    """``$(VAR)`` expands only to a variable defined earlier in the list; otherwise
    Kubernetes passes the text on unchanged."""
    for workload, container in build.containers():
        defined: set[str] = set()
        for entry in container.get("env", []):
            for name in VAR_REF.findall(entry.get("value", "")):
                assert name in defined, (workload["metadata"]["name"], entry["name"])
            defined.add(entry["name"])
        for arg in [*container.get("command", []), *container.get("args", [])]:
            for name in VAR_REF.findall(arg):
                assert name in defined, (workload["metadata"]["name"], arg)


def test_every_clusterchecks_variable_is_a_flag_of_its_command(build: Build) -> None:
    """click ignores an environment variable no option reads: a typo would pass silently."""
    known = {
        "clusterchecks-dispatcher": _envvars(dispatcher_serve),
        "clusterchecks-agent": _envvars(agent_main),
    }
    for workload, container in build.ours():
        for name in _env(container):
            if name.startswith("CLUSTERCHECKS_"):
                assert name in known[container["args"][0]], (workload["metadata"]["name"], name)


def _envvars(command: click.Command) -> set[str]:
    return {p.envvar for p in command.params if isinstance(p.envvar, str)}


# --- RBAC and secrets ---------------------------------------------------------------


def _rules(role: Doc) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_rbac_least_privilege(build: Build) -> None:
    roles = [*build.all("Role"), *build.all("ClusterRole")]
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not [v for v in rule.get(key, []) if "*" in v], (role["metadata"], key)
    (cluster_role,) = build.all("ClusterRole")
    assert _rules(cluster_role) == SOURCE_RULES
    leases = [r for r in roles if any("leases" in rule["resources"] for rule in r["rules"])]
    if build.overlay == "ha-lease":
        (role,) = build.all("Role")
        assert leases == [role]
        assert role["metadata"]["namespace"] == NAMESPACE
        assert _rules(role) == LEASE_RULES
        # All but create are held to the one Lease the dispatcher uses.
        lease_name = ElectionSettings().lease_name
        _, container = _dispatcher(build)
        assert "CLUSTERCHECKS_LEASE_NAME" not in _env(container)
        for rule in role["rules"]:
            if rule["verbs"] != ["create"]:
                assert rule["resourceNames"] == [lease_name]
    else:
        assert leases == []
        assert build.all("Role") == []
    # Each binding grants what exists to the dispatcher's service account.
    for binding in [*build.all("RoleBinding"), *build.all("ClusterRoleBinding")]:
        ref = binding["roleRef"]
        build.one(ref["kind"], ref["name"])
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": DISPATCHER, "namespace": NAMESPACE}
        ]
        if binding["kind"] == "RoleBinding":
            assert ref["kind"] == "Role"


def test_tokens_come_from_a_secret(build: Build) -> None:
    secrets = {s["metadata"]["name"]: s for s in build.all("Secret")}
    for name, secret in secrets.items():
        for key, encoded in secret["data"].items():
            # Placeholders only: real tokens are never committed.
            assert base64.b64decode(encoded).decode().startswith("REPLACE-ME"), (name, key)
    files: dict[str, set[str]] = {}
    for workload, container in build.ours():
        where = workload["metadata"]["name"]
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        keys = set()
        for name, entry in _env(container).items():
            if re.search(r"TOKEN|PASSWORD", name):
                assert "value" not in entry or name.endswith("_FILE"), (where, name)
            if "valueFrom" in entry and "secretKeyRef" in entry["valueFrom"]:
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref["key"] in secrets[ref["name"]]["data"], (where, name)
            if name.endswith("_TOKEN_FILE") or name == "CLUSTERCHECKS_TOKEN_FILE":
                keys.add(_secret_key_of(entry["value"], container, volumes, secrets)[1])
        files[where] = keys
    assert files[DISPATCHER] == {"node", "source", "admin"}
    assert files["clusterchecks-runner"] == {"node"}
    (daemonset,) = build.all("DaemonSet")
    assert files[daemonset["metadata"]["name"]] == {"node"}


def _secret_key_of(
    path: str, container: Doc, volumes: dict[str, Doc], secrets: dict[str, Doc]
) -> tuple[str, str]:
    """The Secret and the key a token file is, through the container's mount of a secret
    volume."""
    file = PurePosixPath(path)
    (mount,) = [
        m for m in container["volumeMounts"] if file.parent == PurePosixPath(m["mountPath"])
    ]
    assert mount.get("readOnly") is True
    source = volumes[mount["name"]]["secret"]
    items = {i["path"]: i["key"] for i in source.get("items", [])}
    key = items.get(file.name, file.name) if items else file.name
    assert key in secrets[source["secretName"]]["data"]
    # An agent's volume carries the node token and nothing else.
    if container["args"][0] == "clusterchecks-agent":
        assert items == {"node": "node"}
    return source["secretName"], key


@pytest.mark.parametrize("base", ["standalone", "ha-redis"])
def test_a_user_overlay_replaces_the_placeholders(base: str, tmp_path: Path) -> None:
    """The way README's "Deploy on Kubernetes" says to install: an overlay of one's own,
    outside the repository, with the image and the tokens (from files)."""
    overlay = KUSTOMIZE_DIR / "overlays" / base
    for name in ("node.token", "source.token", "admin.token"):
        (tmp_path / name).write_text(f"{name}-0123456789abcdef0123456789abcdef\n")
    (tmp_path / "redis.password").write_text("0123456789abcdef")
    redis_secret = """\
- name: clusterchecks-redis
  behavior: replace
  files: [password=redis.password]
"""
    (tmp_path / "kustomization.yaml").write_text(
        f"""\
namespace: {NAMESPACE}
bases:
- {os.path.relpath(overlay, tmp_path)}
images:
- name: clusterchecks
  newName: registry.example.com/clusterchecks
  newTag: 9.9.9
secretGenerator:
- name: clusterchecks-tokens
  behavior: replace
  files: [node=node.token, source=source.token, admin=admin.token]
{redis_secret if base == "ha-redis" else ""}generatorOptions:
  disableNameSuffixHash: true
""",
        encoding="utf-8",
    )
    built = subprocess.run(
        [_kubectl(), "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    redis = {"clusterchecks-redis"} if base == "ha-redis" else set()
    assert set(secrets) == {"clusterchecks-tokens", *redis}
    for secret in secrets.values():
        assert secret["metadata"]["namespace"] == NAMESPACE
        for key, encoded in secret["data"].items():
            value = base64.b64decode(encoded).decode()
            assert "REPLACE-ME" not in value
            assert value.startswith("0123456789" if key == "password" else f"{key}.token")
    images = {
        c["image"]
        for d in docs
        if d["kind"] in WORKLOAD_KINDS
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    redis_image = {"redis:7.2"} if base == "ha-redis" else set()
    assert images == {"registry.example.com/clusterchecks:9.9.9", *redis_image}
