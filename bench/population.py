"""The subscribers of a benchmark: profiles in Redis, registered devices, who gets messages.

Subscriber i is `sip:u<i>@ims.example.net` (alias `tel:+1800<i>`). Every fifth is IM-only (the
proxy rewrites the CPM tag to IM for it), the others CPM: both deliver to one device each, the
recipients' UAS, registered with the matching feature tag. Subscribers from SMS_ONLY on take SMS
only: their CPM messages go to the IP-SM-GW (the outage and soak runs). Recipients are drawn
from a Zipf-like distribution (rank k has weight 1/k^s), the skew real messaging traffic has.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterable, Iterator
from itertools import accumulate, islice
from pathlib import Path

import redis

from cpmiw.core.profile import Profile
from cpmiw.core.services import Family
from cpmiw.store.profiles import ProfileStore

DOMAIN = "ims.example.net"
NATIVE_KEY = "bench:"  # bench:<user> = cpm | im, for the native ndb_redis configuration
ICSI = "urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm."
DEVICE_TAGS = {
    "cpm": f'+g.3gpp.icsi-ref="{ICSI}msg,{ICSI}session"',
    "im": "+g.oma.sip-im",
    "sms": "+g.3gpp.smsip",
}
SMS_ONLY = 5_000_000


def user(index: int) -> str:
    return f"u{index:07d}"


def kind(index: int) -> str:
    if index >= SMS_ONLY:
        return "sms"
    return "im" if index % 5 == 0 else "cpm"


def profile(index: int) -> Profile:
    return Profile(
        identities=[f"sip:{user(index)}@{DOMAIN}", f"tel:+1800{index:07d}"],
        services=[Family(kind(index))],
    )


def _batches(indices: Iterable[int], size: int) -> Iterator[list[int]]:
    iterator = iter(indices)
    while batch := list(islice(iterator, size)):
        yield batch


def load(
    store: ProfileStore, client: redis.Redis, indices: Iterable[int], *, native: bool = True
) -> float:
    """Stores profiles through ProfileStore.put (and the native keys); seconds taken."""
    started = time.monotonic()
    for batch in _batches(indices, 1000):
        store.put([profile(i) for i in batch])
        if native:
            client.mset({NATIVE_KEY + user(i): kind(i) for i in batch})
    return time.monotonic() - started


def zipf_recipients(count: int, draws: int, skew: float, seed: int = 5) -> list[int]:
    """`draws` subscriber indices, rank k drawn with weight 1/k^skew; ranks shuffled over ids."""
    rng = random.Random(seed)
    weights = list(accumulate(1 / (rank**skew) for rank in range(1, count + 1)))
    ids = list(range(count))
    rng.shuffle(ids)  # the most popular subscriber is not u0000000
    return [ids[rank] for rank in rng.choices(range(count), cum_weights=weights, k=draws)]


def injection_file(path: Path, indices: Iterable[int]) -> Path:
    """A sipp injection file (-inf): one recipient user part a line, read in order."""
    with path.open("w") as out:
        out.write("SEQUENTIAL\n")
        out.writelines(f"{user(i)};\n" for i in indices)
    return path


def register(
    proxy: tuple[str, int], indices: Iterable[int], device: tuple[str, int], window: int = 200
) -> int:
    """REGISTERs one device per subscriber (contact at `device`); returns how many got 200.

    Keeps `window` requests in flight and sends again what is not answered within a second
    (three tries): a few hundred thousand registrations take seconds, not minutes.
    """
    pending = list(indices)
    done: set[int] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(1.0)
        port = sock.getsockname()[1]
        for _ in range(3):
            queue = [i for i in pending if i not in done]
            in_flight = 0
            for i in queue:
                sock.sendto(_register(i, port, device), proxy)
                in_flight += 1
                while in_flight >= window:
                    in_flight -= _collect(sock, done)
            deadline = time.monotonic() + 2.0
            while in_flight > 0 and time.monotonic() < deadline:
                in_flight -= _collect(sock, done)
            if len(done) == len(pending):
                break
    return len(done)


def _collect(sock: socket.socket, done: set[int]) -> int:
    """Reads one response (0 on timeout); remembers the subscriber of a 200."""
    try:
        data = sock.recv(65535)
    except TimeoutError:
        return 1  # count it as gone: it is sent again on the next try
    if data.startswith(b"SIP/2.0 200"):
        start = data.find(b"Call-ID: reg-") + len(b"Call-ID: reg-")
        done.add(int(data[start : data.find(b"\r\n", start)]))
    return 1


def _register(index: int, port: int, device: tuple[str, int]) -> bytes:
    aor = f"sip:{user(index)}@{DOMAIN}"
    host, device_port = device
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKreg{index}x{time.monotonic_ns()}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <{aor}>;tag=r{index}\r\n"
        f"To: <{aor}>\r\n"
        f"Call-ID: reg-{index}\r\n"
        f"CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user(index)}@{host}:{device_port}>;{DEVICE_TAGS[kind(index)]}"
        f";expires=3600\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()
