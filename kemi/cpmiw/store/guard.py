"""One time budget, and a circuit breaker per shard, for every Redis call a worker makes for a
request.

A SIP worker is single-threaded: while it waits on Redis, every request queued behind it waits
too. So a worker's Redis calls on the request path (profiles, conversations, credentials,
markers) all go through its one `Guard`, on its own connections (store/redis.py Connections):

- A time budget per request (`timeout`): the calls made within `request()` share it, whatever
  shard each goes to, so that a request needing three round trips never waits three timeouts
  (a call outside has its own).
- A reply may take `slow` at most. One that comes later is given up (the connection keeps it
  owed, store/redis.py) and counts as a failure: a Redis answering in 45 ms, just under a 50 ms
  timeout, would otherwise hold every worker in turn. A (re)connection is bounded by the budget
  only: a TLS handshake may well take longer than a reply.
- A breaker per shard: a call that finds no connection, loses it, or waits past its time opens
  the breaker of the shard it went to for `backoff`. While it is open no call to that shard
  waits: each raises StoreError at once, the cache serves what it holds and the rest get the
  fail policy. After `backoff` the next call there tries Redis again and closes the breaker if
  it is answered in time: a worker recovers by itself within `backoff` of Redis's return. A
  Redis that stopped answering costs each worker one `slow` wait when it goes, then nothing (its
  reply is still owed, so a try fails at once); a Redis that answers slowly costs one `slow`
  wait per `backoff`.
  One server or Sentinel is one shard, so one breaker. On Cluster a shard is the master
  Connections sends the key to (its slot's owner in the worker's slot map): a master that dies
  costs its own subscribers alone, the other shards are asked as before. When its replica has
  taken over, the map (fetched again before the next call to the failed shard) sends the key to
  the new master, and the call answered there closes the old shard's breaker; a breaker of a
  master the map no longer has is forgotten at the next call answered.
- An error reply costs no time and opens nothing: a key of the wrong type (WRONGTYPE) raises
  DataError, that key's data error, so that one subscriber's bad key never fails another one;
  any other (a script error, NOPERM, OOM) raises StoreError for that call alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol

import redis

from .. import metrics
from .redis import DataError, LateError, StoreError

Clock = Callable[[], float]


class Shards(Protocol):
    """What the guard needs of a worker's connections (store/redis.py Connections)."""

    def execute(
        self,
        key: str,
        *args: str | int,
        deadline: float | None = None,
        reply_within: float | None = None,
    ) -> Any:
        """Sends a command about `key`; ResponseError, StoreError, LateError."""

    def execute_at(self, shard: str, *args: str | int, deadline: float | None = None) -> Any:
        """Sends a command about no key to `shard`; ResponseError, StoreError."""

    def shard(self, key: str) -> str:
        """The shard a command about `key` goes to now, without asking Redis."""

    def shards(self) -> set[str]:
        """Every shard there is now, without asking Redis."""


class Script:
    """A server-side script, run by its SHA-1 (EVALSHA) and loaded again when Redis forgot it.

    It must declare every key it touches (`keys`): on Cluster they all hash to one slot. A
    script that only reads (`read_only`) runs as EVALSHA_RO, which a Redis user allowed only to
    read its keys may run (README, "Redis users and TLS"), and a replica too.
    """

    made: ClassVar[list[Script]] = []  # every script of the product, loaded by Guard.warm()

    def __init__(self, source: str, *, read_only: bool = False) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.command = "EVALSHA_RO" if read_only else "EVALSHA"
        Script.made.append(self)


class Guard:
    """A worker's Redis on the request path: its connections, time budget and breakers.

    The budget is kept in time.monotonic(), what the sockets wait on; `clock` times the breaker.
    """

    def __init__(
        self,
        connections: Shards,
        *,
        timeout: float,
        slow: float,
        backoff: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._connections = connections
        self._timeout = timeout
        self._slow = slow
        self._backoff = backoff
        self._clock = clock
        self._deadline: float | None = None  # the budget of the request under way
        # shard -> no call there before then; the next call tries again, and closes it if answered
        self._open_until: dict[str, float] = {}

    @contextmanager
    def request(self) -> Iterator[None]:
        """One request: the calls made within share one time budget."""
        self._deadline = time.monotonic() + self._timeout
        try:
            yield
        finally:
            self._deadline = None

    def warm(self) -> None:
        """Connects and loads the scripts on every shard before the first request, which would
        otherwise pay for a process's first connection (~20 ms of imports, then the handshake)
        and two more round trips per script: each Cluster master keeps scripts of its own. The
        first call makes the Cluster's slot map, which names the shards; a shard that fails is
        left to the first request there to meet."""
        with contextlib.suppress(StoreError, redis.ResponseError):
            self._connections.execute("", "PING", deadline=time.monotonic() + self._timeout)
        for shard in sorted(self._connections.shards()):
            with contextlib.suppress(StoreError, redis.ResponseError):
                for script in Script.made:
                    deadline = time.monotonic() + self._timeout
                    self._connections.execute_at(
                        shard, "SCRIPT", "LOAD", script.source, deadline=deadline
                    )

    @property
    def open(self) -> bool:
        """Whether a shard's breaker is open now: a call there would fail at once."""
        now = self._clock()
        return any(now < until for until in self._open_until.values())

    def execute(self, key: str, *args: str | int) -> Any:
        """One command about `key`; StoreError, DataError."""
        return self._call(key, lambda deadline: self._send(key, args, deadline))

    def script(self, script: Script, keys: Sequence[str], args: Sequence[str | int] = ()) -> Any:
        """Runs `script` on `keys` with `args` (EVALSHA); StoreError, DataError."""
        evalsha = (script.command, script.sha, len(keys), *keys, *args)

        def run(deadline: float) -> Any:
            try:
                return self._send(keys[0], evalsha, deadline)
            except redis.exceptions.NoScriptError:  # a restarted Redis has forgotten it
                self._send(keys[0], ("SCRIPT", "LOAD", script.source), deadline)
                return self._send(keys[0], evalsha, deadline)

        return self._call(keys[0], run)

    def _send(self, key: str, args: Sequence[str | int], deadline: float) -> Any:
        return self._connections.execute(key, *args, deadline=deadline, reply_within=self._slow)

    def _call(self, key: str, work: Callable[[float], Any]) -> Any:
        shard = self._connections.shard(key)
        if self._clock() < self._open_until.get(shard, 0.0):
            raise StoreError("redis not asked: circuit open after a failure or a late reply")
        now = time.monotonic()
        deadline = now + self._timeout if self._deadline is None else self._deadline
        if now >= deadline:
            raise StoreError("redis not asked: the request's time budget is spent")
        started = time.perf_counter()
        failed = True
        try:
            reply = work(deadline)
            failed = False
        except redis.ResponseError as error:
            failed = False
            if str(error).startswith("WRONGTYPE"):
                raise DataError(f"redis: {error}") from error
            raise StoreError(f"redis: {error}") from error
        except StoreError as error:
            self._trip(shard, key, "late" if isinstance(error, LateError) else "failed")
            raise
        finally:
            metrics.observe_redis(time.perf_counter() - started, failed)
        if self._open_until:
            self._close(shard, key)
        return reply

    def _trip(self, shard: str, key: str, reason: str) -> None:
        """Opens the breaker of the shard the call about `key` went to: `shard`, or the one a
        map fetched again during the call sends it to now (`shard`'s breaker is then left)."""
        self._open_until.pop(shard, None)
        self._open_until[self._connections.shard(key)] = self._clock() + self._backoff
        metrics.breaker_opened(reason)

    def _close(self, shard: str, key: str) -> None:
        """A call about `key` asked of `shard` was answered: that shard's breaker closes, and
        that of the shard that answered if the map moved the key during the call; so does that
        of any shard the map no longer has (a master its replica replaced)."""
        answered = {shard, self._connections.shard(key)}
        known = self._connections.shards()
        self._open_until = {
            name: until
            for name, until in self._open_until.items()
            if name not in answered and name in known
        }
        if not self._open_until:
            metrics.breaker_closed()
