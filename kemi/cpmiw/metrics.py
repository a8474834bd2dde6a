"""Prometheus metrics of the plugin, shared by all Kamailio worker processes.

Kamailio forks its workers after `mod_init`, and each one routes requests on its own: a counter
kept in one process's memory would show a random worker's share. prometheus_client's
multiprocess mode keeps every process's values in mmap'ed files under one directory and sums
them when `/metrics` is scraped. Its value class is chosen when prometheus_client is first
imported, from PROMETHEUS_MULTIPROC_DIR; so `setup()` sets that variable, wipes the files a
previous run left behind and only then imports the library and builds the metrics. Before
`setup()` every reporting function is a no-op (the CLI and unit tests never call it).

The adapter and the store report events through the functions below; `render()` produces the
exposition text that kamailio.cfg's xhttp route serves. Labels are bounded sets (methods,
services, actions, rules, statuses): never a subscriber, a URI or a Call-ID.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

DEFAULT_DIR = "/run/cpmiw-metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Methods worth a label value of their own; anything else a sender invents counts as "other".
METHODS = frozenset(
    {"MESSAGE", "INVITE", "OPTIONS", "SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER", "INFO", "UPDATE"}
)
# Seconds: the plugin decides in tens of microseconds from cache, in about a millisecond from Redis.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip


@dataclass(frozen=True)
class _Metrics:
    requests: Counter
    rules: Counter
    rejects: Counter
    as_failures: Counter
    lookups: Counter
    redis_errors: Counter
    redis_seconds: Histogram
    decision_seconds: Histogram
    shadow: Gauge


_metrics: _Metrics | None = None


def setup(directory: str | None = None, *, shadow: bool = False) -> None:
    """Called once in Kamailio's main process before the workers fork.

    `directory` defaults to CPMIW_METRICS_DIR, else /run/cpmiw-metrics. Only the library's own
    `*.db` files are removed from it, so a misconfigured path cannot wipe anything else.
    `shadow` is published as a gauge: in shadow mode the outcomes counted are the ones the proxy
    would have applied, and the alerts on rejects stay quiet.
    """
    global _metrics  # noqa: PLW0603  (one set of metrics per process, built once)
    path = Path(directory or os.environ.get("CPMIW_METRICS_DIR") or DEFAULT_DIR)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    _metrics = _build()
    _metrics.shadow.set(1 if shadow else 0)


def _build() -> _Metrics:
    from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415  (env set first)

    return _Metrics(
        requests=Counter(
            "cpmiw_requests",
            "Initial requests routed by the plugin, by method, requested service and outcome.",
            ["method", "service", "outcome"],
        ),
        rules=Counter(
            "cpmiw_decision_rules",
            "Routing decisions by the rule that took them.",
            ["rule"],
        ),
        rejects=Counter(
            "cpmiw_rejects",
            "Requests the plugin answered with an error status, by status.",
            ["status"],
        ),
        as_failures=Counter(
            "cpmiw_as_default_handling",
            "Application server failures (408, 5xx, no answer), by the default handling applied.",
            ["handling"],
        ),
        lookups=Counter(
            "cpmiw_profile_lookups",
            "Profile look-ups: hit (worker cache), miss (asked Redis) or error.",
            ["result"],
        ),
        redis_errors=Counter(
            "cpmiw_redis_errors",
            "Redis round trips that failed (refused, timed out, bad reply).",
        ),
        redis_seconds=Histogram(
            "cpmiw_redis_seconds",
            "Duration of Redis round trips made by the plugin, failed ones included.",
            buckets=LATENCY_BUCKETS,
        ),
        decision_seconds=Histogram(
            "cpmiw_decision_seconds",
            "Time the plugin takes to route one initial request, look-up included.",
            buckets=LATENCY_BUCKETS,
        ),
        # Set once in the main process, which outlives the workers: "max" over the processes.
        shadow=Gauge(
            "cpmiw_shadow_mode",
            "1 when the proxy runs in shadow mode (CPMIW_SHADOW=on): decides, delivers unchanged.",
            multiprocess_mode="max",
        ),
    )


def observe_decision(
    method: str, service: str, action: str, rule: str, status: int, seconds: float
) -> None:
    """One routed initial request: its outcome and how long the plugin took."""
    if _metrics is None:
        return
    method = method if method in METHODS else "other"
    _metrics.requests.labels(method, service, action).inc()
    _metrics.rules.labels(rule).inc()
    if status:
        _metrics.rejects.labels(str(status)).inc()
    _metrics.decision_seconds.observe(seconds)


def count_as_failure(handling: str) -> None:
    """An AS failed (408, 5xx, no answer); `handling` is continue or terminate."""
    if _metrics is not None:
        _metrics.as_failures.labels(handling).inc()


def count_lookup(result: str) -> None:
    """A profile look-up: hit (worker cache), miss (asked Redis) or error."""
    if _metrics is not None:
        _metrics.lookups.labels(result).inc()


def observe_redis(seconds: float, error: bool) -> None:
    """One Redis round trip, and whether it failed."""
    if _metrics is None:
        return
    _metrics.redis_seconds.observe(seconds)
    if error:
        _metrics.redis_errors.inc()


def render() -> tuple[str, bytes]:
    """Content type and body of the exposition: the sum over every process's files."""
    if _metrics is None:
        return CONTENT_TYPE, b""
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return CONTENT_TYPE, generate_latest(registry)


def serve(path: str) -> tuple[int, str, str, bytes]:
    """An HTTP answer (status, reason, content type, body) for a GET of `path`."""
    if path.split("?", 1)[0] != "/metrics":
        return 404, "Not Found", "text/plain", b"cpmiw serves /metrics only\n"
    content_type, body = render()
    return 200, "OK", content_type, body
