"""`bench/run flood`: one source floods the proxy while a client sends its usual traffic.

The product with 1,000 subscribers (each with one registered device, the recipients' sipp UAS)
and its default flood limit (CPMIW_FLOOD_RATE=100 a second per source). A client on 127.0.0.6
sends 50 MESSAGEs a second for the whole of each phase, as a UDP user agent does: a request
unanswered after 500 ms is sent again (RFC 3261 timer A), four times at most. A flood of OPTIONS
datagrams comes from 127.0.0.9 (cpmiw.testing.flood, a process of its own) in the middle phases:

    quiet       the client alone
    flood       58,000 datagrams a second (468,000 in 8 s, the flood once measured against the
                proxy), then as fast as one process sends
    unprotected the same 58,000 a second with the flood limit off (CPMIW_FLOOD_RATE=0)

Per phase: the client's requests answered at the first try, after retransmissions, or never;
their answer time (p50 / p99 / max, ms); the flood's datagrams, those the proxy dropped as a
flood (cpmiw_flood_blocked_total) and the kernel's receive-buffer drops; Kamailio's CPU.
Printed as Markdown and written to bench/flood.json.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass

import redis

from bench import population
from bench.capture import percentiles
from bench.lab import (
    BENCH,
    UAS_HOST,
    Kamailio,
    Lab,
    start_product,
    uas,
    udp_receive_drops,
)
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import connect
from cpmiw.testing import free_port
from cpmiw.testing.flood import Flood

SUBSCRIBERS = 1000
CLIENT = "127.0.0.6"
FLOODER = "127.0.0.9"
CLIENT_RATE = 50  # MESSAGE/s, under the default limit of 100
RETRANSMIT = 0.5  # s: RFC 3261 timer A
TRIES = 5
FLOOD_RATE = 58_000
AS_FAST_AS_IT_GOES = 10_000_000


@dataclass
class Phase:
    name: str
    flood_offered: int  # datagrams a second asked of the flooder (0: no flood)
    seconds: float
    flood_sent: int
    flood_blocked: int  # cpmiw_flood_blocked_total, during the phase
    kernel_drops: int  # UDP receive-buffer drops on the machine, during the phase
    kamailio_cpu: float  # s of CPU of every Kamailio process, during the phase
    requests: int
    first_try: int
    retransmitted: int
    unanswered: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def _message(index: int, port: int, call_id: str) -> bytes:
    aor = f"sip:{population.user(index)}@{population.DOMAIN}"
    return (
        f"MESSAGE {aor} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CLIENT}:{port};branch=z9hG4bK{call_id}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:client@{CLIENT}>;tag={call_id}\r\nTo: <{aor}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n"
        f"Content-Length: 5\r\n\r\nhello"
    ).encode()


def client(proxy: tuple[str, int], seconds: float) -> list[tuple[float, int]]:
    """The client's traffic: (answer time in s, tries) of each request; tries 0: unanswered."""
    outcomes: list[tuple[float, int]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((CLIENT, 0))
        port = sock.getsockname()[1]
        started = time.monotonic()
        index = 0
        while time.monotonic() - started < seconds:
            call_id = secrets.token_hex(8)
            request = _message(index % SUBSCRIBERS, port, call_id)
            sent = time.monotonic()
            outcome = (0.0, 0)
            for tries in range(1, TRIES + 1):
                sock.sendto(request, proxy)
                sock.settimeout(RETRANSMIT)
                try:
                    while call_id.encode() not in (answer := sock.recv(65535)) or answer.startswith(
                        b"SIP/2.0 100 "
                    ):
                        pass
                except TimeoutError:
                    continue
                outcome = (time.monotonic() - sent, tries)
                break
            outcomes.append(outcome)
            index += 1
            time.sleep(max(0.0, started + index / CLIENT_RATE - time.monotonic()))
    return outcomes


def _blocked(kamailio: Kamailio) -> int:
    url = f"http://127.0.0.1:{kamailio.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("cpmiw_flood_blocked_total "):
                return int(float(line.split()[1]))
    return 0


def _cpu(kamailio: Kamailio) -> float:
    return kamailio.cpu_ns() / 1e9


def phase(kamailio: Kamailio, name: str, flood: int, seconds: float) -> Phase:
    blocked, drops, cpu = _blocked(kamailio), udp_receive_drops(), _cpu(kamailio)
    outcomes: list[tuple[float, int]] = []
    worker = threading.Thread(target=lambda: outcomes.extend(client(kamailio.address, seconds)))
    worker.start()
    sent = 0
    if flood:
        time.sleep(1.0)
        with Flood(kamailio.address, flood, seconds - 2.0, FLOODER) as flooding:
            pass
        sent = flooding.sent
    worker.join()
    answered = [(delay, tries) for delay, tries in outcomes if tries]
    p50, p99 = percentiles([delay for delay, _ in answered])
    return Phase(
        name,
        flood,
        seconds,
        sent,
        _blocked(kamailio) - blocked,
        udp_receive_drops() - drops,
        round(_cpu(kamailio) - cpu, 2),
        len(outcomes),
        sum(1 for _, tries in answered if tries == 1),
        sum(1 for _, tries in answered if tries > 1),
        len(outcomes) - len(answered),
        round(p50, 2),
        round(p99, 2),
        round(max((delay * 1000 for delay, _ in answered), default=0.0), 2),
    )


def rig(lab: Lab, store_url: str, limit: str) -> Kamailio:
    kamailio = start_product(lab, store_url, CPMIW_FLOOD_RATE=limit)
    device = (UAS_HOST, free_port(UAS_HOST))
    uas(lab, "uas-message.xml", *device)
    registered = population.register(kamailio.address, range(SUBSCRIBERS), device)
    assert registered == SUBSCRIBERS, f"{registered} of {SUBSCRIBERS} registered"
    return kamailio


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run flood", description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0, help="per phase")
    args = parser.parse_args(argv)
    phases = []
    with Lab() as lab:
        server = lab.redis()
        store = ProfileStore(connect(server.url, 10.0))
        population.load(store, redis.Redis(port=server.port), range(SUBSCRIBERS), native=False)
        kamailio = rig(lab, server.url, "100")
        phases.append(phase(kamailio, "quiet", 0, args.seconds))
        phases.append(phase(kamailio, "flood", FLOOD_RATE, args.seconds))
        phases.append(phase(kamailio, "flood", AS_FAST_AS_IT_GOES, args.seconds))
        kamailio.process.stop()
        unprotected = rig(lab, server.url, "0")
        phases.append(phase(unprotected, "unprotected", FLOOD_RATE, args.seconds))
    (BENCH / "flood.json").write_text(json.dumps([asdict(p) for p in phases], indent=1) + "\n")
    print(report(phases))


def report(phases: list[Phase]) -> str:
    lines = [
        "| phase | flood offered / sent (datagrams/s) | dropped as flood | kernel drops"
        " | client: first try / retransmitted / unanswered | answer p50 / p99 / max (ms)"
        " | Kamailio CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in phases:
        offered = (
            "-"
            if not p.flood_offered
            else (
                "as fast as it goes"
                if p.flood_offered == AS_FAST_AS_IT_GOES
                else f"{p.flood_offered:,}"
            )
        )
        rate = f"{p.flood_sent / (p.seconds - 2.0):,.0f}" if p.flood_sent else "-"
        lines.append(
            f"| {p.name} | {offered} / {rate} | {p.flood_blocked:,} | {p.kernel_drops:,}"
            f" | {p.first_try} / {p.retransmitted} / {p.unanswered}"
            f" | {p.p50_ms} / {p.p99_ms} / {p.max_ms} | {p.kamailio_cpu / p.seconds:.0%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
