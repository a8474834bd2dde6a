"""`bench/run fuzz`: at least 20,000 mutated CPM / IM / SMS requests over UDP and TCP.

The product with 1,000 CPM and IM subscribers and 50 SMS-only ones, each with a registered
device, and 50 without one, in a real Redis; the devices, the IM AS and the IP-SM-GW answer
every request (cpmiw.testing.fuzz.Answerer). The corpus (cpmiw.testing.fuzz: mutations of
realistic requests; tests/corpus, the requests once found to break the proxy) is sent half over
UDP (sent again when unanswered, as a client does) and half over TCP.

Reported: the answers by status; requests left unanswered (must be 0); plugin tracebacks in
Kamailio's log (must be 0); whether Kamailio's processes are the same after the run. Printed
and written to bench/fuzz.json; the unanswered requests, if any, to the lab's directory (kept).
Exit status 1 when one of the three is not as it must be.
"""

from __future__ import annotations

import argparse
import json
import time

import redis

from bench import population
from bench.lab import BENCH, IP_SM_GW_HOST, REPO, UAS_HOST, Lab, start_product
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import connect
from cpmiw.testing.fuzz import (
    Answerer,
    Outcome,
    Target,
    corpus,
    describe,
    known_cases,
    processes,
    send,
    settled_processes,
    tracebacks,
)

SUBSCRIBERS = 1000
SMS = range(population.SMS_ONLY, population.SMS_ONLY + 50)
UNREGISTERED = range(SUBSCRIBERS, SUBSCRIBERS + 50)
IM_AS_HOST = "127.0.0.3"


def target(im_as: Answerer, gateway: Answerer) -> Target:
    def aors(indices: range | list[int]) -> list[str]:
        return [f"sip:{population.user(i)}@{population.DOMAIN}" for i in indices]

    registered = range(SUBSCRIBERS)
    return Target(
        population.DOMAIN,
        {
            "cpm": aors([i for i in registered if population.kind(i) == "cpm"]),
            "im": aors([i for i in registered if population.kind(i) == "im"]),
            "sms": aors(SMS),
            "unregistered": aors(UNREGISTERED),
        },
        [f"tel:+1800{i:07d}" for i in [*range(0, SUBSCRIBERS, 7), *SMS]],
        [im_as.uri, gateway.uri],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run fuzz", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with (
        Lab() as lab,
        Answerer(IM_AS_HOST) as im_as,
        Answerer(IP_SM_GW_HOST) as gateway,
        Answerer(UAS_HOST) as devices,
    ):
        server = lab.redis()
        store = ProfileStore(connect(server.url, 10.0))
        everyone = [*range(SUBSCRIBERS), *SMS, *UNREGISTERED]
        population.load(store, redis.Redis(port=server.port), everyone, native=False)
        kamailio = start_product(lab, server.url, CPMIW_IM_AS=im_as.uri, CPMIW_IP_SM_GW=gateway.uri)
        device = (devices.host, devices.port)
        registered = population.register(kamailio.address, [*range(SUBSCRIBERS), *SMS], device)
        assert registered == SUBSCRIBERS + len(SMS), f"{registered} registered"
        rig = target(im_as, gateway)
        known = known_cases(REPO / "tests" / "corpus", rig.recipients["cpm"][0])
        requests = known + corpus(args.requests, rig, args.seed)
        log_start = kamailio.process.log.stat().st_size
        before = settled_processes(kamailio.process.pid)
        started = time.monotonic()
        outcome = send(kamailio.address, requests, window=128)
        took = time.monotonic() - started
        log = kamailio.process.log.read_bytes()[log_start:].decode(errors="replace")
        same = processes(kamailio.process.pid) == before
        for number, (_, data) in enumerate(outcome.unanswered):
            (lab.dir / f"unanswered-{number}.sip").write_bytes(data)
        if outcome.unanswered or not same or tracebacks(log):
            lab.keep = True
    report(outcome, took, tracebacks(log), same, args)
    if outcome.unanswered or tracebacks(log) or not same:
        raise SystemExit(1)


def report(outcome: Outcome, took: float, found: int, same: bool, args: argparse.Namespace) -> None:
    summary = {
        "requests": sum(outcome.sent.values()),
        "seed": args.seed,
        "sent": dict(outcome.sent),
        "seconds": round(took, 1),
        "answers": {str(s): n for s, n in sorted(outcome.statuses.items())},
        "answers_by_mutation": {f"{m} {s}": n for (m, s), n in sorted(outcome.by_mutation.items())},
        "unanswered": len(outcome.unanswered),
        "retransmissions": outcome.retransmissions,
        "tracebacks": found,
        "kamailio_processes_unchanged": same,
    }
    (BENCH / "fuzz.json").write_text(json.dumps(summary, indent=1) + "\n")
    for line in describe(outcome):
        print(line)
    print(f"in {took:.1f} s; plugin tracebacks in the log: {found}")
    print(f"Kamailio processes unchanged: {same}")


if __name__ == "__main__":
    main()
