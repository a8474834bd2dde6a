"""Real processes for integration tests: a private redis-server and Kamailio with the repo's cfg.

Both listen on free loopback ports chosen at run time and are stopped when their fixture ends.
SIP peers (cpmiw.testing.sipnet) bind their own loopback addresses: the IM AS on 127.0.0.3, the
IP-SM-GW on 127.0.0.4, so that the proxy can tell them from other senders by address. Devices
register from 127.0.0.5, which the networks trust as a registrar (a P-CSCF that authenticated
them); tests/test_registration_trust.py starts proxies that authenticate devices themselves.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from cpmiw.core.message import SipMessage
from cpmiw.core.profile import Profile
from cpmiw.ops.rpc import KamailioRpc
from cpmiw.store.changes import Changes
from cpmiw.store.guard import Guard
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.reader import Reader
from cpmiw.store.redis import Client, Connections, connect
from cpmiw.testing import free_port, wait_until
from cpmiw.testing.sipnet import Peer

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "deploy" / "cpmiw-kamailio"
DOMAIN = "ims.example.net"
TRUSTED_REGISTRAR = "127.0.0.5"  # where test devices register from (see above)
# Headers of a CPM pager-mode MESSAGE (the service that barring and profiles act on).
CPM_PAGER = [
    ("Accept-Contact", '*;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg"'),
    ("Content-Type", "text/plain"),
]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> None:
        self.process = _start_redis(self.port)

    def stop(self) -> None:
        _stop(self.process)


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = redis.Redis(port=port, socket_timeout=0.5)

    def ready() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_until(ready, "redis-server")
    return process


def start_redis() -> RedisServer:
    """A redis-server of its own on a free port, for tests that stop or wipe it; stop() it."""
    port = free_port()
    return RedisServer(port, _start_redis(port))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    port = free_port()
    server = RedisServer(port, _start_redis(port))
    yield server
    server.stop()


class CountingStore(ProfileStore):
    """The real store, counting what the cache asks of it: profile look-ups (through its
    readers) and stream reads. Counted on our side, so it also tells while Redis is down."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.client = client
        self.lookups = 0
        self.stream_reads = 0

    def reader(self, guard: Guard) -> Reader:
        store = self

        class CountingReader(Reader):
            def lookup(self, identity: str) -> Profile | None:
                store.lookups += 1
                return super().lookup(identity)

            def changes(self, cursor: str | None, limit: int = 1000) -> Changes:
                store.stream_reads += 1
                return super().changes(cursor, limit)

        return CountingReader(guard)


def make_guard(
    client: Client,
    *,
    timeout: float = 1.0,
    slow: float = 1.0,
    backoff: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> Guard:
    """A worker's guard (store/guard.py) on connections of its own to `client`'s Redis."""
    return Guard(Connections(client), timeout=timeout, slow=slow, backoff=backoff, clock=clock)


class ManualClock:
    """A clock that moves only when told to; starts at a power of two, so that sums of
    power-of-two steps stay exact."""

    START = 1024.0

    def __init__(self) -> None:
        self.now = self.START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store(redis_server: RedisServer) -> ProfileStore:
    return ProfileStore(connect(redis_server.url, timeout=1.0))


@dataclass
class Kamailio:
    """A running Kamailio with the repo's kamailio.cfg and plugin."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int = 0
    host: str = "127.0.0.1"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def rpc_socket(self) -> Path:
        return self.log_path.parent / f"rpc-{self.host}-{self.port}.sock"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        """The log's complete lines: the last one may be read while Kamailio is writing it."""
        return self._complete_log().split("\n")[:-1]

    def _complete_log(self) -> str:
        """The log up to its last line feed."""
        log = self.log()
        return log[: log.rfind("\n") + 1]

    # How long the log is waited for: a worker writes its decision line after relaying or
    # answering, and on a loaded machine it may wait for a CPU a while before it does.
    LOG_WAIT = 10.0

    def decision_lines(self, call_id: str, count: int = 1) -> list[str]:
        """The decision log lines of `call_id`, once at least `count` are written (or
        LOG_WAIT s)."""
        deadline = time.monotonic() + self.LOG_WAIT
        while True:
            lines = [line for line in self.log_lines() if f"cpmiw: call-id={call_id} " in line]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def wait_for_log(self, text: str) -> str:
        """The log's complete lines, once `text` appears in them (or after LOG_WAIT s)."""
        deadline = time.monotonic() + self.LOG_WAIT
        while text not in (log := self._complete_log()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return log

    def shared(self, name: str) -> object:
        """What the proxy holds in `$shv(name)` now, asked over its control socket."""
        with KamailioRpc(str(self.rpc_socket)) as rpc:
            found = rpc.call("pv.shvGet", name)
        return found.get("value") if isinstance(found, dict) else None

    def routed_by(self, call_ids: set[str]) -> dict[str, str]:
        """The process (pid) that routed each of the requests `call_ids`, once each has its
        decision line in the log."""
        routed: dict[str, str] = {}

        def logged() -> bool:
            for line in self.log_lines():
                match = _ROUTED_BY.match(line)
                if match and match[2] in call_ids:
                    routed[match[2]] = match[1]
            return routed.keys() == call_ids

        wait_until(logged, "the decision lines", timeout=self.LOG_WAIT)
        return routed


# A decision line: the pid of the process that wrote it, the request's Call-ID.
_ROUTED_BY = re.compile(r"^\s*\d+\((\d+)\) .*cpmiw: call-id=(\S+) ")


def start_kamailio(env: dict[str, str], log_dir: Path) -> Kamailio:
    """Kamailio on `CPMIW_SIP_ADDR` (127.0.0.1) and `CPMIW_SIP_PORT` (a free port) of `env`."""
    host = env.get("CPMIW_SIP_ADDR", "127.0.0.1")
    port = int(env.get("CPMIW_SIP_PORT") or free_port(host))
    metrics_port = int(env.get("CPMIW_METRICS_PORT") or free_port(host))
    log_path = log_dir / f"kamailio-{host}-{port}.log"
    full_env = {
        "CPMIW_SIP_ADDR": host,
        "CPMIW_SIP_PORT": str(port),
        "CPMIW_WORKERS": "2",
        "CPMIW_METRICS_PORT": str(metrics_port),
        "CPMIW_METRICS_DIR": str(log_dir / f"metrics-{host}-{port}"),
        "CPMIW_RPC_SOCKET": str(log_dir / f"rpc-{host}-{port}.sock"),
        "CPMIW_SHM_MB": "64",
        "CPMIW_DOMAINS": DOMAIN,
        "CPMIW_VENV": sys.prefix,
        "CPMIW_DECISION_LOG": "all",  # the tests read every decision from the log
        # The tests send from a few loopback addresses, in bursts: no source is ever blocked by
        # the flood limit (pike counts to 65,535 a second); its own tests set a low one.
        "CPMIW_FLOOD_RATE": "65535",
        # The suite shares two loaded cores: a Redis reply may wait for a CPU longer than the
        # defaults (10 ms a reply, 50 ms a request) without Redis being slow. The tests of a
        # failing Redis set their own.
        "CPMIW_REDIS_SLOW_MS": "100",
        "CPMIW_REDIS_TIMEOUT_MS": "250",
        "HOME": os.environ.get("HOME", "/root"),
        **env,
    }
    with log_path.open("ab") as log:  # a restarted proxy logs after its first life
        process = subprocess.Popen(
            [str(LAUNCHER)],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    kamailio = Kamailio(port, process, log_path, metrics_port, host)
    with Peer("127.0.0.1") as probe:

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"kamailio exited {process.returncode}:\n{kamailio.log()[-3000:]}"
                )
            probe.send(probe.request("OPTIONS", kamailio.uri), kamailio.address)
            try:
                probe.recv_response(timeout=0.2)
            except TimeoutError:
                return False
            return True

        # Its start loads Python and the plugin in every process: seconds on a loaded machine.
        wait_until(answers, "kamailio", timeout=30)
    return kamailio


@dataclass
class Network:
    """Kamailio plus the application servers it knows, as SIP peers."""

    kamailio: Kamailio
    im_as: Peer
    ip_sm_gw: Peer
    redis: RedisServer
    store: ProfileStore

    def provision(self, *profiles: Profile) -> None:
        self.store.put(profiles)


@pytest.fixture(scope="session")
def log_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cpmiw-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_network(
    redis_server: RedisServer, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[Network]:
    with Peer("127.0.0.3") as im_as, Peer("127.0.0.4") as ip_sm_gw:
        kamailio = start_kamailio(
            {
                "CPMIW_REDIS_URL": redis_server.url,
                "CPMIW_IM_AS": im_as.uri,
                "CPMIW_IP_SM_GW": ip_sm_gw.uri,
                "CPMIW_AS_TIMEOUT_MS": "500",
                "CPMIW_TRUSTED_REGISTRARS": TRUSTED_REGISTRAR,
                **(env or {}),
            },
            log_dir,
        )
        try:
            yield Network(
                kamailio,
                im_as,
                ip_sm_gw,
                redis_server,
                ProfileStore(connect(redis_server.url, 1.0)),
            )
        finally:
            _stop(kamailio.process)


@pytest.fixture(scope="session")
def network(redis_server: RedisServer, log_dir: Path) -> Iterator[Network]:
    yield from make_network(redis_server, log_dir)


def drain(*peers: Peer) -> None:
    """Forget anything left on the peers' sockets by an earlier test."""
    for peer in peers:
        while True:
            try:
                peer.recv(timeout=0.01)
            except TimeoutError:
                break


def ask_together(
    kamailio: Kamailio, requests: list[tuple[Peer, SipMessage]]
) -> list[tuple[SipMessage, float]]:
    """Sends the requests at once, one per peer, so that several workers are busy.

    Returns each final response with the seconds from its sending until it was read (read in
    order, so a later one may count time spent waiting for an earlier one: an upper bound).
    """
    sent = []
    for peer, request in requests:
        sent.append(time.monotonic())
        peer.send(request, kamailio.address)
    return [
        (peer.recv_response(), time.monotonic() - at)
        for (peer, _), at in zip(requests, sent, strict=True)
    ]


@pytest.fixture
def net(network: Network) -> Network:
    """The session's network with empty AS sockets."""
    drain(network.im_as, network.ip_sm_gw)
    return network


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of Kamailio's log to a failing integration test's report."""
    report: pytest.TestReport = yield
    funcargs = getattr(item, "funcargs", {})
    kamailio = next(
        (v.kamailio for v in funcargs.values() if isinstance(v, Network)),
        None,
    )
    if report.failed and kamailio is not None:
        report.sections.append(("kamailio log (tail)", kamailio.log()[-6000:]))
    return report
