"""`bench/run costs`: where a MESSAGE's Kamailio CPU goes, stage by stage of the plugin's route.

The throughput run's set-up on a smaller population (`--profiles`, default 1,000: every cache
warm), pager MESSAGEs at one fixed `--rate` for `--seconds`, through:

    native relay    bench/native-relay.cfg tuned as the product (TLSF, receive buffer, mlock)
    python relay    the product's kamailio.cfg, a Python route that only relays (stages.py)
    + read request  the same after reading the request's facts as the plugin does
    product         the plugin as shipped

Kamailio CPU per MESSAGE is the CPU of every Kamailio process over the run, per completed call.
Printed as Markdown.
"""

from __future__ import annotations

import argparse

import redis

from bench import population
from bench.lab import BENCH, UAS_HOST, Lab, start_native, start_product, uas, warm_up
from bench.throughput import SCENARIOS, measured_run
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import connect
from cpmiw.testing import free_port

STAGES = {"python relay": "relay", "+ read request": "read", "product": "product"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run costs", description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=10.0)
    options = parser.parse_args(argv)
    scenario = SCENARIOS["message"]
    rows = []
    with Lab() as lab:
        server = lab.redis()
        store = ProfileStore(connect(server.url, 10.0))
        population.load(store, redis.Redis(port=server.port), range(options.profiles))
        draws = population.zipf_recipients(options.profiles, 300_000, 1.0)
        recipients = population.injection_file(lab.dir / "zipf.csv", draws)
        configurations = [("native relay", ""), *STAGES.items()]
        for name, stage in configurations:
            device = (UAS_HOST, free_port(UAS_HOST))
            if stage:
                kamailio = start_product(
                    lab, server.url, CPMIW_KEMI_SCRIPT=str(BENCH / "stages.py"), BENCH_STAGE=stage
                )
                population.register(kamailio.address, range(options.profiles), device)
            else:
                kamailio = start_native(lab, "native-relay.cfg", device, server.port, tuned=True)
            device_process, _ = uas(lab, scenario.uas, *device)
            warm_up(lab, kamailio.address, draws, scenario.uac)
            run = measured_run(
                lab, kamailio, scenario, recipients, options.rate, options.seconds, (2.5, 3.5)
            )
            rows.append((name, run.cpu_us_per_call, run.success))
            print(f"  {name}: {run.cpu_us_per_call} µs", flush=True)
            device_process.stop()
            kamailio.process.stop()
    print(
        f"\n{options.rate} MESSAGE/s for {options.seconds:.0f} s, {options.profiles:,} profiles\n"
    )
    print("| configuration | Kamailio CPU per MESSAGE | more than the line above | completed |")
    print("|---|---|---|---|")
    previous = None
    for name, cpu, success in rows:
        more = "" if previous is None else f"{cpu - previous:+.0f} µs"
        print(f"| {name} | {cpu:.0f} µs | {more} | {success:.2%} |")
        previous = cpu


if __name__ == "__main__":
    main()
