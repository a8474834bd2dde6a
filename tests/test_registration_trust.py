"""Who may register: digest authentication, trusted registrars, third-party REGISTER.

Real Kamailio with the repo's cfg, real Redis, SIP peers on loopback. The proxies here trust one
registrar, the S-CSCF at 127.0.0.9; devices register from 127.0.0.6, an address they do not
trust, so they must authenticate (the digest client is cpmiw.testing.digest, written apart from
the product's HA1 code).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest

from conftest import Network, RedisServer, make_network, start_redis
from cpmiw.core.credential import from_password
from cpmiw.core.devices import Device
from cpmiw.core.message import SipMessage
from cpmiw.core.profile import Profile
from cpmiw.core.services import Family
from cpmiw.ops.rpc import KamailioRpc
from cpmiw.store.credentials import CredentialStore, credential_key
from cpmiw.testing.digest import authorization, challenge_params
from cpmiw.testing.sipnet import Peer
from sipflows import cpm_message, deliver_and_answer, subscriber

SCENARIOS = Path(__file__).parent / "scenarios"
SCSCF = "127.0.0.9"  # the trusted registrar
DEVICE = "127.0.0.6"  # a device's address: not trusted
PASSWORD = "correct horse battery"
IM = ";+g.oma.sip-im"


# The tests here register from DEVICE faster than a device would: the per-source rate limit
# (tests/test_registration_flood.py) is raised out of their way.
TRUSTING = {"CPMIW_TRUSTED_REGISTRARS": SCSCF, "CPMIW_REGISTER_RATE": "1000"}


@pytest.fixture(scope="module")
def digest(redis_server: RedisServer, log_dir: Path) -> Iterator[Network]:
    """A proxy taking registrations by digest (MD5) and from the S-CSCF."""
    yield from make_network(redis_server, log_dir, TRUSTING)


@pytest.fixture(scope="module")
def sha256(redis_server: RedisServer, log_dir: Path) -> Iterator[Network]:
    yield from make_network(
        redis_server, log_dir, {**TRUSTING, "CPMIW_DIGEST_ALGORITHM": "SHA-256"}
    )


@pytest.fixture(scope="module")
def trusted_only(redis_server: RedisServer, log_dir: Path) -> Iterator[Network]:
    yield from make_network(redis_server, log_dir, {**TRUSTING, "CPMIW_REGISTRATION": "trusted"})


def _with_password(net: Network, services: str = "cpm") -> Profile:
    """A fresh subscriber whose devices register with PASSWORD."""
    profile = subscriber(net, services)
    store = CredentialStore(net.redis.client())
    store.put([from_password(profile.registration_aor, PASSWORD)])
    return profile


def _contacts(net: Network, aor: str) -> list[Device]:
    with KamailioRpc(str(net.kamailio.rpc_socket)) as rpc:
        return rpc.contacts(aor)


def _register(
    peer: Peer,
    aor: str,
    *,
    contact: str | None = None,
    call_id: str = "",
    cseq: int = 1,
    headers: list[tuple[str, str]] | None = None,
) -> SipMessage:
    """A REGISTER of `aor` from `peer` (binding the peer itself unless `contact` says)."""
    domain = aor.rpartition("@")[2]
    request = peer.request(
        "REGISTER",
        f"sip:{domain}",
        to=f"<{aor}>",
        from_=f"<{aor}>;tag=d1",
        call_id=call_id or None,
        cseq=cseq,
        headers=headers,
    )
    return request.replace_header("Contact", contact or f"<sip:u@{peer.host}:{peer.port}>")


def _challenge(net: Network, peer: Peer, aor: str, **kwargs: object) -> tuple[SipMessage, str]:
    """Sends a REGISTER without credentials; returns it and the 401's challenge."""
    request = _register(peer, aor, **kwargs)  # type: ignore[arg-type]
    answer = peer.ask(request, net.kamailio.address)
    assert answer.status == 401, answer.start_line
    challenge = answer.header("WWW-Authenticate")
    assert challenge is not None
    return request, challenge


def _with_credentials(
    peer: Peer,
    first: SipMessage,
    challenge: str,
    password: str = PASSWORD,
    *,
    contact: str | None = None,
    nc: int = 1,
    algorithm: str | None = None,
) -> SipMessage:
    """`first` again (same Call-ID, next CSeq) answering `challenge` with `password`."""
    aor = (first.header("to") or "").strip("<>")
    user = aor.partition(":")[2].partition("@")[0]
    credentials = authorization(
        challenge, "REGISTER", first.ruri, user, password, nc=nc, algorithm=algorithm
    )
    cseq = int((first.header("cseq") or "1").split()[0]) + nc
    return _register(
        peer,
        aor,
        contact=contact or first.header("contact"),
        call_id=first.header("call-id") or "",
        cseq=cseq,
        headers=[("Authorization", credentials)],
    )


def _message_reaches(net: Network, aor: str, ue: Peer) -> SipMessage:
    with Peer() as caller:
        return deliver_and_answer(caller, ue, cpm_message(caller, aor), net)


def _message_unregistered(net: Network, aor: str) -> None:
    with Peer() as caller:
        caller.send(cpm_message(caller, aor), net.kamailio.address)
        assert caller.recv_response().status == 480


# -- digest authentication -------------------------------------------------------------------


def test_a_register_without_credentials_is_challenged_and_binds_nothing(digest: Network) -> None:
    bob = _with_password(digest)
    with Peer(DEVICE) as ue:
        _, challenge = _challenge(digest, ue, bob.registration_aor)
    params = challenge_params(challenge)
    assert params["realm"] == "ims.example.net"
    assert params["algorithm"] == "MD5"
    assert params["qop"] == "auth"
    assert _contacts(digest, bob.registration_aor) == []


def test_md5_credentials_bind_and_the_device_gets_its_messages(digest: Network) -> None:
    bob = _with_password(digest, "cpm")
    aor = bob.registration_aor
    with Peer(DEVICE) as ue:
        assert (
            ue.register(digest.kamailio.address, aor, contact_params=IM, password=PASSWORD).status
            == 200
        )
        assert [c.families for c in _contacts(digest, aor)] == [frozenset({Family.IM})]
        received = _message_reaches(digest, aor, ue)
        gone = ue.register(digest.kamailio.address, aor, expires=0, password=PASSWORD)
    assert received.header_values("Accept-Contact")[0].startswith("*;+g.oma.sip-im")
    assert gone.status == 200
    assert _contacts(digest, aor) == []


def test_a_device_on_tcp_registers_with_digest(digest: Network) -> None:
    pete = _with_password(digest)
    aor = pete.registration_aor
    with Peer(DEVICE, transport="tcp") as ue:
        assert ue.register(digest.kamailio.address, aor, password=PASSWORD).status == 200
        _message_reaches(digest, aor, ue)
        assert ue.register(digest.kamailio.address, aor, expires=0, password=PASSWORD).status == 200


@pytest.mark.parametrize(("password", "status"), [(PASSWORD, 0), ("not the password", 1)])
def test_sipp_registers_with_its_own_digest(
    digest: Network, tmp_path: Path, password: str, status: int
) -> None:
    """Another client's digest implementation (sipp's) against the proxy's."""
    olga = _with_password(digest)
    user = olga.registration_aor.partition(":")[2].partition("@")[0]
    run = subprocess.run(
        ["sipp", "-sf", str(SCENARIOS / "register-digest.xml"), "-s", user, "-au", user,
         "-ap", password, "-i", DEVICE, "-p", "0", "-m", "1", "-timeout", "5", "-nostdin",
         f"127.0.0.1:{digest.kamailio.port}"],
        cwd=tmp_path, capture_output=True, timeout=20, check=False,
    )  # fmt: skip
    assert run.returncode == status, run.stderr.decode(errors="replace")[-500:]
    assert len(_contacts(digest, olga.registration_aor)) == (1 if status == 0 else 0)


def test_sha256_credentials_bind(sha256: Network) -> None:
    carol = _with_password(sha256)
    aor = carol.registration_aor
    with Peer(DEVICE) as ue:
        first, challenge = _challenge(sha256, ue, aor)
        assert challenge_params(challenge)["algorithm"] == "SHA-256"
        md5 = _with_credentials(ue, first, challenge, algorithm="MD5")  # not what was asked
        assert ue.ask(md5, sha256.kamailio.address).status == 401
        assert _contacts(sha256, aor) == []
        ok = ue.ask(_with_credentials(ue, first, challenge, nc=2), sha256.kamailio.address)
        assert ok.status == 200, ok.start_line
        assert len(_contacts(sha256, aor)) == 1
        _message_reaches(sha256, aor, ue)


def test_a_credential_may_name_its_own_username(digest: Network) -> None:
    """The digest username need not be the AOR's user part (an IMS private identity)."""
    quinn = subscriber(digest, "cpm")
    aor = quinn.registration_aor
    private = f"{aor[4:]}.private"
    store = CredentialStore(digest.redis.client())
    store.put([from_password(aor, PASSWORD, username=private)])
    with Peer(DEVICE) as ue:
        as_user_part = ue.register(digest.kamailio.address, aor, password=PASSWORD)
        assert as_user_part.status == 401
        assert f"{aor}: another username" in digest.kamailio.wait_for_log("another username")
        ok = ue.register(digest.kamailio.address, aor, password=PASSWORD, username=private)
        assert ok.status == 200
        assert (
            ue.register(
                digest.kamailio.address, aor, expires=0, password=PASSWORD, username=private
            ).status
            == 200
        )


def test_a_credential_without_the_proxys_algorithm_is_refused_and_logged(sha256: Network) -> None:
    rose = subscriber(sha256, "cpm")
    aor = rose.registration_aor
    md5_only = msgspec.structs.replace(from_password(aor, PASSWORD), ha1_sha256=None)
    CredentialStore(sha256.redis.client()).put([md5_only])
    with Peer(DEVICE) as ue:
        assert ue.register(sha256.kamailio.address, aor, password=PASSWORD).status == 401
    assert f"{aor}: no SHA-256 HA1" in sha256.kamailio.wait_for_log("no SHA-256 HA1")
    assert _contacts(sha256, aor) == []


def test_a_wrong_password_binds_nothing_and_is_logged(digest: Network) -> None:
    dave = _with_password(digest)
    aor = dave.registration_aor
    with Peer(DEVICE) as ue:
        first, challenge = _challenge(digest, ue, aor)
        wrong = _with_credentials(ue, first, challenge, "not the password")
        answer = ue.ask(wrong, digest.kamailio.address)
    assert answer.status == 401  # challenged again
    assert _contacts(digest, aor) == []
    assert f"REGISTER not authenticated call-id={first.header('call-id')}" in (
        digest.kamailio.wait_for_log(f"call-id={first.header('call-id')} {aor}")
    )
    _message_unregistered(digest, aor)


def test_a_replayed_register_does_not_bind_again(digest: Network) -> None:
    """A REGISTER captured on the wire, sent again after the device left, gets a challenge."""
    erin = _with_password(digest)
    aor = erin.registration_aor
    with Peer(DEVICE) as ue:
        first, challenge = _challenge(digest, ue, aor)
        captured = _with_credentials(ue, first, challenge)
        assert ue.ask(captured, digest.kamailio.address).status == 200
        leave, challenge = _challenge(
            digest, ue, aor, contact=f"{captured.header('contact')};expires=0"
        )
        assert (
            ue.ask(_with_credentials(ue, leave, challenge), digest.kamailio.address).status == 200
        )
        assert _contacts(digest, aor) == []
        replayed = captured.replace_header("Via", _register(ue, aor).header("via") or "")
        answer = ue.ask(replayed, digest.kamailio.address)
    assert answer.status == 401
    assert challenge_params(answer.header("WWW-Authenticate") or "").get("stale") == "true"
    assert _contacts(digest, aor) == []


def test_one_subscribers_password_does_not_register_another(digest: Network) -> None:
    victim, eve = _with_password(digest), subscriber(digest, "cpm")
    CredentialStore(digest.redis.client()).put(
        [from_password(eve.registration_aor, "eves own password")]
    )
    with Peer(DEVICE) as attacker:
        first, challenge = _challenge(digest, attacker, victim.registration_aor)
        as_eve = _with_credentials(attacker, first, challenge, "eves own password")
        assert attacker.ask(as_eve, digest.kamailio.address).status == 401
    assert _contacts(digest, victim.registration_aor) == []


def test_contact_star_without_credentials_wipes_nothing(digest: Network) -> None:
    frank = _with_password(digest)
    aor = frank.registration_aor
    with Peer(DEVICE) as ue, Peer("127.0.0.7") as attacker:
        assert ue.register(digest.kamailio.address, aor, password=PASSWORD).status == 200
        wipe = _register(attacker, aor, contact="*", headers=[("Expires", "0")])
        assert attacker.ask(wipe, digest.kamailio.address).status == 401
        assert len(_contacts(digest, aor)) == 1
        _message_reaches(digest, aor, ue)
        assert ue.register(digest.kamailio.address, aor, expires=0, password=PASSWORD).status == 200


def test_a_subscriber_without_a_credential_cannot_register(digest: Network) -> None:
    grace = subscriber(digest, "cpm")  # no credential
    with Peer(DEVICE) as ue:
        answer = ue.register(digest.kamailio.address, grace.registration_aor, password=PASSWORD)
    assert answer.status == 401
    assert _contacts(digest, grace.registration_aor) == []


def test_a_foreign_domain_is_refused(digest: Network) -> None:
    with Peer(DEVICE) as ue:
        answer = ue.ask(_register(ue, "sip:bob@elsewhere.example.org"), digest.kamailio.address)
    assert answer.status == 403


# -- failures of the credential store --------------------------------------------------------


def test_redis_paused_answers_503_at_once_then_recovers(digest: Network) -> None:
    heidi = _with_password(digest)
    aor = heidi.registration_aor
    with Peer(DEVICE) as ue:
        first, challenge = _challenge(digest, ue, aor)
        os.kill(digest.redis.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            answer = ue.ask(_with_credentials(ue, first, challenge), digest.kamailio.address)
            waited = time.monotonic() - started
        finally:
            os.kill(digest.redis.process.pid, signal.SIGCONT)
        assert answer.status == 503
        assert answer.header("Retry-After") == "30"
        assert waited < 0.5  # the 50 ms Redis timeout, not a hang
        time.sleep(0.6)  # the worker's breaker closes after CPMIW_REDIS_BACKOFF_MS
        again = ue.register(digest.kamailio.address, aor, password=PASSWORD)
    assert again.status == 200
    assert len(_contacts(digest, aor)) == 1


def test_a_bad_stored_credential_fails_that_subscriber_only(digest: Network) -> None:
    ivan, judy = _with_password(digest), _with_password(digest)
    client = digest.redis.client()
    client.delete(credential_key(ivan.registration_aor))
    client.hset(credential_key(ivan.registration_aor), "ha1", "x")  # a key of the wrong type
    with Peer(DEVICE) as ue:
        bad = ue.register(digest.kamailio.address, ivan.registration_aor, password=PASSWORD)
        good = ue.register(digest.kamailio.address, judy.registration_aor, password=PASSWORD)
    assert bad.status == 503
    assert good.status == 200
    assert f"stored credential of {ivan.registration_aor} is invalid" in digest.kamailio.log()


def test_a_wiped_store_answers_503_not_a_challenge(log_dir: Path) -> None:
    """Redis restarted empty: a device's right password must not look wrong (401)."""
    own = start_redis()
    try:
        with contextmanager(make_network)(own, log_dir, TRUSTING) as wiped, Peer(DEVICE) as ue:
            aor = _with_password(wiped).registration_aor
            assert ue.register(wiped.kamailio.address, aor, password=PASSWORD).status == 200
            own.client().flushall()
            answer = ue.register(wiped.kamailio.address, aor, password=PASSWORD)
            assert (answer.status, answer.header("Retry-After")) == (503, "30")
            assert "profile store not ready" in wiped.kamailio.wait_for_log("not ready")
            _with_password(wiped)  # provisioning again makes the store ready
            CredentialStore(own.client()).put([from_password(aor, PASSWORD)])
            assert ue.register(wiped.kamailio.address, aor, password=PASSWORD).status == 200
    finally:
        own.stop()


# -- trusted registrars and third-party REGISTER ---------------------------------------------


def _ue_register(aor: str, contact: str, *, path: str = "") -> bytes:
    """The REGISTER a UE sent its S-CSCF, as a third-party REGISTER carries it."""
    lines = [
        "REGISTER sip:ims.example.net SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKue",
        *([f"Path: {path}"] if path else []),
        f"From: <{aor}>;tag=ue",
        f"To: <{aor}>",
        "Call-ID: ue-registration",
        "CSeq: 7 REGISTER",
        f"Contact: {contact}",
        "Expires: 600000",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _ok(aor: str, contacts: str) -> bytes:
    """The S-CSCF's 200 (OK) to that REGISTER, as a third-party REGISTER carries it."""
    lines = [
        "SIP/2.0 200 OK",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKue",
        f"From: <{aor}>;tag=ue",
        f"To: <{aor}>;tag=scscf",
        "Call-ID: ue-registration",
        "CSeq: 7 REGISTER",
        f"Contact: {contacts}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _third_party(
    scscf: Peer, net: Network, aor: str, expires: int, body: bytes, kind: str
) -> SipMessage:
    """The S-CSCF's third-party REGISTER (TS 24.229 5.4.1.7) to the proxy; its answer."""
    request = scscf.request(
        "REGISTER",
        net.kamailio.uri,
        to=f"<{aor}>",
        from_=f"<sip:scscf@{scscf.host}>;tag=s1",
        headers=[("Expires", str(expires)), ("Content-Type", kind)],
        body=body,
    ).replace_header("Contact", f"<sip:scscf@{scscf.host}:{scscf.port}>")
    return scscf.ask(request, net.kamailio.address)


def test_a_trusted_registrar_register_is_saved_as_it_is(digest: Network) -> None:
    kate = subscriber(digest, "cpm")  # no credential needed
    aor = kate.registration_aor
    user = aor.partition(":")[2].partition("@")[0]
    with Peer(SCSCF) as registrar:
        assert registrar.register(digest.kamailio.address, aor).status == 200
        assert [c.uri for c in _contacts(digest, aor)] == [f"sip:{user}@{SCSCF}:{registrar.port}"]
        _message_reaches(digest, aor, registrar)
        assert registrar.register(digest.kamailio.address, aor, expires=0).status == 200
    assert _contacts(digest, aor) == []


def test_third_party_register_gives_routing_the_devices_tags(digest: Network) -> None:
    """The UE's REGISTER in the body: its IM-only device is what routing sees, so CPM to it
    is rewritten to the IM tag; Expires 0 deregisters the identity."""
    leo = subscriber(digest, "cpm")
    aor = leo.registration_aor
    with Peer(SCSCF) as scscf, Peer(DEVICE) as ue:
        contact = f'"Leo" <sip:leo@{ue.host}:{ue.port}>;+g.oma.sip-im;expires=600000'
        answer = _third_party(scscf, digest, aor, 3600, _ue_register(aor, contact), "message/sip")
        assert answer.status == 200, answer.start_line
        assert [(c.uri, c.families) for c in _contacts(digest, aor)] == [
            (f"sip:leo@{ue.host}:{ue.port}", frozenset({Family.IM}))
        ]
        received = _message_reaches(digest, aor, ue)
        assert received.header_values("Accept-Contact")[0].startswith("*;+g.oma.sip-im")
        gone = _third_party(scscf, digest, aor, 0, b"", "message/sip")
        assert gone.status == 200, gone.start_line
    assert _contacts(digest, aor) == []
    _message_unregistered(digest, aor)


def test_third_party_register_of_a_device_named_in_latin_1(digest: Network) -> None:
    """A body that is not UTF-8 (a display name in Latin-1) still binds the device's tags."""
    jose = subscriber(digest, "cpm")
    aor = jose.registration_aor
    with Peer(SCSCF) as scscf, Peer(DEVICE) as ue:
        contact = f'"Jos\xe9" <sip:jose@{ue.host}:{ue.port}>;+g.oma.sip-im'
        body = _ue_register(aor, "CONTACT").replace(b"CONTACT", contact.encode("latin-1"))
        assert _third_party(scscf, digest, aor, 600, body, "message/sip").status == 200
        assert [c.families for c in _contacts(digest, aor)] == [frozenset({Family.IM})]
        _message_reaches(digest, aor, ue)
        _third_party(scscf, digest, aor, 0, b"", "message/sip")


def test_third_party_multipart_with_the_200_and_a_path(digest: Network) -> None:
    """REGISTER and 200 in a multipart/mixed; the device is reached through its P-CSCF."""
    mia = subscriber(digest, "cpm")
    aor = mia.registration_aor
    with Peer(SCSCF) as scscf, Peer("127.0.0.8") as pcscf:
        device = "sip:mia@192.0.2.10:5060"
        path = f"<sip:term@{pcscf.host}:{pcscf.port};lr>"
        register = _ue_register(aor, f"<{device}>;+g.oma.sip-im", path=path)
        ok = _ok(aor, f"<{device}>;+g.oma.sip-im;expires=600")
        body = (
            b"--b0\r\nContent-Type: message/sip\r\n\r\n"
            + register
            + b"\r\n--b0\r\nContent-Type: message/sip\r\n\r\n"
            + ok
            + b"\r\n--b0--\r\n"
        )
        answer = _third_party(scscf, digest, aor, 600, body, 'multipart/mixed; boundary="b0"')
        assert answer.status == 200, answer.start_line
        assert [c.uri for c in _contacts(digest, aor)] == [device]
        with Peer() as caller:
            caller.send(cpm_message(caller, aor), digest.kamailio.address)
            at_pcscf = pcscf.recv_request("MESSAGE")
            pcscf.reply(at_pcscf, 200, "OK")
            assert caller.recv_response().status == 200
        _third_party(scscf, digest, aor, 0, b"", "message/sip")
    assert at_pcscf.ruri == device
    assert at_pcscf.header_values("Accept-Contact")[0].startswith("*;+g.oma.sip-im")


def test_third_party_register_from_an_untrusted_sender_is_refused(digest: Network) -> None:
    nina = _with_password(digest)
    aor = nina.registration_aor
    with Peer("127.0.0.7") as impostor, Peer(DEVICE) as ue:
        body = _ue_register(aor, f"<sip:nina@{ue.host}:{ue.port}>;+g.oma.sip-im")
        answer = _third_party(impostor, digest, aor, 3600, body, "message/sip")
    assert answer.status == 403
    assert _contacts(digest, aor) == []


def test_a_third_party_register_without_a_device_is_a_bad_request(digest: Network) -> None:
    oscar = subscriber(digest, "cpm")
    with Peer(SCSCF) as scscf:
        answer = _third_party(scscf, digest, oscar.registration_aor, 600, b"hello", "message/sip")
    assert answer.status == 400
    assert _contacts(digest, oscar.registration_aor) == []


def test_trusted_mode_takes_registrations_from_the_registrar_only(trusted_only: Network) -> None:
    pat = _with_password(trusted_only)
    aor = pat.registration_aor
    with Peer(DEVICE) as ue, Peer(SCSCF) as scscf:
        refused = ue.register(trusted_only.kamailio.address, aor, password=PASSWORD)
        assert refused.status == 403  # no challenge: credentials would not help
        assert _contacts(trusted_only, aor) == []
        body = _ue_register(aor, f"<sip:pat@{ue.host}:{ue.port}>;+g.oma.sip-im")
        assert _third_party(scscf, trusted_only, aor, 600, body, "message/sip").status == 200
        _message_reaches(trusted_only, aor, ue)
        _third_party(scscf, trusted_only, aor, 0, b"", "message/sip")
