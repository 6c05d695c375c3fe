"""Small text helpers shared by the dispatcher and node agents."""

from __future__ import annotations

OUTPUT_LIMIT_BYTES = 4096
"""A check's output is cut to this much UTF-8 (API.md, results)."""


def truncate_utf8(text: str, limit_bytes: int = OUTPUT_LIMIT_BYTES) -> str:
    """Cuts text to at most ``limit_bytes`` of UTF-8 without splitting a character."""
    if len(text) * 4 <= limit_bytes:
        return text  # no character takes more than 4 bytes: nothing to cut, nothing to encode
    encoded = text.encode("utf-8")
    if len(encoded) <= limit_bytes:
        return text
    return encoded[:limit_bytes].decode("utf-8", errors="ignore")
