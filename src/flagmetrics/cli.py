"""Internal: the `flagmetrics` command; `serve` exports the fleet gauges once per fleet, `inspect` prints them."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

from flagmetrics import __version__
from flagmetrics.auth import credentials_for
from flagmetrics.config import Settings, metric_prefix, redact_url
from flagmetrics.exceptions import ConfigurationError, FlagMetricsError, StoreError
from flagmetrics.exposition import ScrapeSource
from flagmetrics.server import start_metrics_server
from flagmetrics.stores import default_store
from flagmetrics.stores.base import FlagStats, Snapshot, Store, snapshot_within
from flagmetrics.windows import MISMATCH_P_VALUE, split_p_value

__all__ = ["main"]

DEFAULT_PORT = 9464
"""Port `flagmetrics serve` listens on unless `--port` says otherwise."""

CHECK_TIMEOUT_S = 5.0
"""Seconds the start-up check of `serve` and a read by `inspect` wait for the store."""

EXIT_OK = 0
EXIT_ERROR = 2
"""Exit code of usage, configuration and connection errors (argparse uses it for usage errors too)."""

_SERVER_STOP_TIMEOUT_S = 5.0  # seconds to wait for the HTTP server thread after shutdown()

_NO_STORE = (
    "no fleet store given: pass `--redis-url` (or set FLAGMETRICS_REDIS_URL) to read Redis, `--redis-sentinel` "
    "(or set FLAGMETRICS_REDIS_SENTINEL) to read the Redis master its sentinels name, "
    "or `--dir` with the gunicorn multiprocess directory of a single host"
)

# The variables of each store the command line can choose; an option choosing one leaves the others' out.
_STORE_VARIABLES = {
    "redis_url": ("FLAGMETRICS_REDIS_URL", "FLAGMETRICS_REDIS_CLUSTER"),
    "redis_sentinel": (
        "FLAGMETRICS_REDIS_SENTINEL",
        "FLAGMETRICS_REDIS_SENTINEL_MASTER",
        "FLAGMETRICS_REDIS_SENTINEL_PASSWORD",
    ),
}

# Where each setting the command line can set comes from, to say where to fix an invalid one.
_SOURCES = {
    "url": "--redis-url or FLAGMETRICS_REDIS_URL",
    "key_prefix": "--key-prefix or FLAGMETRICS_KEY_PREFIX",
    "redis_cluster": "--redis-cluster or FLAGMETRICS_REDIS_CLUSTER",
    "redis_sentinel": "--redis-sentinel or FLAGMETRICS_REDIS_SENTINEL",
    "sentinels": "--redis-sentinel or FLAGMETRICS_REDIS_SENTINEL",
    "redis_sentinel_master": "--redis-sentinel-master or FLAGMETRICS_REDIS_SENTINEL_MASTER",
    "service_name": "--redis-sentinel-master or FLAGMETRICS_REDIS_SENTINEL_MASTER",
    "redis_sentinel_password": "FLAGMETRICS_REDIS_SENTINEL_PASSWORD",
    "scrape_timeout_s": "--scrape-timeout or FLAGMETRICS_SCRAPE_TIMEOUT_S",
    "path": "--dir",
}


# -- entry point -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: `sys.argv[1:]`) and return the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_ERROR
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        return command(args)
    except FlagMetricsError as exc:
        message = _scrub(str(exc), _secrets(args))
        print(f"flagmetrics {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`flagmetrics inspect | head`): stop quietly
        # Point stdout at /dev/null so that flushing it at exit raises no second error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _parser() -> argparse.ArgumentParser:
    """Build the parser of `flagmetrics` and its commands."""
    parser = argparse.ArgumentParser(
        prog="flagmetrics",
        description="Read the fleet-wide feature-flag figures that flagmetrics keeps in Redis or on a host.",
        epilog=(
            "examples:\n"
            "  flagmetrics serve --redis-url redis://redis.internal:6379/0 --addr 0.0.0.0\n"
            "  flagmetrics inspect --redis-url redis://redis.internal:6379/0\n"
            "  flagmetrics inspect --redis-sentinel sentinel-1:26379,sentinel-2:26379,sentinel-3:26379\n"
            "\n"
            "Settings not given as options come from the FLAGMETRICS_* environment variables."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"flagmetrics {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="export the fleet gauges on a port of their own, once for the whole fleet",
        description=(
            "Serve feature_flag_unique_users, feature_flag_error_rate and flagmetrics_store_up for the\n"
            "whole fleet on http://ADDR:PORT/metrics, read from the store at each scrape. Scrape it\n"
            "once per fleet and set FLAGMETRICS_FLEET_GAUGES=0 on the apps, so that their per-host\n"
            "scrapes (counters and histograms) do not export the same gauges again.\n"
            "Stops cleanly on SIGINT or SIGTERM."
        ),
        epilog=(
            "examples:\n"
            "  FLAGMETRICS_METRICS_TOKEN=s3cret flagmetrics serve \\\n"
            "      --redis-url redis://redis.internal:6379/0 --addr 0.0.0.0 --port 9464\n"
            "  flagmetrics serve --dir /run/myapp/prometheus   # one host, no Redis\n"
            "  flagmetrics serve --redis-sentinel sentinel-1:26379,sentinel-2:26379,sentinel-3:26379 \\\n"
            "      --redis-sentinel-master mymaster --addr 0.0.0.0   # a master behind Redis Sentinel\n"
            "\n"
            "Prefer FLAGMETRICS_REDIS_URL, FLAGMETRICS_REDIS_SENTINEL and FLAGMETRICS_METRICS_TOKEN to the\n"
            "options for secrets: options are visible to every user of the host in the process list. The\n"
            "sentinels' own password is read from FLAGMETRICS_REDIS_SENTINEL_PASSWORD only."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="TCP port; 0 picks a free one (default: %(default)s)"
    )
    serve.add_argument(
        "--addr", default="127.0.0.1", help="address to bind; 0.0.0.0 or :: for every interface (default: %(default)s)"
    )
    _store_options(serve)
    serve.add_argument(
        "--prefix",
        default="",
        help="metric name prefix, the same as PrometheusExporter(prefix=...): myapp gives myapp_feature_flag_*",
    )
    serve.add_argument(
        "--token", help="bearer token scrapers must send (default: FLAGMETRICS_METRICS_TOKEN; unset: no auth)"
    )
    serve.add_argument(
        "--scrape-timeout",
        type=float,
        metavar="SECONDS",
        help="longest wait for the store per scrape before answering with store_up 0 "
        "(default: FLAGMETRICS_SCRAPE_TIMEOUT_S or 0.5)",
    )
    serve.add_argument("--no-check", action="store_true", help="start even when the store cannot be read at start-up")
    serve.set_defaults(run=_serve)

    inspect = commands.add_parser(
        "inspect",
        help="print every flag's fleet-wide figures",
        description=(
            "Print every flag's fleet-wide evaluations, errors, error rate and unique users, sorted by\n"
            "flag key. Figures pinned with update_from_metrics() are marked with *."
        ),
        epilog=(
            "examples:\n"
            "  flagmetrics inspect --redis-url redis://redis.internal:6379/0\n"
            "  flagmetrics inspect --redis-sentinel sentinel-1:26379,sentinel-2:26379 --redis-sentinel-master cache\n"
            "  flagmetrics inspect --dir /run/myapp/prometheus --json | jq '.flags[\"new-checkout\"]'"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _store_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument(
        "--timeout",
        type=_seconds,
        default=CHECK_TIMEOUT_S,
        metavar="SECONDS",
        help="longest wait for the store (default: %(default)s)",
    )
    inspect.set_defaults(run=_inspect)
    return parser


def _store_options(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose the store: `--redis-url`, `--redis-sentinel` or `--dir`, and `--key-prefix`."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis holding the fleet state: redis://, rediss:// or unix:// (default: FLAGMETRICS_REDIS_URL); "
        "takes precedence over FLAGMETRICS_REDIS_SENTINEL",
    )
    where.add_argument(
        "--redis-sentinel",
        metavar="SENTINELS",
        help="the Redis Sentinels of the master holding the fleet state: host:port,host:port (IPv6 in brackets), "
        "or redis://[[user]:password@]host:port,host:port[/db] (rediss:// for TLS) with the master's credentials "
        "and database (default: FLAGMETRICS_REDIS_SENTINEL; the sentinels' own password: "
        "FLAGMETRICS_REDIS_SENTINEL_PASSWORD); takes precedence over FLAGMETRICS_REDIS_URL",
    )
    where.add_argument(
        "--dir",
        metavar="PATH",
        help="a single host's state: its gunicorn multiprocess directory (PROMETHEUS_MULTIPROC_DIR); "
        "takes precedence over FLAGMETRICS_REDIS_URL and FLAGMETRICS_REDIS_SENTINEL",
    )
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        default=None,
        help="the Redis URL names a node of a Redis Cluster (default: FLAGMETRICS_REDIS_CLUSTER)",
    )
    parser.add_argument(
        "--redis-sentinel-master",
        metavar="NAME",
        help="the master's service name in the sentinels' configuration "
        "(default: FLAGMETRICS_REDIS_SENTINEL_MASTER or mymaster)",
    )
    parser.add_argument(
        "--key-prefix", help="prefix of the Redis keys (default: FLAGMETRICS_KEY_PREFIX or flagmetrics)"
    )


def _port(text: str) -> int:
    """Parse a TCP port for argparse."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0-65535), got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0-65535), got {port}")
    return port


def _seconds(text: str) -> float:
    """Parse a positive number of seconds for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


# -- commands ----------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    """Serve the fleet gauges until SIGINT or SIGTERM."""
    settings = _settings(args, scrape_timeout_s=args.scrape_timeout, metrics_token=args.token)
    prefix = metric_prefix(args.prefix, argument="--prefix")
    where = _describe(settings, args.dir)
    if args.no_check:
        asyncio.run(_open(settings, args.dir).close())  # still rejects a malformed URL
    else:
        started = time.monotonic()
        snapshot = _snapshot(settings, args.dir, CHECK_TIMEOUT_S, serving=True)
        elapsed_s = time.monotonic() - started
        if not snapshot.flags:
            print(f"flagmetrics serve: note: no flags recorded yet in {where}", file=sys.stderr)
        if elapsed_s > settings.scrape_timeout_s:
            print(
                f"flagmetrics serve: warning: reading {where} took {elapsed_s:.2f} s, longer than the scrape "
                f"timeout of {settings.scrape_timeout_s} s; scrapes may answer store_up 0, raise --scrape-timeout",
                file=sys.stderr,
            )
    source = ScrapeSource(settings, prefix=prefix, multiprocess_path=args.dir, workers=False)
    credentials = credentials_for(settings)

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            httpd, thread = start_metrics_server(source, args.port, args.addr, credentials=credentials)
        except OSError as exc:
            raise ConfigurationError(
                f"could not listen on {args.addr}:{args.port} ({exc.strerror or exc}); "
                "choose another `--port`, or an `--addr` of this host"
            ) from exc
        try:
            auth = "bearer token required" if credentials else "no auth"
            print(
                f"flagmetrics: serving the fleet gauges of {where} on "
                f"http://{args.addr}:{httpd.server_port}/metrics ({auth}); stop with Ctrl-C or SIGTERM",
                flush=True,
            )
            stop.wait()
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(_SERVER_STOP_TIMEOUT_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    """Print the fleet state as a table or JSON."""
    settings = _settings(args)
    snapshot = _snapshot(settings, args.dir, args.timeout)
    if args.json:
        store: dict[str, Any] = {"directory": args.dir}
        if args.dir is None and settings.redis_sentinel:
            store = {
                "redis_sentinel": redact_url(settings.redis_sentinel),
                "redis_sentinel_master": settings.redis_sentinel_master,
                "key_prefix": settings.key_prefix,
            }
        elif args.dir is None:
            store = {"redis_url": redact_url(settings.redis_url or ""), "key_prefix": settings.key_prefix}
            if settings.redis_cluster:
                store["cluster"] = True
        flags = {key: _as_json(stats) for key, stats in sorted(snapshot.flags.items())}
        print(json.dumps({"store": store, "flags": flags}, indent=2))
    elif not snapshot.flags:
        print(f"no flags recorded yet in {_describe(settings, args.dir)}")
    else:
        print(_table(snapshot))
    sys.stdout.flush()  # a closed pipe raises here, inside main(), not at interpreter exit
    return EXIT_OK


# -- the store ---------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Read the `FLAGMETRICS_*` variables and apply the options given.

    The option that chooses the store (`--redis-url`, `--redis-sentinel` or `--dir`) wins over the
    variables that choose another one.
    """
    chosen = args.dir is not None or args.redis_url or args.redis_sentinel
    left_out = {
        name for store, names in _STORE_VARIABLES.items() if chosen and not getattr(args, store) for name in names
    }
    environ = {name: value for name, value in os.environ.items() if name not in left_out}
    try:
        return Settings.from_env(
            environ,
            redis_url=args.redis_url,
            redis_cluster=args.redis_cluster if args.dir is None else None,
            redis_sentinel=args.redis_sentinel,
            redis_sentinel_master=args.redis_sentinel_master,
            key_prefix=args.key_prefix,
            **overrides,
        )
    except ConfigurationError as exc:
        raise ConfigurationError(_with_source(str(exc))) from exc


def _open(settings: Settings, directory: str | None) -> Store:
    """Open the store the settings name; raise `ConfigurationError` when they name none or a bad one."""
    if directory is None and not settings.uses_redis:
        raise ConfigurationError(_NO_STORE)
    try:
        return default_store(settings, directory)
    except ConfigurationError as exc:
        raise ConfigurationError(_with_source(str(exc))) from exc
    except StoreError as exc:
        raise StoreError(_with_source(str(exc)), transient=exc.transient) from exc


async def _read(store: Store, timeout_s: float) -> Snapshot:
    """Read a snapshot within `timeout_s`, then close the store."""
    try:
        return await snapshot_within(store, timeout_s)
    finally:
        await store.close()


def _snapshot(settings: Settings, directory: str | None, timeout_s: float, *, serving: bool = False) -> Snapshot:
    """Read the store once; raise `StoreError` saying which store failed and what to check."""
    store = _open(settings, directory)
    try:
        return asyncio.run(_read(store, timeout_s))
    except StoreError as exc:
        # The StoreError's cause is the driver's own message, without the store's wording around it.
        detail = str(exc.__cause__ or exc).rstrip(".") or f"no answer within {timeout_s} s"
        if directory is not None:
            hint = "check that `--dir` is the multiprocess directory the workers write to and that it is readable"
        elif settings.redis_sentinel:
            hint = (
                "check that the sentinels are running and name a master that is up, and that `--redis-sentinel` "
                "(or FLAGMETRICS_REDIS_SENTINEL) and `--redis-sentinel-master` are right"
            )
        else:
            hint = "check that Redis is running and that `--redis-url` (or FLAGMETRICS_REDIS_URL) is right"
        if serving:
            hint += ", or pass --no-check to serve anyway"
        raise StoreError(f"could not read {_describe(settings, directory)}: {detail}; {hint}") from exc


def _describe(settings: Settings, directory: str | None) -> str:
    """Name the store for a message, without its password."""
    if directory is not None:
        return f"the directory {directory!r}"
    if settings.redis_sentinel:
        return (
            f"Redis Sentinel master {settings.redis_sentinel_master!r} at {redact_url(settings.redis_sentinel)} "
            f"(key prefix {settings.key_prefix!r})"
        )
    kind = "Redis Cluster" if settings.redis_cluster else "Redis"
    return f"{kind} at {redact_url(settings.redis_url or '')} (key prefix {settings.key_prefix!r})"


def _secrets(args: argparse.Namespace) -> set[str]:
    """The passwords and tokens that must never be printed, from the options and the environment."""
    found: set[str] = set()
    urls = [getattr(args, "redis_url", None), os.environ.get("FLAGMETRICS_REDIS_URL")]
    tokens = [
        getattr(args, "token", None),
        os.environ.get("FLAGMETRICS_METRICS_TOKEN"),
        os.environ.get("FLAGMETRICS_REDIS_SENTINEL_PASSWORD"),
    ]
    sentinels = [getattr(args, "redis_sentinel", None), os.environ.get("FLAGMETRICS_REDIS_SENTINEL")]
    urls += [text for text in sentinels if text and "://" in text]  # the URL form holds the master's password
    for url in filter(None, urls):
        try:
            parts = urlsplit(url)
            password = parts.password
        except ValueError:
            found.add(url)
            continue
        if password:
            found |= {password, unquote(password)}
        for item in parts.query.split("&"):
            name, _, value = item.partition("=")
            if name.lower() == "password" and value:
                found |= {value, unquote(value)}
    found.update(token for token in tokens if token)
    return found


def _scrub(message: str, secrets: set[str]) -> str:
    """Replace every secret in `message` with `***`."""
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


def _with_source(message: str) -> str:
    """Append where a setting named in backticks at the start of `message` is set."""
    for name, source in _SOURCES.items():
        if message.startswith(f"`{name}`"):
            return f"{message} (set by {source})"
    return message


# -- output ------------------------------------------------------------------------------------------


def _as_json(stats: FlagStats) -> dict[str, Any]:
    """Return a flag's figures as a JSON object; `error_rate` is 0..1, or null before any evaluation."""
    return {
        "evaluations": stats.total,
        "errors": stats.errors,
        "error_rate": stats.error_rate,
        "unique_users": stats.unique_users,
        "pinned": stats.pinned_error_rate is not None,
        "last_evaluated": stats.last_evaluated_s,
        "expected_split": dict(stats.split) if stats.split is not None else None,
        "windows": {
            window: {
                "unique_users": figures.users,
                "variants": dict(sorted(figures.variants.items())),
                "split_p_value": split_p_value(figures.variants, stats.split) if stats.split is not None else None,
            }
            for window, figures in stats.windows.items()
        },
    }


def _age(last_evaluated_s: float | None, now: float) -> str:
    """How long ago a flag was last evaluated, in its largest unit (`-` when unknown)."""
    if last_evaluated_s is None:
        return "-"
    seconds = max(0.0, now - last_evaluated_s)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _experiments(snapshot: Snapshot) -> list[str]:
    """One line per flag and window with users per variant, and the split check where there is one."""
    lines = []
    for key, stats in sorted(snapshot.flags.items()):
        for window, figures in stats.windows.items():
            if not figures.variants:
                continue
            served = ", ".join(f"{variant} {users}" for variant, users in sorted(figures.variants.items()))
            line = f"{key} ({window}): {served}"
            if stats.split is not None:
                p_value = split_p_value(figures.variants, stats.split)
                check = "too few users to check" if p_value is None else f"p = {p_value:.3g}"
                mismatch = " MISMATCH" if p_value is not None and p_value < MISMATCH_P_VALUE else ""
                line += f"; expected split {_weights(stats.split)}: {check}{mismatch}"
            lines.append(line)
    return lines


def _weights(split: Mapping[str, float]) -> str:
    total = sum(split.values()) or 1.0
    return "/".join(f"{variant} {weight * 100 / total:.0f}%" for variant, weight in sorted(split.items()))


def _percent(rate: float | None) -> str:
    """Format an error rate (0..1) as a percentage; `-` before any evaluation."""
    if rate is None:
        return "-"
    if 0 < rate < 0.0001:
        return "<0.01%"
    return f"{rate * 100:.2f}%"


def _table(snapshot: Snapshot) -> str:
    """Render the flags as an aligned table, pinned figures marked with `*` and explained below.

    One column per trailing window (its users), the time since the last evaluation, then the users
    per variant of each window with the split check.
    """
    windows = list(dict.fromkeys(window for stats in snapshot.flags.values() for window in stats.windows))
    header = (
        "FLAG",
        "EVALUATIONS",
        "ERRORS",
        "ERROR RATE",
        "UNIQUE USERS",
        *(f"USERS {window}" for window in windows),
        "LAST EVALUATED",
    )
    now = time.time()
    rows: list[tuple[tuple[str, ...], bool]] = [
        (
            (
                key,
                str(stats.total),
                str(stats.errors),
                _percent(stats.error_rate),
                str(stats.unique_users),
                *(str(stats.windows[w].users) if w in stats.windows else "-" for w in windows),
                _age(stats.last_evaluated_s, now),
            ),
            stats.pinned_error_rate is not None,
        )
        for key, stats in sorted(snapshot.flags.items())
    ]
    widths = [max(len(cells[i]) for cells in [header, *(row for row, _ in rows)]) for i in range(len(header))]
    pinned_columns = (3, 4)

    def line(cells: tuple[str, ...], pinned: bool) -> str:
        out = [cells[0].ljust(widths[0])]
        for i in range(1, len(cells)):
            mark = "*" if pinned and i in pinned_columns else " "
            out.append(cells[i].rjust(widths[i]) + mark)
        return "  ".join(out).rstrip()

    lines = [line(header, False), *(line(row, pinned) for row, pinned in rows)]
    if any(pinned for _, pinned in rows):
        lines += ["", "* pinned with update_from_metrics(): set from outside, not computed from evaluations"]
    experiments = _experiments(snapshot)
    if experiments:
        lines += ["", f"Users per variant (and split check, p < {MISMATCH_P_VALUE:g} is a mismatch):", *experiments]
    return "\n".join(lines)
