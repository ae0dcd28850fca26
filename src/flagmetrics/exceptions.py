"""Internal: the errors flagmetrics raises: one root, `FlagMetricsError`, and a few subclasses."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "FlagMetricsError",
    "MissingDependencyError",
    "StoreError",
]


class FlagMetricsError(Exception):
    """Root of every error raised by flagmetrics."""


class ConfigurationError(FlagMetricsError, ValueError):
    """A setting or argument is invalid; the message names it and says how to fix it."""


class StoreError(FlagMetricsError):
    """The fleet store (Redis or the local multiprocess directory) could not be read or written."""

    def __init__(self, message: str, *, transient: bool = True, refused_events: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        """True for outages (retry for as long as it takes), False for errors a retry cannot fix."""
        self.refused_events = refused_events
        """For a refused batch applied in part, the evaluations of the part refused; None: all of them."""


class MissingDependencyError(FlagMetricsError, ImportError):
    """An optional dependency is missing; the message gives the `pip install` command."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed; install it with: pip install 'flagmetrics[{extra}]'")
        self.package = package
        self.extra = extra
