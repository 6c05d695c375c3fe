"""Config directory source: every ``*.yaml`` file of a directory is a source ``file:<name>``.

A file holds one or many configs: a mapping (one config), a list of configs, or a
mapping with a ``configs`` list; several YAML documents in one file add up. Files are
re-read when they change (polled, which also follows ConfigMap symlink swaps that
inotify misses). A broken file is reported in the log and the ``config_dir`` health
component and leaves the checks it held before untouched; a deleted file removes its
checks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import ValidationError

from dispatcher import wire
from dispatcher.common.health import HealthRegistry, Status
from dispatcher.common.tasks import run_periodically
from dispatcher.convert import config_in
from dispatcher.core.model import CheckConfig, SourceName
from dispatcher.engine import Dispatcher
from dispatcher.errors import ConfigSourceError

log = structlog.get_logger(__name__)

COMPONENT = "config_dir"
SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Signature:
    mtime_ns: int
    size: int
    inode: int


def source_name(path: Path) -> SourceName:
    return SourceName(f"file:{path.name}")


def parse_configs(text: str, *, origin: str) -> list[CheckConfig]:
    """Parses one file's text into validated configs; raises ConfigSourceError."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ConfigSourceError(f"{origin}: not valid YAML: {exc}") from exc
    raw: list[tuple[str, Any]] = []
    for doc_number, document in enumerate(documents, start=1):
        where = f"{origin}" if len(documents) == 1 else f"{origin} (document {doc_number})"
        if document is None:
            continue
        if isinstance(document, list):
            items = document
        elif isinstance(document, dict) and set(document) == {"configs"}:
            items = document["configs"]
            if not isinstance(items, list):
                raise ConfigSourceError(f"{where}: 'configs' must be a list of check configs.")
        elif isinstance(document, dict):
            items = [document]
        else:
            raise ConfigSourceError(
                f"{where}: expected a check config, a list of them, or a mapping with "
                f"'configs', not {type(document).__name__}."
            )
        raw.extend((f"{where}, config {i}", item) for i, item in enumerate(items, start=1))
    configs: list[CheckConfig] = []
    for where, item in raw:
        try:
            configs.append(config_in(wire.CheckConfigIn.model_validate(item)))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(config)'}: "
                f"{'unknown field' if e['type'] == 'extra_forbidden' else e['msg']}"
                for e in exc.errors(include_url=False, include_input=False)
            )
            raise ConfigSourceError(f"{where}: {problems}") from exc
    return configs


def _read(path: Path) -> str:
    with path.open("rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigSourceError(f"{path.name}: larger than {MAX_FILE_BYTES} bytes.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigSourceError(f"{path.name}: not UTF-8 text.") from exc


class ConfigDirSource:
    def __init__(
        self,
        *,
        directory: Path,
        dispatcher: Dispatcher,
        health: HealthRegistry,
        poll_s: float = 1.0,
    ) -> None:
        self._directory = directory
        self._dispatcher = dispatcher
        self._health = health
        self._poll_s = poll_s
        self._seen: dict[str, _Signature] = {}
        self._broken: dict[str, str] = {}
        health.register(COMPONENT, required=False)

    async def run(self, stop: asyncio.Event) -> None:
        await run_periodically("config_dir", self.scan, period_s=self._poll_s, stop=stop)

    async def scan(self) -> None:
        """Applies every change in the directory since the last scan."""
        try:
            current = await asyncio.to_thread(self._list)
        except OSError as exc:
            self._report(f"cannot list {self._directory}: {exc.strerror or exc}")
            return
        for name in sorted(set(self._seen) - set(current)):
            del self._seen[name]
            self._broken.pop(name, None)
            await self._dispatcher.replace_source(source_name(Path(name)), [])
            log.info("config_file_removed", file=name)
        for name, signature in sorted(current.items()):
            if self._seen.get(name) == signature:
                continue
            self._seen[name] = signature
            await self._load(self._directory / name)
        self._report()

    def _list(self) -> dict[str, _Signature]:
        found: dict[str, _Signature] = {}
        with os.scandir(self._directory) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.endswith(SUFFIXES):
                    continue
                try:
                    if not entry.is_file():  # follows symlinks, as ConfigMap mounts need
                        continue
                    st = entry.stat()
                except OSError:
                    continue
                found[entry.name] = _Signature(st.st_mtime_ns, st.st_size, st.st_ino)
        return found

    async def _load(self, path: Path) -> None:
        try:
            text = await asyncio.to_thread(_read, path)
            configs = parse_configs(text, origin=path.name)
        except (OSError, ConfigSourceError) as exc:
            message = str(exc) if isinstance(exc, ConfigSourceError) else f"{path.name}: {exc}"
            self._broken[path.name] = message
            log.error("config_file_invalid", file=path.name, error=message)
            return
        self._broken.pop(path.name, None)
        change = await self._dispatcher.replace_source(source_name(path), configs)
        log.info(
            "config_file_loaded",
            file=path.name,
            configs=len(configs),
            added=change.added,
            removed=change.removed,
        )

    def _report(self, listing_error: str | None = None) -> None:
        problems: Sequence[str] = (
            [listing_error] if listing_error else [self._broken[n] for n in sorted(self._broken)]
        )
        if problems:
            self._health.report(
                COMPONENT,
                Status.DEGRADED,
                "; ".join(problems)[:1000],
                metadata={"broken_files": sorted(self._broken), "files": len(self._seen)},
            )
        else:
            self._health.report(
                COMPONENT,
                Status.HEALTHY,
                f"{len(self._seen)} file(s) loaded from {self._directory}",
                metadata={"broken_files": [], "files": len(self._seen)},
            )
