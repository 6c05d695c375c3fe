"""A stand-in for the Kubernetes API server, in process on a loopback port.

Tests of the Lease backend go through kubernetes-asyncio and real HTTP, so what the client
sends is checked the way the API server checks it: Status bodies on errors,
resourceVersion preconditions, integer fields, MicroTime with six digits and a zone. It can
hang or fail on demand and logs every request.

Objects live in one store keyed by (resource, namespace, name) under one resourceVersion
counter, as in etcd, so more resources (Services, ConfigMaps, list and watch) can be
served beside Leases: add a ``Resource`` and, if it needs one, a validator.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from kubernetes_asyncio.client import ApiClient, Configuration

Json = dict[str, Any]
BODY = web.RequestKey("body", object)


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


class ObjectStore:
    """Objects as JSON, each stamped with the global resourceVersion of its last write."""

    def __init__(self) -> None:
        self._objects: dict[tuple[Resource, str, str], Json] = {}
        self.resource_version = 0

    def get(self, resource: Resource, namespace: str, name: str) -> Json:
        try:
            return copy.deepcopy(self._objects[resource, namespace, name])
        except KeyError:
            raise StatusError(
                404, "NotFound", f'{resource.qualified} "{name}" not found',
                _details(resource, name),
            ) from None  # fmt: skip

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
        meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._put(resource, namespace, name, obj)

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
        return self._put(resource, namespace, name, obj)

    def delete(self, resource: Resource, namespace: str, name: str) -> None:
        self.get(resource, namespace, name)
        del self._objects[resource, namespace, name]
        self.resource_version += 1

    def _put(self, resource: Resource, namespace: str, name: str, obj: Json) -> Json:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        self._objects[resource, namespace, name] = copy.deepcopy(obj)
        return obj


# ------------------------------------------------------------------- validation

# metav1.MicroTime is parsed with RFC3339Micro: exactly six digits, and a zone.
_MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)")


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
        if not isinstance(value, int) or isinstance(value, bool):
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


VALIDATORS: dict[Resource, Callable[[Json, str], None]] = {LEASES: _validate_lease}


def _check_object(resource: Resource, obj: object, namespace: str, name: str | None) -> Json:
    """The checks every write gets; ``name`` is the one in the URL (None on create)."""
    if not isinstance(obj, dict):
        raise _bad_request(resource, "the body must be a JSON object")
    if obj.get("kind") != resource.kind or obj.get("apiVersion") != resource.api_version:
        raise _bad_request(
            resource, f"expected kind {resource.kind!r} and apiVersion "
            f"{resource.api_version!r}, got {obj.get('kind')!r} and {obj.get('apiVersion')!r}",
        )  # fmt: skip
    meta = obj.get("metadata")
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
        validate(obj, meta["name"])
    return obj


# ----------------------------------------------------------------------- server


@dataclass
class LoggedRequest:
    method: str
    path: str
    body: Json | None
    """The JSON body as the client sent it."""
    status: int | None = None
    """None until answered (a hung request, or one whose client gave up)."""


class FakeKubernetesApi:
    def __init__(self, resources: Iterable[Resource] = (LEASES,)) -> None:
        self.resources = tuple(resources)
        self.store = ObjectStore()
        self.requests: list[LoggedRequest] = []
        self.fail_with: int | None = None
        """Answer every request with this status (500, 503) and a Status body."""
        self.url = ""
        self._hang_methods: frozenset[str] = frozenset()
        self._unhung = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._hung = 0
        self._runner: web.AppRunner | None = None

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

    def answered(self, method: str | None = None) -> list[LoggedRequest]:
        return [r for r in self.requests if r.status is not None and method in (None, r.method)]

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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def api_client(self) -> ApiClient:
        return ApiClient(Configuration(host=self.url))

    # --- handling

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

        router.add_post(collection, create)
        router.add_get(item, read)
        router.add_put(item, replace)
        router.add_delete(item, delete)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        logged = LoggedRequest(request.method, request.path, copy.deepcopy(body))
        self.requests.append(logged)
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


def _json(status: int, body: Json) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


@pytest.fixture
async def k8s_api() -> AsyncIterator[FakeKubernetesApi]:
    api = FakeKubernetesApi()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
async def k8s_client(k8s_api: FakeKubernetesApi) -> AsyncIterator[ApiClient]:
    """A kubernetes-asyncio client for the stand-in."""
    async with k8s_api.api_client() as client:
        yield client
