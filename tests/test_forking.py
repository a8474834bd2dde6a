"""Per-device delivery and SMS fallback end to end: real Kamailio, Redis and SIP peers.

A subscriber holds a CPM phone, an IM-only tablet and an SMS phone, each a peer registered with
its feature tags. The proxy of this module gives the devices 500 ms (CPMIW_FALLBACK_MS) before
the IP-SM-GW (127.0.0.4) gets a CPM request none of them took.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from test_metrics import moved, scrape

from conftest import DOMAIN, Network, RedisServer, drain, make_network
from cpmiw.core.message import SipMessage
from cpmiw.core.profile import Profile
from cpmiw.core.rewrite import rewrite_feature_header
from cpmiw.core.services import Service
from cpmiw.ops.cli import main
from cpmiw.store.conversations import KEY as CONVERSATIONS
from cpmiw.testing import ICSI
from cpmiw.testing.sipnet import Peer
from sipflows import (
    cancel_of,
    chat_invite,
    cpm_message,
    device,
    end_to_end_lines,
    next_provisional,
    subscriber,
)

FALLBACK = 0.5  # s: CPMIW_FALLBACK_MS of this module's proxy
# Kamailio's timers count ticks of 1/16 s and start from the last tick, not from now: a timer
# set just before a tick fires up to one tick before its nominal time.
EARLIEST = FALLBACK - 1 / 16 - 0.005
CPM_TAGS = f';+g.3gpp.icsi-ref="{ICSI}oma.cpm.msg,{ICSI}oma.cpm.session"'
IM_TAGS = ";+g.oma.sip-im"
SMS_TAGS = ";+g.3gpp.smsip"
REWRITTEN = {"accept-contact", "p-preferred-service"}  # what CPM -> IM changes


@pytest.fixture(scope="module")
def network(redis_server: RedisServer, log_dir: Path) -> Iterator[Network]:
    yield from make_network(redis_server, log_dir, {"CPMIW_FALLBACK_MS": str(int(FALLBACK * 1000))})


@pytest.fixture
def net(network: Network) -> Network:
    drain(network.im_as, network.ip_sm_gw)
    return network


@dataclass
class Devices:
    profile: Profile
    phone: Peer
    tablet: Peer
    sms_phone: Peer


@pytest.fixture
def trio(net: Network) -> Iterator[Devices]:
    """A CPM+IM+SMS subscriber with a CPM phone, an IM-only tablet and an SMS phone."""
    profile = subscriber(net, "cpm,im,sms")
    with ExitStack() as stack:
        phone, tablet, sms_phone = (
            stack.enter_context(device(net, profile, tags=tags))
            for tags in (CPM_TAGS, IM_TAGS, SMS_TAGS)
        )
        yield Devices(profile, phone, tablet, sms_phone)


@dataclass
class Staged:
    profile: Profile
    phone: Peer  # q=1.0: tried first
    tablet: Peer  # q=0.5


@pytest.fixture
def staged(net: Network) -> Iterator[Staged]:
    """A CPM+IM subscriber with a CPM phone (q=1.0) and an IM tablet registered with q=0.5."""
    profile = subscriber(net, "cpm,im")
    with (
        device(net, profile, tags=f"{IM_TAGS};q=0.5") as tablet,
        device(net, profile, tags=CPM_TAGS) as phone,
    ):
        yield Staged(profile, phone, tablet)


def _rules(net: Network, msg: SipMessage, count: int = 1) -> list[str]:
    lines = net.kamailio.decision_lines(msg.header("Call-ID") or "", count)
    return [line.split(" rule=")[1].split()[0] for line in lines]


def _as_im(sent: SipMessage) -> list[str]:
    """The header lines of `sent` as an IM device must get them: every one as sent, but the
    Accept-Contact rewritten (one line, at the end) and the CPM P-Preferred-Service gone."""
    kept = [line for line in end_to_end_lines(sent) if line.split(":")[0].lower() not in REWRITTEN]
    accept = ",".join(sent.header_values("Accept-Contact"))
    im = rewrite_feature_header(accept, Service.CPM_MSG, Service.IM_PAGER)
    return [*kept, f"Accept-Contact: {im}"]


def test_each_device_gets_the_tag_it_understands_in_one_fork(net: Network, trio: Devices) -> None:
    with Peer() as caller:
        sent = cpm_message(caller, trio.profile.registration_aor)
        caller.send(sent, net.kamailio.address)
        at_phone = trio.phone.recv_request("MESSAGE")
        at_tablet = trio.tablet.recv_request("MESSAGE")
        trio.phone.reply(at_phone, 200, "OK")
        assert caller.recv_response().status == 200
        trio.tablet.reply(at_tablet, 200, "OK")
        trio.sms_phone.expect_nothing(0.1)
    assert end_to_end_lines(at_phone) == end_to_end_lines(sent)  # the CPM ICSI, byte for byte
    assert end_to_end_lines(at_tablet) == _as_im(sent)
    assert at_tablet.header_values("Accept-Contact")[0].startswith("*;+g.oma.sip-im;require")
    assert at_phone.body == at_tablet.body == sent.body
    net.ip_sm_gw.expect_nothing(FALLBACK + 0.3)  # a device took it: no fallback
    assert _rules(net, sent) == ["subscribed"]


def test_reject_contact_leaves_the_devices_it_names_out(net: Network, trio: Devices) -> None:
    with Peer() as caller:
        sent = cpm_message(caller, trio.profile.registration_aor)
        sent = sent.with_header("Reject-Contact", "*;+g.oma.sip-im")
        caller.send(sent, net.kamailio.address)
        trio.phone.reply(trio.phone.recv_request("MESSAGE"), 200, "OK")
        assert caller.recv_response().status == 200
    trio.tablet.expect_nothing(0.1)
    trio.sms_phone.expect_nothing(0.1)


def test_no_fork_reaches_one_device(net: Network, staged: Staged) -> None:
    phone, tablet = staged.phone, staged.tablet
    with Peer() as caller:
        sent = cpm_message(caller, staged.profile.registration_aor)
        caller.send(sent.with_header("Request-Disposition", "no-fork"), net.kamailio.address)
        phone.reply(phone.recv_request("MESSAGE"), 200, "OK")  # q=1.0: the best
        assert caller.recv_response().status == 200
        tablet.expect_nothing(0.2)


def test_q_values_fork_serially(net: Network, staged: Staged) -> None:
    phone, tablet = staged.phone, staged.tablet
    with Peer() as caller:
        sent = cpm_message(caller, staged.profile.registration_aor)
        caller.send(sent, net.kamailio.address)
        at_phone = phone.recv_request("MESSAGE")
        tablet.expect_nothing(0.2)  # the next stage waits for the first
        phone.reply(at_phone, 480, "Temporarily Unavailable")
        at_tablet = tablet.recv_request("MESSAGE")
        tablet.reply(at_tablet, 200, "OK")
        assert caller.recv_response().status == 200
    assert end_to_end_lines(at_phone) == end_to_end_lines(sent)
    assert end_to_end_lines(at_tablet) == _as_im(sent)


def _gateway_takes(net: Network, caller: Peer, sent: SipMessage) -> tuple[SipMessage, float]:
    """The IP-SM-GW gets `sent` and accepts it; its request and the seconds it took to come."""
    started = time.monotonic()
    caller.send(sent, net.kamailio.address)
    at_gw = net.ip_sm_gw.recv_request(sent.method, timeout=FALLBACK + 3)
    took = time.monotonic() - started
    net.ip_sm_gw.reply(at_gw, 202, "Accepted")
    assert caller.recv_response().status == 202
    return at_gw, took


def test_silent_devices_fall_back_to_sms_within_the_timer_once(net: Network, trio: Devices) -> None:
    before = scrape(net.kamailio.metrics_url)
    with Peer() as caller:
        sent = cpm_message(caller, trio.profile.registration_aor)
        at_gw, took = _gateway_takes(net, caller, sent)
        assert trio.phone.recv_request("MESSAGE")  # got it, never answered
        trio.tablet.reply(trio.tablet.recv_request("MESSAGE"), 480, "Away")
        net.ip_sm_gw.expect_nothing(FALLBACK + 0.3)  # once
    assert EARLIEST <= took < FALLBACK + 1.0
    assert end_to_end_lines(at_gw) == end_to_end_lines(sent)  # as sent, the CPM tag kept
    assert at_gw.ruri == sent.ruri
    assert _rules(net, sent, 2) == ["subscribed", "sms-fallback"]
    after = scrape(net.kamailio.metrics_url)
    assert moved(before, after, "cpmiw_sms_fallbacks_total") == {("timeout",): 1}
    remembered = net.redis.client().hgetall(
        f"{CONVERSATIONS}sip:peer@{caller.host}|{trio.profile.subscriber}"
    )
    assert remembered == {
        b"conversation": (sent.header("Conversation-ID") or "").encode(),
        b"contribution": (sent.header("Contribution-ID") or "").encode(),
    }


def _until_replayed(net: Network, exchange: Callable[[], SipMessage]) -> SipMessage:
    """Requests made and answered by `exchange` until kamailio.cfg replays one (route[MEMO]);
    that one. The first is the plugin's; the next may be too, if it was routed before the change
    watcher published the stamp of the subscriber's profile."""
    for _ in range(3):
        sent = exchange()
        if net.kamailio.decision_lines(sent.header("Call-ID") or "")[0].endswith(" replayed"):
            return sent
    raise AssertionError("nothing replayed")


def test_a_remembered_delivery_falls_back_as_the_plugins_own(net: Network) -> None:
    """A request replayed by kamailio.cfg gets its SMS fallback armed there: a silent device
    sends it to the IP-SM-GW within the timer all the same."""
    profile = subscriber(net, "cpm,sms")
    with Peer() as caller, device(net, profile, tags=CPM_TAGS) as phone:

        def silent() -> SipMessage:
            sent = cpm_message(caller, profile.registration_aor)
            at_gw, took = _gateway_takes(net, caller, sent)
            assert phone.recv_request("MESSAGE")  # never answered
            assert EARLIEST <= took < FALLBACK + 1.0
            assert end_to_end_lines(at_gw) == end_to_end_lines(sent)
            net.ip_sm_gw.expect_nothing(0.1)
            return sent

        sent = _until_replayed(net, silent)
    fell_back = net.kamailio.decision_lines(sent.header("Call-ID") or "", 2)[1]
    assert " action=to-ip-sm-gw rule=sms-fallback " in fell_back


def test_caller_preferences_are_part_of_a_remembered_shape(net: Network) -> None:
    profile = subscriber(net, "im")
    with Peer() as caller, device(net, profile, tags=IM_TAGS) as tablet:

        def plain() -> SipMessage:
            sent = cpm_message(caller, profile.registration_aor)
            caller.send(sent, net.kamailio.address)
            tablet.reply(tablet.recv_request("MESSAGE"), 200, "OK")
            assert caller.recv_response().status == 200
            return sent

        _until_replayed(net, plain)
        sent = cpm_message(caller, profile.registration_aor)
        sent = sent.with_header("Reject-Contact", "*;+g.oma.sip-im")
        assert caller.ask(sent, net.kamailio.address).status == 480
        tablet.expect_nothing(0.1)
    assert _rules(net, sent) == ["no-matching-device"]


def test_the_fallback_leaves_the_device_path_behind(net: Network) -> None:
    """A device reached through its P-CSCF (Path): the IP-SM-GW gets the request without that
    route, as any request for it."""
    profile = subscriber(net, "cpm,sms")
    with Peer() as caller, Peer("127.0.0.5") as phone, Peer("127.0.0.8") as pcscf:
        register = phone.request(
            "REGISTER",
            f"sip:{DOMAIN}",
            to=f"<{profile.registration_aor}>",
            from_=f"<{profile.registration_aor}>;tag=p",
            headers=[("Path", f"<sip:term@{pcscf.host}:{pcscf.port};lr>")],
        ).replace_header("Contact", f"<sip:ue@{phone.host}:{phone.port}>{CPM_TAGS};expires=600")
        assert phone.ask(register, net.kamailio.address).status == 200
        sent = cpm_message(caller, profile.registration_aor)
        at_gw, _ = _gateway_takes(net, caller, sent)
        assert pcscf.recv_request("MESSAGE").ruri == f"sip:ue@{phone.host}:{phone.port}"
        pcscf.expect_nothing(0.2)
    routes = [route for line in at_gw.header_values("Route") for route in line.split(",")]
    assert routes[0].strip() == f"<{net.ip_sm_gw.uri};lr>"
    assert not any(pcscf.uri.split(":", 1)[1] in route for route in routes)


def test_a_busy_device_falls_back_at_once(net: Network) -> None:
    profile = subscriber(net, "cpm,sms")
    with Peer() as caller, device(net, profile, tags=CPM_TAGS) as phone:
        sent = cpm_message(caller, profile.registration_aor)
        caller.send(sent, net.kamailio.address)
        at_phone = phone.recv_request("MESSAGE")
        # Answered once the delivery is logged (after relaying): the failure route's worker
        # logs the fallback, and could otherwise write first.
        _rules(net, sent)
        phone.reply(at_phone, 486, "Busy Here")
        started = time.monotonic()
        net.ip_sm_gw.reply(net.ip_sm_gw.recv_request("MESSAGE"), 202, "Accepted")
        assert time.monotonic() - started < FALLBACK
        assert caller.recv_response().status == 202
    assert _rules(net, sent, 2) == ["subscribed", "sms-fallback"]


@pytest.mark.parametrize(("status", "reason"), [(603, "Decline"), (488, "Not Acceptable Here")])
def test_a_device_that_turns_it_down_ends_it(net: Network, status: int, reason: str) -> None:
    profile = subscriber(net, "cpm,sms")
    with Peer() as caller, device(net, profile, tags=CPM_TAGS) as phone:
        caller.send(cpm_message(caller, profile.registration_aor), net.kamailio.address)
        phone.reply(phone.recv_request("MESSAGE"), status, reason)
        assert caller.recv_response().status == status
    net.ip_sm_gw.expect_nothing(FALLBACK + 0.3)


def test_a_device_that_accepts_ends_it(net: Network) -> None:
    profile = subscriber(net, "cpm,sms")
    with Peer() as caller, device(net, profile, tags=CPM_TAGS) as phone:
        caller.send(cpm_message(caller, profile.registration_aor), net.kamailio.address)
        phone.reply(phone.recv_request("MESSAGE"), 200, "OK")
        assert caller.recv_response().status == 200
    net.ip_sm_gw.expect_nothing(FALLBACK + 0.3)


def test_no_fallback_when_the_profile_says_so(net: Network) -> None:
    profile = subscriber(net, "cpm,sms", sms_fallback=False)
    with Peer() as caller, device(net, profile, tags=CPM_TAGS) as phone:
        caller.send(cpm_message(caller, profile.registration_aor), net.kamailio.address)
        phone.reply(phone.recv_request("MESSAGE"), 480, "Away")
        assert caller.recv_response().status == 480
    net.ip_sm_gw.expect_nothing(0.2)


def test_a_chat_invitation_nobody_picks_up_goes_to_the_ip_sm_gw(net: Network) -> None:
    profile = subscriber(net, "cpm,sms")
    with Peer() as caller, device(net, profile, tags=CPM_TAGS) as phone:
        invite = chat_invite(caller, profile.registration_aor, "oma.cpm.session")
        caller.send(invite, net.kamailio.address)
        at_phone = phone.recv_request("INVITE")
        phone.reply(at_phone, 180, "Ringing")
        assert next_provisional(caller).status == 180
        cancel = phone.recv_request("CANCEL", timeout=FALLBACK + 2)  # no answer in time
        phone.reply(cancel, 200, "OK")
        phone.reply(at_phone, 487, "Request Terminated")
        phone.recv_request("ACK")
        at_gw = net.ip_sm_gw.recv_request("INVITE")
        net.ip_sm_gw.reply(at_gw, 480, "Sent As SMS")  # the invitation went as a text
        assert caller.recv_response().status == 480
    assert at_gw.body == invite.body
    assert end_to_end_lines(at_gw) == end_to_end_lines(invite)


def test_cancel_ends_it(net: Network) -> None:
    """The phone takes the CANCEL but never ends its INVITE: its branch times out after the
    caller cancelled, which must not bring the IP-SM-GW in."""
    profile = subscriber(net, "cpm,sms")
    with Peer() as caller, device(net, profile, tags=CPM_TAGS) as phone:
        invite = chat_invite(caller, profile.registration_aor, "oma.cpm.session")
        caller.send(invite, net.kamailio.address)
        at_phone = phone.recv_request("INVITE")
        phone.reply(at_phone, 180, "Ringing")
        assert next_provisional(caller).status == 180
        caller.send(cancel_of(invite), net.kamailio.address)
        phone.reply(phone.recv_request("CANCEL"), 200, "OK")
        finals = {caller.recv_response().status, caller.recv_response(FALLBACK + 2).status}
        assert finals == {200, 487}  # the CANCEL's and the INVITE's
    net.ip_sm_gw.expect_nothing(FALLBACK + 0.3)
    assert _rules(net, invite) == ["subscribed"]  # no fallback decided either


def test_an_as_failing_over_forks_per_device(net: Network) -> None:
    """The IM AS fails (default handling continue): the plan's fallback, kept in the
    transaction, forks from the failure route with each device's own tag."""
    erin = subscriber(net, "im", interworking="im_as", as_failure="continue")
    with (
        Peer() as caller,
        device(net, erin, tags=IM_TAGS) as tablet,
        device(net, erin, tags=CPM_TAGS) as phone,  # a CPM client: no CPM on this subscription
    ):
        sent = cpm_message(caller, erin.registration_aor)
        caller.send(sent, net.kamailio.address)
        at_as = net.im_as.recv_request("MESSAGE")
        # Answered once the hand-off is logged (after relaying): the failure route's worker
        # logs the fallback, and could otherwise write first.
        _rules(net, sent)
        net.im_as.reply(at_as, 503, "Service Unavailable")
        at_tablet = tablet.recv_request("MESSAGE")
        tablet.reply(at_tablet, 200, "OK")
        assert caller.recv_response().status == 200
        phone.expect_nothing(0.2)
    assert end_to_end_lines(at_tablet) == _as_im(sent)
    assert _rules(net, sent, 2) == ["interworking-im_as", "as-failed-continue"]


def test_explain_shows_each_device_its_tag_and_the_fallback(net: Network, trio: Devices) -> None:
    env = {
        "CPMIW_REDIS_URL": net.redis.url,
        "CPMIW_RPC_SOCKET": str(net.kamailio.rpc_socket),
        "CPMIW_IP_SM_GW": net.ip_sm_gw.uri,
        "CPMIW_DOMAINS": DOMAIN,
        "CPMIW_FALLBACK_MS": str(int(FALLBACK * 1000)),
    }
    args = ["explain", trio.profile.registration_aor, "-s", "cpm.msg"]
    shown = CliRunner().invoke(main, ["-F", "json", *args], env=env)
    assert shown.exit_code == 0, shown.output
    explanation = msgspec.json.decode(shown.stdout)
    phone, tablet, sms_phone = (
        f"sip:{p.host}:{p.port}" for p in (trio.phone, trio.tablet, trio.sms_phone)
    )
    branches = {b["uri"].split("@")[1]: b["service"] for b in explanation["branches"]}
    assert branches == {phone[4:]: "cpm.msg", tablet[4:]: "im.pager"}
    [left_out] = explanation["left_out"]
    assert (left_out["uri"].split("@")[1], left_out["why"]) == (
        sms_phone[4:],
        "reached through the IP-SM-GW",
    )
    assert explanation["sms_fallback"] == net.ip_sm_gw.uri
    text = CliRunner().invoke(main, args, env=env).stdout
    assert f"fallback: {net.ip_sm_gw.uri} (IP-SM-GW) if every device fails" in text
    assert "-> im.pager, tag rewritten" in text
