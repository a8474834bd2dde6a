"""Small helpers over KSR shared by the adapter's modules."""

from __future__ import annotations

import KSR  # provided by app_python3 inside Kamailio

from ..core.decision import Decision
from ..core.message import decode, encode, escape_bytes, is_plain

# kamailio.cfg's route that answers a failed t_relay() by its code, held in RELAY_CODE: 503
# when shared memory is full, 513 when the request is too large for UDP, else Kamailio's error.
RELAY_FAILED = "RELAY_FAILED"
RELAY_CODE = "$var(cpmiw_relay)"
# kamailio.cfg's route that appends the header line held, in hex, in RAW_HEADER.
RAW_HEADER = "$var(cpmiw_header)"
APPEND_RAW_HEADER = "APPEND_RAW_HEADER"


def pv(name: str) -> str:
    """A pseudo-variable's value as text; "" when it has none. Any bytes: what is not UTF-8,
    and NUL, come spelled `\\xNN` (core/message.py), so that the text can be logged and handed
    back to Kamailio."""
    try:
        value = KSR.pv.get(name)
    except UnicodeDecodeError:  # app_python3 decodes strictly: read the bytes in hex instead
        return escape_bytes(exact(name))
    if value is None:
        return ""
    text = str(value)
    return text if "\x00" not in text else escape_bytes(text)


def exact(name: str) -> str:
    """A pseudo-variable's value with its very bytes (core.message.decode); "" when none.

    Kamailio hands the value over in hex ({s.encode.hexa}), which any bytes survive. Slower
    than `pv`: for values that did not decode, or that go back into the request unchanged.
    """
    inner = name[2:-1] if name.startswith("$(") else name[1:]  # $(x[*]) -> x[*], $ci -> ci
    hexa = KSR.pv.get(f"$({inner}{{s.encode.hexa}})")
    return decode(bytes.fromhex(str(hexa))) if hexa else ""


def append_header(name: str, value: str) -> None:
    """Appends a header line to the request; `value` may hold any bytes (core.message.decode)."""
    line = f"{name}: {value}\r\n"
    if is_plain(line):
        KSR.hdr.append(line)
        return
    KSR.pv.sets(RAW_HEADER, encode(line).hex())
    KSR.route(APPEND_RAW_HEADER)


def all_lines(header: str) -> str:
    """The pseudo-variable of every line of `header`, joined by commas (Kamailio's joining)."""
    return f"$(hdr({header})[*])"


def reply(decision: Decision) -> None:
    KSR.sl.send_reply(decision.status, decision.reason)


def relay() -> None:
    """Relays statefully; a failure is answered as kamailio.cfg's RELAY route answers it."""
    code = KSR.tm.t_relay()
    if code < 0:
        KSR.pv.seti(RELAY_CODE, code)
        KSR.route(RELAY_FAILED)
