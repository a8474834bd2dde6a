"""Sub-millisecond latency from packet timestamps, since sipp times responses in whole ms.

tcpdump records every UDP packet to or from the proxy's port on the loopback interface with the
kernel's microsecond timestamps. For each transaction (Call-ID, CSeq) of the method measured:

    t1  request reaches the proxy       t2  proxy forwards it
    t3  final response reaches proxy    t4  proxy forwards the response

`round_trip` = t4 - t1 (what the caller waits, peers included) and `added` = (t2 - t1) +
(t4 - t3) (what the proxy adds). Retransmissions are ignored: the first copy of each counts.
"""

from __future__ import annotations

import itertools
import signal
import statistics
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_LINK_HEADER = {1: 14, 113: 16, 276: 20, 0: 4}  # ethernet (lo), Linux cooked v1/v2, BSD loopback


class Capture:
    """tcpdump on lo for the packets of one UDP port, written to `path` until stopped."""

    def __init__(self, port: int, path: Path) -> None:
        self.path = path
        args = [
            "tcpdump", "-i", "lo", "-n", "-Z", "root", "-s", "0", "-B", "65536", "-U",
            "-w", str(path), f"udp port {port}",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)  # tcpdump opens the interface before traffic is measured

    def stop(self) -> None:
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _packets(path: Path) -> Iterator[tuple[float, int, int, bytes]]:
    """(timestamp, source port, destination port, UDP payload) of each IPv4 UDP packet."""
    data = path.read_bytes()
    if len(data) < 24:
        return
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    scale = 1e-9 if magic in (0xA1B23C4D, 0x4D3CB2A1) else 1e-6
    link = struct.unpack(endian + "I", data[20:24])[0]
    skip = _LINK_HEADER[link]
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, captured, _ = struct.unpack(endian + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + captured]
        offset += 16 + captured
        ip = frame[skip:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4 :]
        source, destination = struct.unpack("!HH", udp[:4])
        yield seconds + fraction * scale, source, destination, udp[8:]


def _transaction(payload: bytes) -> tuple[bool, int, str, str] | None:
    """(is request, status, Call-ID, CSeq) of a SIP message, or None."""
    head = payload.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    is_request = not lines[0].startswith("SIP/2.0")
    status = 0 if is_request else int(lines[0].split(" ", 2)[1])
    call_id = cseq = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in ("call-id", "i"):
            call_id = value.strip()
        elif name == "cseq":
            cseq = " ".join(value.split())
    return (is_request, status, call_id, cseq) if call_id and cseq else None


# s: a request arriving sooner than this after the previous is in its burst (sent back to back)
BURST_GAP = 20e-6


@dataclass(frozen=True)
class Latency:
    samples: int
    round_trip: tuple[float, float]  # p50, p99 in ms
    added: tuple[float, float]  # p50, p99 in ms
    burst: float  # requests per burst reaching the proxy, on average (BURST_GAP)


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99 in ms."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[49] * 1000, 3), round(cuts[98] * 1000, 3)


@dataclass(frozen=True)
class Transaction:
    started: float  # t1, kernel time
    round_trip: float  # t4 - t1, seconds
    added: float  # seconds the proxy added; for a request it answered itself, the round trip
    status: int  # the final response the caller got
    caller_port: int = 0  # the UDP port the request came from (which caller sent it)


def transactions(path: Path, proxy_port: int, method: str) -> list[Transaction]:
    """Every complete `method` transaction in a capture (relayed, or answered by the proxy)."""
    times: dict[tuple[str, str], list[float | None]] = {}
    statuses: dict[tuple[str, str], int] = {}
    callers: dict[tuple[str, str], int] = {}
    for at, source, destination, payload in _packets(path):
        parsed = _transaction(payload)
        if parsed is None:
            continue
        is_request, status, call_id, cseq = parsed
        if not cseq.endswith(" " + method) or (not is_request and status < 200):
            continue
        if proxy_port not in (destination, source):
            continue
        slot = (0 if is_request else 2) + (1 if source == proxy_port else 0)
        stamps = times.setdefault((call_id, cseq), [None, None, None, None])
        if stamps[slot] is None:
            stamps[slot] = at
            if slot == 0:
                callers[(call_id, cseq)] = source
            if slot == 3:
                statuses[(call_id, cseq)] = status
    found = []
    for key, (t1, t2, t3, t4) in times.items():
        if t1 is None or t4 is None:
            continue  # began before or ended after the capture
        added = t4 - t1 if t2 is None or t3 is None else (t2 - t1) + (t4 - t3)
        found.append(Transaction(t1, t4 - t1, added, statuses[key], callers.get(key, 0)))
    return sorted(found, key=lambda t: t.started)


def latency(path: Path, proxy_port: int, method: str) -> Latency:
    """Round-trip and proxy-added latency of the relayed `method` transactions in a capture."""
    relayed = [t for t in transactions(path, proxy_port, method) if t.added < t.round_trip]
    return Latency(
        len(relayed),
        percentiles([t.round_trip for t in relayed]),
        percentiles([t.added for t in relayed]),
        mean_burst([t.started for t in relayed]),
    )


def mean_burst(arrivals: list[float]) -> float:
    """Requests per burst: arrivals (sorted) less than BURST_GAP after the previous join it."""
    if not arrivals:
        return 0.0
    bursts = 1 + sum(1 for a, b in itertools.pairwise(arrivals) if b - a >= BURST_GAP)
    return round(len(arrivals) / bursts, 1)
