"""The change stream: how every worker learns what a write changed.

Every write appends an entry naming the identities it touched (`RECORD`, store/profiles.py); the
per-worker caches (cache.py) read it to learn what to forget, since Redis 7.0 has no client-side
caching for redis-py. Kamailio's change watcher waits on the stream
(`ChangeSignal`, on a connection of its own) and publishes its stamp; workers read the stream
only when it moved. An epoch that differs from the one a worker knows means the data set was
replaced (a Redis restarted empty, a FLUSHALL): it forgets everything.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from .guard import Script
from .layout import CHANGES
from .redis import Client, Connections, StoreError, socket_timeout, text

EVERYTHING = "*"  # a change entry that invalidates every cached identity (bulk writes)
BULK = 256  # a write touching more identities than this invalidates everything
CHANGES_KEPT = 10_000  # approximate length of the change stream

# Appends one change entry (ARGV[3...]: field, value pairs) after setting the epoch if unset.
RECORD = """
redis.call('SET', KEYS[2], ARGV[1], 'NX')
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
"""

# One round trip per stream read. Returns the epoch, the stream's first and last entry ids, and
# the entries after the cursor (at most ARGV[2]); no entries when the cursor is the last.
SINCE = Script(
    """
local epoch = redis.call('GET', KEYS[2]) or ''
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local last_id = last and last[1] or '0-0'
if ARGV[1] == '' or ARGV[1] == last_id then return {epoch, last_id, last_id, {}} end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
return {epoch, first and first[1] or '0-0', last_id, entries}
""",
    read_only=True,
)


@dataclass(frozen=True)
class Changes:
    """What changed since a cursor: `identities` None means everything may have changed."""

    epoch: str
    cursor: str  # the id of the last change entry seen; pass it to the next poll
    identities: frozenset[str] | None


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def entry(identities: set[str] | frozenset[str]) -> list[str | int]:
    """The arguments of RECORD: a new epoch, the stream's length, the fields (each
    identity a field name; a bulk write, or one that names none, is one field: EVERYTHING)."""
    fields = sorted(identities) if 0 < len(identities) <= BULK else [EVERYTHING]
    return [secrets.token_hex(8), CHANGES_KEPT, *(item for f in fields for item in (f, ""))]


def parse(cursor: str | None, reply: list[Any]) -> Changes:
    """The reply of SINCE, read (see ProfileStore.changes)."""
    epoch, first, last, entries = reply
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

    def __init__(self, since: Callable[[str | None], Changes], client: Client, wait: float) -> None:
        """`since`: what changed since a cursor, as ProfileStore.changes tells."""
        self._since = since
        self._wait_ms = round(wait * 1000)
        read_timeout = wait + self.LATE + socket_timeout(client)
        self._connections = Connections(client, socket_timeout=read_timeout)

    def stamp(self) -> Stamp:
        """The stamp as Redis has it now; StoreError when it cannot say."""
        now = self._since(None)
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
