"""Redis for the proxy and the tool: the one place clients and connections are made.

Every Redis error becomes a StoreError, so that callers handle one failure: the store could not
be asked. StoreError is routing's `UnavailableError`: a profile that cannot be read is not a
subscriber that does not exist.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from ..core.routing import UnavailableError


class StoreError(UnavailableError):
    """Redis could not be asked (down, slow, refused) or answered with an error."""


def connect(url: str, timeout: float) -> redis.Redis:
    """A client that fails fast: a SIP worker must never wait long on a dead socket."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        retry=None,
        health_check_interval=0,
    )


class Connection:
    """A connection of one worker's own, outside the client's pool, spoken to directly.

    redis-py's client spends ~100 µs of CPU per scripted call on its retry wrapper, pool,
    response callbacks and Script object; sending packed commands on a connection halves that.
    A Kamailio worker is single-threaded and needs no pool. Errors raise StoreError; the
    connection is then dropped and opened again by the next command, as it is when the server
    closed it while it lay unused (a restart): the first look-up after a restart does not fail.
    """

    IDLE = 0.1  # s unused after which a connection is checked before it is used

    def __init__(self, client: redis.Redis, **options: float) -> None:
        """`options` override the client's connection settings (socket_timeout)."""
        pool = client.connection_pool
        self._connection = pool.connection_class(**{**pool.connection_kwargs, **options})
        self._used_at: float | None = None  # last command since the last (re)connection

    def pack(self, *args: str | int) -> list[bytes]:
        return self._connection.pack_command(*args)  # type: ignore[no-any-return]

    def send(self, packed: list[bytes]) -> None:
        """Sends a packed command; no reply may be pending."""
        now = time.monotonic()
        if self._used_at is not None and now - self._used_at > self.IDLE:
            try:
                closed = self._connection.can_read(timeout=0)  # nothing is due but an end
            except redis.RedisError:
                closed = True
            if closed:
                self.disconnect()
        try:
            self._connection.send_packed_command(packed, check_health=False)
        except redis.RedisError as error:
            self.disconnect()
            raise StoreError(f"redis: {error}") from error
        self._used_at = now

    def read(self) -> Any:  # a RESP reply: bytes, int, list or None
        try:
            return self._connection.read_response()
        except redis.ResponseError:
            raise  # the command failed, the connection is fine
        except redis.RedisError as error:
            self.disconnect()
            raise StoreError(f"redis: {error}") from error

    def disconnect(self) -> None:
        self._connection.disconnect()
        self._used_at = None


def text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes)."""
    return value.decode() if isinstance(value, bytes) else value
