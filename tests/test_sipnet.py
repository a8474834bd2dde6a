"""Tests of the SIP test toolkit itself: peers talk to each other on loopback, no Kamailio."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from cpmiw.core.message import SipMessage, header_entries
from cpmiw.testing.sipnet import Dialog, Peer, StatelessProxy, host_port_of, tag_of, uri_of

MakePeer = Callable[..., Peer]

RAW_INVITE = (
    b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa;rport\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKb\r\n"
    b"f: <sip:alice@127.0.0.1>;tag=1\r\n"
    b"t: <sip:bob@127.0.0.1>\r\n"
    b"i: abc@127.0.0.1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Subject: first part\r\n"
    b"   and second\r\n"
    b"\tand third\r\n"
    b"P-Custom :  spaced out  \r\n"
    b"c: text/plain\r\n"
    b"l: 5\r\n"
    b"\r\n"
    b"hello, and bytes beyond Content-Length"
)


@pytest.fixture
def make_peer() -> Iterator[MakePeer]:
    with ExitStack() as stack:

        def make(host: str = "127.0.0.1", transport: str = "udp") -> Peer:
            return stack.enter_context(Peer(host, transport=transport))

        yield make


def addr(peer: Peer) -> tuple[str, int]:
    return peer.host, peer.port


def test_parse_unfolds_lines_and_understands_compact_forms() -> None:
    msg = SipMessage.parse(RAW_INVITE)
    assert (msg.is_request, msg.method, msg.ruri, msg.status) == (
        True,
        "INVITE",
        "sip:bob@127.0.0.1",
        0,
    )
    assert msg.header_values("VIA") == [
        "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa;rport",
        "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKb",
    ]
    assert msg.header("v") == msg.header("Via") == msg.header_values("via")[0]
    assert msg.header("From") == "<sip:alice@127.0.0.1>;tag=1"
    assert msg.header("call-id") == "abc@127.0.0.1"
    assert msg.header("s") == "first part and second and third"
    assert msg.header("p-custom") == "spaced out"
    assert msg.header("Content-Type") == "text/plain"
    assert msg.header("Allow") is None
    assert msg.body == b"hello"
    assert msg.header_lines() == [
        "v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa;rport",
        "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKb",
        "f: <sip:alice@127.0.0.1>;tag=1",
        "t: <sip:bob@127.0.0.1>",
        "i: abc@127.0.0.1",
        "CSeq: 7 INVITE",
        "Subject: first part and second and third",
        "P-Custom: spaced out",
        "c: text/plain",
        "l: 5",
    ]


def test_response_start_line_and_cseq_method() -> None:
    msg = SipMessage.parse(b"SIP/2.0 486 Busy Here\r\nCSeq: 3 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert not msg.is_request
    assert (msg.status, msg.reason, msg.method, msg.ruri) == (486, "Busy Here", "INVITE", "")


def test_to_bytes_recomputes_content_length_in_place_or_appends_it() -> None:
    msg = SipMessage.parse(RAW_INVITE)
    msg.body = b"abc"
    data = msg.to_bytes()
    assert b"\r\nc: text/plain\r\nl: 3\r\n\r\nabc" in data
    assert data.startswith(b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\nv: SIP/2.0/UDP ")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert SipMessage.parse(data) == msg.replace_header("Content-Length", "3")


def test_to_bytes_appends_a_missing_content_length() -> None:
    bare = SipMessage("OPTIONS sip:127.0.0.1 SIP/2.0", [("CSeq", "1 OPTIONS")], b"xy")
    assert bare.to_bytes() == (
        b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nCSeq: 1 OPTIONS\r\nContent-Length: 2\r\n\r\nxy"
    )


def test_header_editing_returns_modified_copies() -> None:
    msg = SipMessage.parse(RAW_INVITE)
    top = msg.with_header("Record-Route", "<sip:127.0.0.5;lr>", first=True)
    assert top.header_lines()[0] == "Record-Route: <sip:127.0.0.5;lr>"
    last = msg.with_header("X-Test", "1")
    assert last.header_lines()[-1] == "X-Test: 1"
    assert msg.header("record-route") is None and msg.header("x-test") is None

    no_via = msg.without_header("Via")
    assert no_via.header_values("v") == []
    assert len(no_via.headers) == len(msg.headers) - 2

    one_via = msg.replace_header("VIA", "SIP/2.0/UDP 127.0.0.9;branch=z9hG4bKz")
    assert one_via.header_lines()[0] == "v: SIP/2.0/UDP 127.0.0.9;branch=z9hG4bKz"
    assert one_via.header_values("via") == ["SIP/2.0/UDP 127.0.0.9;branch=z9hG4bKz"]

    added = msg.replace_header("Expires", "60")
    assert added.header_lines()[-1] == "Expires: 60"


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("<sip:127.0.0.1;lr>, <sip:127.0.0.2;lr>", ["<sip:127.0.0.1;lr>", "<sip:127.0.0.2;lr>"]),
        ('"Smith, J" <sip:j@h>;tag=1 ,sip:k@h', ['"Smith, J" <sip:j@h>;tag=1', "sip:k@h"]),
        (r'"say \"a, b\"" <sip:a@h>, <sip:b@h>', [r'"say \"a, b\"" <sip:a@h>', "<sip:b@h>"]),
        ("<sip:a@h?X=1,2>,<sip:b@h>", ["<sip:a@h?X=1,2>", "<sip:b@h>"]),
        ("  single  ", ["single"]),
        ("", []),
    ],
)
def test_header_entries(value: str, parts: list[str]) -> None:
    assert header_entries(value) == parts


@pytest.mark.parametrize(
    ("name_addr", "uri"),
    [
        ("<sip:a@b;lr>;x=y", "sip:a@b;lr"),
        ("sip:a@b", "sip:a@b"),
        ("sip:a@b;tag=1", "sip:a@b"),
        ('"A <b> c" <sip:c@d>;tag=2', "sip:c@d"),
    ],
)
def test_uri_of(name_addr: str, uri: str) -> None:
    assert uri_of(name_addr) == uri


@pytest.mark.parametrize(
    ("uri", "address"),
    [
        ("sip:x@127.0.0.2:5070;lr", ("127.0.0.2", 5070)),
        ("sip:127.0.0.3", ("127.0.0.3", 5060)),
        ("sip:u;p=1@127.0.0.4:1?X=y", ("127.0.0.4", 1)),
        ("sips:bob@127.0.0.5", ("127.0.0.5", 5061)),
    ],
)
def test_host_port_of(uri: str, address: tuple[str, int]) -> None:
    assert host_port_of(uri) == address


@pytest.mark.parametrize(
    ("name_addr", "tag"),
    [
        ('"x;tag=no" <sip:a@b;tag=no>;tag=yes', "yes"),
        ("sip:a@b;tag=7", "7"),
        ("<sip:a@b>", None),
    ],
)
def test_tag_of(name_addr: str, tag: str | None) -> None:
    assert tag_of(name_addr) == tag


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_invite_dialog_through_stateless_proxy(make_peer: MakePeer, transport: str) -> None:
    uac = make_peer("127.0.0.1", transport)
    proxy = StatelessProxy(make_peer("127.0.0.2", transport))
    uas = make_peer("127.0.0.3", transport)
    record_route = f"<{proxy.peer.uri};lr>"

    invite = uac.request(
        "INVITE",
        f"sip:bob@{uas.host}:{uas.port}",
        route=[record_route],
        headers=[("Content-Type", "application/sdp")],
        body=b"v=0\r\n",
    )
    uac.send(invite, addr(proxy.peer))
    forwarded = proxy.forward_one(mutate=lambda m: m.with_header("Record-Route", record_route))
    got = uas.recv_request("INVITE")
    assert got == forwarded
    assert got.header("Route") is None
    vias = got.header_values("Via")
    assert vias[1:] == invite.header_values("Via")
    assert vias[0].startswith(f"SIP/2.0/{transport.upper()} 127.0.0.2:{proxy.peer.port};branch=")
    assert got.body == b"v=0\r\n" and got.header("Content-Length") == "5"

    uas.reply(got, 180, "Ringing")
    uas.reply(got, 200, "OK", contact=True, headers=[("Content-Type", "application/sdp")])
    assert [r.status for r in proxy.relay_responses()] == [180, 200]
    ringing = uac.recv_response(final=False)
    ok = uac.recv_response()
    assert (ringing.status, ok.status, ok.reason) == (180, 200, "OK")
    assert ok.header_values("Via") == invite.header_values("Via")
    assert ok.header("Record-Route") == record_route
    assert tag_of(ok.header("To") or "") == tag_of(ringing.header("To") or "") is not None
    assert ok.source is not None and ok.source[0] == proxy.peer.host

    dialog = Dialog.from_2xx(invite, ok)
    ack, dest = dialog.request(uac, "ACK")
    assert dest == addr(proxy.peer)
    uac.send(ack, dest)
    proxy.forward_one()
    got_ack = uas.recv_request("ACK")
    assert got_ack.ruri == f"sip:peer@{uas.host}:{uas.port}" + (
        ";transport=tcp" if transport == "tcp" else ""
    )
    assert got_ack.header("CSeq") == "1 ACK"
    assert got_ack.header("To") == ok.header("To")

    bye, dest = dialog.request(uac, "BYE")
    uac.send(bye, dest)
    proxy.forward_one()
    got_bye = uas.recv_request("BYE")
    assert got_bye.header("CSeq") == "2 BYE"
    assert got_bye.header("Call-ID") == invite.header("Call-ID")
    uas.reply(got_bye, 200, "OK")
    proxy.relay_responses()
    assert uac.recv_response().header("CSeq") == "2 BYE"
    for peer in (uac, proxy.peer, uas):
        peer.expect_nothing(0.2)


def test_proxy_pops_only_its_own_first_route_entry(make_peer: MakePeer) -> None:
    uac, proxy, uas = make_peer(), StatelessProxy(make_peer("127.0.0.2")), make_peer("127.0.0.3")
    next_hop = f"<sip:{uas.host}:{uas.port};lr>"
    routes = f"<{proxy.peer.uri};lr>, {next_hop}"
    request = uac.request("MESSAGE", "sip:bob@127.0.0.99", headers=[("Route", routes)])
    uac.send(request, addr(proxy.peer))
    proxy.forward_one()
    got = uas.recv_request("MESSAGE")
    assert got.header_values("Route") == [next_hop]
    assert got.ruri == "sip:bob@127.0.0.99"

    # A Route that does not name the proxy is left alone, and still decides the next hop.
    uac.send(uac.request("MESSAGE", "sip:bob@127.0.0.99", route=[next_hop]), addr(proxy.peer))
    proxy.forward_one()
    assert uas.recv_request("MESSAGE").header_values("Route") == [next_hop]


def test_reply_follows_via_received_rport_then_sent_by(make_peer: MakePeer) -> None:
    uac, uas, other = make_peer(), make_peer("127.0.0.2"), make_peer("127.0.0.3")
    nat_via = f"SIP/2.0/UDP 127.0.0.9:9;branch=z9hG4bKn;received={uac.host};rport={uac.port}"
    uac.send(uac.request("OPTIONS", uas.uri).replace_header("Via", nat_via), addr(uas))
    uas.reply(uas.recv_request("OPTIONS"), 200, "OK")
    assert uac.recv_response().status == 200

    other_via = f"SIP/2.0/UDP {other.host}:{other.port};branch=z9hG4bKo"
    uac.send(uac.request("OPTIONS", uas.uri).replace_header("Via", other_via), addr(uas))
    uas.reply(uas.recv_request("OPTIONS"), 404, "Not Found")
    assert other.recv_response().status == 404
    uac.expect_nothing(0.2)


def test_tcp_reply_goes_back_on_the_incoming_connection(make_peer: MakePeer) -> None:
    uac, uas = make_peer(transport="tcp"), make_peer("127.0.0.2", transport="tcp")
    dead_via = "SIP/2.0/TCP 127.0.0.9:9;branch=z9hG4bKt"  # nobody listens there
    uac.send(uac.request("OPTIONS", uas.uri).replace_header("Via", dead_via), addr(uas))
    got = uas.recv_request("OPTIONS")
    assert got.source is not None and got.source[0] == uac.host and got.source[1] != uac.port
    uas.reply(got, 200, "OK")
    response = uac.recv_response()
    assert response.status == 200 and response.source == addr(uas)


def test_tcp_stream_is_framed_by_content_length(make_peer: MakePeer) -> None:
    peer = make_peer(transport="tcp")
    uac = make_peer("127.0.0.2", transport="tcp")
    first = uac.request("MESSAGE", peer.uri, body=b"one\r\n\r\nstill one")
    second = uac.request("MESSAGE", peer.uri, body=b"")
    third = uac.request("MESSAGE", peer.uri, body=b"three" * 100)
    data = third.to_bytes()
    with socket.create_connection(addr(peer)) as raw:
        raw.sendall(first.to_bytes() + b"\r\n\r\n" + second.to_bytes() + data[:40])
        assert peer.recv() == first
        assert peer.recv() == second
        peer.expect_nothing(0.2)  # the third message is incomplete
        raw.sendall(data[40:-1])
        peer.expect_nothing(0.2)
        raw.sendall(data[-1:])
        got = peer.recv()
        assert got == third and got.body == b"three" * 100
        peer.reply(got, 202, "Accepted")
        assert raw.recv(65535).startswith(b"SIP/2.0 202 Accepted\r\n")


def test_recv_request_skips_retransmissions_and_rejects_the_unexpected(
    make_peer: MakePeer,
) -> None:
    uac, uas = make_peer(), make_peer("127.0.0.2")
    message = uac.request("MESSAGE", uas.uri, body=b"hi")
    uac.send(message, addr(uas))
    uac.send(message, addr(uas))
    assert uas.recv_request("MESSAGE").body == b"hi"
    uac.send(message, addr(uas))
    uac.send(uac.request("OPTIONS", uas.uri), addr(uas))
    assert uas.recv_request("OPTIONS").method == "OPTIONS"

    uac.send(uac.request("MESSAGE", uas.uri), addr(uas))
    with pytest.raises(AssertionError, match="expected INVITE request, got MESSAGE sip:"):
        uas.recv_request("INVITE")
    uac.send(b"SIP/2.0 200 OK\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", addr(uas))
    with pytest.raises(AssertionError, match=r"got SIP/2\.0 200 OK"):
        uas.recv_request()
    uac.send(message.to_bytes(), addr(uas))  # recv() returns retransmissions too
    assert uas.recv().body == b"hi"
    uac.send(uac.request("BYE", uas.uri), addr(uas))
    with pytest.raises(AssertionError, match="expected a response, got BYE"):
        uas.recv_response()


def test_recv_response_skips_provisional_responses(make_peer: MakePeer) -> None:
    uac, uas = make_peer(), make_peer("127.0.0.2")
    uac.send(uac.request("INVITE", uas.uri), addr(uas))
    invite = uas.recv_request("INVITE")
    trying = uas.reply(invite, 100, "Trying")
    progress = uas.reply(invite, 183, "Session Progress")
    uas.reply(invite, 486, "Busy Here", to_tag="busy")
    assert tag_of(trying.header("To") or "") is None
    assert tag_of(progress.header("To") or "") is not None
    final = uac.recv_response()
    assert (final.status, final.reason, final.method) == (486, "Busy Here", "INVITE")
    assert tag_of(final.header("To") or "") == "busy"
    uac.expect_nothing(0.2)


def test_timeouts_and_expect_nothing(make_peer: MakePeer) -> None:
    peer = make_peer()
    with pytest.raises(TimeoutError, match=r"no SIP message arrived within 0\.1s"):
        peer.recv(0.1)
    peer.expect_nothing(0.1)
    peer.send(peer.request("OPTIONS", peer.uri), addr(peer))
    with pytest.raises(AssertionError, match="expected no message, got OPTIONS"):
        peer.expect_nothing(0.5)


def test_register_asks_the_registrar(make_peer: MakePeer) -> None:
    client, registrar = make_peer(transport="tcp"), make_peer("127.0.0.2", transport="tcp")

    def serve() -> SipMessage:
        request = registrar.recv_request("REGISTER")
        registrar.reply(request, 200, "OK", headers=[("Contact", request.header("m") or "")])
        return request

    with ThreadPoolExecutor(1) as pool:
        served = pool.submit(serve)
        response = client.register(
            addr(registrar), "sip:alice@example.com", contact_params=";reg-id=1", expires=60
        )
        request = served.result()
    assert response.status == 200
    assert request.ruri == "sip:example.com"
    assert uri_of(request.header("To") or "") == uri_of(request.header("From") or "")
    assert tag_of(request.header("From") or "") is not None
    contact = f"<sip:alice@{client.host}:{client.port};transport=tcp>;reg-id=1;expires=60"
    assert request.header_values("Contact") == [contact]
    assert response.header("Contact") == contact


def test_dialog_route_set_and_cseq_numbering(make_peer: MakePeer) -> None:
    peer = make_peer()
    invite = peer.request("INVITE", "sip:bob@127.0.0.1", cseq=10)
    ok = SipMessage.parse(
        b"SIP/2.0 200 OK\r\n"
        b"Record-Route: <sip:127.0.0.4:5070;lr>, <sip:127.0.0.3;lr>\r\n"
        b"Record-Route: <sip:127.0.0.2:5080;lr>\r\n"
        b"To: <sip:bob@127.0.0.1>;tag=remote\r\n"
        b"Contact: <sip:bob@127.0.0.5:5090>\r\n\r\n"
    )
    dialog = Dialog.from_2xx(invite, ok)
    assert dialog.route_set == [
        "<sip:127.0.0.2:5080;lr>",
        "<sip:127.0.0.3;lr>",
        "<sip:127.0.0.4:5070;lr>",
    ]
    bye, dest = dialog.request(peer, "BYE")
    assert dest == ("127.0.0.2", 5080)
    assert bye.ruri == "sip:bob@127.0.0.5:5090"
    assert bye.header_values("Route") == dialog.route_set
    assert bye.header("From") == invite.header("From")
    assert tag_of(bye.header("To") or "") == "remote"
    assert bye.header("CSeq") == "11 BYE"
    assert dialog.request(peer, "ACK")[0].header("CSeq") == "10 ACK"
    assert dialog.request(peer, "INFO", cseq=20)[0].header("CSeq") == "20 INFO"
    assert dialog.request(peer, "INFO")[0].header("CSeq") == "21 INFO"

    direct = Dialog.from_2xx(invite, ok.without_header("Record-Route"))
    assert direct.request(peer, "BYE")[1] == ("127.0.0.5", 5090)
