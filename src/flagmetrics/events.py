"""Internal: reads any evaluation event (litestar-flags, OpenFeature, a plain object) into one validated `Reading`.

A `Reader` is the only place that looks at an event's fields. The common case (labels seen before,
a float duration, a string or no targeting key) costs one cache lookup; anything else takes the
careful path, which validates each field and names what was wrong as a `Defect`. Nothing here
raises and nothing here touches a metric.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, Final, Generic, NamedTuple, TypeAlias, TypeVar

__all__ = [
    "ERROR",
    "ERROR_CODES",
    "KNOWN_REASONS",
    "MAX_DURATION_MS",
    "MAX_KEY_LENGTH",
    "MAX_TARGETING_KEY_LENGTH",
    "OVERFLOW",
    "UNKNOWN",
    "Defect",
    "Evaluation",
    "Labels",
    "Reader",
    "Reading",
    "label",
    "read",
    "reason",
    "valid_label",
]

ERROR: Final = "ERROR"
UNKNOWN: Final = "UNKNOWN"
OVERFLOW: Final = "__overflow__"
"""Label value standing for every flag key or variant beyond a cardinality cap."""

# litestar-flags' EvaluationReason values plus OpenFeature's own reasons.
KNOWN_REASONS: Final = frozenset(
    {"DEFAULT", "STATIC", "TARGETING_MATCH", "OVERRIDE", "SPLIT", "DISABLED", ERROR, "CACHED", "STALE", UNKNOWN}
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

T = TypeVar("T")

_LABELS_CACHE_LIMIT: Final = 100_000
"""Most raw (flag_key, reason, variant) triples remembered; past it, new ones take the careful path."""


class Defect(StrEnum):
    """What was wrong with an event; the value is the `defect` label of `flagmetrics_invalid_events_total`."""

    FLAG_KEY = "flag_key"
    """Missing, empty, not a printable string of at most 200 characters: the event is rejected."""
    VARIANT = "variant"
    """Not a printable string of at most 200 characters: the event is rejected."""
    EVENT = "event"
    """An attribute raised while the labels were read: the event is rejected."""
    REASON = "reason"
    """Missing or unknown: the evaluation is counted as UNKNOWN."""
    DURATION = "duration"
    """Missing, not a number, NaN, negative, infinite or over an hour: counted without a duration."""
    TARGETING_KEY = "targeting_key"
    """Not a string, over 1,024 characters, or raised: counted without its user."""

    @property
    def rejects(self) -> bool:
        """Whether an event with this defect is not counted at all."""
        return self in _REJECTING


_REJECTING: Final = frozenset({Defect.FLAG_KEY, Defect.VARIANT, Defect.EVENT})


class Labels(NamedTuple):
    """The validated label values of an evaluation (variant `""` when it has none)."""

    flag_key: str
    reason: str
    variant: str


Reading: TypeAlias = tuple[T | None, float | None, str | None, str | None, tuple[Defect, ...]]
"""What `Reader.read` gives for one event, all validated: `(target, duration_s, user, error_code, defects)`.

- `target`: what the reader's `resolve` made of the event's `Labels`; None when the event is rejected;
- `duration_s`: the evaluation time in seconds; None when missing or implausible;
- `user`: the targeting key; None for anonymous evaluations and unusable keys;
- `error_code`: for ERROR evaluations a known error code (GENERAL when missing or unknown), else None;
- `defects`: what was wrong, in the order found; empty for a sound event.

A plain tuple, not a class: `record()` builds one per evaluation and unpacks it at once.
"""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """An evaluation event built by flagmetrics' own adapters, with the attributes `read()` looks at."""

    flag_key: str
    reason: str
    variant: str | None = None
    targeting_key: str | None = None
    evaluation_duration_ms: float | None = None
    error_code: str | None = None


_NO_DEFECTS: Final[tuple[Defect, ...]] = ()


class Reader(Generic[T]):
    """Read events in one pass, resolving each new label triple once with `resolve`.

    The common case (a raw (flag_key, reason, variant) triple seen before, a float duration, a
    string or no targeting key) costs one dictionary lookup; anything else takes the careful path,
    which validates each field. Safe from several threads.
    """

    __slots__ = ("_known", "_resolve")

    def __init__(self, resolve: Callable[[Labels], T]) -> None:
        self._resolve = resolve
        # Raw attribute triple -> (what `resolve` made of its labels, whether it is an ERROR).
        self._known: dict[tuple[Any, Any, Any], tuple[T, bool]] = {}

    def read(self, event: Any) -> Reading[T]:
        """Read and validate every field of `event` that is counted; never raises."""
        try:
            target, is_error = self._known[(event.flag_key, event.reason, event.variant)]
            ms = event.evaluation_duration_ms
            user = event.targeting_key
        except Exception:  # a new triple, an unhashable value, a missing or raising attribute
            return self._read_carefully(event)
        if ms.__class__ is not float or not 0.0 <= ms <= MAX_DURATION_MS:
            return self._read_carefully(event)
        if user is not None and (user.__class__ is not str or len(user) > MAX_TARGETING_KEY_LENGTH):
            return self._read_carefully(event)
        return target, ms / 1000.0, user or None, _error_code(event) if is_error else None, _NO_DEFECTS

    def _read_carefully(self, event: Any) -> Reading[T]:
        """Read each field on its own, noting every defect; remember sound labels for the fast path."""
        try:
            labels, defects = _labels(event)
        except Exception:
            return None, None, None, None, (Defect.EVENT,)
        if labels is None:
            return None, None, None, None, defects
        target = self._resolve(labels)
        is_error = labels.reason == ERROR
        if not defects and len(self._known) < _LABELS_CACHE_LIMIT:
            # An unhashable or raising value makes this event type take this path every time.
            with contextlib.suppress(Exception):
                self._known[(event.flag_key, event.reason, event.variant)] = (target, is_error)
        duration_s = _duration_s(event)
        if duration_s is None:
            defects += (Defect.DURATION,)
        user, sound = _user(event)
        if not sound:
            defects += (Defect.TARGETING_KEY,)
        return target, duration_s, user, _error_code(event) if is_error else None, defects


def _same(labels: Labels) -> Labels:
    return labels


read: Final = Reader(_same).read
"""Read an event into `(labels, duration_s, user, error_code, defects)` (a `Reader` that keeps the labels)."""


def _labels(event: Any) -> tuple[Labels | None, tuple[Defect, ...]]:
    flag_key = label(getattr(event, "flag_key", None))
    if flag_key is None:
        return None, (Defect.FLAG_KEY,)
    raw_variant = getattr(event, "variant", None)
    variant = "" if raw_variant is None or raw_variant == "" else label(raw_variant)
    if variant is None:
        return None, (Defect.VARIANT,)
    known_reason = reason(getattr(event, "reason", None))
    if known_reason is None:
        return Labels(flag_key, UNKNOWN, variant), (Defect.REASON,)
    return Labels(flag_key, known_reason, variant), _NO_DEFECTS


def _duration_s(event: Any) -> float | None:
    """The evaluation duration in seconds, or None when missing or not plausible."""
    try:
        value = getattr(event, "evaluation_duration_ms", None)
        if value is None:
            value = getattr(event, "latency_ms", None)
    except Exception:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    ms = float(value)
    if not (math.isfinite(ms) and 0.0 <= ms <= MAX_DURATION_MS):
        return None
    return ms / 1000.0


def _user(event: Any) -> tuple[str | None, bool]:
    """The targeting key (None when anonymous or unusable), and whether it was sound."""
    try:
        value = getattr(event, "targeting_key", None)
    except Exception:
        return None, False
    if value is None:
        return None, True
    if not isinstance(value, str) or len(value) > MAX_TARGETING_KEY_LENGTH:
        return None, False
    return str(value) or None, True


def _error_code(event: Any) -> str:
    """The event's error code as a bounded label value (GENERAL when missing or unknown)."""
    try:
        value = getattr(event, "error_code", None)
    except Exception:
        return "GENERAL"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str):
        code = value.upper()
        if code in ERROR_CODES:
            return "GENERAL" if code == "GENERAL_ERROR" else code
    return "GENERAL"


def label(value: Any) -> str | None:
    """`value` as a flag key or variant label value, or None when it cannot be one."""
    if isinstance(value, Enum):
        value = value.value
    if not isinstance(value, str):
        return None
    text = str(value)  # a plain str, also for str subclasses
    # Printable only: no control characters, line breaks or lone surrogates in label values.
    if not text or len(text) > MAX_KEY_LENGTH or text == OVERFLOW or not text.isprintable():
        return None
    return text


def valid_label(value: Any) -> bool:
    """Whether `value` is usable as a flag key or variant label value as it is."""
    return isinstance(value, str) and label(value) == value


def reason(value: Any) -> str | None:
    """`value` as a known reason label value (upper case), or None when it is not one."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str):
        upper = value.upper()
        if upper in KNOWN_REASONS:
            return upper
    return None
