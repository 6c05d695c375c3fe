"""Decoding a big JSON body without holding the event loop for the whole of it.

``pydantic_core.from_json`` decodes a 4 MiB body of 100,000 small configs in about
0.35 s in one call, and the event loop serves nothing meanwhile (heartbeats, long polls,
``/healthz``). A body that big is an object whose bulk is an array (``{"configs":
[...]}``, ``{"results": [...]}``): ``loads`` decodes such an array element by element
with the standard library's C scanner and lets the loop run between slices of
elements. Everything else, and every body under ``SLICED_MIN_BYTES``, is decoded by
``pydantic_core.from_json`` in one call.

A caller may also take such an array's elements as they are decoded (``consume``), a
slice at a time, instead of getting them in the value: it validates and converts each
slice and lets go of it, so 100,000 decoded configs are never alive at once (the
collector's full passes over them stalled the loop for hundreds of milliseconds).

It accepts and refuses what ``pydantic_core.from_json(raw, allow_inf_nan=False)`` does:
``NaN`` and ``Infinity`` are refused, integers of any size are kept exact, the last of
duplicate keys wins. Where the two scanners differ (lone surrogate escapes such as
``"\\ud800"``, which the standard library accepts), a body that holds an escape of that
kind is decoded by ``pydantic_core`` in one call. One difference remains: an element
nested deeper than ``pydantic_core``'s 200 levels (and less than the interpreter's
recursion limit) decodes here; the wire models refuse such nesting anyway (400 either
way). Invalid JSON raises ``ValueError``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from json import decoder
from typing import Any

import pydantic_core

SLICED_MIN_BYTES = 256 * 1024
"""Smaller bodies decode in one call (about 20 ms for this size)."""
SLICE_ELEMENTS = 1_000
"""Array elements decoded between two turns of the event loop."""

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A \uD800-\uDFFF escape (or a backslash before "uD8..": rare enough to decode in one call).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Both exist in CPython's json module (its C scanner); typeshed does not declare them.
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder(  # type: ignore[attr-defined]
    parse_constant=_refuse_constant
).scan_once
_SCAN_STRING: Callable[[str, int], tuple[str, int]] = decoder.scanstring  # type: ignore[attr-defined]


def parses_as_one(raw: bytes) -> bool:
    """Whether pydantic's JSON parser may validate ``raw`` straight into a model
    (``model_validate_json``) with the result ``loads`` and validation would give: a
    body under ``SLICED_MIN_BYTES`` (``loads`` decodes those in one call by the same
    parser) without a ``NaN`` or ``Infinity`` anywhere (``loads`` refuses those
    constants; validating from JSON lets them through the parser, to be refused by the
    field or not). A body that holds either word, even inside a string, takes the long
    way, which is only slower."""
    return len(raw) < SLICED_MIN_BYTES and b"NaN" not in raw and b"Infinity" not in raw


Consumer = Callable[[list[Any], int], None]
"""Takes a slice of an array's elements and the index of its first element; a slice at
index 0 starts the array (again, for a repeated key: the last one counts)."""


async def loads(
    raw: bytes,
    *,
    slice_elements: int = SLICE_ELEMENTS,
    consume: Mapping[str, Consumer] | None = None,
) -> Any:
    """The JSON value of ``raw``; the loop runs between slices of ``slice_elements``
    elements of each array directly inside a top-level object. The elements of such an
    array under a key of ``consume`` go to that consumer, a slice at a time, and the
    value holds an empty array in their place."""
    consume = consume or {}
    if len(raw) < SLICED_MIN_BYTES or _SURROGATE_ESCAPE.search(raw):
        whole = pydantic_core.from_json(raw, allow_inf_nan=False)
        if isinstance(whole, dict):
            for key, take in consume.items():
                items = whole.get(key)
                if isinstance(items, list):
                    whole[key] = []
                    if not items:
                        take(items, 0)
                    for start in range(0, len(items), slice_elements):
                        if start:
                            await asyncio.sleep(0)
                        take(items[start : start + slice_elements], start)
        return whole
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    start = _skip(text, 0)
    if not text.startswith("{", start):
        return pydantic_core.from_json(raw, allow_inf_nan=False)
    try:
        value, end = await _object(text, start, slice_elements, consume)
    except IndexError as exc:
        raise ValueError("the JSON value ends too early") from exc
    if _skip(text, end) != len(text):
        raise ValueError(f"unexpected data after the JSON value at character {end}")
    return value


async def _object(
    text: str, start: int, slice_elements: int, consume: Mapping[str, Consumer]
) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    index = _skip(text, start + 1)
    if text[index] == "}":
        return result, index + 1
    while True:
        if text[index] != '"':
            raise ValueError(f"expected a key in double quotes at character {index}")
        key, index = _SCAN_STRING(text, index + 1)
        index = _skip(text, index)
        if text[index] != ":":
            raise ValueError(f"expected ':' at character {index}")
        index = _skip(text, index + 1)
        if text[index] == "[":
            result[key], index = await _array(text, index, slice_elements, consume.get(key))
        else:
            result[key], index = _value(text, index)
        index = _skip(text, index)
        if text[index] == "}":
            return result, index + 1
        if text[index] != ",":
            raise ValueError(f"expected ',' or '}}' at character {index}")
        index = _skip(text, index + 1)


async def _array(
    text: str, start: int, slice_elements: int, take: Consumer | None
) -> tuple[list[Any], int]:
    """The array at ``start`` and the index after it; with ``take``, its elements go
    there a slice at a time and the array returned is empty."""
    items: list[Any] = []
    count = 0
    index = _skip(text, start + 1)
    if text[index] == "]":
        if take is not None:
            take(items, 0)  # an empty array replaces an earlier one of a repeated key
        return items, index + 1
    while True:
        item, index = _value(text, index)
        items.append(item)
        count += 1
        if count % slice_elements == 0:
            if take is not None:
                take(items, count - len(items))
                items = []
            await asyncio.sleep(0)
        index = _skip(text, index)
        if text[index] == "]":
            if take is not None and items:
                take(items, count - len(items))
                items = []
            return items, index + 1
        if text[index] != ",":
            raise ValueError(f"expected ',' or ']' at character {index}")
        index = _skip(text, index + 1)


def _skip(text: str, index: int) -> int:
    match = _WHITESPACE.match(text, index)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _value(text: str, index: int) -> tuple[Any, int]:
    """The value at ``index`` and the index after it. (Not a coroutine: the scanner's
    StopIteration would turn into a RuntimeError leaving one.)"""
    try:
        return _SCAN(text, index)
    except StopIteration as exc:
        raise ValueError(f"expected a value at character {exc.value}") from None
    except RecursionError:
        raise ValueError(f"nested too deeply at character {index}") from None
