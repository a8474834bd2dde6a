"""Requests with bytes that are not UTF-8 are routed as their ASCII twins, byte for byte.

Real Kamailio, Redis and SIP peers. tests/corpus holds requests exactly as a client sent them
(a Latin-1 display name, a Call-ID byte that is not UTF-8); each is sent as it is, with the
sender's address and fresh transaction ids put in.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from conftest import Network
from cpmiw.core.message import SipMessage, decode, escape_bytes
from cpmiw.testing import make_profile
from cpmiw.testing.sipnet import Peer
from sipflows import RCS_IARI, cpm_message, deliver_and_answer, device, subscriber

CORPUS = Path(__file__).parent / "corpus"
JOSE = decode(b"Jos\xe9")  # Latin-1: the byte 0xE9 is not UTF-8
IM = ";+g.oma.sip-im"
CPM_CONTACT = ';+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg"'


def corpus_request(name: str, sender: Peer, **addresses: str) -> bytes:
    """A corpus request as `sender` sends it: its Via address, fresh Call-ID, branch and tag
    (the files share one token, `fzql`), and any other address replaced as given."""
    data = (CORPUS / name).read_bytes()
    data = data.replace(b"127.0.0.1:5099", f"{sender.host}:{sender.port}".encode())
    for old, new in addresses.items():
        data = data.replace(old.encode(), new.encode())
    return data.replace(b"fzql", secrets.token_hex(6).encode())


def ascii_twin(data: bytes) -> bytes:
    """The same request with every byte above 0x7F written `x`, under fresh transaction ids."""
    head, _, body = data.partition(b"\r\n\r\n")
    twin = bytes(b if b < 0x80 else ord("x") for b in head)
    token = data.split(b"branch=z9hG4bK-", 1)[1][:16]
    return twin.replace(token, secrets.token_hex(8).encode()) + b"\r\n\r\n" + body


def _rule(net: Network, msg: SipMessage) -> str:
    """The decision's rule; the plugin logs a byte that is not UTF-8 as `\\xNN`."""
    lines = net.kamailio.decision_lines(escape_bytes(msg.header("Call-ID") or ""))
    assert lines, f"no decision logged for {msg.header('Call-ID')!r}"
    return lines[0].split(" rule=")[1].split()[0]


@pytest.mark.parametrize(
    "name", ["callid-not-utf8.sip", "callid-not-utf8-tcp.sip", "contact-latin1.sip"]
)
def test_a_request_is_routed_as_its_ascii_twin(net: Network, name: str) -> None:
    recipient = make_profile("user00000", "+15550000000", "cpm")
    net.provision(recipient)
    transport = "tcp" if name.endswith("-tcp.sip") else "udp"
    log_start = len(net.kamailio.log())
    with Peer(transport=transport) as caller, device(net, recipient) as ue:
        request = corpus_request(name, caller)
        delivered = []
        for sent in (request, ascii_twin(request)):
            caller.send(sent, net.kamailio.address)
            received = ue.recv_request("MESSAGE")
            ue.reply(received, 200, "OK")
            assert caller.recv_response().status == 200
            delivered.append(received)
    original, twin = delivered
    assert original.header("Call-ID") == SipMessage.parse(request).header("Call-ID")
    assert original.body == twin.body == b"hi"
    assert _rule(net, original) == _rule(net, twin)
    assert "Traceback" not in net.kamailio.log()[log_start:]


def test_a_rewritten_contact_keeps_its_latin1_display_name_byte_for_byte(net: Network) -> None:
    """CPM to an IM-only user: the Contact's tag is swapped, its other bytes are left alone."""
    bob = subscriber(net, "im")
    with Peer() as caller, device(net, bob) as ue:
        sent = cpm_message(caller, bob.registration_aor).replace_header(
            "Contact", f'"{JOSE}" <sip:jose@{caller.host}:{caller.port}>{CPM_CONTACT}'
        )
        received = deliver_and_answer(caller, ue, sent, net)
    assert received.header("Contact") == f'"{JOSE}" <sip:jose@{caller.host}:{caller.port}>{IM}'
    assert f"*;+g.oma.sip-im;require;explicit,*;{RCS_IARI}" in received.header_values(
        "Accept-Contact"
    )


def test_a_register_with_a_latin1_display_name_keeps_the_device_tags(net: Network) -> None:
    """The device registered the IM tag only: CPM reaches it with the IM tag."""
    dave = subscriber(net, "cpm")
    user = dave.registration_aor.removeprefix("sip:").partition("@")[0]
    with Peer("127.0.0.5") as ue, Peer() as caller:
        register = corpus_request(
            "register-contact-latin1.sip",
            ue,
            user00049=user,
            **{"127.0.20.5:5070": f"{ue.host}:{ue.port}"},
        )
        ue.send(register, net.kamailio.address)
        assert ue.recv_response().status == 200
        received = deliver_and_answer(caller, ue, cpm_message(caller, dave.registration_aor), net)
    assert received.header_values("Accept-Contact")[0].startswith("*;+g.oma.sip-im;require")


def test_a_register_with_a_display_name_keeps_the_device_tags(net: Network) -> None:
    dave = subscriber(net, "cpm")
    with Peer() as caller, device(net, dave, tags=IM, name="Dave's phone") as ue:
        received = deliver_and_answer(caller, ue, cpm_message(caller, dave.registration_aor), net)
    assert received.header_values("Accept-Contact")[0].startswith("*;+g.oma.sip-im;require")


@pytest.mark.parametrize("stray", [b"\xe9", b"\x00", b"\xc3"])
def test_a_request_uri_byte_is_routed_as_its_percent_encoding(net: Network, stray: bytes) -> None:
    """RFC 3261 writes such a byte %XX in a URI: both spellings are one identity, nobody's here,
    and get one answer (404, or 503 while that identity's part of the store is not ready)."""
    answers = []
    with Peer() as caller:
        for user in (decode(b"nob" + stray + b"dy"), f"nob%{stray[0]:02X}dy"):
            # The To stays plain: Kamailio's core drops a request whose To it cannot parse.
            request = cpm_message(caller, f"sip:{user}@ims.example.net", to="<sip:nobody@h>")
            answers.append((caller.ask(request, net.kamailio.address).status, _rule(net, request)))
    assert answers[0] == answers[1]
    assert answers[0] in {(404, "unknown-recipient"), (503, "store-not-ready")}
