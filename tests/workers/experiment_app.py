"""The example app with two experiments, for the window and split-check tests under gunicorn.

`checkout_copy` is served 50/50 and litestar-flags' weights say so; `pricing_test` is served 60/40
while the application declares an expected 50/50 split, as a serving bug would leave it.
"""

from __future__ import annotations

from litestar_flags.models import FeatureFlag, FlagVariant
from litestar_flags.types import FlagType
from prometheus_client import CollectorRegistry

from examples.app import create_app
from flagmetrics import PrometheusExporter


def _experiment(key: str, first: int, second: int) -> FeatureFlag:
    return FeatureFlag(
        key=key,
        name=key,
        flag_type=FlagType.JSON,
        default_value={},
        variants=[
            FlagVariant(key="a", name="A", value={"arm": "a"}, weight=first),
            FlagVariant(key="b", name="B", value={"arm": "b"}, weight=second),
        ],
    )


# Its own registry: importing the example created the example's exporter in the default one (under
# gunicorn every worker's counters are read from the multiprocess files anyway).
exporter = PrometheusExporter(registry=CollectorRegistry())
exporter.expect_split("pricing_test", {"a": 50, "b": 50})
app = create_app(exporter, extra_flags=[_experiment("checkout_copy", 50, 50), _experiment("pricing_test", 60, 40)])
