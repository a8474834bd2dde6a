"""The per-worker profile cache in front of Redis: bounded, invalidated by a change stream.

Why a cache: a redis-py round trip costs ~55 µs of worker CPU, more than the rest of the
routing, so a cache hit must not touch redis-py at all. Why not Redis client-side caching: redis-py
needs Redis 7.4 for it, Debian 12 ships 7.0.

- Bounded: at most `capacity` identities per worker, least recently used evicted first
  (~700 bytes each with a two-identity profile: 50,000 entries ~ 35 MB per worker process).
- Negative answers (no profile) are cached too; invalid stored profiles are not.
- Invalidation: the store's writers append the identities they touch to a change stream
  (store.py). Before answering, a worker whose last poll is `poll_interval` old or older polls
  the stream (one round trip) and forgets what changed. A change committed in Redis is therefore
  seen by every request that starts `poll_interval` or more after the commit, busy or idle
  worker alike. A new epoch (data set replaced) or a gap in the stream forgets everything.
- Entries older than `max_age` are fetched again: a safety net for writes that bypass the store.
- Failures: a failed Redis call opens a circuit breaker for `backoff`; while it is open no
  request waits on Redis: cached answers (even past `max_age`) are served, the rest raise
  StoreError at once (the caller's fail policy applies). The first request after `backoff` tries
  Redis again, so the worker recovers by itself.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import metrics
from .profile import Profile, ProfileError
from .routing import StoreError
from .store import ProfileStore

Clock = Callable[[], float]


class Breaker:
    """After a failure, the guarded service is not called again for `backoff` seconds."""

    def __init__(self, backoff: float, clock: Clock) -> None:
        self._backoff = backoff
        self._clock = clock
        self._closed_at = 0.0  # clock value from which calls may go through again

    @property
    def open(self) -> bool:
        return self._clock() < self._closed_at

    def failed(self) -> None:
        self._closed_at = self._clock() + self._backoff


class CachedProfiles:
    """Profile look-ups for one worker process: `lookup` is a `routing.Lookup`."""

    def __init__(
        self,
        store: ProfileStore,
        *,
        capacity: int,
        poll_interval: float,
        max_age: float,
        backoff: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._store = store
        self._capacity = capacity
        self._poll_interval = poll_interval
        self._max_age = max_age
        self._clock = clock
        self.breaker = Breaker(backoff, clock)
        # identity -> (fetched at, profile or None); most recently used last
        self._entries: OrderedDict[str, tuple[float, Profile | None]] = OrderedDict()
        self._next_poll = 0.0
        self._cursor: str | None = None
        self._epoch: str | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, identity: str) -> Profile | None:
        """The profile owning the canonical `identity`, or None; StoreError, ProfileError."""
        now = self._clock()
        if now >= self._next_poll:
            self._poll(now)
        entry = self._entries.get(identity)
        if entry is not None and now - entry[0] < self._max_age:
            self._entries.move_to_end(identity)
            metrics.count_lookup("hit")
            return entry[1]
        try:
            profile = self._fetch(identity)
        except StoreError:
            if entry is None:
                metrics.count_lookup("error")
                raise
            metrics.count_lookup("hit")  # past max_age, but better than failing while Redis is out
            return entry[1]
        except ProfileError:
            metrics.count_lookup("error")
            raise
        metrics.count_lookup("miss")
        self._entries[identity] = (now, profile)
        self._entries.move_to_end(identity)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return profile

    def _fetch(self, identity: str) -> Profile | None:
        if self.breaker.open:
            raise StoreError("redis unavailable (circuit open after a failure)")
        with self._round_trip():
            return self._store.lookup(identity)

    def _poll(self, now: float) -> None:
        """Forgets what changed in Redis since the last poll; skipped while Redis is out."""
        if self.breaker.open:
            return
        try:
            with self._round_trip():
                changes = self._store.changes(self._cursor)
        except StoreError:
            return
        self._next_poll = now + self._poll_interval
        if changes.identities is None or changes.epoch != (self._epoch or changes.epoch):
            self._entries.clear()
        else:
            for identity in changes.identities:
                self._entries.pop(identity, None)
        self._epoch, self._cursor = changes.epoch, changes.cursor

    @contextmanager
    def _round_trip(self) -> Iterator[None]:
        """Times one Redis call for the metrics; a StoreError opens the breaker."""
        started = time.perf_counter()
        failed = False
        try:
            yield
        except StoreError:
            failed = True
            self.breaker.failed()
            raise
        finally:
            metrics.observe_redis(time.perf_counter() - started, failed)
