"""`bench/run steady`: the product at one fixed rate for a long while, CPU per MESSAGE per window.

What it looks for are waves: caches filled together that expire together, periodic refills, a
timer's storm. The product's set-up is the throughput run's (`--profiles` subscribers, each with
one registered device, Zipf-drawn recipients, warm); then pager MESSAGEs at `--rate` for
`--minutes`. Every `--window` seconds it reads the CPU of every Kamailio process
(`/proc/<pid>/schedstat`) and the requests the proxy routed (the metrics' `cpmiw_requests_total`),
and prints each window's Kamailio CPU per MESSAGE with its deviation from the median; the
target is every window within 15 %.
"""

from __future__ import annotations

import argparse
import statistics
import time
import urllib.request

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
        cpu, count = sum(usage(p).cpu_ns for p in pids), routed(kamailio.metrics_port)
        while run.process.alive() and len(windows) < seconds / options.window - 2:
            time.sleep(options.window)
            now_cpu, now_count = sum(usage(p).cpu_ns for p in pids), routed(kamailio.metrics_port)
            windows.append((now_cpu - cpu) / 1000 / max(now_count - count, 1))
            cpu, count = now_cpu, now_count
            print(f"  {len(windows) * options.window:5.0f} s: {windows[-1]:.1f} µs", flush=True)
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
