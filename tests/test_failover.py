"""Failover under load, with real processes on loopback: a Redis master killed (Sentinel, then
Cluster) and a proxy killed, while a caller offers MESSAGEs at a steady rate (testing/load).

Short versions of `bench/run failover` (bench/README.md has the full figures): a few seconds of
load each. What must hold: no request unanswered; recipients looked up before the kill are
served throughout; the others get 503 with Retry-After only until Redis (or the other proxy)
serves again, with Kamailio not restarted; profiles written with the CLI before the kill are
there after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from click.testing import CliRunner

from conftest import CPM_PAGER, TRUSTED_REGISTRAR, Kamailio, _stop, start_kamailio
from cpmiw.core.profile import Profile
from cpmiw.ops.cli import main
from cpmiw.store.layout import identity_key
from cpmiw.testing import make_profile, wait_until
from cpmiw.testing.load import Devices, Load, Outcome, by_status, full_service_after
from cpmiw.testing.sipnet import Peer
from cpmiw.testing.topology import redis_cluster, sentinel_set

RATE = 200  # MESSAGE/s offered to the recipients looked up before the kill
ENV = {
    "CPMIW_WORKERS": "1",  # one cache: "looked up before" is then certain
    "CPMIW_REDIS_TIMEOUT_MS": "50",
    "CPMIW_REDIS_BACKOFF_MS": "200",
    "CPMIW_TRUSTED_REGISTRARS": TRUSTED_REGISTRAR,
}


def _profiles(prefix: str, count: int) -> list[Profile]:
    stamp = time.monotonic_ns() % 10**5
    return [
        make_profile(f"{prefix}{stamp}x{n}", f"+1556{stamp:05d}{n:03d}", "cpm")
        for n in range(count)
    ]


def _import(url: str, profiles: Sequence[Profile], tmp_path: Path) -> None:
    """Written with the CLI, as an operator provisions them."""
    rows = "".join(f"{' '.join(p.identities)},cpm\n" for p in profiles)
    path = tmp_path / f"profiles-{time.monotonic_ns()}.csv"
    path.write_text("identities,services\n" + rows)
    done = CliRunner().invoke(main, ["profile", "import", str(path)], env={"CPMIW_REDIS_URL": url})
    assert done.exit_code == 0, done.output


@contextmanager
def _proxy(url: str, log_dir: Path) -> Iterator[Kamailio]:
    with Peer("127.0.0.3") as im_as, Peer("127.0.0.4") as ip_sm_gw:
        kamailio = start_kamailio(
            {
                **ENV,
                "CPMIW_REDIS_URL": url,
                "CPMIW_IM_AS": im_as.uri,
                "CPMIW_IP_SM_GW": ip_sm_gw.uri,
            },
            log_dir,
        )
        try:
            yield kamailio
        finally:
            _stop(kamailio.process)


def _warm(kamailio: Kamailio, profiles: Sequence[Profile]) -> None:
    """Each recipient looked up once (then cached in the worker)."""
    with Peer() as caller:
        for profile in profiles:
            request = caller.request("MESSAGE", profile.registration_aor, headers=CPM_PAGER)
            assert caller.ask(request, kamailio.address).status == 200


def _report(name: str, cached: list[Outcome], fresh: list[Outcome]) -> float:
    """Prints the figures; the seconds from the kill until every request was served."""
    recovered = full_service_after(fresh, 0.0)
    failed = sum(1 for o in fresh if o.status == 503)
    print(
        f"\n{name}: looked up before {by_status(cached)}, slowest"
        f" {max(o.took for o in cached) * 1000:.0f} ms; first looked up after the kill"
        f" {by_status(fresh)}; full service {recovered} s after the kill ({failed} x 503)"
    )
    assert recovered is not None, f"{name}: never served again"
    return recovered


def _run(
    kamailio: Kamailio,
    cached: Sequence[Profile],
    fresh: Sequence[Profile],
    kill: Callable[[], None],
    seconds: float,
) -> tuple[list[Outcome], list[Outcome]]:
    """Load to `cached` recipients; the kill after 1 s; from the kill on, load to `fresh`
    recipients too (their outcomes timed from the kill), for `seconds`, and on until they have
    been served again for a second: how long Redis takes to fail over depends on the machine's
    load (its elections, its gossip), which the figures must not cut short."""
    pid = kamailio.process.pid
    load = Load(kamailio.address, [p.registration_aor for p in cached], RATE, CPM_PAGER).start()
    time.sleep(1.0)
    kill()
    after = Load(kamailio.address, [p.registration_aor for p in fresh], RATE // 2, CPM_PAGER)
    after.start()
    time.sleep(seconds)
    wait_until(lambda: _served_again(after.outcomes), "served again", timeout=30)
    outcomes, later = load.stop(drain=3.0), after.stop(drain=3.0)
    assert kamailio.process.poll() is None and kamailio.process.pid == pid  # never restarted
    return outcomes, later


def _served_again(outcomes: Sequence[Outcome], stretch: float = 1.0) -> bool:
    """Whether every request sent for `stretch` s after the last failure so far got 200, and
    one sent after that too."""
    outcomes = list(outcomes)  # the load's thread adds to it
    answered = [o for o in outcomes if o.status is not None]
    since = max((o.sent for o in answered if o.status != 200), default=0.0) + stretch
    return all(o.status is not None for o in outcomes if o.sent < since) and any(
        o.sent >= since and o.status == 200 for o in answered
    )


def test_sentinel_master_killed_under_load(log_dir: Path, tmp_path: Path) -> None:
    with sentinel_set() as sentinels, _proxy(sentinels.url, log_dir) as kamailio:
        cached, fresh = _profiles("sc", 20), _profiles("sf", 20)
        _import(sentinels.url, [*cached, *fresh], tmp_path)
        devices = Devices()
        devices.register(kamailio.address, [p.registration_aor for p in [*cached, *fresh]])
        devices.start()
        try:
            _warm(kamailio, cached)
            before, after = _run(kamailio, cached, fresh, sentinels.master().kill, seconds=4.0)
            # The change stream is followed on the new master: a profile changed now is seen.
            env = {"CPMIW_REDIS_URL": sentinels.url}
            done = CliRunner().invoke(
                main, ["profile", "set", cached[0].subscriber, "--barred"], env=env
            )
            assert done.exit_code == 0, done.output
            barred = _status_until(kamailio, cached[0], 403)
        finally:
            devices.stop()
    assert by_status(before) == {200: len(before)}  # cached: served throughout, all answered
    assert None not in by_status(after)  # every request answered
    assert set(by_status(after)) <= {200, 503}
    recovered = _report("sentinel", before, after)
    assert recovered < 8.0
    assert barred


def test_cluster_master_killed_under_load(log_dir: Path, tmp_path: Path) -> None:
    with redis_cluster() as cluster, _proxy(cluster.url, log_dir) as kamailio:
        cached, fresh = _profiles("cc", 20), _profiles("cf", 60)
        _import(cluster.url, [*cached, *fresh], tmp_path)
        victim = cluster.masters()[0]
        on_victim = {
            p.registration_aor for p in fresh if cluster.owner(identity_key(p.subscriber)) is victim
        }
        assert 0 < len(on_victim) < len(fresh)  # spread: some on the shard killed, some not
        devices = Devices()
        devices.register(kamailio.address, [p.registration_aor for p in [*cached, *fresh]])
        devices.start()
        try:
            _warm(kamailio, cached)
            before, after = _run(kamailio, cached, fresh, victim.kill, seconds=4.0)
        finally:
            devices.stop()
    assert by_status(before) == {200: len(before)}
    assert None not in by_status(after)
    elsewhere = [o for o in after if o.recipient not in on_victim]
    # Shards that lived served at once, but for the breaker a failure on the dead shard opened.
    assert set(by_status(elsewhere)) <= {200, 503}
    assert _report("cluster", before, after) < 8.0


def _status_until(kamailio: Kamailio, profile: Profile, status: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    with Peer() as caller:
        while time.monotonic() < deadline:
            request = caller.request("MESSAGE", profile.registration_aor, headers=CPM_PAGER)
            if caller.ask(request, kamailio.address).status == status:
                return True
            time.sleep(0.05)
    return False
