"""`bench/run failover`: beyond one box, measured. Real processes on loopback.

    sentinel       a master, its replica and three sentinels; the master SIGKILLed under load
    cluster        three masters with a replica each; one master SIGKILLed under load
    proxies        two proxies sharing registrations with DMQ; the one the caller uses SIGKILLed,
                   the caller moving to the other half a second later
    registrations  DMQ against usrloc in Redis (db_redis), with bench/native-shared.cfg: how soon
                   another proxy sees a registration, a restarted proxy's sync, the cost of a
                   look-up, and a look-up while Redis is down
    capacity       Redis memory per subscriber (one server, Cluster shards), the highest rate
                   two proxies sustain against one

The failover scenarios load the subscribers of the throughput run (bench/population.py) and
register a device for each through the proxy. A caller (cpmiw.testing.load: it retransmits as
a UDP client and can move to another proxy) offers MESSAGEs at a steady rate: 80 % to "hot"
recipients, looked up beforehand (cached in every worker), 20 % to "cold" ones, never looked
up before (each a look-up in Redis). Some cold recipients were written with the `cpmiw` tool
just before the kill. Per second: answers by status and the hot recipients' p50 / p99 answer
time; the time from the kill to full service (the last cold recipient not answered 200) and the
503s meanwhile. Printed as Markdown; each scenario's result replaces its earlier one in
bench/failover.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import population
from bench.capture import Capture, Transaction, percentiles, transactions
from bench.lab import (
    BENCH,
    REPO,
    UAS_HOST,
    Kamailio,
    Lab,
    Redis,
    Uac,
    start_product,
    started,
    uas,
)
from cpmiw.ops.rpc import KamailioRpc
from cpmiw.store.layout import identity_key
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import connect
from cpmiw.testing import free_port
from cpmiw.testing.sipnet import Peer
from cpmiw.testing.topology import start_cluster, start_sentinel

CPM = [
    ("Accept-Contact", '*;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg"'),
    ("P-Preferred-Service", "urn:urn-7:3gpp-service.ims.icsi.oma.cpm.msg"),
    ("Content-Type", "text/plain"),
]
HOT = 2000  # recipients looked up beforehand
CLI_WRITTEN = 200  # cold recipients written with the cpmiw tool just before the kill
PROXY_HOSTS = ("127.0.0.21", "127.0.0.22")
SECRET = "bench-secret-shared-by-the-proxies"
SUCCESS = 0.999  # a rate is sustained when this share of its calls completes


def aor(index: int) -> str:
    return f"sip:{population.user(index)}@{population.DOMAIN}"


@dataclass
class Rig:
    lab: Lab
    url: str
    device: tuple[str, int]
    hot: Path  # sipp injection file of the hot recipients
    cold: Path  # and of the cold ones, each once (a look-up in Redis each)
    hot_indices: list[int]
    cold_indices: list[int]


def _load_profiles(store: ProfileStore, indices: Sequence[int]) -> float:
    """Through ProfileStore.put in batches, the store marked ready with the last; seconds."""
    started_at = time.monotonic()
    for first in range(0, len(indices), 1000):
        batch = indices[first : first + 1000]
        store.put([population.profile(i) for i in batch], ready=first + 1000 >= len(indices))
    return time.monotonic() - started_at


def _cli_import(lab: Lab, url: str, indices: Sequence[int]) -> None:
    """Written with the installed `cpmiw` tool, as an operator does."""
    path = lab.dir / f"cli-{time.monotonic_ns()}.csv"
    rows = [" ".join(population.profile(i).identities) + f",{population.kind(i)}" for i in indices]
    path.write_text("identities,services\n" + "\n".join(rows) + "\n")
    subprocess.run(
        [str(REPO / ".venv" / "bin" / "cpmiw"), "profile", "import", str(path)],
        env={**os.environ, "CPMIW_REDIS_URL": url},
        check=True,
        capture_output=True,
    )


def _rig(lab: Lab, url: str, profiles: int, seconds: float, rate: int) -> Rig:
    took = _load_profiles(ProfileStore(connect(url, 10.0)), range(profiles))
    print(f"  {profiles:,} profiles loaded in {took:.1f} s", flush=True)
    device = (UAS_HOST, free_port(UAS_HOST))
    uas(lab, "uas-message.xml", *device)
    hot = list(dict.fromkeys(population.zipf_recipients(profiles, HOT * 4, 1.0)))[:HOT]
    taken = set(hot)
    cold = [i for i in range(profiles - 1, -1, -1) if i not in taken]
    cold = cold[: int(seconds * rate) + 1000]  # never one twice
    return Rig(
        lab,
        url,
        device,
        population.injection_file(lab.dir / "hot.csv", hot * 200),
        population.injection_file(lab.dir / "cold.csv", cold),
        hot,
        cold,
    )


def _register(proxy: Kamailio, rig: Rig, indices: Sequence[int]) -> None:
    started_at = time.monotonic()
    done = population.register(proxy.address, indices, rig.device)
    print(f"  {done:,} devices registered in {time.monotonic() - started_at:.1f} s", flush=True)


def _warm(lab: Lab, proxy: Kamailio, rig: Rig, passes: int = 8) -> None:
    """Each hot recipient `passes` times: cached in both workers but for a rare one."""
    warm = population.injection_file(lab.dir / "warm.csv", rig.hot_indices * passes)
    result = Uac(lab, "uac-message-any.xml", proxy.address, warm, 2000, HOT * passes / 2000)
    print(f"  warmed: {result.wait().successful:,} look-ups", flush=True)


@dataclass
class Run:
    calls: list[Transaction]  # from the captures at the proxies' ports
    hot_ports: set[int]  # the hot callers' source ports
    offered: int
    answered: int  # by the callers' count (sipp): final responses received
    kill_at: float  # kernel time of the kill
    events: list[tuple[float, str]]


def _under_load(
    lab: Lab,
    proxy: Kamailio,
    rig: Rig,
    rate: int,
    seconds: float,
    kill_at: float,
    kill: Callable[[], None],
    move_to: Kamailio | None = None,
) -> Run:
    """Hot and cold callers through `proxy`; `kill` after `kill_at` s. With `move_to`, the
    callers stop at the kill plus half a second (calls still at the dead proxy wait for their
    12 s timeout: unanswered) and new ones go on through `move_to`."""
    targets = [proxy, *([move_to] if move_to else [])]
    captures = [Capture(p.port, lab.dir / f"failover-{p.host}-{p.port}.pcap") for p in targets]
    first_part = kill_at + 0.5 if move_to else seconds
    callers = [
        Uac(lab, "uac-message-any.xml", proxy.address, rig.hot, rate * 4 // 5, first_part),
        Uac(lab, "uac-message-any.xml", proxy.address, rig.cold, rate // 5, first_part),
    ]
    time.sleep(kill_at)
    killed = time.time()
    kill()
    events = [(kill_at, "killed")]
    if move_to is not None:
        time.sleep(0.5)
        rest = seconds - first_part
        callers += [
            Uac(lab, "uac-message-any.xml", move_to.address, rig.hot, rate * 4 // 5, rest),
            Uac(lab, "uac-message-any.xml", move_to.address, rig.cold, rate // 5, rest),
        ]
        events.append((kill_at + 0.5, f"callers moved to {move_to.host}"))
    results = [caller.wait() for caller in callers]
    calls = []
    for capture, target in zip(captures, targets, strict=True):
        capture.stop()
        calls += transactions(capture.path, target.port, "MESSAGE")
        capture.path.unlink()
    return Run(
        sorted(calls, key=lambda c: c.started),
        {callers[0].port, *({callers[2].port} if move_to else set())},
        sum(r.calls for r in results),
        sum(r.successful for r in results),
        killed,
        events,
    )


def _summary(name: str, run: Run, extra: dict[str, object]) -> dict[str, object]:
    """The run second by second and its figures."""
    origin = run.calls[0].started if run.calls else run.kill_at
    hot = [c for c in run.calls if c.caller_port in run.hot_ports]
    cold = [c for c in run.calls if c.caller_port not in run.hot_ports]
    rows = []
    for second in range(int(max((c.started for c in run.calls), default=origin) - origin) + 1):
        in_hot = [c for c in hot if int(c.started - origin) == second]
        in_cold = [c for c in cold if int(c.started - origin) == second]
        rows.append(
            {
                "second": second,
                "hot": dict(Counter(c.status for c in in_hot)),
                "hot_ms": percentiles([c.round_trip for c in in_hot]) if in_hot else (0, 0),
                "cold": dict(Counter(c.status for c in in_cold)),
            }
        )
    not_ok = [c.started for c in run.calls if c.started >= run.kill_at and c.status != 200]
    return {
        "scenario": name,
        "offered": run.offered,
        "unanswered": run.offered - run.answered,
        "hot": dict(Counter(c.status for c in hot)),
        "cold": dict(Counter(c.status for c in cold)),
        "hot_slowest_ms": round(max((c.round_trip for c in hot), default=0) * 1000, 1),
        "full_service_after_s": round(max(not_ok) - run.kill_at, 2) if not_ok else 0.0,
        "503_after_kill": sum(1 for c in run.calls if c.started >= run.kill_at and c.status == 503),
        "kill_at_s": round(run.kill_at - origin, 2),
        "events": run.events,
        "seconds": rows,
        **extra,
    }


def _same_pid(proxy: Kamailio) -> bool:
    return proxy.process.alive()


def _cli_readable(url: str, indices: Sequence[int]) -> int:
    """How many of the profiles written with the tool the tool reads back after the kill."""
    store = ProfileStore(connect(url, 10.0))
    return sum(1 for i in indices if store.lookup(population.profile(i).subscriber) is not None)


# ---- Redis failovers -----------------------------------------------------------------------------


def sentinel(lab: Lab, options: argparse.Namespace) -> dict[str, object]:
    topology = start_sentinel(lab.dir, down_after_ms=options.down_after_ms)
    try:
        rig = _rig(lab, topology.url, options.profiles, options.seconds, options.rate)
        written = rig.cold_indices[:CLI_WRITTEN]
        proxy = start_product(lab, topology.url)
        _register(proxy, rig, range(options.profiles))
        _warm(lab, proxy, rig)
        _cli_import(lab, topology.url, written)
        kill = topology.master().kill
        run = _under_load(lab, proxy, rig, options.rate, options.seconds, options.kill_at, kill)
        extra = {
            "down_after_ms": options.down_after_ms,
            "kamailio_restarted": not _same_pid(proxy),
            "cli_written_readable_after": f"{_cli_readable(topology.url, written)}/{len(written)}",
        }
        return _summary("sentinel", run, extra)
    finally:
        topology.stop()


def cluster(lab: Lab, options: argparse.Namespace) -> dict[str, object]:
    topology = start_cluster(lab.dir, node_timeout_ms=options.down_after_ms)
    try:
        rig = _rig(lab, topology.url, options.profiles, options.seconds, options.rate)
        written = rig.cold_indices[:CLI_WRITTEN]
        per_shard = {m.address: m.client().dbsize() for m in topology.masters()}
        proxy = start_product(lab, topology.url)
        _register(proxy, rig, range(options.profiles))
        _warm(lab, proxy, rig)
        _cli_import(lab, topology.url, written)
        victim = topology.masters()[0]
        sample = rig.cold_indices[:2000]
        on_victim = sum(1 for i in sample if topology.owner(identity_key(aor(i))) is victim)
        kill = victim.kill
        run = _under_load(lab, proxy, rig, options.rate, options.seconds, options.kill_at, kill)
        extra = {
            "node_timeout_ms": options.down_after_ms,
            "keys_per_shard": per_shard,
            "cold_on_killed_shard": f"{on_victim}/{len(sample)}",
            "kamailio_restarted": not _same_pid(proxy),
            "cli_written_readable_after": f"{_cli_readable(topology.url, written)}/{len(written)}",
        }
        return _summary("cluster", run, extra)
    finally:
        topology.stop()


# ---- proxies ----------------------------------------------------------------------------------


def _pair_settings(**env: str) -> list[dict[str, str]]:
    """The settings of two proxies sharing registrations with DMQ (and `env`)."""
    dmq = [f"{host}:{free_port(host)}" for host in PROXY_HOSTS]
    return [
        {
            "CPMIW_PEERS": ",".join(peer for peer in dmq if peer != own),
            "CPMIW_DMQ_PORT": own.rpartition(":")[2],
            "CPMIW_SECRET": SECRET,
            **env,
        }
        for own in dmq
    ]


def _proxy_pair(lab: Lab, url: str, settings: list[dict[str, str]]) -> list[Kamailio]:
    return [
        start_product(lab, url, host, **env)
        for host, env in zip(PROXY_HOSTS, settings, strict=True)
    ]


def _contacts(proxy: Kamailio, lab: Lab) -> int:
    """Contacts in the proxy's usrloc (its statistic), -1 when it cannot say."""
    try:
        with KamailioRpc(str(lab.dir / f"rpc-{proxy.port}.sock")) as rpc:
            found = rpc.call("stats.get_statistics", "location_contacts")
    except (OSError, RuntimeError):
        return -1
    if not isinstance(found, list) or not found:
        return -1
    return int(str(found[0]).rpartition("=")[2].strip() or -1)


def _until_contacts(
    proxy: Kamailio, lab: Lab, count: int, timeout: float = 60.0
) -> dict[str, float]:
    """Seconds until the proxy holds `count` contacts (None if not within `timeout`), and how
    many it holds then."""
    started_at = time.monotonic()
    while (held := _contacts(proxy, lab)) < count and time.monotonic() - started_at < timeout:
        time.sleep(0.05)
    took = round(time.monotonic() - started_at, 2) if held >= count else None
    return {"seconds": took if took is not None else -1, "contacts": held, "of": count}


def proxies(lab: Lab, options: argparse.Namespace) -> dict[str, object]:
    server = lab.redis()
    rig = _rig(lab, server.url, options.profiles, options.seconds, options.rate)
    settings = _pair_settings()
    a, b = _proxy_pair(lab, server.url, settings)
    started_at = time.monotonic()
    _register(a, rig, range(options.profiles))
    registered = round(time.monotonic() - started_at, 2)
    contacts = _contacts(a, lab)
    replicated = _until_contacts(b, lab, contacts)
    _warm(lab, a, rig)
    _warm(lab, b, rig)

    def kill_a() -> None:
        os.killpg(a.process.pid, signal.SIGKILL)

    run = _under_load(
        lab, a, rig, options.rate, options.seconds, options.kill_at, kill_a, move_to=b
    )
    # A comes back empty and learns every registration from B.
    a.process.popen.wait()
    started_at = time.monotonic()
    again = start_product(lab, server.url, PROXY_HOSTS[0], **settings[0])
    up = round(time.monotonic() - started_at, 2)
    learnt = _until_contacts(again, lab, _contacts(b, lab))
    extra = {
        "contacts_on_a": contacts,
        "registered_through_a_s": registered,
        "on_b_after_the_last_register": replicated,
        "restarted_a_answers_after_s": up,
        "restarted_a_learnt_from_b": learnt,
    }
    return _summary("proxies", run, extra)


# ---- registrations: DMQ against db_redis ------------------------------------------------------


@contextmanager
def _natives(lab: Lab, mode: str, redis_port: int) -> Iterator[list[Kamailio]]:
    """Two bench/native-shared.cfg proxies sharing registrations by `mode` (dmq or db_redis)."""
    ports = [free_port(host) for host in PROXY_HOSTS]
    pair = []
    for n, host in enumerate(PROXY_HOSTS):
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "BENCH_ADDR": host,
            "BENCH_SIP_PORT": str(ports[n]),
            "BENCH_DMQ_SERVER": f"sip:{host}:{ports[n]}",
            "BENCH_DMQ_PEER": f"sip:{PROXY_HOSTS[1 - n]}:{ports[1 - n]}",
            "BENCH_DB_URL": f"redis://127.0.0.1:{redis_port}/0",
        }
        define = "WITH_DMQ" if mode == "dmq" else "WITH_DB_REDIS"
        args = ["kamailio", "-f", str(BENCH / "native-shared.cfg"), "-DD", "-E", "-m", "512"]
        args += ["-M", "16", "-x", "tlsf", "-A", define]
        process = lab.spawn(args, f"{mode}-{host}.log", env)
        pair.append(started(lab, f"native-{mode}", ports[n], process, 0, host))
    yield pair
    for proxy in pair:
        proxy.process.stop()


def _location_table(client: redis.Redis) -> None:
    """What db_redis needs of an empty Redis: the location table's version."""
    client.flushdb()
    client.hset("version:entry::location", mapping={"table_name": "location", "table_version": 9})


def registrations(lab: Lab, options: argparse.Namespace) -> dict[str, object]:
    server = lab.redis()
    client = redis.Redis(port=server.port)
    device = (UAS_HOST, free_port(UAS_HOST))
    uas(lab, "uas-message.xml", *device)
    draws = population.zipf_recipients(options.registrations, 200_000, 1.0)
    recipients = population.injection_file(lab.dir / "registered.csv", draws)
    results: dict[str, object] = {}
    for mode in ("dmq", "db_redis"):
        _location_table(client)
        with _natives(lab, mode, server.port) as (a, b):
            delays = _visibility(a, b, device)
            started_at = time.monotonic()
            population.register(a.address, range(options.registrations), device)
            registered = round(time.monotonic() - started_at, 2)
            cpu = _cpu_per_message(lab, b, recipients, options.native_rate)
            down = _while_redis_down(lab, b, recipients, server) if mode == "db_redis" else {}
            results[mode] = {
                "visible_on_b_ms_p50_p99_max": delays,
                "registered_s": registered,
                "b_cpu_us_per_message": cpu,
                "while_redis_down": down,
            }
    return {"scenario": "registrations", **results}


def _ms(values: Sequence[float], share: float) -> float:
    """The `share` quantile of `values` (s) in ms."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 2)


def _visibility(a: Kamailio, b: Kamailio, device: tuple[str, int], count: int = 200) -> list[float]:
    """For `count` new registrations through A: ms from A's 200 until B routes a MESSAGE to the
    device (p50, p99, max)."""
    delays = []
    with Peer() as caller:
        for n in range(count):
            index = 9_000_000 + n
            population.register(a.address, [index], device)
            registered = time.monotonic()
            while True:
                request = caller.request("MESSAGE", aor(index), headers=CPM)
                if caller.ask(request, b.address).status == 200:
                    break
                if time.monotonic() - registered > 5:
                    raise RuntimeError("a registration through A never reached B")
                time.sleep(0.0005)
            delays.append(time.monotonic() - registered)
    return [_ms(delays, 0.5), _ms(delays, 0.99), _ms(delays, 1.0)]


def _cpu_per_message(lab: Lab, proxy: Kamailio, recipients: Path, rate: int) -> float:
    """Kamailio CPU (µs) per MESSAGE relayed at `rate` for 10 s."""
    before = proxy.cpu_ns()
    result = Uac(lab, "uac-message.xml", proxy.address, recipients, rate, 10).wait()
    return round((proxy.cpu_ns() - before) / 1000 / max(result.successful, 1), 1)


def _while_redis_down(lab: Lab, proxy: Kamailio, recipients: Path, server: Redis) -> dict[str, int]:
    """What callers get while the Redis holding the registrations is down (db_redis)."""
    server.kill()
    result = Uac(lab, "uac-message-any.xml", proxy.address, recipients, 200, 3).wait()
    server.start()
    return {"offered": result.calls, **{k: v for k, v in result.counts.items() if v}}


# ---- capacity ---------------------------------------------------------------------------------


def capacity(lab: Lab, options: argparse.Namespace) -> dict[str, object]:
    server = lab.redis()
    client = redis.Redis(port=server.port)
    before = int(client.info("memory")["used_memory"])
    _load_profiles(ProfileStore(connect(server.url, 10.0)), range(options.profiles))
    after = int(client.info("memory")["used_memory"])
    device = (UAS_HOST, free_port(UAS_HOST))
    uas(lab, "uas-message.xml", *device)
    draws = population.zipf_recipients(options.profiles, 400_000, 1.0)
    recipients = population.injection_file(lab.dir / "recipients.csv", draws)
    found: dict[str, object] = {
        "redis_bytes_per_subscriber": round((after - before) / options.profiles)
    }
    setups: dict[str, Callable[[], list[Kamailio]]] = {
        "one_proxy": lambda: [start_product(lab, server.url)],
        "two_proxies": lambda: _proxy_pair(lab, server.url, _pair_settings()),
        # Every request a look-up in Redis: no cache, no remembered delivery.
        "one_proxy_every_request_a_lookup": lambda: [
            start_product(lab, server.url, CPMIW_CACHE_ENTRIES="0", CPMIW_MEMO_TTL="0")
        ],
    }
    for name, setup in setups.items():
        print(f"  {name}", flush=True)
        pair = setup()
        population.register(pair[0].address, range(options.profiles), device)
        for other in pair[1:]:
            _until_contacts(other, lab, _contacts(pair[0], lab))
        ladder = options.lookup_ladder if "lookup" in name else options.ladder
        found[name] = _ladder(lab, pair, recipients, ladder)
        for proxy in pair:
            proxy.process.stop()
    return {"scenario": "capacity", **found}


def _ladder(
    lab: Lab, proxies_: list[Kamailio], recipients: Path, rates: list[int]
) -> dict[str, object]:
    """Each total rate split over the proxies for 10 s; the share of calls completed."""
    steps = {}
    for rate in rates:
        runs = [
            Uac(lab, "uac-message.xml", proxy.address, recipients, rate // len(proxies_), 10)
            for proxy in proxies_
        ]
        results = [run.wait() for run in runs]
        done = sum(r.successful for r in results) / max(sum(r.calls for r in results), 1)
        steps[str(rate)] = round(done, 4)
        print(f"    {rate}/s: {done:.2%}", flush=True)
    best = max((int(r) for r, done in steps.items() if done >= SUCCESS), default=0)
    return {"completed_by_rate": steps, "highest_rate_99_9": best}


# ---- report -----------------------------------------------------------------------------------

_RUN_KEYS = {
    "scenario", "offered", "unanswered", "hot", "cold", "hot_slowest_ms", "full_service_after_s",
    "503_after_kill", "kill_at_s", "events", "seconds",
}  # fmt: skip


def markdown(report: dict[str, object]) -> str:
    lines = []
    results = report["results"]
    assert isinstance(results, list)
    for item in results:
        name = item["scenario"]
        others = {k: v for k, v in item.items() if k not in _RUN_KEYS}
        if "seconds" not in item:
            lines += [f"**{name}**: `{json.dumps(others)}`", ""]
            continue
        lines += [
            f"**{name}**: {item['offered']:,} MESSAGEs offered, {item['unanswered']} without a"
            f" final response; hot {item['hot']}, slowest hot answer {item['hot_slowest_ms']} ms;"
            f" cold {item['cold']}; full service {item['full_service_after_s']} s after the kill"
            f" ({item['503_after_kill']} x 503 meanwhile); killed {item['kill_at_s']} s into the"
            f" capture. Events: {item['events']}."
            f" Also: `{json.dumps(others)}`.",
            "",
            "| s | hot answers | hot p50 / p99 ms | cold answers |",
            "|---|---|---|---|",
        ]
        for row in item["seconds"]:
            lines.append(
                f"| {row['second']} | {row['hot']} | {row['hot_ms'][0]} / {row['hot_ms'][1]}"
                f" | {row['cold']} |"
            )
        lines.append("")
    return "\n".join(lines)


SCENARIOS: dict[str, Callable[[Lab, argparse.Namespace], dict[str, object]]] = {
    "sentinel": sentinel,
    "cluster": cluster,
    "proxies": proxies,
    "registrations": registrations,
    "capacity": capacity,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/run failover", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios, comma-separated")
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1000, help="MESSAGE/s during a failover")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--kill-at", type=float, default=5.0)
    parser.add_argument("--down-after-ms", type=int, default=1000,
                        help="sentinel down-after-milliseconds, cluster-node-timeout")  # fmt: skip
    parser.add_argument("--registrations", type=int, default=20_000)
    parser.add_argument("--native-rate", type=int, default=3000)
    parser.add_argument("--ladder", type=lambda t: [int(r) for r in t.split(",")],
                        default=[2000, 4000, 6000, 8000, 10000])  # fmt: skip
    parser.add_argument("--lookup-ladder", type=lambda t: [int(r) for r in t.split(",")],
                        default=[250, 500, 1000, 1500, 2000])  # fmt: skip
    options = parser.parse_args(argv)
    out = BENCH / "failover.json"
    report = json.loads(out.read_text()) if out.exists() else {"results": []}
    for name in options.only.split(","):
        print(name, flush=True)
        with Lab() as lab:  # each scenario alone: what one left running would skew the next
            found = SCENARIOS[name](lab, options)
        print(markdown({"results": [found]}), flush=True)
        # Each scenario replaces its own earlier result: scenarios can be run one at a time.
        report["results"] = [r for r in report["results"] if r["scenario"] != name] + [found]
        report[f"options_{name}"] = vars(options)
        out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
