"""The JSON form of the persisted records, shared by the stores that keep records as
bytes (Redis hashes, SQLite rows).

Decoding is strict: a record our own encoder could not have produced raises one of
``DECODE_ERRORS``; the store turns that into a StoreError naming the record, since
guessing would load a state that does not fit together.
"""

from __future__ import annotations

from typing import Any

import orjson

from dispatcher.core.history import HistoryEntry
from dispatcher.core.model import CheckConfig, Digest, NodeName
from dispatcher.core.snapshot import NodeRecord

Raw = bytes | str


class Unreadable(ValueError):
    """A record that is valid JSON but not the shape the encoder writes."""


DECODE_ERRORS: tuple[type[Exception], ...] = (
    orjson.JSONDecodeError,
    KeyError,
    TypeError,
    ValueError,
    UnicodeDecodeError,
)
"""What decoding a record our encoder did not write may raise."""


def describe(exc: Exception) -> str:
    """Why a record was not readable, for the error that names it."""
    return str(exc) if isinstance(exc, Unreadable) else f"{type(exc).__name__}: {exc}"


def config_out(config: CheckConfig) -> bytes:
    return orjson.dumps({**config.content(), "digest": config.digest})


def config_in(raw: Raw) -> CheckConfig:
    # A takeover decodes every stored config (100,000 of them: the largest part of a
    # load), so the checks are written out rather than through helpers, and what
    # orjson has just built is kept rather than copied: nothing else holds it.
    data = orjson.loads(raw)
    if type(data) is not dict:
        raise Unreadable(f"expected a JSON object, got {type(data).__name__}")
    instances = data["instances"]
    if type(instances) is not list or any(type(i) is not dict for i in instances):
        raise Unreadable("instances must be a list of objects")
    init_config = data["init_config"]
    if type(init_config) is not dict:
        raise Unreadable("init_config must be an object")
    selector = data["node_selector"]
    if selector or type(selector) is not dict:  # the usual empty one needs no check
        selector = _str_map(selector, "node_selector")
    # The stored digest is kept as is: it is the identity sources and placements use.
    return CheckConfig(
        name=str(data["name"]),
        instances=tuple(instances),
        init_config=init_config,
        interval_s=float(data["interval_s"]),
        timeout_s=float(data["timeout_s"]),
        node_selector=selector,
        weight=float(data["weight"]),
        digest=str(data["digest"]),  # type: ignore[arg-type]  # a Digest, without the call
    )


def node_out(record: NodeRecord) -> bytes:
    return orjson.dumps(
        {"labels": dict(record.labels), "capacity": record.capacity, "cordoned": record.cordoned}
    )


def node_in(raw: Raw) -> NodeRecord:
    data = _json_object(raw)
    return NodeRecord(
        labels=_str_map(data["labels"], "labels"),
        capacity=int(data["capacity"]),
        cordoned=bool(data["cordoned"]),
    )


def source_out(held: frozenset[Digest]) -> bytes:
    return orjson.dumps(sorted(held))


def source_in(raw: Raw) -> frozenset[Digest]:
    data = orjson.loads(raw)
    if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
        raise Unreadable("a source must be a JSON list of digests")
    return frozenset(Digest(d) for d in data)


def history_out(entry: HistoryEntry) -> bytes:
    return orjson.dumps(
        {
            "run_id": entry.run_id,
            "node": entry.node,
            "ok": entry.ok,
            "errors": list(entry.errors),
            "started_at": entry.started_at,
            "duration_s": entry.duration_s,
            "ordered_at": entry.ordered_at,
        }
    )


def history_in(raw: Raw) -> HistoryEntry:
    data = _json_object(raw)
    errors = data["errors"]
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise Unreadable("errors must be a list of strings")
    return HistoryEntry(
        run_id=str(data["run_id"]),
        node=NodeName(str(data["node"])),
        ok=bool(data["ok"]),
        errors=tuple(errors),
        started_at=float(data["started_at"]),
        duration_s=float(data["duration_s"]),
        ordered_at=float(data["ordered_at"]),
    )


def _json_object(raw: Raw) -> dict[str, Any]:
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise Unreadable(f"expected a JSON object, got {type(data).__name__}")
    return data


def _str_map(value: Any, field: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise Unreadable(f"{field} must be an object of strings")
    return dict(value)
