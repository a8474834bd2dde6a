"""The CPM conversations of SMS users, remembered in Redis (the rules: core/conversation.py).

Redis key: `cpmiw:1:conv:<cpm party>|<sms party>`, a hash {conversation, contribution}, expiring.
"""

from __future__ import annotations

import redis

from ..core.conversation import Conversation
from .redis import Client, StoreError, text

KEY = "cpmiw:1:conv:"


class ConversationStore:
    def __init__(self, client: Client, ttl: int) -> None:
        self._client = client
        self._ttl = ttl

    def remember(self, cpm_party: str, sms_party: str, state: Conversation) -> None:
        key = f"{KEY}{cpm_party}|{sms_party}"
        try:
            with self._client.pipeline(transaction=True) as tx:
                tx.hset(
                    key,
                    mapping={
                        "conversation": state.conversation,
                        "contribution": state.contribution,
                    },
                )
                tx.expire(key, self._ttl)
                tx.execute()
        except redis.RedisError as error:
            raise StoreError(f"redis: {error}") from error

    def recall(self, cpm_party: str, sms_party: str) -> Conversation | None:
        try:
            stored = self._client.hgetall(f"{KEY}{cpm_party}|{sms_party}")
        except redis.RedisError as error:
            raise StoreError(f"redis: {error}") from error
        values = {text(name): text(value) for name, value in stored.items()}
        if "conversation" not in values or "contribution" not in values:
            return None
        return Conversation(values["conversation"], values["contribution"])
