"""CPM conversation parameters across SMS interworking (seed 003, item 2).

SMS carries no Conversation-ID or Contribution-ID. When CPM traffic goes to the IP-SM-GW, the
proxy remembers the conversation of the two parties; when the IP-SM-GW later sends the SMS
user's reply towards the CPM user without them, the proxy puts them back: the remembered
Conversation-ID (a fresh one if none), a fresh Contribution-ID, and InReplyTo-Contribution-ID
pointing at the last contribution. Headers already present are never overwritten.

The store keeps them: store/conversations.py.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

CONVERSATION_ID = "Conversation-ID"
CONTRIBUTION_ID = "Contribution-ID"
IN_REPLY_TO = "InReplyTo-Contribution-ID"


@dataclass(frozen=True)
class Conversation:
    conversation: str
    contribution: str


def fresh_id() -> str:
    """A new identifier in the form CPM clients use (32 hex digits)."""
    return secrets.token_hex(16)


def headers_to_add(
    present: dict[str, str], remembered: Conversation | None
) -> tuple[list[tuple[str, str]], Conversation]:
    """The headers to add to an SMS user's reply, and the conversation state after it.

    `present` maps the conversation header names the request already carries to their values.
    """
    added = []
    conversation = present.get(CONVERSATION_ID)
    if conversation is None:
        conversation = remembered.conversation if remembered else fresh_id()
        added.append((CONVERSATION_ID, conversation))
    contribution = present.get(CONTRIBUTION_ID)
    if contribution is None:
        contribution = fresh_id()
        added.append((CONTRIBUTION_ID, contribution))
    if IN_REPLY_TO not in present and remembered is not None:
        added.append((IN_REPLY_TO, remembered.contribution))
    return added, Conversation(conversation, contribution)
