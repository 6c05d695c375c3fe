"""Decoding a big JSON body in slices: the same value (or the same refusal) as
``pydantic_core.from_json``, the loop free between slices, and consumers fed in order."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pydantic_core
import pytest

from dispatcher.common import slicedjson

BODIES = [
    b'{"configs":[{"a":1},{"b":[1,2,{"c":null}]}],"source":"x"}',
    b' { "configs" : [ ] } ',
    b"{}",
    b'{"a":[1,2,3],"b":{"c":[4]}}',
    b'{"a":1,"a":2}',
    b'{"a":[1],"a":[2,3]}',
    b'{"a":[99999999999999999999999, -0, 1.5e308, 1e400, 0.1e-400]}',
    b'{"a":["\\u00e9\\ud83d\\ude00", "\xc3\xa9", "\\n\\t\\\\"]}',
    b'{"a" :[ 1 , 2 ] , "b" : {"c":[]} }\n',
    b"[1,2]",
    b'"s"',
    b'{"x":"\\ud83d\\ude00 a pair is fine"}',
]
INVALID = [
    b'{"configs":[1,2,]}',
    b'{"configs":[1 2]}',
    b'{"configs":[NaN]}',
    b'{"configs":[Infinity]}',
    b'{"configs":[-Infinity]}',
    b'{"a":[1]} x',
    b'{"a":[1]',
    b'{"a":',
    b"{a:1}",
    b'{"a":["\x01"]}',
    b'{"a":[' + b"[" * 3000 + b"]" * 3000 + b"]}",
    b'{"x":"\\ud800 a lone surrogate"}',
    b"\xff",
    b'\xef\xbb\xbf{"a":[1]}',
    b"",
]


@pytest.fixture(params=["sliced", "whole"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each case both ways: decoded in slices (any size) or in one call (none)."""
    threshold = 0 if request.param == "sliced" else 1 << 40
    monkeypatch.setattr(slicedjson, "SLICED_MIN_BYTES", threshold)
    return str(request.param)


@pytest.mark.parametrize("raw", BODIES)
async def test_the_value_is_what_pydantic_core_decodes(raw: bytes, path: str) -> None:
    assert await slicedjson.loads(raw, slice_elements=1) == pydantic_core.from_json(
        raw, allow_inf_nan=False
    )


@pytest.mark.parametrize("raw", INVALID)
async def test_invalid_json_is_refused_as_pydantic_core_refuses_it(raw: bytes, path: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the message is the decoder's own)
        pydantic_core.from_json(raw, allow_inf_nan=False)
    with pytest.raises(ValueError):  # noqa: PT011
        await slicedjson.loads(raw, slice_elements=2)


class Taken:
    """What a consumer was given: (start, elements) of each slice."""

    def __init__(self) -> None:
        self.slices: list[tuple[int, list[Any]]] = []

    def __call__(self, items: list[Any], start: int) -> None:
        self.slices.append((start, list(items)))

    def last_array(self) -> list[Any]:
        """The elements since the last start (a repeated key starts again)."""
        restart = max(i for i, (start, _) in enumerate(self.slices) if start == 0)
        return [x for _, items in self.slices[restart:] for x in items]


async def test_consumers_get_every_element_in_slices_in_order(path: str) -> None:
    raw = orjson.dumps({"configs": list(range(25)), "other": [1, 2], "source": "ci"})
    taken = Taken()

    value = await slicedjson.loads(raw, slice_elements=10, consume={"configs": taken})

    assert value == {"configs": [], "other": [1, 2], "source": "ci"}
    assert [start for start, _ in taken.slices] == [0, 10, 20]
    assert taken.last_array() == list(range(25))


async def test_a_repeated_key_starts_its_array_again(path: str) -> None:
    taken = Taken()

    await slicedjson.loads(
        b'{"configs":[1,2,3],"configs":[4,5]}', slice_elements=2, consume={"configs": taken}
    )

    assert taken.last_array() == [4, 5], "the last one counts, as in a whole decode"


async def test_a_repeated_key_with_an_empty_array_empties_it(path: str) -> None:
    taken = Taken()

    await slicedjson.loads(
        b'{"configs":[1,2,3],"configs":[]}', slice_elements=2, consume={"configs": taken}
    )

    assert taken.last_array() == [], "the last one counts, even when it is empty"


async def test_a_value_that_is_not_an_array_is_left_in_place(path: str) -> None:
    taken = Taken()

    value = await slicedjson.loads(b'{"configs":{"a":1}}', consume={"configs": taken})

    assert value == {"configs": {"a": 1}}
    assert taken.slices == []


async def test_the_loop_runs_between_slices() -> None:
    """Another task gets a turn between two slices of one array (sliced path)."""
    raw = orjson.dumps({"configs": list(range(50))})
    order: list[str] = []

    async def other() -> None:
        order.append("other")

    def take(items: list[Any], start: int) -> None:
        order.append(f"slice {start}")

    original = slicedjson.SLICED_MIN_BYTES
    try:
        slicedjson.SLICED_MIN_BYTES = 0
        decode = asyncio.create_task(
            slicedjson.loads(raw, slice_elements=10, consume={"configs": take})
        )
        await asyncio.sleep(0)  # the decoder's first turn: its first slice
        await other()
        await decode
    finally:
        slicedjson.SLICED_MIN_BYTES = original

    assert order[0] == "slice 0"
    assert order.index("other") < order.index("slice 40")
