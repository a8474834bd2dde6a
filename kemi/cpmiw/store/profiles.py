"""The profile store: terminating service profiles in Redis, written and read whole.

Where each thing lives: store/layout.py. How the workers learn of a write: store/changes.py. A
worker's look-up: store/reader.py.

Writes: on one server (or Sentinel's master) one MULTI/EXEC writes every copy, drops the copies
of identities a subscriber lost, records the change in each subscriber's history and appends the
change entry. Every key the write reads to decide (the copy under each identity it claims: who
owns it; the copy it replaces; the copies of the identities it loses) is WATCHed first: when
another writer changes one before the EXEC, the write starts again from fresh reads, so two
tools writing at once never leave an identity with a subscriber that does not list it. A write
of more than WATCH_MOST keys watches the change stream instead, which every write appends to
(Redis 7.0's WATCH compares each key with every key the client watches already).

On Cluster a transaction cannot span shards: each copy is written by itself (atomic per key),
and the change entry is appended after the data, so that a worker told of a change reads data
that is there already. The writer then waits for a replica to acknowledge (WAIT), so that a
failover right after a write loses nothing the tool reported written.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import redis
from redis.cluster import RedisCluster

from ..core import profile as profile_model
from ..core.profile import Profile, ProfileError
from .changes import RECORD, SINCE, Changes, ChangeSignal, entry, parse
from .guard import Guard, Script
from .layout import (
    CHANGES,
    CHUNK,
    EPOCH,
    PREFIX,
    READY_KEYS,
    history_key,
    identity_key,
    identity_of,
    ready_key,
)
from .reader import LOOKUP, Reader, profile_of
from .redis import (
    FAILURES,
    Client,
    StoreError,
    is_cluster,
    text,
)

REPLICA_WAIT_MS = 1000  # how long a write waits for a replica's acknowledgement
HISTORY_KEPT = 20  # changes kept per subscriber, newest first
HISTORY_TTL = 400 * 86400  # s a deleted subscriber's history is kept
WRITE_ATTEMPTS = 20  # tries of a write whose watched keys other writers keep changing
WATCH_MOST = 1024  # a write of more keys watches the change stream alone


# Sets every readiness marker (KEYS) that is not set: the store is complete.
_MARK_READY = """
for _, key in ipairs(KEYS) do redis.call('SET', key, '1', 'NX') end
return #KEYS
"""


# KEYS: history lists; ARGV: entries kept, the TTL (0: none, the subscriber lives), the entries.
_HISTORY = """
for i, key in ipairs(KEYS) do
  redis.call('LPUSH', key, ARGV[i + 2])
  redis.call('LTRIM', key, 0, tonumber(ARGV[1]) - 1)
  if ARGV[2] == '0' then redis.call('PERSIST', key) else redis.call('EXPIRE', key, ARGV[2]) end
end
"""


def _user() -> str:
    """The login name; under sudo, the operator who ran it."""
    if os.environ.get("SUDO_USER"):
        return f"{os.environ['SUDO_USER']} (sudo)"
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (a container)
        return f"uid {os.getuid()}"


class OwnerConflictError(ValueError):
    """A write would give an identity to a subscriber while another one owns it."""

    def __init__(self, identity: str, owner: str, subscriber: str) -> None:
        super().__init__(f"identity {identity} belongs to subscriber {owner}")
        self.identity, self.owner, self.subscriber = identity, owner, subscriber


@dataclass(frozen=True)
class Audit:
    """Who changes profiles, from which host, when, why and with which command.

    Recorded with every change in the subscriber's history. The default is this process's user
    and host, so that no write goes unrecorded.
    """

    user: str = field(default_factory=_user)
    host: str = field(default_factory=socket.gethostname)
    reason: str = ""
    command: str = ""

    def entry(self, action: str, fields: Sequence[str], at: float) -> bytes:
        """One history entry (JSON): `action` is create, update or delete."""
        record = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
            "user": self.user,
            "host": self.host,
            "action": action,
            "fields": list(fields),
            "reason": self.reason,
            "command": self.command,
        }
        return json.dumps(record, separators=(",", ":")).encode()


@dataclass
class _Plan:
    """What a write does: copies to set, keys to drop, identities touched, history entries."""

    copies: dict[str, bytes] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    history: dict[str, bytes] = field(default_factory=dict)
    deleted: bool = False


_Read = Callable[[Sequence[str]], list[bytes | None]]  # values of keys (identity keys)
_Watch = Callable[[Sequence[str]], None]  # watches more keys before MULTI


def _owner(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return profile_model.decode(raw).subscriber
    except ProfileError:
        return None


def _plan_put(
    read: _Read,
    watch: _Watch,
    named: list[tuple[Profile, str, frozenset[str]]],
    audit: Audit,
) -> _Plan:
    """The write of `put`, from reads made while the keys read are watched."""
    claims = sorted({(alias, subscriber) for _, subscriber, aliases in named for alias in aliases})
    found = read([identity_key(alias) for alias, _ in claims])
    for (alias, subscriber), raw in zip(claims, found, strict=True):
        owner = _owner(raw)
        if raw is not None and owner is not None and owner != subscriber:
            raise OwnerConflictError(alias, owner, subscriber)
    stored = dict(zip([alias for alias, _ in claims], found, strict=True))
    plan, now, lost = _Plan(), time.time(), set()
    for new, subscriber, aliases in named:
        old, encoded = stored[subscriber], profile_model.encode(new)
        if old == encoded:
            continue  # unchanged: not rewritten, no history, no cache disturbed
        if old is not None:
            lost |= {(alias, subscriber) for alias in _aliases_of(old) - aliases}
        plan.copies.update((identity_key(alias), encoded) for alias in aliases)
        plan.touched |= aliases
        plan.history[subscriber] = (
            audit.entry("create", [], now) if old is None else _update(audit, old, new, now)
        )
    lost_keys = [identity_key(alias) for alias, _ in sorted(lost)]
    watch(lost_keys)  # dropped only while still theirs: a move meanwhile starts us again
    for (alias, subscriber), key, raw in zip(sorted(lost), lost_keys, read(lost_keys), strict=True):
        if _owner(raw) == subscriber and key not in plan.copies:
            plan.gone.append(key)
            plan.touched.add(alias)
    return plan


def _plan_delete(read: _Read, watch: _Watch, identity: str, audit: Audit) -> _Plan | None:
    """The write of `delete`: every copy still the subscriber's; None when there is none."""
    (raw,) = read([identity_key(identity)])
    subscriber = _owner(raw)
    if raw is None or subscriber is None:
        return None
    aliases = sorted(_aliases_of(raw) | {identity})
    keys = [identity_key(alias) for alias in aliases]
    watch(keys)
    plan = _Plan(deleted=True)
    for alias, key, copy in zip(aliases, keys, read(keys), strict=True):
        if _owner(copy) == subscriber:
            plan.gone.append(key)
            plan.touched.add(alias)
    plan.history[subscriber] = audit.entry("delete", [], time.time())
    return plan


def _update(audit: Audit, old: bytes, new: Profile, at: float) -> bytes:
    """The history entry of an update, naming the fields it changes."""
    try:
        before = msgspec.to_builtins(profile_model.decode(old))
    except ProfileError:
        before = {}  # an invalid profile replaced: every field counts as changed
    after = msgspec.to_builtins(new)
    fields = [name for name in Profile.__struct_fields__ if before.get(name) != after.get(name)]
    return audit.entry("update", fields, at)


class ProfileStore:
    def __init__(self, client: Client) -> None:
        self._client = client
        self._cluster = is_cluster(client)
        self._record_change = client.register_script(RECORD)
        self._mark_ready = client.register_script(_MARK_READY)

    def lookup(self, identity: str) -> Profile | None:
        """The profile of the subscriber that owns the canonical `identity`, or None.

        Raises StoreError when Redis fails, NotReadyError when the identity's part of the store
        holds no data set (empty, wiped, a shard lost), ProfileError when this identity's data is
        unusable: a key of the wrong type, a profile that does not validate or does not list the
        identity it is stored under.
        """
        key = identity_key(identity)
        try:
            reply = self._read_only(LOOKUP, [key, ready_key(key)])
        except redis.ResponseError as error:
            if str(error).startswith("WRONGTYPE"):  # changed type while the script ran
                raise ProfileError(f"redis: {error}") from None
            raise StoreError(f"redis: {error}") from error
        except FAILURES as error:
            raise StoreError(f"redis: {error}") from error
        return profile_of(identity, reply)

    def _read_only(self, script: Script, keys: list[str], args: Sequence[str | int] = ()) -> Any:
        """Runs a read-only script as EVALSHA_RO, loading it first when Redis forgot it."""
        try:
            return self._client.evalsha_ro(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._client.script_load(script.source)
            return self._client.evalsha_ro(script.sha, len(keys), *keys, *args)

    def copies(self, identities: Sequence[str]) -> list[bytes | None]:
        """What is stored under each identity (a profile's JSON), None where nothing is."""
        return self._values([identity_key(identity) for identity in identities])

    def _values(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of `keys`, in chunks (on Cluster split by slot), None where none."""
        values: list[bytes | None] = []
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            if self._cluster:  # MGET cannot span shards: redis-py splits it by slot
                found = cast(RedisCluster, self._client).mget_nonatomic(chunk)
            else:
                found = cast(redis.Redis, self._client).mget(chunk)
            values += [None if value is None else _raw(value) for value in found]
        return values

    def identities(self, pattern: str = "*") -> list[str]:
        """Every identity with a stored copy matching the glob `pattern` (every shard), sorted."""
        keys = self._client.scan_iter(match=f"{PREFIX}{{*}}:id:{pattern}", count=CHUNK)
        return sorted(identity_of(text(key)) for key in keys)

    def put(
        self, profiles: Iterable[Profile], *, ready: bool = True, audit: Audit | None = None
    ) -> int:
        """Stores each profile under every identity, dropping the identities it lost; returns
        how many profiles it created or changed (unchanged ones are not rewritten).

        Raises OwnerConflictError when an identity belongs to another subscriber (nothing is
        written), StoreError when Redis fails or other writers keep changing the same keys.
        `ready`: the store is complete after this write: if it was not marked ready (the first
        bucket's marker is missing: a new or wiped store), every bucket is marked now. A bulk
        import that writes in batches says so with its last batch only. A store that lost part
        of its buckets (a Cluster shard) stays unmarked there until `mark_ready()`.
        `audit`: who writes and why (default: this process's user and host).
        """
        audit = audit or Audit()
        named = [(p, p.subscriber, p.aliases) for p in profiles]  # canonical forms, once
        if not named:
            return 0
        mark = ready and not self._client.exists(READY_KEYS[0])
        keys = sorted({identity_key(alias) for _, _, aliases in named for alias in aliases})
        return self._planned(keys, lambda read, watch: _plan_put(read, watch, named, audit), mark)

    def delete(self, identity: str, audit: Audit | None = None) -> bool:
        """Removes the subscriber owning `identity`, with all its copies; False if none."""
        audit = audit or Audit()
        keys = [identity_key(identity)]
        plan = lambda read, watch: _plan_delete(read, watch, identity, audit)  # noqa: E731
        return bool(self._planned(keys, plan, False))

    def history(self, identity: str) -> list[dict[str, object]]:
        """The recorded changes of the subscriber owning `identity` (or once keyed by it, when
        deleted since), newest first."""
        try:
            (raw,) = self.copies([identity])
            subscriber = _owner(raw) or identity
            entries = self._client.lrange(history_key(subscriber), 0, -1)
        except FAILURES as error:
            raise StoreError(f"redis: {error}") from error
        return [json.loads(entry) for entry in cast(list[bytes], entries)]

    def buckets_ready(self) -> int:
        """How many of the BUCKETS are marked ready: all of them, or the store is not ready."""
        try:
            return int(self._client.exists(*READY_KEYS))  # split by slot on Cluster
        except FAILURES as error:
            raise StoreError(f"redis: {error}") from error

    def mark_ready(self) -> None:
        """Marks every bucket complete as it is (an empty store, or one whose lost data is back);
        every cache forgets what it holds, since the data may have been restored around it."""
        self._write({}, [], frozenset(), ready=True)

    def _planned(
        self, keys: list[str], make: Callable[[_Read, _Watch], _Plan | None], ready: bool
    ) -> int:
        """Plans a write from reads and carries it out. On one server: the reads are WATCHed
        and the write is one MULTI/EXEC, started again when a watched key changed before EXEC.
        On Cluster (no transaction spans shards): read, then written key by key."""
        if self._cluster:
            plan = make(self._values, lambda _keys: None)
            if plan is None:
                return 0
            self._write_per_key(plan.copies, plan.gone, plan.touched, ready)
            self._history_per_key(plan)
            self._await_replica()
            return len(plan.history)
        coarse = len(keys) > WATCH_MOST
        for _ in range(WRITE_ATTEMPTS):
            with self._client.pipeline(transaction=True) as tx:
                try:
                    _watch(tx, [CHANGES] if coarse else keys)
                    plan = make(
                        functools.partial(_read, tx),
                        (lambda _keys: None) if coarse else functools.partial(_watch, tx),
                    )
                    if plan is None or not plan.history:
                        tx.unwatch()
                        return 0
                    tx.multi()
                    if plan.gone:
                        tx.delete(*plan.gone)
                    if plan.copies:
                        tx.mset(plan.copies)
                    if ready:
                        self._mark_ready(keys=READY_KEYS, client=tx)
                    ttl = HISTORY_TTL if plan.deleted else 0
                    history = [history_key(subscriber) for subscriber in plan.history]
                    tx.eval(
                        _HISTORY, len(history), *history, HISTORY_KEPT, ttl, *plan.history.values()
                    )
                    self._record_change(keys=[CHANGES, EPOCH], args=entry(plan.touched), client=tx)
                    tx.execute()
                except redis.WatchError:
                    continue
                except FAILURES as error:
                    raise StoreError(f"redis: {error}") from error
            self._await_replica()
            return len(plan.history)
        raise StoreError(f"redis: other writers kept changing these keys ({WRITE_ATTEMPTS} tries)")

    def _write(
        self,
        copies: dict[str, bytes],
        gone: list[str],
        touched: set[str] | frozenset[str],
        *,
        ready: bool = False,
    ) -> None:
        if self._cluster:
            self._write_per_key(copies, gone, touched, ready)
        else:
            with self._client.pipeline(transaction=True) as tx:
                if gone:
                    tx.delete(*gone)
                if copies:
                    tx.mset(copies)
                if ready:
                    self._mark_ready(keys=READY_KEYS, client=tx)
                self._record_change(keys=[CHANGES, EPOCH], args=entry(touched), client=tx)
                tx.execute()
        self._await_replica()

    def _history_per_key(self, plan: _Plan) -> None:
        """Cluster: each subscriber's history by itself (its key is in its own bucket)."""
        with self._client.pipeline(transaction=False) as batch:
            for subscriber, entry in plan.history.items():
                key = history_key(subscriber)
                batch.lpush(key, entry)
                batch.ltrim(key, 0, HISTORY_KEPT - 1)
                if plan.deleted:
                    batch.expire(key, HISTORY_TTL)
                else:
                    batch.persist(key)
            batch.execute()

    def _write_per_key(
        self,
        copies: dict[str, bytes],
        gone: list[str],
        touched: set[str] | frozenset[str],
        ready: bool,
    ) -> None:
        """Cluster: each key by itself, grouped per shard; the change entry after the data,
        even when part of it failed (what was written must still be forgotten by the caches)."""
        try:
            with self._client.pipeline(transaction=False) as batch:
                for key, value in copies.items():
                    batch.set(key, value)
                for key in gone:
                    batch.delete(key)
                for key in READY_KEYS if ready else ():
                    batch.set(key, "1", nx=True)
                batch.execute()
        finally:
            self._record_change(keys=[CHANGES, EPOCH], args=entry(touched))

    def _await_replica(self) -> None:
        """Waits until a replica of each master written to has the write, when it has one."""
        if self._cluster:
            cluster = cast(RedisCluster, self._client)
            primaries = cluster.get_primaries()  # type: ignore[no-untyped-call]
            masters: list[Any] = [cluster.get_redis_connection(node) for node in primaries]
        else:
            masters = [self._client]
        for master in masters:
            role = master.execute_command("ROLE")
            if text(role[0]) == "master" and role[2]:
                acknowledged = master.execute_command("WAIT", 1, REPLICA_WAIT_MS)
                if acknowledged < 1:
                    raise StoreError(
                        f"written on the master, but no replica acknowledged it within"
                        f" {REPLICA_WAIT_MS} ms: a failover now would lose it"
                    )

    def changes(self, cursor: str | None, limit: int = 1000) -> Changes:
        """The identities changed since `cursor` (None: start from now), in one round trip.

        Everything counts as changed when the epoch is new to the caller (checked by the
        caller), when entries after the cursor were trimmed away, when more than `limit`
        entries are pending, or when an entry says so (a bulk write). Raises StoreError.
        """
        try:
            reply = self._read_only(SINCE, [CHANGES, EPOCH], [cursor or "", limit])
        except FAILURES as error:
            raise StoreError(f"redis: {error}") from error
        return parse(cursor, reply)

    def signal(self, wait: float) -> ChangeSignal:
        """The change watcher's reader of the stamp; `wait`: the longest a wait() blocks (s)."""
        return ChangeSignal(self.changes, self._client, wait)

    def reader(self, guard: Guard) -> Reader:
        """Look-ups through a worker's guard, on its own connections: half the client's CPU."""
        return Reader(guard)


def _watch(tx: Any, keys: Sequence[str]) -> None:
    if keys:
        tx.watch(*keys)


def _read(tx: Any, keys: Sequence[str]) -> list[bytes | None]:
    """Values of `keys` read on a watching pipeline (immediate mode), in bounded round trips."""
    values: list[bytes | None] = []
    for start in range(0, len(keys), CHUNK):
        found = tx.mget(keys[start : start + CHUNK])
        values += [None if value is None else _raw(value) for value in found]
    return values


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _aliases_of(raw: bytes | str) -> frozenset[str]:
    try:
        return profile_model.decode(raw).aliases
    except profile_model.ProfileError:
        return frozenset()
