"""The wire side of export and import (``core.transfer``): the export document's bytes,
an import document validated as a whole, and the import reply.

The export takes the state's configs under the dispatcher's lock (references, cheap)
and makes their JSON afterwards, a slice at a time.

An import document is checked entirely before anything changes: its envelope (format,
version, the shape of ``sources`` and ``cordoned``) and every config of every source.
Configs are validated and converted a slice at a time with the event loop free in
between, as a PUT's are (``convert.ConfigsIn``): the 26,000 configs of a 4 MiB
document take about half a second.
A problem names its entry as ``sources.<source>[<index>].<field>``; brackets hold list
indices, since source names may hold dots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from dispatcher import convert, wire
from dispatcher.api.table import QueryParam
from dispatcher.common.validation import (
    MAX_PROBLEMS,
    FieldProblem,
    field_problems,
    invalid_request,
)
from dispatcher.core.model import CheckConfig, NodeName, SourceName
from dispatcher.core.transfer import (
    IMPORT_MODES,
    ExportedState,
    ImportDocument,
    ImportMode,
    ImportOutcome,
    config_json,
)
from dispatcher.errors import InvalidRequest

_CONFIGS: TypeAdapter[list[wire.CheckConfigIn]] = TypeAdapter(list[wire.CheckConfigIn])
_BOOLEANS = {"true": True, "false": False}

MODE = QueryParam(
    "mode",
    {"type": "string", "enum": list(IMPORT_MODES), "default": "replace"},
    "replace (default): the document's sources become the whole desired state (other "
    "sources are emptied); merge: only the document's sources are replaced.",
)
DRY_RUN = QueryParam(
    "dry_run",
    {"type": "boolean", "default": False},
    "Validate and report the counts the import would give; change nothing.",
)


async def export_json(exported: ExportedState, *, exported_at: float, slice_checks: int) -> bytes:
    """A ``wire.ExportOut`` document, serialised straight from the exported configs,
    which are turned into JSON values a slice at a time with the event loop free in
    between (100,000 configs take a quarter of a second)."""
    sources: dict[str, list[dict[str, Any]]] = {}
    for source, configs in exported.sources.items():
        values = sources[source] = []
        for start in range(0, len(configs), slice_checks):
            values += [config_json(c) for c in configs[start : start + slice_checks]]
            await asyncio.sleep(0)
    return orjson.dumps(
        {
            "format": wire.EXPORT_FORMAT,
            "version": wire.EXPORT_VERSION,
            "exported_at": exported_at,
            "sources": sources,
            "cordoned": exported.cordoned,
        }
    )


def import_query(query: Mapping[str, str]) -> tuple[ImportMode, bool]:
    """``?mode=`` and ``?dry_run=``; 400 for a value they do not take."""
    mode = query.get("mode", "replace")
    if mode not in IMPORT_MODES:
        raise InvalidRequest(
            f"Query parameter mode={mode[:40]!r} must be replace or merge.",
            details={"fields": [{"path": "query.mode", "message": "must be replace or merge"}]},
        )
    dry_run = _BOOLEANS.get(query.get("dry_run", "false"))
    if dry_run is None:
        raise InvalidRequest(
            f"Query parameter dry_run={query['dry_run'][:40]!r} must be true or false.",
            details={"fields": [{"path": "query.dry_run", "message": "must be true or false"}]},
        )
    return mode, dry_run


async def document_in(data: Any, *, slice_checks: int) -> ImportDocument:
    """The import document of a decoded body; raises InvalidRequest naming every bad
    entry (up to ``MAX_PROBLEMS``), before anything is changed."""
    lists: dict[str, list[Any]] = {}
    envelope = data
    if isinstance(data, dict) and isinstance(data.get("sources"), dict):
        # The envelope is validated without the configs, which go a slice at a time.
        sources = data["sources"]
        lists = {k: v for k, v in sources.items() if isinstance(v, list)}
        envelope = {**data, "sources": {k: [] if k in lists else v for k, v in sources.items()}}
    problems: list[FieldProblem] = []
    body: wire.ImportIn | None = None
    try:
        body = wire.ImportIn.model_validate(envelope)
    except ValidationError as exc:
        problems += _problems(exc, ())
    configs: dict[str, list[CheckConfig]] = {}
    more = False
    for source, items in lists.items():
        converted = configs.setdefault(source, [])
        for start in range(0, len(items), slice_checks):
            if len(problems) >= MAX_PROBLEMS:
                more = True  # enough to refuse the document: stop looking
                break
            try:
                valid = _CONFIGS.validate_python(items[start : start + slice_checks])
            except ValidationError as exc:
                problems += _problems(exc, ("sources", source), start=start)
            else:
                if not problems:  # else nothing will be applied: only look for problems
                    converted += [convert.config_in(c) for c in valid]
            await asyncio.sleep(0)
    if problems or body is None:
        raise invalid_request(problems, more=more)
    return ImportDocument(
        sources={SourceName(s): configs.get(s, []) for s in body.sources},
        cordoned=[NodeName(n) for n in body.cordoned],
    )


def _problems(
    exc: ValidationError, prefix: tuple[str, ...], *, start: int = 0
) -> list[FieldProblem]:
    """``field_problems``' messages, with paths that name the entry in the document."""
    errors = exc.errors(include_url=False, include_input=False)
    found = []
    for error, problem in zip(errors, field_problems(exc), strict=True):
        loc = list(error["loc"])
        if prefix and loc and isinstance(loc[0], int):
            loc[0] += start  # a slice's index, in the source's whole list
        message = problem.message if prefix else _envelope_message(loc, error["type"], problem)
        found.append(FieldProblem(_path((*prefix, *loc)), message))
    return found


def _envelope_message(loc: list[Any], kind: str, problem: FieldProblem) -> str:
    """Plain words where pydantic's would quote a pattern or a model's name."""
    if not loc and kind == "model_type":
        return "an export document is a JSON object"
    if loc == ["format"] and kind == "literal_error":
        return f"must be {wire.EXPORT_FORMAT!r} (what the export command writes)"
    if loc == ["version"] and kind == "literal_error":
        return f"this dispatcher reads version {wire.EXPORT_VERSION} of the export format"
    if loc[:1] == ["sources"] and loc[-1:] == ["[key]"]:
        return "not a source name: 1 to 253 characters of [A-Za-z0-9._:-], other than '.' and '..'"
    if loc[:1] == ["cordoned"] and kind == "string_pattern_mismatch":
        return "not a node name: 1 to 253 characters of [A-Za-z0-9._-], other than '.' and '..'"
    return problem.message


def _path(loc: tuple[Any, ...]) -> str:
    """``sources.api:team-a[3].instances[0].url``; ``cordoned[2]``."""
    if loc[-1:] == ("[key]",):
        loc = loc[:-1]
    text = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
        elif i == 0:
            text = str(part)
        else:
            text += f".{part}"
    return text or "(body)"


def import_out(outcome: ImportOutcome, *, epoch: int) -> wire.ImportOut:
    plan = outcome.plan
    return wire.ImportOut(
        epoch=epoch,
        mode=plan.mode,
        dry_run=outcome.dry_run,
        sources={
            source: wire.ImportCountsOut(
                added=change.added, removed=change.removed, unchanged=change.unchanged
            )
            for source, change in sorted(outcome.changes.items())
        },
        skipped_sources=list(plan.skipped_sources),
        cordoned=list(plan.cordon),
        skipped_cordons=list(plan.skipped_cordons),
    )
