"""Third-party REGISTER (3GPP TS 24.229 5.4.1.7): the devices behind an S-CSCF's registration.

When a UE registers, the S-CSCF tells the application servers named by the subscriber's initial
filter criteria with a REGISTER of its own: Request-URI the AS (here: the proxy), `To` the
public user identity, `From` and `Contact` the S-CSCF, `Expires` the registration's (0: the
identity is deregistered). Asked to, it puts in the body, as `message/sip` (both in a
`multipart/mixed` when asked for both), the UE's REGISTER and/or its own 200 (OK) to it. Their
`Contact` is the device's, with the feature tags routing needs (+g.3gpp.icsi-ref, +g.oma.sip-im,
+g.3gpp.smsip, +sip.instance), and the UE's REGISTER has the `Path` to it (its P-CSCF).

`devices()` turns such a body into what the registrar saves for the identity, so that a device
known through the S-CSCF counts for routing exactly as one that registered here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import fields
from .message import SipMessage

MESSAGE_SIP = "message/sip"
MULTIPART = "multipart/mixed"
_BOUNDARY = re.compile(r';\s*boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_SECONDS = re.compile(r"[0-9]{1,10}")


class ThirdPartyError(ValueError):
    """A third-party REGISTER whose body names no device, or not readably."""


@dataclass(frozen=True)
class Devices:
    """What the registrar saves for the identity: the value of the Contact header (`*`: every
    binding goes), and of the Path header to the devices ("" when there is none)."""

    contact: str
    path: str


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_third_party(content_type: str) -> bool:
    """Whether a REGISTER's Content-Type says that it carries another party's registration."""
    return media_type(content_type) in (MESSAGE_SIP, MULTIPART)


def devices(content_type: str, body: bytes, expires: int) -> Devices:
    """The bindings a third-party REGISTER with `Expires: expires` gives its `To` identity.

    The UE's own REGISTER is preferred: its contacts as the device wrote them, each for the time
    the S-CSCF granted (`expires`, or less when the device asked for less). Without it, the
    S-CSCF's 200 (OK): each contact for the time it was granted there. `expires` 0 deregisters
    the identity: every binding goes. Raises ThirdPartyError when the body names no device.
    """
    if expires == 0:
        return Devices("*", "")
    messages = embedded(content_type, body)
    register = next((m for m in messages if m.is_request and m.method == "REGISTER"), None)
    answer = next((m for m in messages if not m.is_request and m.status == 200), None)
    if register is not None:
        asked = _seconds(register.header("expires"))
        contacts = _contacts(register, expires if asked is None else min(asked, expires), expires)
        path = ", ".join(register.header_values("path"))
    elif answer is not None:
        contacts = _contacts(answer, expires, None)
        path = ""
    else:
        raise ThirdPartyError(f"no REGISTER nor 200 (OK) in the {media_type(content_type)} body")
    if not contacts:
        raise ThirdPartyError("the registration in the body has no contact")
    return Devices(", ".join(contacts), path)


def embedded(content_type: str, body: bytes) -> list[SipMessage]:
    """The SIP messages of a `message/sip` body, or of the `message/sip` parts of a multipart."""
    kind = media_type(content_type)
    if kind == MESSAGE_SIP:
        return [_parse(body)]
    if kind != MULTIPART:
        return []
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise ThirdPartyError("a multipart body without a boundary")
    found = []
    for part in _parts(body, (match.group(1) or match.group(2)).encode()):
        head, content = _split_part(part)
        if media_type(_part_type(head.decode("latin-1"))) == MESSAGE_SIP:
            found.append(_parse(content))
    return found


def _contacts(message: SipMessage, default: int, most: int | None) -> list[str]:
    """Each Contact entry of `message` with its expiry (its own `expires`, else `default`, at
    most `most`) written as its only `expires` parameter; `*` is no contact."""
    found = []
    for value in message.header_values("contact"):
        for entry in fields.entries(value):
            if entry.text == "*":
                continue
            own = next((p for p in fields.params(entry) if p.name == "expires"), None)
            granted = default if own is None else _seconds(own.value)
            if granted is None:
                raise ThirdPartyError(f"a contact with an unreadable expires: {entry.text}")
            if most is not None:
                granted = min(granted, most)
            found.append(f"{_undisplayed(_without(entry, own))};expires={granted}")
    return found


def _undisplayed(contact: str) -> str:
    """A Contact entry without its display name (`"Name" <uri>;params` -> `<uri>;params`):
    the registrar has no use for it, and a name may hold anything a device chose."""
    quoted = escaped = False
    for index, char in enumerate(contact):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "<" and not quoted:
            return contact[index:]
    return contact


def _without(entry: fields.Span, param: fields.Param | None) -> str:
    """The entry's text without `param` (whose span is positioned in the whole header value)."""
    if param is None:
        return entry.text
    start, end = param.span.start - entry.start, param.span.end - entry.start
    return entry.text[:start] + entry.text[end:]


def _seconds(text: str | None) -> int | None:
    value = (text or "").strip()
    return int(value) if _SECONDS.fullmatch(value) else None


def _parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts of a multipart body (RFC 2046 5.1.1): what lies between its delimiter lines."""
    delimiter = b"--" + boundary
    parts: list[bytes] = []
    current: list[bytes] | None = None
    for line in body.split(b"\n"):
        text = line.rstrip(b"\r")
        if text.startswith(delimiter):
            if current is not None:
                parts.append(b"\n".join(current))
            if text[len(delimiter) :].startswith(b"--"):
                return parts
            current = []
        elif current is not None:
            current.append(line)
    if current is not None:  # no closing delimiter: what came is taken
        parts.append(b"\n".join(current))
    return parts


def _split_part(part: bytes) -> tuple[bytes, bytes]:
    """A body part's MIME headers and its content (no headers: it starts with a blank line)."""
    if part.startswith((b"\r\n", b"\n")):
        return b"", part.split(b"\n", 1)[1]
    blank = re.search(rb"\r?\n\r?\n", part)
    return (part[: blank.start()], part[blank.end() :]) if blank else (part, b"")


def _part_type(head: str) -> str:
    """The Content-Type of a body part's MIME headers (RFC 2046: text/plain when absent)."""
    for line in re.split(r"\r?\n(?![ \t])", head):
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "content-type":
            return " ".join(value.split())
    return "text/plain"


def _parse(data: bytes) -> SipMessage:
    try:
        message = SipMessage.parse(data.lstrip(b"\r\n"))
    except ValueError as error:
        raise ThirdPartyError(f"an unreadable message/sip part: {error}") from None
    words = message.start_line.split()
    if len(words) < 2 or (not message.is_request and not words[1].isdigit()):
        raise ThirdPartyError(f"not a SIP start line: {message.start_line[:80]!r}")
    return message
