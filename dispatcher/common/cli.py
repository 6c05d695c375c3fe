"""Command-line helpers shared by both commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

ENV_PREFIX = "CLUSTERCHECKS_"
FC = TypeVar("FC", bound=Callable[..., Any])


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


def option(flag: str, **kwargs: Any) -> Callable[[FC], FC]:
    """A click option that also reads its CLUSTERCHECKS_* environment variable."""
    return click.option(f"--{flag}", envvar=env_name(flag), show_envvar=True, **kwargs)
