"""`bench/run`: the product against native Kamailio, in one run on this machine.

Configurations, each with 2 UDP workers, sipp as caller and as the recipients' devices:

    a  native-relay.cfg: the registrar's contact and t_relay(), no profile (the ceiling)
    b  native-redis.cfg: one ndb_redis GET per request, subst_hf rewrite, registrar, t_relay()
    c  the product: kamailio.cfg + plugin, the profiles in Redis through ProfileStore

Recipients are drawn from a Zipf-like distribution over the subscribers. For pager MESSAGE and
for chat INVITE (INVITE/200/ACK/BYE), each configuration climbs a ladder of offered rates (x1.5
until a step completes < 99.9 % of its calls, then bisection to 5 %) and runs once more at a
common rate, half the product's maximum, for latency, CPU and memory per worker. Every step
captures packets for a while: latency comes from their kernel timestamps, not from sipp's
whole milliseconds. Last, the product alone with 1,000,000 profiles and uniformly drawn recipients
shows its workers' memory levelling off at the cache's cap.

Results go to bench/results/<stamp>.json; bench.report draws the chart and the README table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from bench import population
from bench.capture import Capture, Latency, latency
from bench.lab import (
    BENCH,
    UAS_HOST,
    Kamailio,
    Lab,
    Uac,
    start_native,
    start_product,
    uas,
    usage,
    warm_up,
)
from cpmiw.settings import load_settings
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import connect
from cpmiw.testing import free_port

RESULTS = BENCH / "results"
SUCCESS = 0.999


@dataclass(frozen=True)
class Scenario:
    uac: str
    uas: str
    method: str
    first_rate: int  # where the ladder starts, calls/s
    warm_rate: int  # calls/s of its warm-up: every distinct recipient once, before its ladder


SCENARIOS = {
    "message": Scenario("uac-message.xml", "uas-message.xml", "MESSAGE", 3000, 4000),
    "invite": Scenario("uac-invite.xml", "uas-invite.xml", "INVITE", 1000, 2000),
}
# The product first: it sets the common rate. The native configurations run twice: as operators
# run Kamailio (its defaults), and tuned as the product runs it (allocator, receive buffer).
CONFIGS = (
    "product",
    "native-relay",
    "native-redis",
    "native-relay-tuned",
    "native-redis-tuned",
)
TUNED = "-tuned"


@dataclass(frozen=True)
class Worker:
    cpu_pct: float  # of one core, over the run
    rss_mb: float
    private_mb: float  # RssAnon: the process's own memory, without Kamailio's shared memory
    waiting_pct: float  # of the run, runnable but waiting for a CPU (a request waits with it)


@dataclass(frozen=True)
class Measurement:
    rate: int
    calls: int
    successful: int
    latency: Latency
    cpu_us_per_call: float  # every Kamailio process, per completed call
    workers: list[Worker]
    # Commands Redis served per completed call: ~1 for b' (its GET), 0 for a', the cache misses
    # for c. Shows that each configuration did the Redis work it is there to do.
    redis_per_call: float

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
    redis_port: int,
    callers: int = 1,
) -> Measurement:
    """One run at `rate`, with a packet capture over `window` (seconds into the run).

    `callers`: how many sipp UACs share the rate. One sipp sends in bursts (at 8,000/s, up to
    ~30 requests back to back every ~4 ms); several, each on its own loop, send smaller ones.
    """
    pids = kamailio.processes()
    before = {pid: usage(pid) for pid in pids}
    served_before = _commands_served(redis_port)
    shares = _shares(rate, callers)
    runs = [
        Uac(lab, scenario.uac, kamailio.address, path, share, seconds, tag=f"-{n}")
        for n, (share, path) in enumerate(zip(shares, _rotated(recipients, callers), strict=True))
    ]
    time.sleep(window[0])
    capture = Capture(kamailio.port, lab.dir / f"{kamailio.name}-{scenario.method}-{rate}.pcap")
    time.sleep(window[1] - window[0])
    capture.stop()
    results = [run.wait() for run in runs]
    took = max(result.seconds for result in results)
    successful = sum(result.successful for result in results)
    after = {pid: usage(pid) for pid in pids}
    served = _commands_served(redis_port) - served_before
    lat = latency(capture.path, kamailio.port, scenario.method)
    capture.path.unlink()

    def percent(ns: int) -> float:  # of the run
        return round(100 * ns / 1e9 / took, 1)

    def cpu(pid: int) -> int:
        return after[pid].cpu_ns - before[pid].cpu_ns

    busiest = sorted(pids, key=cpu, reverse=True)[:2]
    workers = [
        Worker(
            percent(cpu(pid)),
            round(after[pid].rss_kb / 1024, 1),
            round(after[pid].anon_kb / 1024, 1),
            percent(after[pid].wait_ns - before[pid].wait_ns),
        )
        for pid in busiest
    ]
    per_call = sum(cpu(pid) for pid in pids) / 1000 / max(successful, 1)
    calls = sum(run.calls for run in runs)
    redis_per_call = round(served / max(successful, 1), 2)
    return Measurement(rate, calls, successful, lat, round(per_call, 1), workers, redis_per_call)


def _commands_served(port: int) -> int:
    """Commands the Redis on `port` has served since it started (its INFO counts this call)."""
    with redis.Redis(port=port, socket_timeout=5.0) as client:
        return int(client.info("stats")["total_commands_processed"])


def _shares(rate: int, callers: int) -> list[int]:
    """`rate` split over `callers` as evenly as whole calls/s allow."""
    return [rate // callers + (n < rate % callers) for n in range(callers)]


def _rotated(recipients: Path, callers: int) -> list[Path]:
    """An injection file per caller, each starting further into `recipients` (written once).

    So that callers do not send to the same recipient at the same moment.
    """
    if callers == 1:
        return [recipients]
    name = f"{recipients.stem}-{{}}-of-{callers}.csv"
    paths = [recipients.with_name(name.format(n)) for n in range(callers)]
    if not all(path.exists() for path in paths):
        mode, *lines = recipients.read_text().splitlines(keepends=True)
        for n, path in enumerate(paths):
            start = n * len(lines) // callers
            path.write_text(mode + "".join(lines[start:] + lines[:start]))
    return paths


def climb(
    lab: Lab,
    kamailio: Kamailio,
    scenario: Scenario,
    recipients: Path,
    seconds: float,
    redis_port: int,
) -> ConfigResult:
    """The highest offered rate that completes >= 99.9 % of its calls, to within 5 %.

    A step that falls short is run once more and counts as sustained when the second run makes
    it: on two cores shared with sipp, one scheduling hiccup can cost a step a few calls (a
    configuration once "failed" with 99.89 %), for every configuration alike.
    """
    found = ConfigResult()
    ok, failed, rate = 0, 0, scenario.first_rate
    while True:
        for _ in range(2):
            step = measured_run(
                lab, kamailio, scenario, recipients, rate, seconds, (2.5, 3.5), redis_port
            )
            found.steps.append(step)
            print(
                f"    {rate:6d}/s: {step.success:.2%} completed,"
                f" {step.redis_per_call:.2f} Redis commands a call",
                flush=True,
            )
            if step.success >= SUCCESS:
                break
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


def start(lab: Lab, config: str, redis_port: int, device: tuple[str, int]) -> Kamailio:
    if config == "product":
        return start_product(lab, f"redis://127.0.0.1:{redis_port}/0")
    cfg = f"{config.removesuffix(TUNED)}.cfg"
    return start_native(lab, cfg, redis_port, tuned=config.endswith(TUNED))


def started_warm(
    lab: Lab, config: str, redis_port: int, device: tuple[str, int], draws: list[int], profiles: int
) -> Kamailio:
    """`config` started, its subscribers' devices registered, every recipient met (warm-up)."""
    kamailio = start(lab, config, redis_port, device)
    started = time.monotonic()
    registered = population.register(kamailio.address, range(profiles), device)
    print(f"  {registered} devices registered in {time.monotonic() - started:.1f} s")
    # Steady state: every worker has met the recipients (the product's caches are warm), as
    # after the first minutes of a proxy in service. Same traffic for every configuration.
    started = time.monotonic()
    device_process, _ = uas(lab, SCENARIOS["message"].uas, *device)
    warm_up(lab, kamailio.address, draws, SCENARIOS["message"].uac)
    device_process.stop()
    print(f"  warmed up in {time.monotonic() - started:.0f} s", flush=True)
    return kamailio


def bench_config(
    lab: Lab,
    config: str,
    redis_port: int,
    recipients: Path,
    draws: list[int],
    options: argparse.Namespace,
    common: dict[str, int],
) -> dict[str, ConfigResult]:
    """Every scenario through one configuration; sets the common rates when first called."""
    device = (UAS_HOST, free_port(UAS_HOST))
    kamailio = started_warm(lab, config, redis_port, device, draws, options.profiles)
    results = {}
    for name, scenario in SCENARIOS.items():
        print(f"  {config} {name}", flush=True)
        device_process, _ = uas(lab, scenario.uas, *device)
        # Every recipient meets this scenario's request once before its ladder, as a proxy in
        # service has met them before: the product remembers a chat set-up's delivery as it
        # does a MESSAGE's. Same traffic for every configuration.
        warm_up(lab, kamailio.address, draws, scenario.uac, passes=1, rate=scenario.warm_rate)
        result = climb(lab, kamailio, scenario, recipients, options.step_seconds, redis_port)
        rate = common.setdefault(name, max(result.max_rate // 2 // 100 * 100, 100))
        window = (1.0, options.step_seconds - 1.0)
        result.common = measured_run(
            lab, kamailio, scenario, recipients, rate, options.step_seconds, window, redis_port
        )
        print(f"    common {rate}/s: {result.common.latency}", flush=True)
        device_process.stop()
        results[name] = result
    kamailio.process.stop()
    return results


def memory(lab: Lab, options: argparse.Namespace) -> dict[str, object]:
    """The product's worker memory under traffic spread evenly over many profiles."""
    count, rate, seconds = options.memory_profiles, options.memory_rate, options.memory_seconds
    server = lab.redis()
    store = ProfileStore(connect(server.url, 10.0))
    took = population.load(store, redis.Redis(port=server.port), range(count), native=False)
    print(f"  {count} profiles loaded in {took:.0f} s", flush=True)
    kamailio = start_product(lab, server.url)
    rng = random.Random(7)
    draws = (rng.randrange(count) for _ in range(int(rate * seconds) + 1000))
    recipients = population.injection_file(lab.dir / "uniform.csv", draws)
    pids = kamailio.processes()
    run = Uac(lab, "uac-message-any.xml", kamailio.address, recipients, rate, seconds)
    samples = []
    started = time.monotonic()
    while run.process.alive():
        samples.append((time.monotonic() - started, {pid: usage(pid) for pid in pids}))
        time.sleep(5)
    result = run.wait()
    first, last = samples[0][1], samples[-1][1]
    workers = sorted(pids, key=lambda p: last[p].cpu_ns - first[p].cpu_ns, reverse=True)[:2]
    kamailio.process.stop()
    return {
        "profiles": count,
        "load_seconds": round(took, 1),
        "rate": rate,
        "calls": result.calls,
        "answered": result.successful,
        "cache_entries": load_settings({}).cache_entries,
        "samples": [
            {
                "t": round(at, 1),
                "private_mb": [round(u[p].anon_kb / 1024, 1) for p in workers],
                "rss_mb": [round(u[p].rss_kb / 1024, 1) for p in workers],
            }
            for at, u in samples
        ],
    }


def _json(value: object) -> object:
    """Dataclasses as dictionaries, with the success ratio of each measurement spelled out."""
    if isinstance(value, Measurement):
        return {**asdict(value), "success": round(value.success, 5)}
    if isinstance(value, ConfigResult):
        return {
            "max_rate": value.max_rate,
            "steps": [_json(s) for s in value.steps],
            "common": _json(value.common),
        }
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--skew", type=float, default=1.0, help="Zipf exponent of recipients")
    parser.add_argument("--step-seconds", type=float, default=8.0)
    parser.add_argument("--memory-profiles", type=int, default=1_000_000, help="0: skip")
    parser.add_argument("--memory-rate", type=int, default=2500)
    parser.add_argument("--memory-seconds", type=float, default=75.0)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated; '': none")
    options = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, object] = {
        "stamp": stamp,
        "options": vars(options),
        "machine": {
            "kernel": platform.release(),
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
        },
    }
    started = time.monotonic()
    with Lab() as lab:
        server = lab.redis()
        store = ProfileStore(connect(server.url, 10.0))
        took = population.load(store, redis.Redis(port=server.port), range(options.profiles))
        print(f"{options.profiles} profiles loaded in {took:.1f} s", flush=True)
        draws = population.zipf_recipients(options.profiles, 300_000, options.skew)
        recipients = population.injection_file(lab.dir / "zipf.csv", draws)
        common: dict[str, int] = {}
        configs = {}
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"throughput-{stamp}.json"
        for config in filter(None, options.configs.split(",")):
            configs[config] = bench_config(
                lab, config, server.port, recipients, draws, options, common
            )
            results["configs"] = _json(configs)
            results["common_rates"] = common
            path.write_text(json.dumps(results, indent=1))  # kept should a later step fail
        assert server.process is not None
        server.process.stop()  # the memory step has a Redis of its own
        if options.memory_profiles:
            print("memory with many profiles", flush=True)
            results["memory"] = memory(lab, options)
    results["seconds"] = round(time.monotonic() - started)
    path.write_text(json.dumps(results, indent=1))
    print(f"results: {path}")
    return path


if __name__ == "__main__":
    main()
