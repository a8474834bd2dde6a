"""Redis for the proxy and the tool: the one place clients and connections are made.

Every Redis error becomes a StoreError, so that callers handle one failure: the store could not
be asked. StoreError is routing's `UnavailableError`: a profile that cannot be read is not a
subscriber that does not exist.

Three topologies, one URL (`CPMIW_REDIS_URL`), redis-py's own clients for each:

- one server: `redis://`, `rediss://` (TLS), `unix://`;
- Sentinel: `redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`
  (`rediss+sentinel://`: TLS to the sentinels and the master); the client asks the sentinels
  where the master is at each (re)connection, so a failover is followed without a restart;
- Cluster: `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://`); the
  client routes each command to the shard owning its key's slot.

Query parameters are redis-py's (`?ssl_ca_certs=/path/ca.pem`); on a Sentinel URL,
`sentinel_username` / `sentinel_password` authenticate to the sentinels, the URL's user and
password to the master.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlencode

import redis
import redis.connection
from redis._parsers.encoders import Encoder
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, MovedError, RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..core.routing import UnavailableError

# What a client may raise when Redis fails: RedisCluster raises RedisClusterException, which is
# not a RedisError, when it cannot reach the cluster or a slot has no shard.
FAILURES = (redis.RedisError, RedisClusterException)
Client = redis.Redis | RedisCluster

_SENTINEL_ONLY = ("sentinel_username", "sentinel_password")


class StoreError(UnavailableError):
    """Redis could not be asked (down, slow, refused) or answered with an error."""


class LateError(StoreError):
    """Redis did not answer within the time a call had."""


class DataError(StoreError):
    """A key holds what the command cannot read (WRONGTYPE): that key's data failed, not Redis."""


class UrlError(ValueError):
    """A CPMIW_REDIS_URL that names no usable topology; the message shows no password."""


@dataclass(frozen=True)
class Target:
    """What a URL names: the topology, its servers, and the options of every connection."""

    kind: str  # "server", "sentinel" or "cluster"
    hosts: tuple[tuple[str, int], ...]  # the sentinels, or the cluster's startup nodes
    service: str  # Sentinel: the master's name
    options: dict[str, Any]  # redis-py connection settings (credentials, db, TLS)
    sentinel_options: dict[str, Any]  # Sentinel: what the sentinels themselves get


def parse_url(url: str) -> Target:
    """The topology `url` names; UrlError when it names none."""
    scheme, _, rest = url.partition("://")
    base, plus, kind = scheme.lower().partition("+")
    if not plus:
        if base not in ("redis", "rediss", "unix"):
            raise UrlError(
                f"unknown Redis URL scheme {scheme!r}: expected redis, rediss, unix,"
                " redis+sentinel or redis+cluster (rediss+... for TLS)"
            )
        return Target("server", (), "", {}, {})
    if base not in ("redis", "rediss") or kind not in ("sentinel", "cluster"):
        raise UrlError(
            f"unknown Redis URL scheme {scheme!r}: expected redis+sentinel,"
            " rediss+sentinel, redis+cluster or rediss+cluster"
        )
    # The server list is no RFC 3986 authority: split by hand, as redis-py's URL of one server.
    before_query, _, query_text = rest.partition("?")
    netloc, _, path_text = before_query.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    hosts = tuple(_host_port(item, scheme) for item in hostlist.split(","))
    path = [unquote(p) for p in path_text.split("/") if p]
    query = dict(parse_qsl(query_text))
    sentinel_auth = {name: query.pop(name) for name in _SENTINEL_ONLY if name in query}
    # redis-py parses the credentials, the TLS settings and the query for one server's URL.
    try:
        options: dict[str, Any] = redis.connection.parse_url(  # type: ignore[no-untyped-call]
            f"{base}://{userinfo}{at}{hostlist.split(',')[0]}/?{urlencode(query)}"
        )
    except ValueError as error:  # its messages name a parameter, never a value
        raise UrlError(f"{scheme} URL: {error}") from None
    for name in ("host", "port", "db"):
        options.pop(name, None)
    if options.pop("connection_class", None) is not None:  # rediss: TLS
        options["ssl"] = True
    if kind == "cluster":
        if path:
            raise UrlError(
                "a Redis Cluster URL has no path: redis+cluster://host:port[,...]"
                " (Cluster has one database)"
            )
        return Target("cluster", hosts, "", options, {})
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise UrlError(
            "a Sentinel URL names the master's service:"
            " redis+sentinel://host:port[,host:port...]/service[/db]"
        )
    if len(path) == 2:
        options["db"] = int(path[1])
    tls = {name: value for name, value in options.items() if name.startswith("ssl")}
    sentinel_options = {
        **tls,
        **{name.removeprefix("sentinel_"): value for name, value in sentinel_auth.items()},
    }
    return Target("sentinel", hosts, path[0], options, sentinel_options)


def _host_port(item: str, scheme: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UrlError(f"{scheme} URL: expected host:port in the server list, got {item!r}")
    return host.strip("[]"), int(port)


def connect(url: str, timeout: float) -> Client:
    """A client that fails fast: a SIP worker must never wait long on a dead socket.

    Each command is tried once (redis-py's retries off) and waits at most `timeout` for a
    connection or an answer; the callers decide what a failure costs (store/cache.py).
    """
    target = parse_url(url)
    fail_fast: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 0,
        "protocol": 2,  # RESP2: no HELLO round trip at each connection
    }
    if target.kind == "sentinel":
        sentinels = Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts),
            sentinel_kwargs={
                **target.sentinel_options,
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "retry": None,
            },
        )
        master: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call]
            target.service, **fail_fast, retry=None, **target.options
        )
        return master
    if target.kind == "cluster":
        options = {**fail_fast, **target.options}
        nodes = [ClusterNode(host, port) for host, port in target.hosts]  # type: ignore[no-untyped-call]
        return cast(
            RedisCluster,
            _LazyCluster(
                lambda: RedisCluster(startup_nodes=nodes, retry=Retry(NoBackoff(), 0), **options),
                timeout,
            ),
        )
    return redis.Redis.from_url(url, **fail_fast, retry=None)


class _LazyCluster:
    """A RedisCluster made when first used, and made again after that failed.

    RedisCluster asks its startup nodes for the slot map when it is made and raises when none
    answers; a proxy must start (and answer 503) while the cluster is unreachable, so the client
    is made at its first use. A failure then is a ConnectionError, as any other.
    """

    def __init__(self, make: Callable[[], RedisCluster], socket_timeout: float) -> None:
        self._make = make
        self.socket_timeout = socket_timeout
        self._cluster: RedisCluster | None = None

    def cluster(self) -> RedisCluster:
        if self._cluster is None:
            try:
                self._cluster = self._make()
            except RedisClusterException as error:
                raise redis.ConnectionError(str(error)) from error
        return self._cluster

    @property
    def made(self) -> RedisCluster | None:
        """The client if made already (it then holds a slot map), else None."""
        return self._cluster

    def get_encoder(self) -> Any:
        """What redis-py's Script asks for when registered (before any command is sent)."""
        return Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]

    def register_script(self, script: str) -> Any:
        return redis.commands.core.Script(cast(RedisCluster, self), script)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster(), name)


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster | _LazyCluster)


class _ClosedError(Exception):
    """The connection was found closed before any of a reply came."""


class Connection:
    """A connection of one worker's own, outside the client's pool, spoken to directly.

    redis-py's client spends ~100 µs of CPU per scripted call on its retry wrapper, pool,
    response callbacks and Script object; sending packed commands on a connection halves that.
    A Kamailio worker is single-threaded and needs no pool. It is opened with the pool's own
    connection class: on Sentinel that class asks the sentinels for the master at each opening,
    so a reopened connection reaches the new master.

    A call may wait a `limit` for its reply. A reply that does not come in time is owed: the
    connection stays open, and the reply is read and dropped when it has come, before the next
    command. So a Redis that stopped answering (paused, stalled) costs the next call nothing: it
    fails at once while a reply is still owed, with no new connection to wait on. `open()`
    reconnects when there is no connection or the server closed it while it lay unused (a
    restart): the first call after a restart does not fail. A failed connection raises
    StoreError (LateError for a reply that did not come in time); a command Redis refused raises
    its ResponseError, and the connection stays usable.
    """

    IDLE = 0.1  # s unused after which a connection is checked before it is used
    OWED = 16  # replies owed at most; past that the connection is dropped
    CATCH_UP = 0.001  # s for the rest of an owed reply that has begun to come

    def __init__(self, pool: redis.ConnectionPool, **options: float) -> None:
        """`options` override the pool's connection settings (socket_timeout)."""
        # No CLIENT SETINFO: with RESP2 (connect()) a connection then costs no round trip
        # unless it authenticates or selects a database.
        settings = {**pool.connection_kwargs, "driver_info": None, **options}
        self._connection = pool.connection_class(**settings)
        self._used_at: float | None = None  # last command since the last (re)connection
        self._owed = 0  # replies of commands whose caller gave up waiting

    def open(self, limit: float | None = None) -> bool:
        """Makes the connection ready for a command: drops owed replies, connects if needed;
        True when it was open already (and may have been closed by the server unseen).

        Each step of a connection (TCP, TLS, AUTH, SELECT) waits at most `limit` s. StoreError
        when no connection can be made, LateError when Redis still owes a reply.
        """
        if self._used_at is not None and (
            self._owed or time.monotonic() - self._used_at > self.IDLE
        ):
            self._catch_up()
        reused = self._used_at is not None
        if not reused:
            if limit is not None:
                self._connection.socket_timeout = limit
                self._connection.socket_connect_timeout = limit
            try:
                # Opened through connect(), which Sentinel's connection class overrides to find
                # the master (sending on a closed connection would reopen it to the last host).
                self._connection.connect()
            except redis.RedisError as error:
                self.disconnect()
                raise StoreError(f"redis: {error}") from error
            self._used_at = time.monotonic()
        if self._owed:
            raise LateError("redis: no reply yet to an earlier command")
        return reused

    def _catch_up(self) -> None:
        """Drops the owed replies that have come; finds a connection the server closed."""
        try:
            while self._connection.can_read(timeout=0):
                if not self._owed:  # nothing is due but an end: the server closed it
                    self.disconnect()
                    return
                with contextlib.suppress(redis.ResponseError):  # an owed reply all the same
                    self._connection.read_response(timeout=self.CATCH_UP)
                self._owed -= 1
        except redis.RedisError:
            self.disconnect()
            return
        if self._owed > self.OWED:
            self.disconnect()

    def call(
        self,
        args: Sequence[str | int],
        deadline: float | None = None,
        reply_within: float | None = None,
    ) -> Any:
        """Sends one command and reads its reply; ResponseError when Redis refused it.

        Nothing waits past `deadline` (time.monotonic()), and the reply at most `reply_within`
        s once sent; None: the socket timeout.
        """
        packed = self._connection.pack_command(*args)
        reused = self.open(_left(deadline))
        try:
            return self._exchange(packed, deadline, reply_within)
        except _ClosedError as error:
            if not reused:
                raise StoreError(f"redis: {error}") from error
        # Closed by the server while it lay unused (a restart), too recently for open() to
        # see: the command never reached a server. Sent once more, on a new connection.
        self.open(_left(deadline))
        try:
            return self._exchange(packed, deadline, reply_within)
        except _ClosedError as error:
            raise StoreError(f"redis: {error}") from error

    def _exchange(
        self, packed: list[bytes], deadline: float | None, reply_within: float | None
    ) -> Any:
        """Sends a packed command and reads its reply (see call()); _ClosedError when the
        connection turned out closed before any of the reply came."""
        wait = _left(deadline)
        if reply_within is not None:
            wait = reply_within if wait is None else min(wait, reply_within)
        try:
            self._connection.send_packed_command(packed, check_health=False)
            self._used_at = time.monotonic()
            # Waited for before it is parsed: a reply that is late is owed, never half read.
            if wait is not None and not self._connection.can_read(timeout=wait):
                self._owed += 1
                raise LateError(f"redis: no reply within {wait * 1000:.0f} ms")
        except redis.ConnectionError as error:
            self.disconnect()
            raise _ClosedError(str(error)) from error
        except redis.RedisError as error:
            self.disconnect()
            raise StoreError(f"redis: {error}") from error
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
        self._owed = 0


class Connections:
    """A worker's own connections (Connection) to the servers holding the keys it reads.

    One server, Sentinel: one connection, to the master: one shard, named "". Cluster: one per
    shard, named host:port, each command sent to the shard owning its key's slot, as redis-py's
    cluster client maps slots to shards. The map is fetched again (redis-py's
    `nodes_manager.initialize()`) before the next call to a shard a call failed on (a failover
    moves its slots to a replica), and after a shard answered MOVED (the slot moved: the
    command is sent once more, to its new shard); ASK (the slot is being migrated) sends the
    command to the shard named, as Redis asks.

    Why only before a call to the shard that failed, and not before the next call whatever its
    shard: a fetch costs a new connection and a CLUSTER SLOTS round trip (2-4 ms measured, three
    shards: redis-py drops the connection it asked on), and redis-py asks the nodes in an order
    of its own, the failed one maybe first: with a master paused (SIGSTOP), 3 fetches in 20
    waited the whole socket timeout (50 ms) on it, outside any request's budget. A failover moves
    the failed shard's slots only, so the other shards' calls go on by the map as it is, never
    waiting on a fetch (measured with a master paused: look-ups on the other shards 0.24 ms
    median, 4.4 ms at worst on a loaded machine); a slot that moved all the same is answered
    MOVED. A call to the failed shard pays for the fetch, at most once per breaker backoff
    (store/guard.py), and it would have failed without it.
    """

    def __init__(self, client: Client, **options: float) -> None:
        self._client = client
        self._options = options
        self._cluster = is_cluster(client)
        self._by_node: dict[str, Connection] = {}
        self._stale: set[str] = set()  # shards a call failed on since the map was fetched

    def execute(
        self,
        key: str,
        *args: str | int,
        deadline: float | None = None,
        reply_within: float | None = None,
    ) -> Any:
        """Sends a command about `key` and reads its reply; ResponseError when it failed there,
        StoreError when Redis could not be asked, LateError when it did not answer in time
        (`deadline`, `reply_within`: as Connection.call)."""
        try:
            return self._send(self._route(key), args, deadline, reply_within)
        except MovedError as error:
            if not self._cluster:
                raise StoreError(f"redis: {error}") from error
            self._refresh()
        try:
            return self._send(self._route(key), args, deadline, reply_within)
        except MovedError as again:
            raise StoreError(f"redis: {again}") from again

    def execute_at(self, shard: str, *args: str | int, deadline: float | None = None) -> Any:
        """Sends a command about no key (SCRIPT LOAD) to `shard`, one of shards()."""
        return self._send(shard, args, deadline, None)

    def shard(self, key: str) -> str:
        """The shard a command about `key` goes to by the map as it is, without asking Redis:
        "" for one server or Sentinel, and for a Cluster whose map is not known yet."""
        cluster = self._known_cluster()
        if cluster is None:
            return ""
        try:
            return str(cluster.get_node_from_key(key).name)  # type: ignore[no-untyped-call]
        except FAILURES:  # a slot the map leaves uncovered
            return ""

    def shards(self) -> set[str]:
        """Every shard of the map as it is (the masters), without asking Redis."""
        cluster = self._known_cluster()
        if cluster is None:
            return {""}
        return {node.name for node in cluster.get_primaries()}  # type: ignore[no-untyped-call]

    def disconnect(self) -> None:
        for connection in self._by_node.values():
            connection.disconnect()

    def _known_cluster(self) -> RedisCluster | None:
        """The cluster client once it holds a map (a _LazyCluster before its first use holds
        none); None for one server or Sentinel."""
        if isinstance(self._client, _LazyCluster):
            return self._client.made
        return self._client if isinstance(self._client, RedisCluster) else None

    def _send(
        self, shard: str, args: Sequence[str | int], deadline: float | None, within: float | None
    ) -> Any:
        """Sends a command to `shard` (or where it answers ASK); a failure there marks the map
        stale for that shard. MovedError is left to the caller."""
        try:
            try:
                return self._at(shard).call(args, deadline, within)
            except AskError as error:
                if not self._cluster:
                    raise StoreError(f"redis: {error}") from error
                shard = f"{error.host}:{error.port}"
                elsewhere = self._at(shard)
                elsewhere.call(("ASKING",), deadline, within)
                return elsewhere.call(args, deadline, within)
        except StoreError:
            if self._cluster:
                self._stale.add(shard)
            raise

    def _route(self, key: str) -> str:
        """The shard for `key`, the map fetched first if a call to that shard failed."""
        if not self._cluster:
            return ""
        cluster = cast(RedisCluster, self._client)
        try:
            shard = str(cluster.get_node_from_key(key).name)  # type: ignore[no-untyped-call]
            if shard in self._stale:
                self._refresh()
                shard = str(cluster.get_node_from_key(key).name)  # type: ignore[no-untyped-call]
        except FAILURES as error:
            raise StoreError(f"redis: {error}") from error
        return shard

    def _refresh(self) -> None:
        """Fetches the slot map again; StoreError when no node answers."""
        try:
            cast(RedisCluster, self._client).nodes_manager.initialize()
        except FAILURES as error:
            raise StoreError(f"redis: {error}") from error
        self._stale.clear()

    def _at(self, name: str) -> Connection:
        """The connection to a shard by its name (host:port), "" for the only server."""
        connection = self._by_node.get(name)
        if connection is None:
            if self._cluster:
                host, _, port = name.rpartition(":")
                cluster = cast(RedisCluster, self._client)
                node = cluster.get_node(host, int(port))  # type: ignore[no-untyped-call]
                if node is None:
                    raise StoreError(f"redis: no cluster node {name}")
                pool = cluster.get_redis_connection(node).connection_pool
            else:
                pool = cast(redis.Redis, self._client).connection_pool
            connection = self._by_node[name] = Connection(pool, **self._options)
        return connection


def _left(deadline: float | None) -> float | None:
    """The seconds left until `deadline`; LateError when none are."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise LateError("redis: the time for the call is spent")
    return left


def socket_timeout(client: Client) -> float:
    """How long the client waits for an answer (s)."""
    if isinstance(client, _LazyCluster):
        return client.socket_timeout
    if isinstance(client, RedisCluster):
        return float(client.nodes_manager.connection_kwargs["socket_timeout"])
    return float(client.connection_pool.connection_kwargs["socket_timeout"])


def text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes)."""
    return value.decode() if isinstance(value, bytes) else value
