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


def fresh() -> Conversation:
    """New identifiers, for what neither a reply nor what was remembered has."""
    return Conversation(fresh_id(), fresh_id())


def headers_to_add(
    present: dict[str, str], remembered: Conversation | None, new: Conversation
) -> list[tuple[str, str]]:
    """The headers to add to an SMS user's reply.

    `present` maps the conversation header names the request already carries to their values;
    `new` holds the identifiers used where neither the request nor `remembered` has one. The
    conversation state after the reply is the request's identifiers, else these.
    """
    added = []
    if CONVERSATION_ID not in present:
        added.append((CONVERSATION_ID, remembered.conversation if remembered else new.conversation))
    if CONTRIBUTION_ID not in present:
        added.append((CONTRIBUTION_ID, new.contribution))
    if IN_REPLY_TO not in present and remembered is not None:
        added.append((IN_REPLY_TO, remembered.contribution))
    return added
