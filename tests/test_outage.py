"""Redis outages: killed and restarted, or slow, under steady traffic through the real Kamailio.

Each Kamailio here has a redis-server of its own (the session's one is left alone). What must
hold while Redis is out: cached profiles keep being served, the others get the fail policy at
once (503 + Retry-After, or delivery), every request gets a final response, none waits for
Redis longer than the configured timeout, and the plugin recovers by itself when Redis is back.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import (
    CPM_PAGER,
    ManualClock,
    Network,
    RedisServer,
    ask_together,
    make_guard,
    make_network,
    start_redis,
)
from cpmiw.core.message import SipMessage
from cpmiw.core.profile import Profile
from cpmiw.store.cache import CachedProfiles
from cpmiw.store.layout import EPOCH
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import StoreError, connect
from cpmiw.testing import make_profile, wait_until
from cpmiw.testing.sipnet import Peer
from cpmiw.testing.slowredis import DelayProxy

TIMEOUT_MS, BACKOFF_MS = 50, 200
ENV = {"CPMIW_REDIS_TIMEOUT_MS": str(TIMEOUT_MS), "CPMIW_REDIS_BACKOFF_MS": str(BACKOFF_MS)}


def barred() -> Profile:
    """A barred subscriber: 403 whenever its profile is known, whatever is registered."""
    return make_profile(
        f"o{secrets.token_hex(4)}", f"+1777{secrets.randbelow(10**7):07d}", "cpm", barred=True
    )


@pytest.fixture
def redis_of_its_own() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


# -- the cache alone, against a Redis that is stopped --------------------------------------------


def test_while_redis_is_down_hits_are_served_and_misses_fail_without_asking(
    redis_of_its_own: RedisServer,
) -> None:
    client = connect(redis_of_its_own.url, timeout=TIMEOUT_MS / 1000)
    store = ProfileStore(client)
    known, unknown = barred(), barred()
    store.put([known, unknown])
    clock = ManualClock()
    published = ""
    guard = make_guard(client, timeout=TIMEOUT_MS / 1000, slow=0.05, backoff=0.25, clock=clock)
    cache = CachedProfiles(store, guard, lambda: published, capacity=10, max_age=64, clock=clock)
    assert cache.lookup(known.subscriber) == known
    redis_of_its_own.stop()
    clock.advance(64)  # past max_age: fetched again, and that fails
    assert cache.lookup(known.subscriber) == known  # served all the same: breaker open
    assert guard.open
    started = time.monotonic()
    with pytest.raises(StoreError, match="circuit open"):
        cache.lookup(unknown.subscriber)
    # Failed at once, Redis not asked: under the 50 ms a wait would cost, with room for a loaded
    # machine to take the CPU from this process a while.
    assert time.monotonic() - started < 0.025
    clock.advance(0.25)  # backoff over: Redis is tried again, fails again, breaker re-armed
    with pytest.raises(StoreError, match="Connection refused"):
        cache.lookup(unknown.subscriber)
    clock.advance(0.125)
    assert guard.open
    redis_of_its_own.start()  # empty: no persistence
    store.put([unknown])
    published = "a new epoch"  # what the change watcher would publish now
    clock.advance(0.125)  # backoff over
    assert cache.lookup(unknown.subscriber) == unknown
    assert cache.lookup(known.subscriber) is None  # a new data set: nothing cached survives


# -- through Kamailio -----------------------------------------------------------------------------


class AutoAnswer:
    """A registered device that answers every request 200 from a thread of its own."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                request = self.peer.recv_request(timeout=0.05)
            except TimeoutError:
                continue
            self.answered += 1
            self.peer.reply(request, 200, "OK")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def outage_network(
    redis_server: RedisServer, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[Network]:
    yield from make_network(redis_server, log_dir, {**ENV, **(env or {})})


@dataclass(frozen=True)
class Answer:
    who: str  # the target's name
    response: SipMessage
    took: float  # seconds until the final response
    at: float  # seconds into the traffic when the request was sent


def traffic(
    net: Network, callers: tuple[Peer, Peer], targets: dict[str, Profile], seconds: float
) -> list[Answer]:
    """Steady traffic: one request to each target at once, round after round, for `seconds`."""
    answered: list[Answer] = []
    start = time.monotonic()
    while (at := time.monotonic() - start) < seconds:
        sends = [
            (caller, caller.request("MESSAGE", profile.registration_aor, headers=CPM_PAGER))
            for caller, profile in zip(callers, targets.values(), strict=True)
        ]
        answers = ask_together(net.kamailio, sends)
        answered += [Answer(n, r, t, at) for n, (r, t) in zip(targets, answers, strict=True)]
    return answered


def warm_up(net: Network, callers: tuple[Peer, Peer], profile: Profile) -> None:
    """Until both workers have `profile` cached (403): which worker takes a request is the
    kernel's choice, and a worker's first request after the start may find the machine busy and
    take longer than the whole Redis budget."""
    found: set[str] = set()  # the Call-IDs of the requests that found it

    def warm() -> bool:
        rounds = traffic(net, callers, {"a": profile, "b": profile}, 0.2)
        found.update(a.response.header("Call-ID") or "" for a in rounds if a.response.status == 403)
        return len(set(net.kamailio.routed_by(found).values())) == 2

    wait_until(warm, "both workers warm")


def statuses(answers: list[Answer], who: str, after: float = 0.0) -> set[int]:
    """The statuses `who` got for the requests sent `after` seconds into the traffic or later."""
    return {a.response.status for a in answers if a.who == who and a.at >= after}


@pytest.mark.parametrize("policy", ["reject", "deliver"])
def test_redis_killed_and_restarted_under_load(
    redis_of_its_own: RedisServer, log_dir: Path, policy: str
) -> None:
    env = {"CPMIW_ON_PROFILE_ERROR": policy}
    cached, uncached = barred(), barred()
    with (
        outage_network(redis_of_its_own, log_dir, env) as net,
        Peer() as first,
        Peer() as second,
        Peer("127.0.0.5") as phone,
    ):
        net.provision(cached, uncached)
        assert phone.register(net.kamailio.address, uncached.registration_aor).status == 200
        device = AutoAnswer(phone)
        callers = (first, second)
        try:
            warm_up(net, callers, cached)
            redis_of_its_own.stop()
            out = traffic(net, callers, {"cached": cached, "uncached": uncached}, 1.0)
            delivered = device.answered
            redis_of_its_own.start()
            net.provision(cached, uncached)  # restarted empty: ops restore the profiles
            back = traffic(net, callers, {"cached": cached, "uncached": uncached}, 0.6)
        finally:
            device.stop()
        log = net.kamailio.wait_for_log("change watcher reads Redis again")
    # The change watcher tells of the outage once, retrying quietly, and of the recovery once.
    assert log.count("change watcher cannot read Redis") == 1
    assert log.count("change watcher reads Redis again") == 1
    assert statuses(out, "cached") == {403}
    if policy == "reject":
        failed = [a.response for a in out if a.who == "uncached"]
        assert {(r.status, r.header("Retry-After")) for r in failed} == {(503, "30")}
        assert delivered == 0
    else:
        assert statuses(out, "uncached") == {200}
        assert delivered == len(out) // 2
    assert max(a.took for a in out) < 1.0  # nobody waited on the dead Redis
    # Recovered within the breaker's backoff: the uncached recipient is found again.
    assert statuses(back, "uncached", 0.3) == statuses(back, "cached", 0.3) == {403}


@pytest.fixture
def slow_redis(redis_of_its_own: RedisServer) -> Iterator[tuple[RedisServer, DelayProxy]]:
    proxy = DelayProxy(redis_of_its_own.port)
    yield redis_of_its_own, proxy
    proxy.close()


def test_slow_redis_costs_one_timeout_per_backoff_then_recovers(
    slow_redis: tuple[RedisServer, DelayProxy], log_dir: Path
) -> None:
    redis_server, proxy = slow_redis
    cached, uncached = barred(), barred()
    env = {"CPMIW_REDIS_URL": proxy.url}
    with outage_network(redis_server, log_dir, env) as net, Peer() as first, Peer() as second:
        net.provision(cached, uncached)
        callers = (first, second)
        warm_up(net, callers, cached)
        proxy.delay = 1.0  # far past the 50 ms timeout
        slow = traffic(net, callers, {"cached": cached, "uncached": uncached}, 1.0)
        proxy.delay = 0.01  # slow, but within the timeout
        recovering = traffic(net, callers, {"cached": cached, "uncached": uncached}, 0.8)
    assert statuses(slow, "cached") == {403}
    assert statuses(slow, "uncached") == {503}
    rounds = [max(slow[i].took, slow[i + 1].took) for i in range(0, len(slow), 2)]
    assert max(rounds) < 0.5  # bounded by the 50 ms timeout, never the 1 s delay
    # A round waits on Redis only when a worker tries it again, once per backoff (200 ms).
    # Without the breaker every round would wait: ~20 rounds in that second, not hundreds.
    rounds_waiting = sum(1 for took in rounds if took >= TIMEOUT_MS / 1000)
    assert 1 <= rounds_waiting <= 2 * (1.0 / (BACKOFF_MS / 1000) + 1)
    assert len(rounds) > 100
    # Recovered within two backoffs and timeouts (a check sent before the change may time out).
    assert statuses(recovering, "uncached", 2 * (BACKOFF_MS + TIMEOUT_MS) / 1000) == {403}


def test_a_change_watcher_that_fails_unexpectedly_logs_and_carries_on(
    redis_of_its_own: RedisServer, log_dir: Path
) -> None:
    """An epoch Redis holds that is no text (set by hand): a traceback, no flood, no stop."""
    dave = barred()
    with outage_network(redis_of_its_own, log_dir) as net, Peer() as caller:
        net.provision(dave)
        broken = time.monotonic()
        redis_of_its_own.client().set(EPOCH, b"\xff\xfe")
        log = net.kamailio.wait_for_log("cpmiw: change watcher failed")
        assert "UnicodeDecodeError" in log
        redis_of_its_own.client().set(EPOCH, "repaired")
        broken_for = time.monotonic() - broken
        net.provision(Profile(identities=dave.identities, services=dave.services))  # 480
        stamp = str(net.store.signal(wait=0.1).stamp())
        wait_until(lambda: net.kamailio.shared("cpmiw_changes") == stamp, "the change published")
        request = caller.request("MESSAGE", dave.registration_aor, headers=CPM_PAGER)
        assert caller.ask(request, net.kamailio.address).status == 480
        failures = net.kamailio.log().count("cpmiw: change watcher failed")
    assert 1 <= failures <= broken_for / (BACKOFF_MS / 1000) + 2  # one per backoff at most
