"""flagmetrics.compat: each private internal of prometheus_client and litestar-flags, checked on the installed
versions, and the message a release that changes one gets."""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from litestar_flags.client import FeatureFlagClient
from litestar_flags.storage.memory import MemoryStorageBackend
from packaging.specifiers import SpecifierSet

from flagmetrics.compat import (
    LITESTAR_FLAGS_RANGE,
    PROMETHEUS_CLIENT_RANGE,
    UnsupportedVersionError,
    flag_client_internals,
    metric_child_values,
    mmaped_dict,
    multiprocess_merge_steps,
    multiprocess_value_cell,
    values_in_multiprocess_mode,
)
from tests.processes import REPO


def test_the_installed_versions_are_the_ones_the_checks_were_written_for() -> None:
    assert version("prometheus-client") in SpecifierSet(PROMETHEUS_CLIENT_RANGE)
    assert version("litestar-flags") in SpecifierSet(LITESTAR_FLAGS_RANGE)


def test_the_supported_ranges_are_those_pyproject_requires() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"prometheus-client{PROMETHEUS_CLIENT_RANGE}"' in pyproject
    assert f'"litestar-flags{LITESTAR_FLAGS_RANGE}"' in pyproject


# -- prometheus_client.values.ValueClass._multiprocess -------------------------------------------------


def test_prometheus_client_says_whether_its_values_are_multiprocess() -> None:
    """The tests run prometheus_client in single-process mode."""
    assert values_in_multiprocess_mode() is False


def test_nothing_is_known_before_prometheus_client_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "prometheus_client.values")
    assert values_in_multiprocess_mode() is None


def test_a_value_class_without_its_multiprocess_flag_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client.values", SimpleNamespace(ValueClass=type("Value", (), {})))
    with pytest.raises(UnsupportedVersionError, match=r"prometheus-client .* `_multiprocess`.*pip install"):
        values_in_multiprocess_mode()


# -- prometheus_client.mmap_dict.MmapedDict ------------------------------------------------------------


def test_mmaped_dict_writes_and_reads_prometheus_client_files(tmp_path: Path) -> None:
    cls = mmaped_dict()
    path = str(tmp_path / "counter_1.db")
    written = cls(path)
    try:
        written.write_value("key", 2.5, 0.0)
    finally:
        written.close()
    assert [(key, value) for key, value, _, _ in cls.read_all_values_from_file(path)] == [("key", 2.5)]


def test_a_missing_mmaped_dict_method_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import mmap_dict

    monkeypatch.delattr(mmap_dict.MmapedDict, "read_all_values_from_file")
    with pytest.raises(UnsupportedVersionError, match=r"MmapedDict.read_all_values_from_file is gone"):
        mmaped_dict()


# -- prometheus_client.multiprocess.MultiProcessCollector's merge steps -------------------------------------


def test_the_merge_steps_are_the_merge(tmp_path: Path) -> None:
    """Read then accumulate gives what MultiProcessCollector.merge gives for the same file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    cls = mmaped_dict()
    path = str(tmp_path / "counter_1.db")
    written = cls(path)
    try:
        written.write_value('["c", "c_total", {"a": "1"}, "help"]', 2.5, 0.0)
    finally:
        written.close()
    read_metrics, accumulate_metrics = multiprocess_merge_steps()
    steps = [(s.name, s.labels, s.value) for m in accumulate_metrics(read_metrics([path]), True) for s in m.samples]
    merged = [(s.name, s.labels, s.value) for m in MultiProcessCollector.merge([path]) for s in m.samples]
    assert steps == merged == [("c_total", {"a": "1"}, 2.5)]


def test_a_missing_merge_step_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client.multiprocess import MultiProcessCollector

    monkeypatch.delattr(MultiProcessCollector, "_read_metrics")
    with pytest.raises(UnsupportedVersionError, match=r"MultiProcessCollector._read_metrics is gone"):
        multiprocess_merge_steps()


# -- litestar-flags FeatureFlagClient internals ---------------------------------------------------------


def test_a_feature_flag_client_has_the_internals_instrument_uses() -> None:
    client = FeatureFlagClient(storage=MemoryStorageBackend())
    engine, evaluate, merge_context = flag_client_internals(client)
    assert hasattr(engine, "analytics_collector")
    assert callable(evaluate)
    assert callable(merge_context)


@pytest.mark.parametrize("missing", ["_engine", "_evaluate", "_merge_context", "_analytics_collector"])
def test_a_client_without_an_internal_is_refused_naming_it(missing: str) -> None:
    fields: dict[str, Any] = {
        "_engine": SimpleNamespace(analytics_collector=None),
        "_evaluate": lambda *args: None,
        "_merge_context": lambda context: context,
        "_analytics_collector": None,
    }
    del fields[missing]
    with pytest.raises(UnsupportedVersionError, match=rf"litestar-flags .*{missing}.*pip install 'litestar-flags"):
        flag_client_internals(SimpleNamespace(**fields))


# -- prometheus_client's multiprocess values and metric children -----------------------------------------


def test_a_single_process_value_has_no_cell() -> None:
    from prometheus_client import CollectorRegistry, Counter

    child = Counter("c", "help", ["a"], registry=CollectorRegistry()).labels("x")
    value, buckets, bounds = metric_child_values(child)
    assert (buckets, bounds) == ([], [])
    assert multiprocess_value_cell(value) is None


def test_a_histogram_childs_values() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    child = Histogram("h", "help", ["a"], buckets=(0.1, 1.0), registry=CollectorRegistry()).labels("x")
    total, buckets, bounds = metric_child_values(child)
    assert total is not None
    assert len(buckets) == len(bounds) == 3
    assert bounds[-1] == float("inf")


def test_a_multiprocess_value_without_its_lock_is_refused_clearly() -> None:
    class Value:
        _multiprocess = True
        _value = 0.0

        def inc(self, amount: float) -> None:
            self._value += amount

    with pytest.raises(UnsupportedVersionError, match=r"MmapedValue.inc no longer writes under a shared `lock`"):
        multiprocess_value_cell(Value())


def test_a_child_without_its_values_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedVersionError, match=r"Counter has no `_value`"):
        metric_child_values(SimpleNamespace())
    with pytest.raises(UnsupportedVersionError, match=r"Histogram has no"):
        metric_child_values(SimpleNamespace(_upper_bounds=[1.0], _buckets=None, _sum=None))
