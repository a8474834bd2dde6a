"""`bench/run costs`: Kamailio CPU per request, the product against fair native baselines.

Every configuration runs Kamailio as the product does (TLSF, 4 MB receive buffer, locked memory,
2 UDP workers, the bench's shared memory) and does the same SIP work: the recipients' devices
registered, each request relayed statefully to the registrar's contact.

    a'  native relay      bench/native-relay.cfg: lookup("location"), t_relay(); no profile
    b'  native ndb_redis  bench/native-redis.cfg: one ndb_redis GET, subst_hf, lookup, t_relay()
    c   cpmiw             the product as shipped (metrics, registration-aware routing, change
                          watching, the decision log at its default)

`--stages` adds the product's route stopped early (bench/stages.py): a Python route that only
relays, and the same after reading the request as the plugin does.

All configurations are started and warmed up first (every distinct recipient three times with
MESSAGE, then once with the scenario's request), then
measured in `--rounds` interleaved rounds at one fixed `--rate` for `--seconds` each, so that the
machine's drift hits them alike. Kamailio CPU per request: the CPU of every Kamailio process over
a run, per completed call (`/proc/<pid>/schedstat`). Printed as Markdown with the ratios, and
with what each configuration costs idle (timers, watchers), measured once before the rounds: a
fixed cost every call shares, more of it the lower the rate.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench import population
from bench.lab import BENCH, UAS_HOST, Kamailio, Lab, start_native, start_product, uas, warm_up
from bench.throughput import SCENARIOS, measured_run
from cpmiw.testing import free_port

BASELINES = {"a' native relay": "native-relay.cfg", "b' native ndb_redis": "native-redis.cfg"}
PRODUCT = "c  cpmiw"
STAGES = {"python relay": "relay", "+ read request": "read"}
IDLE_SECONDS = 10.0
SETTLE_SECONDS = 6.0  # tm frees the warm-up's transactions 5 s after their answers


def _start(lab: Lab, name: str, redis_url: str, redis_port: int) -> Kamailio:
    if name in BASELINES:
        return start_native(lab, BASELINES[name], redis_port, tuned=True)
    if name in STAGES:
        script = str(BENCH / "stages.py")
        return start_product(lab, redis_url, CPMIW_KEMI_SCRIPT=script, BENCH_STAGE=STAGES[name])
    return start_product(lab, redis_url)


def _idle(started: list[Kamailio], seconds: float) -> list[float]:
    """Each Kamailio's CPU with no traffic, ms a second, over the same `seconds`."""
    time.sleep(SETTLE_SECONDS)
    before = [kamailio.cpu_ns() for kamailio in started]
    time.sleep(seconds)
    return [(k.cpu_ns() - was) / 1e6 / seconds for k, was in zip(started, before, strict=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run costs", description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="message")
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stages", action="store_true", help="add the product's early stops")
    options = parser.parse_args(argv)
    scenario = SCENARIOS[options.scenario]
    names = [*BASELINES, *(STAGES if options.stages else ()), PRODUCT]
    cpu: dict[str, list[float]] = {name: [] for name in names}
    success: dict[str, list[float]] = {name: [] for name in names}
    with Lab() as lab:
        server, draws, recipients = lab.subscribers(options.profiles)
        started = {}
        for name in names:
            device = (UAS_HOST, free_port(UAS_HOST))
            kamailio = _start(lab, name, server.url, server.port)
            population.register(kamailio.address, range(options.profiles), device)
            warming, _ = uas(lab, SCENARIOS["message"].uas, *device)
            warm_up(lab, kamailio.address, draws, SCENARIOS["message"].uac)
            warming.stop()
            device_process, _ = uas(lab, scenario.uas, *device)
            # And every recipient meets this scenario's request once, as bench/run does.
            warm_up(lab, kamailio.address, draws, scenario.uac, 1, scenario.warm_rate)
            started[name] = kamailio, device_process
            print(f"  {name}: started, {options.profiles:,} devices registered, warm", flush=True)
        idle = dict(zip(names, _idle([k for k, _ in started.values()], IDLE_SECONDS), strict=True))
        for round_ in range(1, options.rounds + 1):
            for name in names:
                kamailio, _ = started[name]
                run = measured_run(
                    lab,
                    kamailio,
                    scenario,
                    recipients,
                    options.rate,
                    options.seconds,
                    (2.5, 3.5),
                    server.port,
                )
                cpu[name].append(run.cpu_us_per_call)
                success[name].append(run.success)
                print(
                    f"  round {round_} {name}: {run.cpu_us_per_call:.0f} µs,"
                    f" {run.redis_per_call:.2f} Redis commands a call",
                    flush=True,
                )
        for kamailio, device_process in started.values():
            device_process.stop()
            kamailio.process.stop()
    median = {name: statistics.median(values) for name, values in cpu.items()}
    print(
        f"\n{options.scenario}, {options.rate}/s for {options.seconds:.0f} s, {options.rounds}"
        f" interleaved rounds, {options.profiles:,} profiles and registered devices\n"
    )
    print(
        "| configuration | Kamailio CPU per call, median (rounds) | completed, worst round"
        f" | idle: CPU a second (a call's share at {options.rate}/s) |"
    )
    print("|---|---|---|---|")
    for name in names:
        rounds = ", ".join(f"{value:.0f}" for value in cpu[name])
        share = idle[name] * 1000 / options.rate
        print(
            f"| {name} | {median[name]:.0f} µs ({rounds}) | {min(success[name]):.2%}"
            f" | {idle[name]:.1f} ms ({share:.1f} µs) |"
        )
    relay, ndb = (median[name] for name in BASELINES)
    print(
        f"\nc / a' = {median[PRODUCT] / relay:.2f} (target <= 1.25),"
        f" c / b' = {median[PRODUCT] / ndb:.2f} (target <= 0.7);"
        f" a' / b' = {relay / ndb:.2f}: c / b' at its floor (c does all a' does, and more)"
    )


if __name__ == "__main__":
    main()
