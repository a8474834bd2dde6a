"""`bench/run steady`: the product at one fixed rate for a long while, CPU per MESSAGE per window.

What it looks for are waves: caches filled together that expire together, periodic refills, a
timer's storm. The product's set-up is the throughput run's (`--profiles` subscribers, each with
one registered device, Zipf-drawn recipients, warm); then pager MESSAGEs at `--rate` for
`--minutes`. Every `--window` seconds it reads the CPU of every Kamailio process
(`/proc/<pid>/schedstat`) and the requests the proxy routed (the metrics' `cpmiw_requests_total`),
and prints each window's Kamailio CPU per MESSAGE with its deviation from the median; the
target is every window within 15 %. So that a drift can be told the proxy's or the machine's,
each window also shows the two busiest processes' part (the UDP workers) and the rest, how long
the workers waited for a CPU, how long any task on the machine did (CPU pressure), and the CPU
time the hypervisor took (steal).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import urllib.request
from pathlib import Path

from bench import population
from bench.lab import UAS_HOST, Lab, Uac, start_product, uas, usage, warm_up
from bench.throughput import SCENARIOS
from cpmiw.testing import free_port


def routed(metrics_port: int) -> float:
    """Every initial request the proxy has routed so far (the plugin's and replayed ones)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        lines = answer.read().decode().splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("cpmiw_requests_total{")
    )


def machine() -> tuple[float, float, float]:
    """The machine so far, in seconds: how long some task waited for a CPU (the kernel's CPU
    pressure, /proc/pressure/cpu), how long the hypervisor took the CPUs (steal, /proc/stat),
    and all CPU time. /proc/stat's busy time is not used: sampled at timer ticks, it misses
    most of a proxy's short bursts of work."""
    some = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0].rsplit("total=", 1)[1]
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return int(some) / 1e6, ticks[7] / hz, sum(ticks[:8]) / hz


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run steady", description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=10.0)
    options = parser.parse_args(argv)
    scenario = SCENARIOS["message"]
    with Lab() as lab:
        server, draws, recipients = lab.subscribers(options.profiles)
        device = (UAS_HOST, free_port(UAS_HOST))
        kamailio = start_product(lab, server.url)
        population.register(kamailio.address, range(options.profiles), device)
        device_process, _ = uas(lab, scenario.uas, *device)
        warm_up(lab, kamailio.address, draws, scenario.uac)
        seconds = options.minutes * 60
        run = Uac(lab, scenario.uac, kamailio.address, recipients, options.rate, seconds)
        pids = kamailio.processes()
        windows: list[float] = []
        time.sleep(options.window)  # sipp's start-up aside
        cpus = os.cpu_count() or 1
        before = {p: usage(p) for p in pids}
        count, host = routed(kamailio.metrics_port), machine()
        while run.process.alive() and len(windows) < seconds / options.window - 2:
            time.sleep(options.window)
            now = {p: usage(p) for p in pids}
            now_count, now_host = routed(kamailio.metrics_port), machine()
            routed_now = max(now_count - count, 1)
            spent = {p: now[p].cpu_ns - before[p].cpu_ns for p in pids}
            workers = sorted(pids, key=spent.__getitem__)[-2:]  # the two busiest
            by_workers = sum(spent[p] for p in workers)
            waited = sum(now[p].wait_ns - before[p].wait_ns for p in workers)
            pressed, stolen, total = (new - old for new, old in zip(now_host, host, strict=True))
            windows.append(sum(spent.values()) / 1000 / routed_now)
            print(
                f"  {len(windows) * options.window:5.0f} s: {windows[-1]:.1f} µs"
                f" (workers {by_workers / 1000 / routed_now:.1f}, others"
                f" {windows[-1] - by_workers / 1000 / routed_now:.1f}); workers waited for a CPU"
                f" {waited / 1e9 / (2 * options.window):.0%} of the time; on the machine some"
                f" task waited {pressed / options.window:.0%} of the time, the hypervisor took"
                f" {stolen / max(total, 1e-9):.1%} of {cpus} CPUs",
                flush=True,
            )
            before, count, host = now, now_count, now_host
        result = run.wait()
        device_process.stop()
        kamailio.process.stop()
    median = statistics.median(windows)
    worst = max(windows, key=lambda value: abs(value - median))
    within = sum(abs(value - median) <= 0.15 * median for value in windows)
    print(
        f"\n{options.rate} MESSAGE/s for {options.minutes:g} min, {options.profiles:,} profiles:"
        f" {len(windows)} windows of {options.window:g} s, median {median:.1f} µs per MESSAGE,"
        f" worst {worst:.1f} µs ({(worst - median) / median:+.0%}), {within} of {len(windows)}"
        f" within 15 %; {result.successful:,} of {result.calls:,} answered"
    )


if __name__ == "__main__":
    main()
