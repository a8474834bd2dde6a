"""The profile store: terminating service profiles in Redis.

Key layout (format 1, see README):

    cpmiw:1:profile:<subscriber>   JSON profile; <subscriber> = canonical first identity
    cpmiw:1:alias:<identity>       <subscriber>, one key per canonical identity (itself included)

A look-up is one round trip (a server-side script follows the alias). Writes go through
MULTI/EXEC so a reader never sees a profile without its aliases or the other way round.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from . import profile as profile_model
from .profile import Profile
from .routing import StoreError

PREFIX = "cpmiw:1:"
PROFILE = PREFIX + "profile:"
ALIAS = PREFIX + "alias:"

_FOLLOW_ALIAS = f"""
local subscriber = redis.call('GET', KEYS[1])
if not subscriber then return false end
return redis.call('GET', '{PROFILE}' .. subscriber)
"""


def connect(url: str, timeout: float) -> redis.Redis:
    """A client that fails fast: a SIP worker must never wait long on a dead socket."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        retry=None,
        health_check_interval=0,
    )


class ProfileStore:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._follow_alias = client.register_script(_FOLLOW_ALIAS)

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
        old = self._client.mget([PROFILE + p.subscriber for p in profiles]) if profiles else []
        with self._client.pipeline(transaction=True) as tx:
            for new, stored in zip(profiles, old, strict=True):
                if stored is not None:
                    lost = _aliases_of(stored) - new.aliases
                    if lost:
                        tx.delete(*[ALIAS + alias for alias in lost])
                tx.set(PROFILE + new.subscriber, profile_model.encode(new))
                tx.mset({ALIAS + alias: new.subscriber for alias in new.aliases})
            tx.execute()

    def delete(self, identity: str) -> bool:
        """Removes the subscriber owning `identity`, with all its aliases; False if none."""
        found = self.lookup(identity)
        if found is None:
            return False
        with self._client.pipeline(transaction=True) as tx:
            tx.delete(PROFILE + found.subscriber, *[ALIAS + alias for alias in found.aliases])
            tx.execute()
        return True


def _aliases_of(raw: bytes | str) -> frozenset[str]:
    try:
        return profile_model.decode(raw).aliases
    except profile_model.ProfileError:
        return frozenset()
