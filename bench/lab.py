"""The benchmark's processes on loopback: redis-server, Kamailio (product or native cfg), sipp.

Everything a benchmark starts goes through a `Lab`, which stops it all on the way out, failures
included, and removes its scratch directory unless something failed (the logs are kept then).
Addresses: the proxy on 127.0.0.1, the recipients' UAS on 127.0.0.2, the IP-SM-GW on 127.0.0.4;
ports are chosen free at run time.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from bench import population
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import connect
from cpmiw.testing import free_port, wait_until
from cpmiw.testing.fuzz import processes

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
SCENARIOS = BENCH / "scenarios"
UAS_HOST = "127.0.0.2"
IP_SM_GW_HOST = "127.0.0.4"
# Steady state before measuring: every distinct recipient WARM_UP_PASSES times, at WARM_UP_RATE.
# A recipient lands on either UDP worker, so after three passes 1 in 8 (2^-3) is still new to one
# of the two; the product's per-worker caches are then as warm as after minutes in service.
WARM_UP_PASSES = 3
WARM_UP_RATE = 4000
SHM_MB = 2048  # ~12 KB per MESSAGE transaction for 5 s after its reply: ~100k in flight
WORKERS = 2


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stops a process started in its own session, with everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _exit_on_sigterm(number: int, _frame: object) -> None:
    raise SystemExit(128 + number)


class Lab:
    """A scratch directory and every process started in it; all stopped on exit."""

    def __init__(self, *, keep: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cpmiw-bench-"))
        self.keep = keep
        self._stack = ExitStack()

    def __enter__(self) -> Self:
        # A benchmark stopped with SIGTERM (kill, a CI timeout) stops what it started too.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()
        if kind is None and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"bench: logs kept in {self.dir}", file=sys.stderr)

    def spawn(self, args: list[str], log: str, env: dict[str, str] | None = None) -> Process:
        with (self.dir / log).open("ab") as out:
            process = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                cwd=self.dir,
            )
        handle = Process(process, self.dir / log)
        self._stack.callback(handle.stop)
        return handle

    def redis(self, *, persistent: bool = False) -> Redis:
        server = Redis(self, free_port(), persistent)
        server.start()
        return server

    def subscribers(self, count: int, skew: float = 1.0) -> tuple[Redis, list[int], Path]:
        """A Redis holding `count` subscribers (population.load), and Zipf-drawn recipients:
        the draws and the sipp injection file of them."""
        server = self.redis()
        store = ProfileStore(connect(server.url, 10.0))
        population.load(store, redis.Redis(port=server.port), range(count))
        draws = population.zipf_recipients(count, 300_000, skew)
        return server, draws, population.injection_file(self.dir / "zipf.csv", draws)


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        stop(self.popen)

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Redis:
    lab: Lab
    port: int
    persistent: bool  # append-only file: a restart keeps the profiles, as in production
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis  # noqa: PLC0415  (only the processes that talk to Redis need it)

        persistence = ["--appendonly", "yes"] if self.persistent else ["--appendonly", "no"]
        args = [
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
            *persistence, "--dir", str(self.lab.dir),
        ]  # fmt: skip
        self.process = self.lab.spawn(args, f"redis-{self.port}.log")
        client = redis.Redis(port=self.port, socket_timeout=1.0)

        def ready() -> bool:
            try:
                return bool(client.ping()) and client.info("persistence")["loading"] == 0
            except redis.RedisError:
                return False

        wait_until(ready, "redis-server", timeout=120)

    def kill(self) -> None:
        """Ends redis-server abruptly (SIGKILL), as a crash would."""
        assert self.process is not None
        stop(self.process.popen, signal.SIGKILL)


@dataclass
class Kamailio:
    name: str
    port: int
    process: Process
    metrics_port: int = 0
    host: str = "127.0.0.1"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def processes(self) -> list[int]:
        """The main process and its children (the SIP workers among them)."""
        return processes(self.process.pid)

    def cpu_ns(self) -> int:
        """CPU time its processes have used so far (ns), every process of it alike."""
        return sum(usage(pid).cpu_ns for pid in self.processes())


def _probe(address: tuple[str, int]) -> bool:
    """True once the proxy answers: a request with Max-Forwards 0 gets 483 in every config."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.3)
        port = sock.getsockname()[1]
        probe = (
            f"OPTIONS sip:probe@ims.example.net SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKprobe{time.monotonic_ns()}\r\n"
            f"Max-Forwards: 0\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\n"
            f"To: <sip:probe@ims.example.net>\r\nCall-ID: probe-{time.monotonic_ns()}\r\n"
            f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(probe.encode(), address)
        try:
            return sock.recv(65535).startswith(b"SIP/2.0 ")
        except TimeoutError:
            return False


def started(
    lab: Lab, name: str, port: int, process: Process, metrics: int = 0, host: str = "127.0.0.1"
) -> Kamailio:
    def ready() -> bool:
        if not process.alive():
            raise RuntimeError(f"{name} exited:\n{process.log.read_text()[-3000:]}")
        return _probe((host, port))

    wait_until(ready, name, timeout=60.0)  # locking 2 GB of shared memory takes a while
    return Kamailio(name, port, process, metrics, host)


def start_product(lab: Lab, redis_url: str, host: str = "127.0.0.1", **env: str) -> Kamailio:
    """Kamailio with the repo's kamailio.cfg and plugin, started as deploy/cpmiw-kamailio does,
    on `host` (a loopback address)."""
    port, metrics = free_port(host), free_port(host)
    full_env = {
        "HOME": os.environ.get("HOME", "/root"),
        "CPMIW_SIP_ADDR": host,
        "CPMIW_SIP_PORT": str(port),
        "CPMIW_WORKERS": str(WORKERS),
        "CPMIW_SHM_MB": str(SHM_MB),
        "CPMIW_METRICS_PORT": str(metrics),
        "CPMIW_METRICS_DIR": str(lab.dir / f"metrics-{port}"),
        "CPMIW_RPC_SOCKET": str(lab.dir / f"rpc-{port}.sock"),
        "CPMIW_DOMAINS": "ims.example.net",
        "CPMIW_REDIS_URL": redis_url,
        "CPMIW_VENV": str(REPO / ".venv"),
        # population.register() plays the registrar the devices registered through.
        "CPMIW_TRUSTED_REGISTRARS": "127.0.0.1",
        # Every caller is one sipp on 127.0.0.1: never blocked by the flood limit (pike counts
        # to 65,535 a second), still checked.
        "CPMIW_FLOOD_RATE": "65535",
        **env,
    }
    process = lab.spawn(
        [str(REPO / "deploy" / "cpmiw-kamailio")], f"kamailio-product-{host}-{port}.log", full_env
    )
    return started(lab, "product", port, process, metrics, host)


def start_native(lab: Lab, cfg: str, redis_port: int = 0, *, tuned: bool = False) -> Kamailio:
    """Kamailio with one of bench/native-*.cfg.

    `tuned`: as the product's launcher and kamailio.cfg run Kamailio (TLSF allocator, 4 MB UDP
    receive buffer, memory locked); otherwise with Kamailio's defaults (qm, 256 KB, unlocked), as
    operators run a native cfg.
    """
    port = free_port()
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "BENCH_SIP_PORT": str(port),
        "BENCH_WORKERS": str(WORKERS),
        "BENCH_REDIS_SERVER": f"name=profiles;addr=127.0.0.1;port={redis_port}",
    }
    args = ["kamailio", "-f", str(BENCH / cfg), "-DD", "-E", "-m", str(SHM_MB), "-M", "16"]
    args += ["-x", "tlsf", "-A", "TUNED"] if tuned else []
    process = lab.spawn(args, f"kamailio-{cfg}-{port}.log", env)
    return started(lab, cfg.removesuffix(".cfg"), port, process)


@dataclass
class SippResult:
    rate: int
    calls: int  # offered: rate x seconds
    successful: int
    failed: int
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)  # per scenario message (-trace_counts)
    failed_at: list[tuple[str, int]] = field(default_factory=list)  # (elapsed, calls failed)

    @property
    def success(self) -> float:
        return self.successful / self.calls if self.calls else 0.0


def uas(lab: Lab, scenario: str, host: str = UAS_HOST, port: int = 0) -> tuple[Process, int]:
    """A sipp UAS playing the recipients' devices (or an AS) with `scenario`."""
    port = port or free_port(host)
    args = ["sipp", "-sf", str(SCENARIOS / scenario), "-i", host, "-p", str(port), "-nostdin"]
    args += ["-buff_size", "4194304", "-max_recv_loops", "10000"]
    return lab.spawn(args, f"uas-{scenario}-{port}.log"), port


class Uac:
    """A sipp UAC offering `rate` calls/s for `seconds`, from the recipients file in order.

    A call gives up after 12 s without a final response: longer than the proxy's own 10 s
    (tm's fr_timer, then 408), so that every answer the proxy sends is counted.
    """

    def __init__(
        self,
        lab: Lab,
        scenario: str,
        proxy: tuple[str, int],
        recipients: Path,
        rate: int,
        seconds: float,
        *,
        tag: str = "",
        host: str = "127.0.0.1",
    ) -> None:
        """`host`: the caller's own address (an AS's, for requests coming from it)."""
        self.lab, self.scenario, self.rate = lab, scenario, rate
        self.calls = int(rate * seconds)
        name = f"uac-{scenario.removesuffix('.xml')}-{rate}{tag}-{time.monotonic_ns()}"
        self.stats = lab.dir / f"{name}.csv"
        self.port = free_port(host)  # its requests' source port
        args = [
            "sipp", f"{proxy[0]}:{proxy[1]}", "-sf", str(SCENARIOS / scenario),
            "-inf", str(recipients), "-i", host, "-p", str(self.port),
            "-r", str(rate), "-rp", "1000", "-m", str(self.calls),
            "-l", str(max(rate * 4, 1000)), "-nostdin", "-buff_size", "4194304",
            "-max_recv_loops", "10000", "-recv_timeout", "12000",
            "-timeout", str(int(seconds + 60)),
            "-trace_stat", "-stf", str(self.stats), "-fd", "1", "-trace_counts",
        ]  # fmt: skip
        self.started = time.monotonic()
        self.process = lab.spawn(args, f"{name}.log")

    def wait(self) -> SippResult:
        """Waits until every call ended (answered, failed or timed out); counts them."""
        self.process.popen.wait()
        took = time.monotonic() - self.started
        if not self.stats.exists():
            log = self.process.log.read_text()[-2000:]
            raise RuntimeError(f"sipp wrote no statistics:\n{log}")
        header, *rows, last = self.stats.read_text().splitlines()
        names = header.split(";")
        row = dict(zip(names, last.split(";"), strict=False))
        periods = [dict(zip(names, r.split(";"), strict=False)) for r in [*rows, last]]
        failed_at = [
            (p["ElapsedTime(C)"], int(p["FailedCall(P)"]))
            for p in periods
            if p.get("FailedCall(P)", "0").isdigit() and int(p["FailedCall(P)"])
        ]
        return SippResult(
            self.rate,
            self.calls,
            int(row["SuccessfulCall(C)"]),
            int(row["FailedCall(C)"]),
            took,
            _counts(self.lab.dir, self.scenario, self.process.pid),
            failed_at,
        )


def _counts(directory: Path, scenario: str, pid: int) -> dict[str, int]:
    """Messages received per scenario step, from sipp's -trace_counts file (last line)."""
    path = directory / f"{scenario.removesuffix('.xml')}_{pid}_counts.csv"
    if not path.exists():
        return {}
    header, *_, last = path.read_text().splitlines()
    return {
        name: int(value)
        for name, value in zip(header.split(";"), last.split(";"), strict=False)
        if value.isdigit()
    }


@dataclass(frozen=True)
class Usage:
    """CPU time (ns), run-queue time (ns) and memory (KB) of one process at one moment."""

    cpu_ns: int
    rss_kb: int
    anon_kb: int  # private memory: Python objects, pkg memory; not the shared SHM
    wait_ns: int  # runnable but waiting for a CPU, since the process started


def usage(pid: int) -> Usage:
    cpu, wait = (int(n) for n in Path(f"/proc/{pid}/schedstat").read_text().split()[:2])
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return Usage(cpu, int(status["VmRSS"].split()[0]), int(status["RssAnon"].split()[0]), wait)


def udp_receive_drops() -> int:
    """Datagrams the kernel dropped for want of receive buffer (all sockets, since boot)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    header, values = next(pair for pair in itertools.pairwise(lines) if pair[0][0] == "Udp:")
    return int(values[header.index("RcvbufErrors")])


def warm_up(
    lab: Lab,
    proxy: tuple[str, int],
    draws: list[int],
    scenario: str,
    passes: int = WARM_UP_PASSES,
    rate: int = WARM_UP_RATE,
) -> int:
    """Sends every distinct recipient of `draws` `passes` times through `proxy`; how many."""
    recipients = list(dict.fromkeys(draws)) * passes
    path = population.injection_file(lab.dir / "warm-up.csv", recipients)
    Uac(lab, scenario, proxy, path, rate, len(recipients) / rate).wait()
    return len(recipients)
