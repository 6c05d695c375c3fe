"""One way to describe a pydantic validation error: field paths and short messages."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError


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
