"""A fast subset of bench/run fuzz: a few hundred mutated requests, each one answered.

Real Kamailio and Redis; the application servers and the subscribers' devices answer every
request (cpmiw.testing.fuzz.Answerer). The corpus is the benchmark's (same mutations, a fixed
seed, fewer requests) plus tests/corpus, the requests once found to break the proxy.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import DOMAIN, TRUSTED_REGISTRAR, Network, RedisServer, make_network
from cpmiw.testing import make_profile
from cpmiw.testing.fuzz import (
    Answerer,
    Target,
    corpus,
    known_cases,
    processes,
    send,
    settled_processes,
    tracebacks,
)
from cpmiw.testing.sipnet import Peer

CORPUS = Path(__file__).parent / "corpus"
KINDS = {"cpm": "+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg\"",
         "im": "+g.oma.sip-im", "sms": "+g.3gpp.smsip"}  # fmt: skip


@dataclass
class Rig:
    net: Network
    target: Target


def _register(net: Network, aor: str, device: Answerer, tags: str) -> None:
    with Peer(TRUSTED_REGISTRAR) as registrar:
        request = registrar.request(
            "REGISTER", f"sip:{DOMAIN}", to=f"<{aor}>", from_=f"<{aor}>;tag=1"
        )
        contact = f"<sip:{aor.removeprefix('sip:').partition('@')[0]}@{device.host}:{device.port}>"
        answer = registrar.ask(
            request.replace_header("Contact", f"{contact};{tags};expires=600"), net.kamailio.address
        )
        assert answer.status == 200, answer.start_line


@pytest.fixture(scope="module")
def rig(redis_server: RedisServer, log_dir: Path) -> Iterator[Rig]:
    """Subscribers of each kind, each with a device (the unregistered ones aside)."""
    with (
        Answerer("127.0.0.3") as im_as,
        Answerer("127.0.0.4") as gateway,
        Answerer(TRUSTED_REGISTRAR) as devices,
    ):
        env = {"CPMIW_IM_AS": im_as.uri, "CPMIW_IP_SM_GW": gateway.uri}
        for net in make_network(redis_server, log_dir, env):
            recipients: dict[str, list[str]] = {}
            numbers = []
            for kind in [*KINDS, "unregistered"]:
                for _ in range(3):
                    number = f"+1555{secrets.randbelow(10**7):07d}"
                    services = "cpm" if kind == "unregistered" else kind
                    profile = make_profile(f"f{secrets.token_hex(4)}", number, services)
                    net.provision(profile)
                    recipients.setdefault(kind, []).append(profile.registration_aor)
                    numbers.append(profile.identities[1])
                    if kind in KINDS:
                        _register(net, profile.registration_aor, devices, KINDS[kind])
            target = Target(DOMAIN, recipients, numbers, [im_as.uri, gateway.uri])
            yield Rig(net, target)


def test_every_mutated_request_is_answered_without_a_traceback(rig: Rig) -> None:
    kamailio = rig.net.kamailio
    known = known_cases(CORPUS, rig.target.recipients["cpm"][0])
    requests = known + corpus(300, rig.target, seed_value=12)
    log_start = len(kamailio.log())
    before = settled_processes(kamailio.process.pid)
    outcome = send(kamailio.address, requests)
    assert [data[:200] for _, data in outcome.unanswered] == []
    assert sum(outcome.statuses.values()) == len(requests)
    assert 500 not in outcome.statuses, outcome.statuses
    assert {200, 403, 404} <= set(outcome.statuses), outcome.statuses  # routed every way
    assert tracebacks(kamailio.log()[log_start:]) == 0
    assert processes(kamailio.process.pid) == before
