"""A worker's profile look-ups: one script on one shard, through the worker's guard."""

from __future__ import annotations

from ..core import profile as profile_model
from ..core.profile import Profile, ProfileError
from ..core.routing import NotReadyError
from .changes import SINCE, Changes, parse
from .guard import Guard, Script
from .layout import CHANGES, EPOCH, identity_key, ready_key
from .redis import DataError, text

# A look-up, in one round trip on one shard: is the identity's bucket ready (its marker set: a
# Redis restarted empty, wiped or a lost shard has none), then its key, checked for its type, so
# that a bad key is told from a missing one. Replies: {'found', profile}, {'none'},
# {'not-ready'}, {'wrong-type', type}.
LOOKUP = Script(
    """
if redis.call('EXISTS', KEYS[2]) == 0 then return {'not-ready'} end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return {'none'} end
if kind ~= 'string' then return {'wrong-type', kind} end
return {'found', redis.call('GET', KEYS[1])}
""",
    read_only=True,
)


class Reader:
    """A worker's profile look-ups (ProfileStore.reader()): one guarded round trip each."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def lookup(self, identity: str) -> Profile | None:
        """As ProfileStore.lookup, within the worker's time budget and breaker."""
        key = identity_key(identity)
        try:
            reply = self._guard.script(LOOKUP, [key, ready_key(key)])
        except DataError as error:  # the key changed type while the script ran
            raise ProfileError(str(error)) from None
        return profile_of(identity, reply)

    def changes(self, cursor: str | None, limit: int = 1000) -> Changes:
        """As ProfileStore.changes, within the worker's time budget and breaker."""
        reply = self._guard.script(SINCE, [CHANGES, EPOCH], [cursor or "", limit])
        return parse(cursor, reply)


def profile_of(identity: str, reply: list[bytes]) -> Profile | None:
    """The reply of LOOKUP, read (see ProfileStore.lookup)."""
    status = reply[0]
    if status == b"found":
        found = profile_model.decode(reply[1])
        if identity not in found.aliases:
            raise ProfileError(f"the profile stored under it is {found.subscriber}'s, without it")
        return found
    if status == b"none":
        return None
    if status == b"not-ready":
        raise NotReadyError("profile store not ready: empty or wiped (no readiness marker)")
    raise ProfileError(f"its key holds a {text(reply[1])}, not a profile")
