"""flagmetrics.collector: the fleet gauges, collected for prometheus_client or written as text directly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from flagmetrics.collector import FleetCollector, fleet_text
from flagmetrics.stores.base import FlagStats, Snapshot, WindowStats

FLAG_KEYS = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S", "Zs"], include_characters='\\"{}='), min_size=1, max_size=40
)
WINDOWS = st.dictionaries(
    st.sampled_from(["20s", "1h", "7d"]),
    st.builds(
        WindowStats, users=st.integers(0, 10**6), variants=st.dictionaries(FLAG_KEYS, st.integers(0, 10**6), max_size=3)
    ),
    max_size=3,
)
STATS = st.builds(
    FlagStats,
    total=st.integers(0, 10**12),
    errors=st.integers(0, 10**6),
    unique_users=st.integers(0, 10**9),
    pinned_error_rate=st.none() | st.floats(0, 1),
    last_evaluated_s=st.none() | st.floats(1e9, 2e9),
    windows=WINDOWS,
    split=st.none() | st.dictionaries(FLAG_KEYS, st.floats(0, 100), min_size=2, max_size=3),
)
SNAPSHOTS = st.none() | st.builds(Snapshot, flags=st.dictionaries(FLAG_KEYS, STATS, max_size=20))


def collected(snapshot: Snapshot | None, prefix: str, *, openmetrics: bool) -> str:
    """What prometheus_client's own encoder writes for the fleet collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(snapshot, prefix))
    encoder = generate_openmetrics if openmetrics else generate_latest
    return encoder(registry).decode().removesuffix("# EOF\n")


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
@given(snapshot=SNAPSHOTS, prefix=st.sampled_from(["", "shop_"]))
def test_the_text_written_directly_is_what_prometheus_client_writes(
    openmetrics: bool, snapshot: Snapshot | None, prefix: str
) -> None:
    assert fleet_text(snapshot, prefix, openmetrics=openmetrics) == collected(snapshot, prefix, openmetrics=openmetrics)


def test_a_flag_key_with_quotes_and_backslashes_is_escaped() -> None:
    snapshot = Snapshot(flags={'say "hi"\\': FlagStats(total=4, errors=1, unique_users=3)})
    text = fleet_text(snapshot, "", openmetrics=False)
    assert 'feature_flag_unique_users{flag_key="say \\"hi\\"\\\\"} 3.0\n' in text
    assert 'feature_flag_error_rate{flag_key="say \\"hi\\"\\\\"} 0.25\n' in text


def test_without_a_snapshot_only_store_up_0_is_written() -> None:
    text = fleet_text(None, "", openmetrics=False)
    assert text.endswith("flagmetrics_store_up 0.0\n")
    assert "feature_flag" not in text


def test_a_flag_before_its_first_evaluation_has_users_but_no_error_rate() -> None:
    text = fleet_text(Snapshot(flags={"new": FlagStats(total=0, errors=0, unique_users=0)}), "", openmetrics=False)
    assert 'feature_flag_unique_users{flag_key="new"} 0.0' in text
    assert 'feature_flag_error_rate{flag_key="new"}' not in text


def test_window_variant_last_evaluated_and_split_samples() -> None:
    window = WindowStats(users=3000, variants={"on": 1800, "off": 1200})
    stats = FlagStats(
        total=5000,
        errors=0,
        unique_users=4000,
        last_evaluated_s=1_800_000_000.5,
        windows={"1h": window},
        split={"on": 50, "off": 50},
    )
    text = fleet_text(Snapshot(flags={"new-ui": stats}), "", openmetrics=False)
    assert 'feature_flag_last_evaluated_timestamp_seconds{flag_key="new-ui"} 1.8000000005e+09\n' in text
    assert 'feature_flag_window_unique_users{flag_key="new-ui",window="1h"} 3000.0\n' in text
    assert 'feature_flag_window_variant_unique_users{flag_key="new-ui",variant="off",window="1h"} 1200.0\n' in text
    assert 'feature_flag_window_variant_unique_users{flag_key="new-ui",variant="on",window="1h"} 1800.0\n' in text
    p_value = float(text.split('feature_flag_split_p_value{flag_key="new-ui",window="1h"} ')[1].split()[0])
    assert p_value < 1e-20
