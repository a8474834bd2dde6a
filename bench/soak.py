"""`bench/run soak`: 1,000,000 MESSAGEs at a steady rate, one Redis restart, one AS flap.

The outage run's set-up (bench/outage.py), its caches warmed first (every distinct recipient
three times), for `--seconds` at `--rate` + `--sms-rate` (default 500 s at 1,800 + 200 = 2,000
MESSAGE/s): Redis is killed at 1/3 of the run and started again 5 s
later; the IP-SM-GW is killed at 2/3 and started again 10 s later. sipp counts every final
response; the workers' private memory is sampled every second. Written to bench/soak.json,
printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import cast

from bench.lab import BENCH, Lab, udp_receive_drops, warm_up
from bench.outage import build, run_phase


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run soak", description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1800, help="MESSAGE/s to CPM/IM recipients")
    parser.add_argument("--sms-rate", type=int, default=200, help="MESSAGE/s to SMS recipients")
    parser.add_argument("--seconds", type=int, default=500)
    parser.add_argument("--keep", action="store_true", help="keep the logs of the run")
    options = parser.parse_args(argv)
    third = options.seconds / 3
    drops = udp_receive_drops()
    with Lab(keep=options.keep) as lab:
        rig = build(lab, options.profiles, 2000)
        # Steady state: the workers' caches warm, so that their memory shows what the run adds.
        warm_up(lab, rig.kamailio.address, rig.draws, "uac-message-any.xml")
        phase = run_phase(
            rig,
            "soak",
            [(rig.cpm, options.rate), (rig.sms, options.sms_rate)],
            options.seconds,
            [
                (third, "redis-server killed", rig.redis.kill),
                (third + 5, "redis-server started", rig.redis.start),
                (2 * third, "IP-SM-GW killed", rig.ip_sm_gw.stop),
                (2 * third + 10, "IP-SM-GW started", rig.restart_ip_sm_gw),
            ],
            capture=False,
        )
    received: Counter[str] = Counter()
    for result in phase.results:
        received.update(
            {
                name.split("_")[1]: count
                for name, count in result.counts.items()
                if name.endswith("_Recv") and count
            }
        )
    sent = sum(r.counts.get("0_MESSAGE_Sent", 0) for r in phase.results)
    delivered = received.get("200", 0)
    rejected = sum(n for status, n in received.items() if status != "200")
    memory = [cast(list[float], s["private_mb"]) for s in phase.samples]
    report = {
        "command": "bench/run soak",
        "options": vars(options),
        "sent": sent,
        "delivered": delivered,
        "rejected": rejected,
        "unanswered": sent - delivered - rejected,
        "statuses": dict(received),
        "failed_calls": sum(r.failed for r in phase.results),
        "udp_receive_buffer_drops": udp_receive_drops() - drops,
        "sipp_counts": [r.counts for r in phase.results],
        "failed_at": [r.failed_at for r in phase.results],
        "events": phase.events,
        "worker_private_mb": {
            "start": memory[2] if len(memory) > 2 else None,
            "middle": memory[len(memory) // 2] if memory else None,
            "end": memory[-1] if memory else None,
            "max": max((max(m) for m in memory if m), default=None),
        },
        "tm_current_max": max(int(str(s["tm_current"])) for s in phase.samples),
        "samples": [{k: v for k, v in s.items() if k != "metrics"} for s in phase.samples],
    }
    (BENCH / "soak.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
