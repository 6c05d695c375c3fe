"""``deploy/docker/Dockerfile`` read as instructions, without a Docker engine: shared by
the Dockerfile's tests and the manifests' (which run the dispatcher's command line with
the image's environment under the pod's)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str


def instructions() -> list[Instruction]:
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


def stages() -> dict[str, int]:
    found = {}
    for ins in instructions():
        if ins.keyword == "FROM":
            match = re.fullmatch(r"\S+ AS (\S+)", ins.args, re.IGNORECASE)
            assert match, f"unnamed stage: FROM {ins.args}"
            found[match.group(1)] = ins.stage
    return found


def final(keyword: str) -> list[str]:
    """The arguments of every ``keyword`` instruction of the last (runtime) stage."""
    last = max(stages().values())
    return [i.args for i in instructions() if i.stage == last and i.keyword == keyword]


def env(stage_args: list[str]) -> dict[str, str]:
    found = {}
    for args in stage_args:
        for pair in shlex.split(args):
            name, sep, value = pair.partition("=")
            assert sep, f"ENV {args}: use the name=value form"
            found[name] = value
    return found


def runtime_env() -> dict[str, str]:
    """The environment the image gives every process it runs."""
    return env(final("ENV"))


def runtime_user() -> tuple[int, int]:
    """The image's numeric ``uid, gid``."""
    (user,) = final("USER")
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"USER {user}: numeric uid:gid, so that runAsNonRoot can verify it"
    return int(match.group(1)), int(match.group(2))
