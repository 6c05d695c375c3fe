"""The agents' bodies on the fast path (``wire.FastStatusIn``, ``wire.FastResultsIn``):
whatever it takes, the full models take with the same values, so the route answers as
it always did; what it refuses, or what does not ``hold``, goes the full way.

Bodies are generated near the edges the full models' Python rules draw (whole floats
for integers, times beyond the clock-skew bound, a result's ``ok`` against its
errors), with bounds, types and unknown fields around them; each is written as JSON
by the standard library (integers of any size, as an agent might send)."""

from __future__ import annotations

import json
from typing import Any

import pydantic_core
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from dispatcher import convert, wire
from dispatcher.common import slicedjson
from dispatcher.common.clock import FakeClock
from dispatcher.core.model import Digest
from dispatcher.core.outcomes import RejectedResult
from tests.api.conftest import API, Api, check, result

NOW_S = 1_800_000_000.0
SKEW = wire.MAX_CLOCK_SKEW_S


def _mostly(valid: st.SearchStrategy[Any], edge: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A valid value nine times in ten, an edge case else: a body is refused when any
    of its values is, and the fast path must take many for the tests to mean much."""
    return st.one_of(*[valid] * 9, edge)


_digests = _mostly(
    st.sampled_from(["9f2c4e7a1b3d5f60", "0" * 64, "1234567890abcdef"]),
    st.sampled_from(["9F2C4E7A1B3D5F60", "9f2c", "x" * 16, "9f2c4e7a1b3d5f60\n"]),
)
_ints = _mostly(
    st.integers(0, 10),
    st.one_of(
        st.sampled_from([2**63 - 1, 2**63, 2**64 + 1, -(2**63), -1]),
        st.sampled_from([0.0, 1.0, 5.0, 2.5, -1.0, 1e20]),
        st.booleans(),
        st.sampled_from(["5", None]),
    ),
)
_floats = _mostly(
    st.one_of(st.floats(0.0, 100_000.0, allow_nan=False), st.integers(0, 100_000)),
    st.sampled_from([-1.0, -1, 86_400.0, 86_400.5, True, "1.0", None, 1e300]),
)
_times = _mostly(
    st.floats(NOW_S - 1_000, NOW_S + SKEW, allow_nan=False),
    st.one_of(
        st.sampled_from([NOW_S + SKEW + 0.001, NOW_S + 1e6, 0, -1.0, int(NOW_S), "now", True]),
        st.floats(NOW_S + SKEW - 1, NOW_S + SKEW + 1, allow_nan=False),
    ),
)
_texts = _mostly(st.text(max_size=6), st.sampled_from(["", " ", "\t\n", "x" * 4097, 5]))


def _object(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the ``required`` fields (one left out at times), any of the
    ``optional`` ones, and at times an unknown one."""
    return st.builds(
        lambda body, drop, extra: {
            **{k: v for k, v in body.items() if k != drop},
            **({"bogus": 1} if extra else {}),
        },
        st.fixed_dictionaries(required, optional=optional),
        _mostly(st.none(), st.sampled_from(sorted(required))),
        _mostly(st.just(False), st.just(True)),
    )


_stat = _object(
    {"avg_execution_s": _floats, "runs": _ints},
    {"errors": _ints, "last_error": st.one_of(st.none(), _texts), "last_run_at": _times},
)
_status = _object(
    {"last_change": _mostly(st.integers(-1, 100), _ints)},
    {
        "labels": st.one_of(st.none(), st.dictionaries(_mostly(st.just("a"), st.just("")), _texts)),
        "capacity": _mostly(st.integers(1, 10), _ints),
        "running": st.one_of(st.none(), st.lists(_digests, max_size=2)),
        "stats": st.one_of(st.none(), st.dictionaries(_digests, _stat, max_size=3)),
        "leaving": _mostly(st.booleans(), st.just(1)),
    },
)
_ok_result = st.sampled_from([(True, []), (False, ["refused"]), (False, ["", "x"])])
_result = st.builds(
    lambda body, outcome, mixed: {
        **body,
        **(dict(zip(("ok", "errors"), outcome, strict=True)) if not mixed else {}),
    },
    _object(
        {
            "digest": _digests,
            "run_id": _mostly(st.just("r1"), st.sampled_from(["", "x" * 129, 1])),
            "ok": _mostly(st.booleans(), st.just(1)),
            "started_at": _times,
            "duration_s": _floats,
        },
        {"errors": st.lists(_texts, max_size=2), "output": _texts},
    ),
    _ok_result,
    _mostly(st.just(False), st.just(True)),  # at times ok and errors as drawn, apart
)
_results = _object({"results": st.lists(_result, max_size=3)}, {})


def _full(model: type[BaseModel], raw: bytes) -> BaseModel | None:
    """What the route's full way makes of ``raw`` (None: refused)."""
    try:
        data = pydantic_core.from_json(raw, allow_inf_nan=False)
        return model.model_validate(data, context={"now_s": NOW_S})
    except (ValueError, ValidationError):
        return None


def _fast(model: type[wire.FastStatusIn | wire.FastResultsIn], raw: bytes) -> Any:
    """What the fast path takes (None: it goes the full way)."""
    if not slicedjson.parses_as_one(raw):
        return None
    try:
        body = model.model_validate_json(raw)
    except ValidationError:
        return None
    return body if body.holds(NOW_S) else None


def _raw(body: Any) -> bytes:
    return json.dumps(body).encode()


@settings(max_examples=2_000, suppress_health_check=[HealthCheck.too_slow])
@given(_status)
def test_a_status_the_fast_path_takes_is_the_same_status_the_full_way(body: Any) -> None:
    raw = _raw(body)
    fast = _fast(wire.FastStatusIn, raw)
    if fast is None:
        return
    full = _full(wire.StatusIn, raw)
    assert isinstance(full, wire.StatusIn), f"the full model refuses what the fast took: {raw!r}"
    for name in ("last_change", "labels", "capacity", "running", "leaving", "running_configs"):
        assert getattr(fast, name) == getattr(full, name), name
        assert type(getattr(fast, name)) is type(getattr(full, name)), name
    assert convert.stats_in(fast.stats) == convert.stats_in(full.stats)


@settings(max_examples=2_000, suppress_health_check=[HealthCheck.too_slow])
@given(_results)
def test_results_the_fast_path_takes_are_the_same_results_the_full_way(body: Any) -> None:
    raw = _raw(body)
    fast = _fast(wire.FastResultsIn, raw)
    if fast is None:
        return
    full = _full(wire.ResultsIn, raw)
    assert isinstance(full, wire.ResultsIn), f"the full model refuses what the fast took: {raw!r}"
    assert convert.results_in(fast.results) == convert.results_in(full.results)


def _heartbeat(now_s: float) -> dict[str, Any]:
    stat = {"avg_execution_s": 0.012, "runs": 7, "errors": 1, "last_error": "timeout"}
    return {
        "last_change": 12,
        "labels": {"zone": "a"},
        "capacity": 4,
        "stats": {f"{n:016x}": {**stat, "last_run_at": now_s - n} for n in range(10)},
    }


def _posted(now_s: float) -> dict[str, Any]:
    return {
        "results": [
            {"digest": f"{n:016x}", "run_id": f"r{n}", "ok": n % 2 == 0,
             "errors": [] if n % 2 == 0 else ["refused"], "started_at": now_s - n,
             "duration_s": 0.01, "output": "fine"}
            for n in range(30)
        ]
    }  # fmt: skip


def test_what_agents_send_takes_the_fast_path() -> None:
    """The heartbeats and results posts of a real agent's shape do (else the fast path
    would be dead code, every body paying for two validations)."""
    assert _fast(wire.FastStatusIn, _raw(_heartbeat(NOW_S))) is not None
    assert _fast(wire.FastResultsIn, _raw(_posted(NOW_S))) is not None


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (wire.FastStatusIn, {**_heartbeat(NOW_S), "last_change": 12.0}),  # a whole float
        (wire.FastStatusIn, _heartbeat(NOW_S + SKEW + 20)),  # a stat ahead of the clock
        (wire.FastResultsIn, _posted(NOW_S + SKEW + 1)),  # a run ahead of the clock
        (wire.FastResultsIn, {"results": [{**_posted(NOW_S)["results"][0], "errors": ["x"]}]}),
        (wire.FastResultsIn, {"results": [{**_posted(NOW_S)["results"][1], "errors": [" "]}]}),
        (wire.FastStatusIn, {**_heartbeat(NOW_S), "note": "NaN"}),  # a word the parser differs on
    ],
)
def test_what_the_python_rules_decide_goes_the_full_way(model: Any, body: Any) -> None:
    assert _fast(model, _raw(body)) is None


async def test_a_whole_float_and_a_future_stat_get_their_usual_answers(
    api: Api, clock: FakeClock
) -> None:
    """Through the route: a whole float is still that integer (the full way), and a stat
    too far ahead of the clock is still a 400 naming it."""
    await api.heartbeat("node-a", 0)
    digest = (await api.put_source("ci", [check(0)]))[0]
    await api.ok("POST", f"{API}/status/node-a", {"last_change": 1.0, "capacity": 2.0})
    assert (await api.node("node-a"))["capacity"] == 2
    stat = {"avg_execution_s": 0.1, "runs": 1, "last_run_at": clock.time() + SKEW + 60}
    refused = await api.post(f"{API}/status/node-a", {"last_change": -1, "stats": {digest: stat}})
    assert refused.status == 400
    assert refused.field_paths() == [f"stats.{digest}.last_run_at"]
    posted = await api.ok("POST", f"{API}/results/node-a", {"results": [result(digest)]})
    assert posted["accepted"] == 1


def test_the_agents_replies_built_as_dicts_are_their_models() -> None:
    """``convert.status_out`` and ``results_out`` (the replies built without a model)
    have every field of ``wire.StatusOut`` and ``wire.ResultsOut``, and only those,
    with the values the models hold."""
    status = convert.status_out(
        is_up_to_date=False,
        epoch=3,
        leader="dispatcher-a",
        heartbeat_interval_s=10,
        node_expiration_timeout_s=30,
        results_interval_s=2.5,
        warmup=True,
        send_running_configs=True,
    )
    assert set(status) == set(wire.StatusOut.model_fields)
    assert wire.StatusOut.model_validate(status).model_dump() == status
    rejected = [RejectedResult(Digest("9f2c4e7a1b3d5f60"), "not_assigned")]
    results = convert.results_out(epoch=3, accepted=2, rejected=rejected)
    assert set(results) == set(wire.ResultsOut.model_fields)
    assert wire.ResultsOut.model_validate(results).model_dump() == results


async def test_the_routes_take_the_fast_path(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the routes: an agent's ordinary heartbeat and results post are taken by
    the fast models (were the routes to validate with the full models alone, every
    other test here would still pass)."""
    taken: list[str] = []
    for model in (wire.FastStatusIn, wire.FastResultsIn):
        holds = model.holds

        def counted(self: Any, now_s: float, holds: Any = holds) -> bool:
            taken.append(type(self).__name__)
            return bool(holds(self, now_s))

        monkeypatch.setattr(model, "holds", counted)
    await api.heartbeat("node-a", 0)
    digest = (await api.put_source("ci", [check(0)]))[0]
    await api.ok("POST", f"{API}/results/node-a", {"results": [result(digest)]})
    assert taken == ["FastStatusIn", "FastResultsIn"]
