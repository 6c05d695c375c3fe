"""Typed application and request state (aiohttp AppKey / RequestKey)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from dispatcher.common.clock import Clock
from dispatcher.common.health import HealthRegistry
from dispatcher.election.base import Leadership
from dispatcher.engine import Dispatcher
from dispatcher.metrics import DispatcherMetrics
from dispatcher.settings import Settings

if TYPE_CHECKING:
    from dispatcher.api.routes import Role

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
LEADERSHIP = web.AppKey("leadership", Leadership)
SETTINGS = web.AppKey("settings", Settings)
HEALTH = web.AppKey("health", HealthRegistry)
METRICS = web.AppKey("metrics", DispatcherMetrics)
CLOCK = web.AppKey("clock", Clock)
ROLE: web.RequestKey[Role] = web.RequestKey("role", object)  # type: ignore[arg-type]  # the Role enum is defined beside the routes that use it
