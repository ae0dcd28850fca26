"""The sections of the benchmark suite, in page order: one module each, which measures and renders it.

A section module has `TITLE`, `run(quick=...) -> dict` (the figures saved to results/<key>.json) and
`render(data, charts, verdicts) -> Lines` (its part of docs/benchmarks.md). A new section is a new
module and one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Final

__all__ = ["SECTIONS", "module"]

SECTIONS: Final = {
    "hotpath": "benchmarks.hotpath",
    "memory": "benchmarks.memory",
    "scrape": "benchmarks.scrape",
    "redis": "benchmarks.redis_cost",
    "e2e": "benchmarks.e2e",
    "accuracy": "benchmarks.accuracy",
    "fleet": "benchmarks.fleet",
    "windows": "benchmarks.windows",
    "profile": "benchmarks.hotprofile",
}
"""Section key (as in --only and results/<key>.json) -> its module."""


def module(key: str) -> ModuleType:
    """The module of a section."""
    return importlib.import_module(SECTIONS[key])
