"""Helpers for tests and benchmarks of cpmiw: profile builders, recipient kinds, free ports."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from ..core.profile import Profile

DOMAIN = "ims.example.net"
# The ICSI prefix as feature tags carry it (percent-encoded), a CPIM body, an MSRP offer.
ICSI = "urn%3Aurn-7%3A3gpp-service.ims.icsi."
CPIM = b"From: <sip:anonymous@anonymous.invalid>\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=message 7394 TCP/MSRP *\r\na=accept-types:message/cpim\r\n"
    b"a=path:msrp://127.0.0.1:7394/s111;tcp\r\n"
)


def make_profile(user: str, number: str, services: str = "", **fields: object) -> Profile:
    """A valid profile for sip:<user>@ims.example.net and tel:<number>; services like "cpm,sms".

    Other fields are given as in the stored JSON (`interworking="im_as"`) and validated so.
    """
    return msgspec.convert(
        {
            "identities": [f"sip:{user}@{DOMAIN}", f"tel:{number}"],
            "services": [name for name in services.split(",") if name],
            **fields,
        },
        Profile,
    )


# The recipient kinds of the README's decision table; None is a recipient without a profile.
RECIPIENT_KINDS: dict[str, Profile | None] = {
    "CPM": make_profile("cpm", "+15550000001", "cpm"),
    "IM only": make_profile("im", "+15550000002", "im"),
    "SMS only": make_profile("sms", "+15550000003", "sms"),
    "CPM+SMS": make_profile("cpmsms", "+15550000004", "cpm,sms"),
    "IM+SMS": make_profile("imsms", "+15550000005", "im,sms"),
    "no messaging": make_profile("none", "+15550000006"),
    "barred": make_profile("barred", "+15550000007", "cpm,im,sms", barred=True),
    "unknown": None,
}


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` (SIP listens on both), never given before by
    this process.

    Chosen at random outside the kernel's ephemeral range, from which every connection and every
    socket bound to port 0 takes its own port: none of them can take this one between its choice
    and its server's start, nor while a server stopped on it is started again.
    """
    for _ in range(100):
        port = random.choice(_PORTS) if _PORTS else _any_port(host)
        if port in _given:
            continue
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            ):
                tcp.bind((host, port))
                udp.bind((host, port))
        except OSError:
            continue
        _given.add(port)
        return port
    raise RuntimeError("no free port")


def _any_port(host: str) -> int:
    """A port the kernel picks (from its ephemeral range: when no other range is left)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind((host, 0))
        return int(tcp.getsockname()[1])


def _ports_to_give() -> range:
    """The larger of the ranges below and above the ephemeral one, from 10,000 (below: ports
    that well-known services use); Linux's default when the range cannot be read."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return max(range(10_000, low), range(max(high + 1, 10_000), 65536), key=len)


_PORTS = _ports_to_give()
_given: set[int] = set()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Polls `check` until it is true; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {timeout} s")
