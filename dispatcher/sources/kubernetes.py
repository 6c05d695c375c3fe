"""Checks declared next to what they watch: Kubernetes Services and ConfigMaps.

- A Service carries a JSON list of check configs in the annotation
  ``clusterchecks.io/checks``. In every string of a config, ``%%host%%`` becomes the
  Service's cluster DNS name (``<name>.<namespace>.svc.<cluster domain>``), ``%%port%%``
  its first port and ``%%port_<name>%%`` its port of that name; a string that is exactly
  ``"%%port%%"`` (or a named one) becomes the port number.
- A ConfigMap labelled ``clusterchecks.io/checks=true`` holds configs in its data: each
  value is YAML (or JSON) as in the config directory.

Each object is one source (``k8s:service:<namespace>:<name>``,
``k8s:configmap:<namespace>:<name>``), so deleting the object removes its checks and
nothing else. Both kinds are listed, then watched from the list's resourceVersion; a
watch that ends is resumed from the last version seen, and ``410 Gone`` (the version
was compacted away) means list again. An object whose checks are malformed is reported
(a log line, the ``kubernetes_source`` health component, a Warning Event on the object)
and keeps the checks it had before; every other object is unaffected. Only the leader
runs the source: a new term lists everything again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import structlog
from kubernetes_asyncio.client import (
    ApiClient,
    CoreV1Api,
    CoreV1Event,
    V1EventSource,
    V1ObjectMeta,
    V1ObjectReference,
)
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from dispatcher.common.clock import Clock
from dispatcher.common.health import HealthRegistry, Status
from dispatcher.core.model import CheckConfig, SourceName
from dispatcher.core.sourceplan import check_set_size
from dispatcher.engine import Dispatcher
from dispatcher.errors import ConfigSourceError, NoLeader, TooManyChecks
from dispatcher.sources.configdir import parse_configs, validate_configs

log = structlog.get_logger(__name__)

ANNOTATION = "clusterchecks.io/checks"
LABEL = "clusterchecks.io/checks"
COMPONENT = "kubernetes_source"
PREFIX = "k8s:"
MAX_SOURCE_NAME = 253
MAX_DEPTH = 64
LIST_TIMEOUT_S = 30.0
_PLACEHOLDER = re.compile(r"%%(host|port(?:_[A-Za-z0-9-]+)?)%%")

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Kind:
    name: str
    """``service`` or ``configmap``: also the middle of the source names."""
    label_selector: str | None

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.name}:"


SERVICES = _Kind("service", None)
CONFIGMAPS = _Kind("configmap", f"{LABEL}=true")


def source_name(kind: _Kind, namespace: str, name: str) -> SourceName:
    full = f"{kind.prefix}{namespace}:{name}"
    if len(full) <= MAX_SOURCE_NAME:
        return SourceName(full)
    # ConfigMap names may be 253 characters: keep the name unique within the limit.
    tail = hashlib.sha256(full.encode()).hexdigest()[:16]
    return SourceName(f"{full[: MAX_SOURCE_NAME - 17]}-{tail}")


# ---------------------------------------------------------------- parsing


def service_configs(service: Json, *, cluster_domain: str) -> list[CheckConfig] | None:
    """The Service's checks; None when it has no annotation. Raises ConfigSourceError."""
    meta = service.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(ANNOTATION)
    if raw is None:
        return None
    where = f"service {meta.get('namespace')}/{meta.get('name')}: annotation {ANNOTATION}"
    try:
        items = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigSourceError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(items, list):
        raise ConfigSourceError(f"{where}: must be a JSON list of check configs.")
    host = f"{meta.get('name')}.{meta.get('namespace')}.svc.{cluster_domain}"
    ports = [p for p in (service.get("spec") or {}).get("ports") or [] if isinstance(p, dict)]
    values: dict[str, str | int] = {"host": host}
    if ports:
        values["port"] = ports[0].get("port", 0)
    for port in ports:
        if port.get("name"):
            values[f"port_{port['name']}"] = port.get("port", 0)
    templated = [
        (f"{where}, config {i}", _substitute(item, values, where))
        for i, item in enumerate(items, start=1)
    ]
    return validate_configs(templated)


def _substitute(value: Any, values: Mapping[str, str | int], where: str, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ConfigSourceError(f"{where}: nested deeper than {MAX_DEPTH} levels.")
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole is not None:
            return _value(whole.group(1), values, where)
        return _PLACEHOLDER.sub(lambda m: str(_value(m.group(1), values, where)), value)
    if isinstance(value, list):
        return [_substitute(v, values, where, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, values, where, depth + 1) for k, v in value.items()}
    return value


def _value(key: str, values: Mapping[str, str | int], where: str) -> str | int:
    try:
        return values[key]
    except KeyError:
        known = ", ".join(f"%%{k}%%" for k in sorted(values))
        raise ConfigSourceError(
            f"{where}: %%{key}%% does not match the Service (it has {known})."
        ) from None


def configmap_configs(configmap: Json) -> list[CheckConfig]:
    """Every config in every data value. Raises ConfigSourceError."""
    meta = configmap.get("metadata") or {}
    data = configmap.get("data") or {}
    configs: list[CheckConfig] = []
    for key in sorted(data):
        origin = f"configmap {meta.get('namespace')}/{meta.get('name')}: {key}"
        configs.extend(parse_configs(str(data[key]), origin=origin))
    return configs


def _signature(configs: list[CheckConfig]) -> bytes:
    """What a source was given, for "nothing changed": digests and weights (a weight is
    not part of the digest)."""
    return orjson.dumps(sorted((c.digest, c.weight) for c in configs))


_NOTHING = _signature([])


def _status_message(raw: bytes, fallback: str | None) -> str:
    """The message of a Kubernetes ``Status`` body, else the HTTP reason."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return fallback or ""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return f"{body.get('reason', '')}: {body['message']}"
    return fallback or ""


# ----------------------------------------------------------------- source


class KubernetesSource:
    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        health: HealthRegistry,
        client: ApiClient,
        clock: Clock,
        namespace: str = "",
        cluster_domain: str = "cluster.local",
        watch_timeout_s: float = 300.0,
        retry_s: float = 2.0,
    ) -> None:
        self._dispatcher = dispatcher
        self._health = health
        self._client = client
        self._api = CoreV1Api(client)
        self._clock = clock
        self._namespace = namespace
        self._cluster_domain = cluster_domain
        self._watch_timeout_s = watch_timeout_s
        self._retry_s = retry_s
        self._applied: dict[SourceName, bytes] = {}
        """Source -> the digests it was last given (nothing to do when unchanged)."""
        self._broken: dict[SourceName, str] = {}
        self._failing: dict[str, str] = {}
        """Kind -> the API problem that keeps it from being followed."""
        self._known: dict[str, set[SourceName]] = {SERVICES.name: set(), CONFIGMAPS.name: set()}
        """Kind -> the objects the last list and the watch since have shown."""
        health.register(COMPONENT, required=False)
        self._standby()

    def reset(self) -> None:
        """A new term: forget what was applied; the next list applies every object."""
        self._applied.clear()
        self._broken.clear()

    async def run(self, stop: asyncio.Event) -> None:
        """Follows both kinds until ``stop`` (or cancellation, at the end of a term)."""
        try:
            async with asyncio.TaskGroup() as tasks:
                followers = [
                    tasks.create_task(self._follow(kind), name=f"kubernetes_source_{kind.name}")
                    for kind in (SERVICES, CONFIGMAPS)
                ]
                await stop.wait()
                for follower in followers:
                    follower.cancel()
        finally:
            self._standby()

    def _standby(self) -> None:
        """Not following (no term, or the term ended): healthy, nothing to report."""
        self._failing.clear()
        self._health.report(COMPONENT, Status.HEALTHY, "standby: runs while this replica leads")

    async def _follow(self, kind: _Kind) -> None:
        while True:
            try:
                version = await self._relist(kind)
                while True:
                    version = await self._watch(kind, version)
            except ApiException as exc:
                if exc.status == 410:
                    log.info("kubernetes_watch_expired", kind=kind.name, reason=exc.reason)
                    continue  # the version was compacted away: list again, at once
                self._api_problem(kind, f"HTTP {exc.status} {exc.reason}")
            except (aiohttp.ClientError, TimeoutError, OSError, NoLeader) as exc:
                self._api_problem(kind, f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                # A reply we cannot read must not end the leader's term: log, retry.
                log.exception("kubernetes_source_step_failed", kind=kind.name)
                self._api_problem(kind, f"{type(exc).__name__}: {exc}")
            await self._clock.sleep(self._retry_s)

    # --- list and watch

    def _list_call(self, kind: _Kind) -> Callable[..., Awaitable[Any]]:
        api = self._api
        if kind is SERVICES:
            if self._namespace:
                return lambda **kw: api.list_namespaced_service(self._namespace, **kw)
            return api.list_service_for_all_namespaces
        if self._namespace:
            return lambda **kw: api.list_namespaced_config_map(self._namespace, **kw)
        return api.list_config_map_for_all_namespaces

    def _selector(self, kind: _Kind) -> dict[str, str]:
        return {"label_selector": kind.label_selector} if kind.label_selector else {}

    async def _relist(self, kind: _Kind) -> str:
        """Lists every object of the kind and applies the whole set in one step:
        objects gone since (or since another term wrote the store) lose their checks."""
        reply = await self._list_call(kind)(
            _preload_content=False,  # plain JSON: the generated models are slow and unneeded
            _request_timeout=LIST_TIMEOUT_S,
            **self._selector(kind),
        )
        try:
            raw = await reply.read()
        finally:
            reply.release()
        if not 200 <= reply.status < 300:
            # Unpreloaded replies are not checked by the library: an error here must
            # not read as an empty list (that would delete every check of the kind).
            raise ApiException(status=reply.status, reason=_status_message(raw, reply.reason))
        body = orjson.loads(raw)
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise ValueError(f"the list of {kind.name}s has no items: {raw[:200]!r}")
        items = body.get("items") or []
        sets: dict[SourceName, list[CheckConfig]] = {}
        listed: set[SourceName] = set()
        for obj in items:
            source = self._source_of(kind, obj)
            listed.add(source)
            configs = await self._configs(kind, obj, source)
            if configs is not None:
                sets[source] = configs
        held = await self._dispatcher.read(lambda state: state.source_names())
        vanished = {s for s in held if s.startswith(kind.prefix) and s not in listed}
        for source in vanished:
            sets[source] = []
        for source in [s for s in self._broken if s.startswith(kind.prefix)]:
            if source not in listed:
                del self._broken[source]
        self._known[kind.name] = listed
        await self._apply(sets, force=vanished)
        self._failing.pop(kind.name, None)
        self._report()
        version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        log.info("kubernetes_listed", kind=kind.name, objects=len(items), version=version)
        return version

    async def _watch(self, kind: _Kind, version: str) -> str:
        """Applies every change after ``version`` until the server ends the watch;
        returns the last version seen (raises ApiException 410 when it is too old)."""
        async with Watch(return_type="object") as watch:
            stream = watch.stream(
                self._list_call(kind),
                resource_version=version,
                timeout_seconds=max(1, round(self._watch_timeout_s)),
                _request_timeout=self._watch_timeout_s + 10,
                allow_watch_bookmarks=True,
                **self._selector(kind),
            )
            async for event in stream:
                kind_of_event = event["type"]
                obj = event["raw_object"]
                if kind_of_event in ("ADDED", "MODIFIED"):
                    await self._upsert(kind, obj)
                elif kind_of_event == "DELETED":
                    await self._delete(kind, obj)
            return str(watch.resource_version or version)

    async def _upsert(self, kind: _Kind, obj: Json) -> None:
        source = self._source_of(kind, obj)
        configs = await self._configs(kind, obj, source)
        if configs is None:
            self._report()
            return
        self._known[kind.name].add(source)
        await self._apply({source: configs})
        self._report()

    async def _delete(self, kind: _Kind, obj: Json) -> None:
        source = self._source_of(kind, obj)
        self._broken.pop(source, None)
        self._known[kind.name].discard(source)
        await self._apply({source: []})
        self._report()

    # --- objects to configs

    def _source_of(self, kind: _Kind, obj: Json) -> SourceName:
        meta = obj.get("metadata") or {}
        return source_name(kind, str(meta.get("namespace", "")), str(meta.get("name", "")))

    async def _configs(
        self, kind: _Kind, obj: Json, source: SourceName
    ) -> list[CheckConfig] | None:
        """The object's configs; None to leave its source as it is (malformed)."""
        try:
            if kind is SERVICES:
                configs = service_configs(obj, cluster_domain=self._cluster_domain)
                if configs is None:
                    configs = []  # no annotation (any more): no checks
            else:
                configs = configmap_configs(obj)
            check_set_size(
                source,
                configs,
                max_checks_per_source=self._dispatcher.settings.max_checks_per_source,
            )
        except Exception as exc:  # whatever an object holds, it must not stop the others
            message = (
                str(exc)
                if isinstance(exc, ConfigSourceError | TooManyChecks)
                else f"{source}: {exc!r}"
            )[:1000]
            if self._broken.get(source) != message:
                self._broken[source] = message
                log.error("kubernetes_checks_invalid", source=source, error=message)
                await self._emit_event(kind, obj, message)
            return None
        self._broken.pop(source, None)
        return configs

    async def _apply(
        self,
        sets: dict[SourceName, list[CheckConfig]],
        *,
        force: Collection[SourceName] = (),
    ) -> None:
        """Hands the sets that changed since last applied (and those in ``force``: held
        by the state but not by this source's memory) to the dispatcher in one step."""
        changed: dict[SourceName, list[CheckConfig]] = {}
        for source, configs in sets.items():
            if source in force or self._applied.get(source, _NOTHING) != _signature(configs):
                changed[source] = configs
        if not changed:
            return
        changes = await self._dispatcher.replace_sources(changed)
        for source, configs in changed.items():
            if configs:
                self._applied[source] = _signature(configs)
            else:
                self._applied.pop(source, None)
            change = changes[source]
            log.info(
                "kubernetes_checks_applied",
                source=source,
                configs=len(configs),
                added=change.added,
                removed=change.removed,
            )

    # --- reporting

    def _api_problem(self, kind: _Kind, problem: str) -> None:
        if self._failing.get(kind.name) != problem:
            log.warning("kubernetes_source_failing", kind=kind.name, error=problem)
        self._failing[kind.name] = problem
        self._report()

    def _report(self) -> None:
        metadata = {
            "services": len(self._known[SERVICES.name]),
            "configmaps": len(self._known[CONFIGMAPS.name]),
            "broken": sorted(self._broken),
        }
        problems = [f"{kind}: {p}" for kind, p in sorted(self._failing.items())]
        problems += [self._broken[s] for s in sorted(self._broken)]
        if problems:
            self._health.report(
                COMPONENT, Status.DEGRADED, "; ".join(problems)[:1000], metadata=metadata
            )
        else:
            self._health.report(
                COMPONENT,
                Status.HEALTHY,
                f"watching services and configmaps in {self._namespace or 'every namespace'}",
                metadata=metadata,
            )

    async def _emit_event(self, kind: _Kind, obj: Json, message: str) -> None:
        """A Warning Event on the object, best effort (RBAC may not allow it) and
        bounded (a slow API server delays this object's report, nothing else)."""
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace", "default"))
        now = datetime.fromtimestamp(self._clock.time(), UTC)
        event = CoreV1Event(
            metadata=V1ObjectMeta(
                generate_name=f"{meta.get('name', 'object')}.", namespace=namespace
            ),
            involved_object=V1ObjectReference(
                api_version="v1",
                kind="Service" if kind is SERVICES else "ConfigMap",
                name=meta.get("name"),
                namespace=namespace,
                uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion"),
            ),
            reason="InvalidClusterChecks",
            message=message,
            type="Warning",
            source=V1EventSource(component="clusterchecks-dispatcher"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            # A timeout context on the clock, not wait_for: on 3.11 wait_for can swallow
            # the cancellation that ends the term.
            async with self._clock.timeout(self._retry_s):
                await self._api.create_namespaced_event(namespace, event)
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("kubernetes_event_failed", error=str(exc)[:300])
