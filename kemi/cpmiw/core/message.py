"""SIP messages as text: parsed with every header line kept exactly as received, in order.

Pure: `cpmiw explain` reads a request from a file with it, and the test peers
(cpmiw.testing.sipnet) build and check what crosses the proxy with it.
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
        start_line, *lines = re.split(r"\r?\n", head.decode("utf-8", "surrogateescape"))
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
        return f"{self.start_line}\r\n{head}\r\n".encode("utf-8", "surrogateescape") + self.body

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
