"""SIP messages as text: parsed with every header line kept exactly as received, in order.

Pure: `cpmiw explain` reads a request from a file with it, and the test peers
(cpmiw.testing.sipnet) build and check what crosses the proxy with it.

SIP text is not always UTF-8: a Latin-1 display name or a stray byte in a Call-ID is common, and
a request is routed the same whatever its bytes. So bytes become text with `decode` (UTF-8, each
byte that is not UTF-8 kept as a lone surrogate, `surrogateescape`) and back with `encode`,
exactly. Kamailio takes text from Python only as UTF-8 C strings: `escape_bytes` spells the
surrogates and NUL out as `\\xNN`, for what is logged, compared or used as a key, and
`escape_uri_bytes` percent-encodes them in a URI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from . import fields

COMPACT = {
    "v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
    "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding", "o": "event",
    "u": "allow-events", "x": "session-expires", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition", "r": "refer-to", "b": "referred-by",
}  # fmt: skip

Address = tuple[str, int]

_UNSAFE = re.compile(r"[\x00\ud800-\udfff]")  # NUL, and the bytes `decode` could not read


def decode(data: bytes) -> str:
    """SIP bytes as text: UTF-8, every other byte kept (as a surrogate) for `encode`."""
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    """The bytes `decode` read `text` from."""
    return text.encode("utf-8", "surrogateescape")


def is_plain(text: str) -> bool:
    """Whether `text` crosses to Kamailio as it is: UTF-8 and no NUL."""
    if text.isascii():  # the common case, without a scan for surrogates
        return "\x00" not in text
    return _UNSAFE.search(text) is None


def escape_bytes(text: str) -> str:
    """`text` with each byte that is not UTF-8, and NUL, written `\\xNN`; the rest unchanged."""
    if is_plain(text):
        return text
    return _UNSAFE.sub(lambda found: f"\\x{encode(found.group())[0]:02x}", text)


def escape_uri_bytes(text: str) -> str:
    """A URI with each byte that is not UTF-8, and NUL, percent-encoded (RFC 3261 `escaped`):
    `sip:us<0xE9>r@h` reads as `sip:us%E9r@h`, the URI it stands for."""
    if is_plain(text):
        return text
    return _UNSAFE.sub(lambda found: f"%{encode(found.group())[0]:02X}", text)


def header_key(name: str) -> str:
    """The canonical (lower-case, long-form) spelling of a header name."""
    name = name.strip().lower()
    return COMPACT.get(name, name)


@dataclass
class SipMessage:
    """A parsed SIP request or response that keeps every header line as received, in order."""

    start_line: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    source: Address | None = field(default=None, compare=False)  # where it was received from

    @classmethod
    def parse(cls, data: bytes) -> SipMessage:
        match = re.search(rb"\r?\n\r?\n", data)
        head, body = (data[: match.start()], data[match.end() :]) if match else (data, b"")
        start_line, *lines = re.split(r"\r?\n", decode(head))
        headers: list[tuple[str, str]] = []
        for line in lines:
            if line[:1] in (" ", "\t") and headers:  # folded continuation of the previous line
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {line.strip()}".strip())
            elif ":" in line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
            elif line.strip():
                raise ValueError(f"malformed SIP header line: {line!r}")
        msg = cls(start_line.strip(), headers, body)
        length = msg.header("content-length")
        if length is not None and length.strip().isdigit():
            msg.body = body[: int(length)]
        return msg

    def to_bytes(self) -> bytes:
        size = str(len(self.body))
        lines = [(n, size if header_key(n) == "content-length" else v) for n, v in self.headers]
        if not any(header_key(n) == "content-length" for n, _ in lines):
            lines.append(("Content-Length", size))
        head = "".join(f"{n}: {v}\r\n" for n, v in lines)
        return encode(f"{self.start_line}\r\n{head}\r\n") + self.body

    @property
    def is_request(self) -> bool:
        return not self.start_line.startswith("SIP/")

    @property
    def method(self) -> str:
        """The request method, or for a response the method named in its CSeq."""
        if self.is_request:
            return self.start_line.split(" ", 1)[0]
        cseq = (self.header("cseq") or "").split()
        return cseq[-1] if cseq else ""

    @property
    def status(self) -> int:
        return 0 if self.is_request else int(self.start_line.split()[1])

    @property
    def reason(self) -> str:
        parts = self.start_line.split(" ", 2)
        return parts[2] if not self.is_request and len(parts) > 2 else ""

    @property
    def ruri(self) -> str:
        return self.start_line.split()[1] if self.is_request else ""

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if header_key(n) == header_key(name)]

    def header_lines(self) -> list[str]:
        return [f"{n}: {v}" for n, v in self.headers]

    def with_header(self, name: str, value: str, *, first: bool = False) -> SipMessage:
        headers = [(name, value), *self.headers] if first else [*self.headers, (name, value)]
        return replace(self, headers=headers)

    def without_header(self, name: str) -> SipMessage:
        return replace(
            self, headers=[(n, v) for n, v in self.headers if header_key(n) != header_key(name)]
        )

    def replace_header(self, name: str, value: str) -> SipMessage:
        if self.header(name) is None:
            return self.with_header(name, value)
        headers: list[tuple[str, str]] = []
        for n, v in self.headers:
            if header_key(n) != header_key(name):
                headers.append((n, v))
            elif all(header_key(seen) != header_key(name) for seen, _ in headers):
                headers.append((n, value))
        return replace(self, headers=headers)


def header_entries(value: str) -> list[str]:
    """The comma-separated entries of a header value (commas in quotes and <...> are kept)."""
    return [span.text for span in fields.entries(value)]
