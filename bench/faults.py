"""`bench/run faults`: Redis paused, slow and killed under 1,000 MESSAGE/s.

The outage run's subscribers (Zipf recipients, each with a registered device) plus SMS-only
ones, in a Redis with an append-only file (a restart keeps the profiles, as in production).
Traffic, from sipp, accepting any final response:

    zipf    CPM pager MESSAGEs to the Zipf recipients (the most of the rate)
    to-sms  CPM MESSAGEs to SMS-only subscribers: to the IP-SM-GW, the conversation remembered
    reply   SMS users' replies from the IP-SM-GW to CPM users: the conversation exchanged

Every Redis call of a request goes through the worker's guard (a 50 ms budget per request, a
10 ms limit per reply, a 500 ms breaker: the defaults). Each fault gets a product of its own,
its caches warmed first, then 15 s of traffic; the fault begins at 5 s and ends at 10 s:

    paused  redis-server stopped (SIGSTOP), then continued (SIGCONT)
    slow    every reply held 45 ms by a relay between the product and Redis
            (cpmiw.testing.slowredis, in a process of its own at real-time priority; the
            product talks to Redis through it in this run only, its hop included before and
            after)
    killed  redis-server SIGKILLed, then started again (it reloads its file; "back" is when it
            answers)

tcpdump records every transaction at the proxy's port. Per fault: what was offered and
answered, the final responses while Redis was out, the answer time of the requests delivered
meanwhile (recipients a worker had cached) and of those refused (503), when the last 503 came
after Redis was back, and the breakers opened by reason. Printed as Markdown and written to
bench/faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import population
from bench.capture import Capture, Transaction, percentiles, transactions
from bench.lab import (
    BENCH,
    IP_SM_GW_HOST,
    UAS_HOST,
    Kamailio,
    Lab,
    Process,
    Redis,
    Uac,
    start_product,
    uas,
)
from bench.outage import AS_TIMEOUT_MS, scrape_metrics
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import connect
from cpmiw.testing import free_port, wait_until

FAULT_AT, FAULT_FOR, AFTER = 5.0, 5.0, 5.0  # s into the traffic; how long; measured after


@dataclass
class Rig:
    lab: Lab
    redis: Redis
    relay: Process  # the slow relay in front of redis, idle but for the slow fault
    relay_port: int
    gateway_port: int  # the IP-SM-GW (sipp UAS on 127.0.0.4)
    device: tuple[str, int]  # every subscriber's device (sipp UAS on 127.0.0.2)
    indices: list[int]  # every subscriber registered
    zipf: Path
    to_sms: Path
    replies: Path


@dataclass(frozen=True)
class Fault:
    name: str
    slow: bool  # through the relay
    begin: Callable[[Rig], None]
    end: Callable[[Rig], None]  # returns once Redis answers again


def _signal(process: Process | None, number: int) -> None:
    assert process is not None, "started"
    os.kill(process.pid, number)


FAULTS = {
    "paused": Fault(
        "paused",
        False,
        lambda rig: _signal(rig.redis.process, signal.SIGSTOP),
        lambda rig: _signal(rig.redis.process, signal.SIGCONT),
    ),
    "slow": Fault(
        "slow",
        True,
        lambda rig: _signal(rig.relay, signal.SIGUSR1),
        lambda rig: _signal(rig.relay, signal.SIGUSR2),
    ),
    "killed": Fault("killed", False, lambda rig: rig.redis.kill(), lambda rig: rig.redis.start()),
}


def _pairs(path: Path, pairs: list[tuple[int, int]]) -> Path:
    """A sipp injection file of two fields a line: recipient, sender (user parts)."""
    with path.open("w") as out:
        out.write("SEQUENTIAL\n")
        out.writelines(f"{population.user(a)};{population.user(b)};\n" for a, b in pairs)
    return path


def build(lab: Lab, profiles: int, sms_profiles: int, slow_ms: int) -> Rig:
    server = lab.redis(persistent=True)
    sms = list(range(population.SMS_ONLY, population.SMS_ONLY + sms_profiles))
    population.load(
        ProfileStore(connect(server.url, 10.0)),
        redis.Redis(port=server.port),
        [*range(profiles), *sms],
        native=False,
    )
    # At real-time priority: on a shared machine the relay's own hop would otherwise wait for
    # a CPU, and every Redis call of the slow run with it.
    relay = lab.spawn(
        ["chrt", "-f", "10", sys.executable, "-m", "cpmiw.testing.slowredis", str(server.port),
         str(slow_ms)],
        "slowredis.log",
    )  # fmt: skip
    wait_until(lambda: relay.log.read_text().strip().isdigit(), "the slow relay")
    gateway_port = free_port(IP_SM_GW_HOST)
    uas(lab, "uas-message.xml", IP_SM_GW_HOST, gateway_port)
    device = (UAS_HOST, free_port(UAS_HOST))
    uas(lab, "uas-message.xml", *device)
    draws = population.zipf_recipients(profiles, 300_000, 1.0)
    cpm = [i for i in range(min(profiles, 2000)) if population.kind(i) == "cpm"]
    return Rig(
        lab,
        server,
        relay,
        int(relay.log.read_text()),
        gateway_port,
        device,
        [*range(profiles), *sms],
        population.injection_file(lab.dir / "zipf.csv", draws),
        population.injection_file(lab.dir / "to-sms.csv", sms * 40),
        _pairs(
            lab.dir / "replies.csv", [(cpm[n % len(cpm)], sms[n % len(sms)]) for n in range(50_000)]
        ),
    )


def product(rig: Rig, fault: Fault) -> Kamailio:
    """A product of its own for `fault`, every subscriber registered, its caches warmed."""
    port = rig.relay_port if fault.slow else rig.redis.port
    kamailio = start_product(
        rig.lab,
        f"redis://127.0.0.1:{port}/0",
        CPMIW_IP_SM_GW=f"sip:{IP_SM_GW_HOST}:{rig.gateway_port}",
        CPMIW_AS_TIMEOUT_MS=str(AS_TIMEOUT_MS),
    )
    population.register(kamailio.address, rig.indices, rig.device)
    Uac(rig.lab, "uac-message-any.xml", kamailio.address, rig.zipf, 1000, 5, tag="warm").wait()
    return kamailio


def run(rig: Rig, fault: Fault, rate: int, sms_rate: int) -> dict[str, object]:
    kamailio = product(rig, fault)
    seconds = FAULT_AT + FAULT_FOR + AFTER
    recording = Capture(kamailio.port, rig.lab.dir / f"{fault.name}.pcap")
    before_metrics = scrape_metrics(kamailio)
    address = kamailio.address
    callers = [
        Uac(rig.lab, "uac-message-any.xml", address, rig.zipf, rate - 2 * sms_rate, seconds),
        Uac(rig.lab, "uac-message-any.xml", address, rig.to_sms, sms_rate, seconds, tag="sms"),
        Uac(
            rig.lab, "uac-sms-reply.xml", address, rig.replies, sms_rate, seconds,
            tag="reply", host=IP_SM_GW_HOST,
        ),
    ]  # fmt: skip
    started = time.time()
    time.sleep(FAULT_AT)
    began = time.time()
    fault.begin(rig)
    time.sleep(max(0.0, began + FAULT_FOR - time.time()))
    fault.end(rig)
    back = time.time()
    print(f"  {fault.name}: {back - began:.2f} s out", flush=True)
    results = [caller.wait() for caller in callers]
    recording.stop()
    after_metrics = scrape_metrics(kamailio)
    calls = transactions(recording.path, kamailio.port, "MESSAGE")
    recording.path.unlink()
    kamailio.process.stop()
    counts = sum(r.calls for r in results), sum(r.successful for r in results)
    opened = _opened(before_metrics, after_metrics)
    return summary(fault, counts, calls, (started, began, back), opened)


def _opened(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    prefix = "cpmiw_redis_breaker_opened_total{"
    return {
        name[len(prefix) :].split('"')[1]: round(value - before.get(name, 0.0))
        for name, value in after.items()
        if name.startswith(prefix) and value != before.get(name, 0.0)
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def summary(
    fault: Fault,
    counts: tuple[int, int],
    calls: list[Transaction],
    times: tuple[float, float, float],
    opened: dict[str, int],
) -> dict[str, object]:
    started, began, back = times

    def between(start: float, end: float) -> list[Transaction]:
        return [c for c in calls if start <= c.started < end]

    before, during = between(started, began), between(began, back)
    after = between(back, back + AFTER)
    delivered = [c.round_trip for c in during if c.status == 200]
    refused = [c.round_trip for c in during if c.status == 503]
    late_refusals = [c.started - back for c in after if c.status == 503]
    return {
        "fault": fault.name,
        "offered": counts[0],
        "answered": counts[1],
        "unanswered": counts[0] - counts[1],
        "out_s": round(back - began, 2),
        "before_p50_p99_ms": percentiles([c.round_trip for c in before if c.status == 200]),
        "during_statuses": dict(Counter(str(c.status) for c in during)),
        "delivered_p50_p99_ms": percentiles(delivered),
        "delivered_max_ms": _ms(max(delivered, default=0.0)),
        "refused_p50_p99_ms": percentiles(refused),
        "refused_max_ms": _ms(max(refused, default=0.0)),
        "last_503_after_back_s": round(max(late_refusals, default=0.0), 3),
        "after_p50_p99_ms": percentiles([c.round_trip for c in after if c.status == 200]),
        "breakers_opened": opened,
    }


def markdown(report: dict[str, object]) -> str:
    faults = report["faults"]
    assert isinstance(faults, list)
    lines = [
        "| Redis | offered / unanswered | while out: answers | delivered p50 / p99 / max ms"
        " | 503 p50 / p99 / max ms | last 503 after Redis back | before / after p99 ms"
        " | breakers opened |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in faults:
        statuses = ", ".join(f"{n} x {s}" for s, n in sorted(f["during_statuses"].items()))
        delivered, refused = f["delivered_p50_p99_ms"], f["refused_p50_p99_ms"]
        lines.append(
            f"| {f['fault']} ({f['out_s']} s) | {f['offered']:,} / {f['unanswered']}"
            f" | {statuses} | {delivered[0]} / {delivered[1]} / {f['delivered_max_ms']}"
            f" | {refused[0]} / {refused[1]} / {f['refused_max_ms']}"
            f" | {f['last_503_after_back_s']} s"
            f" | {f['before_p50_p99_ms'][1]} / {f['after_p50_p99_ms'][1]}"
            f" | {', '.join(f'{n} {r}' for r, n in f['breakers_opened'].items()) or '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run faults", description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--sms-profiles", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=1000, help="MESSAGE/s in all")
    parser.add_argument("--sms-rate", type=int, default=50, help="to-sms and reply, each")
    parser.add_argument("--slow-ms", type=int, default=45, help="the slow fault's hold")
    parser.add_argument("faults", nargs="*", metavar="FAULT", help=f"of {', '.join(FAULTS)}")
    options = parser.parse_args(argv)
    options.faults = options.faults or list(FAULTS)
    if unknown := set(options.faults) - set(FAULTS):
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    with Lab() as lab:
        rig = build(lab, options.profiles, options.sms_profiles, options.slow_ms)
        reports = []
        for name in options.faults:
            print(f"{name}", flush=True)
            reports.append(run(rig, FAULTS[name], options.rate, options.sms_rate))
    report: dict[str, object] = {
        "command": "bench/run faults",
        "options": vars(options),
        "faults": reports,
    }
    (BENCH / "faults.json").write_text(json.dumps(report, indent=1))
    print(markdown(report))


if __name__ == "__main__":
    main()
