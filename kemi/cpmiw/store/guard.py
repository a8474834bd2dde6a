"""One time budget and one circuit breaker for every Redis call a worker makes for a request.

A SIP worker is single-threaded: while it waits on Redis, every request queued behind it waits
too. So a worker's Redis calls on the request path (profiles, conversations, credentials,
markers) all go through its one `Guard`, on its own connections (store/redis.py Connections):

- A time budget per request (`timeout`): the calls made within `request()` share it, so that a
  request needing three round trips never waits three timeouts (a call outside has its own).
- A reply may take `slow` at most. One that comes later is given up (the connection keeps it
  owed, store/redis.py) and counts as a failure: a Redis answering in 45 ms, just under a 50 ms
  timeout, would otherwise hold every worker in turn. A (re)connection is bounded by the budget
  only: a TLS handshake may well take longer than a reply.
- A breaker: a call that finds no connection, loses it, or waits past its time opens it for
  `backoff`. While it is open no call waits: each raises StoreError at once, the cache serves
  what it holds and the rest get the fail policy. After `backoff` the next call tries Redis
  again and closes the breaker if it is answered in time: a worker recovers by itself within
  `backoff` of Redis's return. A Redis that stopped answering costs each worker one `slow` wait
  when it goes, then nothing (its reply is still owed, so a try fails at once); a Redis that
  answers slowly costs one `slow` wait per `backoff`.
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
from typing import Any, ClassVar

import redis

from .. import metrics
from .redis import Connections, DataError, LateError, StoreError

Clock = Callable[[], float]


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
    """A worker's Redis on the request path: its connections, time budget and breaker.

    The budget is kept in time.monotonic(), what the sockets wait on; `clock` times the breaker.
    """

    def __init__(
        self,
        connections: Connections,
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
        self._open_until = 0.0  # > 0: opened, no call before then; the next call tries again

    @contextmanager
    def request(self) -> Iterator[None]:
        """One request: the calls made within share one time budget."""
        self._deadline = time.monotonic() + self._timeout
        try:
            yield
        finally:
            self._deadline = None

    def warm(self) -> None:
        """Connects and loads the scripts before the first request, which would otherwise pay
        for a process's first connection (~20 ms of imports, then the handshake) and two more
        round trips per script; a failure is left to that request to meet."""
        with contextlib.suppress(StoreError, redis.ResponseError):
            for script in Script.made:
                deadline = time.monotonic() + self._timeout
                self._connections.execute("", "SCRIPT", "LOAD", script.source, deadline=deadline)

    @property
    def open(self) -> bool:
        return self._clock() < self._open_until

    def execute(self, key: str, *args: str | int) -> Any:
        """One command about `key`; StoreError, DataError."""
        return self._call(lambda deadline: self._send(key, args, deadline))

    def script(self, script: Script, keys: Sequence[str], args: Sequence[str | int] = ()) -> Any:
        """Runs `script` on `keys` with `args` (EVALSHA); StoreError, DataError."""
        evalsha = (script.command, script.sha, len(keys), *keys, *args)

        def run(deadline: float) -> Any:
            try:
                return self._send(keys[0], evalsha, deadline)
            except redis.exceptions.NoScriptError:  # a restarted Redis has forgotten it
                self._send(keys[0], ("SCRIPT", "LOAD", script.source), deadline)
                return self._send(keys[0], evalsha, deadline)

        return self._call(run)

    def _send(self, key: str, args: Sequence[str | int], deadline: float) -> Any:
        return self._connections.execute(key, *args, deadline=deadline, reply_within=self._slow)

    def _call(self, work: Callable[[float], Any]) -> Any:
        if self._clock() < self._open_until:
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
            self._trip("late" if isinstance(error, LateError) else "failed")
            raise
        finally:
            metrics.observe_redis(time.perf_counter() - started, failed)
        if self._open_until:
            self._open_until = 0.0
            metrics.breaker_closed()
        return reply

    def _trip(self, reason: str) -> None:
        self._open_until = self._clock() + self._backoff
        metrics.breaker_opened(reason)
