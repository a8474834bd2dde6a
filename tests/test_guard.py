"""The worker's guard (store/guard.py) against a real redis-server: paused, slowed, killed.

What must hold: a request waits on Redis its budget at most, all its calls together; a reply
later than `slow` opens the breaker, and then no call waits until the backoff is over; a Redis
that stopped answering costs nothing more while its reply is owed; the guard closes again by
itself at the first call answered in time; an error reply (a key of the wrong type) opens
nothing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import RedisServer, make_guard, start_redis
from cpmiw.store.guard import Guard, Script
from cpmiw.store.redis import Connection, DataError, LateError, StoreError, connect
from cpmiw.testing.slowredis import DelayProxy

# Ten times the product's figures (10 ms a reply, 50 ms a request), and a backoff as long as the
# budget: what the guard does depends on their ratios only, and each bound checked below then
# leaves tens of milliseconds for a loaded two-core machine to keep this process, Redis or the
# relay waiting for a CPU.
SLOW, TIMEOUT, BACKOFF = 0.1, 0.5, 0.5
INSTANT = SLOW / 2  # a call that waited on no socket took less, however loaded the machine
ECHO = Script("return ARGV[1]")


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


def guard_of(url: str) -> Guard:
    return make_guard(connect(url, TIMEOUT), timeout=TIMEOUT, slow=SLOW, backoff=BACKOFF)


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """How long `call` took, and what it returned or raised."""
    started = time.monotonic()
    try:
        outcome = call()
    except StoreError as error:
        outcome = error
    return time.monotonic() - started, outcome


def test_a_late_reply_opens_the_breaker_and_costs_nothing_while_owed(
    own_redis: RedisServer,
) -> None:
    guard = guard_of(own_redis.url)
    assert guard.script(ECHO, ["k"], ["x"]) == b"x"
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        took, outcome = timed(lambda: guard.execute("k", "GET", "k"))
        assert isinstance(outcome, LateError)
        assert SLOW <= took < SLOW + 0.2  # the reply's limit, not the budget
        assert guard.open
        took, outcome = timed(lambda: guard.execute("k", "GET", "k"))
        assert "circuit open" in str(outcome) and took < INSTANT
        time.sleep(BACKOFF)
        took, outcome = timed(lambda: guard.execute("k", "GET", "k"))
        assert isinstance(outcome, LateError) and "earlier command" in str(outcome)
        assert took < INSTANT  # still owed: Redis is not waited for again
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    assert own_redis.client().ping()  # running again (a signal takes effect when it is next run)
    time.sleep(BACKOFF)
    assert guard.script(ECHO, ["k"], ["back"]) == b"back"  # the owed reply read and dropped
    assert not guard.open


def test_a_slow_redis_costs_one_slow_wait_per_backoff(own_redis: RedisServer) -> None:
    proxy = DelayProxy(own_redis.port)
    try:
        guard = guard_of(proxy.url)
        assert guard.execute("k", "PING") == b"PONG"
        proxy.delay = 0.4  # answers every command, under the budget, over a reply's limit
        waits = []
        started = time.monotonic()
        for _ in range(120):  # a count, not a time: a loaded machine makes fewer calls a second
            took, outcome = timed(lambda: guard.execute("k", "PING"))
            assert isinstance(outcome, StoreError)
            waits.append(took)
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        waited = [took for took in waits if took >= INSTANT]
        assert all(took < SLOW + 0.2 for took in waits)  # never the 400 ms
        assert 1 <= len(waited) <= elapsed / BACKOFF + 1  # a try per backoff, the rest at once
        assert len(waits) - len(waited) > 100
        proxy.delay = 0.0
        time.sleep(0.4 + BACKOFF)  # the last owed reply came; the backoff is over
        assert guard.execute("k", "PING") == b"PONG"
        assert not guard.open
    finally:
        proxy.close()


def test_the_calls_of_a_request_share_its_budget(own_redis: RedisServer) -> None:
    proxy = DelayProxy(own_redis.port)
    try:
        budget = 0.7
        guard = make_guard(connect(proxy.url, budget), timeout=budget, slow=0.4, backoff=BACKOFF)
        guard.execute("k", "PING")
        proxy.delay = 0.25  # each reply in time, three of them not
        with guard.request():
            took, outcomes = timed(lambda: [_or_error(guard) for _ in range(4)])
        assert outcomes[:2] == [b"PONG", b"PONG"]
        assert isinstance(outcomes[3], StoreError)
        assert took < budget + 0.2  # the budget, not four replies' second
    finally:
        proxy.close()


def _or_error(guard: Guard) -> object:
    try:
        return guard.execute("k", "PING")
    except StoreError as error:
        return error


def test_a_key_of_the_wrong_type_is_its_own_error(own_redis: RedisServer) -> None:
    guard = guard_of(own_redis.url)
    own_redis.client().lpush("a list", "x")
    with pytest.raises(DataError, match="WRONGTYPE"):
        guard.execute("a list", "GET", "a list")
    assert not guard.open  # a prompt error reply: nobody else pays for it
    with pytest.raises(StoreError, match="unknown command") as refused:
        guard.execute("k", "NO-SUCH-COMMAND")
    assert not isinstance(refused.value, DataError)
    assert not guard.open
    assert guard.script(ECHO, ["k"], ["fine"]) == b"fine"


def test_a_dead_redis_fails_at_once_and_is_found_again(own_redis: RedisServer) -> None:
    guard = guard_of(own_redis.url)
    assert guard.execute("k", "PING") == b"PONG"
    own_redis.stop()
    took, outcome = timed(lambda: guard.execute("k", "PING"))
    assert isinstance(outcome, StoreError) and not isinstance(outcome, LateError)
    assert took < SLOW and guard.open
    own_redis.start()  # empty, without the script: loaded again
    time.sleep(BACKOFF)
    assert guard.script(ECHO, ["k"], ["again"]) == b"again"
    assert not guard.open


def test_a_connection_the_server_closed_unseen_is_opened_again_at_once(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart right after a call: the next call finds its connection closed and sends its
    command again on a new one, instead of failing (and opening the breaker)."""
    monkeypatch.setattr(Connection, "IDLE", 3600.0)  # the idle check never runs
    guard = guard_of(own_redis.url)
    assert guard.execute("k", "PING") == b"PONG"
    own_redis.stop()
    own_redis.start()
    assert guard.script(ECHO, ["k"], ["again"]) == b"again"
    assert not guard.open
