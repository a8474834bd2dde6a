"""The CPM conversations of SMS users, remembered in Redis (the rules: core/conversation.py).

Redis key: `cpmiw:1:conv:<cpm party>|<sms party>`, a hash {conversation, contribution}, expiring.

Every call goes through the worker's guard (store/guard.py), each in one round trip: a script
that writes the hash and its expiry together, and for an SMS user's reply one that reads what
was remembered and moves it on in the same step, so that two replies of one pair handled at once
by two workers each point at the contribution before them.
"""

from __future__ import annotations

from ..core.conversation import CONTRIBUTION_ID, CONVERSATION_ID, Conversation, headers_to_add
from .guard import Guard, Script
from .redis import text

KEY = "cpmiw:1:conv:"

_REMEMBER = Script("""
redis.call('HSET', KEYS[1], 'conversation', ARGV[1], 'contribution', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
""")
# Returns what was remembered; keeps the conversation headers_to_add() puts in the reply: the
# request's own (ARGV[1]), else the one remembered, else the fresh one (ARGV[2]).
_EXCHANGE = Script("""
local old = redis.call('HMGET', KEYS[1], 'conversation', 'contribution')
local conversation = ARGV[1] ~= '' and ARGV[1] or (old[2] and old[1]) or ARGV[2]
redis.call('HSET', KEYS[1], 'conversation', conversation, 'contribution', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return old
""")


class ConversationStore:
    def __init__(self, guard: Guard, ttl: int) -> None:
        self._guard = guard
        self._ttl = ttl

    def remember(self, cpm_party: str, sms_party: str, state: Conversation) -> None:
        """CPM traffic on its way to the SMS user: its conversation kept; StoreError."""
        args = (state.conversation, state.contribution, self._ttl)
        self._guard.script(_REMEMBER, [_key(cpm_party, sms_party)], args)

    def exchange(
        self, cpm_party: str, sms_party: str, present: dict[str, str], fresh: Conversation
    ) -> list[tuple[str, str]]:
        """The headers an SMS user's reply needs, the pair's state moved on in the same step.

        `present`: the conversation headers the reply carries; `fresh`: new identifiers for
        what neither the reply nor the store has. StoreError (DataError: the pair's key holds
        another type) when nothing could be read or kept.
        """
        conversation = present.get(CONVERSATION_ID, "")
        contribution = present.get(CONTRIBUTION_ID, fresh.contribution)
        args = (conversation, fresh.conversation, contribution, self._ttl)
        old = self._guard.script(_EXCHANGE, [_key(cpm_party, sms_party)], args)
        remembered = None if None in old else Conversation(text(old[0]), text(old[1]))
        return headers_to_add(present, remembered, fresh)


def _key(cpm_party: str, sms_party: str) -> str:
    return f"{KEY}{cpm_party}|{sms_party}"
