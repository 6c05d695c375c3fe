"""A stand-in for the Kubernetes API server, in process on a loopback port.

Tests go through kubernetes-asyncio and real HTTP, so what the client sends is checked the
way the API server checks it: Status bodies on errors, resourceVersion preconditions,
integer fields, MicroTime with six digits and a zone. It can hang or fail on demand and logs
every request, watches included.

Objects live in one store keyed by (resource, namespace, name) under one resourceVersion
counter, as in etcd, and every write is kept in a history that watches replay and follow.
Served: Leases (read, create, replace, delete), and Services, ConfigMaps and Events (the
same, plus list and watch, namespaced and across namespaces). To serve more, add a
``Resource`` and, if it needs one, a validator.

What it does as the API server does:

- A list answers a ``<Kind>List`` whose ``metadata.resourceVersion`` is the store's current
  one; its items carry no ``apiVersion``/``kind``. ``labelSelector`` (``k=v``, ``k==v``,
  ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``) and ``fieldSelector``
  (``metadata.name``, ``metadata.namespace``) filter; ``limit``/``continue`` are ignored
  (one page).
- A watch (``watch=true``, or any Go ``ParseBool`` truth) streams one JSON event per line.
  From ``resourceVersion=N`` it replays every change after N, then follows live; without a
  resourceVersion (or ``"0"``) it starts with a synthetic ADDED per current object. A
  DELETED event carries the last state stamped with the deletion's resourceVersion. Under a
  selector, an object that stops matching comes as DELETED and one that starts matching as
  ADDED. ``timeoutSeconds`` ends the stream cleanly. A resourceVersion older than the
  compacted history is answered 200 with one ``ERROR`` event (Status 410 Expired).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from kubernetes_asyncio.client import ApiClient, Configuration

from dispatcher.common.clock import Clock, SystemClock

Json = dict[str, Any]
BODY = web.RequestKey("body", object)
LOGGED = web.RequestKey("logged", object)


@dataclass(frozen=True, slots=True)
class Resource:
    group: str
    """"" for the core group (``/api/v1``)."""
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def qualified(self) -> str:
        """As the API server names it in messages: ``leases.coordination.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
SERVICES = Resource("", "v1", "services", "Service")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
EVENTS = Resource("", "v1", "events", "Event")
ALL_RESOURCES = (LEASES, SERVICES, CONFIGMAPS, EVENTS)


class StatusError(Exception):
    """An API error, answered as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: Json | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def body(self) -> Json:
        return status_body(self.code, self.reason, self.message, self.details)


def status_body(code: int, reason: str, message: str, details: Json | None = None) -> Json:
    body: Json = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def _details(resource: Resource, name: str) -> Json:
    return {"name": name, "group": resource.group, "kind": resource.plural}


ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, slots=True)
class Change:
    """One write, as the history keeps it for watches."""

    resource_version: int
    type: ChangeType
    resource: Resource
    namespace: str
    name: str
    object: Json
    """The state written; for DELETED the last state, stamped with the deletion's version."""
    previous: Json | None
    """The state before (None for ADDED)."""


class ObjectStore:
    """Objects as JSON, each stamped with the global resourceVersion of its last write, and
    the history of writes since the last compaction."""

    def __init__(self, history_limit: int | None = None) -> None:
        self._objects: dict[tuple[Resource, str, str], Json] = {}
        self.resource_version = 0
        self.history: list[Change] = []
        self.history_limit = history_limit
        """Keep at most this many changes; older ones are compacted away."""
        self.compacted = 0
        """Changes up to this version are forgotten: a watch from an older one gets 410."""
        self._subscribers: list[Callable[[Change], None]] = []

    # --- reads

    def get(self, resource: Resource, namespace: str, name: str) -> Json:
        try:
            return copy.deepcopy(self._objects[resource, namespace, name])
        except KeyError:
            raise StatusError(
                404, "NotFound", f'{resource.qualified} "{name}" not found',
                _details(resource, name),
            ) from None  # fmt: skip

    def objects(self, resource: Resource, namespace: str | None = None) -> list[Json]:
        """Objects of ``resource`` (in ``namespace``, or all), in key order as etcd lists."""
        return [
            copy.deepcopy(obj)
            for (r, ns, _), obj in sorted(self._objects.items(), key=lambda kv: kv[0][1:])
            if r == resource and namespace in (None, ns)
        ]

    def changes_since(self, resource_version: int) -> list[Change]:
        """The changes after ``resource_version``; 410 Expired if some are forgotten."""
        if resource_version < self.compacted:
            raise StatusError(
                410, "Expired",
                f"too old resource version: {resource_version} ({self.compacted})",
            )  # fmt: skip
        return [c for c in self.history if c.resource_version > resource_version]

    # --- writes through the API, with its checks

    def create(self, resource: Resource, namespace: str, obj: Json) -> Json:
        meta = obj["metadata"]
        name = meta["name"]
        if (resource, namespace, name) in self._objects:
            raise StatusError(
                409, "AlreadyExists", f'{resource.qualified} "{name}" already exists',
                _details(resource, name),
            )  # fmt: skip
        if meta.get("resourceVersion"):
            raise StatusError(
                500, "InternalError", "resourceVersion should not be set on objects to be created"
            )
        meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        return self._write(resource, namespace, name, obj)

    def replace(self, resource: Resource, namespace: str, name: str, obj: Json) -> Json:
        stored = self.get(resource, namespace, name)
        meta = obj["metadata"]
        sent = meta.get("resourceVersion")
        if not sent:
            raise StatusError(
                422, "Invalid",
                f'{resource.kind} "{name}" is invalid: metadata.resourceVersion: Invalid '
                "value: 0x0: must be specified for an update",
                _details(resource, name),
            )  # fmt: skip
        if sent != stored["metadata"]["resourceVersion"]:
            raise StatusError(
                409, "Conflict",
                f'Operation cannot be fulfilled on {resource.qualified} "{name}": the object '
                "has been modified; please apply your changes to the latest version and try "
                "again",
                _details(resource, name),
            )  # fmt: skip
        meta["namespace"] = namespace
        meta["uid"] = stored["metadata"]["uid"]
        meta["creationTimestamp"] = stored["metadata"]["creationTimestamp"]
        return self._write(resource, namespace, name, obj)

    def delete(self, resource: Resource, namespace: str, name: str) -> None:
        last = self.get(resource, namespace, name)
        del self._objects[resource, namespace, name]
        self.resource_version += 1
        gone = copy.deepcopy(last)
        gone["metadata"]["resourceVersion"] = str(self.resource_version)
        self._record(
            Change(self.resource_version, "DELETED", resource, namespace, name, gone, last)
        )

    # --- writes for tests, past the API's checks (still recorded and watched)

    def put(self, resource: Resource, namespace: str, obj: Json) -> Json:
        """Creates or replaces ``obj`` whatever resourceVersion it carries; returns it as
        stored. ``obj`` itself is left alone."""
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", resource.api_version)
        obj.setdefault("kind", resource.kind)
        meta = obj.setdefault("metadata", {})
        name = meta["name"]
        old = self._objects.get((resource, namespace, name))
        meta["namespace"] = namespace
        meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        meta["creationTimestamp"] = old["metadata"]["creationTimestamp"] if old else _now()
        return self._write(resource, namespace, name, obj)

    def remove(self, resource: Resource, namespace: str, name: str) -> None:
        """Deletes, as ``kubectl delete`` would; 404 (StatusError) if absent."""
        self.delete(resource, namespace, name)

    def compact(self, resource_version: int | None = None) -> None:
        """Forgets the changes up to ``resource_version`` (default: all of them), as etcd
        compaction does: a watch from an older version then gets 410 Expired."""
        upto = self.resource_version if resource_version is None else resource_version
        self.compacted = max(self.compacted, upto)
        self.history = [c for c in self.history if c.resource_version > self.compacted]

    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Calls ``callback`` with every later change; returns the unsubscriber."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _write(self, resource: Resource, namespace: str, name: str, obj: Json) -> Json:
        previous = self._objects.get((resource, namespace, name))
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        self._objects[resource, namespace, name] = copy.deepcopy(obj)
        kind: ChangeType = "ADDED" if previous is None else "MODIFIED"
        now, before = copy.deepcopy(obj), copy.deepcopy(previous)
        self._record(Change(self.resource_version, kind, resource, namespace, name, now, before))
        return obj

    def _record(self, change: Change) -> None:
        self.history.append(change)
        if self.history_limit is not None and len(self.history) > self.history_limit:
            self.compact(self.history[-self.history_limit - 1].resource_version)
        for callback in list(self._subscribers):
            callback(change)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------- builders


def service(
    namespace: str,
    name: str,
    *,
    ports: Iterable[Json] = ({"name": "http", "port": 80, "protocol": "TCP"},),
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    cluster_ip: str | None = None,
) -> Json:
    """A Service as the API server would hold it (ports defaulted: TCP, targetPort=port)."""
    spec: Json = {
        "type": "ClusterIP",
        "sessionAffinity": "None",
        "ports": [{"protocol": "TCP", "targetPort": p["port"], **p} for p in ports],
    }
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
        spec["clusterIPs"] = [cluster_ip]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(namespace, name, labels, annotations),
        "spec": spec,
    }


def configmap(
    namespace: str,
    name: str,
    *,
    data: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> Json:
    obj: Json = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(namespace, name, labels, annotations),
    }
    if data is not None:
        obj["data"] = dict(data)
    return obj


def _meta(
    namespace: str, name: str, labels: dict[str, str] | None, annotations: dict[str, str] | None
) -> Json:
    meta: Json = {"name": name, "namespace": namespace}
    if labels is not None:
        meta["labels"] = dict(labels)
    if annotations is not None:
        meta["annotations"] = dict(annotations)
    return meta


# -------------------------------------------------------------------- selectors

Selector = Callable[[Json], bool]
"""Whether an object (its JSON) matches."""

_KEY = r"(?:[A-Za-z0-9][-A-Za-z0-9.]*/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_EXISTS = re.compile(rf"\s*(!?)\s*({_KEY})\s*")
_EQUALS = re.compile(rf"\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*")
_SET = re.compile(rf"\s*({_KEY})\s+(in|notin)\s*\(([^()]*)\)\s*")


def label_selector(text: str) -> Selector:
    """Parses a label selector as the API server does; 400 BadRequest if it cannot."""
    requirements = [_label_requirement(term) for term in _split_terms(text) if term.strip()]
    return lambda obj: all(r(obj.get("metadata", {}).get("labels") or {}) for r in requirements)


def _split_terms(text: str) -> list[str]:
    """On commas outside parentheses."""
    terms: list[str] = []
    depth = start = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def _label_requirement(term: str) -> Callable[[dict[str, str]], bool]:
    if m := _EXISTS.fullmatch(term):
        negated, key = m.group(1) == "!", m.group(2)
        return lambda labels: (key in labels) != negated
    if m := _EQUALS.fullmatch(term):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _SET.fullmatch(term):
        key, op, listed = m.groups()
        values = {v.strip() for v in listed.split(",")}
        if not all(re.fullmatch(_VALUE, v) for v in values):
            raise _bad_selector(term)
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    raise _bad_selector(term)


def _bad_selector(term: str) -> StatusError:
    return StatusError(400, "BadRequest", f"unable to parse requirement: {term.strip()!r}")


_FIELDS = {"metadata.name": "name", "metadata.namespace": "namespace"}


def field_selector(text: str) -> Selector:
    """``metadata.name`` and ``metadata.namespace`` with ``=``, ``==``, ``!=``."""
    checks: list[Selector] = []
    for term in text.split(","):
        if not term.strip():
            continue
        m = re.fullmatch(r"\s*([A-Za-z.]+)\s*(==|=|!=)\s*([^,]*?)\s*", term)
        if m is None:
            raise StatusError(400, "BadRequest", f"invalid selector: {text!r}")
        path, op, value = m.groups()
        if path not in _FIELDS:
            raise StatusError(400, "BadRequest", f'field label not supported: "{path}"')

        def check(obj: Json, key: str = _FIELDS[path], value: str = value, op: str = op) -> bool:
            return bool(obj["metadata"].get(key) == value) != (op == "!=")

        checks.append(check)
    return lambda obj: all(check(obj) for check in checks)


# ------------------------------------------------------------------- validation

# metav1.MicroTime is parsed with RFC3339Micro: exactly six digits, and a zone.
_MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)")
# metav1.Time is parsed with RFC3339: a zone is required, fractional seconds are accepted.
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def _bad_request(resource: Resource, problem: str) -> StatusError:
    """What the API server answers for a body it cannot decode."""
    return StatusError(
        400, "BadRequest",
        f'{resource.kind} in version "{resource.version}" cannot be handled as a '
        f"{resource.kind}: {problem}",
    )  # fmt: skip


def _invalid(resource: Resource, name: str, field_path: str, problem: str) -> StatusError:
    return StatusError(
        422, "Invalid", f'{resource.kind} "{name}" is invalid: {field_path}: {problem}',
        _details(resource, name),
    )  # fmt: skip


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_lease(obj: Json, name: str) -> None:
    spec = obj.get("spec")
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise _bad_request(LEASES, "spec must be an object")
    for key in ("leaseDurationSeconds", "leaseTransitions"):
        value = spec.get(key)
        if value is None:
            continue
        if not _is_int(value):
            raise _bad_request(
                LEASES, f"json: cannot unmarshal {value!r} into Go struct field "
                f"LeaseSpec.spec.{key} of type int32",
            )  # fmt: skip
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        raise _invalid(LEASES, name, "spec.leaseDurationSeconds", "must be greater than 0")
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        raise _invalid(LEASES, name, "spec.leaseTransitions", "must be greater than or equal to 0")
    holder = spec.get("holderIdentity")
    if holder is not None and not isinstance(holder, str):
        raise _bad_request(LEASES, "spec.holderIdentity must be a string")
    for key in ("acquireTime", "renewTime"):
        value = spec.get(key)
        if value is not None and not (
            isinstance(value, str) and _MICRO_TIME.fullmatch(value) and _parses(value)
        ):
            raise _bad_request(
                LEASES, f'parsing time {value!r} as "2006-01-02T15:04:05.000000Z07:00": '
                f"spec.{key} is not an RFC 3339 MicroTime",
            )  # fmt: skip


def _parses(value: str) -> bool:
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PROTOCOLS = ("SCTP", "TCP", "UDP")


def _validate_service(obj: Json, name: str) -> None:
    """Decoding and the checks a config source can trip on; defaults as the API server
    does: type ClusterIP, sessionAffinity None, ports' protocol TCP and targetPort=port."""
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise _bad_request(SERVICES, "spec must be an object")
    ports = spec.setdefault("ports", [])
    if not isinstance(ports, list) or not all(isinstance(p, dict) for p in ports):
        raise _bad_request(
            SERVICES, "json: cannot unmarshal into Go struct field ServiceSpec.spec.ports of "
            "type []v1.ServicePort",
        )  # fmt: skip
    kind = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if not ports and kind != "ExternalName" and spec.get("clusterIP") != "None":
        raise _invalid(SERVICES, name, "spec.ports", "Required value")
    names: set[str] = set()
    for i, port in enumerate(ports):
        where = f"spec.ports[{i}]"
        number = port.get("port")
        if not _is_int(number):
            raise _bad_request(
                SERVICES, f"json: cannot unmarshal {number!r} into Go struct field "
                f"ServicePort.spec.ports.port of type int32",
            )  # fmt: skip
        if not 1 <= number <= 65535:
            raise _invalid(
                SERVICES, name, f"{where}.port",
                f"Invalid value: {number}: must be between 1 and 65535, inclusive",
            )  # fmt: skip
        protocol = port.setdefault("protocol", "TCP")
        if protocol not in _PROTOCOLS:
            raise _invalid(
                SERVICES, name, f"{where}.protocol",
                f'Unsupported value: "{protocol}": supported values: "SCTP", "TCP", "UDP"',
            )  # fmt: skip
        port.setdefault("targetPort", number)
        port_name = port.get("name")
        if port_name is not None and not isinstance(port_name, str):
            raise _bad_request(SERVICES, f"{where}.name must be a string")
        if not port_name:
            if len(ports) > 1:
                raise _invalid(SERVICES, name, f"{where}.name", "Required value")
            continue
        if len(port_name) > 63 or not _DNS_LABEL.fullmatch(port_name):
            raise _invalid(
                SERVICES, name, f"{where}.name",
                f'Invalid value: "{port_name}": a lowercase RFC 1123 label must consist of '
                "lower case alphanumeric characters or '-', and must start and end with an "
                "alphanumeric character",
            )  # fmt: skip
        if port_name in names:
            raise _invalid(SERVICES, name, f"{where}.name", f'Duplicate value: "{port_name}"')
        names.add(port_name)


_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _validate_configmap(obj: Json, name: str) -> None:
    keys: set[str] = set()
    size = 0
    for section in ("data", "binaryData"):
        values = obj.get(section)
        if values is None:
            continue
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise _bad_request(CONFIGMAPS, f"{section} must map strings to strings")
        for key, value in values.items():
            if len(key) > 253 or not _CONFIG_KEY.fullmatch(key):
                raise _invalid(
                    CONFIGMAPS, name, f"{section}[{key}]",
                    f'Invalid value: "{key}": a valid config key must consist of alphanumeric '
                    "characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or "
                    "'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                )  # fmt: skip
            if key in keys:
                raise _invalid(CONFIGMAPS, name, f"{section}[{key}]", f'Duplicate value: "{key}"')
            keys.add(key)
            if section == "binaryData":
                try:
                    size += len(base64.b64decode(value, validate=True))
                except binascii.Error:
                    raise _bad_request(CONFIGMAPS, f"binaryData[{key}] is not base64") from None
            else:
                size += len(value.encode())
    if size > 1024 * 1024:
        raise _invalid(CONFIGMAPS, name, "[]", "Too long: must have at most 1048576 bytes")


def _validate_event(obj: Json, name: str) -> None:
    involved = obj.get("involvedObject")
    if involved is not None and not isinstance(involved, dict):
        raise _bad_request(EVENTS, "involvedObject must be an object")
    namespace = (involved or {}).get("namespace")
    if namespace and namespace != obj["metadata"].get("namespace"):
        raise _invalid(
            EVENTS, name, "involvedObject.namespace",
            f'Invalid value: "{namespace}": does not match event.namespace',
        )  # fmt: skip
    if not _is_int(obj.get("count", 0)):
        raise _bad_request(EVENTS, "json: cannot unmarshal count of type int32")
    for key in ("firstTimestamp", "lastTimestamp"):
        value = obj.get(key)
        if value is not None and not (isinstance(value, str) and _TIME.fullmatch(value)):
            raise _bad_request(
                EVENTS, f'parsing time {value!r} as "2006-01-02T15:04:05Z07:00": {key} is not '
                "RFC 3339 (a zone is required)",
            )  # fmt: skip
    value = obj.get("eventTime")
    if value is not None and not (isinstance(value, str) and _MICRO_TIME.fullmatch(value)):
        raise _bad_request(
            EVENTS, f'parsing time {value!r} as "2006-01-02T15:04:05.000000Z07:00": eventTime '
            "is not an RFC 3339 MicroTime",
        )  # fmt: skip


VALIDATORS: dict[Resource, Callable[[Json, str], None]] = {
    LEASES: _validate_lease,
    SERVICES: _validate_service,
    CONFIGMAPS: _validate_configmap,
    EVENTS: _validate_event,
}
"""Run on HTTP writes after the common checks; they may fill in defaults."""

_GENERATED = "bcdfghjklmnpqrstvwxz2456789"


def _check_object(resource: Resource, obj: object, namespace: str, name: str | None) -> Json:
    """The checks every write gets; ``name`` is the one in the URL (None on create)."""
    if not isinstance(obj, dict):
        raise _bad_request(resource, "the body must be a JSON object")
    # Left out, they are taken from the URL, as the API server does; given, they must match.
    obj.setdefault("kind", resource.kind)
    obj.setdefault("apiVersion", resource.api_version)
    if obj.get("kind") != resource.kind or obj.get("apiVersion") != resource.api_version:
        raise _bad_request(
            resource, f"expected kind {resource.kind!r} and apiVersion "
            f"{resource.api_version!r}, got {obj.get('kind')!r} and {obj.get('apiVersion')!r}",
        )  # fmt: skip
    meta = obj.get("metadata")
    if (
        name is None
        and isinstance(meta, dict)
        and not meta.get("name")
        and isinstance(meta.get("generateName"), str)
        and meta["generateName"]
    ):
        suffix = "".join(secrets.choice(_GENERATED) for _ in range(5))
        meta["name"] = meta["generateName"] + suffix
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise _invalid(resource, "", "metadata.name", "Required value: name is required")
    if name is not None and meta["name"] != name:
        raise StatusError(
            400, "BadRequest",
            f"the name of the object ({meta['name']}) does not match the name on the URL "
            f"({name})",
        )  # fmt: skip
    if meta.get("namespace") not in (None, "", namespace):
        raise StatusError(
            400, "BadRequest",
            "the namespace of the provided object does not match the namespace sent on "
            "the request",
        )  # fmt: skip
    for key in ("labels", "annotations"):
        values = meta.get(key)
        if values is not None and not (
            isinstance(values, dict) and all(isinstance(v, str) for v in values.values())
        ):
            raise _bad_request(resource, f"metadata.{key} must map strings to strings")
    validate = VALIDATORS.get(resource)
    if validate is not None:
        meta["namespace"] = namespace
        validate(obj, meta["name"])
    return obj


# ----------------------------------------------------------------------- server


_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _parse_bool(name: str, value: str) -> bool:
    """As Go's strconv.ParseBool, which the API server decodes query flags with."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise StatusError(400, "BadRequest", f'{name}: Invalid value: "{value}": not a boolean')


@dataclass
class LoggedRequest:
    method: str
    path: str
    body: Json | None
    """The JSON body as the client sent it."""
    status: int | None = None
    """None until answered (a hung request, or one whose client gave up). A watch counts as
    answered when its stream starts (200), even a 410 one."""
    query: str = ""
    """The raw query string, as sent: ``watch=True&resourceVersion=12&timeoutSeconds=2``."""

    @property
    def params(self) -> dict[str, str]:
        """The query decoded (last value wins)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))

    @property
    def is_watch(self) -> bool:
        return self.method == "GET" and self.params.get("watch", "") in _TRUE


@dataclass(eq=False)
class _OpenWatch:
    pending: list[Change] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closing: Literal["end", "abort"] | None = None

    def push(self, change: Change) -> None:
        if self.closing is None:  # closed, it sees no later change
            self.pending.append(change)
            self.wake.set()

    def close(self, how: Literal["end", "abort"]) -> None:
        self.closing = how
        self.wake.set()


_POLL_S = 0.05
"""How often an idle watch looks whether its client went away."""


class FakeKubernetesApi:
    def __init__(
        self,
        resources: Iterable[Resource] = (LEASES,),
        *,
        history_limit: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.resources = tuple(resources)
        self.clock: Clock = clock or SystemClock()
        """Times a watch's ``timeoutSeconds`` (and its look for a client gone away)."""
        self.store = ObjectStore(history_limit)
        self.requests: list[LoggedRequest] = []
        self.fail_with: int | None = None
        """Answer every request with this status (500, 503) and a Status body."""
        self.url = ""
        self._hang_methods: frozenset[str] = frozenset()
        self._unhung = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._hung = 0
        self._watches: set[_OpenWatch] = set()
        self._runner: web.AppRunner | None = None

    # --- the store, for tests

    def put(self, resource: Resource, namespace: str, obj: Json) -> Json:
        """Creates or replaces, past the API's checks; watchers see it. Returns it stored."""
        return self.store.put(resource, namespace, obj)

    def remove(self, resource: Resource, namespace: str, name: str) -> None:
        """Deletes; watchers see a DELETED."""
        self.store.remove(resource, namespace, name)

    def get(self, resource: Resource, namespace: str, name: str) -> Json:
        return self.store.get(resource, namespace, name)

    def compact(self, resource_version: int | None = None) -> None:
        """Forgets history up to ``resource_version`` (default: all): older watches get 410."""
        self.store.compact(resource_version)

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

    def events(self, namespace: str | None = None) -> list[Json]:
        """The Event objects created, oldest first."""
        found = self.store.objects(EVENTS, namespace)
        return sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))

    # --- switches

    def hang(self, methods: Iterable[str] = ("GET", "POST", "PUT", "DELETE")) -> None:
        """Accepts requests of ``methods`` and answers none of them until ``unhang``;
        then they are served in the order they came."""
        self._hang_methods = frozenset(methods)
        self._unhung.clear()

    def unhang(self) -> None:
        self._hang_methods = frozenset()
        self._unhung.set()

    @property
    def hung(self) -> int:
        """Requests waiting for ``unhang``."""
        return self._hung

    async def wait_hung(self, count: int) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: self._hung >= count)

    def close_watches(self, *, abort: bool = False) -> int:
        """Ends every open watch stream, cleanly (the chunked body ends, as on
        ``timeoutSeconds``) or, with ``abort``, by closing the connection mid-body (the
        client's read fails). Returns how many there were."""
        closed, self._watches = self._watches, set()
        for watch in closed:
            watch.close("abort" if abort else "end")
        return len(closed)

    @property
    def watching(self) -> int:
        """Watch streams open now."""
        return len(self._watches)

    async def wait_watching(self, count: int) -> None:
        """Until at least ``count`` watch streams are open: subscribed, so a change made
        after this returns reaches them (after their backlog)."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self._watches) >= count)

    def answered(self, method: str | None = None) -> list[LoggedRequest]:
        return [r for r in self.requests if r.status is not None and method in (None, r.method)]

    def lists(self) -> list[LoggedRequest]:
        """GET requests on collections that are not watches."""
        collections = {self._collection_path(r) for r in self.resources}
        return [
            r
            for r in self.requests
            if r.method == "GET" and not r.is_watch and _is_collection(r.path, collections)
        ]

    def watches(self) -> list[LoggedRequest]:
        return [r for r in self.requests if r.is_watch]

    # --- life

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        for resource in self.resources:
            self._add_routes(app.router, resource)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        self.unhang()  # hung handlers finish instead of holding up the shutdown
        self.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def api_client(self) -> ApiClient:
        return ApiClient(Configuration(host=self.url))

    # --- handling

    @staticmethod
    def _collection_path(resource: Resource) -> str:
        return f"{resource.prefix}/{resource.plural}"

    def _add_routes(self, router: web.UrlDispatcher, resource: Resource) -> None:
        store = self.store
        collection = f"{resource.prefix}/namespaces/{{namespace}}/{resource.plural}"
        item = collection + "/{name}"

        async def read(request: web.Request) -> web.Response:
            ns, name = request.match_info["namespace"], request.match_info["name"]
            return _json(200, store.get(resource, ns, name))

        async def create(request: web.Request) -> web.Response:
            ns = request.match_info["namespace"]
            obj = _check_object(resource, request[BODY], ns, None)
            return _json(201, store.create(resource, ns, obj))

        async def replace(request: web.Request) -> web.Response:
            ns, name = request.match_info["namespace"], request.match_info["name"]
            obj = _check_object(resource, request[BODY], ns, name)
            return _json(200, store.replace(resource, ns, name, obj))

        async def delete(request: web.Request) -> web.Response:
            ns, name = request.match_info["namespace"], request.match_info["name"]
            store.delete(resource, ns, name)
            return _json(200, status_body(200, "", "", _details(resource, name)))

        async def list_or_watch(request: web.Request) -> web.StreamResponse:
            return await self._list_or_watch(request, resource, request.match_info.get("namespace"))

        router.add_get(collection, list_or_watch)
        router.add_get(self._collection_path(resource), list_or_watch)
        router.add_post(collection, create)
        router.add_get(item, read)
        router.add_put(item, replace)
        router.add_delete(item, delete)

    async def _list_or_watch(
        self, request: web.Request, resource: Resource, namespace: str | None
    ) -> web.StreamResponse:
        query = request.query
        selectors = [
            label_selector(query.get("labelSelector", "")),
            field_selector(query.get("fieldSelector", "")),
        ]

        def matches(obj: Json) -> bool:
            return all(selector(obj) for selector in selectors)

        if _parse_bool("watch", query.get("watch", "false")):
            return await self._watch(request, resource, namespace, matches)
        items = [obj for obj in self.store.objects(resource, namespace) if matches(obj)]
        for obj in items:  # the API server leaves them out of list items
            obj.pop("apiVersion", None)
            obj.pop("kind", None)
        return _json(200, {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.api_version,
            "metadata": {"resourceVersion": str(self.store.resource_version)},
            "items": items,
        })  # fmt: skip

    async def _watch(
        self,
        request: web.Request,
        resource: Resource,
        namespace: str | None,
        matches: Selector,
    ) -> web.StreamResponse:
        store = self.store
        timeout, since = _watch_params(request.query)

        def event_for(change: Change) -> Json | None:
            return _watch_event(change, resource, namespace, matches)

        # From here to subscribing nothing awaits: no change falls between.
        first: list[Json] = []
        watch = _OpenWatch()
        if since in ("", "0"):
            first = [
                {"type": "ADDED", "object": obj}
                for obj in store.objects(resource, namespace)
                if matches(obj)
            ]
        else:
            try:
                watch.pending = store.changes_since(int(since))
            except StatusError as exc:
                first = [{"type": "ERROR", "object": exc.body()}]
                watch.closing = "end"
        unsubscribe: Callable[[], None] = lambda: None  # noqa: E731
        if watch.closing is None:
            unsubscribe = store.subscribe(watch.push)
            self._watches.add(watch)  # close_watches reaches it from now on
        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            logged = request[LOGGED]
            assert isinstance(logged, LoggedRequest)
            logged.status = response.status
            for event in first:
                await response.write(orjson.dumps(event) + b"\n")
            async with self._arrived:
                self._arrived.notify_all()
            if not await _follow(request, response, watch, timeout, event_for, clock=self.clock):
                return response  # the client went away
        except ConnectionResetError:
            return response  # the client went away mid-write
        finally:
            unsubscribe()
            self._watches.discard(watch)
        if watch.closing == "abort":
            if request.transport is not None:
                request.transport.close()
            return response
        with contextlib.suppress(ConnectionResetError):  # the client may be gone by now
            await response.write_eof()
        return response

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        logged = LoggedRequest(
            request.method, request.path, copy.deepcopy(body), query=request.query_string
        )
        self.requests.append(logged)
        request[LOGGED] = logged
        if request.method in self._hang_methods:
            self._hung += 1
            async with self._arrived:
                self._arrived.notify_all()
            try:
                await self._unhung.wait()
            finally:
                self._hung -= 1
        try:
            if self.fail_with is not None:
                reason = {503: "ServiceUnavailable"}.get(self.fail_with, "InternalError")
                raise StatusError(self.fail_with, reason, f"injected failure {self.fail_with}")
            if request.method in ("POST", "PUT") and not isinstance(body, dict):
                raise StatusError(400, "BadRequest", "the request body is not a JSON object")
            request[BODY] = body
            response = await handler(request)
        except StatusError as exc:
            response = _json(exc.code, exc.body())
        logged.status = response.status
        return response


def _watch_params(query: Mapping[str, str]) -> tuple[float | None, str]:
    """``timeoutSeconds`` (None: none, as 0) and ``resourceVersion`` ("" if unset)."""
    timeout: float | None = None
    if "timeoutSeconds" in query:
        raw = query["timeoutSeconds"]
        if not re.fullmatch(r"-?\d+", raw):
            raise StatusError(400, "BadRequest", f'timeoutSeconds: Invalid value: "{raw}"')
        timeout = int(raw) or None
    since = query.get("resourceVersion", "")
    if since and not since.isdigit():
        raise StatusError(
            400, "BadRequest", f'resourceVersion: Invalid value: "{since}": invalid '
            "resource version",
        )  # fmt: skip
    return timeout, since


async def _follow(
    request: web.Request,
    response: web.StreamResponse,
    watch: _OpenWatch,
    seconds: float | None,
    event_for: Callable[[Change], Json | None],
    *,
    clock: Clock,
) -> bool:
    """Streams changes until the timeout or ``close_watches``; False if the client left."""
    deadline = None if seconds is None else clock.monotonic() + seconds
    while True:
        while watch.pending and watch.closing != "abort":
            event = event_for(watch.pending.pop(0))
            if event is not None:
                await response.write(orjson.dumps(event) + b"\n")
        if watch.closing is not None:
            return True
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        left = _POLL_S if deadline is None else min(_POLL_S, deadline - clock.monotonic())
        if left <= 0:
            return True
        watch.wake.clear()
        await clock.wait(watch.wake, timeout_s=left)


def _watch_event(
    change: Change, resource: Resource, namespace: str | None, matches: Selector
) -> Json | None:
    """What one watcher sees of a change, as the watch cache decides it: under a selector,
    an object that starts matching is ADDED and one that stops matching is DELETED."""
    if change.resource != resource or namespace not in (None, change.namespace):
        return None
    now = change.type != "DELETED" and matches(change.object)
    before = change.previous is not None and matches(change.previous)
    if now:
        return {"type": "MODIFIED" if before else "ADDED", "object": change.object}
    if before and change.previous is not None:
        gone = copy.deepcopy(change.previous)
        gone["metadata"]["resourceVersion"] = str(change.resource_version)
        return {"type": "DELETED", "object": gone}
    return None


def _is_collection(path: str, collections: set[str]) -> bool:
    """``/api/v1/services`` or ``/api/v1/namespaces/x/services``."""
    if path in collections:
        return True
    m = re.fullmatch(r"(/apis?/.+)/namespaces/[^/]+/([^/]+)", path)
    return m is not None and f"{m.group(1)}/{m.group(2)}" in collections


def _json(status: int, body: Json) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
