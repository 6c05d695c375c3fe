"""Command-line helpers shared by both commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

ENV_PREFIX = "CLUSTERCHECKS_"
FC = TypeVar("FC", bound=Callable[..., Any])


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


def option(flag: str, **kwargs: Any) -> Callable[[FC], FC]:
    """A click option that also reads its CLUSTERCHECKS_* environment variable."""
    return click.option(f"--{flag}", envvar=env_name(flag), show_envvar=True, **kwargs)


def read_token(value: str | None, path: Path | None, *, flag: str) -> str | None:
    """The token of ``--<flag>`` or ``--<flag>-file`` (not both): printable ASCII
    without spaces, as a bearer token must be. A bad one is a usage error naming the
    flag."""
    if value and path:
        raise click.BadParameter(
            f"give --{flag} or --{flag}-file, not both", param_hint=f"--{flag}"
        )
    if path is not None:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise click.BadParameter(
                f"cannot read {path}: {reason}", param_hint=f"--{flag}-file"
            ) from exc
        if not token:
            raise click.BadParameter(f"{path} is empty", param_hint=f"--{flag}-file")
        return _printable(token, f"--{flag}-file")
    return _printable(value, f"--{flag}") if value else None


def _printable(token: str, hint: str) -> str:
    if not token.isascii() or not token.isprintable() or " " in token:
        raise click.BadParameter(
            "a token is printable ASCII without spaces or line breaks", param_hint=hint
        )
    return token
