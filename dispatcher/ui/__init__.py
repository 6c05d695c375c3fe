"""The dashboard's static files, package data read once: no CDN, no build step.

``static/`` holds every file the page loads (``index.html``, its script, its style and
its icon); each is served under ``/ui/`` with its own route, so the route table, and the
OpenAPI document made from it, name every one with its media type.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

INDEX = "index.html"


@dataclass(frozen=True, slots=True)
class Asset:
    name: str
    media_type: str
    body: bytes


MEDIA_TYPES = {
    INDEX: "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
    "icon.svg": "image/svg+xml",
}
"""Every file the dashboard is made of, and its media type."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
"""The page loads only its own files and talks only to the dispatcher that served it
(a check's name or target is text from a source, never markup it could run)."""


@functools.cache
def asset(name: str) -> Asset:
    """One of ``MEDIA_TYPES``' files, read from the package once."""
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return Asset(name=name, media_type=MEDIA_TYPES[name], body=body)
