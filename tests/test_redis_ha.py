"""Redis Sentinel and Redis Cluster behind one URL: the store, the workers' own connections, the
change watcher and the CLI on real `redis-server` / `redis-sentinel` processes (testing/topology).

A master is killed (SIGKILL) and the same objects go on against the new one: nothing is made
again, as in a Kamailio worker that is not restarted.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from click.testing import CliRunner
from redis.cluster import RedisCluster
from redis.crc import key_slot

from conftest import RedisServer, make_guard
from cpmiw.core.conversation import CONVERSATION_ID, IN_REPLY_TO, Conversation, fresh
from cpmiw.ops.cli import main
from cpmiw.store.changes import Stamp
from cpmiw.store.conversations import ConversationStore
from cpmiw.store.guard import Script
from cpmiw.store.layout import READY_KEYS, identity_key, ready_key
from cpmiw.store.markers import CLOCK_SKEW, HonouredMarkers
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.reader import Reader
from cpmiw.store.redis import (
    Client,
    Connections,
    LateError,
    StoreError,
    UrlError,
    connect,
    parse_url,
)
from cpmiw.testing import make_profile, wait_until
from cpmiw.testing.topology import Cluster, SentinelSet, redis_cluster, sentinel_set

# ---- URLs ----------------------------------------------------------------------------------


def test_sentinel_url_names_sentinels_service_db_and_credentials() -> None:
    target = parse_url("redis+sentinel://app:s3cret@10.0.0.1:26379,[::1]:26380/cpmiw/2")
    assert target.kind == "sentinel"
    assert target.hosts == (("10.0.0.1", 26379), ("::1", 26380))
    assert target.service == "cpmiw"
    assert target.options == {"username": "app", "password": "s3cret", "db": 2}
    assert target.sentinel_options == {}


def test_tls_sentinel_url_gives_tls_to_master_and_sentinels() -> None:
    target = parse_url(
        "rediss+sentinel://:pw@h:26379/cpmiw?ssl_ca_certs=/etc/ca.pem&sentinel_password=sp"
    )
    assert target.options == {"password": "pw", "ssl": True, "ssl_ca_certs": "/etc/ca.pem"}
    assert target.sentinel_options == {"ssl": True, "ssl_ca_certs": "/etc/ca.pem", "password": "sp"}


def test_cluster_url_names_startup_nodes() -> None:
    target = parse_url("rediss+cluster://u:p@a:7000,b:7001")
    assert (target.kind, target.hosts) == ("cluster", (("a", 7000), ("b", 7001)))
    assert target.options == {"username": "u", "password": "p", "ssl": True}


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:topsecret@h:26379",  # no service
        "redis+sentinel://:topsecret@h:26379/cpmiw/x",  # db not a number
        "redis+cluster://:topsecret@h:7000/0",  # Cluster has one database
        "redis+cluster://:topsecret@h",  # no port
        "redis+replica://:topsecret@h:1",
        "memcached://:topsecret@h:1",
    ],
)
def test_bad_urls_are_one_error_without_the_password(url: str) -> None:
    with pytest.raises(UrlError) as error:
        connect(url, 0.05)
    assert "topsecret" not in str(error.value)


def test_plain_urls_are_redis_pys() -> None:
    assert parse_url("redis://127.0.0.1:6379/0").kind == "server"
    client = connect("unix:///run/redis.sock?db=1", 0.05)
    assert client.connection_pool.connection_kwargs["db"] == 1  # type: ignore[union-attr]


# ---- Sentinel --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSet]:
    with sentinel_set() as topology:
        yield topology


def test_cli_writes_and_reads_through_sentinel(sentinels: SentinelSet) -> None:
    env = {"CPMIW_REDIS_URL": sentinels.url}
    runner = CliRunner()
    done = runner.invoke(
        main, ["profile", "set", "sip:carol@ims.example.net", "--services", "cpm"], env=env
    )
    assert done.exit_code == 0, done.output
    shown = runner.invoke(main, ["profile", "get", "sip:carol@ims.example.net"], env=env)
    assert shown.exit_code == 0 and '"cpm"' in shown.stdout
    # Written on the master, read back from it: the replica holds it too.
    replica = next(s for s in sentinels.servers if s is not sentinels.master())
    assert replica.client().keys("*carol*")


def test_store_reader_and_watcher_follow_a_failover(sentinels: SentinelSet) -> None:
    """The master is killed: the same store, reader and change signal (one worker's) carry on
    against the replica the sentinels promote; what was written before is there."""
    client = connect(sentinels.url, timeout=0.2)
    store = ProfileStore(client)
    reader = store.reader(make_guard(client, timeout=0.2, slow=0.2, backoff=0.05))
    signal = store.signal(wait=0.05)
    before = make_profile("dora", "+15557000001", "cpm")
    store.put([before])
    assert reader.lookup("tel:+15557000001") == before
    stamp = signal.stamp()

    old = sentinels.master()
    old.kill()
    with pytest.raises(StoreError):
        reader.lookup("tel:+15557000001")  # the master is gone, nothing answers for it yet

    def promoted() -> bool:
        try:
            return reader.lookup("tel:+15557000001") == before
        except StoreError:
            return False

    started = time.monotonic()
    wait_until(promoted, "reader on the new master", timeout=15)
    assert sentinels.master() is not old
    assert time.monotonic() - started < 10

    after = make_profile("dora", "+15557000001", "cpm,sms")
    store.put([after])  # the store's pool reaches the new master too
    assert reader.lookup("tel:+15557000001") == after
    # The watcher's stamp moved with the write on the new master: its wait returns at once.
    assert signal.wait(stamp) or signal.stamp() != stamp
    assert signal.stamp() != Stamp(stamp.epoch, stamp.last)


def test_unreachable_sentinels_fail_fast() -> None:
    client = connect("redis+sentinel://127.0.0.1:1,127.0.0.1:2/cpmiw", 0.05)
    store = ProfileStore(client)
    started = time.monotonic()
    with pytest.raises(StoreError):
        store.reader(make_guard(client, timeout=0.05)).lookup("tel:+1")
    with pytest.raises(StoreError):
        store.lookup("tel:+1")
    assert time.monotonic() - started < 1.0


# ---- Cluster ---------------------------------------------------------------------------------


def reader_of(client: Client, timeout: float) -> Reader:
    """A worker's reader: its own connections, its guard (a short backoff, for polling)."""
    return ProfileStore(client).reader(
        make_guard(client, timeout=timeout, slow=timeout, backoff=0.05)
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with redis_cluster() as topology:
        yield topology


def test_cluster_spreads_subscribers_and_reads_each_from_its_shard(cluster: Cluster) -> None:
    store = ProfileStore(connect(cluster.url, timeout=0.5))
    profiles = [make_profile(f"spread{n}", f"+1555800{n:04d}", "cpm") for n in range(300)]
    store.put(profiles)
    per_shard = [master.client().dbsize() for master in cluster.masters()]
    assert len(per_shard) == 3 and min(per_shard) > 100  # 600 copies, no single hash tag
    reader = reader_of(connect(cluster.url, 0.5), 0.5)
    for profile in profiles[::7]:
        assert reader.lookup(profile.subscriber) == profile
        assert store.lookup(f"tel:+1555800{profiles.index(profile):04d}") == profile
    assert reader.lookup("tel:+15558999999") is None


def test_a_worker_loads_the_scripts_on_every_master_before_its_first_request(
    cluster: Cluster,
) -> None:
    for master in cluster.masters():
        master.client().script_flush()
    make_guard(connect(cluster.url, timeout=0.5)).warm()
    shas = [script.sha for script in Script.made]
    assert shas and len(cluster.masters()) == 3
    for master in cluster.masters():
        assert master.client().script_exists(*shas) == [True] * len(shas)


def test_cluster_change_stream_tells_of_each_write(cluster: Cluster) -> None:
    store = ProfileStore(connect(cluster.url, timeout=0.5))
    signal = store.signal(wait=1.0)
    stamp = signal.stamp()
    erin = make_profile("erin", "+15558100001", "im")
    store.put([erin])
    assert signal.wait(stamp)  # at once: the entry is there already
    changes = store.changes(stamp.last)
    assert changes.identities == erin.aliases
    assert changes.epoch == stamp.epoch != ""
    store.delete("tel:+15558100001")
    assert store.changes(changes.cursor).identities == erin.aliases
    assert reader_of(connect(cluster.url, 0.5), 0.5).lookup(erin.subscriber) is None


def test_cli_imports_exports_and_moves_identities_on_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    env = {"CPMIW_REDIS_URL": cluster.url}
    runner = CliRunner()
    lines = "".join(f"sip:csv{n}@ims.example.net tel:+1555820{n:04d},cpm\n" for n in range(50))
    (tmp_path / "in.csv").write_text("identities,services\n" + lines)
    done = runner.invoke(main, ["profile", "import", str(tmp_path / "in.csv")], env=env)
    assert done.exit_code == 0, done.output
    exported = runner.invoke(
        main, ["profile", "export", "-m", "sip:csv*", "--format", "csv"], env=env
    )
    assert exported.exit_code == 0, exported.output
    assert exported.stdout.count("sip:csv") == 50
    # An identity moved to another subscriber: the look-up by it finds the new owner at once.
    moved = runner.invoke(
        main, ["profile", "alias", "rm", "sip:csv1@ims.example.net", "tel:+15558200001"], env=env
    )
    assert moved.exit_code == 0, moved.output
    added = runner.invoke(
        main, ["profile", "alias", "add", "sip:csv2@ims.example.net", "tel:+15558200001"], env=env
    )
    assert added.exit_code == 0, added.output
    found = reader_of(connect(cluster.url, 0.5), 0.5).lookup("tel:+15558200001")
    assert found is not None and found.subscriber == "sip:csv2@ims.example.net"


def test_conversations_are_kept_on_cluster(cluster: Cluster) -> None:
    guard = make_guard(connect(cluster.url, timeout=0.5), timeout=0.5, slow=0.5)
    conversations = ConversationStore(guard, ttl=60)
    conversations.remember("sip:a@ims.example.net", "tel:+1555", Conversation("c1", "k1"))
    added = dict(conversations.exchange("sip:a@ims.example.net", "tel:+1555", {}, fresh()))
    assert (added[CONVERSATION_ID], added[IN_REPLY_TO]) == ("c1", "k1")


def test_reader_and_writer_follow_a_shard_failover(cluster: Cluster) -> None:
    """A master is killed: its replica takes its slots; the same reader finds them there."""
    client = connect(cluster.url, timeout=0.2)
    store = ProfileStore(client)
    reader = reader_of(client, 0.2)  # on the store's client: one slot map, as in a worker
    fay = make_profile("fay", "+15558300001", "cpm")
    store.put([fay])  # acknowledged by the shard's replica before put() returns
    assert reader.lookup(fay.subscriber) == fay
    victim = cluster.owner(identity_key(fay.subscriber))
    victim.kill()

    def served() -> bool:
        try:
            return reader.lookup(fay.subscriber) == fay
        except StoreError:
            return False

    started = time.monotonic()
    wait_until(served, "the promoted replica", timeout=15)
    assert cluster.owner(identity_key(fay.subscriber)) is not victim
    assert time.monotonic() - started < 10
    wait_until(cluster.healthy, "every slot served")
    again = make_profile("fay", "+15558300001", "cpm,sms")
    store.put([again])
    assert reader.lookup("tel:+15558300001") == again


def test_a_dead_shard_costs_its_own_subscribers_only(cluster: Cluster) -> None:
    """A master is killed: at once the same reader (one worker's guard, one slot map) answers
    for the subscribers of the other shards, while those of the dead one get StoreError, at
    once, until its replica is promoted."""
    client = connect(cluster.url, timeout=0.2)
    store = ProfileStore(client)
    reader = reader_of(client, 0.2)
    profiles = [make_profile(f"gil{n}", f"+1555840{n:04d}", "cpm") for n in range(30)]
    store.put(profiles)
    # A master whose replica runs (an earlier test's failover left a master without one).
    victim = next(
        master
        for master in cluster.masters()
        if int(master.client().info("replication")["connected_slaves"]) > 0
    )
    on_victim = [p for p in profiles if cluster.owner(identity_key(p.subscriber)) is victim]
    elsewhere = [p for p in profiles if p not in on_victim]
    assert on_victim and elsewhere
    assert all(reader.lookup(p.subscriber) == p for p in profiles)  # connected to every shard
    victim.kill()
    with pytest.raises(StoreError):
        reader.lookup(on_victim[0].subscriber)
    started = time.monotonic()
    assert all(reader.lookup(p.subscriber) == p for p in elsewhere)  # served, not held back
    assert time.monotonic() - started < 0.1 * len(elsewhere)
    try:
        found = reader.lookup(on_victim[-1].subscriber)
    except StoreError:
        pass  # refused at once, as long as the dead master's slots have no new owner
    else:  # a loaded machine: the replica took over while the other shards were asked
        assert found == on_victim[-1]
        assert cluster.owner(identity_key(found.subscriber)) is not victim

    def promoted() -> bool:
        assert all(reader.lookup(p.subscriber) == p for p in elsewhere[:3])  # throughout
        try:
            return reader.lookup(on_victim[0].subscriber) == on_victim[0]
        except StoreError:
            return False

    wait_until(promoted, "the promoted replica", timeout=15)
    assert cluster.owner(identity_key(on_victim[0].subscriber)) is not victim
    assert all(reader.lookup(p.subscriber) == p for p in profiles)
    wait_until(cluster.healthy, "every slot served")


def test_only_a_call_to_the_failed_shard_fetches_the_slot_map(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A master paused (no failover: shorter than the node timeout): the calls to the other
    shards go by the map as it is, never waiting on a fetch of it (which may ask the paused
    node first); the next call to the paused shard fetches it, once."""
    client = connect(cluster.url, timeout=0.2)
    store = ProfileStore(client)
    reader = store.reader(make_guard(client, timeout=0.2, slow=0.05, backoff=0.05))
    profiles = [make_profile(f"hil{n}", f"+1555850{n:04d}", "cpm") for n in range(30)]
    store.put(profiles)
    paused = cluster.owner(identity_key(profiles[0].subscriber))
    elsewhere = [p for p in profiles if cluster.owner(identity_key(p.subscriber)) is not paused]
    assert all(reader.lookup(p.subscriber) == p for p in profiles)
    fetches: list[float] = []
    manager = cast(RedisCluster, client).nodes_manager  # redis-py's, the worker's map
    fetch = manager.initialize

    def counted(*args: Any, **options: Any) -> None:
        fetches.append(time.monotonic())
        fetch(*args, **options)

    monkeypatch.setattr(manager, "initialize", counted)
    assert paused.process is not None
    os.kill(paused.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(LateError):
            reader.lookup(profiles[0].subscriber)
        assert all(reader.lookup(p.subscriber) == p for p in elsewhere)
        assert fetches == []
    finally:
        os.kill(paused.process.pid, signal.SIGCONT)
    time.sleep(0.05)  # the backoff
    assert reader.lookup(profiles[0].subscriber) == profiles[0]
    assert len(fetches) == 1


# ---- readiness markers ---------------------------------------------------------------------


def test_each_identity_key_shares_its_slot_with_a_readiness_marker() -> None:
    keys = [identity_key(f"tel:+1555900{n:04d}") for n in range(2000)]
    assert all(key_slot(ready_key(k).encode()) == key_slot(k.encode()) for k in keys)
    assert {ready_key(k) for k in keys} <= set(READY_KEYS)
    assert len({key_slot(k.encode()) for k in keys}) > 1000  # buckets spread over the slots


def test_a_write_marks_the_store_ready_a_partial_one_does_not(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/5")
    client.flushdb()
    store = ProfileStore(connect(f"redis://127.0.0.1:{redis_server.port}/5", timeout=1.0))
    store.put([make_profile("gus", "+15559100001", "cpm")], ready=False)
    assert client.exists(*READY_KEYS) == 0
    store.put([make_profile("hal", "+15559100002", "cpm")])
    assert client.exists(*READY_KEYS) == len(READY_KEYS)
    client.delete(*READY_KEYS[1:100])  # buckets lost (a Cluster shard): a write leaves them
    store.put([make_profile("ian", "+15559100003", "cpm")])
    assert client.exists(*READY_KEYS) == len(READY_KEYS) - 99
    store.mark_ready()
    assert client.exists(*READY_KEYS) == len(READY_KEYS)
    client.flushdb()


def test_cluster_markers_are_on_every_shard(cluster: Cluster) -> None:
    ProfileStore(connect(cluster.url, timeout=0.5)).mark_ready()
    counts = [
        sum(1 for _ in master.client().scan_iter(match="cpmiw:2:{*}:ready", count=1000))
        for master in cluster.masters()
    ]
    assert sum(counts) == len(READY_KEYS) and min(counts) > len(READY_KEYS) / 5


# ---- AS markers honoured -----------------------------------------------------------------------


def test_a_marker_is_honoured_once_for_every_reader_of_the_record(
    redis_server: RedisServer,
) -> None:
    """Two proxies' records (two clients) of one Redis: the second use anywhere is a replay."""
    first = HonouredMarkers(Connections(connect(redis_server.url, 0.5)).execute, marker_ttl=2)
    other = HonouredMarkers(Connections(connect(redis_server.url, 0.5)).execute, marker_ttl=2)
    nonce = f"n{time.monotonic_ns()}"
    assert first.first_use(nonce)
    assert not other.first_use(nonce)
    assert not first.first_use(nonce)
    ttl = redis_server.client().ttl(f"cpmiw:2:marker:{nonce}")
    assert 2 < ttl <= 2 + CLOCK_SKEW  # kept past the marker's own life, then forgotten
