"""The chart and the README table of a throughput run (bench/run does this after each run).

    python -m bench.report [bench/results/throughput-<stamp>.json]

Writes bench/throughput.png and bench/throughput.json (the run's results) and replaces the
table between the markers in bench/README.md. Without an argument, the newest run is used.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # (after the backend is chosen)

BENCH = Path(__file__).resolve().parent
NAMES = {
    "native-relay": "a  native relay",
    "native-redis": "b  native ndb_redis",
    "native-relay-tuned": "a' native relay, tuned as c",
    "native-redis-tuned": "b' native ndb_redis, tuned as c",
    "product": "c  cpmiw",
}
ORDER = tuple(NAMES)  # the order of the table rows and the chart's lines
UNITS = {"message": "MESSAGE/s", "invite": "chat set-ups/s (INVITE+ACK+BYE)"}
BEGIN, END = "<!-- throughput:begin -->", "<!-- throughput:end -->"

RATIOS = (
    ("a", "native-relay", " (target 0.85)"),
    ("b", "native-redis", " (target 1.4)"),
    ("a'", "native-relay-tuned", ""),
    ("b'", "native-redis-tuned", ""),
)

Results = dict[str, Any]


def _best_per_rate(steps: list[Results]) -> list[Results]:
    """One point per offered rate, by increasing rate: the better run of a step run twice."""
    best: dict[int, Results] = {}
    for step in steps:
        if step["rate"] not in best or step["success"] > best[step["rate"]]["success"]:
            best[step["rate"]] = step
    return [best[rate] for rate in sorted(best)]


def _configs(results: Results) -> list[str]:
    return [config for config in ORDER if config in results["configs"]]


def chart(results: Results, path: Path) -> None:
    scenarios = list(results["configs"]["product"])
    figure, axes = plt.subplots(len(scenarios), 2, figsize=(12, 4.2 * len(scenarios)))
    for row, scenario in zip(axes, scenarios, strict=True):
        success, latency = row
        for config in _configs(results):
            steps = _best_per_rate(results["configs"][config][scenario]["steps"])
            rates = [s["rate"] for s in steps]
            success.plot(rates, [100 * s["success"] for s in steps], "o-", label=NAMES[config])
            line = latency.plot(rates, [s["latency"]["added"][1] for s in steps], "o-")[0]
            latency.plot(
                rates,
                [s["latency"]["added"][0] for s in steps],
                "o--",
                color=line.get_color(),
                alpha=0.5,
            )
            line.set_label(NAMES[config])
        success.axhline(99.9, color="grey", linestyle=":", linewidth=1)
        success.set_ylim(90, 100.5)
        success.set_title(f"{scenario}: calls completed")
        success.set_xlabel(f"offered {UNITS[scenario]}")
        success.set_ylabel("% completed in the run")
        latency.set_yscale("log")
        latency.set_title(f"{scenario}: latency the proxy adds (p99 solid, p50 dashed)")
        latency.set_xlabel(f"offered {UNITS[scenario]}")
        latency.set_ylabel("ms")
        success.legend()
        latency.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def table(results: Results) -> str:
    lines = []
    for scenario in results["configs"]["product"]:
        rows = {c: results["configs"][c][scenario] for c in _configs(results)}
        rate = results["common_rates"][scenario]
        lines += [
            f"**{scenario}** ({UNITS[scenario]}; latency, CPU and memory at {rate}/s, half the"
            " product's maximum)",
            "",
            "| configuration | max rate >= 99.9 % | round trip p50 / p99 | added by proxy"
            " p50 / p99 | Kamailio CPU per call | per worker: CPU, RSS, private |",
            "|---|---|---|---|---|---|",
        ]
        for config, row in rows.items():
            common = row["common"]
            lat = common["latency"]
            workers = ", ".join(
                f"{w['cpu_pct']:.0f} % {w['rss_mb']:.0f}/{w['private_mb']:.0f} MB"
                for w in common["workers"]
            )
            lines.append(
                f"| {NAMES[config]} | {row['max_rate']:,} | {lat['round_trip'][0]:.2f} /"
                f" {lat['round_trip'][1]:.2f} ms | {lat['added'][0]:.2f} /"
                f" {lat['added'][1]:.2f} ms | {common['cpu_us_per_call']:.0f} µs | {workers} |"
            )
        product = rows["product"]["max_rate"]
        ratios = [
            f"c/{letter} = {product / rows[config]['max_rate']:.2f}{target}"
            for letter, config, target in RATIOS
            if config in rows
        ]
        lines += ["", f"Ratios of maximum rates: {', '.join(ratios)}.", ""]
    memory = results.get("memory")
    if memory:
        first, last = memory["samples"][1], memory["samples"][-1]
        lines += [
            f"**Memory** with {memory['profiles']:,} profiles and recipients drawn uniformly:"
            f" {memory['calls']:,} MESSAGEs at {memory['rate']}/s, cache cap"
            f" {memory['cache_entries']:,} entries per worker. Private memory of the two"
            f" busiest workers: {first['private_mb']} MB after {first['t']:.0f} s,"
            f" {last['private_mb']} MB after {last['t']:.0f} s (samples every 5 s:"
            f" {', '.join(str(max(s['private_mb'])) for s in memory['samples'])} MB).",
            "",
        ]
    options = results["options"]
    lines.append(
        f"Run {results['stamp']}: {options['profiles']:,} profiles, Zipf exponent"
        f" {options['skew']}, {options['step_seconds']:.0f} s per step, {results['seconds']} s"
        f" in all, {results['machine']['cpus']} cores, kernel {results['machine']['kernel']}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    runs = sorted((BENCH / "results").glob("throughput-*.json"))
    source = Path(args[0]) if args else runs[-1]
    results: Results = json.loads(source.read_text())
    if "configs" not in results:  # a run of the memory step alone
        print(f"{source}: no throughput ladders to report")
        return
    if "product" not in results["configs"]:  # --configs without it: nothing to compare with
        print(f"{source}: no ladder of the product; the table compares every configuration to it")
        return
    chart(results, BENCH / "throughput.png")
    shutil.copyfile(source, BENCH / "throughput.json")
    readme = BENCH / "README.md"
    text = readme.read_text()
    before, _, rest = text.partition(BEGIN)
    _, _, after = rest.partition(END)
    readme.write_text(f"{before}{BEGIN}\n{table(results)}\n{END}{after}")
    print(f"bench/README.md, bench/throughput.png from {source}")


if __name__ == "__main__":
    main()
