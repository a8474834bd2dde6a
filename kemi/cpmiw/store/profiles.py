"""The profile store: terminating service profiles in Redis.

Key layout (format 1, see README):

    cpmiw:1:profile:<subscriber>   JSON profile; <subscriber> = canonical first identity
    cpmiw:1:alias:<identity>       <subscriber>, one key per canonical identity (itself included)

    cpmiw:1:changes                stream of changes, one entry per write: the identities touched
    cpmiw:1:epoch                  random token set by the first write into an empty database

A look-up is one round trip (a server-side script follows the alias). Writes go through
MULTI/EXEC so a reader never sees a profile without its aliases or the other way round, and the
same transaction appends the identities it touched to the change stream: that is how the
per-worker caches (cache.py) learn what to forget, since Redis 7.0 has no client-side caching
for redis-py. Kamailio's change watcher waits on the stream (`ChangeSignal`, on a connection of
its own) and publishes its stamp; workers read the stream only when it moved. An
epoch that differs from the one a worker knows means the data set was replaced (a Redis
restarted empty, a FLUSHALL): it forgets everything.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from ..core import profile as profile_model
from ..core.profile import Profile
from .redis import Client, Connections, StoreError, socket_timeout, text

PREFIX = "cpmiw:1:"
PROFILE = PREFIX + "profile:"
ALIAS = PREFIX + "alias:"
CHANGES = PREFIX + "changes"
EPOCH = PREFIX + "epoch"
EVERYTHING = "*"  # a change entry that invalidates every cached identity (bulk writes)
BULK = 256  # a write touching more identities than this invalidates everything
CHANGES_KEPT = 10_000  # approximate length of the change stream

_FOLLOW_ALIAS = f"""
local subscriber = redis.call('GET', KEYS[1])
if not subscriber then return false end
return redis.call('GET', '{PROFILE}' .. subscriber)
"""

# One round trip per stream read. Returns the epoch, the stream's first and last entry ids, and
# the entries after the cursor (at most ARGV[2]); no entries when the cursor is the last.
_CHANGES_SINCE = """
local epoch = redis.call('GET', KEYS[2]) or ''
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local last_id = last and last[1] or '0-0'
if ARGV[1] == '' or ARGV[1] == last_id then return {epoch, last_id, last_id, {}} end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
return {epoch, first and first[1] or '0-0', last_id, entries}
"""


@dataclass(frozen=True)
class Changes:
    """What changed since a cursor: `identities` None means everything may have changed."""

    epoch: str
    cursor: str  # the id of the last change entry seen; pass it to the next poll
    identities: frozenset[str] | None


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class ProfileStore:
    def __init__(self, client: Client) -> None:
        self._client = client
        self._follow_alias = client.register_script(_FOLLOW_ALIAS)
        self._changes_since = client.register_script(_CHANGES_SINCE)

    def lookup(self, identity: str) -> Profile | None:
        """The profile of the subscriber that owns the canonical `identity`, or None.

        Raises StoreError when Redis fails and ProfileError when the stored profile is invalid.
        """
        try:
            raw = self._follow_alias(keys=[ALIAS + identity])
        except redis.RedisError as error:
            raise StoreError(f"redis: {error}") from error
        return None if raw is None else profile_model.decode(raw)

    def put(self, profiles: Iterable[Profile]) -> None:
        """Stores profiles and their aliases in one transaction, dropping aliases they lost."""
        profiles = list(profiles)
        if not profiles:
            return
        old = self._client.mget([PROFILE + p.subscriber for p in profiles])
        touched: set[str] = set()
        with self._client.pipeline(transaction=True) as tx:
            for new, stored in zip(profiles, old, strict=True):
                if stored is not None:
                    lost = _aliases_of(stored) - new.aliases
                    if lost:
                        tx.delete(*[ALIAS + alias for alias in lost])
                    touched |= lost
                touched |= new.aliases
                tx.set(PROFILE + new.subscriber, profile_model.encode(new))
                tx.mset({ALIAS + alias: new.subscriber for alias in new.aliases})
            _record_change(tx, touched)
            tx.execute()

    def delete(self, identity: str) -> bool:
        """Removes the subscriber owning `identity`, with all its aliases; False if none."""
        found = self.lookup(identity)
        if found is None:
            return False
        with self._client.pipeline(transaction=True) as tx:
            tx.delete(PROFILE + found.subscriber, *[ALIAS + alias for alias in found.aliases])
            _record_change(tx, found.aliases)
            tx.execute()
        return True

    def changes(self, cursor: str | None, limit: int = 1000) -> Changes:
        """The identities changed since `cursor` (None: start from now), in one round trip.

        Everything counts as changed when the epoch is new to the caller (checked by the
        caller), when entries after the cursor were trimmed away, when more than `limit`
        entries are pending, or when an entry says so (a bulk write). Raises StoreError.
        """
        try:
            epoch, first, last, entries = self._changes_since(
                keys=[CHANGES, EPOCH], args=[cursor or "", limit]
            )
        except redis.RedisError as error:
            raise StoreError(f"redis: {error}") from error
        epoch, last = text(epoch), text(last)
        if cursor is None or cursor == last:
            return Changes(epoch, last, frozenset())
        ids = [text(entry_id) for entry_id, _ in entries]
        # An entry after the cursor trimmed away, or the stream deleted: anything may be lost.
        trimmed = cursor != "0-0" and _stream_id(text(first)) > _stream_id(cursor)
        behind = trimmed or last == "0-0"
        if behind or not ids or ids[-1] != last:
            return Changes(epoch, last, None)  # trimmed, deleted, or too far behind
        touched = {text(f) for _, fields in entries for f in fields[::2]}
        return Changes(epoch, last, None if EVERYTHING in touched else frozenset(touched))

    def signal(self, wait: float) -> ChangeSignal:
        """The change watcher's reader of the stamp; `wait`: the longest a wait() blocks (s)."""
        return ChangeSignal(self, self._client, wait)

    def reader(self) -> Reader:
        """Look-ups on a connection of their own (one per worker): half the client's CPU."""
        return Reader(self._client)


def _record_change(tx: redis.client.Pipeline, identities: set[str] | frozenset[str]) -> None:
    """Appends one change entry to the transaction; each identity is a field name."""
    fields = dict.fromkeys(identities if len(identities) <= BULK else [EVERYTHING], "")
    tx.set(EPOCH, secrets.token_hex(8), nx=True)
    tx.xadd(CHANGES, fields, maxlen=CHANGES_KEPT, approximate=True)  # type: ignore[arg-type]


class Reader:
    """A worker's profile look-ups (ProfileStore.reader()): one round trip each, no pool."""

    def __init__(self, client: Client) -> None:
        self._connections = Connections(client)
        self._sha = hashlib.sha1(_FOLLOW_ALIAS.encode()).hexdigest()

    def lookup(self, identity: str) -> Profile | None:
        """As ProfileStore.lookup: StoreError when Redis fails, ProfileError when invalid."""
        raw = self._evalsha(ALIAS + identity)
        return None if raw is None else profile_model.decode(raw)

    def _evalsha(self, key: str) -> bytes | None:
        execute = self._connections.execute
        try:
            try:
                return execute(key, "EVALSHA", self._sha, 1, key)  # type: ignore[no-any-return]
            except redis.exceptions.NoScriptError:  # a restarted Redis has forgotten the script
                execute(key, "SCRIPT", "LOAD", _FOLLOW_ALIAS)
                return execute(key, "EVALSHA", self._sha, 1, key)  # type: ignore[no-any-return]
        except redis.ResponseError as error:
            raise StoreError(f"redis: {error}") from error


class ChangeSignal:
    """Has anything changed? Read by Kamailio's change watcher.

    The stamp is the epoch and the id of the change stream's last entry (`ProfileStore.changes`
    from no cursor): every write appends an entry, and a wiped Redis has a new epoch (or none).
    `wait()` blocks on the stream (XREAD BLOCK, on a connection of its own) until an entry comes
    after a stamp, so the watcher wakes at a write instead of polling.
    """

    # Redis answers a wait that ran out on its next timer tick (10 a second by default), or later
    # when busy: how much longer than the wait a blocked read may take before it counts as dead.
    LATE = 1.0

    def __init__(self, store: ProfileStore, client: Client, wait: float) -> None:
        self._store = store
        self._wait_ms = round(wait * 1000)
        read_timeout = wait + self.LATE + socket_timeout(client)
        self._connections = Connections(client, socket_timeout=read_timeout)

    def stamp(self) -> Stamp:
        """The stamp as Redis has it now; StoreError when it cannot say."""
        now = self._store.changes(None)
        return Stamp(now.epoch, now.cursor)

    def wait(self, stamp: Stamp) -> bool:
        """Until the stream moves past `stamp` (True) or the wait is over (False); StoreError."""
        try:
            read = self._connections.execute(
                CHANGES, "XREAD", "COUNT", 1, "BLOCK", self._wait_ms, "STREAMS", CHANGES, stamp.last
            )
            return read is not None
        except redis.ResponseError as error:  # a key of another type: tampered with by hand
            raise StoreError(f"redis: {error}") from error


@dataclass(frozen=True)
class Stamp:
    epoch: str
    last: str  # the id of the change stream's last entry ("0-0": none)

    def __str__(self) -> str:
        return f"{self.epoch}/{self.last}"


def _aliases_of(raw: bytes | str) -> frozenset[str]:
    try:
        return profile_model.decode(raw).aliases
    except profile_model.ProfileError:
        return frozenset()
