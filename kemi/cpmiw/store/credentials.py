"""Subscribers' digest credentials in Redis, beside their profiles.

    cpmiw:2:{<bucket>}:credential:<identity>   JSON credential (core/credential.py); <identity>
                                               = the canonical SIP identity that registers (a
                                               profile's first), in its profile's bucket

The tool writes them (`cpmiw credential`); the proxy reads one per authenticated REGISTER, on a
worker's own connection, within the worker's Redis time budget: a Redis that fails or is slow
costs a REGISTER at most CPMIW_REDIS_TIMEOUT_MS, then opens the worker's breaker for that
shard (shared with the profile look-ups) so that the next ones are answered 503 at once. No
cache: a REGISTER is rare beside a MESSAGE, and a rotated or removed credential must count at
the next REGISTER.

A credential missing from a bucket without its readiness marker (store/layout.py: a Redis
restarted empty, a shard lost) is a store not ready (StoreError), never a subscriber without a
password: the device is told to come back, not that its password is wrong.

One key per credential: on Redis Cluster each goes to the shard of its identity. Several are
written in one MULTI/EXEC on one server (or Sentinel's master); on Cluster each by itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import cast

import redis
from redis.cluster import RedisCluster

from ..core import credential as model
from ..core.credential import Credential, CredentialError
from .guard import Guard
from .layout import CHUNK, PREFIX, bucket, ready_key
from .redis import FAILURES, Client, DataError, StoreError, is_cluster, text

_KIND = ":credential:"


def credential_key(identity: str) -> str:
    """The key of a canonical identity's credential (in the bucket of its profile's key)."""
    return f"{PREFIX}{{{bucket(identity)}}}{_KIND}{identity}"


def _identity_of(key: str) -> str:
    return key[key.index(_KIND) + len(_KIND) :]


class CredentialStore:
    """Credentials for the tool: read, write, remove, list."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._cluster = is_cluster(client)

    def get(self, identity: str) -> Credential | None:
        """The credential of the canonical `identity`, or None; CredentialError if invalid."""
        try:
            raw = self._client.get(credential_key(identity))
        except redis.ResponseError as error:
            raise CredentialError(f"stored credential is not a string: {error}") from None
        except FAILURES as error:
            raise StoreError(f"redis: {error}") from error
        return None if raw is None else _checked(identity, raw)

    def put(self, credentials: Iterable[Credential]) -> None:
        """Stores credentials, replacing those of the same identities."""
        records = {credential_key(c.identity): model.encode(c) for c in credentials}
        if not records:
            return
        with self._client.pipeline(transaction=not self._cluster) as batch:
            for key, value in records.items():
                batch.set(key, value)
            batch.execute()

    def remove(self, identity: str) -> bool:
        """Removes the credential of `identity`; False when it had none."""
        return bool(self._client.delete(credential_key(identity)))

    def identities(self, match: str = "*") -> list[str]:
        """The identities that have a credential, matching a Redis glob, sorted."""
        keys = self._client.scan_iter(match=f"{PREFIX}{{*}}{_KIND}{match}", count=CHUNK)
        return sorted(_identity_of(text(key)) for key in keys)

    def all(self, match: str = "*") -> Iterator[Credential]:
        """Every stored credential matching the glob, in identity order; CredentialError."""
        identities = self.identities(match)
        for start in range(0, len(identities), CHUNK):
            chunk = identities[start : start + CHUNK]
            for identity, raw in zip(chunk, self._mget(chunk), strict=True):
                if raw is not None:  # removed meanwhile
                    yield _checked(identity, raw)

    def _mget(self, identities: list[str]) -> list[bytes | str | None]:
        keys = [credential_key(identity) for identity in identities]
        if self._cluster:  # MGET cannot span shards: redis-py splits it by slot
            return list(cast(RedisCluster, self._client).mget_nonatomic(keys))
        return list(cast(redis.Redis, self._client).mget(keys))


def _checked(identity: str, raw: bytes | str) -> Credential:
    found = model.decode(raw)
    if found.identity != identity:
        raise CredentialError(f"stored under {identity} but names {found.identity}")
    return found


class CredentialReader:
    """A worker's credential look-ups: one round trip each through the worker's guard (its
    connections, the request's time budget, the breakers shared with the profile look-ups)."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def get(self, identity: str) -> Credential | None:
        """As CredentialStore.get; StoreError when Redis fails, the breaker is open or the
        store is not ready (a miss costs a second round trip, to the marker)."""
        key = credential_key(identity)
        try:
            raw = self._guard.execute(key, "GET", key)
            ready = raw is not None or self._guard.execute(key, "EXISTS", ready_key(key))
        except DataError as error:  # one subscriber's bad key fails no one else
            raise CredentialError(f"stored credential is not a string: {error}") from None
        if not ready:
            raise StoreError("profile store not ready (its readiness marker is missing)")
        return None if raw is None else _checked(identity, raw)
