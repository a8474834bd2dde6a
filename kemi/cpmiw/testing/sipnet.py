"""Real SIP peers on loopback, for tests and the demo that drive a real Kamailio proxy.

They play every party around the proxy (UAC, UAS, application servers, registering clients)
with a message type that keeps each header line exactly as it arrived, so they can assert what the
proxy changed; peers that speak UDP or TCP on 127.0.0.0/8; the UAC half of a dialog; and a stateless
proxy standing in for an application server. Standard library only.
"""

from __future__ import annotations

import re
import secrets
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self

from ..core.message import Address, SipMessage, header_entries, header_key
from .digest import authorization


def _drop_display_name(name_addr: str) -> str:
    return re.sub(r'^\s*"(?:[^"\\]|\\.)*"', "", name_addr).strip()


def uri_of(name_addr: str) -> str:
    """The URI of a name-addr or addr-spec; without <...> any ;params belong to the header."""
    rest = _drop_display_name(name_addr)
    if "<" in rest:
        return rest.partition("<")[2].partition(">")[0].strip()
    return rest.partition(";")[0].strip()


def _params(text: str) -> dict[str, str]:
    """';'-separated parameters ("a=b;c") as a dict with lower-case names ({"a": "b", "c": ""})."""
    pairs = (p.partition("=") for p in text.split(";") if p.strip())
    return {name.strip().lower(): value.strip() for name, _, value in pairs}


def tag_of(name_addr: str) -> str | None:
    rest = _drop_display_name(name_addr)
    tail = rest.rpartition(">")[2] if "<" in rest else rest.partition(";")[2]
    return _params(tail).get("tag")


def _host_port(hostport: str, default: int) -> Address:
    match = re.fullmatch(r"\[?([^\]]+?)\]?(?::(\d+))?", hostport.strip())
    if not match:
        raise ValueError(f"not a host[:port]: {hostport!r}")
    return match[1], int(match[2]) if match[2] else default


def host_port_of(uri: str) -> Address:
    scheme, _, rest = uri.strip().partition(":")
    hostport = re.split(r"[;?]", rest.rpartition("@")[2], maxsplit=1)[0]
    return _host_port(hostport, 5061 if scheme.lower() == "sips" else 5060)


def _via(value: str) -> tuple[str, Address, dict[str, str]]:
    """Transport, sent-by address and parameters of one Via entry."""
    protocol, _, rest = value.strip().partition(" ")
    sent_by, _, params = rest.partition(";")
    return protocol.rpartition("/")[2].upper(), _host_port(sent_by, 5060), _params(params)


def _via_reply_address(value: str) -> Address:
    """Where responses to a Via entry go: received/rport if present, else the sent-by."""
    _, (host, port), params = _via(value)
    return params.get("received") or host, int(params.get("rport") or port)


def _first_entry(msg: SipMessage, name: str) -> str | None:
    entries = header_entries(msg.header(name) or "")
    return entries[0] if entries else None


def _pop_first_entry(msg: SipMessage, name: str) -> SipMessage:
    """Remove the first entry of the first header line `name`; drop the line if it empties."""
    index = next(i for i, (n, _) in enumerate(msg.headers) if header_key(n) == header_key(name))
    rest = header_entries(msg.headers[index][1])[1:]
    headers = list(msg.headers)
    if rest:
        headers[index] = (headers[index][0], ", ".join(rest))
    else:
        del headers[index]
    return replace(msg, headers=headers)


def _need(msg: SipMessage, name: str) -> str:
    value = msg.header(name)
    if value is None:
        raise ValueError(f"{msg.start_line!r} has no {name} header")
    return value


def split_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Cut complete messages off a TCP stream (framed by Content-Length); return the rest."""
    frames: list[bytes] = []
    while True:
        buffer = buffer.lstrip(b"\r\n")  # CRLF keep-alives between messages
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return frames, buffer
        size = end + 4 + int(SipMessage.parse(buffer[:end]).header("content-length") or 0)
        if len(buffer) < size:
            return frames, buffer
        frames.append(buffer[:size])
        buffer = buffer[size:]


def _branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


class Peer:
    """One SIP endpoint on a loopback address: a UDP socket, or a TCP listener with connections."""

    def __init__(self, host: str = "127.0.0.1", *, port: int = 0, transport: str = "udp") -> None:
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be 'udp' or 'tcp', not {transport!r}")
        self.host, self.transport = host, transport
        kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
        self._sock = socket.socket(socket.AF_INET, kind)
        self._sock.bind((host, port))
        if transport == "tcp":
            self._sock.listen()
        self.port: int = self._sock.getsockname()[1]
        self._suffix = ";transport=tcp" if transport == "tcp" else ""  # for our URIs
        self._conns: dict[Address, socket.socket] = {}  # TCP connections, by remote address
        self._buffers: dict[Address, bytes] = {}  # TCP bytes received but not yet framed
        self._inbox: deque[SipMessage] = deque()
        self._seen: set[tuple[str, str]] = set()  # (Via branch, CSeq) of requests received
        self._tags: dict[tuple[str, str], str] = {}  # our To tag per request we answer

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}{self._suffix}"

    def _contact(self, user: str = "peer") -> str:
        return f"<sip:{user}@{self.host}:{self.port}{self._suffix}>"

    def close(self) -> None:
        for sock in [self._sock, *self._conns.values()]:
            sock.close()
        self._conns.clear()
        self._buffers.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def send(self, msg: SipMessage | bytes, dest: Address) -> None:
        data = msg.to_bytes() if isinstance(msg, SipMessage) else msg
        if self.transport == "udp":
            self._sock.sendto(data, dest)
            return
        if dest not in self._conns:
            self._conns[dest] = socket.create_connection(dest, source_address=(self.host, 0))
            self._buffers[dest] = b""
        self._conns[dest].sendall(data)

    def _read(self, sock: socket.socket) -> None:
        if sock is self._sock and self.transport == "udp":
            data, source = sock.recvfrom(65535)
            if data.strip():  # ignore CRLF keep-alives
                self._inbox.append(replace(SipMessage.parse(data), source=source))
        elif sock is self._sock:
            conn, source = sock.accept()
            self._conns[source], self._buffers[source] = conn, b""
        else:
            source = next(addr for addr, conn in self._conns.items() if conn is sock)
            try:
                data = sock.recv(65535)
            except OSError:
                data = b""
            if not data:  # closed by the other side
                sock.close()
                del self._conns[source], self._buffers[source]
                return
            frames, self._buffers[source] = split_frames(self._buffers[source] + data)
            self._inbox.extend(replace(SipMessage.parse(f), source=source) for f in frames)

    def _next(self, deadline: float, timeout: float) -> SipMessage:
        while not self._inbox:
            socks = [self._sock, *self._conns.values()]
            ready, _, _ = select.select(socks, [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"{self.uri}: no SIP message arrived within {timeout}s")
            for sock in ready:
                self._read(sock)
        return self._inbox.popleft()

    def _next_new(self, deadline: float, timeout: float) -> SipMessage:
        """The next message that is not a retransmission of a request already received."""
        while True:
            msg = self._next(deadline, timeout)
            if not msg.is_request:
                return msg
            if _transaction(msg) not in self._seen:
                self._seen.add(_transaction(msg))
                return msg

    def recv(self, timeout: float = 5.0) -> SipMessage:
        msg = self._next(time.monotonic() + timeout, timeout)
        if msg.is_request:
            self._seen.add(_transaction(msg))
        return msg

    def recv_request(self, method: str | None = None, timeout: float = 5.0) -> SipMessage:
        msg = self._next_new(time.monotonic() + timeout, timeout)
        if not msg.is_request or (method is not None and msg.method != method):
            raise AssertionError(
                f"{self.uri} expected {method or 'a'} request, got {msg.start_line}"
            )
        return msg

    def recv_response(self, timeout: float = 5.0, *, final: bool = True) -> SipMessage:
        deadline = time.monotonic() + timeout
        while True:
            msg = self._next_new(deadline, timeout)
            if msg.is_request:
                raise AssertionError(f"{self.uri} expected a response, got {msg.start_line}")
            if msg.status >= 200 or not final:
                return msg

    def expect_nothing(self, wait: float = 0.5) -> None:
        try:
            msg = self.recv(wait)
        except TimeoutError:
            return
        raise AssertionError(f"{self.uri} expected no message, got {msg.start_line}")

    def request(
        self,
        method: str,
        ruri: str,
        *,
        to: str | None = None,
        from_: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        call_id: str | None = None,
        cseq: int = 1,
        route: list[str] | None = None,
    ) -> SipMessage:
        """Build (not send) a request from this peer; `route` values are Route name-addrs."""
        via = f"SIP/2.0/{self.transport.upper()} {self.host}:{self.port};branch={_branch()};rport"
        lines = [
            ("Via", via),
            ("Max-Forwards", "70"),
            ("From", from_ or f"<sip:peer@{self.host}>;tag={secrets.token_hex(4)}"),
            ("To", to or f"<{ruri}>"),
            ("Call-ID", call_id or f"{secrets.token_hex(8)}@{self.host}"),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", self._contact()),
            *(("Route", r if r.lstrip().startswith("<") else f"<{r}>") for r in route or []),
            *(headers or []),
            ("Content-Length", str(len(body))),
        ]
        return SipMessage(f"{method} {ruri} SIP/2.0", lines, body)

    def reply(
        self,
        request: SipMessage,
        status: int,
        reason: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        to_tag: str | None = None,
        contact: bool = False,
    ) -> SipMessage:
        """Build a response to `request`, send it where its top Via says, and return it."""
        copied = {"via", "from", "to", "call-id", "cseq"} | (
            {"record-route"} if status < 300 else set()
        )
        lines = [(n, v) for n, v in request.headers if header_key(n) in copied]
        top_via = header_entries(_need(request, "via"))[0]
        to = _need(request, "to")
        if status > 100 and tag_of(to) is None:
            key = (request.header("call-id") or "", _via(top_via)[2].get("branch", ""))
            tag = to_tag or self._tags.setdefault(key, secrets.token_hex(4))
            lines = [(n, f"{v};tag={tag}" if header_key(n) == "to" else v) for n, v in lines]
        lines += [("Contact", self._contact())] if contact else []
        lines += [*(headers or []), ("Content-Length", str(len(body)))]
        response = SipMessage(f"SIP/2.0 {status} {reason}", lines, body)
        dest = _via_reply_address(top_via)
        if request.source is not None and request.source in self._conns:
            dest = request.source  # TCP: back on the connection the request came in on
        self.send(response, dest)
        return response

    def register(
        self,
        registrar: Address,
        aor: str,
        *,
        contact_params: str = "",
        expires: int = 3600,
        timeout: float = 5.0,
        display_name: str = "",
        password: str | None = None,
        username: str | None = None,
    ) -> SipMessage:
        """REGISTER this peer as a contact of `aor`; return the final response. A display name
        is quoted as given (its text may hold any bytes: core.message.decode).

        With a `password`, a 401 challenge is answered once (digest; username: the AOR's user
        part unless given), as a device does.
        """
        user, _, domain = uri_of(aor).partition(":")[2].partition(";")[0].rpartition("@")
        contact = self._contact(user or "peer") + f"{contact_params};expires={expires}"
        contact = f'"{display_name}" {contact}' if display_name else contact
        tag = secrets.token_hex(4)
        msg = self.request("REGISTER", f"sip:{domain}", to=f"<{aor}>", from_=f"<{aor}>;tag={tag}")
        msg = msg.replace_header("Contact", contact)
        answer = self.ask(msg, registrar, timeout)
        challenge = answer.header("WWW-Authenticate")
        if password is None or answer.status != 401 or challenge is None:
            return answer
        credentials = authorization(challenge, "REGISTER", msg.ruri, username or user, password)
        again = self.request(
            "REGISTER",
            msg.ruri,
            to=f"<{aor}>",
            from_=f"<{aor}>;tag={tag}",
            call_id=msg.header("call-id"),
            cseq=2,
            headers=[("Authorization", credentials)],
        )
        return self.ask(again.replace_header("Contact", contact), registrar, timeout)

    def ask(self, request: SipMessage, dest: Address, timeout: float = 5.0) -> SipMessage:
        self.send(request, dest)
        return self.recv_response(timeout)


def _transaction(request: SipMessage) -> tuple[str, str]:
    """What identifies a retransmission: the top Via branch and the CSeq."""
    top_via = _first_entry(request, "via") or ""
    branch = _params(top_via.partition(";")[2]).get("branch", "")
    return branch, " ".join((request.header("cseq") or "").split())


@dataclass
class Dialog:
    """The UAC side of an INVITE dialog established through a proxy: builds in-dialog requests."""

    call_id: str
    local: str  # our From value, with our tag
    remote: str  # the To value of the 2xx, with the remote tag
    remote_target: str
    route_set: list[str]
    invite_cseq: int
    local_cseq: int

    @classmethod
    def from_2xx(cls, invite: SipMessage, ok: SipMessage) -> Dialog:
        routes = [e for v in ok.header_values("record-route") for e in header_entries(v)]
        cseq = int(_need(invite, "cseq").split()[0])
        return cls(
            call_id=_need(invite, "call-id"),
            local=_need(invite, "from"),
            remote=_need(ok, "to"),
            remote_target=uri_of(_need(ok, "contact")),
            route_set=routes[::-1],
            invite_cseq=cseq,
            local_cseq=cseq,
        )

    def request(
        self, peer: Peer, method: str, *, cseq: int | None = None
    ) -> tuple[SipMessage, Address]:
        """An in-dialog request and the address to send it to (first route hop, else target)."""
        if cseq is None:
            cseq = self.invite_cseq if method == "ACK" else self.local_cseq + 1
        if method != "ACK":
            self.local_cseq = cseq
        msg = peer.request(
            method,
            self.remote_target,
            to=self.remote,
            from_=self.local,
            call_id=self.call_id,
            cseq=cseq,
            route=self.route_set,
        )
        hop = uri_of(self.route_set[0]) if self.route_set else self.remote_target
        return msg, host_port_of(hop)


class StatelessProxy:
    """A proxy-mode application server: pops its own Route, forwards, relays responses back."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def _is_me(self, address: Address) -> bool:
        return address == (self.peer.host, self.peer.port)

    def forward_one(
        self,
        timeout: float = 5.0,
        *,
        mutate: Callable[[SipMessage], SipMessage] | None = None,
        to: Address | None = None,
    ) -> SipMessage:
        """Receive one request and forward it; return it as forwarded. `to`: where to, instead
        of its next Route (as when that proxy is down and DNS gives another one)."""
        return self.forward(self.peer.recv_request(timeout=timeout), mutate=mutate, to=to)

    def forward(
        self,
        msg: SipMessage,
        *,
        mutate: Callable[[SipMessage], SipMessage] | None = None,
        to: Address | None = None,
    ) -> SipMessage:
        """Forward `msg`, a request received earlier, as forward_one does."""
        top_route = _first_entry(msg, "route")
        if top_route is not None and self._is_me(host_port_of(uri_of(top_route))):
            msg = _pop_first_entry(msg, "route")
        via = f"SIP/2.0/{self.peer.transport.upper()} {self.peer.host}:{self.peer.port}"
        msg = msg.with_header("Via", f"{via};branch={_branch()}", first=True)
        if mutate is not None:
            msg = mutate(msg)
        next_route = _first_entry(msg, "route")
        self.peer.send(msg, to or host_port_of(uri_of(next_route) if next_route else msg.ruri))
        return msg

    def relay_responses(
        self, timeout: float = 5.0, *, until_final: bool = True
    ) -> list[SipMessage]:
        """Relay responses back along their Via; stop after a final one, or after a silence."""
        relayed: list[SipMessage] = []
        while True:
            try:
                response = self.peer.recv_response(timeout, final=False)
            except TimeoutError:
                if until_final:
                    raise
                return relayed
            top_via = _first_entry(response, "via") or ""
            if not self._is_me(_via(top_via)[1]):
                raise AssertionError(f"response {response.start_line} has foreign Via {top_via}")
            response = _pop_first_entry(response, "via")
            self.peer.send(response, _via_reply_address(_first_entry(response, "via") or ""))
            relayed.append(response)
            if until_final and response.status >= 200:
                return relayed
