"""SIP flows the integration tests share: subscribers, devices, typical CPM requests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from conftest import Network
from cpmiw.core.message import SipMessage
from cpmiw.core.profile import Profile
from cpmiw.testing import CPIM, ICSI, SDP, make_profile
from cpmiw.testing.sipnet import Peer

CPM_MSG_ACCEPT = f'*;+g.3gpp.icsi-ref="{ICSI}oma.cpm.msg";require;explicit'
CPM_MSG_URN = "urn:urn-7:3gpp-service.ims.icsi.oma.cpm.msg"
RCS_IARI = '+g.3gpp.iari-ref="urn%3Aurn-7%3A3gpp-application.ims.iari.rcse.im"'
# Headers a proxy legitimately changes on the way (or the peers rebuild).
HOP_BY_HOP = {"via", "max-forwards", "content-length", "route", "record-route"}


def subscriber(net: Network, services: str, **fields: object) -> Profile:
    """A fresh subscriber in Redis: sip:<unique>@ims.example.net and a unique tel number."""
    profile = make_profile(
        f"u{secrets.token_hex(4)}", f"+1555{secrets.randbelow(10**7):07d}", services, **fields
    )
    net.provision(profile)
    return profile


@contextmanager
def device(
    net: Network, profile: Profile, *, transport: str = "udp", tags: str = "", name: str = ""
) -> Iterator[Peer]:
    """A device of `profile` on 127.0.0.5, registered with feature `tags` (and the display
    `name`, if any) while in use."""
    with Peer("127.0.0.5", transport=transport) as peer:
        ok = peer.register(
            net.kamailio.address, profile.registration_aor, contact_params=tags, display_name=name
        )
        assert ok.status == 200, ok.start_line
        yield peer
        gone = peer.register(net.kamailio.address, profile.registration_aor, expires=0)
        assert gone.status == 200, gone.start_line


def cpm_message(caller: Peer, ruri: str, **kwargs: object) -> SipMessage:
    return caller.request(
        "MESSAGE",
        ruri,
        headers=[
            ("Accept-Contact", CPM_MSG_ACCEPT),
            ("Accept-Contact", f"*;{RCS_IARI}"),
            ("P-Preferred-Service", CPM_MSG_URN),
            ("Conversation-ID", "f81d4fae7dec11d0a76500a0c91e6bf6"),
            ("Contribution-ID", "abcdef"),
            ("Content-Type", "message/cpim"),
        ],
        body=CPIM,
        **kwargs,  # type: ignore[arg-type]
    )


def next_provisional(peer: Peer) -> SipMessage:
    """The next provisional response other than the proxy's own 100 Trying."""
    while (response := peer.recv_response(final=False)).status == 100:
        pass
    return response


def end_to_end_lines(msg: SipMessage) -> list[str]:
    return [line for line in msg.header_lines() if line.split(":")[0].lower() not in HOP_BY_HOP]


def deliver_and_answer(caller: Peer, ue: Peer, request: SipMessage, net: Network) -> SipMessage:
    """Sends `request`, answers it 200 at the device; returns what the device received."""
    caller.send(request, net.kamailio.address)
    received = ue.recv_request(request.method)
    ue.reply(received, 200, "OK")
    assert caller.recv_response().status == 200
    return received


def chat_invite(caller: Peer, ruri: str, icsi: str) -> SipMessage:
    return caller.request(
        "INVITE",
        ruri,
        headers=[
            ("Accept-Contact", f'*;+g.3gpp.icsi-ref="{ICSI}{icsi}"'),
            ("Content-Type", "application/sdp"),
        ],
        body=SDP,
    ).replace_header(
        "Contact", f'<sip:caller@127.0.0.1:{caller.port}>;+g.3gpp.icsi-ref="{ICSI}{icsi}"'
    )


def ringing(net: Network, caller: Peer, callee: Peer, invite: SipMessage) -> SipMessage:
    """Sends `invite`, has `callee` answer 180; returns the INVITE as the callee got it."""
    caller.send(invite, net.kamailio.address)
    at_callee = callee.recv_request("INVITE")
    callee.reply(at_callee, 180, "Ringing")
    assert next_provisional(caller).status == 180
    return at_callee


def cancel_of(invite: SipMessage) -> SipMessage:
    """The CANCEL of a pending INVITE (RFC 3261 9.1: same Via, From, To, Call-ID, CSeq number)."""
    kept = ("Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards")
    return SipMessage(
        f"CANCEL {invite.ruri} SIP/2.0",
        [
            (name, value.replace("INVITE", "CANCEL") if name == "CSeq" else value)
            for name, value in invite.headers
            if name in kept
        ],
        b"",
    )
