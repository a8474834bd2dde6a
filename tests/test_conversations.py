"""The conversations of SMS users (store/conversations.py) against a real Redis, through guards.

The reply's read-then-write is one script: replies of one pair handled at once by several
workers each point at a different earlier contribution, a chain with no fork. A pair's key of
the wrong type is that pair's error, no one else's.
"""

from __future__ import annotations

import secrets
import threading

import pytest

from conftest import RedisServer, make_guard
from cpmiw.core.conversation import (
    CONTRIBUTION_ID,
    CONVERSATION_ID,
    IN_REPLY_TO,
    Conversation,
    fresh,
    headers_to_add,
)
from cpmiw.store.conversations import KEY, ConversationStore
from cpmiw.store.redis import DataError, connect


def store_of(redis_server: RedisServer) -> ConversationStore:
    return ConversationStore(make_guard(connect(redis_server.url, 1.0)), ttl=60)


def pair() -> tuple[str, str]:
    tag = secrets.token_hex(4)
    return f"sip:cpm-{tag}@ims.example.net", f"tel:+1555{secrets.randbelow(10**7):07d}"


def test_headers_to_add_keep_what_the_reply_carries() -> None:
    remembered, new = Conversation("c0", "m0"), Conversation("c1", "m1")
    assert headers_to_add({}, None, new) == [(CONVERSATION_ID, "c1"), (CONTRIBUTION_ID, "m1")]
    assert headers_to_add({}, remembered, new) == [
        (CONVERSATION_ID, "c0"),
        (CONTRIBUTION_ID, "m1"),
        (IN_REPLY_TO, "m0"),
    ]
    present = {CONVERSATION_ID: "mine", IN_REPLY_TO: "theirs"}
    assert headers_to_add(present, remembered, new) == [(CONTRIBUTION_ID, "m1")]


def test_a_reply_gets_the_conversation_kept_for_it(redis_server: RedisServer) -> None:
    store = store_of(redis_server)
    cpm, sms = pair()
    store.remember(cpm, sms, Conversation("conv", "first"))
    new = fresh()
    added = dict(store.exchange(cpm, sms, {}, new))
    assert added == {
        CONVERSATION_ID: "conv",
        CONTRIBUTION_ID: new.contribution,
        IN_REPLY_TO: "first",
    }
    again = dict(store.exchange(cpm, sms, {}, fresh()))
    assert again[CONVERSATION_ID] == "conv" and again[IN_REPLY_TO] == new.contribution
    # A reply naming its own conversation moves the pair to it.
    store.exchange(cpm, sms, {CONVERSATION_ID: "other"}, fresh())
    assert dict(store.exchange(cpm, sms, {}, fresh()))[CONVERSATION_ID] == "other"
    assert 0 < redis_server.client().ttl(f"{KEY}{cpm}|{sms}") <= 60


def test_replies_of_one_pair_at_once_form_one_chain(redis_server: RedisServer) -> None:
    """Four workers, 50 replies each, one pair: every reply points at a different one."""
    cpm, sms = pair()
    store_of(redis_server).remember(cpm, sms, Conversation("conv", "start"))
    answered: list[dict[str, str]] = []

    def worker() -> None:
        store = store_of(redis_server)  # a worker's own guard and connection
        for _ in range(50):
            answered.append(dict(store.exchange(cpm, sms, {}, fresh())))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pointed_at = [reply[IN_REPLY_TO] for reply in answered]
    contributions = {reply[CONTRIBUTION_ID] for reply in answered}
    assert len(set(pointed_at)) == len(answered) == 200  # no two at the same contribution
    assert set(pointed_at) - contributions == {"start"}  # each at an earlier reply, or the first


def test_a_pair_key_of_the_wrong_type_fails_that_pair_alone(redis_server: RedisServer) -> None:
    guard = make_guard(connect(redis_server.url, 1.0))
    store = ConversationStore(guard, ttl=60)
    broken, fine = pair(), pair()
    redis_server.client().set(f"{KEY}{broken[0]}|{broken[1]}", "not a hash")
    with pytest.raises(DataError, match="WRONGTYPE"):
        store.exchange(*broken, {}, fresh())
    with pytest.raises(DataError):
        store.remember(*broken, Conversation("c", "m"))
    assert not guard.open
    store.remember(*fine, Conversation("c", "m"))
    assert dict(store.exchange(*fine, {}, fresh()))[IN_REPLY_TO] == "m"
