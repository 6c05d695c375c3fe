"""One way to describe a pydantic validation error: field paths and short messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dispatcher.errors import InvalidRequest

MAX_PROBLEMS = 100
"""Field problems listed in one error reply at most: a 4 MiB body of bad items would
otherwise be answered with millions of them (hundreds of MB built on the event loop)."""


@dataclass(frozen=True, slots=True)
class FieldProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def field_problems(exc: ValidationError, *, root: str = "(body)") -> list[FieldProblem]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in error["loc"]) or root
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "missing field"
        else:
            message = error["msg"]
        problems.append(FieldProblem(path, message))
    return problems


def summary(problems: list[FieldProblem], *, shown: int = 3) -> str:
    text = "; ".join(str(p) for p in problems[:shown])
    if len(problems) > shown:
        text += f" (and {len(problems) - shown} more)"
    return text


def invalid_request(problems: list[FieldProblem], *, more: bool = False) -> InvalidRequest:
    """The API's ``400 invalid_request`` for ``problems``: one message naming the first
    few, and ``details.fields`` listing up to ``MAX_PROBLEMS`` (``details.truncated`` when
    there are more, or when the caller stopped looking: ``more``)."""
    details: dict[str, Any] = {
        "fields": [{"path": p.path, "message": p.message} for p in problems[:MAX_PROBLEMS]]
    }
    if more or len(problems) > MAX_PROBLEMS:
        details["truncated"] = True
    return InvalidRequest(f"Invalid request: {summary(problems)}.", details=details)
