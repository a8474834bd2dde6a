"""`bench/run outage`: Redis killed and restarted, then the IP-SM-GW dead, under steady load.

The product with the throughput run's subscribers in a Redis with an append-only file (a
restart keeps the profiles, as in production) plus SMS-only subscribers whose CPM messages go
to the IP-SM-GW, a sipp UAS on 127.0.0.4. Callers offer pager MESSAGEs at a steady rate and
accept any final response; tcpdump records every transaction at the proxy's port.

    redis phase  Zipf recipients; Redis SIGKILLed at 10 s, started again at 20 s
    as phase     CPM recipients plus SMS recipients; the IP-SM-GW killed at 10 s, back at 20 s

Per second: the final responses by status, the answer time at the proxy (p50/p99, ms),
the look-ups by result and Kamailio's transactions in memory (tm.stats over JSON-RPC). Printed
as Markdown and written to bench/outage.json.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
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
    SippResult,
    Uac,
    start_product,
    uas,
    usage,
)
from cpmiw.ops.rpc import KamailioRpc, RpcError
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import connect
from cpmiw.testing import free_port

AS_TIMEOUT_MS = 1000


@dataclass
class Rig:
    """The product, its Redis, the recipients' devices and the IP-SM-GW."""

    lab: Lab
    redis: Redis
    kamailio: Kamailio
    ip_sm_gw: Process
    ip_sm_gw_port: int
    cpm: Path  # recipients file: Zipf over the CPM/IM subscribers
    sms: Path  # recipients file: the SMS-only subscribers
    draws: list[int]  # the CPM/IM recipients of `cpm`, in order

    def restart_ip_sm_gw(self) -> None:
        self.ip_sm_gw, _ = uas(self.lab, "uas-message.xml", IP_SM_GW_HOST, self.ip_sm_gw_port)


def build(lab: Lab, profiles: int, sms_profiles: int) -> Rig:
    server = lab.redis(persistent=True)
    store = ProfileStore(connect(server.url, 10.0))
    client = redis.Redis(port=server.port)
    sms = range(population.SMS_ONLY, population.SMS_ONLY + sms_profiles)
    population.load(store, client, [*range(profiles), *sms], native=False)
    gateway_port = free_port(IP_SM_GW_HOST)
    gateway, _ = uas(lab, "uas-message.xml", IP_SM_GW_HOST, gateway_port)
    kamailio = start_product(
        lab,
        server.url,
        CPMIW_IP_SM_GW=f"sip:{IP_SM_GW_HOST}:{gateway_port}",
        CPMIW_AS_TIMEOUT_MS=str(AS_TIMEOUT_MS),
    )
    device = (UAS_HOST, free_port(UAS_HOST))
    population.register(kamailio.address, [*range(profiles), *sms], device)
    uas(lab, "uas-message.xml", *device)
    draws = population.zipf_recipients(profiles, 300_000, 1.0)
    return Rig(
        lab,
        server,
        kamailio,
        gateway,
        gateway_port,
        population.injection_file(lab.dir / "cpm.csv", draws),
        population.injection_file(lab.dir / "sms.csv", list(sms) * 20),
        draws,
    )


def scrape_metrics(kamailio: Kamailio) -> dict[str, float]:
    url = f"http://127.0.0.1:{kamailio.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _in_memory_transactions(rpc: KamailioRpc) -> int:
    try:
        stats = rpc.call("tm.stats")
    except RpcError:
        return -1
    return int(stats.get("current", -1)) if isinstance(stats, dict) else -1


@dataclass
class Phase:
    name: str
    seconds: int
    results: list[SippResult]
    calls: list[Transaction]
    samples: list[dict[str, object]]
    events: list[tuple[float, str]]


def run_phase(
    rig: Rig,
    name: str,
    traffic: list[tuple[Path, int]],
    seconds: int,
    events: list[tuple[float, str, Callable[[], None]]],
    *,
    capture: bool = True,
) -> Phase:
    """Steady traffic for `seconds` while `events` happen; one sample of the proxy a second.

    With `capture`, every transaction is recorded (a few minutes at most: the file grows by
    ~1 MB a second at 2,000 MESSAGE/s).
    """
    kamailio = rig.kamailio
    recording = Capture(kamailio.port, rig.lab.dir / f"{name}.pcap") if capture else None
    rpc = KamailioRpc(str(rig.lab.dir / f"rpc-{kamailio.port}.sock"))
    workers = kamailio.processes()
    runs = [
        Uac(rig.lab, "uac-message-any.xml", kamailio.address, file, rate, seconds, tag=name)
        for file, rate in traffic
    ]
    started = time.monotonic()
    pending = sorted(events, key=lambda e: e[0])
    happened: list[tuple[float, str]] = []
    samples: list[dict[str, object]] = []
    while any(run.process.alive() for run in runs):
        at = time.monotonic() - started
        while pending and pending[0][0] <= at:
            _, what, action = pending.pop(0)
            action()
            happened.append((round(time.monotonic() - started, 2), what))
            print(f"  {at:5.1f} s: {what}", flush=True)
        sample: dict[str, object] = {"t": round(at, 1)}
        try:
            sample["metrics"] = scrape_metrics(kamailio)
        except OSError:
            sample["metrics"] = {}
        sample["tm_current"] = _in_memory_transactions(rpc)
        sample["private_mb"] = sorted(
            round(usage(pid).anon_kb / 1024, 1)
            for pid in workers[1:]
            if Path(f"/proc/{pid}").exists()
        )[-2:]
        samples.append(sample)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started - at)))
    results = [run.wait() for run in runs]
    rpc.close()
    calls = []
    if recording is not None:
        recording.stop()
        calls = transactions(recording.path, kamailio.port, "MESSAGE")
        recording.path.unlink()
    return Phase(name, seconds, results, calls, samples, happened)


def per_second(phase: Phase) -> list[dict[str, object]]:
    """The phase second by second: statuses, answer times, look-ups, transactions in memory."""
    if not phase.calls:
        return []
    origin = phase.calls[0].started
    by_second: dict[int, list[Transaction]] = {}
    for call in phase.calls:
        by_second.setdefault(int(call.started - origin), []).append(call)
    rows = []
    previous: dict[str, float] = {}
    samples = {int(float(str(s["t"]))): s for s in phase.samples}
    for second in sorted(by_second):
        calls = by_second[second]
        sample = samples.get(second, {})
        metrics = sample.get("metrics", {}) if isinstance(sample, dict) else {}
        assert isinstance(metrics, dict)
        lookups = {
            result: metrics.get(f'cpmiw_profile_lookups_total{{result="{result}"}}', 0.0)
            for result in ("hit", "miss", "error")
        }
        rows.append(
            {
                "second": second,
                "statuses": dict(Counter(c.status for c in calls)),
                "answer_ms": percentiles([c.round_trip for c in calls]),
                "lookups": {k: round(v - previous.get(k, v)) for k, v in lookups.items()},
                "tm_current": sample.get("tm_current", -1) if isinstance(sample, dict) else -1,
            }
        )
        previous = lookups
    return rows


def summary(phase: Phase) -> dict[str, object]:
    offered = sum(r.calls for r in phase.results)
    answered = sum(r.successful for r in phase.results)
    return {
        "phase": phase.name,
        "offered": offered,
        "answered": answered,
        "unanswered": offered - answered,
        "statuses": dict(Counter(c.status for c in phase.calls)),
        "answer_ms_max": round(max((c.round_trip for c in phase.calls), default=0) * 1000, 1),
        "events": phase.events,
        "seconds": per_second(phase),
    }


def markdown(report: dict[str, object]) -> str:
    lines = []
    phases = report["phases"]
    assert isinstance(phases, list)
    for phase in phases:
        lines += [
            f"**{phase['phase']}**: {phase['offered']:,} MESSAGEs offered, {phase['answered']:,}"
            f" answered, {phase['unanswered']} without a final response; statuses"
            f" {phase['statuses']}; slowest answer {phase['answer_ms_max']} ms. Events:"
            f" {', '.join(f'{what} at {at} s' for at, what in phase['events'])}.",
            "",
            "| s | final responses | answer p50 / p99 ms | look-ups hit / miss / error"
            " | transactions in memory |",
            "|---|---|---|---|---|",
        ]
        for row in phase["seconds"]:
            statuses = ", ".join(f"{n} x {s}" for s, n in sorted(row["statuses"].items()))
            lookups = row["lookups"]
            lines.append(
                f"| {row['second']} | {statuses} | {row['answer_ms'][0]} / {row['answer_ms'][1]}"
                f" | {lookups['hit']} / {lookups['miss']} / {lookups['error']}"
                f" | {row['tm_current']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run outage", description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1500, help="MESSAGE/s to CPM/IM recipients")
    parser.add_argument("--sms-rate", type=int, default=200, help="MESSAGE/s to SMS recipients")
    parser.add_argument("--seconds", type=int, default=30)
    options = parser.parse_args(argv)
    with Lab() as lab:
        rig = build(lab, options.profiles, 2000)
        Uac(lab, "uac-message-any.xml", rig.kamailio.address, rig.cpm, 1000, 5, tag="warm").wait()
        print("redis phase", flush=True)
        redis_phase = run_phase(
            rig,
            "redis",
            [(rig.cpm, options.rate)],
            options.seconds,
            [
                (10, "redis-server killed", rig.redis.kill),
                (20, "redis-server started", rig.redis.start),
            ],
        )
        print("as phase", flush=True)
        as_phase = run_phase(
            rig,
            "ip-sm-gw",
            [(rig.cpm, options.rate), (rig.sms, options.sms_rate)],
            options.seconds,
            [
                (10, "IP-SM-GW killed", rig.ip_sm_gw.stop),
                (20, "IP-SM-GW started", rig.restart_ip_sm_gw),
            ],
        )
    report = {
        "command": "bench/run outage",
        "options": vars(options),
        "as_timeout_ms": AS_TIMEOUT_MS,
        "phases": [summary(redis_phase), summary(as_phase)],
    }
    (BENCH / "outage.json").write_text(json.dumps(report, indent=1))
    print(markdown(report))


if __name__ == "__main__":
    main()
