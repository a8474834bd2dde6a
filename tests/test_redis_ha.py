"""Redis Sentinel and Redis Cluster behind one URL: the store, the workers' own connections, the
change watcher and the CLI on real `redis-server` / `redis-sentinel` processes (testing/topology).

A master is killed (SIGKILL) and the same objects go on against the new one: nothing is made
again, as in a Kamailio worker that is not restarted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from cpmiw.ops.cli import main
from cpmiw.store.profiles import ProfileStore, Stamp
from cpmiw.store.redis import StoreError, UrlError, connect, parse_url
from cpmiw.testing import make_profile, wait_until
from cpmiw.testing.topology import SentinelSet, sentinel_set

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
    store = ProfileStore(connect(sentinels.url, timeout=0.2))
    reader = store.reader()
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
    store = ProfileStore(connect("redis+sentinel://127.0.0.1:1,127.0.0.1:2/cpmiw", 0.05))
    started = time.monotonic()
    with pytest.raises(StoreError):
        store.reader().lookup("tel:+1")
    with pytest.raises(StoreError):
        store.lookup("tel:+1")
    assert time.monotonic() - started < 1.0
