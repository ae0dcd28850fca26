"""Internal: logging that reports each kind of problem at most once per interval, with a count of the rest."""

from __future__ import annotations

import logging
import time

__all__ = ["ThrottledLog", "logger"]

logger = logging.getLogger("flagmetrics")


class ThrottledLog:
    """Log a warning per kind at most once every `interval_s` seconds, counting what it held back."""

    __slots__ = ("_held", "_interval_s", "_last")

    def __init__(self, interval_s: float = 60.0) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        """Log `message` unless a `kind` warning was logged less than one interval ago."""
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        if held:
            message += " (%d more like this since the last report)"
            args = (*args, held)
        logger.warning(message, *args)
