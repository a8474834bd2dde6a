"""Redis Sentinel and Redis Cluster made of real processes on loopback, for tests and the bench.

Debian's `redis-server` and `redis-sentinel` on free ports, each in a directory of its own (a
sentinel rewrites its configuration file, a cluster node keeps its nodes file there). Nothing is
persisted: a killed server restarted comes back empty, as a lost one would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from . import free_port, wait_until

SERVICE = "cpmiw"  # the master's name the sentinels watch


@dataclass
class Node:
    """One redis-server or redis-sentinel process; start() waits until it answers."""

    port: int
    argv: list[str]
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    def client(self, **options: float) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=options.get("timeout", 1.0))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, cwd=self.workdir, stdout=subprocess.DEVNULL, start_new_session=True
        )
        probe = self.client(timeout=0.5)

        def answers() -> bool:
            try:
                return bool(probe.ping())
            except redis.RedisError:
                return False

        wait_until(answers, " ".join([*self.argv[:1], self.address]))

    def kill(self) -> None:
        """SIGKILL: gone at once, as a crashed or unplugged server."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _signal(self, number: int) -> None:
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, number)
            self.process.wait()


def _server(workdir: Path, *options: str) -> Node:
    port = free_port()
    directory = workdir / f"redis-{port}"
    directory.mkdir()
    argv = [
        "redis-server",
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not 5 s later
        *options,
    ]  # fmt: skip
    return Node(port, argv, directory)


@dataclass
class SentinelSet:
    """A master, its replica and three sentinels watching them (quorum 2)."""

    servers: list[Node]
    sentinels: list[Node]
    workdir: Path

    @property
    def url(self) -> str:
        hosts = ",".join(sentinel.address for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def master(self) -> Node:
        """The server the sentinels name master now."""
        sentinel = self.sentinels[0].client()
        _host, port = cast(tuple[str, int], sentinel.sentinel_get_master_addr_by_name(SERVICE))
        return next(server for server in self.servers if server.port == int(port))

    def replicas_in_sync(self) -> bool:
        """Whether every running replica has its link to the master up."""
        return all(
            server.client().info("replication").get("master_link_status") == "up"
            for server in self.servers
            if server.running and server is not self.master()
        )

    def stop(self) -> None:
        for node in [*self.sentinels, *self.servers]:
            node.stop()


def start_sentinel(workdir: Path, down_after_ms: int = 500) -> SentinelSet:
    """Starts the set and returns once the sentinels agree and the replica is in sync.

    `down_after_ms`: how long the master may be silent before a sentinel deems it down; a
    failover then takes about twice that (bench/README.md).
    """
    master = _server(workdir)
    replica = _server(workdir, "--replicaof", "127.0.0.1", "0")
    replica.argv[-1] = str(master.port)
    sentinels = []
    for _ in range(3):
        port = free_port()
        directory = workdir / f"sentinel-{port}"
        directory.mkdir()
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {max(4 * down_after_ms, 2000)}\n"
        )
        sentinels.append(Node(port, ["redis-sentinel", str(config)], directory))
    topology = SentinelSet([master, replica], sentinels, workdir)
    try:
        for node in [master, replica, *sentinels]:
            node.start()

        def agreed() -> bool:
            for sentinel in sentinels:
                state = cast(dict[str, Any], sentinel.client().sentinel_master(SERVICE))
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
            return topology.replicas_in_sync()

        wait_until(agreed, "sentinels", timeout=20)
    except BaseException:
        topology.stop()
        raise
    return topology


@dataclass
class Cluster:
    """Redis Cluster: `shards` masters with one replica each."""

    nodes: list[Node]
    workdir: Path
    node_timeout_ms: int
    startup: list[Node] = field(default_factory=list)  # the nodes the URL names

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.startup)

    def masters(self) -> list[Node]:
        """The running nodes that are masters now."""
        return [node for node in self.nodes if node.running and _role(node) == "master"]

    def owner(self, key: str) -> Node:
        """The running master that serves `key`'s slot now, by its own account: after a
        failover the other masters learn the new owner by gossip, some time later."""
        masters = self.masters()
        slot = int(_command(masters[0], "CLUSTER", "KEYSLOT", key))
        for node in masters:
            for start, end, master, *_ in _command(node, "CLUSTER", "SLOTS"):
                if start <= slot <= end and int(master[1]) == node.port:
                    return node
        raise LookupError(f"no running master serves {key}")

    def healthy(self) -> bool:
        """Every slot served by a master that runs, as each running node sees it (without full
        coverage the state stays ok while a dead master's slots wait for its replica)."""
        try:
            infos = [
                _text(_command(node, "CLUSTER", "INFO")) for node in self.nodes if node.running
            ]
        except redis.RedisError:
            return False
        return all(
            "cluster_state:ok" in info and "cluster_slots_ok:16384" in info for info in infos
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _role(node: Node) -> str:
    try:
        return _text(_command(node, "ROLE")[0])
    except redis.RedisError:
        return "unreachable"


def _command(node: Node, *args: str) -> Any:
    return node.client().execute_command(*args)  # type: ignore[no-untyped-call]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def start_cluster(workdir: Path, shards: int = 3, node_timeout_ms: int = 500) -> Cluster:
    """Starts `2 * shards` nodes and joins them (redis-cli --cluster create); returns once every
    slot is served and every replica in sync. `node_timeout_ms`: how long a silent master is
    waited for before its replica takes over.

    Without full coverage (`cluster-require-full-coverage no`, as README "From one proxy to
    many" advises): with Redis's default every shard refuses every command (CLUSTERDOWN) from
    the moment a dead master is deemed failed until its replica has taken over."""
    nodes = [
        _server(
            workdir,
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--cluster-port", str(free_port()),
        )
        for _ in range(2 * shards)
    ]  # fmt: skip
    cluster = Cluster(nodes, workdir, node_timeout_ms, startup=nodes[:shards])
    try:
        for node in nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[node.address for node in nodes],
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip

        def ready() -> bool:
            replicas = [node for node in nodes if _role(node) == "slave"]
            in_sync = all(
                node.client().info("replication").get("master_link_status") == "up"
                for node in replicas
            )
            return cluster.healthy() and len(replicas) == shards and in_sync

        wait_until(ready, "redis cluster", timeout=30)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextmanager
def sentinel_set(down_after_ms: int = 500) -> Iterator[SentinelSet]:
    """A SentinelSet in a directory of its own, stopped and removed at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="cpmiw-sentinel-"))
    topology = start_sentinel(workdir, down_after_ms)
    try:
        yield topology
    finally:
        topology.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def redis_cluster(shards: int = 3, node_timeout_ms: int = 500) -> Iterator[Cluster]:
    """A Cluster in a directory of its own, stopped and removed at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="cpmiw-cluster-"))
    cluster = start_cluster(workdir, shards, node_timeout_ms)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
