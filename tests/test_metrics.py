"""Prometheus metrics: summed over Kamailio's worker processes, scraped over HTTP from the live
proxy, and moved by exactly the traffic sent.

The integration test has a Kamailio and a Redis of its own, so that no request left over by
another test (an AS transaction timing out, say) can move a counter while it counts.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import DOMAIN, Network, RedisServer, make_network, start_redis
from cpmiw import metrics
from cpmiw.profile import Profile
from cpmiw.sipnet import Peer, SipMessage
from cpmiw.testing import make_profile

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
CPM_MSG = '*;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg"'
CPM_SESSION = '*;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session"'
STALE = 1000.0  # a counter value left by an earlier run; setup() must wipe it


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.headers["Content-Type"] == metrics.CONTENT_TYPE
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def moved(before: Samples, after: Samples, name: str) -> dict[tuple[str, ...], float]:
    """The label values (sorted by label name) of `name`'s samples that changed, with the delta."""
    return {
        tuple(value for _, value in labels): value - before.get((sample, labels), 0.0)
        for (sample, labels), value in after.items()
        if sample == name and value != before.get((sample, labels), 0.0)
    }


def _leave_stale_file(directory: Path) -> None:
    """What a crashed earlier run leaves: a worker's counter file, and a file that is not one."""
    directory.mkdir(parents=True)
    (directory / "README").write_text("not a metrics file: stays\n")
    script = (
        "from prometheus_client import Counter\n"
        "Counter('cpmiw_requests', '', ['method', 'service', 'outcome'])"
        f".labels('MESSAGE', 'cpm.msg', 'deliver').inc({STALE})\n"
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    assert list(directory.glob("counter_*.db"))


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def metered(own_redis: RedisServer, log_dir: Path) -> Iterator[Network]:
    directory = log_dir / f"metrics-stale-{secrets.token_hex(3)}"
    _leave_stale_file(directory)
    yield from make_network(own_redis, log_dir, {"CPMIW_METRICS_DIR": str(directory)})


def subscriber(net: Network, services: str, **fields: object) -> Profile:
    profile = make_profile(
        f"m{secrets.token_hex(4)}", f"+1558{secrets.randbelow(10**7):07d}", services, **fields
    )
    net.provision(profile)
    return profile


def message(caller: Peer, uri: str) -> SipMessage:
    return caller.request(
        "MESSAGE", uri, headers=[("Accept-Contact", CPM_MSG), ("Content-Type", "text/plain")]
    )


def test_counters_move_by_exactly_the_traffic_sent(metered: Network) -> None:
    net = metered
    cpm, im, sms = subscriber(net, "cpm"), subscriber(net, "im"), subscriber(net, "sms")
    barred, nothing = subscriber(net, "cpm", barred=True), subscriber(net, "")
    erin = subscriber(net, "im", interworking="im_as")
    before = scrape(net.kamailio.metrics_url)
    with Peer("127.0.0.5") as ue, Peer() as a, Peer() as b, Peer() as c:
        for profile in (cpm, im, erin):
            assert ue.register(net.kamailio.address, profile.registration_aor).status == 200
        # three at once, so that more than one worker process counts
        sent = [(peer, message(peer, cpm.registration_aor)) for peer in (a, b, c)]
        for peer, request in sent:
            peer.send(request, net.kamailio.address)
        for _ in sent:
            ue.reply(ue.recv_request("MESSAGE"), 200, "OK")
        assert [peer.recv_response().status for peer, _ in sent] == [200, 200, 200]
        for _ in range(2):
            a.send(message(a, im.registration_aor), net.kamailio.address)
            ue.reply(ue.recv_request("MESSAGE"), 200, "OK")
            assert a.recv_response().status == 200
        a.send(message(a, sms.identities[1]), net.kamailio.address)
        net.ip_sm_gw.reply(net.ip_sm_gw.recv_request("MESSAGE"), 202, "Accepted")
        assert a.recv_response().status == 202
        # the IM AS fails: default handling `continue` delivers with the tag rewritten
        a.send(message(a, erin.registration_aor), net.kamailio.address)
        net.im_as.reply(net.im_as.recv_request("MESSAGE"), 500, "Server Error")
        ue.reply(ue.recv_request("MESSAGE"), 200, "OK")
        assert a.recv_response().status == 200
        rejected = [
            (f"sip:nobody-{secrets.token_hex(3)}@{DOMAIN}", 404),
            (f"sip:nobody-{secrets.token_hex(3)}@{DOMAIN}", 404),
            (barred.registration_aor, 403),
        ]
        for uri, status in rejected:
            assert a.ask(message(a, uri), net.kamailio.address).status == status
        invite = a.request(
            "INVITE", nothing.registration_aor, headers=[("Accept-Contact", CPM_SESSION)]
        )
        assert a.ask(invite, net.kamailio.address).status == 488
        options = a.request("OPTIONS", "sip:someone@elsewhere.example.org")
        assert a.ask(options, net.kamailio.address).status == 403
    after = scrape(net.kamailio.metrics_url)

    assert moved(before, after, "cpmiw_requests_total") == {
        ("MESSAGE", "deliver", "cpm.msg"): 3,
        ("MESSAGE", "rewrite", "cpm.msg"): 3,  # two to the IM user, one after the AS failed
        ("MESSAGE", "to-ip-sm-gw", "cpm.msg"): 1,
        ("MESSAGE", "to-im-as", "cpm.msg"): 1,
        ("MESSAGE", "reject", "cpm.msg"): 3,
        ("INVITE", "reject", "cpm.session"): 1,
        ("OPTIONS", "reject", "none"): 1,
    }
    assert moved(before, after, "cpmiw_rejects_total") == {
        ("404",): 2,
        ("403",): 2,
        ("488",): 1,
    }
    assert moved(before, after, "cpmiw_decision_rules_total") == {
        ("subscribed",): 3,
        ("interworking-rewrite",): 2,
        ("interworking-im_as",): 1,
        ("as-failed-continue",): 1,
        ("sms-interworking",): 1,
        ("unknown-recipient",): 2,
        ("barred",): 1,
        ("no-service",): 1,
        ("foreign-domain",): 1,
    }
    assert moved(before, after, "cpmiw_as_default_handling_total") == {("continue",): 1}
    assert moved(before, after, "cpmiw_decision_seconds_count") == {(): 13}
    lookups = moved(before, after, "cpmiw_profile_lookups_total")
    assert sum(lookups.values()) == 12  # every decision but the foreign one looked up once
    assert ("error",) not in lookups and lookups.get(("miss",), 0) >= 1
    assert moved(before, after, "cpmiw_redis_seconds_count")[()] >= lookups[("miss",)]
    assert moved(before, after, "cpmiw_redis_errors_total") == {}
    assert after["cpmiw_shadow_mode", ()] == 0
    # more than one worker process routed, and the sums include all of them
    pids = {
        m.group(1)
        for line in net.kamailio.log().splitlines()
        if (m := re.match(r"\s*\d+\((\d+)\) INFO: .*cpmiw: call-id=", line))
    }
    assert len(pids) >= 2, pids


def test_redis_errors_and_503_are_counted(metered: Network, own_redis: RedisServer) -> None:
    net = metered
    uri = f"sip:gone-{secrets.token_hex(3)}@{DOMAIN}"  # never looked up: not in any cache
    before = scrape(net.kamailio.metrics_url)
    own_redis.stop()
    try:
        with Peer() as caller:
            assert caller.ask(message(caller, uri), net.kamailio.address).status == 503
    finally:
        own_redis.start()
    after = scrape(net.kamailio.metrics_url)
    assert moved(before, after, "cpmiw_redis_errors_total") == {(): 1}
    assert moved(before, after, "cpmiw_profile_lookups_total") == {("error",): 1}
    assert moved(before, after, "cpmiw_rejects_total") == {("503",): 1}


def test_metrics_directory_is_wiped_at_start_but_only_of_metrics_files(metered: Network) -> None:
    samples = scrape(metered.kamailio.metrics_url)
    labels = (("method", "MESSAGE"), ("outcome", "deliver"), ("service", "cpm.msg"))
    assert samples.get(("cpmiw_requests_total", labels), 0.0) < STALE
    log_dir = metered.kamailio.log_path.parent
    assert [p.name for p in log_dir.glob("metrics-stale-*/README")] == ["README"]


def test_http_answers_only_metrics_on_the_metrics_listener(metered: Network) -> None:
    kamailio = metered.kamailio
    other = f"http://127.0.0.1:{kamailio.metrics_port}/other"
    on_sip_port = f"http://127.0.0.1:{kamailio.port}/metrics"
    for url, status in ((other, 404), (on_sip_port, 403)):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(url, timeout=5)
        assert error.value.code == status


FORKED = """
import os, sys
from cpmiw import metrics
metrics.setup(sys.argv[1], shadow=True)
children = []
for method in ("MESSAGE", "FROBNICATE"):
    pid = os.fork()
    if pid == 0:
        metrics.observe_decision(method, "cpm.msg", "deliver", "subscribed", 0, 0.0003)
        metrics.count_lookup("hit")
        metrics.observe_redis(0.002, True)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
sys.stdout.write(metrics.render()[1].decode())
"""


def test_values_of_forked_processes_are_summed_and_labels_bounded(tmp_path: Path) -> None:
    """What Kamailio does, without Kamailio: setup in the parent, events in forked children."""
    result = subprocess.run(
        [sys.executable, "-c", FORKED, str(tmp_path)], capture_output=True, text=True, check=True
    )
    samples = Counter(
        {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(result.stdout)
            for s in family.samples
        }
    )
    requests = {k[1][0][1]: v for k, v in samples.items() if k[0] == "cpmiw_requests_total"}
    assert requests == {"MESSAGE": 1.0, "other": 1.0}  # an invented method is not a label value
    assert samples["cpmiw_profile_lookups_total", (("result", "hit"),)] == 2
    assert samples["cpmiw_redis_errors_total", ()] == 2
    assert samples["cpmiw_decision_seconds_bucket", (("le", "0.0005"),)] == 2
    assert samples["cpmiw_decision_seconds_bucket", (("le", "0.00025"),)] == 0
    assert samples["cpmiw_shadow_mode", ()] == 1  # set in the parent, kept over the children


def test_before_setup_reporting_is_a_no_op() -> None:
    """The CLI and the unit tests import the adapter's modules without a metrics directory."""
    metrics.count_lookup("hit")
    metrics.observe_redis(0.001, False)
    assert metrics.render() == (metrics.CONTENT_TYPE, b"")
    assert metrics.serve("/metrics")[0] == 200
    assert metrics.serve("/")[:2] == (404, "Not Found")
