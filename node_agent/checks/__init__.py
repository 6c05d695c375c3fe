"""Check implementations, chosen by a config's ``name``.

Each kind validates its instances with a strict model (missing or unknown fields name
themselves) and runs one instance, returning the list of errors (empty: ok).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from dispatcher.common.validation import field_problems
from node_agent.errors import InstanceError

__all__ = [
    "CheckKind",
    "InstanceError",
    "InstanceModel",
    "Outcome",
    "RunContext",
    "validate_instance",
]


class InstanceModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


@dataclass(frozen=True, slots=True)
class RunContext:
    """What one run of one check knows about itself."""

    check_name: str
    digest: str
    run_id: str
    timeout_s: float
    deadline_unix_s: float


@dataclass(frozen=True, slots=True)
class Outcome:
    errors: list[str]
    output: str = ""


class CheckKind(Protocol):
    def parse(self, instance: dict[str, Any], init_config: dict[str, Any]) -> Any:
        """Validates one instance; raises InstanceError naming the bad fields."""
        ...

    async def run(self, instance: Any, context: RunContext) -> Outcome:
        """Runs one instance (the caller enforces the timeout)."""
        ...


def validate_instance(model: type[InstanceModel], instance: dict[str, Any]) -> Any:
    try:
        return model.model_validate(instance)
    except ValidationError as exc:
        problems = [
            f"{p.message} {p.path!r}" if p.message in ("unknown field", "missing field") else str(p)
            for p in field_problems(exc, root="(instance)")
        ]
        raise InstanceError("; ".join(problems)) from exc
