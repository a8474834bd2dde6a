"""`bench/run`: the product against native Kamailio, in one run on this machine.

Configurations, each with 2 UDP workers, sipp as caller and as the recipients' devices:

    a  native-relay.cfg: t_relay() to the devices, no look-up (the ceiling)
    b  native-redis.cfg: one ndb_redis GET per request, subst_hf rewrite, registrar, t_relay()
    c  the product: kamailio.cfg + plugin, the profiles in Redis through ProfileStore

Recipients are drawn from a Zipf-like distribution over the subscribers. For pager MESSAGE and
for chat INVITE (INVITE/200/ACK/BYE), each configuration climbs a ladder of offered rates (x1.5
until a step completes < 99.9 % of its calls, then bisection to 5 %) and runs once more at a
common rate, half the product's maximum, for latency, CPU and memory per worker. Every step
captures packets for a while: latency comes from their kernel timestamps, not from sipp's
4 ms clock. Last, the product alone with 1,000,000 profiles and uniformly drawn recipients
shows its workers' memory levelling off at the cache's cap.

Results go to bench/results/<stamp>.json; bench.report draws the chart and the README table.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from bench import population
from bench.capture import Capture, Latency, latency
from bench.lab import BENCH, UAS_HOST, Kamailio, Lab, Uac, free_port, start_native
from bench.lab import start_product, uas, usage
from cpmiw.store import ProfileStore, connect

RESULTS = BENCH / "results"
SUCCESS = 0.999


@dataclass(frozen=True)
class Scenario:
    uac: str
    uas: str
    method: str
    first_rate: int  # where the ladder starts, calls/s


SCENARIOS = {
    "message": Scenario("uac-message.xml", "uas-message.xml", "MESSAGE", 3000),
    "invite": Scenario("uac-invite.xml", "uas-invite.xml", "INVITE", 1000),
}
CONFIGS = ("product", "native-relay", "native-redis")  # the product first: it sets the rate


@dataclass(frozen=True)
class Worker:
    cpu_pct: float  # of one core, over the run
    rss_mb: float
    private_mb: float  # RssAnon: the process's own memory, without Kamailio's shared memory


@dataclass(frozen=True)
class Measurement:
    rate: int
    calls: int
    successful: int
    latency: Latency
    cpu_us_per_call: float  # every Kamailio process, per completed call
    workers: list[Worker]

    @property
    def success(self) -> float:
        return self.successful / self.calls if self.calls else 0.0


@dataclass
class ConfigResult:
    max_rate: int = 0
    steps: list[Measurement] = field(default_factory=list)
    common: Measurement | None = None


def measured_run(
    lab: Lab,
    kamailio: Kamailio,
    scenario: Scenario,
    recipients: Path,
    rate: int,
    seconds: float,
    window: tuple[float, float],
) -> Measurement:
    """One sipp run at `rate`, with a packet capture over `window` (seconds into the run)."""
    pids = kamailio.processes()
    before = {pid: usage(pid) for pid in pids}
    run = Uac(lab, scenario.uac, kamailio.address, recipients, rate, seconds)
    time.sleep(window[0])
    capture = Capture(kamailio.port, lab.dir / f"{kamailio.name}-{scenario.method}-{rate}.pcap")
    time.sleep(window[1] - window[0])
    capture.stop()
    result = run.wait()
    after = {pid: usage(pid) for pid in pids}
    lat = latency(capture.path, kamailio.port, scenario.method)
    capture.path.unlink()

    def cpu(pid: int) -> int:
        return after[pid].cpu_ns - before[pid].cpu_ns

    busiest = sorted(pids, key=cpu, reverse=True)[:2]
    workers = [
        Worker(
            round(100 * cpu(pid) / 1e9 / result.seconds, 1),
            round(after[pid].rss_kb / 1024, 1),
            round(after[pid].anon_kb / 1024, 1),
        )
        for pid in busiest
    ]
    per_call = sum(cpu(pid) for pid in pids) / 1000 / max(result.successful, 1)
    return Measurement(rate, result.calls, result.successful, lat, round(per_call, 1), workers)


def climb(lab: Lab, kamailio: Kamailio, scenario: Scenario, recipients: Path, seconds: float) -> ConfigResult:
    """The highest offered rate that completes >= 99.9 % of its calls, to within 5 %."""
    found = ConfigResult()
    ok, failed, rate = 0, 0, scenario.first_rate
    while True:
        step = measured_run(lab, kamailio, scenario, recipients, rate, seconds, (2.5, 3.5))
        found.steps.append(step)
        print(f"    {rate:6d}/s: {step.success:.2%} completed", flush=True)
        if step.success >= SUCCESS:
            ok = rate
        else:
            failed = rate
        if not failed:
            rate = int(rate * 1.5) // 100 * 100
        elif failed - ok <= max(100, ok // 20):
            found.max_rate = ok
            return found
        else:
            rate = (ok + failed) // 2 // 50 * 50


def bench_config(
    lab: Lab,
    config: str,
    redis_server: ...,
    device: tuple[str, int],
    recipients: Path,
    options: argparse.Namespace,
    common: dict[str, int],
) -> dict[str, ConfigResult]:
    ...
