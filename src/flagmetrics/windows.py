"""Internal: trailing windows (`FLAGMETRICS_WINDOWS`), their time buckets, and the split check's statistics.

A window of W seconds is cut into about twelve buckets of `step` seconds (a divisor of W), numbered
from the Unix epoch. A flush adds each flag's users to the bucket of the moment its batch was cut; a window's
figure is the union of the last `span + 1` buckets (the current one included), so it covers between
W and W plus one step. Stores may cache a window's figure for the rest of the bucket it was computed
in, so a figure lags by at most one step (under 2 s for a 20 s window, 5 min for an hour).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from flagmetrics.events import valid_label
from flagmetrics.exceptions import ConfigurationError

__all__ = [
    "BUCKETS_PER_WINDOW",
    "DEFAULT_WINDOWS",
    "HLL_RELATIVE_ERROR",
    "MIN_EXPECTED_USERS",
    "MIN_SPLIT_USERS",
    "MISMATCH_P_VALUE",
    "Window",
    "chi2_sf",
    "parse_windows",
    "split_p_value",
    "split_weights",
]

BUCKETS_PER_WINDOW: Final = 12
"""Buckets a window is cut into: a figure covers at most one twelfth more than its window."""
MIN_WINDOW_S: Final = 10
DEFAULT_WINDOWS: Final = "1h,24h,7d"
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"([0-9]+)([smhd])")


@dataclass(frozen=True, slots=True)
class Window:
    """One trailing window: its label as written in the setting, and its length."""

    label: str
    seconds: int
    step: int = field(init=False, compare=False)
    """Seconds per bucket: the largest divisor of `seconds` up to a twelfth of it (so buckets tile the
    window), unless that makes more than 60 buckets; then a twelfth, and a figure may cover up to two
    steps more than the window."""
    span: int = field(init=False, compare=False)
    """Whole buckets before the current one that a figure unites: `ceil(seconds / step)`."""

    def __post_init__(self) -> None:
        target = max(1, self.seconds // BUCKETS_PER_WINDOW)
        step = next((d for d in range(target, 0, -1) if self.seconds % d == 0 and self.seconds // d <= 60), target)
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "span", -(-self.seconds // step))

    def phase(self, flag_key: str) -> int:
        """A flag's offset of its bucket boundaries, 0 to `step - 1`: the same in every process.

        Spreading the boundaries over the step spreads the work of computing the flags' figures again
        over the scrapes of a bucket, instead of every flag's at its first scrape.
        """
        if self.step == 1:
            return 0
        digest = hashlib.blake2b(flag_key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(digest, "little") % self.step

    def bucket(self, t: float, phase: int = 0) -> int:
        """The number of the bucket holding Unix time `t`, for a flag of this phase."""
        return int((t + phase) // self.step)

    def buckets(self, now: float, phase: int = 0) -> range:
        """The buckets a figure at `now` unites, oldest first."""
        current = self.bucket(now, phase)
        return range(current - self.span, current + 1)


def parse_windows(text: str, *, setting: str = "windows") -> tuple[Window, ...]:
    """Parse `1h,24h,7d` (units s, m, h, d; at least 10 s each; `off` or empty for none).

    Raises `ConfigurationError` naming `setting` on anything else.
    """
    if not isinstance(text, str):
        raise ConfigurationError(f"`{setting}` must be a string like {DEFAULT_WINDOWS!r}, got {text!r}")
    stripped = text.strip()
    if stripped.lower() in ("", "off", "none"):
        return ()
    windows: list[Window] = []
    for part in stripped.split(","):
        label = part.strip()
        match = _DURATION.fullmatch(label)
        if match is None:
            raise ConfigurationError(
                f"`{setting}` must be durations separated by commas, each a whole number with a unit "
                f"s, m, h or d (like {DEFAULT_WINDOWS!r}), or 'off'; got {label!r} in {text!r}"
            )
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        if seconds < MIN_WINDOW_S:
            raise ConfigurationError(f"`{setting}` windows must be at least {MIN_WINDOW_S}s, got {label!r}")
        if any(window.seconds == seconds for window in windows):
            raise ConfigurationError(f"`{setting}` names the same window twice: {label!r} in {text!r}")
        windows.append(Window(label, seconds))
    return tuple(windows)


# -- the split check -------------------------------------------------------------------------------

HLL_RELATIVE_ERROR: Final = 0.0081
"""Standard error of a HyperLogLog estimate with 2^14 registers, relative to the count."""
MIN_SPLIT_USERS: Final = 100
"""Fewest users in a window (over the expected variants) for a split check."""
MIN_EXPECTED_USERS: Final = 5
"""Fewest users expected in every variant for a split check (the usual rule for a chi-square test)."""
MISMATCH_P_VALUE: Final = 0.001
"""Below this p-value a split is reported as a mismatch (as the FeatureFlagSampleRatioMismatch alert)."""


def split_weights(flag_key: str, weights: Mapping[str, float]) -> dict[str, float]:
    """`weights` checked: variants as label values, finite non-negative weights, two or more positive.

    Raises `ConfigurationError` naming the flag and what is wrong.
    """
    if not isinstance(weights, Mapping):
        raise ConfigurationError(f"the split of {flag_key!r} must map variants to weights, got {weights!r}")
    checked: dict[str, float] = {}
    for variant, weight in weights.items():
        if not valid_label(variant):
            raise ConfigurationError(f"the split of {flag_key!r} names an invalid variant {variant!r}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise ConfigurationError(
                f"the split of {flag_key!r} gives {variant!r} the weight {weight!r}; weights are numbers >= 0"
            )
        checked[variant] = float(weight)
    if sum(1 for weight in checked.values() if weight > 0) < 2:
        raise ConfigurationError(f"the split of {flag_key!r} needs two or more variants of positive weight")
    return checked


def split_p_value(observed: Mapping[str, int], weights: Mapping[str, float]) -> float | None:
    """The p-value of `observed` users per variant against the expected `weights`, or None when too few.

    See `_split_p_value`; remembered for the figures seen last, as a window's figures repeat from one
    scrape to the next until its bucket ends.
    """
    return _remembered_p_value(tuple(observed.items()), tuple(weights.items()))


@functools.lru_cache(maxsize=65_536)
def _remembered_p_value(observed: tuple[tuple[str, int], ...], weights: tuple[tuple[str, float], ...]) -> float | None:
    return _split_p_value(dict(observed), dict(weights))


def _split_p_value(observed: Mapping[str, int], weights: Mapping[str, float]) -> float | None:
    """The p-value of `observed` users per variant against the expected `weights`, or None when too few.

    A chi-square goodness-of-fit test with one cell per variant of positive weight. Each cell's
    variance is widened by the HyperLogLog's error, `E + (0.0081 E)^2` instead of `E`, so that counting
    error alone cannot make a large, correct split look wrong. Users served a variant whose expected
    weight is zero (or not listed) make the p-value 0: the split cannot produce them.
    """
    expected_total = sum(weight for weight in weights.values() if weight > 0)
    if expected_total <= 0:
        return None
    users = sum(observed.get(variant, 0) for variant, weight in weights.items() if weight > 0)
    if users < MIN_SPLIT_USERS:
        return None
    cells = [(observed.get(variant, 0), users * weight / expected_total) for variant, weight in weights.items()]
    cells = [(seen, expected) for seen, expected in cells if expected > 0]
    if len(cells) < 2 or min(expected for _, expected in cells) < MIN_EXPECTED_USERS:
        return None
    if any(count > 0 and weights.get(variant, 0) <= 0 for variant, count in observed.items()):
        return 0.0
    statistic = sum(
        (seen - expected) ** 2 / (expected + (HLL_RELATIVE_ERROR * expected) ** 2) for seen, expected in cells
    )
    return chi2_sf(statistic, len(cells) - 1)


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X chi-square distributed with `df` degrees of freedom: Q(df/2, x/2).

    The regularised upper incomplete gamma function, by its series below `a + 1` and by Lentz's
    continued fraction above (Numerical Recipes, 6.2), to about 1e-14 relative.
    """
    if df < 1:
        raise ValueError(f"`df` must be at least 1, got {df}")
    if x <= 0:
        return 1.0
    a, z = df / 2.0, x / 2.0
    if z < a + 1.0:
        return max(0.0, 1.0 - _lower_series(a, z))
    return _upper_fraction(a, z)


def _lower_series(a: float, z: float) -> float:
    term = total = 1.0 / a
    n = a
    for _ in range(10_000):
        n += 1.0
        term *= z / n
        total += term
        if abs(term) < abs(total) * 1e-16:
            break
    return total * math.exp(-z + a * math.log(z) - math.lgamma(a))


def _upper_fraction(a: float, z: float) -> float:
    tiny = 1e-300
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return math.exp(-z + a * math.log(z) - math.lgamma(a)) * h
