"""The per-worker profile cache in front of Redis: bounded, invalidated by a change stream.

Why a cache: a redis-py round trip costs 50-100 µs of worker CPU, more than the rest of the
routing, so a cache hit must not touch Redis at all. Why not Redis client-side caching: redis-py
needs Redis 7.4 for it, Debian 12 ships 7.0.

- Bounded: at most `capacity` identities per worker, least recently used evicted first
  (~700 bytes each with a two-identity profile: 50,000 entries ~ 35 MB per worker process).
- Negative answers (no profile) are cached too; invalid stored profiles are not.
- Invalidation: the store's writers append the identities they touch to a change stream
  (store.py). One process, Kamailio's change watcher (rtimer), blocks on that stream and, at
  each write, publishes the stream's stamp (epoch, last entry) in shared memory (`watch_changes`
  in proxy/changes.py). Before each look-up a worker compares what is published with what it last
  synchronised to: only when it moved does the worker read the stream (one round trip) and
  forget what changed; a new epoch (data set replaced) or a gap in the stream forgets
  everything. So no request pays for the watching, and a change committed in Redis is seen by
  every request that starts a wake-up and a round trip after the commit, in every worker, busy
  or idle.
- Entries older than `max_age` are fetched again: a safety net for writes that bypass the store.
- Out of the garbage collector's sight: 50,000 cached profiles are ~250,000 objects that
  Python's cyclic collector would walk on every full collection (40 ms each, measured): a pause
  for every request queued behind it. After every `FREEZE_EVERY` insertions the worker moves
  what it holds to the permanent generation (gc.freeze); refcounting still frees an evicted
  profile, which has no reference cycles.
- Failures: every Redis call goes through the worker's guard (store/guard.py: a time budget
  per request, a breaker per shard opened by a failure or a late reply). While Redis cannot be
  asked no request waits on it: cached answers (even past `max_age`) are served, the rest raise
  StoreError at once (the caller's fail policy applies); a stream read that failed is tried
  again with the next look-up after the breaker's backoff (only the breaker of the stream's own
  shard holds it back: on Cluster, another shard's failover does not stop the invalidation).
- A store that is empty or was wiped (no epoch, store/changes.py) is not a store where nobody
  exists: its look-ups raise NotReadyError, never cached, and what the cache holds stays until
  the data is back (a write sets a new epoch, and everything is forgotten then).
"""

from __future__ import annotations

import gc
import time
from collections import OrderedDict
from collections.abc import Callable

from .. import metrics
from ..core.profile import Profile, ProfileError
from ..core.routing import NotReadyError, UnavailableError
from .guard import Guard
from .profiles import ProfileStore

Clock = Callable[[], float]
FREEZE_EVERY = 1024  # cache insertions between two gc.freeze() calls


class CachedProfiles:
    """Profile look-ups for one worker process: `lookup` is a `routing.Lookup`.

    `published` returns the change stamp the watcher last published (shared memory in Kamailio,
    read with each request; any string that changes with every write will do).
    """

    def __init__(
        self,
        store: ProfileStore,
        guard: Guard,
        published: Callable[[], str],
        *,
        capacity: int,
        max_age: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._reader = store.reader(guard)
        self._published = published
        self._capacity = capacity
        self._max_age = max_age
        self._clock = clock
        # identity -> (fetched at, profile or None); most recently used last
        self._entries: OrderedDict[str, tuple[float, Profile | None]] = OrderedDict()
        self._synced_to: str | None = None  # the published value the stream was last read for
        self._cursor: str | None = None
        self._epoch: str | None = None
        self._inserted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, identity: str) -> Profile | None:
        """The profile owning the canonical `identity`, or None; StoreError, ProfileError."""
        published = self._published()
        if published != self._synced_to:
            self._synchronise(published)
        now = self._clock()
        entry = self._entries.get(identity)
        if entry is not None and now - entry[0] < self._max_age:
            self._entries.move_to_end(identity)
            metrics.count_lookup("hit")
            return entry[1]
        try:
            profile = self._reader.lookup(identity)
        except UnavailableError as error:
            if entry is None:
                metrics.count_lookup("not-ready" if isinstance(error, NotReadyError) else "error")
                raise
            metrics.count_lookup("hit")  # past max_age, but better than failing while Redis is out
            return entry[1]
        except ProfileError:
            metrics.count_lookup("invalid")
            raise
        metrics.count_lookup("miss")
        self._entries[identity] = (now, profile)
        self._entries.move_to_end(identity)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        self._inserted += 1
        if self._inserted % FREEZE_EVERY == 0:
            gc.collect(1)  # young cyclic garbage would stay forever if frozen
            gc.freeze()
        return profile

    def _synchronise(self, published: str) -> None:
        """Forgets what changed since the stream was last read; on failure, tries again later."""
        try:
            changes = self._reader.changes(self._cursor)
        except UnavailableError:
            return  # cached answers are served meanwhile; failed at once while the breaker is open
        if not changes.epoch:  # wiped: what is cached stays, the best there is until data is back
            self._synced_to = published
            return
        replaced = self._epoch is not None and changes.epoch != self._epoch
        if replaced or changes.identities is None:
            self._entries.clear()
        else:
            for identity in changes.identities:
                self._entries.pop(identity, None)
        self._epoch, self._cursor = changes.epoch, changes.cursor
        self._synced_to = published
