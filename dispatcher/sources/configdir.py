"""Config directory source: every ``*.yaml`` file of a directory is a source ``file:<name>``.

A file holds one or many configs: a mapping (one config), a list of configs, or a
mapping with a ``configs`` list; several YAML documents in one file add up. Files are
re-read when they change (polled, which also follows ConfigMap symlink swaps that
inotify misses); all changes seen in one scan are applied in one step, so a check that
moves between files (or a renamed file) keeps its node. A broken file is reported in
the log and the ``config_sources`` health component and leaves the checks it held before
untouched; a deleted file removes its checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import ValidationError

from dispatcher import wire
from dispatcher.common.clock import Clock
from dispatcher.common.health import HealthRegistry, Status
from dispatcher.common.tasks import run_periodically
from dispatcher.common.validation import field_problems
from dispatcher.convert import config_in
from dispatcher.core.model import CheckConfig, SourceName
from dispatcher.core.sourceplan import check_set_size
from dispatcher.engine import Dispatcher
from dispatcher.errors import ConfigSourceError, TooManyChecks

log = structlog.get_logger(__name__)

COMPONENT = "config_sources"
SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Signature:
    mtime_ns: int
    size: int
    inode: int


RECENT_NS = 2_000_000_000
"""A file modified this recently is re-read even when its signature looks unchanged:
on file systems with coarse timestamps an edit can keep the same mtime and size."""


SOURCE_PREFIX = "file:"


def source_name(path: Path) -> SourceName:
    return SourceName(f"{SOURCE_PREFIX}{path.name}")


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys (last-one-wins hides mistakes)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                continue  # the base class refuses unhashable keys with a ConstructorError
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(value: Any, budget: int) -> int:
    """Bytes the value takes once aliases are expanded, counting no further than budget.

    YAML aliases let a tiny file stand for an enormous document (a "billion laughs");
    the walk stops as soon as the expansion passes what a file may hold.
    """
    used = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            used += 2 + len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            used += 2 + len(item)
            stack.extend(item)
        else:
            used += len(item) if isinstance(item, str) else 8
        if used > budget:
            return used
    return used


def parse_configs(text: str, *, origin: str) -> list[CheckConfig]:
    """Parses one file's text into validated configs; raises ConfigSourceError."""
    try:
        documents = list(yaml.load_all(text, Loader=_StrictLoader))  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigSourceError(f"{origin}: not valid YAML: {exc}") from exc
    except (TypeError, ValueError, RecursionError) as exc:
        # PyYAML lets some malformed documents through as Python errors (unhashable
        # keys in merges, absurd nesting): still a broken file, never a crashed scan.
        raise ConfigSourceError(f"{origin}: not valid YAML: {exc}") from exc
    if _expanded_size(documents, MAX_FILE_BYTES) > MAX_FILE_BYTES:
        raise ConfigSourceError(
            f"{origin}: expands to more than {MAX_FILE_BYTES} bytes once YAML aliases are "
            "resolved; write the configs out instead."
        )
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
    return validate_configs(raw)


def validate_configs(raw: Sequence[tuple[str, Any]]) -> list[CheckConfig]:
    """Validates (where, item) pairs as CheckConfigIn; raises ConfigSourceError naming
    the first bad one and its fields."""
    configs: list[CheckConfig] = []
    for where, item in raw:
        try:
            configs.append(config_in(wire.CheckConfigIn.model_validate(item)))
        except ValidationError as exc:
            problems = "; ".join(str(p) for p in field_problems(exc, root="(config)"))
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
        clock: Clock,
        poll_s: float = 1.0,
    ) -> None:
        self._directory = directory
        self._clock = clock
        self._dispatcher = dispatcher
        self._health = health
        self._poll_s = poll_s
        self._seen: dict[str, _Signature] = {}
        self._broken: dict[str, str] = {}
        self._hashes: dict[str, str] = {}
        self._prune = False
        health.register(COMPONENT, required=False)

    async def run(self, stop: asyncio.Event) -> None:
        await run_periodically(
            "config_dir", self.scan, period_s=self._poll_s, stop=stop, clock=self._clock
        )

    def reset(self) -> None:
        """Forgets what was applied: a new leadership term starts from another state
        (empty, or loaded from the shared store), so the next scan applies every file
        and removes ``file:`` sources whose file is gone."""
        self._seen.clear()
        self._hashes.clear()
        self._broken.clear()
        self._prune = True

    async def scan(self) -> None:
        """Applies every change in the directory since the last scan, in one step."""
        try:
            current = await asyncio.to_thread(self._list)
        except OSError as exc:
            self._report(f"cannot list {self._directory}: {exc.strerror or exc}")
            return
        sets: dict[SourceName, list[CheckConfig]] = {}
        loaded: dict[str, tuple[_Signature, str]] = {}
        removed = sorted(set(self._seen) - set(current))
        for name in removed:
            sets[source_name(Path(name))] = []
        if self._prune:
            sets.update({source: [] for source in await self._vanished(current)})
        now_ns = int(self._clock.time() * 1e9)
        for name, signature in sorted(current.items()):
            recent = now_ns - signature.mtime_ns < RECENT_NS
            if self._seen.get(name) == signature and not recent:
                continue
            outcome = await self._load(self._directory / name)
            if outcome is None:
                self._seen[name] = signature  # broken or unchanged: judged, nothing to apply
                continue
            configs, digest = outcome
            sets[source_name(Path(name))] = configs
            loaded[name] = (signature, digest)
        if sets:
            changes = await self._dispatcher.replace_sources(sets)
            self._prune = False
            # Only what was applied counts as seen: a failed apply is retried next scan.
            for name in removed:
                del self._seen[name]
                self._hashes.pop(name, None)
                self._broken.pop(name, None)
                log.info("config_file_removed", file=name)
            for name, (signature, digest) in loaded.items():
                self._seen[name] = signature
                self._hashes[name] = digest
            for source, change in sorted(changes.items()):
                log.info(
                    "config_file_loaded",
                    file=source.removeprefix("file:"),
                    configs=len(sets[source]),
                    added=change.added,
                    removed=change.removed,
                )
        else:
            self._prune = False
        self._report()

    async def _vanished(self, current: dict[str, _Signature]) -> list[SourceName]:
        """``file:`` sources the state holds (loaded from the shared store) whose file
        is no longer in the directory."""
        wanted = {source_name(Path(name)) for name in current}
        held = await self._dispatcher.read(lambda state: state.source_names())
        return [s for s in held if s.startswith(SOURCE_PREFIX) and s not in wanted]

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

    async def _load(self, path: Path) -> tuple[list[CheckConfig], str] | None:
        """The file's configs and content hash when it changed and is valid, else None."""
        try:
            text = await asyncio.to_thread(_read, path)
            digest = hashlib.sha256(text.encode()).hexdigest()
            if self._hashes.get(path.name) == digest and path.name not in self._broken:
                return None
            # Parsing a large file takes long enough to delay heartbeats: not on the loop.
            configs = await asyncio.to_thread(parse_configs, text, origin=path.name)
            check_set_size(
                source_name(path),
                configs,
                max_checks_per_source=self._dispatcher.settings.max_checks_per_source,
            )
        except (OSError, ConfigSourceError, TooManyChecks) as exc:
            message = str(exc) if isinstance(exc, ConfigSourceError) else f"{path.name}: {exc}"
            if self._broken.get(path.name) != message:
                log.error("config_file_invalid", file=path.name, error=message)
            self._broken[path.name] = message
            return None
        self._broken.pop(path.name, None)
        return configs, digest

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
