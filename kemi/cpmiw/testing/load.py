"""Steady SIP load for failover tests: a caller offering MESSAGEs at a fixed rate, and devices
answering everything, each in a thread of its own.

The caller retransmits as a UDP client does (RFC 3261 timer E: 0.5 s, doubling, at most 4 s
apart) until a final response or `give_up` seconds, and can move to another proxy while
running (as a client whose DNS gives it the next proxy when one stops answering): what is
still unanswered is retransmitted there. Each request's fate is kept: when it was sent, its
final status (None: none came) and how long it waited.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..core.message import Address, SipMessage
from .sipnet import Peer

_T1 = 0.5  # s: the first retransmission interval
_T2 = 4.0  # s: the longest one


@dataclass
class Outcome:
    recipient: str
    sent: float  # s since the load started
    status: int | None = None
    took: float = 0.0  # s until the final response
    _retransmit_at: float = 0.0
    _interval: float = _T1


@dataclass
class Load:
    """`rate` MESSAGEs a second through `proxy` to `recipients` in turn (SIP URIs), with the
    headers `headers`, from `host`; start(), then stop() after the test's events."""

    proxy: Address
    recipients: Sequence[str]
    rate: int
    headers: list[tuple[str, str]]
    host: str = "127.0.0.1"
    give_up: float = 12.0
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._peer = Peer(self.host)
        self._pending: dict[str, tuple[Outcome, bytes]] = {}
        self._sending = True
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def start(self) -> Load:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def move(self, proxy: Address) -> None:
        """From now on, new requests and retransmissions go to `proxy`."""
        with self._lock:
            self.proxy = proxy
            for outcome, _ in self._pending.values():
                outcome._retransmit_at = 0.0  # at once, to the new proxy

    def stop(self, drain: float = 0.0) -> list[Outcome]:
        """Stops offering; waits up to `drain` s for the answers still due; the outcomes."""
        deadline = time.monotonic() + drain
        self._sending = False
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join()
        self._peer.close()
        return self.outcomes

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def _run(self) -> None:
        sent = 0
        while not self._stop.is_set():
            now = time.monotonic() - self._started
            while self._sending and sent < now * self.rate:
                self._send_new(self.recipients[sent % len(self.recipients)], now)
                sent += 1
            self._receive()
            self._retransmit(now)

    def _send_new(self, recipient: str, now: float) -> None:
        call_id = f"{secrets.token_hex(8)}@{self.host}"
        request = self._peer.request("MESSAGE", recipient, headers=self.headers, call_id=call_id)
        data = request.to_bytes()
        outcome = Outcome(recipient, now, _retransmit_at=now + _T1)
        with self._lock:
            self.outcomes.append(outcome)
            self._pending[call_id] = (outcome, data)
            proxy = self.proxy
        self._send(data, proxy)

    def _receive(self) -> None:
        """The responses that came within a millisecond."""
        while True:
            try:
                response = self._peer.recv(timeout=0.001)
            except TimeoutError:
                return
            if response.is_request or response.status < 200:
                continue
            with self._lock:
                found = self._pending.pop(response.header("Call-ID") or "", None)
            if found is not None:
                outcome = found[0]
                outcome.status = response.status
                outcome.took = time.monotonic() - self._started - outcome.sent

    def _retransmit(self, now: float) -> None:
        with self._lock:
            due = [
                (call_id, outcome, data)
                for call_id, (outcome, data) in self._pending.items()
                if outcome._retransmit_at <= now
            ]
            proxy = self.proxy
        for call_id, outcome, data in due:
            if now - outcome.sent > self.give_up:
                with self._lock:
                    self._pending.pop(call_id, None)
                continue
            outcome._interval = min(outcome._interval * 2, _T2)
            outcome._retransmit_at = now + outcome._interval
            self._send(data, proxy)

    def _send(self, data: bytes, to: Address) -> None:
        with contextlib.suppress(OSError):  # retransmitted later, as a lost datagram would be
            self._peer.send(data, to)


class Devices:
    """Registered devices on `host`: answer every request 200, in a thread of their own."""

    def __init__(self, host: str = "127.0.0.5") -> None:
        self.peer = Peer(host)
        self.requests: list[SipMessage] = []  # every request answered, retransmissions aside
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def register(self, proxy: Address, aors: Sequence[str]) -> None:
        for aor in aors:
            ok = self.peer.register(proxy, aor)
            assert ok.status == 200, ok.start_line

    def start(self) -> Devices:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                request = self.peer.recv(timeout=0.05)  # retransmissions answered too
            except TimeoutError:
                continue
            if request.is_request and request.method != "ACK":
                if request not in self.requests[-8:]:
                    self.requests.append(request)
                self.peer.reply(request, 200, "OK")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peer.close()

    def addressed_to(self, aor: str) -> list[SipMessage]:
        """The requests received for `aor` (its To header: the Request-URI is the contact)."""
        return [r for r in self.requests if f"<{aor}>" in (r.header("To") or "")]


def by_status(outcomes: Sequence[Outcome]) -> dict[int | None, int]:
    return dict(Counter(o.status for o in outcomes))


def full_service_after(outcomes: Sequence[Outcome], event: float, ok: int = 200) -> float | None:
    """Seconds from `event` until the first request after which every request got `ok`;
    None if that never happened."""
    after = sorted((o for o in outcomes if o.sent >= event), key=lambda o: o.sent)
    last_bad = max((o.sent for o in after if o.status != ok), default=None)
    if last_bad is None:
        return 0.0
    if not any(o.sent > last_bad for o in after):
        return None
    return last_bad - event
