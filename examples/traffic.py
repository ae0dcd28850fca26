"""Send a known mix of flag evaluations to the example app, then compare /metrics with what was sent.

    python -m examples.traffic --url http://127.0.0.1:8000 --users 2000

Every user evaluates `new_checkout` (TARGETING_MATCH for premium users, else STATIC) and
`button_color` (SPLIT into blue, green, red); every second user `search_ranking` (SPLIT); every fifth
`legacy_banner` (DISABLED); every tenth asks `new_checkout` for the wrong type (ERROR,
TYPE_MISMATCH) and every fortieth a flag that does not exist (ERROR, FLAG_NOT_FOUND). The tally comes
from the app's own answers, so it is the truth /metrics must show whichever worker answers.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Request", "Scrape", "Tally", "parse_scrape", "plan", "send"]


@dataclass(frozen=True, slots=True)
class Request:
    """One evaluation the app is asked for."""

    flag_key: str
    user: str
    plan: str
    kind: str


@dataclass
class Tally:
    """What the app answered: the truth the metrics must show."""

    evaluations: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    users: dict[str, set[str]] = field(default_factory=dict)
    exposures: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """The users served each (flag, variant), ERROR and variant-less answers left out."""
    failed_requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    """Why requests failed: the HTTP status or the client's exception, with its message."""

    def add(self, request: Request, answer: dict[str, object]) -> None:
        reason = "ERROR" if answer.get("error_code") else str(answer["reason"])
        variant = "" if answer.get("error_code") else str(answer.get("variant") or "")
        self.evaluations[(request.flag_key, reason, variant)] += 1
        self.users.setdefault(request.flag_key, set()).add(request.user)
        if variant and reason != "ERROR":
            self.exposures.setdefault((request.flag_key, variant), set()).add(request.user)

    def update(self, other: Tally) -> None:
        """Add what another run's tally saw."""
        self.evaluations.update(other.evaluations)
        for flag_key, users in other.users.items():
            self.users.setdefault(flag_key, set()).update(users)
        for exposure, served in other.exposures.items():
            self.exposures.setdefault(exposure, set()).update(served)
        self.failed_requests += other.failed_requests
        self.failures.update(other.failures)

    def totals(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for (flag_key, _, _), count in self.evaluations.items():
            totals[flag_key] += count
        return totals

    def errors(self) -> Counter[str]:
        errors: Counter[str] = Counter()
        for (flag_key, reason, _), count in self.evaluations.items():
            if reason == "ERROR":
                errors[flag_key] += count
        return errors

    def error_rate(self, flag_key: str) -> float:
        return self.errors()[flag_key] / self.totals()[flag_key]


def plan(users: int, first: int = 0) -> Iterator[Request]:
    """The requests for `users` users from user number `first` on, always the same for the same numbers."""
    for i in range(first, first + users):
        user = f"user-{i:06d}"
        tier = "premium" if i % 7 == 0 else "free"
        yield Request("new_checkout", user, tier, "bool")
        yield Request("button_color", user, tier, "json")
        if i % 2 == 0:
            yield Request("search_ranking", user, tier, "json")
        if i % 5 == 0:
            yield Request("legacy_banner", user, tier, "bool")
        if i % 10 == 3:
            yield Request("new_checkout", user, tier, "string")
        if i % 40 == 1:
            yield Request("retired_flag", user, tier, "json")


async def send(base_url: str, requests: list[Request], concurrency: int = 16) -> Tally:
    """Send `requests` with `concurrency` connections and tally the answers."""
    tally = Tally()
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                request = queue.get_nowait()
                params = {"user": request.user, "plan": request.plan, "kind": request.kind}
                try:
                    response = await client.get(f"/evaluate/{request.flag_key}", params=params)
                    response.raise_for_status()
                except httpx.HTTPError as exc:
                    tally.failed_requests += 1
                    tally.failures[f"{type(exc).__name__}: {exc}"] += 1
                    continue
                tally.add(request, response.json())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


@dataclass
class Scrape:
    """The flag metrics of one scrape, by label values."""

    evaluations: dict[tuple[str, str, str], float]
    histogram_counts: dict[str, float]
    unique_users: dict[str, float]
    error_rates: dict[str, float]
    samples: dict[str, float]


def parse_scrape(text: str, prefix: str = "") -> Scrape:
    """Parse a text-format scrape into the figures the tally is compared with."""
    scrape = Scrape({}, {}, {}, {}, {})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            name = sample.name
            if name == f"{prefix}feature_flag_evaluations_total":
                scrape.evaluations[(labels["flag_key"], labels["reason"], labels["variant"])] = sample.value
            elif name == f"{prefix}feature_flag_evaluation_duration_seconds_count":
                scrape.histogram_counts[labels["flag_key"]] = sample.value
            elif name == f"{prefix}feature_flag_unique_users":
                scrape.unique_users[labels["flag_key"]] = sample.value
            elif name == f"{prefix}feature_flag_error_rate":
                scrape.error_rates[labels["flag_key"]] = sample.value
            elif not labels:
                scrape.samples[name] = sample.value
    return scrape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the example app")
    parser.add_argument("--users", type=int, default=2000, help="distinct users to simulate")
    parser.add_argument("--concurrency", type=int, default=16, help="connections in parallel")
    parser.add_argument("--wait", type=float, default=3.0, help="seconds to let the workers flush")
    args = parser.parse_args()

    requests = list(plan(args.users))
    started = time.perf_counter()
    tally = asyncio.run(send(args.url, requests, args.concurrency))
    elapsed = time.perf_counter() - started
    print(f"sent {len(requests)} evaluations in {elapsed:.1f} s, {tally.failed_requests} failed")
    time.sleep(args.wait)
    response = httpx.get(f"{args.url}/metrics", headers={"connection": "close"})
    scrape = parse_scrape(response.text)
    print(f"/metrics answered by worker {response.headers.get('x-flagmetrics-worker')}\n")
    print(f"{'flag':<16}{'evaluations':>12}{'scraped':>10}{'error rate':>12}{'scraped':>10}{'users':>8}{'scraped':>10}")
    for flag_key, total in sorted(tally.totals().items()):
        scraped_total = sum(v for (key, _, _), v in scrape.evaluations.items() if key == flag_key)
        rate = scrape.error_rates.get(flag_key, float("nan"))
        users = scrape.unique_users.get(flag_key, float("nan"))
        print(
            f"{flag_key:<16}{total:>12}{scraped_total:>10.0f}{tally.error_rate(flag_key):>12.4f}{rate:>10.4f}"
            f"{len(tally.users[flag_key]):>8}{users:>10.0f}"
        )


if __name__ == "__main__":
    main()
