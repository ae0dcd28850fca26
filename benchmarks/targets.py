"""The targets the page holds the measurements against, and the published figures they were set from."""

from __future__ import annotations

from typing import Final

__all__ = [
    "ANCHOR_FLOOR_US",
    "ANCHOR_REFERENCE_US",
    "HLL_STANDARD_ERROR_PCT",
    "TARGET_CLUSTER_RATIO",
    "TARGET_DEAD_RATIO",
    "TARGET_E2E_PCT",
    "TARGET_FLOOR_RATIO",
    "TARGET_FLUSH_FLOOR_RATIO",
    "TARGET_HOT_US",
    "TARGET_LOCAL_FLEET_MS",
    "TARGET_MEMORY_MB",
    "TARGET_REDIS_FLEET_MS",
    "TARGET_SPEEDUP",
    "TARGET_TEN_THOUSAND_FLAGS_MS",
    "TARGET_WINDOWS_SCRAPE_MS",
]

# Published per-event costs on the baseline machine the targets were set on: bare prometheus_client
# counter + histogram, and litestar-flags 0.2.2's exporter.
ANCHOR_FLOOR_US: Final = 2.3
ANCHOR_REFERENCE_US: Final = 10.1

TARGET_HOT_US: Final = 2.5
"""`record()` per event on the baseline machine, µs (hotpath)."""
TARGET_SPEEDUP: Final = 6.0
"""`record()` at least this many times faster than the reference (hotpath)."""
TARGET_FLOOR_RATIO: Final = 0.5
"""`record()` over bare prometheus_client's counter + histogram, at most (hotpath, paired)."""
TARGET_FLUSH_FLOOR_RATIO: Final = 0.8
"""`record()` plus its share of the flush's CPU, over the floor, at most (hotpath)."""
TARGET_MEMORY_MB: Final = 5.0
"""Worker memory growth after 1,000,000 users x 10 flags, MiB (memory)."""
TARGET_REDIS_FLEET_MS: Final = 15.0
"""Fleet gauges at 1,000 flags on Redis, ms per scrape (scrape)."""
TARGET_LOCAL_FLEET_MS: Final = 50.0
"""Fleet gauges at 16 workers x 100 flags on the local store, ms per scrape (scrape)."""
TARGET_DEAD_RATIO: Final = 1.2
"""Scrape with 500 dead workers over none, at most (scrape)."""
TARGET_E2E_PCT: Final = 5.0
"""More CPU per request with the exporter than without, at most, % (e2e)."""
TARGET_CLUSTER_RATIO: Final = 2.0
"""Fleet gauges at 1,000 flags on a 3-master cluster over the single node, at most (fleet)."""
TARGET_TEN_THOUSAND_FLAGS_MS: Final = 100.0
"""Fleet gauges at 10,000 flags on a single node, ms per scrape, at most (fleet)."""
HLL_STANDARD_ERROR_PCT: Final = 104 / 128
"""The HyperLogLog's standard error with 2^14 registers: 1.04 / sqrt(2^14), % (accuracy)."""
TARGET_WINDOWS_SCRAPE_MS: Final = 50.0
"""What the window gauges add to a scrape at 1,000 flags x 3 windows x 4 variants, ms, at most (windows)."""
