"""A breaker per shard (store/guard.py): a shard that fails is not asked for the backoff, the
others are asked as before; after a failover the shard that answers closes the failed one's
breaker. The connections are a fake here (the map of keys to shards in memory); against a real
Redis Cluster: tests/test_redis_ha.py."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import ManualClock
from cpmiw import metrics
from cpmiw.store import profiles  # noqa: F401  (its scripts, which warm() loads)
from cpmiw.store.guard import Guard, Script
from cpmiw.store.redis import StoreError

BACKOFF = 0.5


class FakeShards:
    """Keys "<shard>:<anything>" on shards named by the map `owners` (a key's prefix -> its
    master); a shard in `down` refuses; `promote` is a failover: applied during the next call,
    as Connections fetches the map again then."""

    def __init__(self) -> None:
        self.owners = {"a": "A", "b": "B"}
        self.down: set[str] = set()
        self.asked: list[str] = []
        self.promote: dict[str, str] = {}
        self.sent: list[tuple[str, tuple[str | int, ...]]] = []  # execute_at(): shard, command

    def execute(
        self,
        key: str,
        *args: str | int,
        deadline: float | None = None,
        reply_within: float | None = None,
    ) -> Any:
        self.owners.update(self.promote)
        self.promote = {}
        shard = self.shard(key)
        self.asked.append(shard)
        if shard in self.down:
            raise StoreError(f"redis: {shard} refused")
        return f"{args[0]} from {shard}"

    def execute_at(self, shard: str, *args: str | int, deadline: float | None = None) -> Any:
        self.asked.append(shard)
        if shard in self.down:
            raise StoreError(f"redis: {shard} refused")
        self.sent.append((shard, args))
        return "OK"

    def shard(self, key: str) -> str:
        return self.owners[key.partition(":")[0]]

    def shards(self) -> set[str]:
        return set(self.owners.values())


@pytest.fixture
def gauge(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The breaker metrics the guard reports, in order."""
    reported: list[str] = []
    monkeypatch.setattr(metrics, "breaker_opened", reported.append)
    monkeypatch.setattr(metrics, "breaker_closed", lambda: reported.append("closed"))
    return reported


def test_a_failed_shard_is_not_asked_while_the_others_are(gauge: list[str]) -> None:
    shards, clock = FakeShards(), ManualClock()
    guard = Guard(shards, timeout=0.05, slow=0.01, backoff=BACKOFF, clock=clock)
    assert guard.execute("a:1", "GET") == "GET from A"
    shards.down.add("A")
    with pytest.raises(StoreError, match="A refused"):
        guard.execute("a:1", "GET")
    assert guard.open and gauge == ["failed"]
    asked = len(shards.asked)
    with pytest.raises(StoreError, match="circuit open"):
        guard.execute("a:2", "GET")  # another key of the failed shard: not asked
    assert len(shards.asked) == asked
    assert guard.execute("b:1", "GET") == "GET from B"  # the other shard: asked, answered
    assert guard.execute("b:2", "GET") == "GET from B"
    assert shards.asked[asked:] == ["B", "B"]
    assert guard.open and gauge == ["failed"]  # B answering closes nothing of A's
    clock.advance(BACKOFF)  # over: A is tried again, fails again
    with pytest.raises(StoreError, match="A refused"):
        guard.execute("a:2", "GET")
    assert gauge == ["failed", "failed"]
    shards.down.clear()
    clock.advance(BACKOFF / 2)
    with pytest.raises(StoreError, match="circuit open"):
        guard.execute("a:1", "GET")
    clock.advance(BACKOFF / 2)
    assert guard.execute("a:1", "GET") == "GET from A"
    assert not guard.open and gauge == ["failed", "failed", "closed"]


def test_each_shard_has_its_own_backoff(gauge: list[str]) -> None:
    shards, clock = FakeShards(), ManualClock()
    guard = Guard(shards, timeout=0.05, slow=0.01, backoff=BACKOFF, clock=clock)
    shards.down.update({"A", "B"})
    with pytest.raises(StoreError):
        guard.execute("a:1", "GET")
    clock.advance(BACKOFF / 2)
    with pytest.raises(StoreError):
        guard.execute("b:1", "GET")
    shards.down.clear()
    clock.advance(BACKOFF / 2)  # A's backoff is over, B's is not
    assert guard.execute("a:1", "GET") == "GET from A"
    with pytest.raises(StoreError, match="circuit open"):
        guard.execute("b:1", "GET")
    assert gauge == ["failed", "failed"]  # B's still open: the worker's gauge stays up
    clock.advance(BACKOFF / 2)
    assert guard.execute("b:1", "GET") == "GET from B"
    assert gauge == ["failed", "failed", "closed"]


def test_after_a_failover_the_new_master_closes_the_old_ones_breaker(gauge: list[str]) -> None:
    shards, clock = FakeShards(), ManualClock()
    guard = Guard(shards, timeout=0.05, slow=0.01, backoff=BACKOFF, clock=clock)
    shards.down.update({"A", "B"})
    for key in ("a:1", "b:1"):
        with pytest.raises(StoreError):
            guard.execute(key, "GET")
    shards.down = {"A"}  # A stays dead; B's replica B2 and A's A2 are promoted
    shards.promote = {"a": "A2", "b": "B2"}
    clock.advance(BACKOFF)
    # Asked of B by the map as it was; the map fetched again during the call sends it to B2.
    assert guard.execute("b:1", "GET") == "GET from B2"
    # Neither A nor B is in the map any more: no breaker of theirs is left open.
    assert not guard.open and gauge == ["failed", "failed", "closed"]
    assert guard.execute("a:1", "GET") == "GET from A2"
    assert shards.asked[-2:] == ["B2", "A2"]


def test_warming_loads_every_script_on_every_shard_but_a_dead_one() -> None:
    """Each Cluster master keeps scripts of its own; a dead one costs one try at start."""
    shards = FakeShards()
    shards.owners.update({"c": "C", "": "A"})  # "": the key of warm()'s first call, a PING
    shards.down.add("B")
    Guard(shards, timeout=0.05, slow=0.01, backoff=BACKOFF).warm()
    assert Script.made
    assert set(shards.sent) == {
        (shard, ("SCRIPT", "LOAD", script.source)) for shard in "AC" for script in Script.made
    }
    assert shards.asked.count("B") == 1
