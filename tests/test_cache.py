"""The per-worker profile cache against a real Redis, and change propagation through Kamailio.

The cache tests drive `CachedProfiles` with a hand-moved clock and a hand-ticked change watcher
(in Kamailio it waits on the change stream and publishes at each write), while every Redis call
is real; the watcher's own wait is tested against the real Redis too. The
last test measures, through the real Kamailio with its two UDP workers, how long after a profile
change requests still route by the old profile.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from conftest import (
    CPM_PAGER,
    DOMAIN,
    CountingStore,
    ManualClock,
    Network,
    RedisServer,
    ask_together,
    make_guard,
    start_redis,
)
from cpmiw.core.profile import Profile
from cpmiw.store.cache import CachedProfiles
from cpmiw.store.changes import BULK, Stamp
from cpmiw.store.layout import CHANGES
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import StoreError, connect
from cpmiw.testing import make_profile
from cpmiw.testing.sipnet import Peer


def unique(services: str = "cpm", **fields: object) -> Profile:
    return make_profile(
        f"c{secrets.token_hex(4)}", f"+1666{secrets.randbelow(10**7):07d}", services, **fields
    )


class Watcher:
    """Kamailio's change watcher, ticked by hand: publishes Redis's change stamp when told.

    It reads through a store of its own, as in its own process: what it reads is not counted as
    the cache's stream reads.
    """

    def __init__(self, store: ProfileStore) -> None:
        self._signal = ProfileStore(store._client).signal(wait=1.0)
        self.published = ""

    def tick(self) -> None:
        self.published = str(self._signal.stamp())


@pytest.fixture
def counting(redis_server: RedisServer) -> CountingStore:
    return CountingStore(connect(redis_server.url, timeout=1.0))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_cache(
    store: ProfileStore, clock: ManualClock, capacity: int = 100
) -> tuple[CachedProfiles, Watcher]:
    watcher = Watcher(store)
    watcher.tick()
    guard = make_guard(store._client, clock=clock)
    cache = CachedProfiles(
        store, guard, lambda: watcher.published, capacity=capacity, max_age=300, clock=clock
    )
    return cache, watcher


def test_a_hit_sends_redis_nothing(
    redis_server: RedisServer, store: ProfileStore, clock: ManualClock
) -> None:
    dave = unique()
    store.put([dave])
    cache, _ = make_cache(store, clock)
    assert cache.lookup(dave.subscriber) == dave  # the stream's position, then the profile
    observer = redis_server.client()

    def commands_served() -> int:
        return int(observer.info("stats")["total_commands_processed"])

    before = commands_served()
    for _ in range(100):
        clock.advance(1)
        assert cache.lookup(dave.subscriber) == dave
    assert commands_served() == before + 1  # the first INFO, nothing else


def test_a_missing_profile_is_cached_until_it_is_provisioned(
    counting: CountingStore, clock: ManualClock
) -> None:
    erin = unique()
    cache, watcher = make_cache(counting, clock)
    assert cache.lookup(erin.subscriber) is None
    assert cache.lookup(erin.subscriber) is None
    assert counting.lookups == 1
    counting.put([erin])
    watcher.tick()
    assert cache.lookup(erin.subscriber) == erin


def test_a_change_is_seen_once_the_watcher_has_published_it(
    counting: CountingStore, clock: ManualClock
) -> None:
    dave = unique()
    counting.put([dave])
    cache, watcher = make_cache(counting, clock)
    assert cache.lookup(dave.subscriber) == dave
    barred = Profile(identities=dave.identities, services=dave.services, barred=True)
    counting.put([barred])
    reads = counting.stream_reads
    assert cache.lookup(dave.subscriber) == dave  # not published yet: the stream is not read
    assert counting.stream_reads == reads
    watcher.tick()
    assert cache.lookup(dave.subscriber) == barred
    assert cache.lookup(dave.subscriber) == barred
    assert counting.stream_reads == reads + 1  # once per published change, not per request


def test_every_alias_follows_a_change_and_a_delete(store: ProfileStore, clock: ManualClock) -> None:
    dave = unique()
    store.put([dave])
    cache, watcher = make_cache(store, clock)
    sip, tel = dave.subscriber, dave.identities[1]
    assert cache.lookup(sip) == cache.lookup(tel) == dave
    moved = Profile(identities=[dave.identities[0]], services=dave.services)
    store.put([moved])  # the tel alias is dropped
    watcher.tick()
    assert cache.lookup(sip) == moved
    assert cache.lookup(tel) is None
    store.delete(sip)
    watcher.tick()
    assert cache.lookup(sip) is None


def test_capacity_bounds_the_cache_least_recently_used_first(
    counting: CountingStore, clock: ManualClock
) -> None:
    a, b, c, d = (unique() for _ in range(4))
    counting.put([a, b, c, d])
    cache, _ = make_cache(counting, clock, capacity=3)
    for profile in (a, b, c, a, d):  # a used again: b is the least recently used
        cache.lookup(profile.subscriber)
    assert len(cache) == 3
    assert counting.lookups == 4
    assert cache.lookup(a.subscriber) == a
    assert counting.lookups == 4
    assert cache.lookup(b.subscriber) == b
    assert counting.lookups == 5


def test_a_bulk_write_forgets_everything(counting: CountingStore, clock: ManualClock) -> None:
    dave = unique()
    counting.put([dave])
    cache, watcher = make_cache(counting, clock)
    cache.lookup(dave.subscriber)
    counting.put([unique() for _ in range(BULK // 2 + 1)])  # two identities each
    watcher.tick()
    reads = counting.stream_reads
    assert cache.lookup(dave.subscriber) == dave
    assert (counting.stream_reads, counting.lookups) == (reads + 1, 2)  # dave asked again


def test_a_reader_too_far_behind_is_told_everything_changed(store: ProfileStore) -> None:
    cursor = store.changes(None).cursor
    profiles = [unique() for _ in range(3)]
    for profile in profiles:
        store.put([profile])
    assert store.changes(cursor, limit=2).identities is None
    pending = store.changes(cursor, limit=3).identities
    assert pending == frozenset().union(*(p.aliases for p in profiles))


def test_entries_older_than_max_age_are_fetched_again(
    counting: CountingStore, clock: ManualClock
) -> None:
    dave = unique()
    counting.put([dave])
    cache, _ = make_cache(counting, clock)
    cache.lookup(dave.subscriber)
    clock.advance(299)
    reads = counting.stream_reads
    cache.lookup(dave.subscriber)
    assert (counting.stream_reads, counting.lookups) == (reads, 1)  # nothing changed, not read
    clock.advance(1)
    cache.lookup(dave.subscriber)
    assert counting.lookups == 2


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this module's own, for tests that wipe it."""
    server = start_redis()
    yield server
    server.stop()


def test_a_wiped_data_set_is_forgotten_whole(own_redis: RedisServer, clock: ManualClock) -> None:
    store = ProfileStore(connect(own_redis.url, timeout=1.0))
    dave, erin = unique(), unique()
    store.put([dave])
    cache, watcher = make_cache(store, clock)
    assert cache.lookup(dave.subscriber) == dave
    assert cache.lookup(erin.subscriber) is None
    own_redis.client().flushall()  # no change entry: only the epoch tells
    store.put([erin])  # a new epoch
    watcher.tick()
    assert cache.lookup(dave.subscriber) is None
    assert cache.lookup(erin.subscriber) == erin


def test_the_watcher_wakes_at_a_write_and_only_then(store: ProfileStore) -> None:
    signal = store.signal(wait=0.2)
    stamp = signal.stamp()
    assert not signal.wait(stamp)  # nothing written: the wait runs out
    assert signal.stamp() == stamp
    patient = store.signal(wait=60.0)
    writer = threading.Timer(0.2, store.put, [[unique()]])
    writer.start()
    started = time.monotonic()
    try:
        assert patient.wait(stamp)  # woken by the write, not by the end of its minute
    finally:
        writer.join()
    assert time.monotonic() - started < 30
    assert patient.stamp() != stamp


def test_a_wait_that_runs_out_is_no_failure(redis_server: RedisServer) -> None:
    """Redis answers an expired wait on its next tick, later than the wait: not a dead socket,
    however short the client's own timeout."""
    signal = ProfileStore(connect(redis_server.url, timeout=0.005)).signal(wait=0.05)
    stamp = signal.stamp()
    assert [signal.wait(stamp) for _ in range(10)] == [False] * 10


def test_a_change_stream_of_the_wrong_type_is_a_store_error(own_redis: RedisServer) -> None:
    """A key overwritten by hand: the watcher is told, and reads again once it is repaired."""
    store = ProfileStore(connect(own_redis.url, timeout=1.0))
    signal = store.signal(wait=0.1)
    own_redis.client().set(CHANGES, "not a stream")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        signal.stamp()
    with pytest.raises(StoreError, match="WRONGTYPE"):
        signal.wait(Stamp("", "0-0"))
    own_redis.client().delete(CHANGES)
    store.put([unique()])
    assert signal.stamp().last != "0-0"


def test_the_watcher_stamp_tells_a_wiped_data_set(own_redis: RedisServer) -> None:
    store = ProfileStore(connect(own_redis.url, timeout=1.0))
    store.put([unique()])
    signal = store.signal(wait=0.1)
    written = signal.stamp()
    own_redis.client().flushall()
    wiped = signal.stamp()
    assert (wiped.epoch, wiped.last) == ("", "0-0")
    store.put([unique()])
    assert signal.stamp().epoch not in ("", written.epoch)


# -- through Kamailio --------------------------------------------------------------------------


def _workers(net: Network, call_ids: set[str]) -> set[str]:
    """The Kamailio processes (pids) that routed the given requests, from its log."""
    return set(net.kamailio.routed_by(call_ids).values())


def _burst(net: Network, callers: tuple[Peer, Peer], ruri: str) -> list[tuple[float, int, str]]:
    """One request from each caller at once (both workers busy); (sent at, status, Call-ID)."""
    requests = [(caller, caller.request("MESSAGE", ruri, headers=CPM_PAGER)) for caller in callers]
    at = time.monotonic()
    answers = ask_together(net.kamailio, requests)
    return [
        (at, response.status, request.header("Call-ID") or "")
        for (_, request), (response, _) in zip(requests, answers, strict=True)
    ]


def test_a_profile_change_reaches_every_worker_within_100_ms(
    net: Network, record_property: Callable[[str, object], None]
) -> None:
    """Toggles barring 20 times under steady traffic: how long do requests still see the old?"""
    user = f"p{secrets.token_hex(4)}"
    states = {
        True: make_profile(user, "+16670000001", "cpm", barred=True),  # 403
        False: make_profile(user, "+16670000001", "cpm"),  # not registered: 480
    }
    status = {True: 403, False: 480}
    ruri = f"sip:{user}@{DOMAIN}"
    net.provision(states[False])
    staleness: list[float] = []
    before_changes: set[str] = set()
    after_changes: set[str] = set()
    with Peer() as first, Peer() as second:
        callers = (first, second)
        for change in range(20):
            barred = change % 2 == 0
            lead_in = time.monotonic()
            while time.monotonic() - lead_in < 0.03:  # both workers serve (and cache) the old
                before_changes |= {c for _, s, c in _burst(net, callers, ruri)}
            changed_at = time.monotonic()
            net.provision(states[barred])
            seen: list[tuple[float, int, str]] = []
            while time.monotonic() - changed_at < 0.15:
                seen += _burst(net, callers, ruri)
            assert {s for _, s, _ in seen} <= {status[barred], status[not barred]}
            stale = [at for at, s, _ in seen if s == status[not barred]]
            staleness.append(max(stale, default=changed_at) - changed_at)
            late = [(s, c) for at, s, c in seen if at - changed_at > 0.1]
            assert {s for s, _ in late} == {status[barred]}
            after_changes |= {c for _, c in late}
    # Both workers had the profile cached before the changes and routed by the new one after.
    assert len(_workers(net, before_changes)) == len(_workers(net, after_changes)) == 2
    staleness.sort()
    record_property("staleness_ms", [round(s * 1000, 2) for s in staleness])
    print(
        f"\nstaleness after a profile change, 20 changes: median {staleness[10] * 1000:.1f} ms,"
        f" max {staleness[-1] * 1000:.1f} ms"
    )
    assert staleness[-1] < 0.1
