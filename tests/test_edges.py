"""The proxy's edges: what reaches it from outside and is not routed as asked.

Real Kamailio with the repo's cfg, real Redis, SIP peers and HTTP clients on loopback. The
session network's IM AS is 127.0.0.3, its IP-SM-GW 127.0.0.4: both trusted (RFC 3325).
"""

from __future__ import annotations

import http.client
import socket

import pytest

from conftest import Network
from cpmiw.core.message import SipMessage
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
