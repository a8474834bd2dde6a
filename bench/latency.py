"""`bench/run latency`: what the tail of the latency the proxy adds is made of.

The throughput run's set-up (100,000 profiles, Zipf recipients, caches warm) at one rate per
scenario (default: the common rates of bench/throughput.json, half the product's maximum),
through the tuned native relay (a') and the product (c), each under three conditions:

    1 caller            as `bench/run` measures: one sipp UAC, which sends in bursts
    8 callers           the same rate from 8 sipp UACs, so that requests arrive spread out
    8 callers, RT       and Kamailio's processes and Redis at real-time priority (SCHED_RR), so
                        that a worker woken by a request runs at once, ahead of sipp

Per condition: the calls completed, requests per arrival burst, the added and round-trip
latency, how long the UDP workers waited for a CPU while runnable, Kamailio CPU per call.
Printed as Markdown; results in bench/results/latency-<stamp>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import asdict

from bench.lab import UAS_HOST, Lab, uas
from bench.throughput import (
    RESULTS,
    SCENARIOS,
    Measurement,
    measured_run,
    started_warm,
)
from cpmiw.testing import free_port

CONFIGS = {"a' native relay, tuned": "native-relay-tuned", "c cpmiw": "product"}
CALLERS = 8
CONDITIONS = (  # name, sipp callers, real-time priority
    ("1 caller", 1, False),
    (f"{CALLERS} callers", CALLERS, False),
    (f"{CALLERS} callers, RT", CALLERS, True),
)
REALTIME_PRIORITY = "10"


def schedule(pids: list[int], *, realtime: bool) -> None:
    """Every thread of `pids` to SCHED_RR (or back to the normal policy)."""
    policy = ["--rr", REALTIME_PRIORITY] if realtime else ["--other", "0"]
    for pid in pids:
        subprocess.run(["chrt", "--all-tasks", policy[0], "-p", policy[1], str(pid)], check=True)


def common_rates() -> dict[str, int]:
    """Half the product's maximum per scenario, from the last throughput run kept in git."""
    kept = json.loads((RESULTS.parent / "throughput.json").read_text())
    return {name: int(rate) for name, rate in kept["common_rates"].items()}


def row(config: str, condition: str, run: Measurement) -> str:
    lat = run.latency
    waiting = " / ".join(f"{worker.waiting_pct:.0f} %" for worker in run.workers)
    return (
        f"| {config} | {condition} | {run.success:.2%} | {lat.burst:.1f} "
        f"| {lat.added[0]:.2f} / {lat.added[1]:.2f} ms "
        f"| {lat.round_trip[0]:.2f} / {lat.round_trip[1]:.2f} ms | {waiting} "
        f"| {run.cpu_us_per_call:.0f} µs |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run latency", description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--rates", help="scenario=rate,... (default: bench/throughput.json's common rates)"
    )
    options = parser.parse_args(argv)
    rates = (
        {name: int(rate) for name, rate in (p.split("=") for p in options.rates.split(","))}
        if options.rates
        else common_rates()
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, object] = {"stamp": stamp, "options": vars(options), "rates": rates}
    tables: dict[str, list[str]] = {name: [] for name in rates}
    with Lab() as lab:
        server, draws, recipients = lab.subscribers(options.profiles)
        for label, config in CONFIGS.items():
            device = (UAS_HOST, free_port(UAS_HOST))
            kamailio = started_warm(lab, config, server.port, device, draws, options.profiles)
            assert server.process is not None
            proxy = [*kamailio.processes(), server.process.pid]
            for name, rate in rates.items():
                scenario = SCENARIOS[name]
                device_process, _ = uas(lab, scenario.uas, *device)
                for condition, callers, realtime in CONDITIONS:
                    schedule(proxy, realtime=realtime)
                    run = measured_run(
                        lab,
                        kamailio,
                        scenario,
                        recipients,
                        rate,
                        options.seconds,
                        (1.0, options.seconds - 1.0),
                        server.port,
                        callers,
                    )
                    results[f"{config} {name} {condition}"] = {
                        **asdict(run),
                        "success": run.success,
                    }
                    tables[name].append(row(label, condition, run))
                    print(f"  {tables[name][-1]}", flush=True)
                schedule(proxy, realtime=False)
                device_process.stop()
            kamailio.process.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"latency-{stamp}.json").write_text(json.dumps(results, indent=1))
    header = (
        "| configuration | load, scheduling | completed | requests per burst "
        "| added by proxy p50 / p99 | round trip p50 / p99 | UDP workers waiting for a CPU "
        "| Kamailio CPU per call |\n|---|---|---|---|---|---|---|---|"
    )
    for name, lines in tables.items():
        print(f"\n**{name}** at {rates[name]}/s ({options.seconds:.0f} s each)\n\n{header}")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
