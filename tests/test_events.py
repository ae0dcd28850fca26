"""flagmetrics.events: turning any evaluation event into validated label values."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from types import SimpleNamespace
from typing import Any

import pytest
from litestar_flags.analytics.models import FlagEvaluationEvent
from litestar_flags.types import ErrorCode, EvaluationReason

from flagmetrics.events import (
    MAX_DURATION_MS,
    MAX_KEY_LENGTH,
    OVERFLOW,
    UNKNOWN,
    Evaluation,
    duration_ms,
    error_code,
    labels,
)


def flag_event(**fields: Any) -> FlagEvaluationEvent:
    """A litestar-flags event with sensible defaults."""
    values: dict[str, Any] = {
        "timestamp": datetime.now(UTC),
        "flag_key": "new_checkout",
        "value": True,
        "reason": EvaluationReason.TARGETING_MATCH,
        "variant": "beta_users",
        "targeting_key": "user-123",
        "evaluation_duration_ms": 1.5,
    }
    values.update(fields)
    return FlagEvaluationEvent(**values)


def plain(**fields: Any) -> SimpleNamespace:
    """A duck-typed event: only the attributes given."""
    return SimpleNamespace(**fields)


class PlainReason(Enum):
    SPLIT = "SPLIT"


class FlagKeys(Enum):
    CHECKOUT = "checkout"


# -- labels: valid events --------------------------------------------------------------------------


def test_labels_of_litestar_flags_event() -> None:
    assert labels(flag_event()) == ("new_checkout", "TARGETING_MATCH", "beta_users", [])


def test_labels_of_litestar_flags_event_without_variant_use_empty_variant() -> None:
    assert labels(flag_event(variant=None)) == ("new_checkout", "TARGETING_MATCH", "", [])


@pytest.mark.parametrize("reason", list(EvaluationReason))
def test_labels_accept_every_litestar_flags_reason(reason: EvaluationReason) -> None:
    assert labels(flag_event(reason=reason))[1] == reason.value


def test_labels_of_plain_object_with_string_reason() -> None:
    assert labels(plain(flag_key="f", reason="SPLIT", variant="b")) == ("f", "SPLIT", "b", [])


def test_labels_upper_case_a_lower_case_reason() -> None:
    assert labels(plain(flag_key="f", reason="split", variant=None))[1] == "SPLIT"


def test_labels_take_the_value_of_a_plain_enum_reason() -> None:
    assert labels(plain(flag_key="f", reason=PlainReason.SPLIT, variant=None))[1] == "SPLIT"


def test_labels_take_the_value_of_an_enum_flag_key() -> None:
    assert labels(plain(flag_key=FlagKeys.CHECKOUT, reason="DEFAULT", variant=None))[0] == "checkout"


@pytest.mark.parametrize("reason", ["CACHED", "STALE", "UNKNOWN", "ERROR"])
def test_labels_accept_openfeature_reasons(reason: str) -> None:
    assert labels(plain(flag_key="f", reason=reason, variant=None)) == ("f", reason, "", [])


def test_labels_of_flagmetrics_evaluation() -> None:
    assert labels(Evaluation(flag_key="f", reason="ERROR")) == ("f", "ERROR", "", [])


def test_labels_accept_a_flag_key_of_maximum_length() -> None:
    key = "k" * MAX_KEY_LENGTH
    assert labels(plain(flag_key=key, reason="DEFAULT", variant=None))[0] == key


def test_labels_accept_a_variant_of_maximum_length() -> None:
    variant = "v" * MAX_KEY_LENGTH
    assert labels(plain(flag_key="f", reason="DEFAULT", variant=variant))[2] == variant


def test_labels_accept_non_ascii_flag_key() -> None:
    assert labels(plain(flag_key="caf\u00e9-\u2603", reason="DEFAULT", variant=None))[0] == "caf\u00e9-\u2603"


def test_labels_return_plain_str_for_str_subclass_values() -> None:
    class Key(str):
        __slots__ = ()

    flag_key, _, variant, _ = labels(plain(flag_key=Key("f"), reason="DEFAULT", variant=Key("v")))
    assert (type(flag_key), type(variant)) == (str, str)


# -- labels: defects -------------------------------------------------------------------------------

REJECTED = ("", "", "", ["flag_key"])


def test_labels_reject_a_missing_flag_key() -> None:
    assert labels(plain(reason="DEFAULT", variant=None)) == REJECTED


def test_labels_reject_an_object_with_no_attributes() -> None:
    assert labels(object()) == REJECTED


def test_labels_reject_none() -> None:
    assert labels(None) == REJECTED


@pytest.mark.parametrize(
    "flag_key",
    [
        "",
        "k" * (MAX_KEY_LENGTH + 1),
        "bad\ud800key",
        OVERFLOW,
        None,
        42,
        4.2,
        True,
        b"bytes_key",
        ["list"],
    ],
    ids=["empty", "too-long", "lone-surrogate", "overflow-marker", "none", "int", "float", "bool", "bytes", "list"],
)
def test_labels_reject_an_invalid_flag_key(flag_key: Any) -> None:
    assert labels(plain(flag_key=flag_key, reason="DEFAULT", variant="v")) == REJECTED


@pytest.mark.parametrize(
    "variant",
    [42, 1.0, True, b"v", ["unhashable"], {"a": 1}, "v" * (MAX_KEY_LENGTH + 1), "bad\udfffvariant", OVERFLOW],
    ids=["int", "float", "bool", "bytes", "list", "dict", "too-long", "lone-surrogate", "overflow-marker"],
)
def test_labels_reject_an_invalid_variant(variant: Any) -> None:
    assert labels(plain(flag_key="f", reason="DEFAULT", variant=variant)) == ("", "", "", ["variant"])


def test_labels_treat_empty_variant_as_no_variant() -> None:
    assert labels(plain(flag_key="f", reason="DEFAULT", variant="")) == ("f", "DEFAULT", "", [])


def test_labels_treat_missing_variant_as_no_variant() -> None:
    assert labels(plain(flag_key="f", reason="DEFAULT")) == ("f", "DEFAULT", "", [])


@pytest.mark.parametrize(
    "reason",
    ["BOGUS", "", None, 3, b"DEFAULT", "DEFAULT "],
    ids=["unknown", "empty", "none", "int", "bytes", "trailing-space"],
)
def test_labels_count_an_invalid_reason_under_unknown(reason: Any) -> None:
    assert labels(plain(flag_key="f", reason=reason, variant="v")) == ("f", UNKNOWN, "v", ["reason"])


def test_labels_count_a_missing_reason_under_unknown() -> None:
    assert labels(plain(flag_key="f", variant="v")) == ("f", UNKNOWN, "v", ["reason"])


@pytest.mark.parametrize("text", ["line\nbreak", "tab\there", "nul\x00", "bell\x07", "del\x7f", "sep\u2028"])
def test_labels_reject_unprintable_flag_key(text: str) -> None:
    assert labels(plain(flag_key=text, reason="DEFAULT", variant=None)) == REJECTED


@pytest.mark.parametrize("text", ["line\nbreak", "cr\rreturn", "nul\x00"])
def test_labels_reject_unprintable_variant(text: str) -> None:
    assert labels(plain(flag_key="f", reason="DEFAULT", variant=text)) == ("", "", "", ["variant"])


def test_labels_reject_flag_key_before_looking_at_reason() -> None:
    assert labels(plain(flag_key="", reason="BOGUS", variant=[1])) == REJECTED


# -- duration_ms -----------------------------------------------------------------------------------


def test_duration_of_litestar_flags_event() -> None:
    assert duration_ms(flag_event(evaluation_duration_ms=1.5)) == 1.5


def test_duration_accepts_zero() -> None:
    assert duration_ms(plain(evaluation_duration_ms=0.0)) == 0.0


def test_duration_accepts_the_maximum() -> None:
    assert duration_ms(plain(evaluation_duration_ms=MAX_DURATION_MS)) == MAX_DURATION_MS


def test_duration_converts_int_to_float() -> None:
    value = duration_ms(plain(evaluation_duration_ms=7))
    assert (value, type(value)) == (7.0, float)


@pytest.mark.parametrize(
    "value",
    [float("nan"), -0.001, -1, float("inf"), float("-inf"), MAX_DURATION_MS + 1, 1e308, True, False, "1.5", [1.0]],
    ids=["nan", "negative", "negative-int", "inf", "-inf", "over-an-hour", "huge", "true", "false", "str", "list"],
)
def test_duration_rejects_implausible_values(value: Any) -> None:
    assert duration_ms(plain(evaluation_duration_ms=value)) is None


def test_duration_missing_is_none() -> None:
    assert duration_ms(plain(flag_key="f")) is None


def test_duration_falls_back_to_latency_ms_when_missing() -> None:
    assert duration_ms(plain(latency_ms=2.5)) == 2.5


def test_duration_falls_back_to_latency_ms_when_none() -> None:
    assert duration_ms(plain(evaluation_duration_ms=None, latency_ms=2.5)) == 2.5


def test_duration_prefers_evaluation_duration_ms_over_latency_ms() -> None:
    assert duration_ms(plain(evaluation_duration_ms=1.0, latency_ms=9.0)) == 1.0


def test_duration_validates_the_latency_ms_fallback() -> None:
    assert duration_ms(plain(latency_ms=float("nan"))) is None


# -- error_code ------------------------------------------------------------------------------------


def test_error_code_of_litestar_flags_event_is_general() -> None:
    """litestar-flags events carry no error code."""
    assert error_code(flag_event(reason=EvaluationReason.ERROR)) == "GENERAL"


@pytest.mark.parametrize("code", ["FLAG_NOT_FOUND", "TYPE_MISMATCH", "PROVIDER_FATAL", "INVALID_CONTEXT"])
def test_error_code_keeps_known_codes(code: str) -> None:
    assert error_code(plain(error_code=code)) == code


def test_error_code_upper_cases() -> None:
    assert error_code(plain(error_code="parse_error")) == "PARSE_ERROR"


def test_error_code_takes_enum_value() -> None:
    assert error_code(plain(error_code=ErrorCode.TARGETING_KEY_MISSING)) == "TARGETING_KEY_MISSING"


def test_error_code_maps_general_error_to_general() -> None:
    assert error_code(plain(error_code=ErrorCode.GENERAL_ERROR)) == "GENERAL"


@pytest.mark.parametrize("code", ["BOOM", "", None, 404, b"FLAG_NOT_FOUND"])
def test_error_code_maps_unknown_values_to_general(code: Any) -> None:
    assert error_code(plain(error_code=code)) == "GENERAL"


def test_error_code_of_evaluation() -> None:
    event = Evaluation(flag_key="f", reason="ERROR", error_code="FLAG_NOT_FOUND")
    assert error_code(event) == "FLAG_NOT_FOUND"
