"""CPM conversations across SMS interworking, in the proxy (the rules: core/conversation.py).

CPM traffic on its way to the IP-SM-GW leaves its Conversation-ID and Contribution-ID behind;
the SMS user's reply, coming from the IP-SM-GW without them, gets them back.
"""

from __future__ import annotations

import KSR  # provided by app_python3 inside Kamailio

from ..core import conversation
from ..core.conversation import Conversation
from ..core.identity import IdentityError, canonical
from ..core.profile import ProfileError
from ..store.cache import CachedProfiles
from ..store.conversations import ConversationStore
from ..store.redis import StoreError
from .ksr import pv

HEADERS = (conversation.CONVERSATION_ID, conversation.CONTRIBUTION_ID, conversation.IN_REPLY_TO)


class Conversations:
    def __init__(self, store: ConversationStore, profiles: CachedProfiles) -> None:
        self._store = store
        self._profiles = profiles

    def _party(self, uri: str) -> str:
        """A party of a conversation: its subscriber id if it is ours, else its canonical URI."""
        try:
            identity = canonical(uri)
            profile = self._profiles.lookup(identity)
        except (IdentityError, StoreError, ProfileError):
            return uri
        return profile.subscriber if profile else identity

    def remember(self, subscriber: str) -> None:
        """CPM traffic to the SMS user `subscriber`: keep its conversation for the SMS reply."""
        ids = pv("$hdr(Conversation-ID)"), pv("$hdr(Contribution-ID)")
        if not all(ids):
            return
        try:
            self._store.remember(self._party(pv("$fu")), subscriber, Conversation(*ids))
        except StoreError as error:
            KSR.warn(f"cpmiw: conversation not kept call-id={pv('$ci')}: {error}\n")

    def restore(self, subscriber: str) -> None:
        """An SMS user's reply to `subscriber` from the IP-SM-GW: its CPM headers back."""
        present = {name: value for name in HEADERS if (value := pv(f"$hdr({name})"))}
        new = conversation.fresh()
        try:
            added = self._store.exchange(subscriber, self._party(pv("$fu")), present, new)
        except StoreError as error:  # still a conversation of its own, pointing at nothing
            KSR.warn(f"cpmiw: conversation not recalled call-id={pv('$ci')}: {error}\n")
            added = conversation.headers_to_add(present, None, new)
        for name, value in added:
            KSR.hdr.append(f"{name}: {value}\r\n")
