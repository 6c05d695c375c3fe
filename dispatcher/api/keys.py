"""Typed application and request state (aiohttp AppKey / RequestKey)."""

from __future__ import annotations

import enum

import aiohttp
from aiohttp import web

from dispatcher.api.unreachable import UnreachableLeaders
from dispatcher.common.clock import Clock
from dispatcher.common.health import HealthRegistry
from dispatcher.convert import ConfigFragments
from dispatcher.election.base import Leadership
from dispatcher.engine import Dispatcher
from dispatcher.metrics import DispatcherMetrics
from dispatcher.replicas import ReplicaReporter
from dispatcher.settings import Settings

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
LEADERSHIP = web.AppKey("leadership", Leadership)
SETTINGS = web.AppKey("settings", Settings)
HEALTH = web.AppKey("health", HealthRegistry)
METRICS = web.AppKey("metrics", DispatcherMetrics)
CLOCK = web.AppKey("clock", Clock)
REPLICAS = web.AppKey("replicas", ReplicaReporter)
FORWARD_SESSION = web.AppKey("forward_session", aiohttp.ClientSession)
UNREACHABLE = web.AppKey("unreachable_leaders", UnreachableLeaders)
CONFIG_FRAGMENTS = web.AppKey("config_fragments", ConfigFragments)
OPENAPI = web.AppKey("openapi", bytes)
"""The OpenAPI document of the app's routes, serialised once when the app is built."""


class Role(enum.Enum):
    """The caller's role, as its bearer token proves it (API.md, Authentication)."""

    NODE = "node"
    SOURCE = "source"
    ADMIN = "admin"


ROLE = web.RequestKey("role", Role)
