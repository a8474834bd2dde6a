"""Prometheus metrics: summed over Kamailio's worker processes, scraped over HTTP from the live
proxy, and moved by exactly the traffic sent; the per-process tally files, unit by unit.

The integration test has a Kamailio and a Redis of its own, so that no request left over by
another test (an AS transaction timing out, say) can move a counter while it counts.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import DOMAIN, Network, RedisServer, make_network, start_redis
from cpmiw import metrics
from cpmiw.core.message import SipMessage
from cpmiw.core.profile import Profile
from cpmiw.testing import make_profile
from cpmiw.testing.sipnet import Peer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
CPM_MSG = '*;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg"'
CPM_SESSION = '*;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session"'
STALE = 1000.0  # a counter value left by an earlier run; setup() must wipe it


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.headers["Content-Type"] == metrics.CONTENT_TYPE
        return parse(answer.read().decode())


def moved(before: Samples, after: Samples, name: str) -> dict[tuple[str, ...], float]:
    """The label values (sorted by label name) of `name`'s samples that changed, with the delta."""
    return {
        tuple(value for _, value in labels): value - before.get((sample, labels), 0.0)
        for (sample, labels), value in after.items()
        if sample == name and value != before.get((sample, labels), 0.0)
    }


# A process of an earlier run that counted STALE requests and died without cleaning up.
STALE_TALLY = f"""
import sys
from cpmiw import metrics
metrics.setup(sys.argv[1])
for _ in range({STALE:.0f}):
    metrics.observe_decision("MESSAGE", "cpm.msg", "deliver", "subscribed", 0, 0.0001)
"""
# The same, by a version that counted with prometheus_client's multiprocess mode (*.db files).
STALE_DB = f"""
from prometheus_client import Counter
Counter("cpmiw_requests", "", ["method", "service", "outcome"]).labels(
    "MESSAGE", "cpm.msg", "deliver"
).inc({STALE})
"""


def _leave_stale_file(directory: Path) -> None:
    """What a crashed earlier run leaves: a worker's counter files, and a file that is not one."""
    directory.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", STALE_TALLY, str(directory)], check=True)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", STALE_DB], env=env, check=True)
    (directory / "README").write_text("not a metrics file: stays\n")
    assert list(directory.glob("tally-*.keys")) and list(directory.glob("counter_*.db"))


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def metrics_dir(log_dir: Path) -> Path:
    directory = log_dir / f"metrics-stale-{secrets.token_hex(3)}"
    _leave_stale_file(directory)
    return directory


@pytest.fixture(scope="module")
def metered(own_redis: RedisServer, log_dir: Path, metrics_dir: Path) -> Iterator[Network]:
    yield from make_network(own_redis, log_dir, {"CPMIW_METRICS_DIR": str(metrics_dir)})


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


def test_counters_move_by_exactly_the_traffic_sent(metered: Network, metrics_dir: Path) -> None:
    net = metered
    cpm, im, sms = subscriber(net, "cpm"), subscriber(net, "im"), subscriber(net, "sms")
    barred, nothing = subscriber(net, "cpm", barred=True), subscriber(net, "")
    erin = subscriber(net, "im", interworking="im_as")
    before = scrape(net.kamailio.metrics_url)
    # Each request's decisions, counted by the worker before it logs them, after it relayed or
    # answered: the scrape waits for those lines.
    decisions: Counter[str] = Counter()

    def logged(request: SipMessage, count: int = 1) -> SipMessage:
        decisions[request.header("Call-ID") or ""] += count
        return request

    with Peer("127.0.0.5") as ue, Peer() as a, Peer() as b, Peer() as c:
        for profile in (cpm, im, erin):
            assert ue.register(net.kamailio.address, profile.registration_aor).status == 200
        # three at once, so that more than one worker process counts
        sent = [(peer, logged(message(peer, cpm.registration_aor))) for peer in (a, b, c)]
        for peer, request in sent:
            peer.send(request, net.kamailio.address)
        for _ in sent:
            ue.reply(ue.recv_request("MESSAGE"), 200, "OK")
        assert [peer.recv_response().status for peer, _ in sent] == [200, 200, 200]
        for _ in range(2):
            a.send(logged(message(a, im.registration_aor)), net.kamailio.address)
            ue.reply(ue.recv_request("MESSAGE"), 200, "OK")
            assert a.recv_response().status == 200
        a.send(logged(message(a, sms.identities[1])), net.kamailio.address)
        net.ip_sm_gw.reply(net.ip_sm_gw.recv_request("MESSAGE"), 202, "Accepted")
        assert a.recv_response().status == 202
        # the IM AS fails: default handling `continue` delivers with the tag rewritten
        a.send(logged(message(a, erin.registration_aor), 2), net.kamailio.address)
        net.im_as.reply(net.im_as.recv_request("MESSAGE"), 500, "Server Error")
        ue.reply(ue.recv_request("MESSAGE"), 200, "OK")
        assert a.recv_response().status == 200
        rejected = [
            (f"sip:nobody-{secrets.token_hex(3)}@{DOMAIN}", 404),
            (f"sip:nobody-{secrets.token_hex(3)}@{DOMAIN}", 404),
            (barred.registration_aor, 403),
        ]
        for uri, status in rejected:
            assert a.ask(logged(message(a, uri)), net.kamailio.address).status == status
        invite = a.request(
            "INVITE", nothing.registration_aor, headers=[("Accept-Contact", CPM_SESSION)]
        )
        assert a.ask(logged(invite), net.kamailio.address).status == 488
        options = a.request("OPTIONS", "sip:someone@elsewhere.example.org")
        assert a.ask(logged(options), net.kamailio.address).status == 403
    for call_id, count in decisions.items():
        net.kamailio.decision_lines(call_id, count)
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
    # The second message to the IM user is replayed by kamailio.cfg (the plugin delivered the
    # same request before); those to the CPM user may be, depending on which arrives first.
    replayed = moved(before, after, "cpmiw_replayed_total")[()]
    assert 1 <= replayed <= 3
    assert moved(before, after, "cpmiw_decision_seconds_count")[()] + replayed == 13
    lookups = moved(before, after, "cpmiw_profile_lookups_total")
    # Every request the plugin routed but the foreign one looked up once; the AS's failover
    # carries out the plan made for its request, without a look-up of its own.
    assert sum(lookups.values()) + replayed == 11
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
    # each of them in files of its own, not in those of the main process they were forked from
    assert pids <= {p.name.split(".")[0].split("-")[1] for p in metrics_dir.glob("tally-*.keys")}


def test_redis_errors_and_503_are_counted(metered: Network, own_redis: RedisServer) -> None:
    net = metered
    uri = f"sip:gone-{secrets.token_hex(3)}@{DOMAIN}"  # never looked up: not in any cache
    before = scrape(net.kamailio.metrics_url)
    own_redis.stop()
    try:
        with Peer() as caller:
            request = message(caller, uri)
            assert caller.ask(request, net.kamailio.address).status == 503
    finally:
        own_redis.start()
    net.kamailio.decision_lines(request.header("Call-ID") or "")  # counted, then logged
    after = scrape(net.kamailio.metrics_url)
    assert moved(before, after, "cpmiw_redis_errors_total") == {(): 1}
    assert moved(before, after, "cpmiw_profile_lookups_total") == {("error",): 1}
    assert moved(before, after, "cpmiw_rejects_total") == {("503",): 1}


def test_metrics_directory_is_wiped_at_start_but_only_of_metrics_files(
    metered: Network, metrics_dir: Path
) -> None:
    samples = scrape(metered.kamailio.metrics_url)
    labels = (("method", "MESSAGE"), ("outcome", "deliver"), ("service", "cpm.msg"))
    assert samples.get(("cpmiw_requests_total", labels), 0.0) < STALE
    assert (metrics_dir / "README").exists()
    assert not list(metrics_dir.glob("*.db"))


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
    requests: Counter[str] = Counter()
    for (name, labels), value in samples.items():
        if name == "cpmiw_requests_total":
            requests[dict(labels)["method"]] += value
    assert set(requests) == {*metrics.METHODS, "other"}  # an invented method is not a label value
    assert +requests == {"MESSAGE": 1.0, "other": 1.0}
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


# The tally, unit by unit: set up in this process, in a directory of the test's own.


@pytest.fixture
def tally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """metrics.setup() in tmp_path; the module is as it was (not set up) after the test."""
    for name in ("_directory", "_tally", "_slots", "_view"):
        monkeypatch.setattr(metrics, name, getattr(metrics, name))
    metrics.setup(str(tmp_path))
    return tmp_path


def rendered() -> Samples:
    content_type, body = metrics.render()
    assert content_type == metrics.CONTENT_TYPE
    return parse(body.decode())


def in_child(*events: Callable[[], None]) -> int:
    """The pid of a forked child that reported `events` and exited."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for event in events:
                event()
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    return pid


def tally_pids(directory: Path) -> set[int]:
    return {int(p.name.split(".")[0].split("-")[1]) for p in directory.glob("tally-*.keys")}


HIT = ("cpmiw_profile_lookups_total", (("result", "hit"),))
MISS = ("cpmiw_profile_lookups_total", (("result", "miss"),))


def test_tally_sums_the_files_of_every_process(tally: Path) -> None:
    metrics.count_lookup("hit")
    one = in_child(lambda: metrics.count_lookup("hit"), lambda: metrics.count_lookup("miss"))
    two = in_child(lambda: metrics.count_lookup("hit"), lambda: metrics.count_lookup("hit"))
    samples = rendered()
    assert (samples[HIT], samples[MISS]) == (4, 1)
    assert tally_pids(tally) == {os.getpid(), one, two}  # the children's files outlive them


def test_a_forked_child_counts_in_its_own_file_not_its_parents(tally: Path) -> None:
    """The child inherits the parent's series (and slots): the fork handler makes it forget."""
    metrics.count_lookup("hit")
    child = in_child(lambda: metrics.count_lookup("hit"), lambda: metrics.count_lookup("hit"))
    assert rendered()[HIT] == 3
    by_pid = {
        int(path.name.split(".")[0].split("-")[1]): dict(metrics._read(path))
        for path in tally.glob("tally-*.keys")
    }
    assert by_pid[os.getpid()][("cpmiw_profile_lookups", "hit")] == [1.0]
    assert by_pid[child][("cpmiw_profile_lookups", "hit")] == [2.0]
    metrics.count_lookup("hit")  # and the parent goes on counting in its own
    assert rendered()[HIT] == 4


def test_histogram_buckets_are_cumulative(tally: Path) -> None:
    for seconds in (0.00005, 0.0003, 0.0003, 1.0):  # a bound itself counts in its bucket
        metrics.observe_redis(seconds, False)
    in_child(lambda: metrics.observe_redis(0.002, True))
    samples = rendered()
    buckets = {
        dict(labels)["le"]: value
        for (name, labels), value in samples.items()
        if name == "cpmiw_redis_seconds_bucket"
    }
    assert buckets == {
        "5e-05": 1, "0.0001": 1, "0.00025": 1, "0.0005": 3, "0.001": 3, "0.0025": 4,
        "0.005": 4, "0.01": 4, "0.025": 4, "0.05": 4, "0.1": 4, "0.25": 4, "+Inf": 5,
    }  # fmt: skip
    assert samples["cpmiw_redis_seconds_count", ()] == 5
    assert math.isclose(samples["cpmiw_redis_seconds_sum", ()], 1.00265)
    assert samples["cpmiw_redis_errors_total", ()] == 1
    assert samples["cpmiw_decision_seconds_count", ()] == 0  # unlabelled: shown from the start
    labels = (("method", "MESSAGE"), ("outcome", "deliver"), ("service", "none"))
    assert samples["cpmiw_requests_total", labels] == 0  # labels known in advance: shown too
    assert not any(name.startswith("kamailio_") for name, _ in samples)  # nothing read from it


def _write_tally(directory: Path, stem: str, values: dict[int, float], keys: str) -> None:
    data = array("d", [0.0]) * metrics.SLOTS
    for slot, value in values.items():
        data[slot] = value
    (directory / f"{stem}.bin").write_bytes(data.tobytes())
    (directory / f"{stem}.keys").write_text(keys)


def test_a_torn_last_keys_line_is_ignored(tally: Path) -> None:
    """A writer in the middle of appending its line; and lines this version does not know."""
    keys = (
        '20 ["cpmiw_profile_lookups", "miss"]\n'
        '21 ["cpmiw_unknown_metric"]\n'  # another version's metric
        '22 ["cpmiw_profile_lookups"]\n'  # a label missing
        f'{metrics.SLOTS} ["cpmiw_profile_lookups", "error"]\n'  # past the end
        '23 ["cpmiw_profile_lookups", "hi'
    )
    _write_tally(tally, "tally-4000001", {20: 5.0, 21: 6.0, 22: 7.0, 23: 8.0}, keys)
    metrics.count_lookup("miss")
    samples = rendered()
    lookups = {
        labels: value for (name, labels), value in samples.items() if "lookups" in name and value
    }
    assert lookups == {(("result", "miss"),): 6}


def test_setup_wipes_stale_tally_files_and_nothing_else(tmp_path: Path) -> None:
    ours = ["tally-4000001.bin", "tally-4000001.keys", "tally-4000002-1.keys", "counter_7.db"]
    ours += ["gauge_max_7.db", "histogram_7.db"]
    foreign = ["README", "tally-notes.txt", "tally-4000003.keys.bak", "data.db", "tally.bin"]
    for name in ours + foreign:
        (tmp_path / name).write_text("")
    _write_tally(tmp_path, "tally-4000001", {20: STALE}, '20 ["cpmiw_profile_lookups", "hit"]\n')
    script = (
        "import sys\nfrom cpmiw import metrics\nmetrics.setup(sys.argv[1])\n"
        "sys.stdout.write(metrics.render()[1].decode())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert parse(result.stdout)[HIT] == 0  # the stale value is gone
    left = {p.name for p in tmp_path.iterdir()}
    assert set(foreign) <= left and not set(ours) & left
    assert left - set(foreign) == {  # and the setup process's own files
        f"tally-{pid}.{suffix}" for pid in tally_pids(tmp_path) for suffix in ("bin", "keys")
    }


def test_a_pid_met_again_gets_files_of_its_own(tally: Path) -> None:
    """A process that died left its files; a new process with its pid must not clear them."""
    pid = os.getpid()
    metrics.count_lookup("hit")
    _write_tally(tally, f"tally-{pid}-1", {20: 3.0}, '20 ["cpmiw_profile_lookups", "hit"]\n')
    metrics._forget()  # as if just forked: the files with this pid are a dead process's
    metrics.count_lookup("hit")
    assert (tally / f"tally-{pid}-2.keys").exists()
    assert rendered()[HIT] == 5


def test_more_series_than_slots_are_dropped_without_an_exception(tally: Path) -> None:
    handlings = [f"h{i}" for i in range(metrics.SLOTS + 100)]  # not a bounded set: a bug
    for handling in handlings:
        metrics.count_as_failure(handling)
        metrics.count_as_failure(handling)
    metrics.observe_decision("MESSAGE", "cpm.msg", "deliver", "subscribed", 0, 0.001)
    samples = rendered()
    kept = {
        dict(labels)["handling"]: value
        for (name, labels), value in samples.items()
        if name == "cpmiw_as_default_handling_total" and value
    }
    dropped = samples["cpmiw_metrics_series_dropped_total", ()]
    assert set(kept.values()) == {2} and len(kept) + dropped == len(handlings) + 3
    assert kept.keys() == set(handlings[: len(kept)])
    assert samples["cpmiw_decision_seconds_count", ()] == 0  # no room: dropped too


# Kamailio's own numbers, beside the plugin's.

ZERO_AT_START = {  # series that nothing but traffic moves: the start's probe is a stateless OPTIONS
    ("kamailio_tm_transactions_total", (("side", "uas"),)),
    ("kamailio_tm_transactions_total", (("side", "uac"),)),
    ("kamailio_tm_completed_transactions_total", (("class", "2xx"),)),
    ("kamailio_tm_current_transactions", (("state", "active"),)),
    ("kamailio_sl_replies_total", (("class", "2xx"),)),
    ("kamailio_usrloc_registered_users", ()),
    ("kamailio_usrloc_contacts", ()),
    ("kamailio_core_dropped_total", (("message", "request"),)),
    ("kamailio_core_dropped_total", (("message", "reply"),)),
    ("kamailio_pike_blocked_ips", ()),
    ("cpmiw_flood_blocked_total", ()),
    ("cpmiw_refused_total", (("reason", "too-large"),)),
    ("cpmiw_redis_breaker_open", ()),
    ("cpmiw_redis_breaker_opened_total", (("reason", "failed"),)),
    ("cpmiw_redis_breaker_opened_total", (("reason", "late"),)),
    ("cpmiw_profile_lookups_total", (("result", "not-ready"),)),
    ("cpmiw_registrations_total", (("outcome", "limited"),)),
    ("cpmiw_as_default_handling_total", (("handling", "continue"),)),
    ("cpmiw_decision_rules_total", (("rule", "subscribed"),)),
    ("cpmiw_rejects_total", (("status", "503"),)),
}


@pytest.fixture(scope="module")
def fresh(own_redis: RedisServer, log_dir: Path) -> Iterator[tuple[Network, str]]:
    """A proxy just started, and its first scrape (the text)."""
    for net in make_network(own_redis, log_dir):
        with urllib.request.urlopen(net.kamailio.metrics_url, timeout=5) as answer:
            yield net, answer.read().decode()


def test_a_fresh_proxy_shows_every_documented_series_at_zero(
    fresh: tuple[Network, str], tmp_path: Path
) -> None:
    net, text = fresh
    samples = parse(text)
    assert {key: samples.get(key) for key in ZERO_AT_START} == dict.fromkeys(ZERO_AT_START, 0.0)
    requests = {
        (dict(labels)["method"], dict(labels)["outcome"])
        for name, labels in samples
        if name == "cpmiw_requests_total"
    }
    methods = {*metrics.METHODS, "other"}
    outcomes = {"deliver", "rewrite", "to-im-as", "to-ip-sm-gw", "reject", "answer", "error"}
    assert {(m, o) for m in methods for o in outcomes} <= requests
    total, free = samples["kamailio_shm_total_bytes", ()], samples["kamailio_shm_free_bytes", ()]
    assert 60 * 2**20 < total <= 64 * 2**20 and 0 < free < total  # CPMIW_SHM_MB=64
    assert samples["kamailio_shm_used_bytes", ()] > 0
    pkg = {
        dict(labels)["description"] for name, labels in samples if name == "kamailio_pkg_used_bytes"
    }
    assert "main process - attendant" in pkg and len(pkg) >= 6  # workers, timers, RPC, TCP
    listener = f"udp:127.0.0.1:{net.kamailio.port}"
    assert samples["cpmiw_udp_receive_drops_total", (("listener", listener),)] == 0
    (build,) = [dict(labels) for name, labels in samples if name == "cpmiw_build_info"]
    assert build["kamailio"] == "5.6.3" and build["version"] not in ("", "unknown")
    started = samples["process_start_time_seconds", ()]
    assert time.time() - 120 < started < time.time()


def test_the_live_exposition_passes_promtool(fresh: tuple[Network, str], tmp_path: Path) -> None:
    net, _ = fresh
    with urllib.request.urlopen(net.kamailio.metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    # and promtool does fail on what it should: a counter without _total
    broken = text.replace("kamailio_sl_failures_total ", "kamailio_sl_failures ", 1)
    assert broken != text
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=broken, capture_output=True, text=True, check=False
    )
    assert check.returncode != 0


def test_kamailio_counters_move_with_traffic(fresh: tuple[Network, str]) -> None:
    net, _ = fresh
    ue = subscriber(net, "cpm")
    before = scrape(net.kamailio.metrics_url)
    with Peer("127.0.0.5") as phone, Peer() as sender:
        assert phone.register(net.kamailio.address, ue.registration_aor).status == 200
        sender.send(message(sender, ue.registration_aor), net.kamailio.address)
        phone.reply(phone.recv_request("MESSAGE"), 200, "OK")
        assert sender.recv_response().status == 200
        nobody = f"sip:nobody-{secrets.token_hex(3)}@{DOMAIN}"
        assert sender.ask(message(sender, nobody), net.kamailio.address).status == 404
    # tmx and sl refresh their sums over the processes at most every second or two, each on a
    # schedule of its own (later still on a loaded machine): scraped until all are counted.
    deadline = time.monotonic() + 10
    while True:
        try:
            _counted(before, scrape(net.kamailio.metrics_url))
            break
        except (AssertionError, KeyError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.25)


def _counted(before: Samples, after: Samples) -> None:
    """The registration, the MESSAGE delivered (tm) and the one refused statelessly (sl)."""
    assert after["kamailio_usrloc_contacts", ()] == 1
    assert after["kamailio_usrloc_registered_users", ()] == 1
    assert moved(before, after, "kamailio_tm_transactions_total")[("uas",)] >= 1
    assert moved(before, after, "kamailio_tm_completed_transactions_total")[("2xx",)] >= 1
    assert moved(before, after, "kamailio_sl_replies_total")[("4xx",)] >= 1
    assert moved(before, after, "kamailio_core_received_total")[("request",)] >= 3


def test_without_an_answer_from_kamailio_the_plugins_series_are_served(
    fresh: tuple[Network, str],
) -> None:
    """Kamailio's control socket gone (its file moved away): the scrape is answered, with the
    plugin's series and without Kamailio's, and the log says why; back, they are back."""
    kamailio = fresh[0].kamailio
    moved_away = kamailio.rpc_socket.with_name("moved-away.sock")
    kamailio.rpc_socket.rename(moved_away)
    try:
        samples = scrape(kamailio.metrics_url)
    finally:
        moved_away.rename(kamailio.rpc_socket)
    assert ("cpmiw_redis_breaker_open", ()) in samples
    assert not any(name.startswith("kamailio_") for name, _ in samples)
    assert "cpmiw: metrics: Kamailio's control socket did not answer" in kamailio.log()
    assert ("kamailio_shm_free_bytes", ()) in scrape(kamailio.metrics_url)


def test_udp_drops_are_read_for_the_listeners_only() -> None:
    table = (
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
        "  timeout inode ref pointer drops\n"
        "  1: 0100007F:13C4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 1 2 0000000000000000 17\n"
        "  2: 0100007F:13C5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 3 2 0000000000000000 5\n"
        "  3: garbage\n"
    )
    listeners = [("127.0.0.1", 5060), ("127.0.0.2", 5060)]
    assert metrics.udp_drops(table, listeners) == {"udp:127.0.0.1:5060": 17}


def test_every_rule_in_the_code_is_shown_from_the_start() -> None:
    """The rules named in core/ (`Decision(Action.X, "rule"`) are pre-created label values."""
    core = Path(metrics.__file__).parent / "core"
    named = {
        rule
        for source in core.glob("*.py")
        for rule in re.findall(r'Decision\(\s*Action\.[A-Z_]+,\s*"([a-z-]+)"', source.read_text())
    }
    assert len(named) >= 10
    assert named <= {rule for (rule,) in metrics._KNOWN["cpmiw_decision_rules"]}
