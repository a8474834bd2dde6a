"""Several proxies, active-active: two real Kamailio instances on their own loopback addresses
(127.0.0.21 and 127.0.0.22) sharing one Redis, registrations and device tags shared with DMQ
(kamailio.cfg), AS markers signed with one secret and honoured once across both.

The IM AS (127.0.0.3) is a peer of the test; it sends a request back to the proxy the test
names, as an AS whose DNS gave it another proxy would.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from conftest import (
    CPM_PAGER,
    TRUSTED_REGISTRAR,
    Kamailio,
    RedisServer,
    _stop,
    start_kamailio,
)
from cpmiw.core.devices import SUMMARY_TABLE, usrloc_key
from cpmiw.core.message import SipMessage
from cpmiw.core.profile import Profile
from cpmiw.ops.rpc import KamailioRpc, RpcError
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import connect
from cpmiw.testing import free_port, make_profile, wait_until
from cpmiw.testing.load import Devices, Load, by_status, full_service_after
from cpmiw.testing.sipnet import Peer, StatelessProxy
from sipflows import cpm_message

SECRET = "a-secret-both-proxies-share-0123456789"
IM_TAG = ";+g.oma.sip-im"
HOSTS = ("127.0.0.21", "127.0.0.22")


@dataclass
class Proxies:
    proxies: list[Kamailio]
    envs: list[dict[str, str]]
    im_as: Peer
    ip_sm_gw: Peer
    store: ProfileStore
    log_dir: Path

    def restart(self, index: int) -> Kamailio:
        """Stops proxy `index` and starts it again, same address, ports and settings."""
        _stop(self.proxies[index].process)
        self.proxies[index] = start_kamailio(self.envs[index], self.log_dir)
        _peered(self.proxies)
        return self.proxies[index]


def _envs(redis_url: str, im_as: Peer, ip_sm_gw: Peer) -> list[dict[str, str]]:
    dmq = [f"{host}:{free_port(host)}" for host in HOSTS]
    return [
        {
            "CPMIW_SIP_ADDR": host,
            "CPMIW_SIP_PORT": str(free_port(host)),
            "CPMIW_METRICS_PORT": str(free_port(host)),
            "CPMIW_DMQ_PORT": own.rpartition(":")[2],
            "CPMIW_PEERS": ",".join(peer for peer in dmq if peer != own),
            "CPMIW_SECRET": SECRET,
            "CPMIW_REDIS_URL": redis_url,
            "CPMIW_IM_AS": im_as.uri,
            "CPMIW_IP_SM_GW": ip_sm_gw.uri,
            "CPMIW_AS_TIMEOUT_MS": "500",
            "CPMIW_TRUSTED_REGISTRARS": TRUSTED_REGISTRAR,
        }
        for host, own in zip(HOSTS, dmq, strict=True)
    ]


@pytest.fixture(scope="module")
def pair(redis_server: RedisServer, log_dir: Path) -> Iterator[Proxies]:
    with Peer("127.0.0.3") as im_as, Peer("127.0.0.4") as ip_sm_gw:
        envs = _envs(redis_server.url, im_as, ip_sm_gw)
        proxies = []
        try:
            for env in envs:
                proxies.append(start_kamailio(env, log_dir))
            _peered(proxies)
            store = ProfileStore(connect(redis_server.url, 1.0))
            yield Proxies(proxies, envs, im_as, ip_sm_gw, store, log_dir)
        finally:
            for proxy in proxies:
                _stop(proxy.process)


def _peered(proxies: list[Kamailio]) -> None:
    """Until each proxy knows the others as active DMQ nodes: a proxy answers SIP before its
    first DMQ notification has reached the others, and a write replicates only to known nodes."""

    def active(proxy: Kamailio) -> int:
        with KamailioRpc(str(proxy.rpc_socket)) as rpc:
            nodes = rpc.call("dmq.list_nodes")
        assert isinstance(nodes, list)
        return sum(1 for n in nodes if n.get("status") == "active" and not n.get("local"))

    wait_until(lambda: all(active(p) == len(proxies) - 1 for p in proxies), "DMQ peers")


def _subscriber(pair: Proxies, services: str, **fields: object) -> Profile:
    number = time.monotonic_ns() % 10**7
    profile = make_profile(f"multi{number}", f"+1555{number:07d}", services, **fields)
    pair.store.put([profile])
    return profile


@contextmanager
def _registered(proxy: Kamailio, profile: Profile, tags: str = "") -> Iterator[Peer]:
    """A device of `profile` registered through `proxy` while in use."""
    with Peer(TRUSTED_REGISTRAR) as ue:
        ok = ue.register(proxy.address, profile.registration_aor, contact_params=tags)
        assert ok.status == 200, ok.start_line
        yield ue
        ue.register(proxy.address, profile.registration_aor, expires=0)


def _deliver(caller: Peer, ue: Peer, proxy: Kamailio, request: SipMessage) -> SipMessage:
    caller.send(request, proxy.address)
    received = ue.recv_request("MESSAGE")
    ue.reply(received, 200, "OK")
    assert caller.recv_response().status == 200
    return received


def _new_branch(request: SipMessage) -> list[tuple[str, str]]:
    """The request's headers with a new branch in its top Via: a new transaction."""
    headers = list(request.headers)
    top = next(i for i, (name, _) in enumerate(headers) if name.lower() == "via")
    branch = f"branch=z9hG4bK{time.monotonic_ns()}"
    headers[top] = (headers[top][0], re.sub(r"branch=[^;]*", branch, headers[top][1]))
    return headers


def _known(proxy: Kamailio, *aors: str) -> None:
    """Waits until `proxy` holds each AOR's contacts (usrloc, which delivery looks up) and its
    devices summary (htable, which routing reads): registrations made through another proxy reach
    it by DMQ, a few milliseconds after that proxy answered the REGISTER (and later still while
    the proxies' DMQ handshake, after a start, is under way), each in a DMQ message of its own,
    in either order."""
    wait_until(lambda: all(_replicated(proxy, aor) == (True, True) for aor in aors), "replication")


def _forgotten(proxy: Kamailio, aor: str) -> None:
    """Waits until a de-registration made through another proxy has reached `proxy` (both of
    its DMQ messages)."""
    wait_until(lambda: _replicated(proxy, aor) == (False, False), "de-registration replicated")


def _replicated(proxy: Kamailio, aor: str) -> tuple[bool, bool]:
    """Whether `proxy` has (contacts of `aor` in usrloc, a devices summary of it)."""
    with KamailioRpc(str(proxy.rpc_socket)) as rpc:
        contacts = bool(rpc.contacts(aor))
    return contacts, _summary(proxy, aor) is not None


def _summary(proxy: Kamailio, aor: str) -> str | None:
    with KamailioRpc(str(proxy.rpc_socket)) as rpc:
        try:
            found = rpc.call("htable.get", SUMMARY_TABLE, usrloc_key(aor))
        except RpcError:
            return None
    assert isinstance(found, dict)
    return str(found["item"]["value"])


# ---- registrations and device tags -----------------------------------------------------------


def test_a_device_registered_through_one_proxy_is_reached_through_the_other(
    pair: Proxies,
) -> None:
    a, b = pair.proxies
    dave = _subscriber(pair, "cpm")
    with Peer() as caller, _registered(a, dave, IM_TAG) as ue:
        registered_at = time.monotonic()
        _known(b, dave.registration_aor)
        # Its tags (caps) and its AOR's summary (devices) came along: B rewrites CPM to IM.
        received = _deliver(caller, ue, b, cpm_message(caller, dave.registration_aor))
        delay = time.monotonic() - registered_at
        assert received.header_values("Accept-Contact")[0].startswith("*;+g.oma.sip-im;require")
        summary = _summary(a, dave.registration_aor)
        assert summary is not None and _summary(b, dave.registration_aor) == summary
    print(f"\nregistered through A, delivered through B {delay * 1000:.1f} ms later")
    # The de-registration through A reached B too.
    _forgotten(b, dave.registration_aor)
    with Peer() as caller:
        caller.send(cpm_message(caller, dave.registration_aor), b.address)
        assert caller.recv_response().status == 480


def test_a_restarted_proxy_learns_the_registrations_back(pair: Proxies) -> None:
    erin = _subscriber(pair, "cpm")
    with Peer() as caller, _registered(pair.proxies[0], erin, IM_TAG) as ue:
        b = pair.restart(1)  # B forgets everything it held in memory
        _known(b, erin.registration_aor)
        received = _deliver(caller, ue, b, cpm_message(caller, erin.registration_aor))
        assert received.header_values("Accept-Contact")[0].startswith("*;+g.oma.sip-im;require")


def test_kdmq_from_an_address_not_a_peer_is_refused(pair: Proxies) -> None:
    b = pair.proxies[1]
    dmq_port = int(pair.envs[1]["CPMIW_DMQ_PORT"])
    with Peer("127.0.0.1") as stranger:
        kdmq = stranger.request("KDMQ", f"sip:usrloc@{b.host}:{dmq_port}")
        assert stranger.ask(kdmq, (b.host, dmq_port)).status == 403
    warning = "KDMQ from 127.0.0.1"
    assert warning in b.wait_for_log(warning)


# ---- AS markers ---------------------------------------------------------------------------------


def _to_the_as_and_back(
    pair: Proxies, caller: Peer, ue: Peer, via: Kamailio, back_to: Kamailio, profile: Profile
) -> SipMessage:
    """A CPM MESSAGE sent through `via` to the IM AS, which sends it back through `back_to`;
    the device answers. Returns the request as the AS sent it back (marker route on top)."""
    im_as = StatelessProxy(pair.im_as)
    caller.send(cpm_message(caller, profile.registration_aor), via.address)
    forwarded = im_as.forward_one(to=back_to.address)
    received = ue.recv_request("MESSAGE")
    ue.reply(received, 200, "OK")
    assert [r.status for r in im_as.relay_responses()] == [200]
    assert caller.recv_response().status == 200
    # Each proxy logs its decision after relaying, maybe after the answers came back.
    call_id = forwarded.header("Call-ID") or ""
    if via is back_to:
        via.decision_lines(call_id, 2)
    else:
        via.decision_lines(call_id, 1)
        back_to.decision_lines(call_id, 1)
    return forwarded


def _replayed_from_the_as(pair: Proxies, ue: Peer, forwarded: SipMessage, proxy: Kamailio) -> None:
    """The AS sends a request it sent back once again: the proxy refuses the marker and routes
    the request as any other from an AS address (rule from-as), not as one back from its AS."""
    call_id = forwarded.header("Call-ID") or ""
    logged = len(proxy.decision_lines(call_id, 0))  # its lines of this request so far
    pair.im_as.send(replace(forwarded, headers=_new_branch(forwarded)), proxy.address)
    ue.reply(ue.recv_request("MESSAGE"), 200, "OK")
    assert pair.im_as.recv_response().status == 200
    warning = "replayed AS marker from 127.0.0.3 ignored"
    assert warning in proxy.wait_for_log(warning)
    last = proxy.decision_lines(call_id, logged + 1)[-1]
    assert " rule=from-as " in last


def test_a_marker_issued_by_one_proxy_is_honoured_by_the_other_once(pair: Proxies) -> None:
    a, b = pair.proxies
    erin = _subscriber(pair, "im", interworking="im_as")
    with Peer() as caller, _registered(a, erin) as ue:
        _known(b, erin.registration_aor)
        forwarded = _to_the_as_and_back(pair, caller, ue, a, b, erin)
        assert " rule=returned-from-as " in b.decision_lines(forwarded.header("Call-ID") or "")[0]
        _replayed_from_the_as(pair, ue, forwarded, a)  # honoured by B: refused by A


def test_an_honoured_marker_is_refused_after_a_restart(pair: Proxies) -> None:
    erin = _subscriber(pair, "im", interworking="im_as")
    with Peer() as caller, _registered(pair.proxies[0], erin) as ue:
        a = pair.proxies[0]
        forwarded = _to_the_as_and_back(pair, caller, ue, a, a, erin)
        a = pair.restart(0)
        _known(a, erin.registration_aor)  # learnt back from B
        _replayed_from_the_as(pair, ue, forwarded, a)


def test_the_same_request_handed_to_the_as_twice_is_honoured_twice(pair: Proxies) -> None:
    """Two transactions of one request (same Call-ID, CSeq, method) within a second: each goes
    to the AS with a marker of its own, and each comes back delivered."""
    a = pair.proxies[0]
    erin = _subscriber(pair, "im", interworking="im_as")
    im_as = StatelessProxy(pair.im_as)
    with Peer() as caller, _registered(a, erin) as ue:
        first = cpm_message(caller, erin.registration_aor)
        markers = []
        started = time.monotonic()
        for _ in range(2):
            again = caller.request(
                "MESSAGE", erin.registration_aor, call_id=first.header("Call-ID"), cseq=1
            )
            request = first.replace_header("Via", again.header("Via") or "")
            caller.send(request, a.address)
            forwarded = im_as.forward_one()
            markers.append(forwarded.header_values("Route")[0])
            ue.reply(ue.recv_request("MESSAGE"), 200, "OK")
            im_as.relay_responses()
            assert caller.recv_response().status == 200
        assert time.monotonic() - started < 1.0
    assert markers[0] != markers[1]
    rules = [
        line.split(" rule=")[1].split()[0]
        for line in a.decision_lines(first.header("Call-ID") or "", 4)
    ]
    # Each worker logs after relaying: the lines of one round may come in either order.
    assert sorted(rules) == sorted(["interworking-im_as", "returned-from-as"] * 2)


# ---- a proxy killed under load (last: proxy A stays dead) ---------------------------------------


def test_a_proxy_killed_under_load(pair: Proxies) -> None:
    """A is killed while a caller sends through it; the caller moves to B half a second later.
    Registrations made through A, a marker A issued and a conversation A remembered carry on
    through B, and every request is answered."""
    a, b = pair.proxies
    recipients = [_subscriber(pair, "cpm") for _ in range(10)]
    erin = _subscriber(pair, "im", interworking="im_as")
    alice, carol = _subscriber(pair, "cpm"), _subscriber(pair, "sms")
    devices = Devices()
    devices.register(a.address, [p.registration_aor for p in [*recipients, erin, alice]])
    _known(b, *(p.registration_aor for p in [*recipients, erin, alice]))
    devices.start()
    try:
        with Peer() as caller, Peer("127.0.0.4") as gateway:
            # Through A: a CPM message to an SMS user, whose conversation A keeps.
            first = cpm_message(
                caller, carol.identities[1], from_=f"<{alice.registration_aor}>;tag=a"
            )
            caller.send(first, a.address)
            pair.ip_sm_gw.reply(pair.ip_sm_gw.recv_request("MESSAGE"), 202, "Accepted")
            assert caller.recv_response().status == 202
            load = Load(a.address, [p.registration_aor for p in recipients], 200, CPM_PAGER)
            load.start()
            time.sleep(1.0)
            # A hands a request to the IM AS and dies before the AS sends it back.
            caller.send(cpm_message(caller, erin.registration_aor), a.address)
            im_as = StatelessProxy(pair.im_as)
            handed = pair.im_as.recv_request("MESSAGE")
            killed_at = load.elapsed
            os.killpg(a.process.pid, signal.SIGKILL)
            time.sleep(0.5)
            load.move(b.address)
            # The AS sends its request back to B, as DNS gives it B: A's marker is honoured.
            im_as.forward(handed, to=b.address)
            wait_until(
                lambda: bool(devices.addressed_to(erin.registration_aor)), "delivered through B"
            )
            time.sleep(2.0)
            outcomes = load.stop(drain=5.0)
            # The SMS user's reply through B gets the conversation A remembered.
            reply = gateway.request(
                "MESSAGE",
                alice.registration_aor,
                from_=f"<{carol.identities[1]}>;tag=gw",
                headers=[("Accept-Contact", "*;+g.oma.sip-im"), ("Content-Type", "text/plain")],
                body=b"ok",
            )
            assert gateway.ask(reply, b.address).status == 200
    finally:
        devices.stop()
    recovered = full_service_after(outcomes, killed_at)
    print(
        f"\nproxy A killed at {killed_at:.1f} s, caller on B 0.5 s later: {by_status(outcomes)},"
        f" full service {recovered} s after the kill,"
        f" slowest {max(o.took for o in outcomes):.2f} s"
    )
    assert by_status(outcomes) == {200: len(outcomes)}  # answered, through B if not A
    assert recovered is not None and recovered < 3.0
    to_erin = devices.addressed_to(erin.registration_aor)
    assert len(to_erin) == 1
    assert " rule=returned-from-as " in b.decision_lines(to_erin[0].header("Call-ID") or "")[0]
    to_alice = devices.addressed_to(alice.registration_aor)
    assert to_alice[-1].header("Conversation-ID") == first.header("Conversation-ID")


# ---- settings ---------------------------------------------------------------------------------


def test_several_proxies_without_a_secret_are_refused_at_start(
    redis_server: RedisServer, log_dir: Path
) -> None:
    env = {
        "CPMIW_SIP_ADDR": HOSTS[0],
        "CPMIW_PEERS": f"{HOSTS[1]}:{free_port(HOSTS[1])}",
        "CPMIW_DMQ_PORT": str(free_port(HOSTS[0])),
        "CPMIW_REDIS_URL": redis_server.url,
    }
    with pytest.raises(RuntimeError) as refused:
        start_kamailio(env, log_dir)
    assert "CPMIW_PEERS names other proxies but CPMIW_SECRET is not set" in str(refused.value)
