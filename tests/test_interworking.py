"""Interworking end to end: SMS users, conversations, registrations, AS failures, trust, OPTIONS.

Real Kamailio, real Redis, SIP peers on loopback; the IP-SM-GW (127.0.0.4) and the IM AS
(127.0.0.3) are peers of the test. The session network gives an AS 500 ms to answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Network, RedisServer, make_network
from cpmiw.core.devices import SUMMARY_TABLE, Device, registered, summary, usrloc_key
from cpmiw.core.message import SipMessage
from cpmiw.ops.rpc import KamailioRpc, RpcError
from cpmiw.testing import ICSI
from cpmiw.testing.sipnet import Peer, StatelessProxy
from sipflows import (
    CPM_MSG_ACCEPT,
    cancel_of,
    chat_invite,
    cpm_message,
    deliver_and_answer,
    device,
    end_to_end_lines,
    ringing,
    subscriber,
)

HEX32 = re.compile(r"[0-9a-f]{32}")
SMSIP = ";+g.3gpp.smsip"
IM = ";+g.oma.sip-im"
CPM_DEVICE = f';+g.3gpp.icsi-ref="{ICSI}oma.cpm.msg,{ICSI}oma.cpm.session"'


def _rules(net: Network, msg: SipMessage, count: int = 1) -> list[str]:
    lines = net.kamailio.decision_lines(msg.header("Call-ID") or "", count)
    return [line.split(" rule=")[1].split()[0] for line in lines]


# -- sessions and SMS users ----------------------------------------------------------------


@pytest.mark.parametrize("icsi", ["oma.cpm.session", "oma.cpm.largemsg", "oma.cpm.session.group"])
def test_session_invitations_to_sms_users_go_to_the_ip_sm_gw(net: Network, icsi: str) -> None:
    carol = subscriber(net, "sms")
    with Peer() as caller:
        invite = chat_invite(caller, carol.registration_aor, icsi)
        caller.send(invite, net.kamailio.address)
        at_gw = net.ip_sm_gw.recv_request("INVITE")
        net.ip_sm_gw.reply(at_gw, 480, "Sent As SMS")
        assert caller.recv_response().status == 480
    assert at_gw.body == invite.body
    assert end_to_end_lines(at_gw) == end_to_end_lines(invite)
    assert _rules(net, invite) == ["sms-interworking"]


def test_file_transfer_to_sms_user_is_rejected_by_default(net: Network) -> None:
    carol = subscriber(net, "sms")
    with Peer() as caller:
        invite = chat_invite(caller, carol.registration_aor, "oma.cpm.filetransfer")
        assert caller.ask(invite, net.kamailio.address).status == 488
    net.ip_sm_gw.expect_nothing(0.2)


@pytest.fixture(scope="module")
def lenient(redis_server: RedisServer, log_dir: Path) -> Iterator[Network]:
    """A second proxy: file transfer to SMS users allowed, OPTIONS relayed."""
    yield from make_network(
        redis_server, log_dir, {"CPMIW_FT_TO_SMS": "ip_sm_gw", "CPMIW_OPTIONS": "relay"}
    )


def test_file_transfer_to_sms_user_by_setting(lenient: Network) -> None:
    carol = subscriber(lenient, "sms")
    with Peer() as caller:
        invite = chat_invite(caller, carol.registration_aor, "oma.cpm.filetransfer")
        caller.send(invite, lenient.kamailio.address)
        at_gw = lenient.ip_sm_gw.recv_request("INVITE")
        lenient.ip_sm_gw.reply(at_gw, 603, "Decline")
        assert caller.recv_response().status == 603


def test_sms_over_ip_is_delivered_untouched(net: Network) -> None:
    frank = subscriber(net, "cpm,sms")
    with Peer("127.0.0.4") as gateway, device(net, frank, tags=SMSIP) as ue:
        sms = gateway.request(
            "MESSAGE",
            frank.identities[1],
            headers=[
                ("Accept-Contact", "*;+g.3gpp.smsip;require;explicit"),
                ("Request-Disposition", "no-fork"),
                ("Content-Type", "application/vnd.3gpp.sms"),
            ],
            body=b"\x01\x02\x00\x11\x22",
        )
        received = deliver_and_answer(gateway, ue, sms, net)
    assert end_to_end_lines(received) == end_to_end_lines(sms)
    assert received.body == sms.body


# -- the SMS user's reply, with its CPM conversation ---------------------------------------


def _sms_reply(gateway: Peer, sms_user: str, cpm_user: str, *extra: tuple[str, str]) -> SipMessage:
    """What the IP-SM-GW sends for an SMS user's answer: no conversation headers, IM tag."""
    return gateway.request(
        "MESSAGE",
        cpm_user,
        from_=f"<{sms_user}>;tag=gw",
        headers=[("Accept-Contact", "*;+g.oma.sip-im"), ("Content-Type", "text/plain"), *extra],
        body=b"ok, see you",
    )


def test_sms_user_reply_gets_the_cpm_conversation_and_the_cpm_tag(net: Network) -> None:
    alice = subscriber(net, "cpm")
    carol = subscriber(net, "sms")
    with Peer() as alice_phone:
        first = cpm_message(
            alice_phone, carol.identities[1], from_=f"<{alice.registration_aor}>;tag=a"
        )
        alice_phone.send(first, net.kamailio.address)
        net.ip_sm_gw.reply(net.ip_sm_gw.recv_request("MESSAGE"), 202, "Accepted")
        assert alice_phone.recv_response().status == 202
    with Peer("127.0.0.4") as gateway, device(net, alice, tags=CPM_DEVICE) as ue:
        reply = deliver_and_answer(
            gateway, ue, _sms_reply(gateway, carol.identities[1], alice.registration_aor), net
        )
        second = deliver_and_answer(
            gateway, ue, _sms_reply(gateway, carol.identities[1], alice.registration_aor), net
        )
        kept = deliver_and_answer(
            gateway,
            ue,
            _sms_reply(
                gateway, carol.identities[1], alice.registration_aor, ("Conversation-ID", "mine")
            ),
            net,
        )
    assert reply.header("Conversation-ID") == first.header("Conversation-ID")
    assert reply.header("InReplyTo-Contribution-ID") == first.header("Contribution-ID")
    assert HEX32.fullmatch(reply.header("Contribution-ID") or "")
    assert reply.header_values("Accept-Contact") == [f'*;+g.3gpp.icsi-ref="{ICSI}oma.cpm.msg"']
    assert second.header("Conversation-ID") == first.header("Conversation-ID")
    assert second.header("InReplyTo-Contribution-ID") == reply.header("Contribution-ID")
    assert second.header("Contribution-ID") != reply.header("Contribution-ID")
    assert kept.header_values("Conversation-ID") == ["mine"]  # never overwritten


def test_sms_user_reply_to_an_im_user_gets_the_im_tag_and_no_cpm_headers(net: Network) -> None:
    bob = subscriber(net, "im")
    carol = subscriber(net, "sms")
    with Peer("127.0.0.4") as gateway, device(net, bob, tags=IM) as ue:
        reply = _sms_reply(gateway, carol.identities[1], bob.registration_aor)
        reply = reply.replace_header("Accept-Contact", CPM_MSG_ACCEPT)
        received = deliver_and_answer(gateway, ue, reply, net)
    assert received.header_values("Accept-Contact") == ["*;+g.oma.sip-im;require;explicit"]
    assert received.header("Conversation-ID") is None


# -- registrations -------------------------------------------------------------------------


def _via_the_ip_sm_gw(net: Network, caller: Peer, aor: str) -> SipMessage:
    """A CPM MESSAGE to `aor` that goes to the IP-SM-GW, which accepts it; what was sent."""
    sent = cpm_message(caller, aor)
    caller.send(sent, net.kamailio.address)
    net.ip_sm_gw.reply(net.ip_sm_gw.recv_request("MESSAGE"), 202, "Accepted")
    assert caller.recv_response().status == 202
    return sent


def test_cpm_sms_subscriber_without_a_cpm_device_gets_sms(net: Network) -> None:
    frank = subscriber(net, "cpm,sms")
    with Peer() as caller, device(net, frank, tags=SMSIP) as ue:
        sent = _via_the_ip_sm_gw(net, caller, frank.registration_aor)
        ue.expect_nothing(0.2)
    assert _rules(net, sent) == ["sms-interworking"]


def test_cpm_sms_subscriber_with_a_cpm_device_gets_it_there(net: Network) -> None:
    frank = subscriber(net, "cpm,sms")
    with Peer() as caller, device(net, frank, tags=CPM_DEVICE) as ue:
        received = deliver_and_answer(caller, ue, cpm_message(caller, frank.registration_aor), net)
    assert received.header_values("Accept-Contact")[0] == CPM_MSG_ACCEPT
    net.ip_sm_gw.expect_nothing(0.2)


def test_cpm_sms_subscriber_with_no_device_gets_sms(net: Network) -> None:
    frank = subscriber(net, "cpm,sms")
    with Peer() as caller:
        _via_the_ip_sm_gw(net, caller, frank.registration_aor)


def test_cpm_subscriber_whose_only_device_is_im_gets_the_im_tag(net: Network) -> None:
    dave = subscriber(net, "cpm")
    with Peer() as caller, device(net, dave, tags=IM) as ue:
        received = deliver_and_answer(caller, ue, cpm_message(caller, dave.registration_aor), net)
    assert received.header_values("Accept-Contact")[0].startswith("*;+g.oma.sip-im;require")


def _summary(net: Network, aor: str) -> str | None:
    """The AOR's devices summary in Kamailio (htable `devices`), None when it has none."""
    with KamailioRpc(str(net.kamailio.rpc_socket)) as rpc:
        try:
            found = rpc.call("htable.get", SUMMARY_TABLE, usrloc_key(aor))
        except RpcError as error:
            assert "doesn't exist" in str(error)
            return None
    assert isinstance(found, dict)
    return str(found["item"]["value"])


def _set_summary(net: Network, aor: str, text: str) -> None:
    with KamailioRpc(str(net.kamailio.rpc_socket)) as rpc:
        rpc.call("htable.sets", SUMMARY_TABLE, usrloc_key(aor), text)


def _expiries_and_families(summary: str | None) -> list[tuple[float, str]]:
    """(seconds from now, families) of each contact in a summary."""
    now = time.time()
    return sorted(
        (round(d.expires - now, -2), ",".join(sorted(f.value for f in d.families)))
        for d in registered(summary or "", now)
    )


def test_each_register_summarises_the_devices_of_the_aor(net: Network) -> None:
    frank = subscriber(net, "cpm,sms")
    aor = frank.registration_aor
    with device(net, frank, tags=CPM_DEVICE):
        assert _expiries_and_families(_summary(net, aor)) == [(3600, "cpm")]
        with device(net, frank, tags=SMSIP):
            assert _expiries_and_families(_summary(net, aor)) == [(3600, "cpm"), (3600, "sms")]
        assert _expiries_and_families(_summary(net, aor)) == [(3600, "cpm")]
    assert _summary(net, aor) is None


def _unregister_all(peer: Peer, aor: str, expires: int) -> SipMessage:
    """A REGISTER of `Contact: *`, which the registrar accepts with Expires: 0 only."""
    request = peer.request(
        "REGISTER", f"sip:{aor.rpartition('@')[2]}", to=f"<{aor}>", from_=f"<{aor}>;tag=1"
    )
    return request.replace_header("Contact", "*").replace_header("Expires", str(expires))


def test_a_register_the_registrar_refuses_is_answered_by_it(net: Network) -> None:
    """Saved without a reply so the plugin can summarise first: refusals are still answered."""
    frank = subscriber(net, "cpm")
    with Peer("127.0.0.5") as ue:
        refused = ue.ask(_unregister_all(ue, frank.registration_aor, 3600), net.kamailio.address)
        ue.expect_nothing(0.2)  # one answer
    assert refused.status == 400  # "*" goes with Expires: 0 only
    assert _summary(net, frank.registration_aor) is None


def test_removing_every_binding_removes_the_summary(net: Network) -> None:
    frank = subscriber(net, "cpm,sms")
    aor = frank.registration_aor
    with Peer("127.0.0.5") as phone:
        assert phone.register(net.kamailio.address, aor, contact_params=CPM_DEVICE).status == 200
        assert _expiries_and_families(_summary(net, aor)) == [(3600, "cpm")]
        assert phone.ask(_unregister_all(phone, aor, 0), net.kamailio.address).status == 200
    assert _summary(net, aor) is None


def test_routing_drops_contacts_the_summary_shows_expired(net: Network) -> None:
    frank = subscriber(net, "cpm,sms")
    with Peer() as caller, device(net, frank, tags=CPM_DEVICE) as ue:
        expired = Device(
            f"sip:{ue.host}:{ue.port}", features=CPM_DEVICE, expires=int(time.time()) - 1
        )
        _set_summary(net, frank.registration_aor, summary([expired]))
        sent = _via_the_ip_sm_gw(net, caller, frank.registration_aor)
        ue.expect_nothing(0.2)
    assert _rules(net, sent) == ["sms-interworking"]


def test_contacts_removed_behind_the_registrar_cost_one_480(net: Network) -> None:
    """`ul.rm` leaves the summary stale: the first delivery fails and usrloc is read after."""
    frank = subscriber(net, "cpm,sms")
    with Peer() as caller, device(net, frank, tags=CPM_DEVICE):
        with KamailioRpc(str(net.kamailio.rpc_socket)) as rpc:
            rpc.call("ul.rm", "location", usrloc_key(frank.registration_aor))
        caller.send(cpm_message(caller, frank.registration_aor), net.kamailio.address)
        assert caller.recv_response().status == 480
        assert _summary(net, frank.registration_aor) is None
        sent = _via_the_ip_sm_gw(net, caller, frank.registration_aor)
    assert _rules(net, sent) == ["sms-interworking"]


def test_a_summary_not_of_ours_is_logged_and_usrloc_read(net: Network) -> None:
    dave = subscriber(net, "cpm")
    with Peer() as caller, device(net, dave, tags=IM) as ue:
        _set_summary(net, dave.registration_aor, "soon:cpm")
        received = deliver_and_answer(caller, ue, cpm_message(caller, dave.registration_aor), net)
    assert received.header_values("Accept-Contact")[0].startswith("*;+g.oma.sip-im;require")
    assert f"registrations of {dave.registration_aor} read from usrloc: bad summary" in (
        net.kamailio.wait_for_log("bad summary")
    )


# -- AS default handling -------------------------------------------------------------------


@pytest.mark.parametrize("as_answer", [None, 503], ids=["silent", "503"])
def test_failed_im_as_with_continue_delivers_as_if_there_were_no_as(
    net: Network, as_answer: int | None
) -> None:
    erin = subscriber(net, "im", interworking="im_as", as_failure="continue")
    with Peer() as caller, device(net, erin) as ue:
        sent = cpm_message(caller, erin.registration_aor)
        caller.send(sent, net.kamailio.address)
        at_as = net.im_as.recv_request("MESSAGE")
        # The worker that handed it over logs after relaying; the AS's failure is handled (and
        # logged) by another one: answered once the hand-off is logged, the lines keep order.
        _rules(net, sent)
        if as_answer is not None:
            net.im_as.reply(at_as, as_answer, "Service Unavailable")
        received = ue.recv_request("MESSAGE", timeout=3)
        ue.reply(received, 200, "OK")
        assert caller.recv_response().status == 200
    assert received.header_values("Route") == []
    assert received.header_values("Accept-Contact")[0].startswith("*;+g.oma.sip-im;require")
    assert _rules(net, sent, 2) == ["interworking-im_as", "as-failed-continue"]
    log = net.kamailio.wait_for_log(f"default handling continue call-id={sent.header('Call-ID')}")
    assert f"default handling continue call-id={sent.header('Call-ID')}" in log


def test_silent_im_as_with_terminate_gives_408(net: Network) -> None:
    erin = subscriber(net, "im", interworking="im_as", as_failure="terminate")
    with Peer() as caller, device(net, erin) as ue:
        caller.send(cpm_message(caller, erin.registration_aor), net.kamailio.address)
        net.im_as.recv_request("MESSAGE")
        assert caller.recv_response(timeout=3).status == 408
        ue.expect_nothing(0.2)


def test_no_default_handling_once_the_as_sent_a_provisional_response(net: Network) -> None:
    erin = subscriber(net, "im", interworking="im_as", as_failure="continue")
    with Peer() as caller, device(net, erin) as ue:
        invite = chat_invite(caller, erin.registration_aor, "oma.cpm.session")
        at_as = ringing(net, caller, net.im_as, invite)
        net.im_as.reply(at_as, 500, "Server Error")
        assert caller.recv_response().status == 500
        ue.expect_nothing(0.8)


def test_cancel_while_the_request_is_at_the_as(net: Network) -> None:
    erin = subscriber(net, "im", interworking="im_as")
    im_as = StatelessProxy(net.im_as)
    with Peer() as caller, device(net, erin) as ue:
        invite = chat_invite(caller, erin.registration_aor, "oma.cpm.session")
        at_as = ringing(net, caller, net.im_as, invite)
        caller.send(cancel_of(invite), net.kamailio.address)
        net.im_as.reply(net.im_as.recv_request("CANCEL"), 200, "OK")
        net.im_as.reply(at_as, 487, "Request Terminated")
        assert {caller.recv_response().status, caller.recv_response().status} == {200, 487}
        assert im_as.peer.recv_request("ACK").method == "ACK"
        ue.expect_nothing(0.8)


# -- trust and capability queries ----------------------------------------------------------


def test_untrusted_sender_cannot_assert_a_service(net: Network) -> None:
    dave = subscriber(net, "cpm")
    asserted = ("P-Asserted-Service", "urn:urn-7:3gpp-service.ims.icsi.oma.cpm.msg")
    with Peer() as caller, device(net, dave) as ue:
        forged = caller.request(
            "MESSAGE",
            dave.registration_aor,
            headers=[
                ("Accept-Contact", "*;+g.oma.sip-im"),
                asserted,
                ("Content-Type", "text/plain"),
            ],
            body=b"hi",
        )
        received = deliver_and_answer(caller, ue, forged, net)
    assert received.header("P-Asserted-Service") is None
    # classified by what it really carries (IM), so rewritten for the CPM recipient
    assert received.header_values("Accept-Contact") == [f'*;+g.3gpp.icsi-ref="{ICSI}oma.cpm.msg"']


def test_trusted_sender_keeps_its_asserted_service(net: Network) -> None:
    dave = subscriber(net, "cpm")
    asserted = ("P-Asserted-Service", "urn:urn-7:3gpp-service.ims.icsi.oma.cpm.msg")
    with Peer("127.0.0.4") as gateway, device(net, dave) as ue:
        sent = gateway.request(
            "MESSAGE", dave.registration_aor, headers=[asserted, ("Content-Type", "text/plain")]
        )
        received = deliver_and_answer(gateway, ue, sent, net)
    assert received.header("P-Asserted-Service") == asserted[1]


@pytest.mark.parametrize(
    ("services", "advertised"),
    [
        ("im", ["msg", "largemsg", "session", "session.group", "filetransfer"]),
        ("sms", ["msg", "largemsg", "deferred", "session", "session.group", "systemmsg"]),
    ],
)
def test_options_to_a_subscriber_without_cpm_is_answered_by_the_proxy(
    net: Network, services: str, advertised: list[str]
) -> None:
    bob = subscriber(net, services)
    with Peer() as caller:
        answer = caller.ask(caller.request("OPTIONS", bob.registration_aor), net.kamailio.address)
    assert answer.status == 200
    contact = answer.header("Contact") or ""
    listed = re.findall(r"icsi\.oma\.cpm\.([a-z.]+)", contact.replace("%3A", ":"))
    assert sorted(listed) == sorted(advertised)


def test_options_to_a_cpm_subscriber_reaches_its_device(net: Network) -> None:
    dave = subscriber(net, "cpm")
    with Peer() as caller, device(net, dave) as ue:
        deliver_and_answer(caller, ue, caller.request("OPTIONS", dave.registration_aor), net)


def test_options_relayed_when_the_proxy_does_not_answer(lenient: Network) -> None:
    bob = subscriber(lenient, "im")
    with Peer() as caller, device(lenient, bob) as ue:
        deliver_and_answer(caller, ue, caller.request("OPTIONS", bob.registration_aor), lenient)


# -- shadow mode ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shadow(redis_server: RedisServer, log_dir: Path) -> Iterator[Network]:
    yield from make_network(redis_server, log_dir, {"CPMIW_SHADOW": "on"})


def test_shadow_mode_decides_and_logs_but_delivers_unchanged(shadow: Network) -> None:
    carol = subscriber(shadow, "sms")
    with Peer() as caller, device(shadow, carol) as ue:
        sent = cpm_message(caller, carol.registration_aor)
        received = deliver_and_answer(caller, ue, sent, shadow)
        shadow.ip_sm_gw.expect_nothing(0.2)
    assert end_to_end_lines(received) == end_to_end_lines(sent)
    line = shadow.kamailio.decision_lines(sent.header("Call-ID") or "")[0]
    assert "action=to-ip-sm-gw rule=sms-interworking" in line
    assert line.endswith("shadow=on")
