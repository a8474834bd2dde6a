"""A flood of SIP requests from one source, in a process of its own (tests and bench).

    python -m cpmiw.testing.flood PROXY_HOST PROXY_PORT RATE SECONDS [SOURCE_HOST]

sends OPTIONS datagrams at RATE a second for SECONDS from SOURCE_HOST (default 127.0.0.1), reads
nothing, and prints how many it sent. `Flood` runs it beside a test.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from types import TracebackType
from typing import Self

BURST = 100  # datagrams sent between two looks at the clock


def _datagram(number: int, source: tuple[str, int]) -> bytes:
    host, port = source
    return (
        f"OPTIONS sip:flood{number}@ims.example.net SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKflood{number}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:flood@{host}>;tag=f{number}\r\n"
        f"To: <sip:flood{number}@ims.example.net>\r\nCall-ID: flood{number}@{host}\r\n"
        f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def send(proxy: tuple[str, int], rate: float, seconds: float, source: str) -> int:
    """Sends the flood; returns how many datagrams the kernel took."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.setblocking(False)
        address = sock.getsockname()
        started = time.monotonic()
        tried = sent = 0
        while (elapsed := time.monotonic() - started) < seconds:
            if tried > elapsed * rate:
                time.sleep(0.0005)
                continue
            for number in range(tried, tried + BURST):
                try:
                    sock.sendto(_datagram(number, address), proxy)
                    sent += 1
                except BlockingIOError:  # the socket's buffer is full: the flood goes on
                    pass
            tried += BURST
        return sent


class Flood:
    """`send` in a child process, for the `with` block: `sent` once it is over."""

    def __init__(
        self, proxy: tuple[str, int], rate: float, seconds: float, source: str = "127.0.0.1"
    ) -> None:
        args = [sys.executable, "-m", __name__, proxy[0], str(proxy[1]), str(rate), str(seconds)]
        self._process = subprocess.Popen([*args, source], stdout=subprocess.PIPE, text=True)
        self.sent = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        output, _ = self._process.communicate()
        self.sent = int(output or 0)


if __name__ == "__main__":
    host, port, rate, seconds, *source = sys.argv[1:]
    print(send((host, int(port)), float(rate), float(seconds), *(source or ["127.0.0.1"])))
