"""Mutated CPM / IM / SMS requests for the proxy, and what it answered (bench/fuzz.py, tests).

A corpus is made from seeds (realistic requests to a rig's subscribers: CPM pager MESSAGE and
session INVITE, IM, SMS over IP, capability OPTIONS, delivery reports to an AS) by the
mutations a broken or hostile client makes: bytes that are not UTF-8, NUL, Latin-1 display
names, folded lines, huge, duplicated or missing headers, garbage feature tags and markers,
odd Request-URIs, binary bodies. Every request keeps a frame Kamailio can parse and answer (its
request line's shape, a top Via with a branch of its own, CSeq, Max-Forwards and a true
Content-Length), so every one of them must get a final answer: an unanswered request is a
request the proxy lost. ACK, CANCEL, BYE and REGISTER are not sent (they answer to transactions,
dialogs and bindings the corpus does not make).

`send()` plays a client: over UDP it sends a request again when unanswered after a second (three
times, RFC 3261's timer E), over TCP once, with a window of requests in flight.
`Answerer` plays the devices and application servers: every request answered at once (INVITE
486, anything else 200), whatever its bytes.
"""

from __future__ import annotations

import random
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Self

from ..core.message import SipMessage, decode, encode, header_key
from . import CPIM, ICSI, SDP
from .sipnet import split_frames

Header = tuple[str, str]
CPM = f"{ICSI}oma.cpm."
# Bytes that are not UTF-8: Latin-1 letters, a lone continuation, a truncated sequence, an
# overlong slash, an encoded surrogate, past U+10FFFF, 0xFF.
NOT_UTF8 = [
    b"\xe9", b"\x80", b"\xc3", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
    b"\xff",
]  # fmt: skip
# The frame: written by `render`, or what Kamailio needs to answer at all (its transaction's
# identity): never removed, duplicated, folded or filled with garbage; bytes and display names
# may go into From, To and Call-ID.
FRAME = {"via", "cseq", "max-forwards", "content-length", "from", "to", "call-id"}


@dataclass(frozen=True)
class Target:
    """What a corpus is addressed to: the proxy's domain, its subscribers by kind (AORs and
    telephone numbers), and the application servers' URIs."""

    domain: str
    recipients: dict[str, list[str]]  # kind (cpm, im, sms, unregistered) -> AORs
    numbers: list[str]  # tel: URIs of subscribers
    servers: list[str]  # sip: URIs of the IM AS and the IP-SM-GW


@dataclass
class Request:
    """A request before its frame is written: `render` adds Via, CSeq, Max-Forwards and
    Content-Length. Text holds any bytes (core.message.decode)."""

    method: str
    ruri: str
    headers: list[Header]
    body: bytes = b""
    mutations: tuple[str, ...] = ()

    def render(self, transport: str, via_host: str, via_port: int, branch: str) -> bytes:
        via = f"SIP/2.0/{transport.upper()} {via_host}:{via_port};branch=z9hG4bK{branch};rport"
        lines = [
            ("Via", via),
            ("Max-Forwards", "70"),
            *self.headers,
            ("CSeq", f"1 {self.method}"),
            ("Content-Length", str(len(self.body))),
        ]
        head = "".join(f"{name}: {value}\r\n" for name, value in lines)
        return encode(f"{self.method} {self.ruri} SIP/2.0\r\n{head}\r\n") + self.body


# -- seeds ------------------------------------------------------------------------------------


def _common(rng: random.Random, to: str) -> list[Header]:
    token = f"{rng.getrandbits(64):016x}"
    return [
        ("From", f"<sip:fuzz@ims.example.net>;tag={token[:8]}"),
        ("To", f"<{to}>"),
        ("Call-ID", f"{token}@fuzz"),
        ("Contact", "<sip:fuzz@127.0.0.1:5099>"),
    ]


def _cpm_pager(rng: random.Random, ruri: str) -> Request:
    return Request("MESSAGE", ruri, [
        *_common(rng, ruri),
        ("Accept-Contact", f'*;+g.3gpp.icsi-ref="{CPM}msg";require;explicit'),
        ("P-Preferred-Service", "urn:urn-7:3gpp-service.ims.icsi.oma.cpm.msg"),
        ("Conversation-ID", f"{rng.getrandbits(128):032x}"),
        ("Contribution-ID", f"{rng.getrandbits(64):016x}"),
        ("Content-Type", "message/cpim"),
    ], CPIM)  # fmt: skip


def _cpm_session(rng: random.Random, ruri: str) -> Request:
    icsi = rng.choice(["session", "largemsg", "filetransfer", "session.group"])
    return Request("INVITE", ruri, [
        *_common(rng, ruri),
        ("Accept-Contact", f'*;+g.3gpp.icsi-ref="{CPM}{icsi}"'),
        ("Contact", f'<sip:fuzz@127.0.0.1:5099>;+g.3gpp.icsi-ref="{CPM}{icsi}"'),
        ("Content-Type", "application/sdp"),
    ], SDP)  # fmt: skip


def _im(rng: random.Random, ruri: str) -> Request:
    return Request("MESSAGE", ruri, [
        *_common(rng, ruri),
        ("Accept-Contact", "*;+g.oma.sip-im"),
        ("Content-Type", "text/plain"),
    ], b"hello")  # fmt: skip


def _sms(rng: random.Random, ruri: str) -> Request:
    return Request("MESSAGE", ruri, [
        *_common(rng, ruri),
        ("Accept-Contact", "*;+g.3gpp.smsip;require;explicit"),
        ("Request-Disposition", "no-fork"),
        ("Content-Type", "application/vnd.3gpp.sms"),
    ], b"\x01\x02\x00\x11\x22")  # fmt: skip


def _options(rng: random.Random, ruri: str) -> Request:
    return Request("OPTIONS", ruri, [*_common(rng, ruri), ("Accept", "application/sdp")])


SEEDS: list[Callable[[random.Random, str], Request]] = [
    _cpm_pager, _cpm_pager, _cpm_pager, _cpm_session, _im, _im, _sms, _options,
]  # fmt: skip


def _ruri(rng: random.Random, target: Target) -> str:
    kind = rng.choice([*target.recipients, "number", "server", "unknown"])
    if kind == "number":
        return rng.choice(target.numbers)
    if kind == "server":
        return rng.choice(target.servers)
    if kind == "unknown":
        return f"sip:nobody{rng.randrange(1000)}@{target.domain}"
    return rng.choice(target.recipients[kind])


def seed(rng: random.Random, target: Target) -> Request:
    return rng.choice(SEEDS)(rng, _ruri(rng, target))


# -- mutations --------------------------------------------------------------------------------


def _bytes(data: bytes) -> str:
    return decode(data)


def _pick(rng: random.Random, request: Request, names: Iterable[str] = ()) -> int | None:
    """The index of a header to mutate (one of `names` if given), never the frame's."""
    wanted = {header_key(n) for n in names}
    found = [
        i
        for i, (name, _) in enumerate(request.headers)
        if (header_key(name) in wanted if wanted else header_key(name) not in FRAME)
    ]
    return rng.choice(found) if found else None


def _insert(rng: random.Random, value: str, text: str) -> str:
    """`text` somewhere in `value`, never inside a fold (CRLF and the whitespace after it)."""
    places = [i for i in range(len(value) + 1) if value[i - 1 : i] not in ("\r", "\n")]
    at = rng.choice(places or [0])
    return value[:at] + text + value[at:]


def _in_a_value(rng: random.Random, request: Request, text: str, names: Iterable[str] = ()) -> None:
    at = _pick(rng, request, names)
    if at is not None:
        name, value = request.headers[at]
        request.headers[at] = (name, _insert(rng, value, text))


def not_utf8(rng: random.Random, request: Request) -> None:
    """Bytes that are not UTF-8 anywhere in a value (From and To: latin1_display_name)."""
    names = rng.choice([(), ("Call-ID",), ("Contact",), ("Accept-Contact",)])
    _in_a_value(rng, request, _bytes(rng.choice(NOT_UTF8)), names)


def nul(rng: random.Random, request: Request) -> None:
    _in_a_value(rng, request, "\x00")


def latin1_display_name(rng: random.Random, request: Request) -> None:
    """A Latin-1 display name in place of the header's own (quoted in From and To, whose
    display name Kamailio's core parses; a token in Contact too)."""
    at = _pick(rng, request, ["Contact", "From", "To"])
    if at is None:
        return
    name, value = request.headers[at]
    display = _bytes(b"Jos\xe9 M\xfcller")
    if header_key(name) == "contact" and rng.choice([True, False]):
        display = _bytes(b"Jos\xe9")  # a token: unquoted
    else:
        display = f'"{display}"'
    if "<" in value:
        address = value[value.index("<") :]
    else:
        uri, semicolon, params = value.partition(";")
        address = f"<{uri}>{semicolon}{params}"
    request.headers[at] = (name, f"{display} {address}")


def fold(rng: random.Random, request: Request) -> None:
    """A line folded before a `,` or `;` of a value (RFC 3261 LWS: CRLF then a space or tab)."""
    at = _pick(rng, request)
    if at is not None:
        name, value = request.headers[at]
        cuts = [i for i, c in enumerate(value) if c in ",;" and value[i - 1 : i] not in "\r\n"]
        if cuts:
            cut = rng.choice(cuts)
            request.headers[at] = (
                name,
                value[:cut] + rng.choice(["\r\n ", "\r\n\t"]) + value[cut:],
            )


def duplicate(rng: random.Random, request: Request) -> None:
    at = _pick(rng, request)
    if at is not None:
        request.headers.insert(rng.randrange(1, len(request.headers) + 1), request.headers[at])


def drop(rng: random.Random, request: Request) -> None:
    at = _pick(rng, request, ["Contact", "Accept-Contact", "Content-Type", "P-Preferred-Service"])
    if at is not None:
        del request.headers[at]


def huge(rng: random.Random, request: Request) -> None:
    size = rng.choice([1000, 4000, 16000])
    name = rng.choice(["Accept-Contact", "Subject", "Contact", "P-Preferred-Service"])
    piece = {"Accept-Contact": "*;+g.x", "Contact": "<sip:a@h>", "Subject": "a"}.get(name, "urn:x")
    separator = "," if name in ("Accept-Contact", "Contact") else ""
    request.headers.append((name, separator.join([piece] * (size // len(piece)))))


GARBAGE = [
    ";", ";;;", ";=", ";+g.3gpp.icsi-ref", ';+g.3gpp.icsi-ref="', ';+g.3gpp.icsi-ref=""',
    ";+g.3gpp.icsi-ref=%ZZ", '"', "<", ">", "<<>>", "\x1f", "\\", '\\"', ",,,", "*", "%00",
    ";+g.oma.sip-im=", ";require;explicit;require", "\t", "  ", ";q=2.5", ";expires=-1",
]  # fmt: skip


def garbage(rng: random.Random, request: Request) -> None:
    names = ["Accept-Contact", "Contact", "P-Preferred-Service", "Content-Type"]
    _in_a_value(rng, request, rng.choice(GARBAGE), rng.choice([names, []]))


LOOKALIKES = [
    f'+g.3gpp.icsi-ref="{CPM.upper()}MSG"', f'+g.3gpp.icsi-ref="{CPM}msg.x"',
    '+g.3gpp.icsi-ref="urn:urn-7:3gpp-service.ims.icsi.oma.cpm.msg"', "+G.OMA.SIP-IM",
    '+g.3gpp.iari-ref="urn%3Aurn-7%3A3gpp-application.ims.iari.rcse.im"', "+g.3gpp.smsip",
    f'+g.3gpp.icsi-ref="{CPM}msg,{CPM}session,{CPM}filetransfer"', "+g.gsma.rcs.cpm.pager-large",
]  # fmt: skip


def tags(rng: random.Random, request: Request) -> None:
    name = rng.choice(["Accept-Contact", "Contact", "Reject-Contact"])
    value = f"*;{rng.choice(LOOKALIKES)}" if name != "Contact" else "<sip:a@127.0.0.1>"
    request.headers.append(
        (name, value + ("" if name != "Contact" else f";{rng.choice(LOOKALIKES)}"))
    )


def service(rng: random.Random, request: Request) -> None:
    name = rng.choice(["P-Preferred-Service", "P-Asserted-Service"])
    value = rng.choice([
        "urn:urn-7:3gpp-service.ims.icsi.oma.cpm.session", "urn:urn-7:3gpp-service.ims.icsi.",
        "URN:URN-7:3GPP-SERVICE.IMS.ICSI.OMA.CPM.MSG", "", "urn:x," * 50,
    ])  # fmt: skip
    request.headers.append((name, value))


def ruri(rng: random.Random, request: Request) -> None:
    host = request.ruri.rpartition("@")[2].split(";")[0] or "ims.example.net"
    user = request.ruri.partition(":")[2].partition("@")[0] or "x"
    request.ruri = rng.choice([
        f"sip:{_bytes(b'us' + rng.choice(NOT_UTF8) + b'er')}@{host}", f"sip:%E9%00{user}@{host}",
        f"SIP:{user.upper()}@{host.upper()}", f"sips:{user}@{host}", f"sip:{user}@{host}:0",
        f"sip:{user}@{host}:99999", f"sip:{user}@{host};user=phone", f"sip:{host}",
        f"tel:+1-555-{rng.randrange(10000):04d}", "tel:+", "tel:123;phone-context=x.y",
        f"sip:{user}@[::1]:5060", f"im:{user}@{host}", f"sip:{'u' * 900}@{host}",
        f"sip:{user}@{host};transport=tls;lr;maddr=127.0.0.9", f"sip:{user}@127.0.0.3:1",
    ])  # fmt: skip


def route(rng: random.Random, request: Request) -> None:
    token = rng.choice(["", "x", "1.AAAA", f"{2**40}.{'A' * 22}", _bytes(b"\xe9\xff"), "9" * 300])
    request.headers.append(("Route", f"<sip:127.0.0.1;lr;cpmiw={token}>"))


def body(rng: random.Random, request: Request) -> None:
    request.body = rng.choice([b"", rng.randbytes(rng.randrange(1, 2000)), b"\x00" * 100])


def content_type(rng: random.Random, request: Request) -> None:
    value = rng.choice(["", "message/cpim;charset=\xe9", "x/y;;", "multipart/mixed;boundary=",
                        "application/vnd.3gpp.sms", "text"])  # fmt: skip
    request.headers = [(n, v) for n, v in request.headers if header_key(n) != "content-type"]
    request.headers.append(("Content-Type", value))


def asserted(rng: random.Random, request: Request) -> None:
    value = rng.choice(["<sip:boss@ims.example.net>", "tel:+1", _bytes(b"<sip:\xe9@x>"), ""])
    request.headers.append(("P-Asserted-Identity", value))


METHODS = [
    "MESSAGE", "INVITE", "OPTIONS", "INFO", "SUBSCRIBE", "PUBLISH", "NOTIFY", "REFER", "UPDATE",
    "message", "FROB",
]  # fmt: skip


def method(rng: random.Random, request: Request) -> None:
    request.method = rng.choice(METHODS)


def compact(rng: random.Random, request: Request) -> None:
    short = {"contact": "m", "accept-contact": "a", "content-type": "c", "call-id": "i",
             "from": "f", "to": "t"}  # fmt: skip
    request.headers = [
        (short.get(header_key(n), n) if rng.random() < 0.5 else n, v) for n, v in request.headers
    ]


MUTATIONS: list[Callable[[random.Random, Request], None]] = [
    not_utf8, not_utf8, not_utf8, nul, latin1_display_name, latin1_display_name, fold,
    duplicate, drop, huge, garbage, garbage, tags, service, ruri, ruri, route, body,
    content_type, asserted, method, compact,
]  # fmt: skip


def mutated(rng: random.Random, target: Target) -> Request:
    """A seed with one to four mutations."""
    request = seed(rng, target)
    done = []
    for _ in range(rng.choice([1, 1, 2, 2, 3, 4])):
        mutation = rng.choice(MUTATIONS)
        mutation(rng, request)
        done.append(mutation.__name__)
    return replace(request, mutations=tuple(done))


def corpus(count: int, target: Target, seed_value: int = 1) -> list[Request]:
    rng = random.Random(seed_value)
    return [mutated(rng, target) for _ in range(count)]


def from_file(data: bytes) -> Request:
    """A request kept as a file: its frame (Via, CSeq, ...) is written anew."""
    message = SipMessage.parse(data)
    written = {"via", "cseq", "max-forwards", "content-length"}
    kept = [(n, v) for n, v in message.headers if header_key(n) not in written]
    return Request(message.method, message.ruri, kept, message.body, ("file",))


# The subscribers the files of tests/corpus address (they were found against a demo proxy).
FILE_RECIPIENTS = (b"sip:user00000@ims.example.net", b"sip:user00049@ims.example.net")


def known_cases(directory: Path, recipient: str) -> list[Request]:
    """The requests kept in `directory` (*.sip), addressed to `recipient`."""
    cases = []
    for path in sorted(directory.glob("*.sip")):
        data = path.read_bytes()
        for old in FILE_RECIPIENTS:
            data = data.replace(old, recipient.encode())
        cases.append(from_file(data))
    return cases


# -- sending and answering --------------------------------------------------------------------


@dataclass
class Outcome:
    """What the proxy answered to each request of a corpus."""

    statuses: Counter[int] = field(default_factory=Counter)  # final answers by status
    by_mutation: Counter[tuple[str, int]] = field(default_factory=Counter)  # (mutation, status)
    unanswered: list[tuple[Request, bytes]] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)  # by transport
    retransmissions: int = 0


def _branch_of(response: bytes) -> str:
    start = response.find(b"branch=z9hG4bK")
    if start < 0:
        return ""
    start += len(b"branch=z9hG4bK")
    end = start
    while end < len(response) and response[end : end + 1].isalnum():
        end += 1
    return response[start:end].decode("ascii")


def _status(response: bytes) -> int:
    parts = response.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


@dataclass
class _Pending:
    request: Request
    data: bytes
    transport: str
    sent_at: float
    tries: int = 1


class _Client:
    """The client side of `send`: one UDP socket, a few TCP connections (made again when the
    proxy closes one: the requests it carried then go unanswered)."""

    def __init__(self, proxy: tuple[str, int], host: str, connections: int) -> None:
        self.proxy, self.host = proxy, host
        self.selector = selectors.DefaultSelector()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, 0))
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.selector.register(self.udp, selectors.EVENT_READ)
        self.streams: list[socket.socket] = []
        self.buffers: dict[socket.socket, bytes] = {}
        for _ in range(connections):
            self.streams.append(self._connect())

    def _connect(self) -> socket.socket:
        stream = socket.create_connection(self.proxy, source_address=(self.host, 0))
        self.selector.register(stream, selectors.EVENT_READ)
        self.buffers[stream] = b""
        return stream

    def send(self, request: Request, index: int, branch: str) -> tuple[str, bytes]:
        if index % 2 == 0:
            data = request.render("udp", self.host, self.udp.getsockname()[1], branch)
            self.udp.sendto(data, self.proxy)
            return "udp", data
        slot = index // 2 % len(self.streams)
        stream = self.streams[slot]
        data = request.render("tcp", self.host, stream.getsockname()[1], branch)
        try:
            stream.sendall(data)
        except OSError:  # closed by the proxy: this request is lost with it
            self._replace(slot)
        return "tcp", data

    def _replace(self, slot: int) -> None:
        old = self.streams[slot]
        self.selector.unregister(old)
        del self.buffers[old]
        old.close()
        self.streams[slot] = self._connect()

    def receive(self, timeout: float) -> Iterator[bytes]:
        for key, _ in self.selector.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is self.udp:
                yield self.udp.recv(65535)
                continue
            try:
                data = sock.recv(65535)
            except OSError:
                data = b""
            if not data:
                self._replace(self.streams.index(sock))
                continue
            frames, self.buffers[sock] = split_frames(self.buffers[sock] + data)
            yield from frames

    def close(self) -> None:
        self.selector.close()
        for sock in [self.udp, *self.streams]:
            sock.close()


def send(
    proxy: tuple[str, int],
    requests: list[Request],
    *,
    host: str = "127.0.0.1",
    window: int = 64,
    connections: int = 4,
    retransmit: float = 1.0,
    tries: int = 4,
    last_wait: float = 12.0,
) -> Outcome:
    """Sends every request, alternately over UDP and TCP; waits for each final answer.

    Over UDP a request is sent again after `retransmit` s, then twice that, `tries` times in
    all. A request still unanswered `last_wait` s after its last try is unanswered (longer than
    tm's 10 s final-response timer: a relayed request that got no answer gets its 408 first).
    """
    outcome = Outcome()
    client = _Client(proxy, host, connections)
    pending: dict[str, _Pending] = {}
    queue = list(enumerate(requests))[::-1]
    give_up = retransmit * (2 ** (tries - 1)) + last_wait
    try:
        while queue or pending:
            while queue and len(pending) < window:
                index, request = queue.pop()
                branch = f"{index:x}f{random.getrandbits(32):08x}"
                transport, data = client.send(request, index, branch)
                outcome.sent[transport] += 1
                pending[branch] = _Pending(request, data, transport, time.monotonic())
            for response in client.receive(0.05):
                item = pending.get(branch := _branch_of(response))
                if item is not None and (status := _status(response)) >= 200:
                    outcome.statuses[status] += 1
                    outcome.by_mutation.update((m, status) for m in set(item.request.mutations))
                    del pending[branch]
            now = time.monotonic()
            for branch, item in list(pending.items()):
                waited = now - item.sent_at
                if item.transport == "udp" and item.tries < tries:
                    if waited > retransmit * (2**item.tries - 1):
                        client.udp.sendto(item.data, proxy)
                        item.tries += 1
                        outcome.retransmissions += 1
                elif waited > give_up:
                    outcome.unanswered.append((item.request, item.data))
                    del pending[branch]
    finally:
        client.close()
    return outcome


_COPIED = (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq")


def _answer(request: bytes) -> bytes | None:
    """A final answer to a request (INVITE 486, else 200), its headers copied byte for byte."""
    head = request.partition(b"\r\n\r\n")[0]
    first, *lines = head.split(b"\r\n")
    method = first.split(b" ", 1)[0]
    if method == b"ACK" or first.startswith(b"SIP/2.0"):
        return None
    names = [line.split(b":", 1)[0].strip().lower() for line in lines]
    copied = [line for line, name in zip(lines, names, strict=True) if name in _COPIED]
    to = next((line for line, name in zip(lines, names, strict=True) if name in (b"to", b"t")), b"")
    status = b"486 Busy Here" if method == b"INVITE" else b"200 OK"
    ending = [b"Content-Length: 0", b"", b""]
    return b"\r\n".join([b"SIP/2.0 " + status, *copied, to + b";tag=answerer", *ending])


class Answerer:
    """A UDP endpoint that answers every request at once, in a thread of its own."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.settimeout(0.1)
        self.host, self.port = host, self._sock.getsockname()[1]
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            answer = _answer(data)
            if answer is not None:
                self.received += 1
                self._sock.sendto(answer, source)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


def settled_processes(main: int, timeout: float = 10.0) -> list[int]:
    """`processes(main)` once Kamailio has started them all (the same twice, 0.2 s apart):
    it forks its UDP workers first and its TCP workers and timers after them."""
    deadline = time.monotonic() + timeout
    seen = processes(main)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (now := processes(main)) == seen:
            return now
        seen = now
    return seen


def processes(main: int) -> list[int]:
    """Kamailio's main process and its children."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == main:
                children.append(int(entry.name))
    return [main, *sorted(children)]


def tracebacks(log: str) -> int:
    return log.count("Traceback (most recent call last)")


def describe(outcome: Outcome) -> Iterator[str]:
    """Lines for a report."""
    sent = ", ".join(f"{n} over {t.upper()}" for t, n in sorted(outcome.sent.items()))
    yield f"sent: {sent}; retransmissions: {outcome.retransmissions}"
    yield "answers: " + ", ".join(f"{s}: {n}" for s, n in sorted(outcome.statuses.items()))
    mutations = sorted({m for m, _ in outcome.by_mutation})
    for mutation in mutations:
        answers = sorted((s, n) for (m, s), n in outcome.by_mutation.items() if m == mutation)
        yield f"  {mutation}: " + ", ".join(f"{s}: {n}" for s, n in answers)
    yield f"unanswered: {len(outcome.unanswered)}"
    for request, data in outcome.unanswered[:5]:
        yield f"  {request.mutations}: {data[:300]!r}"
