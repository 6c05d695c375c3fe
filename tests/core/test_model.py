"""Check configs: the digest that identifies a check, defaults, and output truncation."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.common.text import OUTPUT_LIMIT_BYTES, truncate_utf8
from dispatcher.core.model import (
    DIGEST_HEX_CHARS,
    CheckConfig,
    default_timeout_s,
    make_config,
)

BASE: dict[str, Any] = {
    "name": "http",
    "instances": [{"url": "http://shop/healthz", "expect": {"status": 200, "body": "ok"}}],
    "init_config": {"proxy": {"host": "p", "port": 3128}},
    "interval_s": 15.0,
    "timeout_s": 5.0,
    "node_selector": {"zone": "eu-1a", "disk": "ssd"},
}


def config(**overrides: Any) -> CheckConfig:
    return make_config(**{**BASE, **overrides})


# ------------------------------------------------------------------- digest


def test_same_content_gives_the_same_digest() -> None:
    assert config().digest == config().digest


def test_digest_is_pinned_across_releases() -> None:
    # Replicas of different versions and a restarted leader must agree on identities.
    check = make_config(
        name="http",
        instances=[{"url": "http://shop/healthz", "expect": {"status": 200}}],
        interval_s=15,
        node_selector={"zone": "eu-1a"},
    )
    assert check.digest == "63f93a6d83c0b6eaa74bce10595a6cbe"


def test_digest_is_32_lowercase_hex() -> None:
    assert DIGEST_HEX_CHARS == 32
    assert re.fullmatch(r"[0-9a-f]{32}", config().digest)


@pytest.mark.parametrize(
    "reordered",
    [
        pytest.param(
            {
                "instances": [
                    {"expect": {"body": "ok", "status": 200}, "url": "http://shop/healthz"}
                ]
            },
            id="instance-keys-at-every-depth",
        ),
        pytest.param({"init_config": {"proxy": {"port": 3128, "host": "p"}}}, id="init-config"),
        pytest.param({"node_selector": {"disk": "ssd", "zone": "eu-1a"}}, id="node-selector"),
    ],
)
def test_key_order_does_not_change_the_digest(reordered: dict[str, Any]) -> None:
    assert config(**reordered).digest == config().digest


@pytest.mark.parametrize(
    ("as_int", "as_float"),
    [
        pytest.param({"interval_s": 15}, {"interval_s": 15.0}, id="interval"),
        pytest.param({"timeout_s": 5}, {"timeout_s": 5.0}, id="timeout"),
        pytest.param(
            {"interval_s": 15, "timeout_s": None},
            {"interval_s": 15.0, "timeout_s": None},
            id="defaulted-timeout",
        ),
    ],
)
def test_integral_and_float_durations_give_the_same_digest(
    as_int: dict[str, Any], as_float: dict[str, Any]
) -> None:
    assert config(**as_int).digest == config(**as_float).digest


def test_weight_is_not_part_of_the_digest() -> None:
    light, heavy = config(weight=0.5), config(weight=4.0)
    assert light.digest == heavy.digest
    assert (light.weight, heavy.weight) == (0.5, 4.0)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"name": "tcp"}, id="name"),
        pytest.param({"instances": [{"url": "http://shop/other"}]}, id="instances"),
        pytest.param({"instances": []}, id="no-instances"),
        pytest.param({"init_config": {}}, id="init-config"),
        pytest.param({"interval_s": 30.0}, id="interval"),
        pytest.param({"timeout_s": 6.0}, id="timeout"),
        pytest.param({"node_selector": {"zone": "eu-1b", "disk": "ssd"}}, id="selector-value"),
        pytest.param({"node_selector": {}}, id="no-selector"),
    ],
)
def test_every_identity_field_changes_the_digest(change: dict[str, Any]) -> None:
    assert config(**change).digest != config().digest


# ----------------------------------------------------------------- defaults


@pytest.mark.parametrize(
    ("interval_s", "expected_timeout_s"),
    [(1, 1.0), (5, 5.0), (9.5, 9.5), (10, 10.0), (15, 10.0), (86400, 10.0)],
)
def test_timeout_defaults_to_the_smaller_of_10_s_and_the_interval(
    interval_s: float, expected_timeout_s: float
) -> None:
    assert default_timeout_s(interval_s) == expected_timeout_s
    made = make_config(name="tcp", instances=[{}], interval_s=interval_s)
    assert made.timeout_s == expected_timeout_s
    # The defaulted value is the one hashed: spelling it out gives the same check.
    spelled = make_config(
        name="tcp", instances=[{}], interval_s=interval_s, timeout_s=expected_timeout_s
    )
    assert spelled.digest == made.digest


def test_explicit_timeout_is_kept() -> None:
    assert make_config(name="tcp", instances=[{}], interval_s=60, timeout_s=3).timeout_s == 3.0


def test_other_defaults() -> None:
    made = make_config(name="tcp", instances=[{"host": "db"}])
    assert (made.interval_s, made.timeout_s, made.weight) == (15.0, 10.0, 1.0)
    assert made.init_config == {}
    assert dict(made.node_selector) == {}
    assert made.matches({})
    assert made.matches({"zone": "anything"})


@pytest.mark.parametrize(
    ("labels", "matches"),
    [
        ({"zone": "eu-1a", "disk": "ssd"}, True),
        ({"zone": "eu-1a", "disk": "ssd", "extra": "x"}, True),
        ({"zone": "eu-1a"}, False),
        ({"zone": "eu-1b", "disk": "ssd"}, False),
        ({}, False),
    ],
)
def test_selector_needs_every_pair(labels: dict[str, str], matches: bool) -> None:
    assert config().matches(labels) is matches


# --------------------------------------------------------------- truncation


def test_short_text_is_untouched() -> None:
    text = "ok é 🙂"
    assert truncate_utf8(text, 100) is text


def test_default_limit_is_4_kib() -> None:
    assert OUTPUT_LIMIT_BYTES == 4096
    assert len(truncate_utf8("x" * 5000).encode()) == 4096


@pytest.mark.parametrize(
    ("char", "limit", "expected_chars"),
    [
        pytest.param("é", 4095, 2047, id="2-byte-cut-in-the-middle"),
        pytest.param("é", 4096, 2048, id="2-byte-on-a-boundary"),
        pytest.param("€", 4096, 1365, id="3-byte"),
        pytest.param("🙂", 4097, 1024, id="4-byte-one-over"),
        pytest.param("🙂", 4099, 1024, id="4-byte-three-over"),
        pytest.param("🙂", 3, 0, id="less-than-one-char"),
    ],
)
def test_truncation_never_splits_a_character(char: str, limit: int, expected_chars: int) -> None:
    cut = truncate_utf8(char * 3000, limit)
    assert cut == char * expected_chars
    assert len(cut.encode("utf-8")) <= limit


@given(text=st.text(), limit=st.integers(min_value=0, max_value=64))
def test_truncation_keeps_the_longest_fitting_prefix(text: str, limit: int) -> None:
    cut = truncate_utf8(text, limit)
    assert text.startswith(cut)
    assert len(cut.encode("utf-8")) <= limit
    if cut != text:
        # The next character would not have fitted: nothing was dropped needlessly.
        assert len(text[: len(cut) + 1].encode("utf-8")) > limit
