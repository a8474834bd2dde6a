"""The proxy's edges: what reaches it from outside and is not routed as asked.

Real Kamailio with the repo's cfg, real Redis, SIP peers and HTTP clients on loopback. The
session network's IM AS is 127.0.0.3, its IP-SM-GW 127.0.0.4: both trusted (RFC 3325).
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import LAUNCHER, Network, RedisServer, make_network
from cpmiw.core.message import SipMessage
from cpmiw.testing import wait_until
from cpmiw.testing.flood import Flood
from cpmiw.testing.sipnet import Peer, host_port_of
from sipflows import deliver_and_answer, device, subscriber

PAI = "<sip:boss@ims.example.net>"


def test_another_port_of_an_as_host_is_no_as(net: Network) -> None:
    host, port = host_port_of(net.im_as.uri)
    with Peer() as caller:
        elsewhere = caller.ask(
            caller.request("OPTIONS", f"sip:x@{host}:{port + 1}"), net.kamailio.address
        )
        assert (elsewhere.status, elsewhere.reason) == (403, "Relaying Forbidden")
        net.im_as.expect_nothing(0.2)
        caller.send(caller.request("OPTIONS", f"sip:x@{host}:{port}"), net.kamailio.address)
        net.im_as.reply(net.im_as.recv_request("OPTIONS"), 200, "OK")
        assert caller.recv_response().status == 200


def test_sip_on_the_metrics_listener_is_not_routed(net: Network) -> None:
    bob = subscriber(net, "cpm")
    with Peer(transport="tcp") as caller, device(net, bob) as ue:
        request = caller.request("MESSAGE", bob.registration_aor, body=b"hi")
        answer = caller.ask(request, ("127.0.0.1", net.kamailio.metrics_port))
        assert (answer.status, answer.reason) == (403, "Forbidden")
        ue.expect_nothing(0.2)


def _http(net: Network, method: str, path: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", net.kamailio.metrics_port, timeout=5)
    connection.request(method, path, body=b"x=1" if method in ("POST", "PUT") else None)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "OPTIONS"])
def test_the_metrics_listener_answers_get_only(net: Network, method: str) -> None:
    refused = _http(net, method, "/metrics")
    assert (refused.status, refused.getheader("Allow")) == (405, "GET")
    assert _http(net, "GET", "/metrics").status == 200
    assert _http(net, "GET", "/").status == 404


def test_no_answer_names_kamailio_or_its_version(net: Network) -> None:
    scraped = _http(net, "GET", "/metrics")
    with Peer() as caller:
        answer = caller.ask(
            caller.request("OPTIONS", "sip:x@elsewhere.example.org"), net.kamailio.address
        )
    assert answer.status == 403
    for headers in (scraped.getheaders(), [line.split(": ", 1) for line in answer.header_lines()]):
        assert not [value for name, value in headers if "kamailio" in value.lower()], headers


def _with_pai(caller: Peer, ruri: str) -> SipMessage:
    return caller.request(
        "MESSAGE", ruri, headers=[("P-Asserted-Identity", PAI), ("Content-Type", "text/plain")]
    )


def test_an_untrusted_senders_asserted_identity_is_removed(net: Network) -> None:
    bob = subscriber(net, "cpm")
    with Peer() as caller, device(net, bob) as ue:
        received = deliver_and_answer(caller, ue, _with_pai(caller, bob.registration_aor), net)
    assert received.header("P-Asserted-Identity") is None


def test_a_trusted_senders_asserted_identity_is_kept(net: Network) -> None:
    bob = subscriber(net, "cpm")
    with Peer("127.0.0.3") as trusted, device(net, bob) as ue:
        received = deliver_and_answer(trusted, ue, _with_pai(trusted, bob.registration_aor), net)
    assert received.header_values("P-Asserted-Identity") == [PAI]


def test_a_reply_on_the_metrics_listener_is_dropped(net: Network) -> None:
    """A SIP response written to the metrics port reaches no transaction."""
    bob = subscriber(net, "cpm")
    with Peer() as caller, device(net, bob) as ue:
        caller.send(_with_pai(caller, bob.registration_aor), net.kamailio.address)
        at_device = ue.recv_request("MESSAGE")
        forged = SipMessage(
            "SIP/2.0 200 OK",
            [
                (n, v)
                for n, v in at_device.headers
                if n.lower() in ("via", "from", "to", "call-id", "cseq")
            ],
        ).replace_header("To", f"{at_device.header('To')};tag=forged")
        with socket.create_connection(("127.0.0.1", net.kamailio.metrics_port)) as conn:
            conn.sendall(forged.to_bytes())
        caller.expect_nothing(0.3)
        ue.reply(at_device, 200, "OK")
        assert caller.recv_response().status == 200


def refused(net: Network) -> dict[str, float]:
    """cpmiw_refused_total by reason, scraped."""
    with urllib.request.urlopen(net.kamailio.metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cpmiw_refused_total"
    }


def _sized(caller: Peer, ruri: str, size: int) -> SipMessage:
    """A MESSAGE of exactly `size` bytes (its Content-Length's digits included)."""
    request = caller.request("MESSAGE", ruri, headers=[("Content-Type", "text/plain")])
    length = size - len(request.to_bytes())
    while (missing := size - len(replace(request, body=b"x" * length).to_bytes())) != 0:
        length += missing
    return replace(request, body=b"x" * length)


def test_tcp_requests_up_to_64_kb_are_routed_larger_ones_answered_513(net: Network) -> None:
    bob = subscriber(net, "cpm")
    before = refused(net)
    with Peer(transport="tcp") as caller, device(net, bob, transport="tcp") as ue:
        largest = _sized(caller, bob.registration_aor, 65536)
        received = deliver_and_answer(caller, ue, largest, net)
        assert received.body == largest.body
        for size in (65537, 120_000):
            answer = caller.ask(_sized(caller, bob.registration_aor, size), net.kamailio.address)
            assert (answer.status, answer.reason) == (513, "Message Too Large")
        ue.expect_nothing(0.2)
        # The connection still carries the next request.
        assert deliver_and_answer(caller, ue, _sized(caller, bob.registration_aor, 2000), net)
    assert refused(net)["too-large"] - before["too-large"] == 2
    assert "request of 65537 bytes from 127.0.0.1" in net.kamailio.wait_for_log("65537 bytes")


def test_a_request_too_large_for_a_udp_device_is_answered_513(net: Network) -> None:
    """64 KB came over TCP; the device registered over UDP takes datagrams of 65,507 bytes."""
    bob = subscriber(net, "cpm")
    before = refused(net)
    with Peer(transport="tcp") as caller, device(net, bob) as ue:
        fits = _sized(caller, bob.registration_aor, 60_000)
        assert deliver_and_answer(caller, ue, fits, net).body == fits.body
        answer = caller.ask(_sized(caller, bob.registration_aor, 65_536), net.kamailio.address)
        assert (answer.status, answer.reason) == (513, "Message Too Large")
        ue.expect_nothing(0.2)
    assert refused(net)["too-large"] - before["too-large"] == 1


@pytest.fixture(scope="module")
def small(redis_server: RedisServer, log_dir: Path) -> Iterator[Network]:
    """A proxy with 32 MB of shared memory, half of it its reserve (proxy/memory.py): a few
    hundred MESSAGE transactions fill it."""
    yield from make_network(redis_server, log_dir, {"CPMIW_SHM_MB": "32"})


def _answering(ue: Peer, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            request = ue.recv_request("MESSAGE", timeout=0.1)
        except TimeoutError:
            continue
        ue.reply(request, 200, "OK")


def test_full_shared_memory_is_answered_503_never_500(small: Network) -> None:
    bob = subscriber(small, "cpm")
    stop = threading.Event()
    with Peer() as caller, device(small, bob) as ue:
        answering = threading.Thread(target=_answering, args=(ue, stop))
        answering.start()
        try:
            answers = []
            for _ in range(15):  # within tm's 5 s wait timer: every transaction still held
                for _ in range(100):
                    request = caller.request("MESSAGE", bob.registration_aor, body=b"hi")
                    caller.send(request, small.kamailio.address)
                answers += [caller.recv_response() for _ in range(100)]
            # The held transactions expire (tm's 5 s wait timer): memory is back.
            wait_until(
                lambda: small.kamailio.shared("cpmiw_memory_low") == 0, "memory back", timeout=30
            )
            again = caller.ask(
                caller.request("MESSAGE", bob.registration_aor), small.kamailio.address
            )
        finally:
            stop.set()
            answering.join()
    statuses = Counter(answer.status for answer in answers)
    assert set(statuses) == {200, 503} and statuses[503] > 100, statuses
    assert {a.header("Retry-After") for a in answers if a.status == 503} == {"5"}
    assert again.status == 200
    assert refused(small)["shared-memory-full"] == statuses[503]
    assert "cpmiw: shared memory full: new requests answered 503" in small.kamailio.log()


@pytest.fixture(scope="module")
def limited(redis_server: RedisServer, log_dir: Path) -> Iterator[Network]:
    """A proxy that takes at most 200 requests a second from one source."""
    yield from make_network(redis_server, log_dir, {"CPMIW_FLOOD_RATE": "200"})


def flood_blocked(net: Network) -> float:
    with urllib.request.urlopen(net.kamailio.metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cpmiw_flood_blocked_total"
    )


def test_a_flooding_source_is_dropped_and_other_clients_are_served(limited: Network) -> None:
    """10,000 datagrams a second from 127.0.0.1, 50 times its limit (bench/run flood measures
    58,000 a second on a quiet machine); meanwhile a client on 127.0.0.6 sends 20 MESSAGEs a
    second: each one is delivered at once."""
    bob = subscriber(limited, "cpm")
    before = flood_blocked(limited)
    delays = []
    with Peer("127.0.0.6") as client, device(limited, bob) as ue:
        with Flood(limited.kamailio.address, 10_000, 4.0) as flood:
            time.sleep(0.5)
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                started = time.monotonic()
                deliver_and_answer(
                    client, ue, client.request("MESSAGE", bob.registration_aor), limited
                )
                delays.append(time.monotonic() - started)
                time.sleep(0.05)
        time.sleep(2.5)  # the source is unblocked once a second went by under the limit
        with Peer("127.0.0.1") as former:  # the flood's source, served again
            deliver_and_answer(former, ue, former.request("MESSAGE", bob.registration_aor), limited)
    assert len(delays) >= 20 and max(delays) < 1.0, delays
    blocked = flood_blocked(limited) - before
    assert flood.sent * 0.5 < blocked <= flood.sent, (flood.sent, blocked)
    log = limited.kamailio.log()
    assert log.count("cpmiw: flood from 127.0.0.1: over CPMIW_FLOOD_RATE") == 1


@pytest.mark.parametrize("rate", ["abc", "-1", "1.5", "070", "70000", "123456"])
def test_the_launcher_refuses_a_flood_rate_pike_cannot_count(rate: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(LAUNCHER), "-c"],
        env={
            "PATH": "/usr/bin:/bin",
            "CPMIW_FLOOD_RATE": rate,
            "CPMIW_RPC_SOCKET": str(tmp_path / "s"),
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stderr) == (
        2,
        f"cpmiw: CPMIW_FLOOD_RATE={rate}: expected a whole number from 0 to 65535\n",
    )
