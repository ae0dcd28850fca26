"""flagmetrics.events: reading any evaluation event into one validated `Reading`, in one pass."""

from __future__ import annotations

from enum import Enum
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar_flags.analytics.models import FlagEvaluationEvent
from litestar_flags.types import ErrorCode, EvaluationReason

from flagmetrics.events import (
    MAX_DURATION_MS,
    MAX_KEY_LENGTH,
    MAX_TARGETING_KEY_LENGTH,
    OVERFLOW,
    UNKNOWN,
    Defect,
    Evaluation,
    Labels,
    Reader,
    read,
)
from tests import helpers


def flag_event(**fields: Any) -> FlagEvaluationEvent:
    """A litestar-flags event of a targeted flag, changed by `fields`."""
    return helpers.flag_event(
        **{
            "flag_key": "new_checkout",
            "reason": EvaluationReason.TARGETING_MATCH,
            "variant": "beta_users",
            "targeting_key": "user-123",
            "evaluation_duration_ms": 1.5,
            **fields,
        }
    )


def plain(**fields: Any) -> SimpleNamespace:
    """A duck-typed event: only the attributes given."""
    return SimpleNamespace(**fields)


def sound(**fields: Any) -> SimpleNamespace:
    """A duck-typed event with sound labels, duration and user, changed by `fields`."""
    values: dict[str, Any] = {
        "flag_key": "f",
        "reason": "DEFAULT",
        "variant": "v",
        "targeting_key": "u",
        "evaluation_duration_ms": 1.0,
    }
    values.update(fields)
    return SimpleNamespace(**values)


def reading(
    labels: Labels | None,
    duration_s: float | None,
    user: str | None,
    error_code: str | None,
    defects: tuple[Defect, ...],
) -> tuple[Labels | None, float | None, str | None, str | None, tuple[Defect, ...]]:
    """The reading `read()` gives, field by field."""
    return labels, duration_s, user, error_code, defects


def labels(event: Any) -> tuple[Labels | None, tuple[Defect, ...]]:
    """The labels of `event` and the label defects found."""
    reading = read(event)
    return reading[0], tuple(
        d for d in reading[4] if d in (Defect.FLAG_KEY, Defect.VARIANT, Defect.REASON, Defect.EVENT)
    )


class Raising:
    """An event whose `name` attribute raises something other than AttributeError."""

    def __init__(self, name: str, **fields: Any) -> None:
        self._name = name
        self.__dict__.update(fields)

    def __getattr__(self, name: str) -> Any:
        if name == self._name:
            raise RuntimeError(f"{name} is broken")
        raise AttributeError(name)


class PlainReason(Enum):
    SPLIT = "SPLIT"


class FlagKeys(Enum):
    CHECKOUT = "checkout"


# -- labels: sound events --------------------------------------------------------------------------


def test_reading_of_litestar_flags_event() -> None:
    assert read(flag_event()) == reading(
        Labels("new_checkout", "TARGETING_MATCH", "beta_users"), 0.0015, "user-123", None, ()
    )


def test_reading_of_litestar_flags_event_without_variant_uses_empty_variant() -> None:
    assert labels(flag_event(variant=None)) == (Labels("new_checkout", "TARGETING_MATCH", ""), ())


@pytest.mark.parametrize("reason", list(EvaluationReason))
def test_every_litestar_flags_reason_is_known(reason: EvaluationReason) -> None:
    found = read(flag_event(reason=reason))[0]
    assert found is not None
    assert found.reason == reason.value


def test_plain_object_with_string_reason() -> None:
    assert labels(plain(flag_key="f", reason="SPLIT", variant="b")) == (Labels("f", "SPLIT", "b"), ())


def test_lower_case_reason_is_upper_cased() -> None:
    assert labels(plain(flag_key="f", reason="split", variant=None)) == (Labels("f", "SPLIT", ""), ())


def test_plain_enum_reason_gives_its_value() -> None:
    assert labels(plain(flag_key="f", reason=PlainReason.SPLIT, variant=None)) == (Labels("f", "SPLIT", ""), ())


def test_enum_flag_key_gives_its_value() -> None:
    assert labels(plain(flag_key=FlagKeys.CHECKOUT, reason="DEFAULT")) == (Labels("checkout", "DEFAULT", ""), ())


@pytest.mark.parametrize("reason", ["CACHED", "STALE", "UNKNOWN", "ERROR"])
def test_openfeature_reasons_are_known(reason: str) -> None:
    assert labels(plain(flag_key="f", reason=reason, variant=None)) == (Labels("f", reason, ""), ())


def test_flagmetrics_evaluation_is_read() -> None:
    assert labels(Evaluation(flag_key="f", reason="ERROR")) == (Labels("f", "ERROR", ""), ())


def test_flag_key_and_variant_of_maximum_length_are_kept() -> None:
    key, variant = "k" * MAX_KEY_LENGTH, "v" * MAX_KEY_LENGTH
    assert labels(plain(flag_key=key, reason="DEFAULT", variant=variant)) == (Labels(key, "DEFAULT", variant), ())


def test_non_ascii_flag_key_is_kept() -> None:
    assert labels(plain(flag_key="caf\u00e9-\u2603", reason="DEFAULT")) == (
        Labels("caf\u00e9-\u2603", "DEFAULT", ""),
        (),
    )


def test_str_subclass_values_become_plain_str() -> None:
    class Key(str):
        __slots__ = ()

    found, _, user, _, _ = read(sound(flag_key=Key("f"), variant=Key("v"), targeting_key=Key("u")))
    assert found is not None
    assert [type(value) for value in (*found, user)] == [str, str, str, str]


def test_empty_variant_and_missing_variant_are_no_variant() -> None:
    assert labels(plain(flag_key="f", reason="DEFAULT", variant="")) == (Labels("f", "DEFAULT", ""), ())
    assert labels(plain(flag_key="f", reason="DEFAULT")) == (Labels("f", "DEFAULT", ""), ())


# -- labels: defects -------------------------------------------------------------------------------


def test_defects_that_reject_and_those_that_keep_the_evaluation() -> None:
    assert {defect for defect in Defect if defect.rejects} == {Defect.FLAG_KEY, Defect.VARIANT, Defect.EVENT}


def test_missing_flag_key_rejects_the_event() -> None:
    assert labels(plain(reason="DEFAULT", variant=None)) == (None, (Defect.FLAG_KEY,))


@pytest.mark.parametrize("event", [object(), None], ids=["no-attributes", "none"])
def test_an_object_without_fields_is_rejected_for_its_flag_key(event: Any) -> None:
    assert labels(event) == (None, (Defect.FLAG_KEY,))


@pytest.mark.parametrize(
    "flag_key",
    ["", "k" * (MAX_KEY_LENGTH + 1), "bad\ud800key", OVERFLOW, None, 42, 4.2, True, b"bytes_key", ["list"]],
    ids=["empty", "too-long", "lone-surrogate", "overflow-marker", "none", "int", "float", "bool", "bytes", "list"],
)
def test_invalid_flag_key_rejects_the_event(flag_key: Any) -> None:
    assert read(sound(flag_key=flag_key)) == reading(None, None, None, None, (Defect.FLAG_KEY,))


@pytest.mark.parametrize(
    "variant",
    [42, 1.0, True, b"v", ["unhashable"], {"a": 1}, "v" * (MAX_KEY_LENGTH + 1), "bad\udfffvariant", OVERFLOW],
    ids=["int", "float", "bool", "bytes", "list", "dict", "too-long", "lone-surrogate", "overflow-marker"],
)
def test_invalid_variant_rejects_the_event(variant: Any) -> None:
    assert read(sound(variant=variant)) == reading(None, None, None, None, (Defect.VARIANT,))


@pytest.mark.parametrize(
    "reason",
    ["BOGUS", "", None, 3, b"DEFAULT", "DEFAULT "],
    ids=["unknown", "empty", "none", "int", "bytes", "trailing-space"],
)
def test_invalid_reason_is_counted_under_unknown(reason: Any) -> None:
    assert read(sound(reason=reason)) == reading(Labels("f", UNKNOWN, "v"), 0.001, "u", None, (Defect.REASON,))


def test_missing_reason_is_counted_under_unknown() -> None:
    assert labels(plain(flag_key="f", variant="v")) == (Labels("f", UNKNOWN, "v"), (Defect.REASON,))


@pytest.mark.parametrize("text", ["line\nbreak", "tab\there", "nul\x00", "bell\x07", "del\x7f", "sep\u2028"])
def test_unprintable_flag_key_rejects_the_event(text: str) -> None:
    assert labels(sound(flag_key=text)) == (None, (Defect.FLAG_KEY,))


@pytest.mark.parametrize("text", ["line\nbreak", "cr\rreturn", "nul\x00"])
def test_unprintable_variant_rejects_the_event(text: str) -> None:
    assert labels(sound(variant=text)) == (None, (Defect.VARIANT,))


def test_flag_key_is_checked_before_reason_and_variant() -> None:
    assert labels(plain(flag_key="", reason="BOGUS", variant=[1])) == (None, (Defect.FLAG_KEY,))


@pytest.mark.parametrize("name", ["flag_key", "reason", "variant"])
def test_label_attribute_that_raises_rejects_the_event(name: str) -> None:
    fields = {"flag_key": "f", "reason": "DEFAULT", "variant": "v"}
    del fields[name]
    assert read(Raising(name, **fields)) == reading(None, None, None, None, (Defect.EVENT,))


# -- duration --------------------------------------------------------------------------------------


def duration_s(event: Any) -> float | None:
    return read(event)[1]


def test_duration_of_litestar_flags_event_is_in_seconds() -> None:
    assert duration_s(flag_event(evaluation_duration_ms=1.5)) == 0.0015


@pytest.mark.parametrize("ms", [0.0, MAX_DURATION_MS], ids=["zero", "maximum"])
def test_durations_at_the_bounds_are_kept(ms: float) -> None:
    assert read(sound(evaluation_duration_ms=ms)) == reading(Labels("f", "DEFAULT", "v"), ms / 1000, "u", None, ())


def test_integer_duration_is_kept_as_float() -> None:
    value = duration_s(sound(evaluation_duration_ms=7))
    assert (value, type(value)) == (0.007, float)


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        -0.001,
        -1,
        float("inf"),
        float("-inf"),
        MAX_DURATION_MS + 1,
        1e308,
        True,
        False,
        "1.5",
        [1.0],
        None,
    ],
    ids=[
        "nan",
        "negative",
        "negative-int",
        "inf",
        "-inf",
        "over-an-hour",
        "huge",
        "true",
        "false",
        "str",
        "list",
        "none",
    ],
)
def test_implausible_duration_is_a_defect_and_the_evaluation_is_kept(value: Any) -> None:
    assert read(sound(evaluation_duration_ms=value)) == reading(
        Labels("f", "DEFAULT", "v"), None, "u", None, (Defect.DURATION,)
    )


def test_missing_duration_is_a_defect() -> None:
    assert read(plain(flag_key="f", reason="DEFAULT"))[4] == (Defect.DURATION,)


def test_duration_falls_back_to_latency_ms_when_missing_or_none() -> None:
    assert duration_s(plain(flag_key="f", reason="DEFAULT", latency_ms=2.5)) == 0.0025
    assert duration_s(sound(evaluation_duration_ms=None, latency_ms=2.5)) == 0.0025


def test_evaluation_duration_ms_is_preferred_over_latency_ms() -> None:
    assert duration_s(sound(evaluation_duration_ms=1.0, latency_ms=9.0)) == 0.001


def test_the_latency_ms_fallback_is_validated() -> None:
    assert read(plain(flag_key="f", reason="DEFAULT", latency_ms=float("nan")))[4] == (Defect.DURATION,)


def test_duration_attribute_that_raises_is_a_defect() -> None:
    event = Raising("evaluation_duration_ms", flag_key="f", reason="DEFAULT", variant="v", targeting_key="u")
    assert read(event) == reading(Labels("f", "DEFAULT", "v"), None, "u", None, (Defect.DURATION,))


# -- targeting key ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, ""], ids=["none", "empty"])
def test_anonymous_evaluation_has_no_user_and_no_defect(key: str | None) -> None:
    assert read(sound(targeting_key=key)) == reading(Labels("f", "DEFAULT", "v"), 0.001, None, None, ())


def test_missing_targeting_key_is_anonymous() -> None:
    assert read(plain(flag_key="f", reason="DEFAULT", evaluation_duration_ms=1.0))[2] is None


def test_targeting_key_of_maximum_length_is_kept() -> None:
    key = "u" * MAX_TARGETING_KEY_LENGTH
    assert read(sound(targeting_key=key))[2] == key


@pytest.mark.parametrize(
    "key", [42, b"user", ["u"], "u" * (MAX_TARGETING_KEY_LENGTH + 1)], ids=["int", "bytes", "list", "too-long"]
)
def test_unusable_targeting_key_is_a_defect_and_the_evaluation_is_kept(key: Any) -> None:
    assert read(sound(targeting_key=key)) == reading(
        Labels("f", "DEFAULT", "v"), 0.001, None, None, (Defect.TARGETING_KEY,)
    )


def test_targeting_key_attribute_that_raises_is_a_defect() -> None:
    event = Raising("targeting_key", flag_key="f", reason="DEFAULT", variant="v", evaluation_duration_ms=1.0)
    assert read(event) == reading(Labels("f", "DEFAULT", "v"), 0.001, None, None, (Defect.TARGETING_KEY,))


# -- error code ------------------------------------------------------------------------------------


def error_code(**fields: Any) -> str | None:
    return read(sound(reason="ERROR", **fields))[3]


def test_evaluation_that_is_no_error_has_no_error_code() -> None:
    assert read(sound(error_code="FLAG_NOT_FOUND"))[3] is None


def test_error_code_of_litestar_flags_event_is_general() -> None:
    """litestar-flags events carry no error code."""
    assert read(flag_event(reason=EvaluationReason.ERROR))[3] == "GENERAL"


@pytest.mark.parametrize("code", ["FLAG_NOT_FOUND", "TYPE_MISMATCH", "PROVIDER_FATAL", "INVALID_CONTEXT"])
def test_known_error_codes_are_kept(code: str) -> None:
    assert error_code(error_code=code) == code


def test_error_code_is_upper_cased() -> None:
    assert error_code(error_code="parse_error") == "PARSE_ERROR"


def test_enum_error_code_gives_its_value() -> None:
    assert error_code(error_code=ErrorCode.TARGETING_KEY_MISSING) == "TARGETING_KEY_MISSING"


def test_general_error_is_general() -> None:
    assert error_code(error_code=ErrorCode.GENERAL_ERROR) == "GENERAL"


@pytest.mark.parametrize("code", ["BOOM", "", None, 404, b"FLAG_NOT_FOUND"])
def test_unknown_error_codes_are_general(code: Any) -> None:
    assert error_code(error_code=code) == "GENERAL"


def test_error_code_of_evaluation() -> None:
    assert read(Evaluation(flag_key="f", reason="ERROR", error_code="FLAG_NOT_FOUND"))[3] == "FLAG_NOT_FOUND"


# -- the fast path ---------------------------------------------------------------------------------

VALUES = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["DEFAULT", "ERROR", "split", OVERFLOW, "", "x" * (MAX_KEY_LENGTH + 1)]),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
)


@given(
    flag_key=VALUES,
    reason=VALUES,
    variant=VALUES,
    user=VALUES,
    ms=VALUES,
    code=VALUES,
)
def test_reading_an_event_again_gives_the_same_reading(
    flag_key: Any, reason: Any, variant: Any, user: Any, ms: Any, code: Any
) -> None:
    """The second reading takes the fast path (the labels are known by then) and must agree with the first."""
    event = helpers.ev(flag_key, reason, variant, user, ms, code)
    first = read(event)
    assert read(event) == first
    assert read(plain(**vars(event))) == first


def test_a_reader_resolves_each_label_triple_once() -> None:
    """The reader hands the labels to `resolve` on first sight only, and gives its result back every time."""
    seen: list[Labels] = []

    def resolve(labels: Labels) -> str:
        seen.append(labels)
        return f"series of {labels.flag_key}"

    reader = Reader(resolve)
    readings = [reader.read(sound(targeting_key=f"u{i}")) for i in range(3)]
    assert seen == [Labels("f", "DEFAULT", "v")]
    assert [reading[0] for reading in readings] == ["series of f"] * 3
    assert [reading[2] for reading in readings] == ["u0", "u1", "u2"]


def test_a_reader_resolves_nothing_for_a_rejected_event() -> None:
    reader = Reader(lambda labels: pytest.fail(f"resolved {labels}"))
    assert reader.read(sound(flag_key="")) == (None, None, None, None, (Defect.FLAG_KEY,))
