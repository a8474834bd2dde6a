"""`cpmiw explain` against the real proxy: for every cell of the README's decision table, a real
request goes through Kamailio, and explain (the real CLI, on the same Redis and Kamailio's RPC
socket) must name the very action, rule and status of the proxy's decision log line.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import pytest
from click.testing import CliRunner
from test_decision import TABLE

from conftest import DOMAIN, Network
from cpmiw.core.message import SipMessage
from cpmiw.core.profile import Profile
from cpmiw.core.services import Service
from cpmiw.ops.cli import main
from cpmiw.ops.explain import RequestError, request_for, request_from_message
from cpmiw.testing import RECIPIENT_KINDS
from cpmiw.testing.sipnet import Peer

LOG_FIELDS = re.compile(r" action=(\S+) rule=(\S+) status=(\S+)")
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=message 9 TCP/MSRP *\r\n"
)


def cli_env(net: Network) -> dict[str, str]:
    """The proxy's settings, as an operator's environment file would give them to the CLI."""
    return {
        "CPMIW_REDIS_URL": net.redis.url,
        "CPMIW_RPC_SOCKET": str(net.kamailio.rpc_socket),
        "CPMIW_IM_AS": net.im_as.uri,
        "CPMIW_IP_SM_GW": net.ip_sm_gw.uri,
        "CPMIW_DOMAINS": DOMAIN,
    }


def explained(net: Network, *args: str, message: bytes | None = None) -> dict[str, object]:
    result = CliRunner().invoke(
        main, ["-F", "json", "explain", *args], input=message, env=cli_env(net)
    )
    assert result.exit_code == 0, result.output
    decoded: dict[str, object] = msgspec.json.decode(result.stdout)
    return decoded


def logged(net: Network, call_id: str) -> tuple[str, str, int | None]:
    (line,) = net.kamailio.decision_lines(call_id)
    match = LOG_FIELDS.search(line)
    assert match is not None, line
    action, rule, status = match.groups()
    return action, rule, None if status == "-" else int(status)


def fields(explanation: dict[str, object]) -> tuple[object, object, object]:
    return explanation["action"], explanation["rule"], explanation["status"]


@dataclass
class Recipients:
    """One fresh subscriber per recipient kind of the table, all registered on one device."""

    aors: dict[str, str]
    device: Peer


@pytest.fixture(scope="module")
def recipients(network: Network) -> Iterator[Recipients]:
    token = secrets.token_hex(3)
    aors = {}
    profiles: list[Profile] = []
    for index, (kind, template) in enumerate(RECIPIENT_KINDS.items()):
        aor = f"sip:kind{index}-{token}@{DOMAIN}"
        aors[kind] = aor
        if template is not None:
            number = f"tel:+1557{secrets.randbelow(10**6):06d}{index}"
            profiles.append(msgspec.structs.replace(template, identities=[aor, number]))
    network.provision(*profiles)
    with Peer("127.0.0.5") as device:
        for aor in aors.values():  # "unknown" too: a device can register without a profile
            assert device.register(network.kamailio.address, aor).status == 200
        yield Recipients(aors, device)


def wire_request(caller: Peer, uri: str, service: Service) -> SipMessage:
    """A request as a client would send it, carrying `service` the way explain makes one up."""
    made_up = request_for(uri, service, None, caller.host).headers
    headers = [
        (name, value)
        for name, value in (
            ("Accept-Contact", made_up.accept_contact),
            ("P-Preferred-Service", made_up.preferred_service),
            ("Content-Type", made_up.content_type or "text/plain"),
        )
        if value
    ]
    if made_up.method == "INVITE":
        headers[-1] = ("Content-Type", "application/sdp")
    body = SDP if made_up.method == "INVITE" else b"hello"
    return caller.request(made_up.method, uri, headers=headers, body=body)


def route_through_proxy(net: Network, caller: Peer, device: Peer, request: SipMessage) -> None:
    """Sends the request and lets whichever party receives it answer, until the caller has a
    final response: the device, the IM AS or the IP-SM-GW (200, or 603 for an INVITE: a decline
    that leaves nothing to SMS fallback)."""
    caller.send(request, net.kamailio.address)
    deadline = time.monotonic() + 10.0  # the AS's 500 ms, and room for a loaded machine
    while time.monotonic() < deadline:
        for party in (device, net.im_as, net.ip_sm_gw):
            try:
                received = party.recv(timeout=0.005)
            except TimeoutError:
                continue
            if received.is_request and received.method != "ACK":
                party.reply(received, 603 if received.method == "INVITE" else 200, "Answered")
        try:
            caller.recv_response(timeout=0.005)
            return
        except TimeoutError:
            continue
    raise AssertionError(f"no final response to {request.start_line}")


@pytest.mark.parametrize("kind", list(RECIPIENT_KINDS))
def test_explain_agrees_with_the_proxy_on_every_cell(
    net: Network, recipients: Recipients, kind: str
) -> None:
    """One recipient kind (a column of the table) per test, every service (row) in it."""
    uri = recipients.aors[kind]
    with Peer() as caller:
        for service in Service:
            request = wire_request(caller, uri, service)
            route_through_proxy(net, caller, recipients.device, request)
            proxy = logged(net, request.header("Call-ID") or "")
            from_message = explained(net, "--message", "-", message=request.to_bytes())
            from_uri = explained(net, uri, "--service", service.value, "--source", caller.host)
            cell = f"{service.value} to {kind}"
            assert fields(from_message) == proxy, cell
            assert fields(from_uri) == proxy, cell
            assert from_message["summary"] == TABLE[service.value, kind], cell


def test_explain_text_names_profile_rule_and_contacts(net: Network, recipients: Recipients) -> None:
    uri = recipients.aors["IM only"]
    result = CliRunner().invoke(main, ["explain", uri, "-s", "cpm.msg"], env=cli_env(net))
    assert result.exit_code == 0, result.output
    settings, *lines = result.stdout.splitlines()
    assert settings == f"settings: the running proxy ({net.kamailio.rpc_socket})"
    assert lines[0] == f"request:  MESSAGE {uri} from unknown"
    assert lines[1:3] == ["service:  cpm.msg", f"identity: {uri}"]
    assert lines[3].startswith(f"profile:  {uri} services=im barred=false interworking=rewrite")
    user = uri.removeprefix("sip:").split("@")[0]
    assert lines[4] == f"contacts: sip:{user}@127.0.0.5:{recipients.device.port} (no tags)"
    assert lines[-2:] == [
        "decision: rewrite to im.pager, deliver",
        "action=rewrite rule=interworking-rewrite status=-",
    ]


def test_explain_without_kamailio_says_registrations_are_unknown(
    net: Network, recipients: Recipients
) -> None:
    env = {**cli_env(net), "CPMIW_RPC_SOCKET": "/nonexistent/kamailio_rpc.sock"}
    uri = recipients.aors["CPM"]
    result = CliRunner().invoke(main, ["explain", uri, "-s", "cpm.msg"], env=env)
    assert result.exit_code == 0, result.output
    assert "contacts: not available (kamailio rpc /nonexistent/kamailio_rpc.sock:" in result.stdout
    assert result.stdout.endswith("action=deliver rule=subscribed status=-\n")


def test_explain_rejects_bad_input_with_one_line(net: Network) -> None:
    runner = CliRunner()
    env = cli_env(net)
    cases = {
        ("explain", f"sip:x@{DOMAIN}", "-s", "cpm.session", "-m", "MESSAGE"): (
            "error: service cpm.session cannot be carried by MESSAGE\n"
        ),
        ("explain", "--message", "-"): "error: not a SIP request: 'SIP/2.0 200 OK'\n",
    }
    for args, message in cases.items():
        result = runner.invoke(main, list(args), input=b"SIP/2.0 200 OK\r\n\r\n", env=env)
        assert (result.exit_code, result.stderr) == (4, message)


def test_request_from_message_reads_headers_as_the_adapter_does() -> None:
    message = (
        b"MESSAGE tel:+15551230002 SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 127.0.0.9:5099;branch=z9hG4bK1\r\n"
        b"i: abc@h\r\nCSeq: 7 MESSAGE\r\n"
        b"a: *;+g.oma.sip-im\r\nAccept-Contact: *;+g.3gpp.smsip\r\n"
        b"Route: <sip:a;lr>\r\nRoute: <sip:b;lr>\r\nContent-Length: 0\r\n\r\n"
    )
    request = request_from_message(message, None)
    assert (request.ruri, request.method, request.source) == (
        "tel:+15551230002",
        "MESSAGE",
        "127.0.0.9",
    )
    assert (request.call_id, request.cseq, request.route) == ("abc@h", "7", "<sip:a;lr>,<sip:b;lr>")
    assert request.headers.accept_contact == "*;+g.oma.sip-im,*;+g.3gpp.smsip"
    assert request_from_message(message, "127.0.0.3").source == "127.0.0.3"
    with pytest.raises(RequestError, match="not a SIP message"):
        request_from_message(b"MESSAGE x SIP/2.0\r\nbroken line\r\n\r\n", None)


def test_explain_decides_with_the_running_proxys_settings(
    net: Network, recipients: Recipients
) -> None:
    """An environment file edited since the start (file transfer to SMS through the IP-SM-GW)
    does not change what explain says: the proxy runs with the default (reject, 488)."""
    edited = {**cli_env(net), "CPMIW_FT_TO_SMS": "ip_sm_gw"}
    uri = recipients.aors["SMS only"]
    args = ["-F", "json", "explain", uri, "-s", "cpm.filetransfer"]
    result = CliRunner().invoke(main, args, env=edited)
    assert result.exit_code == 0, result.output
    explanation = json.loads(result.stdout)
    assert explanation["settings"] == f"the running proxy ({net.kamailio.rpc_socket})"
    assert (explanation["action"], explanation["status"]) == ("reject", 488)
    # without the proxy, the file's settings apply, and explain says so
    offline = CliRunner().invoke(main, [*args, "--no-registrations"], env=edited)
    assert offline.exit_code == 0, offline.output
    explanation = json.loads(offline.stdout)
    assert explanation["settings"] == "the environment (Kamailio not asked)"
    assert explanation["action"] == "to-ip-sm-gw"
