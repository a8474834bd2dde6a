"""A failing Redis under steady traffic through the real Kamailio: paused, slow, killed.

With the product's 500 ms breaker, a reply's limit of 200 ms and a request's budget of 500 ms
(see ENV), while Redis is out for a second and a half: a
cached recipient is answered as before; an uncached one gets 503 with Retry-After, at the latest
a reply's limit later; an SMS user's reply from the IP-SM-GW (whose conversation lives in Redis)
is still delivered; nothing goes unanswered; and within a second of Redis's return the uncached
recipient is found, with nobody restarting anything. The figures with the product's own
settings (50 ms, 10 ms) under 1,000 MESSAGE/s: bench/run faults.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_metrics import moved, scrape
from test_outage import AutoAnswer

from conftest import CPM_PAGER, Network, RedisServer, make_network, start_redis
from cpmiw.core.message import SipMessage
from cpmiw.core.profile import Profile
from cpmiw.testing import make_profile, wait_until
from cpmiw.testing.sipnet import Peer

# The product's backoff; a reply's limit and a budget twenty and ten times the product's 10 and
# 50 ms: on two loaded cores (the test's own request every millisecond, Redis, a relay, other
# processes) a reply from a Redis that is back may wait for a CPU long enough to trip a shorter
# limit again, which the product rightly takes for a slow Redis (503 for another backoff).
ENV = {
    "CPMIW_REDIS_TIMEOUT_MS": "500",
    "CPMIW_REDIS_SLOW_MS": "200",
    "CPMIW_REDIS_BACKOFF_MS": "500",
    # Room for every transaction of a test (each held 5 s after its answer, ~14.5 KB): with the
    # suite's 64 MB the proxy rightly refused requests 503 for want of shared memory once the
    # test had sent for a few seconds, which looked like a Redis not found again.
    "CPMIW_SHM_MB": "256",
}
OUT = 1.5  # s Redis is out
HELD = 0.35  # s the slow Redis holds each reply: under the 500 ms budget, over the 200 ms limit
# The longest a request may take while Redis is out: a worker waits a reply's limit (200 ms)
# before its breaker opens, and a request queued behind that one waits as long again; the rest
# is room for a loaded two-core machine to keep a ready process waiting for a CPU. Far under the
# 1.5 s a request waiting on Redis would take.
PROMPT = 0.8
PACE = 0.004  # s from one round's start to the next: ~750 requests a second, not a flood


class Relay:
    """cpmiw.testing.slowredis in a process of its own (none of the test's GIL in its hop)."""

    def __init__(self, upstream: int, held: float = HELD) -> None:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cpmiw.testing.slowredis",
                str(upstream),
                str(round(held * 1000)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self._said = self._process.stdout
        self.port = int(self._said.readline())

    def hold(self, on: bool) -> None:
        """Returns once the relay holds replies (or no longer does): a signal is handled when
        the relay's process next runs, which a loaded machine may delay."""
        self._process.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)
        assert self._said.readline().strip() == ("held" if on else "released")

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


@dataclass
class Rig:
    net: Network
    redis: RedisServer
    relay: Relay


@pytest.fixture
def rig(log_dir: Path) -> Iterator[Rig]:
    server = start_redis()
    relay = Relay(server.port)
    try:
        # Through the relay in every test, holding replies only for the slow one.
        env = {**ENV, "CPMIW_REDIS_URL": f"redis://127.0.0.1:{relay.port}/0"}
        for net in make_network(server, log_dir, env):
            yield Rig(net, server, relay)
    finally:
        relay.close()
        server.stop()


def _pause(rig: Rig) -> None:
    os.kill(rig.redis.process.pid, signal.SIGSTOP)


def _resume(rig: Rig) -> None:
    os.kill(rig.redis.process.pid, signal.SIGCONT)


def _restart(rig: Rig, profiles: tuple[Profile, ...]) -> None:
    rig.redis.start()  # empty, as this one has no file: its data put back at once
    rig.net.provision(*profiles)


@dataclass(frozen=True)
class Answer:
    who: str
    status: int
    took: float  # s from sending to the final response
    at: float  # s since the fault began (negative: before)
    call_id: str


def _round(net: Network, sends: list[tuple[str, Peer, SipMessage]], at: float) -> list[Answer]:
    """Sends each request at once, then reads each final response."""
    started = []
    for _, peer, request in sends:
        started.append(time.monotonic())
        peer.send(request, net.kamailio.address)
    answers = []
    for (who, peer, request), sent in zip(sends, started, strict=True):
        response = peer.recv_response(timeout=2.0)  # none may go unanswered
        took = time.monotonic() - sent
        answers.append(Answer(who, response.status, took, at, request.header("Call-ID") or ""))
    return answers


@pytest.mark.parametrize("fault", ["paused", "slow", "killed"])
def test_a_failing_redis_costs_the_uncached_a_503_and_nothing_more(rig: Rig, fault: str) -> None:
    net = rig.net
    cached = make_profile("cached", "+15558880001", "cpm", barred=True)  # 403 when known
    uncached = make_profile("uncached", "+15558880002", "cpm", barred=True)
    cpm_user = make_profile("alice", "+15558880003", "cpm")
    sms_user = make_profile("carol", "+15558880004", "sms")
    profiles = (cached, uncached, cpm_user, sms_user)
    net.provision(*profiles)
    actions: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "paused": (lambda: _pause(rig), lambda: _resume(rig)),
        "slow": (lambda: rig.relay.hold(True), lambda: rig.relay.hold(False)),
        "killed": (rig.redis.stop, lambda: _restart(rig, profiles)),
    }
    begin, end = actions[fault]
    with (
        Peer() as first,
        Peer() as second,
        Peer("127.0.0.4") as gateway,
        Peer("127.0.0.5") as phone,
    ):
        assert phone.register(net.kamailio.address, cpm_user.registration_aor).status == 200
        device = AutoAnswer(phone)

        def sends() -> list[tuple[str, Peer, SipMessage]]:
            return [
                ("cached", first, first.request("MESSAGE", cached.registration_aor,
                                                 headers=CPM_PAGER)),
                ("uncached", second, second.request("MESSAGE", uncached.registration_aor,
                                                    headers=CPM_PAGER)),
                ("reply", gateway, gateway.request(
                    "MESSAGE", cpm_user.registration_aor,
                    from_=f"<{sms_user.registration_aor}>;tag=gw",
                    headers=[("Accept-Contact", "*;+g.oma.sip-im"),
                             ("Content-Type", "text/plain")],
                )),
            ]  # fmt: skip

        def traffic(seconds: float, origin: float, skip: str = "") -> list[Answer]:
            answers: list[Answer] = []
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < seconds:
                chosen = [s for s in sends() if s[0] != skip]
                answers += _round(net, chosen, time.monotonic() - origin)
                time.sleep(max(0.0, start + elapsed + PACE - time.monotonic()))
            return answers

        warm: list[Answer] = []

        def served_by_both(who: str, status: int) -> bool:
            call_ids = {a.call_id for a in warm if a.who == who and a.status == status}
            return len(set(net.kamailio.routed_by(call_ids).values())) == 2

        def both_warm() -> bool:
            warm.extend(traffic(0.3, 0.0, skip="uncached"))
            return served_by_both("cached", 403) and served_by_both("reply", 200)

        try:
            # Until each worker has found (and cached) the profiles of both recipients: which
            # worker takes a request is the kernel's choice, and a first look-up may find the
            # machine busy and fail.
            wait_until(both_warm, "both workers warm")
            before = scrape(net.kamailio.metrics_url)
            began = time.monotonic()
            begin()
            out = traffic(OUT, began)
            end()
            back = time.monotonic()
            again = traffic(1.5, back)
        finally:
            device.stop()
    after = scrape(net.kamailio.metrics_url)

    def statuses(answers: list[Answer], who: str, since: float = -100.0) -> set[int]:
        return {a.status for a in answers if a.who == who and a.at >= since}

    assert not moved(before, after, "cpmiw_refused_total")  # every 503 below is Redis's
    assert statuses(out, "cached") == {403}  # served from the workers' caches
    assert statuses(out, "uncached") == {503}
    assert statuses(out, "reply") == {200}  # delivered, its conversation left aside
    assert max(a.took for a in out) < PROMPT  # nobody waited on Redis beyond a reply's limit
    assert len(out) > 30
    # Found again by itself within a second of Redis's return (a worker tries after 500 ms).
    assert statuses(again, "uncached", since=1.0) == {403}
    reason = "failed" if fault == "killed" else "late"
    assert moved(before, after, "cpmiw_redis_breaker_opened_total").get((reason,), 0) >= 1
    assert "conversation not recalled" in net.kamailio.log()


def test_the_relay_holds_replies_as_told(redis_server: RedisServer) -> None:
    """The test's slow Redis: replies held while told, at once otherwise."""
    import redis  # noqa: PLC0415

    held = 1.0  # s: a reply passed at once takes far less, however loaded the machine
    relay = Relay(redis_server.port, held)
    try:
        client = redis.Redis(port=relay.port, socket_timeout=5)

        def took(call: Callable[[], object]) -> float:
            started = time.monotonic()
            call()
            return time.monotonic() - started

        assert took(client.ping) < held
        relay.hold(True)
        assert took(client.ping) >= held
        relay.hold(False)
        assert took(client.ping) < held
    finally:
        relay.close()
