"""The pieces every section's part of docs/benchmarks.md is made of: numbers, tables, verdicts, charts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks._common import median

__all__ = ["NAMES", "Charts", "Lines", "fmt", "met", "paired", "provenance", "table"]

Lines = list[str]
"""Markdown lines of the page."""

NAMES = {
    "flagmetrics-redis": "flagmetrics, RedisStore",
    "flagmetrics-local": "flagmetrics, LocalStore",
    "reference": "litestar-flags 0.2.2 PrometheusExporter (reference)",
    "floor": "bare prometheus_client Counter.inc + Histogram.observe (floor)",
    "harness": "empty `async def record` (loop and await overhead)",
    "pytheus-redis": "pytheus 0.6, Redis backend (an increment per Redis command)",
}
"""How the page names each candidate of the hot-path and memory sections."""


def fmt(value: float | None, digits: int = 2) -> str:
    """A number with thousands separators, or a dash when there is none."""
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def paired(values: list[float], base: list[float]) -> float:
    """Median of per-round ratios value/base (rounds run side by side, so drift cancels)."""
    return median([v / b for v, b in zip(values, base, strict=True)])


def met(ok: bool) -> str:
    """The verdict column of a target."""
    return "**met**" if ok else "**missed**"


def table(header: list[str], rows: list[list[str]]) -> Lines:
    """A Markdown table."""
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def provenance(data: dict[str, Any]) -> str:
    """The line saying when, by which command and at which commit a section was measured."""
    quick = " — **quick smoke run: sizes far below the real ones, figures not meaningful**" if data.get("quick") else ""
    source = f" (flagmetrics at git {data['git']})" if data.get("git") else ""
    return (
        f"_Measured {data.get('date', '?')} by `{data.get('command', '?')}`{source} "
        f"in {data.get('elapsed_s', 0):.0f} s{quick}._"
    )


class Charts:
    """matplotlib (Agg) charts written next to the page."""

    def __init__(self, img_dir: Path, page_dir: Path) -> None:
        self.img_dir = img_dir
        self.page_dir = page_dir
        img_dir.mkdir(parents=True, exist_ok=True)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt

    def save(self, fig: Any, name: str, alt: str) -> str:
        path = self.img_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        self.plt.close(fig)
        return f"![{alt}]({os.path.relpath(path, self.page_dir)})"
