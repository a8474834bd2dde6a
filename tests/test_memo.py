"""Plain deliveries remembered by the plugin and replayed by kamailio.cfg (route[MEMO]).

Each test sends a request the plugin routes, then one of the same shape that kamailio.cfg
replays (its decision log line ends in `replayed`), and checks the replay is what the plugin
would have done: the same headers at the device, and a new decision as soon as the profile or
the registrations it was made with change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from conftest import Network, RedisServer, make_network
from cpmiw.core.devices import usrloc_key
from cpmiw.core.message import SipMessage
from cpmiw.ops.rpc import KamailioRpc
from cpmiw.testing import wait_until
from cpmiw.testing.sipnet import Peer
from sipflows import (
    CPM_MSG_URN,
    chat_invite,
    cpm_message,
    deliver_and_answer,
    device,
    end_to_end_lines,
    subscriber,
)

IM_TAG = "+g.oma.sip-im"
IM = f";{IM_TAG}"  # registered Contact parameters
CPM = ';+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg"'
SESSION = "oma.cpm.session"
CPM_SESSION = ';+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.session"'


def decision(net: Network, request: SipMessage) -> str:
    call_id = request.header("Call-ID")
    assert call_id is not None
    return net.kamailio.decision_lines(call_id)[0]


def replayed(net: Network, request: SipMessage) -> bool:
    return decision(net, request).endswith(" replayed")


def published_stamp(net: Network) -> dict[str, object]:
    with KamailioRpc(str(net.kamailio.rpc_socket)) as rpc:
        found = rpc.call("pv.shvGet", "cpmiw_changes")
    assert isinstance(found, dict)
    return found


def until_replayed(
    net: Network, caller: Peer, ue: Peer, make: Callable[[], SipMessage]
) -> list[tuple[SipMessage, SipMessage]]:
    """Requests from `make`, each delivered to `ue`, until one is replayed: (as sent, as
    received) each. Nothing is remembered before the change watcher published its first stamp,
    so that comes first; then the second request must be a replay (three are allowed: the
    first may have been routed before the stamp)."""
    wait_until(lambda: published_stamp(net)["value"] != "", "the change watcher's first stamp")
    exchanged: list[tuple[SipMessage, SipMessage]] = []
    while not exchanged or not replayed(net, exchanged[-1][0]):
        assert len(exchanged) < 3, "nothing replayed"
        request = make()
        exchanged.append((request, deliver_and_answer(caller, ue, request, net)))
    return exchanged


def test_a_rewrite_is_replayed_with_the_same_headers(net: Network) -> None:
    bob = subscriber(net, "im")
    with Peer() as caller, device(net, bob, tags=IM) as ue:
        exchanged = until_replayed(
            net, caller, ue, lambda: cpm_message(caller, bob.registration_aor)
        )
    (first, at_first), (last, at_last) = exchanged[0], exchanged[-1]
    assert not replayed(net, first)
    assert "action=rewrite rule=interworking-rewrite status=-" in decision(net, last)

    def without_ids(msg: SipMessage) -> list[str]:
        return [
            line
            for line in end_to_end_lines(msg)
            if line.split(":")[0].lower() not in ("call-id", "cseq", "from", "to")
        ]

    assert without_ids(at_last) == without_ids(at_first)
    assert at_last.header_values("Accept-Contact")[0].startswith(f"*;{IM_TAG};require")
    assert at_last.header("P-Preferred-Service") is None  # the CPM URN left with the rewrite


def test_a_chat_invitation_rewritten_is_replayed_for_another_senders_device(net: Network) -> None:
    """The Contact of an invitation to an IM-only recipient names the sender's device: what is
    remembered is its rewritten header parameters, and a replay puts them after the next
    sender's own name-addr."""
    bob = subscriber(net, "im")
    with device(net, bob, tags=IM) as ue:
        with Peer() as first:
            exchanged = until_replayed(
                net, first, ue, lambda: chat_invite(first, bob.registration_aor, SESSION)
            )
        with Peer() as second:
            invite = chat_invite(second, bob.registration_aor, SESSION)
            at_ue = deliver_and_answer(second, ue, invite, net)
    assert not replayed(net, exchanged[0][0])
    assert exchanged[0][1].header("Contact") == f"<sip:caller@127.0.0.1:{first.port}>{IM}"
    assert replayed(net, invite)
    assert "action=rewrite rule=interworking-rewrite" in decision(net, invite)
    assert at_ue.header("Contact") == f"<sip:caller@127.0.0.1:{second.port}>{IM}"


def test_a_delivery_named_by_the_contact_alone_is_replayed_for_that_contact_only(
    net: Network,
) -> None:
    """A chat invitation whose service only its Contact names: the outcome holds for this very
    Contact (route[MEMO]'s third key). The same sender's device gets it replayed; another
    device of the same sender, the plugin's own decision."""
    carol = subscriber(net, "cpm")

    def named_by_the_contact(caller: Peer) -> SipMessage:
        return chat_invite(caller, carol.registration_aor, SESSION).without_header("Accept-Contact")

    with device(net, carol, tags=CPM_SESSION) as ue:
        with Peer() as first:
            exchanged = until_replayed(net, first, ue, lambda: named_by_the_contact(first))
        with Peer() as second:
            other = named_by_the_contact(second)
            deliver_and_answer(second, ue, other, net)
    assert not replayed(net, exchanged[0][0])
    assert "action=deliver" in decision(net, exchanged[-1][0])
    assert not replayed(net, other)
    assert "action=deliver" in decision(net, other)


def test_an_untrusted_p_asserted_service_is_removed_on_replay_too(net: Network) -> None:
    dave = subscriber(net, "cpm")

    def asserting() -> SipMessage:
        request = cpm_message(caller, dave.registration_aor)
        return request.with_header("P-Asserted-Service", CPM_MSG_URN)

    with Peer() as caller, device(net, dave, tags=CPM) as ue:
        exchanged = until_replayed(net, caller, ue, asserting)
    assert [received.header("P-Asserted-Service") for _, received in exchanged] == [None] * len(
        exchanged
    )


def test_a_service_header_however_written_is_part_of_the_shape(net: Network) -> None:
    """route[MEMO] reads P-Preferred-Service only where is_present_hf finds one: it must find it
    whatever the case of its name and the blanks before its colon, or a request with one would
    be replayed as the same request without."""
    fay = subscriber(net, "cpm")
    with Peer() as caller, device(net, fay, tags=CPM) as ue:

        def plain() -> SipMessage:
            request = cpm_message(caller, fay.registration_aor)
            return request.without_header("P-Preferred-Service")

        def odd() -> SipMessage:
            return plain().with_header("p-preferred-service ", CPM_MSG_URN)

        until_replayed(net, caller, ue, plain)
        first, again = odd(), odd()
        for request in (first, again):
            deliver_and_answer(caller, ue, request, net)
    assert b"p-preferred-service :" in first.to_bytes()
    assert not replayed(net, first)
    assert replayed(net, again)


def test_a_profile_change_is_routed_by_the_plugin_at_once(net: Network) -> None:
    """Nothing remembered is replayed once the change watcher published the write's stamp (a
    millisecond or two after the write: README, "Live profile changes")."""
    bob = subscriber(net, "im")
    with Peer() as caller, device(net, bob, tags=IM) as ue:
        until_replayed(net, caller, ue, lambda: cpm_message(caller, bob.registration_aor))
        before = published_stamp(net)
        net.store.put([msgspec.structs.replace(bob, barred=True)])
        wait_until(lambda: published_stamp(net) != before, "the new change stamp")
        barred = cpm_message(caller, bob.registration_aor)
        assert caller.ask(barred, net.kamailio.address).status == 403
    assert not replayed(net, barred)


def test_a_new_registration_is_routed_by_the_plugin(net: Network) -> None:
    """The IM tablet gives way to a CPM phone: no rewrite any more, at once."""
    carol = subscriber(net, "cpm,im")
    with Peer() as caller:
        with device(net, carol, tags=IM) as tablet:
            for _ in range(2):
                at_tablet = deliver_and_answer(
                    caller, tablet, cpm_message(caller, carol.registration_aor), net
                )
        assert at_tablet.header_values("Accept-Contact")[0].startswith(f"*;{IM_TAG}")
        with device(net, carol, tags=CPM) as phone:
            request = cpm_message(caller, carol.registration_aor)
            at_phone = deliver_and_answer(caller, phone, request, net)
    assert not replayed(net, request)
    assert "icsi.oma.cpm.msg" in at_phone.header_values("Accept-Contact")[0]


def test_a_contact_removed_behind_the_registrar_gets_the_plugins_480(net: Network) -> None:
    erin = subscriber(net, "cpm")
    with Peer() as caller, device(net, erin, tags=CPM) as ue:
        for _ in range(2):
            deliver_and_answer(caller, ue, cpm_message(caller, erin.registration_aor), net)
        with KamailioRpc(str(net.kamailio.rpc_socket)) as rpc:
            rpc.call("ul.rm", "location", usrloc_key(erin.registration_aor))
        request = cpm_message(caller, erin.registration_aor)
        assert caller.ask(request, net.kamailio.address).status == 480
    assert "rule=not-registered status=480" in decision(net, request)


@pytest.fixture(scope="module")
def unremembering(redis_server: RedisServer, log_dir: Path) -> Iterator[Network]:
    yield from make_network(redis_server, log_dir, {"CPMIW_MEMO_TTL": "0"})


def test_nothing_is_replayed_with_memo_ttl_zero(unremembering: Network) -> None:
    net = unremembering
    bob = subscriber(net, "im")
    with Peer() as caller, device(net, bob, tags=IM) as ue:
        sent = [cpm_message(caller, bob.registration_aor) for _ in range(3)]
        for request in sent:
            deliver_and_answer(caller, ue, request, net)
    assert [replayed(net, request) for request in sent] == [False, False, False]


def test_a_header_longer_than_kamailios_default_buffer_counts_as_written(net: Network) -> None:
    """A header value longer than Kamailio's default variable buffer (8 KB) read as absent:
    a request whose Reject-Contact excludes the recipient's only device was delivered by the
    plugin, and replayed as the same request without it. kamailio.cfg's pv_buffer_size holds
    any value of a request it routes (MAX_MESSAGE)."""
    hal = subscriber(net, "cpm")
    with Peer() as caller, device(net, hal, tags=CPM) as ue:
        until_replayed(net, caller, ue, lambda: cpm_message(caller, hal.registration_aor))
        for padding in (9_000, 60_000):
            rejecting = cpm_message(caller, hal.registration_aor).with_header(
                "Reject-Contact", f"*{CPM};x={'a' * padding}"
            )
            assert len(rejecting.to_bytes()) > padding
            caller.send(rejecting, net.kamailio.address)
            assert caller.recv_response().status == 480
            assert "action=reject rule=no-matching-device" in decision(net, rejecting)
        ue.expect_nothing(0.2)
