"""Example: a FastAPI app evaluating OpenFeature flags, with flagmetrics serving /metrics.

Run it under gunicorn with 4 uvicorn workers (from the repository root)::

    pip install 'flagmetrics[fastapi,openfeature,gunicorn]'
    gunicorn -c gunicorn.conf.py examples.fastapi_app:app

The flags come from the OpenFeature SDK's in-memory provider; any other provider works the same,
as flagmetrics sees the evaluations through an OpenFeature hook. The routes and the flags' behaviour
are those of the Litestar example (`examples.app`), so `python -m examples.traffic` checks either.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from starlette.routing import Route

from flagmetrics import PrometheusExporter
from flagmetrics.asgi import lifespan, metrics_app
from flagmetrics.openfeature import install

Evaluator = Callable[[InMemoryFlag[Any], EvaluationContext], FlagResolutionDetails[Any]]


def _split(weights: dict[str, int]) -> Evaluator:
    """Serve each user one variant, chosen by a hash of the targeting key, in proportion to `weights`."""

    def evaluate(flag: InMemoryFlag[Any], context: EvaluationContext) -> FlagResolutionDetails[Any]:
        if not context.targeting_key:
            return FlagResolutionDetails(flag.variants[flag.default_variant], variant=flag.default_variant)
        digest = hashlib.blake2b(context.targeting_key.encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") % sum(weights.values())
        for variant, weight in weights.items():
            if point < weight:
                return FlagResolutionDetails(flag.variants[variant], reason=Reason.SPLIT, variant=variant)
            point -= weight
        raise AssertionError("unreachable: the point lies within the weights")

    return evaluate


def _premium(flag: InMemoryFlag[Any], context: EvaluationContext) -> FlagResolutionDetails[Any]:
    """On for premium users (TARGETING_MATCH), off for everyone else (STATIC)."""
    if context.attributes.get("plan") == "premium":
        return FlagResolutionDetails(flag.variants["on"], reason=Reason.TARGETING_MATCH, variant="on")
    return FlagResolutionDetails(flag.variants["off"], reason=Reason.STATIC, variant="off")


def _disabled(flag: InMemoryFlag[Any], context: EvaluationContext) -> FlagResolutionDetails[Any]:
    """A switched-off flag: its default, with the reason DISABLED."""
    return FlagResolutionDetails(flag.variants[flag.default_variant], reason=Reason.DISABLED)


def example_flags() -> dict[str, InMemoryFlag[Any]]:
    """The flags of the Litestar example: a targeted boolean, two splits and a disabled flag."""
    return {
        "new_checkout": InMemoryFlag("off", {"on": True, "off": False}, context_evaluator=_premium),
        "button_color": InMemoryFlag(
            "grey",
            {
                "grey": {"color": "grey"},
                "blue": {"color": "blue"},
                "green": {"color": "green"},
                "red": {"color": "red"},
            },
            context_evaluator=_split({"blue": 20, "green": 30, "red": 50}),
        ),
        "search_ranking": InMemoryFlag(
            "bm25",
            {"bm25": {"model": "bm25"}, "neural": {"model": "neural"}},
            context_evaluator=_split({"bm25": 90, "neural": 10}),
        ),
        "legacy_banner": InMemoryFlag(
            "off", {"on": True, "off": False}, state=InMemoryFlag.State.DISABLED, context_evaluator=_disabled
        ),
    }


def create_app(exporter: PrometheusExporter) -> FastAPI:
    """The example app: an OpenFeature client with the in-memory provider, reporting to `exporter`."""
    client = OpenFeatureClient(domain="flagmetrics-example", version=None)
    api.set_provider(InMemoryProvider(example_flags()), domain="flagmetrics-example")
    install(exporter, client)

    # A route rather than a mount: Starlette answers `/metrics` to a mount with a redirect to `/metrics/`.
    app = FastAPI(lifespan=lifespan(exporter), routes=[Route("/metrics", metrics_app(exporter))])

    @app.get("/evaluate/{flag_key}")
    async def evaluate(flag_key: str, user: str | None = None, plan: str = "free", kind: str = "json") -> Any:
        """Evaluate one flag for a user; `kind` is the type the caller expects (bool, string or json)."""
        context = EvaluationContext(targeting_key=user, attributes={"plan": plan})
        details: Any
        if kind == "bool":
            details = await client.get_boolean_details_async(flag_key, False, context)
        elif kind == "string":
            details = await client.get_string_details_async(flag_key, "", context)
        else:
            details = await client.get_object_details_async(flag_key, {}, context)
        return {
            "flag_key": flag_key,
            "value": details.value,
            "reason": str(details.reason),
            "variant": details.variant,
            "error_code": None if details.error_code is None else str(details.error_code),
            "pid": os.getpid(),
        }

    @app.get("/")
    async def index(user: str | None = None, plan: str = "free") -> dict[str, Any]:
        """A page that evaluates every example flag for one user."""
        context = EvaluationContext(targeting_key=user, attributes={"plan": plan})
        return {
            "new_checkout": await client.get_boolean_value_async("new_checkout", False, context),
            "button_color": await client.get_object_value_async("button_color", {}, context),
            "search_ranking": await client.get_object_value_async("search_ranking", {}, context),
            "legacy_banner": await client.get_boolean_value_async("legacy_banner", False, context),
        }

    return app


app = create_app(PrometheusExporter())
