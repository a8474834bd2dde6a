"""Subscribers' digest credentials in Redis, beside their profiles.

    cpmiw:1:credential:<identity>   JSON credential (core/credential.py); <identity> = the
                                    canonical SIP identity that registers (a profile's first)

The tool writes them (`cpmiw credential`); the proxy reads one per authenticated REGISTER, on a
worker's own connection, within the worker's Redis time budget: a Redis that fails or is slow
costs a REGISTER at most CPMIW_REDIS_TIMEOUT_MS, then opens the worker's breaker (shared with
the profile look-ups) so that the next ones are answered 503 at once. No cache: a REGISTER is
rare beside a MESSAGE, and a rotated or removed credential must count at the next REGISTER.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import redis

from .. import metrics
from ..core import credential as model
from ..core.credential import Credential, CredentialError
from .cache import Breaker
from .profiles import PREFIX
from .redis import Connection, StoreError, text

CREDENTIAL = PREFIX + "credential:"
SCAN_COUNT = 1000


class CredentialStore:
    """Credentials for the tool: read, write in one transaction, remove, list."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def get(self, identity: str) -> Credential | None:
        """The credential of the canonical `identity`, or None; CredentialError if invalid."""
        try:
            raw = self._client.get(CREDENTIAL + identity)
        except redis.ResponseError as error:
            raise CredentialError(f"stored credential is not a string: {error}") from None
        except redis.RedisError as error:
            raise StoreError(f"redis: {error}") from error
        return None if raw is None else _checked(identity, raw)

    def put(self, credentials: Iterable[Credential]) -> None:
        """Stores credentials in one MULTI/EXEC: all of them or none."""
        records = {CREDENTIAL + c.identity: model.encode(c) for c in credentials}
        if records:
            with self._client.pipeline(transaction=True) as tx:
                tx.mset(records)
                tx.execute()

    def remove(self, identity: str) -> bool:
        """Removes the credential of `identity`; False when it had none."""
        return bool(self._client.delete(CREDENTIAL + identity))

    def identities(self, match: str = "*") -> Iterator[str]:
        """The identities that have a credential, matching a Redis glob, sorted."""
        keys = self._client.scan_iter(match=CREDENTIAL + match, count=SCAN_COUNT)
        return iter(sorted(text(key)[len(CREDENTIAL) :] for key in keys))

    def all(self, match: str = "*") -> Iterator[Credential]:
        """Every stored credential matching the glob, in identity order; CredentialError."""
        identities = list(self.identities(match))
        for start in range(0, len(identities), SCAN_COUNT):
            chunk = identities[start : start + SCAN_COUNT]
            for identity, raw in zip(
                chunk, self._client.mget([CREDENTIAL + i for i in chunk]), strict=True
            ):
                if raw is not None:  # removed meanwhile
                    yield _checked(identity, raw)


def _checked(identity: str, raw: bytes | str) -> Credential:
    found = model.decode(raw)
    if found.identity != identity:
        raise CredentialError(f"stored under {identity} but names {found.identity}")
    return found


class CredentialReader:
    """A worker's credential look-ups: one round trip each on its own connection, guarded by
    the worker's breaker (after a failure, no Redis call for the breaker's backoff)."""

    def __init__(self, client: redis.Redis, breaker: Breaker) -> None:
        self._connection = Connection(client)
        self._breaker = breaker

    def get(self, identity: str) -> Credential | None:
        """As CredentialStore.get; StoreError when Redis fails or the breaker is open."""
        if self._breaker.open:
            raise StoreError("redis unavailable (circuit open after a failure)")
        started = time.perf_counter()
        failed = False
        try:
            self._connection.send(self._connection.pack("GET", CREDENTIAL + identity))
            raw = self._connection.read()
        except StoreError:
            failed = True
            self._breaker.failed()
            raise
        except redis.ResponseError as error:  # one subscriber's bad key fails no one else
            raise CredentialError(f"stored credential is not a string: {error}") from None
        finally:
            metrics.observe_redis(time.perf_counter() - started, failed)
        return None if raw is None else _checked(identity, raw)
