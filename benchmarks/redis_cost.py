"""Section 4, Redis cost: round trips and commands per 1,000 events at several event rates, and the
sustained events per second one worker can push.

One worker subprocess (fresh PROMETHEUS_MULTIPROC_DIR) with a flagmetrics exporter on a `RedisStore`
of our own redis-server, flusher at its default 1 s interval. For each rate the worker records
events paced in 10 ms ticks for a fixed window, then flushes once more.

Counted on both sides:
  client: every `send_packed_command` of the redis-py connection (a subclass passed as
          `connection_class`, counting and passing through): one call is one round trip, a
          pipeline included; each send is charged to the `Flusher.flush` call under way (numbered
          by wrapping it), which gives the round trips of each flush;
  server: `INFO commandstats` deltas over the window (the `info` calls themselves left out);
          commands run inside the flush script are counted there too (HINCRBY, PFADD, SET, GET).
Sustained: record continuously (a `sleep(0)` every 100 events) and `await flush()` every
10,000 events, for both stores; events per second delivered, with the store's totals checked.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any, ClassVar

from benchmarks._common import (
    PYTHON,
    clean_env,
    counter_total,
    emit,
    event_specs,
    log,
    now_iso,
    redis_server,
    require_multiprocess_env,
    run_json,
    temp_dir,
    to_litestar_events,
)
from benchmarks.page import Charts, Lines, fmt, met, provenance, table

TICK_S = 0.01


def _commandstats(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info"}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}


async def _measure(redis_url: str, rates: list[int], window_s: float, sustain_s: float) -> dict[str, Any]:
    import redis as sync_redis
    from prometheus_client import CollectorRegistry
    from redis.asyncio.connection import Connection

    from flagmetrics import LocalStore, PrometheusExporter, RedisStore

    class CountingConnection(Connection):
        """A redis-py connection that counts what it sends; behaviour unchanged."""

        sends = 0
        payload_bytes = 0
        flush = 0
        """The number of the flush under way (`Flusher.flush` calls, numbered below)."""
        flushes: ClassVar[list[int]] = []

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            CountingConnection.sends += 1
            CountingConnection.flushes.append(CountingConnection.flush)
            if isinstance(command, (bytes, bytearray)):
                CountingConnection.payload_bytes += len(command)
            elif not isinstance(command, str):
                command = list(command)
                CountingConnection.payload_bytes += sum(len(c) for c in command)
            await super().send_packed_command(command, check_health)

    admin = sync_redis.Redis.from_url(redis_url)
    events = to_litestar_events(event_specs(60_000, users=12_000))
    rate_rows: list[dict[str, Any]] = []
    for rate in rates:
        prefix = f"cost{rate}"
        counted = RedisStore.from_url(redis_url, key_prefix=prefix, connection_class=CountingConnection)
        exporter = PrometheusExporter(CollectorRegistry(), store=counted)
        await exporter.start()
        await exporter.record(events[0])  # connect, load the script: not part of the window
        await exporter.flush()
        before = _commandstats(admin)
        CountingConnection.sends = CountingConnection.payload_bytes = 0
        CountingConnection.flushes = []
        flusher = exporter._flusher
        flush = flusher.flush

        async def numbered(flush: Any = flush) -> None:  # each send is charged to the flush that made it
            CountingConnection.flush += 1
            await flush()

        flusher.flush = numbered  # type: ignore[method-assign]
        per_tick = rate * TICK_S
        owed = 0.0
        sent = 0
        started = time.perf_counter()
        next_tick = started
        while (now := time.perf_counter()) - started < window_s:
            owed += per_tick
            while owed >= 1.0:
                await exporter.record(events[sent % len(events)])
                sent += 1
                owed -= 1.0
            next_tick += TICK_S
            await asyncio.sleep(max(next_tick - now, 0.0))
        elapsed = time.perf_counter() - started
        await exporter.flush()  # deliver the tail: counted, it is one more flush
        sends, payload = CountingConnection.sends, CountingConnection.payload_bytes
        bursts = [
            [n for n in CountingConnection.flushes if n == number] for number in sorted(set(CountingConnection.flushes))
        ]
        after = _commandstats(admin)
        reader = RedisStore.from_url(redis_url, key_prefix=prefix)
        stored = sum(stats.total for stats in (await reader.snapshot()).flags.values()) - 1
        await reader.close()
        await exporter.close()
        server = _delta(before, after)
        evalsha = server.get("evalsha", 0)
        rate_rows.append(
            {
                "target_rate": rate,
                "events": sent,
                "seconds": elapsed,
                "achieved_rate": sent / elapsed,
                "client_round_trips": sends,
                "client_bytes": payload,
                "server_commands": server,
                "server_total": sum(server.values()),
                "server_top_level": sum(server.get(k, 0) for k in ("evalsha", "ping", "script", "eval")),
                "flushes": len(bursts),
                "round_trips_per_flush": [len(b) for b in bursts],
                "evalsha": evalsha,
                "expected_flushes": elapsed / 1.0 + 1,
                "stored_events": stored,
            }
        )

    sustained: dict[str, Any] = {}
    for name in ("redis", "local"):
        store: Any
        if name == "redis":
            store = RedisStore.from_url(redis_url, key_prefix="sustain", connection_class=CountingConnection)
        else:
            store = LocalStore(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        exporter = PrometheusExporter(CollectorRegistry(), store=store)
        await exporter.start()
        for event in events[:10_000]:  # warm up series and connections
            await exporter.record(event)
        await exporter.flush()
        first = await exporter.fleet_snapshot()
        base_total = sum(s.total for s in first.flags.values()) if first else 0
        CountingConnection.sends = 0
        sent = 0
        started = time.perf_counter()
        while time.perf_counter() - started < sustain_s:
            for _ in range(100):
                for _ in range(100):
                    await exporter.record(events[sent % len(events)])
                    sent += 1
                await asyncio.sleep(0)
            await exporter.flush()
        elapsed = time.perf_counter() - started
        round_trips = CountingConnection.sends
        snap = await exporter.fleet_snapshot()
        delivered = (sum(s.total for s in snap.flags.values()) if snap else 0) - base_total
        dropped = counter_total(exporter.metrics.dropped_events)
        await exporter.close()
        sustained[name] = {
            "events": sent,
            "seconds": elapsed,
            "events_per_s": sent / elapsed,
            "delivered": delivered,
            "dropped": dropped,
            "flushes": sent // 10_000,
            "round_trips": round_trips if name == "redis" else None,
        }
    admin.close()
    return {"rates": rate_rows, "sustained": sustained}


TITLE = "4. Redis cost"
"""The heading of this section on the page."""


def run(*, quick: bool) -> dict[str, Any]:
    rates, window_s, sustain_s = ([1_000, 10_000], 1.2, 0.5) if quick else ([100, 1_000, 10_000, 50_000], 5.0, 5.0)
    with redis_server() as redis, temp_dir("cost") as directory:
        log(f"redis cost: rates {rates}, {window_s} s each; sustained {sustain_s} s per store")
        out = run_json(
            [
                PYTHON,
                "-m",
                "benchmarks.redis_cost",
                "--worker",
                "--redis-url",
                redis.url,
                "--rates",
                ",".join(map(str, rates)),
                "--window",
                str(window_s),
                "--sustain",
                str(sustain_s),
            ],
            env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
            timeout_s=300,
        )
        version = redis.version()
    return {
        "section": "redis_cost",
        "date": now_iso(),
        "quick": quick,
        "window_s": window_s,
        "sustain_s": sustain_s,
        "redis_version": version,
        **out,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--rates", default="100,1000,10000")
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--sustain", type=float, default=5.0)
    args = parser.parse_args(argv)
    require_multiprocess_env()
    rates = [int(r) for r in args.rates.split(",")]
    emit(asyncio.run(_measure(args.redis_url, rates, args.window, args.sustain)))


# -- the page ------------------------------------------------------------------------------------------


def render(data: dict[str, Any], charts: Charts, verdicts: list[list[str]]) -> Lines:
    """This section's part of docs/benchmarks.md, from its saved results; adds its rows to `verdicts`."""
    rows = []
    worst: list[int] = []
    for r in data["rates"]:
        k = r["events"] / 1000
        sizes = r.get("round_trips_per_flush") or [1] * r["flushes"]
        worst.append(max(sizes))
        doubles = sum(1 for n in sizes if n > 1)
        cmds = ", ".join(f"{name} {v}" for name, v in sorted(r["server_commands"].items(), key=lambda x: -x[1]))
        rows.append(
            [
                f"{r['target_rate']:,}",
                f"{r['achieved_rate']:,.0f}",
                f"{r['events']:,}",
                f"{r['seconds']:.1f}",
                str(r["flushes"]),
                str(r["client_round_trips"]),
                f"{r['client_round_trips'] / r['flushes']:.2f} (max {max(sizes)}; {doubles} with more than 1)",
                fmt(r["client_round_trips"] / r["seconds"], 2),
                fmt(r["client_round_trips"] / k, 3),
                str(r.get("evalsha", r["flushes"])),
                fmt(r["server_top_level"] / k, 3),
                fmt(r["server_total"] / k, 1),
                cmds,
                fmt(r["client_bytes"] / r["events"], 0),
                "yes" if r["stored_events"] == r["events"] else "**no**",
            ]
        )
    out = [
        provenance(data),
        "",
        f"One worker, flagmetrics on a RedisStore (flusher at its default 1 s), events paced in 10 ms ticks "
        f"for {data['window_s']:g} s per rate, then one last `flush()` (counted). *Round trips* are counted "
        "on the client (every `send_packed_command` of the redis-py connection), each charged to the "
        "`Flusher.flush` call under way (a *flush*; the flusher runs one a second). The server side is `INFO "
        "commandstats` deltas: EVALSHA calls, and every command the flush script runs inside Redis (one "
        "round trip, many commands: the table lists them).",
        "",
        *table(
            [
                "target events/s",
                "achieved",
                "events",
                "s",
                "flushes",
                "client round trips",
                "round trips / flush",
                "round trips / s",
                "round trips / 1,000 events",
                "EVALSHA (server)",
                "top-level commands / 1,000 events",
                "all server commands / 1,000 events",
                "server commands",
                "bytes sent / event",
                "all events in Redis",
            ],
            rows,
        ),
        "",
        "For comparison: an unpipelined PFADD + 2 INCR per event is 3,000 commands and 3,000 "
        "round trips per 1,000 events.",
        "",
    ]
    verdicts.append(
        [
            "Redis: one round trip per flush per worker, whatever the event rate",
            "most round trips in one flush: "
            + ", ".join(f"{w} at {r['target_rate']:,}/s" for w, r in zip(worst, data["rates"], strict=True))
            + "; each round trip is one EVALSHA",
            met(all(w <= 1 for w in worst)),
        ]
    )
    srows = []
    for name, r in data["sustained"].items():
        srows.append(
            [
                "RedisStore" if name == "redis" else "LocalStore",
                f"{r['events_per_s']:,.0f}",
                f"{r['events']:,}",
                f"{r['seconds']:.1f}",
                f"{1e6 / r['events_per_s']:.2f}",
                f"{r['delivered']:,}",
                f"{r['dropped']:.0f}",
                str(r["round_trips"]) if r["round_trips"] is not None else "–",
            ]
        )
    out += [
        "### Sustained throughput of one worker",
        "",
        f"Record continuously (a `sleep(0)` every 100 events) and `await exporter.flush()` every 10,000 "
        f"events, for {data['sustain_s']:g} s; the store's totals are read back. The flush is awaited in "
        "line here, so the worker idles while Redis runs the script; in a server the loop would keep "
        "serving requests meanwhile.",
        "",
        *table(
            [
                "store",
                "events/s",
                "events",
                "s",
                "µs/event",
                "delivered to the store",
                "dropped",
                "round trips",
            ],
            srows,
        ),
        "",
    ]
    fig, ax = charts.plt.subplots(figsize=(7, 3.4))
    rates = [r["achieved_rate"] for r in data["rates"]]
    ax.plot(
        rates,
        [r["client_round_trips"] / r["events"] * 1000 for r in data["rates"]],
        marker="o",
        color="#2a7",
        label="flagmetrics: round trips / 1,000 events",
    )
    ax.plot(
        rates,
        [r["client_round_trips"] / r["seconds"] for r in data["rates"]],
        marker="s",
        color="#27a",
        label="flagmetrics: round trips / second",
    )
    ax.plot(rates, [1000.0 for _ in rates], ls="--", color="#c55", label="one round trip per event (per 1,000)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events per second (one worker)")
    ax.legend(fontsize=8)
    out += [charts.save(fig, "redis.png", "Redis round trips vs event rate"), ""]
    return out


if __name__ == "__main__":
    main()
