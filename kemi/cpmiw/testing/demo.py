"""`python -m cpmiw.testing.demo`: watch the demo proxy (`make run`) route three CPM messages.

Plays the IP-SM-GW at its configured address and two devices, bob (IM only) and dave (CPM),
which register with their demo passwords (digest; `password_of`), then sends a CPM pager
MESSAGE to carol (SMS only), bob and dave and prints what each peer received. Uses the same
CPMIW_* settings as the proxy.
"""

from __future__ import annotations

import sys

from ..core.message import SipMessage
from ..settings import load_settings
from .sipnet import Peer, host_port_of

DOMAIN = "ims.example.net"
CPM_MSG_ICSI = "urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg"


def password_of(user: str) -> str:
    """The demo subscribers' passwords (deploy/demo-credentials.jsonl holds their HA1s)."""
    return f"demo-{user}"


def _show(title: str, msg: SipMessage) -> None:
    print(f"--- {title}\n{msg.start_line}")
    for line in msg.header_lines():
        print(f"    {line}")


def _cpm_message(caller: Peer, user: str) -> SipMessage:
    return caller.request(
        "MESSAGE",
        f"sip:{user}@{DOMAIN}",
        from_=f"<sip:alice@{DOMAIN}>;tag=demo",
        headers=[
            ("Accept-Contact", f'*;+g.3gpp.icsi-ref="{CPM_MSG_ICSI}";require;explicit'),
            ("Conversation-ID", "demo-conversation"),
            ("Content-Type", "text/plain"),
        ],
        body=f"Hello {user}".encode(),
    )


def main() -> int:
    settings = load_settings()
    proxy = (settings.sip_addr, settings.sip_port)
    gw_host, gw_port = host_port_of(settings.rules.policy.ip_sm_gw)
    with (
        Peer(gw_host, port=gw_port) as ip_sm_gw,
        Peer() as bob,
        Peer() as dave,
        Peer() as caller,
    ):
        for user, device in (("bob", bob), ("dave", dave)):
            answer = device.register(proxy, f"sip:{user}@{DOMAIN}", password=password_of(user))
            print(f"{user} registered: {answer.status} {answer.reason}")
        for user, receiver, status in (
            ("carol", ip_sm_gw, 202),
            ("bob", bob, 200),
            ("dave", dave, 200),
        ):
            caller.send(_cpm_message(caller, user), proxy)
            received = receiver.recv_request("MESSAGE")
            where = "the IP-SM-GW" if receiver is ip_sm_gw else f"{user}'s device"
            _show(f"CPM MESSAGE to {user}: received by {where}", received)
            receiver.reply(received, status, "Accepted" if status == 202 else "OK")
            final = caller.recv_response()
            print(f"    caller got: {final.status} {final.reason}")
        for user, device in (("bob", bob), ("dave", dave)):
            device.register(proxy, f"sip:{user}@{DOMAIN}", expires=0, password=password_of(user))
    return 0


if __name__ == "__main__":
    sys.exit(main())
