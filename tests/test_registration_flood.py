"""REGISTER bounds: a source's rate, an AOR's contacts, and a flood that changes nothing.

Real Kamailio (the session's network: devices at 127.0.0.5 are its trusted registrar's), real
Redis; floods come from 127.0.0.7, a source it does not trust.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

from test_metrics import moved, scrape
from test_registration_trust import PASSWORD, _challenge, _contacts, _with_credentials

from conftest import Network
from cpmiw.core.credential import from_password
from cpmiw.ops.rpc import KamailioRpc
from cpmiw.store.credentials import CredentialStore
from cpmiw.testing.sipnet import Peer
from sipflows import cpm_message, subscriber

FLOODER = "127.0.0.7"
FLOOD = 5000
CONTACTS_EACH = 20  # the reported attack bound 100 a REGISTER: 380,000 contacts in 6.5 s
WINDOW = 200  # REGISTERs in flight: the flood goes as fast as the proxy answers
RECEIVE_BUFFER = 4 << 20  # the flooder's: 200 small answers take more than Linux's default
MESSAGE_EVERY = 0.01  # s between the other client's messages
# Shared memory a MESSAGE transaction holds until 5 s after its answer (DESIGN: ~14.5 KB).
PER_TRANSACTION = 16 * 1024


def _shared_memory_used(net: Network) -> int:
    with KamailioRpc(str(net.kamailio.rpc_socket)) as rpc:
        found = rpc.call("core.shmmem")
    assert isinstance(found, dict)
    return int(found["real_used"])


def _flood_register(index: int, port: int, victim: str) -> bytes:
    contacts = ", ".join(f"<sip:x{index}.{n}@{FLOODER}:{port}>" for n in range(CONTACTS_EACH))
    return (
        f"REGISTER sip:ims.example.net SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {FLOODER}:{port};branch=z9hG4bKflood{index}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <{victim}>;tag=f{index}\r\n"
        f"To: <{victim}>\r\n"
        f"Call-ID: flood-{index}\r\n"
        f"CSeq: 1 REGISTER\r\n"
        f"Contact: {contacts}\r\n"
        f"Expires: 3600\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def _flood(net: Network, victims: list[str]) -> Counter[str]:
    """FLOOD REGISTERs from FLOODER, WINDOW at a time; the answers by status."""
    answers: Counter[str] = Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((FLOODER, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.settimeout(10.0)  # an answer later than this is missing (a loaded machine: seconds)
        port = sock.getsockname()[1]
        in_flight = 0
        for index in range(FLOOD):
            victim = victims[index % len(victims)]
            sock.sendto(_flood_register(index, port, victim), net.kamailio.address)
            in_flight += 1
            while in_flight >= WINDOW or (index == FLOOD - 1 and in_flight):
                try:
                    answers[sock.recv(65535).split(b" ", 2)[1].decode()] += 1
                except TimeoutError:
                    return answers  # what is missing shows in the caller's total
                in_flight -= 1
    return answers


def test_a_flood_of_registers_binds_nothing_and_leaves_shared_memory_and_others_alone(
    net: Network,
) -> None:
    victims = [subscriber(net, "cpm").registration_aor for _ in range(5)]
    bob = subscriber(net, "cpm")
    CredentialStore(net.redis.client()).put([from_password(bob.registration_aor, PASSWORD)])
    before, metrics_before = _shared_memory_used(net), scrape(net.kamailio.metrics_url)
    others: list[tuple[str, int, float]] = []  # each request of the other client: its answer

    def other_client() -> None:
        """While the flood runs: registers (with its password), sends itself messages, leaves."""
        with Peer("127.0.0.6") as ue, Peer() as caller:
            started = time.monotonic()
            answer = ue.register(net.kamailio.address, bob.registration_aor, password=PASSWORD)
            others.append(("REGISTER", answer.status, time.monotonic() - started))
            while not flood_over.is_set():
                started = time.monotonic()
                caller.send(cpm_message(caller, bob.registration_aor), net.kamailio.address)
                ue.reply(ue.recv_request("MESSAGE"), 200, "OK")
                others.append(
                    ("MESSAGE", caller.recv_response().status, time.monotonic() - started)
                )
                flood_over.wait(MESSAGE_EVERY)
            started = time.monotonic()
            gone = ue.register(
                net.kamailio.address, bob.registration_aor, expires=0, password=PASSWORD
            )
            others.append(("REGISTER", gone.status, time.monotonic() - started))

    flood_over = threading.Event()
    other = threading.Thread(target=other_client)
    other.start()
    started = time.monotonic()
    try:
        answers = _flood(net, victims)
    finally:
        flood_over.set()
        other.join(timeout=20)
    took = time.monotonic() - started
    after = _shared_memory_used(net)
    messages = sum(1 for method, _, _ in others if method == "MESSAGE")
    worst = max(seconds for _, _, seconds in others)
    statuses = Counter(status for _, status, _ in others)
    print(f"flood: {FLOOD} REGISTERs in {took:.2f} s, answers {dict(answers)}, shared memory "
          f"{after - before:+d} bytes; other client: {len(others)} requests ({messages} "
          f"MESSAGE), answers {dict(statuses)}, worst {worst * 1000:.1f} ms")  # fmt: skip
    assert sum(answers.values()) == FLOOD  # every one answered
    assert set(answers) == {"401", "503"}  # challenged, then over the source's rate
    assert answers["503"] > answers["401"]
    for victim in victims:
        assert _contacts(net, victim) == []
    # Nothing of the flood's stays (no contact, no transaction): the other client's messages'
    # transactions are all that may have grown.
    assert after - before < 256 * 1024 + messages * PER_TRANSACTION
    assert messages >= 3 and set(statuses) == {200}
    assert worst < 0.5
    limited = moved(metrics_before, scrape(net.kamailio.metrics_url), "cpmiw_registrations_total")
    assert limited[("limited",)] == answers["503"]
    assert limited[("challenged",)] >= answers["401"]
    log = net.kamailio.wait_for_log(f"REGISTERs from {FLOODER} over 20/s answered 503")
    workers = 2  # the test proxies' CPMIW_WORKERS: each logs a source at most every 10 s
    assert log.count(f"REGISTERs from {FLOODER} over") <= workers * (1 + int(took / 10))


def test_a_trusted_registrar_is_not_rate_limited(net: Network) -> None:
    carol = subscriber(net, "cpm")
    aor = carol.registration_aor
    with Peer("127.0.0.5") as registrar:
        contact = f"<sip:{aor[4:].partition('@')[0]}@127.0.0.5:{registrar.port}>"
        for _ in range(60):  # one binding, registered 60 times at once (Call-IDs of their own)
            register = registrar.request("REGISTER", "sip:ims.example.net", to=f"<{aor}>")
            registrar.send(register.replace_header("Contact", contact), net.kamailio.address)
        statuses = [registrar.recv_response().status for _ in range(60)]
        assert len(_contacts(net, aor)) == 1
        assert registrar.register(net.kamailio.address, aor, expires=0).status == 200
    assert statuses == [200] * 60
    assert _contacts(net, aor) == []


def test_an_aor_holds_at_most_max_contacts(net: Network) -> None:
    dave = subscriber(net, "cpm")
    aor = dave.registration_aor
    CredentialStore(net.redis.client()).put([from_password(aor, PASSWORD)])
    with Peer("127.0.0.10") as ue:  # an address of its own: 8 REGISTERs, within the rate
        many = ", ".join(f"<sip:d{n}@127.0.0.10:{ue.port}>" for n in range(11))
        first, challenge = _challenge(net, ue, aor, contact=many)
        refused = ue.ask(_with_credentials(ue, first, challenge), net.kamailio.address)
        assert refused.status == 503
        assert _contacts(net, aor) == []
        ten = ", ".join(f"<sip:d{n}@127.0.0.10:{ue.port}>" for n in range(10))
        first, challenge = _challenge(net, ue, aor, contact=ten)
        assert ue.ask(_with_credentials(ue, first, challenge), net.kamailio.address).status == 200
        assert len(_contacts(net, aor)) == 10
        one_more = f"<sip:d10@127.0.0.10:{ue.port}>"
        first, challenge = _challenge(net, ue, aor, contact=one_more)
        assert ue.ask(_with_credentials(ue, first, challenge), net.kamailio.address).status == 503
        gone = f"{ten.replace('>,', '>;expires=0,')};expires=0"
        first, challenge = _challenge(net, ue, aor, contact=gone)
        assert ue.ask(_with_credentials(ue, first, challenge), net.kamailio.address).status == 200
    assert _contacts(net, aor) == []
