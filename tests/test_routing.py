"""End to end: real Kamailio with the repo's cfg and plugin, real Redis, SIP peers on loopback.

Each test provisions its own subscribers (unique names), registers devices on 127.0.0.5 and
asserts what each peer receives, header lines compared as text, and what the caller gets back.
"""

from __future__ import annotations

import secrets

import pytest

from conftest import DOMAIN, Network
from cpmiw.core.message import SipMessage
from cpmiw.core.profile import Profile
from cpmiw.store.layout import identity_key
from cpmiw.testing import ICSI, SDP
from cpmiw.testing.sipnet import Dialog, Peer, StatelessProxy
from sipflows import (
    CPM_MSG_ACCEPT,
    RCS_IARI,
    cancel_of,
    chat_invite,
    cpm_message,
    deliver_and_answer,
    device,
    end_to_end_lines,
    next_provisional,
    ringing,
    subscriber,
)


def test_cpm_message_to_cpm_user_arrives_unchanged(net: Network) -> None:
    dave = subscriber(net, "cpm")
    with Peer() as caller, device(net, dave) as ue:
        sent = cpm_message(caller, dave.registration_aor)
        received = deliver_and_answer(caller, ue, sent, net)
    assert received.ruri.startswith("sip:u") and f"@127.0.0.5:{ue.port}" in received.ruri
    assert end_to_end_lines(received) == end_to_end_lines(sent)
    assert received.body == sent.body
    assert "rule=subscribed" in net.kamailio.decision_lines(sent.header("Call-ID") or "")[0]


def test_cpm_message_to_im_only_user_arrives_with_the_im_tag(net: Network) -> None:
    bob = subscriber(net, "im")
    with Peer() as caller, device(net, bob) as ue:
        sent = cpm_message(caller, bob.registration_aor)
        received = deliver_and_answer(caller, ue, sent, net)
    untouched = [
        line
        for line in end_to_end_lines(sent)
        if not line.startswith(("Accept-Contact", "P-Preferred-Service"))
    ]
    rewritten = f"Accept-Contact: *;+g.oma.sip-im;require;explicit,*;{RCS_IARI}"
    assert end_to_end_lines(received) == [*untouched, rewritten]
    assert received.body == sent.body


def test_a_header_carrying_the_fact_separator_is_routed_alike(net: Network) -> None:
    """The adapter reads every fact in one call, split on \\x1f; RFC 3261 lets a quoted-pair
    carry that byte: the facts are then read one by one, with the same result."""
    bob = subscriber(net, "im")
    note = '*;+g.example.note="a\\\x1fb"'
    with Peer() as caller, device(net, bob) as ue:
        sent = cpm_message(caller, bob.registration_aor)
        sent.headers.append(("Accept-Contact", note))
        received = deliver_and_answer(caller, ue, sent, net)
    rewritten = f"Accept-Contact: *;+g.oma.sip-im;require;explicit,*;{RCS_IARI},{note}"
    assert rewritten in end_to_end_lines(received)
    assert "rule=interworking" in net.kamailio.decision_lines(sent.header("Call-ID") or "")[0]


def test_im_message_to_cpm_only_user_arrives_with_the_cpm_icsi(net: Network) -> None:
    dave = subscriber(net, "cpm")
    with Peer() as caller, device(net, dave) as ue:
        sent = caller.request(
            "MESSAGE",
            dave.registration_aor,
            headers=[("Accept-Contact", "*;+g.oma.sip-im"), ("Content-Type", "text/plain")],
            body=b"hi",
        )
        received = deliver_and_answer(caller, ue, sent, net)
    assert received.header_values("Accept-Contact") == [f'*;+g.3gpp.icsi-ref="{ICSI}oma.cpm.msg"']


def test_cpm_message_to_sms_only_user_goes_to_the_ip_sm_gw(net: Network) -> None:
    carol = subscriber(net, "sms")
    with Peer() as caller:
        sent = cpm_message(caller, carol.identities[1])
        caller.send(sent, net.kamailio.address)
        received = net.ip_sm_gw.recv_request("MESSAGE")
        net.ip_sm_gw.reply(received, 202, "Accepted")
        assert caller.recv_response().status == 202
    assert received.ruri == carol.identities[1]
    routes = received.header_values("Route")
    assert len(routes) == 1
    own = f"<sip:127.0.0.1:{net.kamailio.port};lr;cpmiw="
    assert routes[0].startswith(f"<{net.ip_sm_gw.uri};lr>, {own}")
    assert end_to_end_lines(received) == end_to_end_lines(sent)


def test_tel_aliases_find_the_same_subscriber(net: Network) -> None:
    dave = subscriber(net, "cpm")
    number = dave.identities[1].removeprefix("tel:")
    dashed = f"tel:{number[:2]}-{number[2:5]}-{number[5:8]}-{number[8:]}"
    with Peer() as caller, device(net, dave) as ue:
        for ruri in (f"tel:{number}", dashed, f"sip:{number}@{DOMAIN};user=phone"):
            received = deliver_and_answer(caller, ue, cpm_message(caller, ruri), net)
            assert f"@127.0.0.5:{ue.port}" in received.ruri, ruri


def _im_as_adapts(msg: SipMessage) -> SipMessage:
    """What an IM AS does: the CPM tag becomes the IM tag."""
    return msg.without_header("P-Preferred-Service").replace_header(
        "Accept-Contact", "*;+g.oma.sip-im;require;explicit"
    )


def _decision_rules(net: Network, call_id: str, count: int) -> list[str]:
    lines = net.kamailio.decision_lines(call_id, count)
    return [line.split(" rule=")[1].split()[0] for line in lines]


@pytest.mark.parametrize("adapts", [True, False], ids=["as-adapts", "as-leaves-cpm-tag"])
def test_im_as_policy_sends_to_the_im_as_which_routes_back(net: Network, adapts: bool) -> None:
    erin = subscriber(net, "im", interworking="im_as")
    im_as = StatelessProxy(net.im_as)
    with Peer() as caller, device(net, erin) as ue:
        sent = cpm_message(caller, erin.registration_aor)
        caller.send(sent, net.kamailio.address)
        # Sent back once the hand-off is logged (after relaying): another worker routes it back
        # and logs that, and could otherwise write first.
        _decision_rules(net, sent.header("Call-ID") or "", 1)
        forwarded = im_as.forward_one(mutate=_im_as_adapts if adapts else None)
        assert forwarded.ruri == erin.registration_aor
        received = ue.recv_request("MESSAGE")  # back from the AS: delivered, not redirected again
        ue.reply(received, 200, "OK")
        assert [r.status for r in im_as.relay_responses()] == [200]
        assert caller.recv_response().status == 200
        net.im_as.expect_nothing(0.3)
    assert received.header_values("Route") == []
    # Either way the IM client gets the IM tag: the proxy aligns what the AS left.
    accept_contact = ",".join(received.header_values("Accept-Contact"))
    assert accept_contact.startswith("*;+g.oma.sip-im;require;explicit")
    assert "icsi" not in accept_contact
    assert received.header_values("P-Preferred-Service") == []
    untouched = [line for line in end_to_end_lines(sent) if not line.startswith(("Accept-", "P-"))]
    assert [
        line for line in end_to_end_lines(received) if not line.startswith(("Accept-", "P-"))
    ] == untouched
    assert _decision_rules(net, sent.header("Call-ID") or "", 2) == [
        "interworking-im_as",
        "returned-from-as",
    ]


def _captured_marker_route(net: Network, profile: Profile) -> tuple[str, str]:
    """A real marker route issued by the proxy for one request, and that request's Call-ID."""
    with Peer() as caller:
        sent = cpm_message(caller, profile.registration_aor)
        caller.send(sent, net.kamailio.address)
        at_as = net.im_as.recv_request("MESSAGE")
        net.im_as.reply(at_as, 603, "Decline")
        assert caller.recv_response().status == 603
    return at_as.header_values("Route")[0].split(", ")[1], sent.header("Call-ID") or ""


def test_forged_or_foreign_markers_do_not_skip_the_as(net: Network) -> None:
    erin = subscriber(net, "im", interworking="im_as")
    with device(net, erin):
        route, call_id = _captured_marker_route(net, erin)
    forged = f"<sip:127.0.0.1:{net.kamailio.port};lr;cpmiw=99999999999.AAAAAAAAAAAAAAAAAAAAAA>"
    with Peer() as attacker, device(net, erin) as ue:
        for marker_route, reuse_call_id in ((forged, None), (route, call_id)):
            attempt = cpm_message(
                attacker, erin.registration_aor, route=[marker_route], call_id=reuse_call_id
            )
            attacker.send(attempt, net.kamailio.address)
            at_as = net.im_as.recv_request("MESSAGE")  # still sent to the AS
            net.im_as.reply(at_as, 403, "Forbidden")
            assert attacker.recv_response().status == 403
        ue.expect_nothing(0.3)
    # A valid marker replayed from an AS address but for another request: not honoured either.
    with Peer("127.0.0.4") as from_as_host, device(net, erin) as ue:
        replay = cpm_message(from_as_host, erin.registration_aor, route=[route])
        from_as_host.send(replay, net.kamailio.address)
        at_as = net.im_as.recv_request("MESSAGE")
        net.im_as.reply(at_as, 403, "Forbidden")
        assert from_as_host.recv_response().status == 403
        ue.expect_nothing(0.3)
    for warning in (
        "AS marker from non-AS address 127.0.0.1 ignored",
        "invalid or expired AS marker from 127.0.0.4 ignored",
    ):
        assert warning in net.kamailio.wait_for_log(warning)


def test_rejections_carry_precise_statuses(net: Network) -> None:
    barred = subscriber(net, "cpm", barred=True)
    nothing = subscriber(net, "")
    unregistered = subscriber(net, "cpm")
    cases = {
        f"sip:nobody-{secrets.token_hex(3)}@{DOMAIN}": 404,
        barred.registration_aor: 403,
        nothing.registration_aor: 488,
        unregistered.registration_aor: 480,
        "sip:someone@elsewhere.example.org": 403,
        f"sip:{DOMAIN}": 404,
    }
    with Peer() as caller:
        answers = {
            uri: caller.ask(cpm_message(caller, uri), net.kamailio.address).status for uri in cases
        }
    assert answers == cases


def test_malformed_profile_gives_503_with_retry_after_and_a_log_line(net: Network) -> None:
    identity = f"sip:broken{secrets.token_hex(3)}@{DOMAIN}"
    client = net.redis.client()
    client.set(identity_key(identity), b'{"identities": ["sip:x@y"], "services": ["fax"]}')
    with Peer() as caller:
        answer = caller.ask(cpm_message(caller, identity), net.kamailio.address)
    assert (answer.status, answer.header("Retry-After")) == (503, "30")
    warning = f"profile of {identity} unavailable"
    assert warning in net.kamailio.wait_for_log(warning)


def test_not_messaging_requests_are_relayed_unchanged(net: Network) -> None:
    dave = subscriber(net, "cpm")
    with Peer() as caller, device(net, dave) as ue:
        sent = caller.request(
            "OPTIONS", dave.registration_aor, headers=[("Accept", "application/sdp")]
        )
        received = deliver_and_answer(caller, ue, sent, net)
    assert end_to_end_lines(received) == end_to_end_lines(sent)


def test_delivery_report_addressed_to_the_ip_sm_gw_is_relayed_untouched(net: Network) -> None:
    with Peer() as ue:
        report = ue.request(
            "MESSAGE",
            net.ip_sm_gw.uri,
            headers=[("Content-Type", "application/vnd.3gpp.sms")],
            body=b"\x02\x01\x41",
        )
        ue.send(report, net.kamailio.address)
        received = net.ip_sm_gw.recv_request("MESSAGE")
        net.ip_sm_gw.reply(received, 202, "Accepted")
        assert ue.recv_response().status == 202
    assert end_to_end_lines(received) == end_to_end_lines(report)
    assert received.body == report.body


def test_message_over_tcp(net: Network) -> None:
    dave = subscriber(net, "cpm")
    with Peer(transport="tcp") as caller, device(net, dave, transport="tcp") as ue:
        received = deliver_and_answer(caller, ue, cpm_message(caller, dave.registration_aor), net)
    assert received.header_values("Accept-Contact")[0] == CPM_MSG_ACCEPT


def test_chat_session_to_im_user_with_ack_and_bye_through_the_proxy(net: Network) -> None:
    bob = subscriber(net, "im")
    with Peer() as caller, device(net, bob) as ue:
        invite = chat_invite(caller, bob.registration_aor, "oma.cpm.session")
        caller.send(invite, net.kamailio.address)
        at_ue = ue.recv_request("INVITE")
        assert at_ue.header_values("Accept-Contact") == ["*;+g.oma.sip-im"]
        assert at_ue.header_values("Contact") == [
            f"<sip:caller@127.0.0.1:{caller.port}>;+g.oma.sip-im"
        ]
        assert at_ue.body == SDP
        assert len(at_ue.header_values("Record-Route")) == 1
        ue.reply(at_ue, 180, "Ringing")
        ue.reply(
            at_ue, 200, "OK", contact=True, headers=[("Content-Type", "application/sdp")], body=SDP
        )
        assert next_provisional(caller).status == 180
        ok = caller.recv_response()
        assert ok.status == 200
        dialog = Dialog.from_2xx(invite, ok)
        assert dialog.route_set  # the proxy stays in the dialog
        ack, hop = dialog.request(caller, "ACK")
        assert hop == net.kamailio.address
        caller.send(ack, hop)
        assert ue.recv_request("ACK").header("Call-ID") == invite.header("Call-ID")
        bye, hop = dialog.request(caller, "BYE")
        caller.send(bye, hop)
        ue.reply(ue.recv_request("BYE"), 200, "OK")
        assert caller.recv_response().status == 200


def test_cancel_while_ringing(net: Network) -> None:
    dave = subscriber(net, "cpm")
    with Peer() as caller, device(net, dave) as ue:
        invite = chat_invite(caller, dave.registration_aor, "oma.cpm.session")
        at_ue = ringing(net, caller, ue, invite)
        caller.send(cancel_of(invite), net.kamailio.address)
        ue.reply(ue.recv_request("CANCEL"), 200, "OK")
        ue.reply(at_ue, 487, "Request Terminated")
        assert ue.recv_request("ACK").header("CSeq") == "1 ACK"  # tm acknowledges the 487
        statuses = {caller.recv_response().status, caller.recv_response().status}
        assert statuses == {200, 487}


def test_a_marker_is_honoured_once(net: Network) -> None:
    erin = subscriber(net, "im", interworking="im_as")
    im_as = StatelessProxy(net.im_as)
    with Peer() as caller, device(net, erin) as ue, Peer("127.0.0.4") as other_as:
        caller.send(cpm_message(caller, erin.registration_aor), net.kamailio.address)
        back = im_as.forward_one()  # the request still asks for CPM: it needs the AS
        ue.reply(ue.recv_request("MESSAGE"), 200, "OK")
        im_as.relay_responses()
        assert caller.recv_response().status == 200
        # The same request, marker and all, sent again from another AS address: a replay.
        replay = back.replace_header(
            "Via", f"SIP/2.0/UDP 127.0.0.4:{other_as.port};branch=z9hG4bKreplay"
        )
        other_as.send(replay, net.kamailio.address)
        at_as = net.im_as.recv_request("MESSAGE")  # to the AS again, not to the device
        net.im_as.reply(at_as, 403, "Forbidden")
        assert other_as.recv_response().status == 403
        ue.expect_nothing(0.3)
    warning = "replayed AS marker from 127.0.0.4 ignored"
    assert warning in net.kamailio.wait_for_log(warning)
