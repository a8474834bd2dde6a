"""Lost or broken profile data through the real Kamailio: never taken for "no such user".

A Redis restarted empty (or wiped) answers every subscriber 503 "store not ready", with a log
line and a metric, until its data is back or the store is marked ready on purpose; one
subscriber's bad data (a key of another type, bytes that are no profile, a profile stored under
an identity it does not list, one that fails validation) answers that subscriber 503 with a log
line naming it, and nobody else notices: no breaker opens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from test_metrics import moved, scrape
from test_outage import warm_up

from conftest import CPM_PAGER, Network, make_network, start_redis
from cpmiw.core import profile as profile_model
from cpmiw.core.profile import Profile
from cpmiw.core.routing import NotReadyError
from cpmiw.ops.cli import main
from cpmiw.store.layout import identity_key
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import connect
from cpmiw.testing import make_profile
from cpmiw.testing.sipnet import Peer


@pytest.fixture
def own_network(log_dir: Path) -> Iterator[Network]:
    """Kamailio with a Redis of its own, which the tests restart empty or break."""
    server = start_redis()
    try:
        yield from make_network(server, log_dir)
    finally:
        server.stop()


def ask(net: Network, profile: Profile | str) -> tuple[int, str | None]:
    """A CPM MESSAGE to `profile` (or a URI): its status and Retry-After, once the proxy has
    logged (and counted) its decision, which a worker does after answering."""
    ruri = profile if isinstance(profile, str) else profile.registration_aor
    with Peer() as caller:
        request = caller.request("MESSAGE", ruri, headers=CPM_PAGER)
        answer = caller.ask(request, net.kamailio.address)
    net.kamailio.decision_lines(request.header("Call-ID") or "")
    return answer.status, answer.header("Retry-After")


def barred(user: str, number: str) -> Profile:
    return make_profile(user, number, "cpm", barred=True)  # 403 whenever its profile is read


def test_a_redis_restarted_empty_answers_503_until_its_data_is_back(
    own_network: Network,
) -> None:
    net = own_network
    cached, other = barred("kept", "+15557770001"), barred("lost", "+15557770002")
    net.provision(cached, other)
    with Peer() as first, Peer() as second:
        warm_up(net, (first, second), cached)  # cached by both workers
    before = scrape(net.kamailio.metrics_url)
    net.redis.stop()
    net.redis.start()  # no persistence: empty
    nobody = "sip:nobody@ims.example.net"
    assert ask(net, other) == (503, "30")
    assert ask(net, nobody) == (503, "30")  # not 404: the store's silence says nothing now
    assert ask(net, cached)[0] == 403  # what a worker holds is the best there is meanwhile
    log = net.kamailio.wait_for_log("profile store not ready")
    assert f"profile of {other.subscriber} unavailable: profile store not ready" in log
    assert "rule=store-not-ready status=503" in log
    after = scrape(net.kamailio.metrics_url)
    assert moved(before, after, "cpmiw_profile_lookups_total").get(("not-ready",), 0) >= 2
    assert ("store-not-ready",) in moved(before, after, "cpmiw_decision_rules_total")
    assert not moved(before, after, "cpmiw_redis_breaker_opened_total")  # Redis answered
    net.provision(other)  # the data restored through the tool marks the store ready
    assert ask(net, other)[0] == 403
    assert ask(net, nobody)[0] == 404


def test_a_store_meant_to_be_empty_is_marked_ready_with_the_tool(
    own_network: Network,
) -> None:
    net = own_network
    net.redis.client().flushall()
    nobody = "sip:nobody@ims.example.net"
    assert ask(net, nobody)[0] == 503
    env = {"CPMIW_REDIS_URL": net.redis.url}
    status = CliRunner().invoke(main, ["-F", "json", "store", "status"], env=env)
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["state"] == "not ready"
    marked = CliRunner().invoke(main, ["store", "ready"], env=env)
    assert marked.exit_code == 0, marked.output
    assert "4096 of 4096 buckets were not" in marked.stderr
    status = CliRunner().invoke(main, ["store", "status"], env=env)
    assert status.stdout.startswith("ready: 4096 of 4096")
    assert ask(net, nobody)[0] == 404


def test_one_subscribers_bad_data_fails_that_subscriber_alone(own_network: Network) -> None:
    net = own_network
    good = barred("good", "+15557770010")
    wrong_type, not_json, elsewhere, invalid = (
        barred(name, f"+155577700{n}")
        for n, name in ((11, "listy"), (12, "binary"), (13, "moved"), (14, "twice"))
    )
    net.provision(good, wrong_type, not_json, elsewhere, invalid)
    client = net.redis.client()
    key = identity_key(wrong_type.subscriber)
    client.delete(key)
    client.rpush(key, "a list, set by hand")
    client.set(identity_key(not_json.subscriber), b"\xff\xfe\x00 not a profile")
    client.set(identity_key(elsewhere.subscriber), profile_model.encode(good))
    twice = {**msgspec.to_builtins(invalid), "services": ["cpm", "cpm"]}
    client.set(identity_key(invalid.subscriber), json.dumps(twice))
    before = scrape(net.kamailio.metrics_url)
    for bad in (wrong_type, not_json, elsewhere, invalid):
        assert ask(net, bad) == (503, "30")
        assert ask(net, good)[0] == 403  # between each: nobody else notices
    log = net.kamailio.log()
    reasons = {
        wrong_type.subscriber: "its key holds a list, not a profile",
        not_json.subscriber: "not JSON",
        elsewhere.subscriber: f"the profile stored under it is {good.subscriber}'s",
        invalid.subscriber: "services: a service listed twice",
    }
    for name, reason in reasons.items():
        line = next(ln for ln in log.splitlines() if f"profile of {name} unavailable" in ln)
        assert reason in line
    after = scrape(net.kamailio.metrics_url)
    assert moved(before, after, "cpmiw_profile_lookups_total")[("invalid",)] >= 4
    assert not moved(before, after, "cpmiw_redis_breaker_opened_total")
    # The tool tells the same, naming the subscriber.
    env = {"CPMIW_REDIS_URL": net.redis.url}
    shown = CliRunner().invoke(main, ["profile", "get", wrong_type.registration_aor], env=env)
    assert shown.exit_code == 4 and "holds a list" in shown.stderr


def test_the_tool_reads_a_wiped_store_as_not_ready() -> None:
    """`cpmiw explain` and the store decide as the proxy does: not ready, not "nobody"."""
    server = start_redis()
    try:
        store = ProfileStore(connect(server.url, 1.0))
        with pytest.raises(NotReadyError):
            store.lookup("sip:nobody@ims.example.net")
        env = {"CPMIW_REDIS_URL": server.url}
        explained = CliRunner().invoke(
            main,
            ["explain", "--no-registrations", "-s", "cpm.msg", "sip:nobody@ims.example.net"],
            env=env,
        )
        assert explained.exit_code == 0, explained.output
        assert "store-not-ready" in explained.stdout
        assert store.delete("sip:nobody@ims.example.net") is False
    finally:
        server.stop()
