"""Prometheus metrics of the plugin, shared by all Kamailio worker processes.

Kamailio forks its workers after `mod_init`, and each one routes requests on its own: a counter
kept in one process's memory would show a random worker's share. So every process keeps its
values in files of its own under one directory (CPMIW_METRICS_DIR), and `render()`, which the
xhttp route calls on a scrape, sums the files of every process.

Why not prometheus_client's multiprocess mode, which did this before: per increment it looks the
labels up under a lock, takes another lock, calls os.getpid() (a system call) and packs a struct
into its mmap'ed file. In a loaded Kamailio worker that came to ~7 µs per counter and ~24 µs per
request, 9 % of the route's time (bench/README.md); alone in a process, one request's
`observe_decision` + `count_lookup` took 5.6 µs. The tally below takes 0.5 µs for the same: per
increment a dict look-up and `view[slot] += 1.0` on a memoryview of this process's mmap, with no
lock (a Kamailio worker runs one thread) and no system call. prometheus_client is imported only
by `render()`, to write the exposition.

Files, per process that counts (the main process, which sets the shadow gauge, and the workers
that route; a process that never counts has none):

- `tally-<pid>.bin`: SLOTS float64 slots (32 KB), mmap'ed shared and written only by that process.
  Slot 0 counts the series dropped for want of a slot, slots 1 to 14 are a sink that takes their
  increments; every series after that owns one slot (a counter, the gauge) or a run of 14 (a
  histogram: one per bucket, not cumulative, the last one for +Inf, then the sum).
- `tally-<pid>.keys`: one line per series, appended the first time the process uses it, before
  its slot is written: `<slot> <JSON array: metric name, label values>`. A reader ignores a last
  line without its newline (a writer in the middle of appending it).

A name already taken (a pid reused during the run) gets a suffix, `tally-<pid>-<n>`: the files of
a process that died keep counting, so counters never go back. Labels are bounded sets (methods,
services, actions, rules, statuses; never a subscriber, a URI or a Call-ID), so a process uses a
few dozen series; past the SLOTS cap a new series is dropped, never an exception in a worker, and
the exposition shows `cpmiw_metrics_series_dropped_total` (only then).

A forked child must not write its parent's file: `os.register_at_fork` makes it forget the
parent's series and files, and it opens its own on its first count. Kamailio forks in C, but
app_python3 calls PyOS_AfterFork_Child in each child it initialises, which runs these handlers; in
case a process forks without them, the first new series also compares the pid.

`setup()` runs in Kamailio's main process before the fork; until it has, every reporting function
is a no-op (the CLI and the unit tests never call it).
"""

from __future__ import annotations

import json
import mmap
import os
import re
import socket
import struct
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from .core import memo
from .core.decision import Action
from .core.profile import AsFailure, Interworking
from .core.routing import AS_FAILED_CONTINUE, NO_MATCHING_DEVICE, RETURNED, SMS_FALLBACK

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    from prometheus_client.metrics_core import Metric

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

SLOTS = 4096  # float64 slots per process: 32 KB, room for some 4,000 counters
_DROPPED = 0  # slot counting the series that found no room
_HISTOGRAM_WIDTH = len(LATENCY_BUCKETS) + 2  # the buckets, +Inf, the sum
_SINK = 1  # slots 1 to _HISTOGRAM_WIDTH take the increments of dropped series
_FIRST = _SINK + _HISTOGRAM_WIDTH
_FILE = re.compile(r"tally-\d+(?:-\d+)?\.(?:bin|keys)")
_OLD_FILE = re.compile(r"(?:counter|gauge_\w+|histogram|summary)_\d+\.db")  # prometheus_client's

Kind = Literal["counter", "histogram", "gauge"]


@dataclass(frozen=True)
class _Spec:
    """What a metric is: its kind, help text and label names."""

    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return _HISTOGRAM_WIDTH if self.kind == "histogram" else 1


_METRICS = {
    "cpmiw_requests": _Spec(
        "counter",
        "Initial requests routed by the plugin, by method, requested service and outcome.",
        ("method", "service", "outcome"),
    ),
    "cpmiw_decision_rules": _Spec(
        "counter", "Routing decisions by the rule that took them.", ("rule",)
    ),
    "cpmiw_rejects": _Spec(
        "counter", "Requests the plugin answered with an error status, by status.", ("status",)
    ),
    "cpmiw_as_default_handling": _Spec(
        "counter",
        "Application server failures (408, 5xx, no answer), by the default handling applied.",
        ("handling",),
    ),
    "cpmiw_sms_fallbacks": _Spec(
        "counter",
        "Requests that went to the IP-SM-GW because no registered device took them, by why:"
        " a device failed (failure) or none answered in time (timeout).",
        ("reason",),
    ),
    "cpmiw_as_markers": _Spec(
        "counter",
        "Valid AS markers: honoured, replayed (refused), or honoured-unshared (honoured on this"
        " proxy's own record: the record every proxy shares, in Redis, could not be asked).",
        ("result",),
    ),
    "cpmiw_profile_lookups": _Spec(
        "counter",
        "Profile look-ups: hit (worker cache), miss (asked Redis), error (Redis failed),"
        " not-ready (the store is empty or was wiped) or invalid (the subscriber's data).",
        ("result",),
    ),
    "cpmiw_redis_errors": _Spec(
        "counter", "Redis round trips that failed (refused, timed out, bad reply)."
    ),
    "cpmiw_redis_breaker_opened": _Spec(
        "counter",
        "Times a worker's Redis breaker (one per Cluster shard) opened: a call failed, or its"
        " reply came late.",
        ("reason",),
    ),
    # Set by each worker as its breaker opens and closes: the maximum over the processes.
    "cpmiw_redis_breaker_open": _Spec(
        "gauge", "1 while a Redis breaker of at least one worker is open (any Cluster shard's)."
    ),
    "cpmiw_redis_seconds": _Spec(
        "histogram", "Duration of Redis round trips made by the plugin, failed ones included."
    ),
    "cpmiw_decision_seconds": _Spec(
        "histogram",
        "Time the plugin takes to route one initial request, look-up included (replays aside).",
    ),
    "cpmiw_replayed": _Spec(
        "counter",
        "Initial requests kamailio.cfg routed as the plugin did one of the same shape before.",
    ),
    "cpmiw_registrations": _Spec(
        "counter",
        "REGISTER requests by how the plugin admitted them, or answered them itself.",
        ("outcome",),
    ),
    # Set once in the main process, which outlives the workers: the maximum over the processes.
    "cpmiw_shadow_mode": _Spec(
        "gauge",
        "1 when the proxy runs in shadow mode (CPMIW_SHADOW=on): decides, delivers unchanged.",
    ),
}
_DROPPED_NAME = "cpmiw_metrics_series_dropped"
_DROPPED_HELP = f"Series not counted: a process needed more than {SLOTS} metric slots."

# The label values known in advance, shown at 0 from the start: an alert or a dashboard query on
# a series that does not exist yet sees nothing, not 0 (rate() of a series born at 1 misses the 1).
# The values met only at run time (another service, a status not listed) appear on first use.
_RULES = (
    "not-messaging", "subscribed", "unknown-recipient", "barred", "no-service", "not-registered",
    "file-transfer-to-sms", "sms-without-as", "sms-interworking", "foreign-domain",
    "not-a-subscriber", "profile-unavailable", "profile-unavailable-deliver", "store-not-ready",
    "options-on-behalf", "from-as", RETURNED, AS_FAILED_CONTINUE, "internal-error",
    NO_MATCHING_DEVICE, SMS_FALLBACK,
    *(f"interworking-{policy.value}" for policy in Interworking),
)  # fmt: skip
_REGISTRATION_OUTCOMES = (
    "trusted", "third-party", "authenticated", "challenged", "stale", "refused", "forbidden",
    "bad-request", "limited", "unavailable", "error",
)  # fmt: skip
_KNOWN: dict[str, tuple[tuple[str, ...], ...]] = {
    # method x outcome; the service a request asks for is known only from its headers
    "cpmiw_requests": tuple(
        (method, "none", outcome)
        for method in (*sorted(METHODS), "other")
        for outcome in (*(action.value for action in Action), "error")
    ),
    "cpmiw_decision_rules": tuple((rule,) for rule in _RULES),
    "cpmiw_rejects": tuple((status,) for status in ("403", "404", "480", "488", "500", "503")),
    "cpmiw_as_default_handling": tuple((handling.value,) for handling in AsFailure),
    "cpmiw_as_markers": (("honoured",), ("replayed",), ("honoured-unshared",)),
    "cpmiw_sms_fallbacks": (("timeout",), ("failure",)),
    "cpmiw_profile_lookups": tuple(
        (result,) for result in ("hit", "miss", "error", "not-ready", "invalid")
    ),
    "cpmiw_redis_breaker_opened": (("failed",), ("late",)),
    "cpmiw_registrations": tuple((outcome,) for outcome in _REGISTRATION_OUTCOMES),
}

Key = tuple[str, ...]  # metric name, then its label values in _Spec.labels' order
_SHADOW: Key = ("cpmiw_shadow_mode",)
_REDIS_ERRORS: Key = ("cpmiw_redis_errors",)
_REDIS_SECONDS: Key = ("cpmiw_redis_seconds",)
_DECISION_SECONDS: Key = ("cpmiw_decision_seconds",)
_BREAKER_OPEN: Key = ("cpmiw_redis_breaker_open",)


class _Tally:
    """This process's two files and the next free slot."""

    def __init__(self, directory: Path) -> None:
        pid, suffix = os.getpid(), 0
        while True:  # claim a name: the .keys file, created before its .bin is sized
            stem = f"tally-{pid}" if suffix == 0 else f"tally-{pid}-{suffix}"
            try:
                keys = open(directory / f"{stem}.keys", "xb", buffering=0)  # noqa: SIM115
                break
            except FileExistsError:
                suffix += 1
        self.keys: BinaryIO = keys  # unbuffered: one write(2) per line, for the process's life
        with open(directory / f"{stem}.bin", "w+b") as data:
            data.truncate(SLOTS * 8)
            self.map = mmap.mmap(data.fileno(), SLOTS * 8)
        self.view: memoryview[float] = memoryview(self.map).cast("d")
        self.pid = pid
        self.next = _FIRST

    def allocate(self, key: Key, width: int) -> int:
        slot = self.next
        if slot + width > SLOTS:
            self.view[_DROPPED] += 1.0
            return _SINK
        try:
            self.keys.write(f"{slot} {json.dumps(key)}\n".encode())
        except OSError:  # a full file system: lose this series, not the request
            self.view[_DROPPED] += 1.0
            return _SINK
        self.next = slot + width
        return slot


_directory: Path | None = None  # set by setup(): None means every report is a no-op
_started: float | None = None  # when setup() ran: Kamailio's start, as the exposition shows it
_tally: _Tally | None = None  # this process's files, opened on its first new series
# The hot path reads only these two: the series this process has, and its slots.
_slots: dict[Key, int] = {}
_NOWHERE: memoryview[float] = memoryview(bytearray(_FIRST * 8)).cast("d")  # no files: the sink
_view = _NOWHERE


def _forget() -> None:
    """In a forked child: the series and the files are the parent's, the child opens its own."""
    global _tally, _slots, _view
    _tally, _slots, _view = None, {}, _NOWHERE


os.register_at_fork(after_in_child=_forget)


def _allocate(key: Key) -> int:
    """The slot of a series this process has not used yet (the slow path, once per series)."""
    global _tally, _view  # noqa: PLW0603  (per-process state)
    tally = _tally
    if tally is None or tally.pid != os.getpid():  # first series here, or forked unannounced
        _forget()
        assert _directory is not None
        try:
            tally = _tally = _Tally(_directory)
        except OSError:  # no files to count in (directory gone?): count in memory, unscraped
            _slots[key] = _SINK
            return _SINK
        _view = tally.view
    slot = _slots[key] = tally.allocate(key, _METRICS[key[0]].width)
    return slot


def _count(key: Key) -> None:
    slot = _slots.get(key)
    if slot is None:
        slot = _allocate(key)
    _view[slot] += 1.0


def _set(key: Key, value: float) -> None:
    slot = _slots.get(key)
    if slot is None:
        slot = _allocate(key)
    _view[slot] = value


def _observe(key: Key, seconds: float) -> None:
    base = _slots.get(key)
    if base is None:
        base = _allocate(key)
    view = _view
    view[base + bisect_left(LATENCY_BUCKETS, seconds)] += 1.0  # the first bound >= seconds
    view[base + _HISTOGRAM_WIDTH - 1] += seconds


def setup(directory: str | None = None, *, shadow: bool = False) -> None:
    """Called once in Kamailio's main process before the workers fork.

    `directory` defaults to CPMIW_METRICS_DIR, else /run/cpmiw-metrics. Only the files of this
    module (`tally-*`) and of its prometheus_client predecessor (`counter_<pid>.db`, ...) are
    removed from it, so a misconfigured path cannot wipe anything else.
    `shadow` is published as a gauge: in shadow mode the outcomes counted are the ones the proxy
    would have applied, and the alerts on rejects stay quiet.
    """
    global _directory, _tally, _view, _started  # noqa: PLW0603  (one per process, set once)
    path = Path(directory or os.environ.get("CPMIW_METRICS_DIR") or DEFAULT_DIR)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.iterdir():
        if _FILE.fullmatch(stale.name) or _OLD_FILE.fullmatch(stale.name):
            stale.unlink()
    _forget()
    _directory = path
    _started = time.time()
    _tally = _Tally(path)  # here, not lazily: a directory we cannot write fails the start
    _view = _tally.view
    _view[_allocate(_SHADOW)] = 1.0 if shadow else 0.0


def observe_decision(
    method: str, service: str, action: str, rule: str, status: int, seconds: float
) -> None:
    """One routed initial request: its outcome and how long the plugin took."""
    if _directory is None:
        return
    _count(("cpmiw_requests", method if method in METHODS else "other", service, action))
    _count(("cpmiw_decision_rules", rule))
    if status:
        _count(("cpmiw_rejects", str(status)))
    _observe(_DECISION_SECONDS, seconds)


def count_as_failure(handling: str) -> None:
    """An AS failed (408, 5xx, no answer); `handling` is continue or terminate."""
    if _directory is not None:
        _count(("cpmiw_as_default_handling", handling))


def count_marker(result: str) -> None:
    """A valid AS marker: honoured, replayed or honoured-unshared."""
    if _directory is not None:
        _count(("cpmiw_as_markers", result))


def count_sms_fallback(reason: str) -> None:
    """The devices of a subscriber with SMS did not take a request: the IP-SM-GW gets it."""
    if _directory is not None:
        _count(("cpmiw_sms_fallbacks", reason))


def count_lookup(result: str) -> None:
    """A profile look-up: hit (worker cache), miss (asked Redis) or error."""
    if _directory is not None:
        _count(("cpmiw_profile_lookups", result))


def count_registration(outcome: str) -> None:
    """A REGISTER admitted (trusted, third-party, authenticated) or answered by the plugin."""
    if _directory is not None:
        _count(("cpmiw_registrations", outcome))


def observe_redis(seconds: float, error: bool) -> None:
    """One Redis round trip, and whether it failed."""
    if _directory is None:
        return
    _observe(_REDIS_SECONDS, seconds)
    if error:
        _count(_REDIS_ERRORS)


def breaker_opened(reason: str) -> None:
    """A worker's Redis breaker opened: `reason` is failed (no connection) or late (no reply in
    time)."""
    if _directory is not None:
        _count(("cpmiw_redis_breaker_opened", reason))
        _set(_BREAKER_OPEN, 1.0)


def breaker_closed() -> None:
    """A worker's Redis breaker closed: a call after the backoff was answered in time."""
    if _directory is not None:
        _set(_BREAKER_OPEN, 0.0)


def _read(keys_path: Path) -> Iterator[tuple[Key, list[float]]]:
    """Every complete series of one process's files, with its slots' values."""
    try:
        lines = keys_path.read_bytes().split(b"\n")[:-1]  # the last is empty or being written
        data = keys_path.with_suffix(".bin").read_bytes()
    except FileNotFoundError:  # being created, or wiped by a new start
        return
    values = list(memoryview(data[: len(data) // 8 * 8]).cast("d"))
    if values and values[_DROPPED]:
        yield (_DROPPED_NAME,), values[_DROPPED : _DROPPED + 1]
    for line in lines:
        try:
            slot_text, _, key_text = line.partition(b" ")
            slot, key = int(slot_text), tuple(json.loads(key_text))
            spec = _METRICS[key[0]]
        except (ValueError, KeyError, IndexError, TypeError):  # not a line of this version's
            continue
        if len(key) == len(spec.labels) + 1 and _FIRST <= slot <= len(values) - spec.width:
            yield key, values[slot : slot + spec.width]


def _sum(directory: Path) -> dict[Key, list[float]]:
    """The values of every series, summed over the processes (a gauge: the maximum)."""
    totals: dict[Key, list[float]] = {
        (name,): [0.0] * spec.width for name, spec in _METRICS.items() if not spec.labels
    }
    for name, label_sets in _KNOWN.items():
        for labels in label_sets:
            totals[(name, *labels)] = [0.0] * _METRICS[name].width
    for keys_path in sorted(directory.glob("tally-*.keys")):
        for key, values in _read(keys_path):
            total = totals.setdefault(key, [0.0] * len(values))
            spec = _METRICS.get(key[0])
            if spec is not None and spec.kind == "gauge":
                total[0] = max(total[0], values[0])
            else:
                for i, value in enumerate(values):
                    total[i] += value
    return totals


def _rendered(totals: dict[Key, list[float]]) -> Iterator[Metric]:
    from prometheus_client.metrics_core import (  # noqa: PLC0415  (only when scraped)
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.utils import floatToGoString  # noqa: PLC0415

    bounds = [floatToGoString(b) for b in (*LATENCY_BUCKETS, float("inf"))]  # type: ignore[no-untyped-call]
    for name, spec in _METRICS.items():
        # label names sorted, as prometheus_client's multiprocess mode wrote them
        order = sorted(range(len(spec.labels)), key=spec.labels.__getitem__)
        labels = [spec.labels[i] for i in order]
        series = sorted((k[1:], v) for k, v in totals.items() if k[0] == name)
        if not series:  # a labelled metric before its first series: absent, as it always was
            continue
        metric: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
        if spec.kind == "counter":
            metric = CounterMetricFamily(name, spec.help, labels=labels)
            for values, (total,) in series:
                metric.add_metric([values[i] for i in order], total)
        elif spec.kind == "gauge":
            metric = GaugeMetricFamily(name, spec.help, labels=labels)
            for values, (value,) in series:
                metric.add_metric([values[i] for i in order], value)
        else:
            metric = HistogramMetricFamily(name, spec.help, labels=labels)
            for values, slots in series:
                cumulative, running = [], 0.0
                for bound, count in zip(bounds, slots[:-1], strict=True):
                    running += count
                    cumulative.append((bound, running))
                metric.add_metric([values[i] for i in order], cumulative, slots[-1])
        yield metric
    dropped = totals.get((_DROPPED_NAME,))
    if dropped:
        yield CounterMetricFamily(_DROPPED_NAME, _DROPPED_HELP, value=dropped[0])


class _Collector:
    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def _add_replayed(totals: dict[Key, list[float]], replayed: Mapping[str, int]) -> None:
    """Adds the requests kamailio.cfg replayed (core/memo.py labels: count) to the decisions."""
    for text, count in replayed.items():
        labels = memo.split_labels(text)
        if labels is None:
            continue
        method, service, action, rule = labels
        method = method if method in METHODS else "other"
        for key in (
            ("cpmiw_requests", method, service, action),
            ("cpmiw_decision_rules", rule),
            ("cpmiw_replayed",),
        ):
            totals.setdefault(key, [0.0])[0] += count


# Kamailio's own statistics (its `stats.fetch` RPC), rendered beside the plugin's.


@dataclass(frozen=True)
class _Family:
    """A metric made of Kamailio statistics: each statistic (`group.name`, as stats.fetch names
    it) is one series, with the label values given."""

    kind: Literal["counter", "gauge"]
    help: str
    stats: Mapping[str, tuple[str, ...]]  # statistics with the same labels are added up
    labels: tuple[str, ...] = ()


def _one(stat: str) -> Mapping[str, tuple[str, ...]]:
    return {stat: ()}


def _classes(template: str, classes: str = "123456") -> Mapping[str, tuple[str, ...]]:
    return {template.format(c): (f"{c}xx",) for c in classes}


# sl counts a few statuses apart (`404_replies`) and the rest of their class in `4xx_replies`.
_SL_COUNTED_APART = ("200", "202", "300", "301", "302", "400", "401", "403", "404", "407", "408",
                     "483", "500")  # fmt: skip


# Chosen, not every statistic Kamailio has: stats.fetch does not say which ones are counters, and
# each family here is documented (README "Metrics") and kept under its name across versions.
_KAMAILIO: dict[str, _Family] = {
    "kamailio_tm_transactions": _Family(
        "counter",
        "Transactions tm created: uas (requests received), uac (requests it sent).",
        {"tmx.UAS_transactions": ("uas",), "tmx.UAC_transactions": ("uac",)},
        ("side",),
    ),
    "kamailio_tm_completed_transactions": _Family(
        "counter",
        "Transactions tm completed, by the class of their final reply.",
        _classes("tmx.{}xx_transactions", "23456"),
        ("class",),
    ),
    "kamailio_tm_current_transactions": _Family(
        "gauge",
        "Transactions in tm's table: active (not completed yet), inuse (also those kept for"
        " retransmissions after their final reply).",
        {"tmx.active_transactions": ("active",), "tmx.inuse_transactions": ("inuse",)},
        ("state",),
    ),
    "kamailio_tm_replies": _Family(
        "counter",
        "Replies through tm: received, relayed, generated (by the proxy), sent, absorbed.",
        {
            f"tmx.rpl_{event}": (event,)
            for event in ("received", "relayed", "generated", "sent", "absorbed")
        },
        ("event",),
    ),
    "kamailio_sl_replies": _Family(
        "counter",
        "Replies sent statelessly (sl), by class.",
        {
            **_classes("sl.{}xx_replies"),
            **{f"sl.{status}_replies": (f"{status[0]}xx",) for status in _SL_COUNTED_APART},
        },
        ("class",),
    ),
    "kamailio_sl_failures": _Family(
        "counter", "Stateless replies that could not be sent.", _one("sl.failures")
    ),
    "kamailio_usrloc_registered_users": _Family(
        "gauge", "Addresses of record with a registered contact.", _one("usrloc.registered_users")
    ),
    "kamailio_usrloc_contacts": _Family(
        "gauge", "Registered contacts (usrloc table location).", _one("usrloc.location_contacts")
    ),
    "kamailio_shm_total_bytes": _Family(
        "gauge", "Size of Kamailio's shared memory.", _one("shmem.total_size")
    ),
    "kamailio_shm_used_bytes": _Family(
        "gauge",
        "Shared memory in use, allocator overhead included.",
        _one("shmem.real_used_size"),
    ),
    "kamailio_shm_max_used_bytes": _Family(
        "gauge", "Most shared memory ever in use since the start.", _one("shmem.max_used_size")
    ),
    "kamailio_shm_free_bytes": _Family("gauge", "Free shared memory.", _one("shmem.free_size")),
    "kamailio_core_received": _Family(
        "counter",
        "SIP messages Kamailio received and parsed, requests and replies.",
        {"core.rcv_requests": ("request",), "core.rcv_replies": ("reply",)},
        ("message",),
    ),
    "kamailio_core_dropped": _Family(
        "counter",
        "SIP messages Kamailio dropped itself (drop, a failed check, an unparsable reply).",
        {"core.drop_requests": ("request",), "core.drop_replies": ("reply",)},
        ("message",),
    ),
    "kamailio_tcp_current_connections": _Family(
        "gauge", "Open TCP connections.", _one("tcp.current_opened_connections")
    ),
    "kamailio_pike_blocked_ips": _Family(
        "gauge", "Sources pike blocks now for sending too fast.", _one("pike.blocked_ips")
    ),
    "cpmiw_flood_blocked": _Family(
        "counter",
        "Requests dropped because their source was flooding.",
        _one("script.cpmiw_flood_blocked"),
    ),
    "cpmiw_refused": _Family(
        "counter",
        "Requests kamailio.cfg answered with an error before routing them, by reason.",
        {
            "script.cpmiw_refused_too_large": ("too-large",),
            "script.cpmiw_refused_shared_memory_full": ("shared-memory-full",),
            "script.cpmiw_refused_metrics_listener": ("metrics-listener",),
        },
        ("reason",),
    ),
}
_PKG = {  # pkg.stats field -> metric: the private memory of each Kamailio process
    "total_size": ("kamailio_pkg_total_bytes", "Size of a Kamailio process's private memory."),
    "real_used": (
        "kamailio_pkg_used_bytes",
        "Private memory a Kamailio process uses, allocator overhead included.",
    ),
    "free": ("kamailio_pkg_free_bytes", "Free private memory of a Kamailio process."),
}
try:
    _VERSION = metadata.version("cpmiw")
except metadata.PackageNotFoundError:  # run from a source tree that was not installed
    _VERSION = "unknown"
_UDP_DROPS = "cpmiw_udp_receive_drops"
_UDP_DROPS_HELP = (
    "Datagrams the kernel dropped on a Kamailio UDP listener (its receive buffer was full)."
)


@dataclass(frozen=True)
class Kamailio:
    """What the adapter read from Kamailio for one scrape (plain data: rendered here).

    `stats`: stats.fetch's `group.name -> value`; `processes`: pkg.stats's list; `udp_drops`:
    the kernel's count per UDP listener (`udp:address:port`); `version`: core.version's text.
    """

    stats: Mapping[str, str] = field(default_factory=dict)
    processes: Sequence[Mapping[str, object]] = ()
    udp_drops: Mapping[str, int] = field(default_factory=dict)
    version: str = ""


def udp_drops(table: str, listeners: Iterable[tuple[str, int]]) -> dict[str, int]:
    """The `drops` column of /proc/net/udp (`table`) for each IPv4 `(address, port)` listener.

    The kernel writes the local address as the hex of the 32-bit word in host order, then the
    port in hex: `0100007F:13C4` is 127.0.0.1:5060 on a little-endian host.
    """
    wanted = {(address, port) for address, port in listeners}
    drops: dict[str, int] = {}
    for line in table.splitlines()[1:]:
        fields = line.split()
        try:
            address_hex, port_hex = fields[1].split(":")
            address = socket.inet_ntoa(struct.pack("=I", int(address_hex, 16)))
            port, dropped = int(port_hex, 16), int(fields[-1])
        except (IndexError, ValueError, struct.error):
            continue
        if (address, port) in wanted:
            name = f"udp:{address}:{port}"
            drops[name] = drops.get(name, 0) + dropped
    return drops


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _kamailio_rendered(kamailio: Kamailio) -> Iterator[Metric]:
    from prometheus_client.metrics_core import (  # noqa: PLC0415  (only when scraped)
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
    )

    families = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
    for name, family in _KAMAILIO.items():
        series: dict[tuple[str, ...], float] = {}
        for stat, labels in family.stats.items():
            value = _number(kamailio.stats.get(stat))
            if value is not None:
                series[labels] = series.get(labels, 0.0) + value
        if series:  # the module is loaded: its statistics exist from the start
            metric = families[family.kind](name, family.help, labels=family.labels)
            for labels, value in series.items():
                metric.add_metric(list(labels), value)
            yield metric
    for key, (name, help_text) in _PKG.items():
        gauge = GaugeMetricFamily(name, help_text, labels=["process", "description"])
        for process in kamailio.processes:
            value = _number(process.get(key))
            if value is not None:
                gauge.add_metric([str(process.get("entry")), str(process.get("desc"))], value)
        yield gauge
    drops = CounterMetricFamily(_UDP_DROPS, _UDP_DROPS_HELP, labels=["listener"])
    for listener, dropped in sorted(kamailio.udp_drops.items()):
        drops.add_metric([listener], dropped)
    yield drops
    words = kamailio.version.split()  # "kamailio 5.6.3 (x86_64/linux)"
    yield InfoMetricFamily(
        "cpmiw_build",
        "Versions running: the plugin's and Kamailio's.",
        value={"version": _VERSION, "kamailio": words[1] if len(words) > 1 else "unknown"},
    )
    if _started is not None:
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "When Kamailio's main process set the plugin up, in seconds since the epoch.",
            value=_started,
        )


def render(
    replayed: Mapping[str, int] | None = None, kamailio: Kamailio | None = None
) -> tuple[str, bytes]:
    """Content type and body of the exposition: the sum over every process's files, the
    requests kamailio.cfg replayed without the plugin (`replayed`), and Kamailio's own numbers."""
    if _directory is None:
        return CONTENT_TYPE, b""
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

    totals = _sum(_directory)
    _add_replayed(totals, replayed or {})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(_rendered(totals)))
    if kamailio is not None:
        registry.register(_Collector(_kamailio_rendered(kamailio)))
    return CONTENT_TYPE, generate_latest(registry)


def serve(
    path: str, replayed: Mapping[str, int] | None = None, kamailio: Kamailio | None = None
) -> tuple[int, str, str, bytes]:
    """An HTTP answer (status, reason, content type, body) for a GET of `path`."""
    if path.split("?", 1)[0] != "/metrics":
        return 404, "Not Found", "text/plain", b"cpmiw serves /metrics only\n"
    content_type, body = render(replayed, kamailio)
    return 200, "OK", content_type, body
