"""Example: a Litestar app evaluating litestar-flags feature flags, with flagmetrics serving /metrics.

Run it under gunicorn with 4 uvicorn workers (from the repository root)::

    gunicorn -c gunicorn.conf.py examples.app:app

or in one process with ``uvicorn examples.app:app``. Set FLAGMETRICS_REDIS_URL to share the fleet
gauges (unique users, error rate) between hosts through Redis.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, get
from litestar.di import Provide
from litestar_flags import EvaluationContext, FeatureFlagClient
from litestar_flags.models import FeatureFlag, FlagRule, FlagVariant
from litestar_flags.storage.memory import MemoryStorageBackend
from litestar_flags.types import FlagStatus, FlagType

from flagmetrics import PrometheusExporter
from flagmetrics.litestar import FlagMetricsPlugin
from flagmetrics.litestar_flags import instrument


def example_flags() -> list[FeatureFlag]:
    """The flags this example serves: a targeted boolean, two splits and a disabled flag."""
    return [
        FeatureFlag(
            key="new_checkout",
            name="New checkout",
            flag_type=FlagType.BOOLEAN,
            default_enabled=False,
            rules=[
                FlagRule(
                    name="premium users",
                    conditions=[{"attribute": "plan", "operator": "eq", "value": "premium"}],
                    serve_enabled=True,
                )
            ],
        ),
        FeatureFlag(
            key="button_color",
            name="Button colour",
            flag_type=FlagType.JSON,
            default_value={"color": "grey"},
            variants=[
                FlagVariant(key="blue", name="Blue", value={"color": "blue"}, weight=20),
                FlagVariant(key="green", name="Green", value={"color": "green"}, weight=30),
                FlagVariant(key="red", name="Red", value={"color": "red"}, weight=50),
            ],
        ),
        FeatureFlag(
            key="search_ranking",
            name="Search ranking",
            flag_type=FlagType.JSON,
            default_value={"model": "bm25"},
            variants=[
                FlagVariant(key="bm25", name="BM25", value={"model": "bm25"}, weight=90),
                FlagVariant(key="neural", name="Neural", value={"model": "neural"}, weight=10),
            ],
        ),
        FeatureFlag(
            key="legacy_banner",
            name="Legacy banner",
            flag_type=FlagType.BOOLEAN,
            status=FlagStatus.INACTIVE,
        ),
    ]


@get("/evaluate/{flag_key:str}")
async def evaluate(
    flags: FeatureFlagClient, flag_key: str, user: str | None = None, plan: str = "free", kind: str = "json"
) -> dict[str, Any]:
    """Evaluate one flag for a user; `kind` is the type the caller expects (bool, string or json)."""
    context = EvaluationContext(targeting_key=user, attributes={"plan": plan})
    if kind == "bool":
        details: Any = await flags.get_boolean_details(flag_key, default=False, context=context)
    elif kind == "string":
        details = await flags.get_string_details(flag_key, default="", context=context)
    else:
        details = await flags.get_object_details(flag_key, default={}, context=context)
    return {
        "flag_key": flag_key,
        "value": details.value,
        "reason": str(details.reason),
        "variant": details.variant,
        "error_code": None if details.error_code is None else str(details.error_code),
        "pid": os.getpid(),
    }


@get("/")
async def index(flags: FeatureFlagClient, user: str | None = None, plan: str = "free") -> dict[str, Any]:
    """A page that evaluates every example flag for one user."""
    context = EvaluationContext(targeting_key=user, attributes={"plan": plan})
    return {
        "new_checkout": await flags.get_boolean_value("new_checkout", default=False, context=context),
        "button_color": await flags.get_object_value("button_color", default={}, context=context),
        "search_ranking": await flags.get_object_value("search_ranking", default={}, context=context),
        "legacy_banner": await flags.get_boolean_value("legacy_banner", default=False, context=context),
    }


def create_app(
    exporter: PrometheusExporter | None, collector: Any = None, extra_flags: list[FeatureFlag] | None = None
) -> Litestar:
    """The example app: a real FeatureFlagClient reporting to `exporter`, which serves /metrics.

    Without an exporter the same flags and routes run with `collector` (or none) as litestar-flags'
    analytics collector and no metrics at all, for comparisons. `extra_flags` are served too.
    """
    storage = MemoryStorageBackend()
    flags = FeatureFlagClient(storage=storage, analytics_collector=exporter or collector)
    if exporter is not None:
        instrument(flags, exporter)

    @asynccontextmanager
    async def seeded_flags(app: Litestar) -> AsyncIterator[None]:
        """Load the example flags into this worker's in-memory storage."""
        for flag in [*example_flags(), *(extra_flags or [])]:
            await storage.create_flag(flag)
        yield

    return Litestar(
        route_handlers=[index, evaluate],
        dependencies={"flags": Provide(lambda: flags, sync_to_thread=False)},
        lifespan=[seeded_flags],
        plugins=[FlagMetricsPlugin(exporter)] if exporter is not None else [],
    )


app = create_app(PrometheusExporter())
