"""flagmetrics.windows: the windows setting, the bucket arithmetic (an injected clock, no sleeping),
the split check's statistics, and how record() feeds the per-variant users."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flagmetrics.config import Settings
from flagmetrics.exceptions import ConfigurationError
from flagmetrics.litestar_flags import served_split
from flagmetrics.stores import LocalStore
from flagmetrics.stores.base import Snapshot
from flagmetrics.windows import Window, chi2_sf, parse_windows, split_p_value, split_weights
from tests.helpers import ev, make_exporter, run_with

pytestmark = pytest.mark.usefixtures("clean_env")


# -- the setting -----------------------------------------------------------------------------------


def test_the_default_windows_are_an_hour_a_day_and_a_week() -> None:
    assert parse_windows(Settings().windows) == (Window("1h", 3600), Window("24h", 86_400), Window("7d", 604_800))


def test_windows_keep_their_labels_as_written() -> None:
    assert parse_windows(" 20s, 90m ,2d") == (Window("20s", 20), Window("90m", 5400), Window("2d", 172_800))


@pytest.mark.parametrize("text", ["off", "OFF", "none", ""])
def test_windows_can_be_turned_off(text: str) -> None:
    assert parse_windows(text) == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5s", "at least 10s"),
        ("1h,60m", "the same window twice"),
        ("1w", "unit s, m, h or d"),
        ("1.5h", "unit s, m, h or d"),
        ("1h,", "unit s, m, h or d"),
        ("-1h", "unit s, m, h or d"),
        ("h", "unit s, m, h or d"),
    ],
)
def test_an_invalid_windows_setting_names_the_variable(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        Settings.from_env({"FLAGMETRICS_WINDOWS": text})
    assert "FLAGMETRICS_WINDOWS" in str(raised.value)


# -- the buckets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "step", "span"),
    [(10, 1, 10), (20, 1, 20), (25, 1, 25), (90, 6, 15), (3600, 300, 12), (604_800, 50_400, 12), (131, 10, 14)],
)
def test_a_window_is_cut_into_about_twelve_buckets(seconds: int, step: int, span: int) -> None:
    window = Window("w", seconds)
    assert (window.step, window.span) == (step, span)


@given(seconds=st.integers(10, 30 * 86_400), now=st.floats(1e9, 3e9), flag=st.text(min_size=1, max_size=20))
def test_the_buckets_of_a_figure_cover_the_window_and_at_most_one_step_more(
    seconds: int, now: float, flag: str
) -> None:
    window = Window("w", seconds)
    phase = window.phase(flag)
    assert 0 <= phase < window.step
    buckets = window.buckets(now, phase)
    earliest = buckets[0] * window.step - phase
    assert now - seconds - 2 * window.step < earliest <= now - seconds
    if seconds % window.step == 0:  # always, unless that took more than 60 buckets
        assert now - seconds - window.step < earliest
    assert buckets[-1] == window.bucket(now, phase)
    assert buckets[-1] * window.step - phase <= now < (buckets[-1] + 1) * window.step - phase


def test_flags_begin_their_buckets_at_different_moments_the_same_in_every_process() -> None:
    window = Window("1h", 3600)
    phases = {window.phase(f"flag-{n}") for n in range(200)}
    assert len(phases) > 100  # spread over the 300 seconds of a step (about 146 expected)
    assert window.phase("checkout") == Window("60m", 3600).phase("checkout")
    assert Window("20s", 20).phase("checkout") == 0  # one-second steps need no spreading


def test_a_figure_moves_on_with_the_clock_one_bucket_at_a_time() -> None:
    window = Window("1h", 3600)
    start = 1_800_000_000.0  # a bucket boundary
    assert window.buckets(start) == range(6_000_000 - 12, 6_000_000 + 1)
    assert window.buckets(start + 299.9) == window.buckets(start)
    assert window.buckets(start + 300) == range(6_000_000 - 11, 6_000_000 + 2)


def test_the_local_store_counts_a_window_by_an_injected_clock() -> None:
    now = [1_800_000_000.0]
    store = LocalStore(None, windows="10s", clock=lambda: now[0])

    async def scenario(store: LocalStore) -> list[int]:
        from flagmetrics.stores.base import Batch, FlagDelta
        from tests.helpers import users

        counts = []
        await store.push(Batch("w", 1, {"a": FlagDelta(5, 0, users(0, 5), now[0])}))
        counts.append((await store.snapshot()).flags["a"].windows["10s"].users)
        now[0] += 9.5  # same bucket: the figure is the cached one
        await store.push(Batch("w", 2, {"a": FlagDelta(3, 0, users(5, 8), now[0])}))
        counts.append((await store.snapshot()).flags["a"].windows["10s"].users)
        now[0] += 0.5  # the next bucket: computed again, all 8 users within 10 s
        counts.append((await store.snapshot()).flags["a"].windows["10s"].users)
        now[0] += 9.0  # the first 5 users left the window
        counts.append((await store.snapshot()).flags["a"].windows["10s"].users)
        now[0] += 10  # and the last 3
        counts.append((await store.snapshot()).flags["a"].windows["10s"].users)
        return counts

    assert run_with(store, scenario) == [5, 8, 8, 3, 0]


# -- record() --------------------------------------------------------------------------------------


def test_record_buffers_each_variants_users_but_not_errors_or_variantless_evaluations() -> None:
    exporter, _ = make_exporter()
    for event in (
        ev(user="u1", variant="on"),
        ev(user="u2", variant="on"),
        ev(user="u2", variant="off"),
        ev(user="u3", variant=None),
        ev(user="u4", reason="ERROR", variant="on", error_code="GENERAL"),
        ev(user=None, variant="on"),
    ):
        exporter.record_sync(event)
    batch = exporter._buffer.cut(b"")
    assert batch is not None
    delta = batch.flags["f"]
    assert len(delta.members) == 4
    assert {variant: len(members) for variant, members in delta.variants.items()} == {"on": 2, "off": 1}
    assert delta.variants["on"] | delta.variants["off"] <= delta.members


def test_expect_split_checks_its_weights_and_reaches_the_store() -> None:
    exporter, _ = make_exporter()
    with pytest.raises(ConfigurationError, match="two or more variants"):
        exporter.expect_split("f", {"on": 100, "off": 0})
    with pytest.raises(ConfigurationError, match="weights are numbers >= 0"):
        exporter.expect_split("f", {"on": -1, "off": 1})
    with pytest.raises(ConfigurationError, match="flag_key"):
        exporter.expect_split("", {"on": 1, "off": 1})

    async def scenario() -> tuple[Snapshot, Snapshot]:
        exporter.expect_split("f", {"on": 1, "off": 3})
        await exporter.flush()
        before = await exporter.store.snapshot()
        exporter.record_sync(ev(user="u1", variant="on"))
        await exporter.flush()
        after = await exporter.store.snapshot()
        await exporter.close()
        return before, after

    before, after = asyncio.run(scenario())
    # Before any evaluation the flag is not reported; its split waited in the store.
    assert "f" not in before.flags
    assert after.flags["f"].split == {"on": 1.0, "off": 3.0}


# -- the split check -------------------------------------------------------------------------------


@pytest.mark.parametrize("x", [0.01, 0.5, 1.0, 3.0, 10.0, 50.0, 300.0])
def test_chi2_sf_matches_the_closed_forms(x: float) -> None:
    assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-12, abs=1e-300)
    assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-12, abs=1e-300)
    assert chi2_sf(x, 4) == pytest.approx(math.exp(-x / 2) * (1 + x / 2), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize(
    ("x", "df", "p"),
    [
        (3.841458820694124, 1, 0.05),
        (10.827566170662733, 1, 0.001),
        (16.26623619623813, 3, 0.001),
        (23.209251158954356, 10, 0.01),
        (0.1148318018991, 3, 0.99),
    ],
)
def test_chi2_sf_matches_the_tables(x: float, df: int, p: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(p, rel=1e-9)


def test_a_split_served_as_expected_has_a_high_p_value() -> None:
    p = split_p_value({"on": 1510, "off": 1490}, {"on": 50, "off": 50})
    assert p is not None
    assert p > 0.5


def test_a_60_40_split_against_an_expected_50_50_has_a_tiny_p_value() -> None:
    p = split_p_value({"on": 1800, "off": 1200}, {"on": 50, "off": 50})
    assert p is not None
    assert p < 1e-20


def test_counting_error_alone_does_not_fail_a_large_correct_split() -> None:
    # A million users, 50/50, each variant's count off by one HyperLogLog standard error.
    p = split_p_value({"on": round(500_000 * 1.0081), "off": round(500_000 * 0.9919)}, {"on": 1, "off": 1})
    assert p is not None
    assert p > 0.01


def test_too_few_users_give_no_p_value() -> None:
    assert split_p_value({"on": 60, "off": 39}, {"on": 50, "off": 50}) is None
    assert split_p_value({"on": 996, "off": 4}, {"on": 99.6, "off": 0.4}) is None  # 4 expected in "off"


def test_users_served_a_variant_the_split_never_serves_give_zero() -> None:
    assert split_p_value({"on": 500, "off": 500, "old": 3}, {"on": 50, "off": 50}) == 0.0


def test_split_weights_names_the_flag_and_the_bad_variant() -> None:
    with pytest.raises(ConfigurationError, match=r"'f'.*invalid variant"):
        split_weights("f", {"": 1, "b": 1})
    assert split_weights("f", {"a": 1, "b": 2, "c": 0}) == {"a": 1.0, "b": 2.0, "c": 0.0}


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"b": 50, "a": 50}, {"a": 50.0, "b": 50.0}),
        ({"a": 30, "b": 30}, {"a": 30.0, "b": 70.0}),  # the engine serves the rest to the last variant
        ({"a": 80, "b": 80}, {"a": 80.0, "b": 20.0}),  # and never past 100
        ({"a": 100, "b": 0}, None),
        ({"a": 100}, None),
    ],
)
def test_the_split_of_a_litestar_flags_flag_is_what_its_engine_serves(
    weights: dict[str, int], expected: dict[str, float] | None
) -> None:
    variants = [SimpleNamespace(key=key, weight=weight) for key, weight in weights.items()]
    assert served_split(variants) == expected


def test_the_local_store_samples_a_window_past_its_size_and_keeps_its_estimate_close() -> None:
    from flagmetrics.stores.base import Batch, FlagDelta
    from tests.helpers import users

    now = [1_800_000_000.0]
    store = LocalStore(None, windows="1h", window_sample_size=1000, clock=lambda: now[0])

    async def scenario(store: LocalStore) -> list[tuple[int, int]]:
        seen = []
        for seq, first in enumerate(range(0, 20_000, 2_000), start=1):
            members = users(first, first + 2_000)
            on = users(first, first + 500)
            await store.push(Batch("w", seq, {"a": FlagDelta(2_000, 0, members, now[0], {"on": on})}))
            now[0] += 300  # a bucket of the hour later: the figures are computed again, every user still in it
            figures = (await store.snapshot()).flags["a"].windows["1h"]
            seen.append((figures.users, figures.variants["on"]))
        database = store._database(create=False)
        assert database is not None
        kept = database.execute("SELECT count(*) FROM users WHERE variant = ''").fetchone()[0]
        assert kept <= 1000
        return seen

    seen = run_with(store, scenario)
    for n, (everyone, on) in enumerate(seen, start=1):
        assert abs(everyone - 2_000 * n) <= 0.12 * 2_000 * n, (n, everyone, seen)
        assert abs(on - 500 * n) <= 0.15 * 500 * n, (n, on)


def test_a_tiny_window_sample_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="window_sample_size"):
        LocalStore(None, window_sample_size=10)


def test_the_local_store_samples_only_the_windows_that_outgrow_their_size() -> None:
    from flagmetrics.stores.base import Batch, FlagDelta
    from tests.helpers import users

    start = 1_800_000_000.0  # a boundary of every bucket below
    now = [start]
    store = LocalStore(None, windows="1m,10m", window_sample_size=1000, clock=lambda: now[0])
    ten_minutes = Window("10m", 600)

    async def scenario(store: LocalStore) -> list[tuple[int, int, int]]:
        seen = []
        for seq in range(1, 9):  # 600 new users every 2 minutes: 10 minutes outgrow 1,000, 1 minute does not
            members = users(600 * seq, 600 * (seq + 1))
            pushed = now[0]
            await store.push(Batch("w", seq, {"a": FlagDelta(600, 0, members, pushed)}))
            now[0] += 55  # a new bucket of both windows
            figures = (await store.snapshot()).flags["a"].windows
            oldest = ten_minutes.buckets(now[0])[0] * ten_minutes.step
            expected = 600 * sum(1 for k in range(seq) if start + 120 * k >= oldest)
            seen.append((figures["1m"].users, figures["10m"].users, expected))
            now[0] = pushed + 120
        return seen

    seen = run_with(store, scenario)
    assert [minute for minute, _, _ in seen] == [600] * 8  # exact: its own sample never outgrew 1,000
    for ten, expected in [(ten, expected) for _, ten, expected in seen]:
        assert abs(ten - expected) <= 0.15 * expected, seen
    assert any(ten != expected for _, ten, expected in seen)  # the 10 minutes were sampled


def test_a_window_left_without_users_counts_exactly_again() -> None:
    from flagmetrics.stores.base import Batch, FlagDelta
    from tests.helpers import users

    now = [1_800_000_000.0]
    store = LocalStore(None, windows="1m", window_sample_size=100, clock=lambda: now[0])

    async def scenario(store: LocalStore) -> tuple[int, int]:
        await store.push(Batch("w", 1, {"a": FlagDelta(1_000, 0, users(0, 1_000), now[0])}))
        now[0] += 5
        sampled = (await store.snapshot()).flags["a"].windows["1m"].users
        now[0] += 600  # long after the window emptied: the next flush prunes, and the level goes back to 0
        await store.push(Batch("w", 2, {"a": FlagDelta(37, 0, users(5_000, 5_037), now[0])}))
        now[0] += 5
        return sampled, (await store.snapshot()).flags["a"].windows["1m"].users

    sampled, again = run_with(store, scenario)
    assert sampled != 1_000
    assert abs(sampled - 1_000) <= 0.35 * 1_000
    assert again == 37
