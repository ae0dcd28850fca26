"""Turns any evaluation event (litestar-flags, OpenFeature, a plain object) into validated label values.

`record()` only comes here for a label combination it has not seen, or for a field that failed its
fast check; everything here may be slow, and nothing here raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

__all__ = [
    "ERROR",
    "ERROR_CODES",
    "KNOWN_REASONS",
    "MAX_DURATION_MS",
    "MAX_KEY_LENGTH",
    "MAX_TARGETING_KEY_LENGTH",
    "OVERFLOW",
    "UNKNOWN",
    "Evaluation",
    "duration_ms",
    "error_code",
    "labels",
    "valid_label",
]

ERROR: Final = "ERROR"
UNKNOWN: Final = "UNKNOWN"
OVERFLOW: Final = "__overflow__"
"""Label value standing for every flag key or variant beyond a cardinality cap."""

# litestar-flags' EvaluationReason values plus OpenFeature's own reasons.
KNOWN_REASONS: Final = frozenset(
    {
        "DEFAULT",
        "STATIC",
        "TARGETING_MATCH",
        "OVERRIDE",
        "SPLIT",
        "DISABLED",
        ERROR,
        "CACHED",
        "STALE",
        UNKNOWN,
    }
)

# OpenFeature's error codes plus litestar-flags' GENERAL_ERROR; anything else is counted as GENERAL.
ERROR_CODES: Final = frozenset(
    {
        "PROVIDER_NOT_READY",
        "PROVIDER_FATAL",
        "FLAG_NOT_FOUND",
        "PARSE_ERROR",
        "TYPE_MISMATCH",
        "TARGETING_KEY_MISSING",
        "INVALID_CONTEXT",
        "GENERAL",
        "GENERAL_ERROR",
    }
)

MAX_KEY_LENGTH: Final = 200
"""Longest accepted flag key or variant, in characters."""

MAX_TARGETING_KEY_LENGTH: Final = 1024
"""Longest accepted targeting key, in characters."""

MAX_DURATION_MS: Final = 3_600_000.0
"""Longest accepted evaluation duration, in milliseconds (one hour)."""

_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class Evaluation:
    """An evaluation event built by flagmetrics' own adapters, with the attributes `record()` reads."""

    flag_key: str
    reason: str
    variant: str | None = None
    targeting_key: str | None = None
    evaluation_duration_ms: float | None = None
    error_code: str | None = None


def error_code(event: Any) -> str:
    """Return the event's error code as a bounded label value (GENERAL when missing or unknown)."""
    try:
        value = getattr(event, "error_code", None)
    except Exception:
        return "GENERAL"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str) and value.upper() in ERROR_CODES:
        return "GENERAL" if value.upper() == "GENERAL_ERROR" else value.upper()
    return "GENERAL"


def labels(event: Any) -> tuple[str, str, str, list[str]]:
    """Return (flag_key, reason, variant, defects); an empty flag_key means the event is rejected.

    Defects name what was wrong: `flag_key` and `variant` reject the event, `reason` is counted
    under UNKNOWN, and `event` (an attribute that raised) rejects it.
    """
    try:
        return _labels(event)
    except Exception:
        return "", "", "", ["event"]


def _labels(event: Any) -> tuple[str, str, str, list[str]]:
    defects: list[str] = []
    flag_key = _label(getattr(event, "flag_key", _MISSING))
    if flag_key is None:
        return "", "", "", ["flag_key"]
    raw_variant = getattr(event, "variant", None)
    variant = "" if raw_variant is None or raw_variant == "" else _label(raw_variant)
    if variant is None:
        return "", "", "", ["variant"]
    reason = _reason(getattr(event, "reason", _MISSING))
    if reason is None:
        defects.append("reason")
        reason = UNKNOWN
    return flag_key, reason, variant, defects


def duration_ms(event: Any) -> float | None:
    """Return the evaluation duration in milliseconds, or None when missing or not plausible."""
    try:
        value = getattr(event, "evaluation_duration_ms", None)
        if value is None:
            value = getattr(event, "latency_ms", None)
    except Exception:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= MAX_DURATION_MS):
        return None
    return value


def valid_label(value: Any) -> bool:
    """Whether `value` is usable as a flag key or variant label value as it is."""
    return isinstance(value, str) and _label(value) == value


def _label(value: Any) -> str | None:
    if isinstance(value, Enum):
        value = value.value
    if not isinstance(value, str):
        return None
    text = str(value)  # a plain str, also for str subclasses
    # Printable only: no control characters, line breaks or lone surrogates in label values.
    if not text or len(text) > MAX_KEY_LENGTH or text == OVERFLOW or not text.isprintable():
        return None
    return text


def _reason(value: Any) -> str | None:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str) and value.upper() in KNOWN_REASONS:
        return str(value.upper())
    return None
