"""Safe concurrent writes and the audit trail, through the `cpmiw` tool and a real Redis.

Two installed `cpmiw` processes import overlapping files at once: every identity they both claim
must end with exactly one owner that lists it. Every change records who (user and host), when,
with which command and why, and `cpmiw profile history` lists them, bounded.
"""

from __future__ import annotations

import getpass
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from conftest import DOMAIN, RedisServer
from cpmiw.core.identity import canonical
from cpmiw.ops.cli import main
from cpmiw.store.layout import PREFIX, history_key, identity_key, identity_of
from cpmiw.store.profiles import HISTORY_KEPT, HISTORY_TTL

CPMIW = Path(sys.executable).parent / "cpmiw"
BOB = f"sip:bob@{DOMAIN}"


@pytest.fixture
def url(redis_server: RedisServer) -> Iterator[str]:
    """A Redis database of these tests' own (index 5), empty around each test."""
    url = f"redis://127.0.0.1:{redis_server.port}/5"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


def cpmiw(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--redis-url", url, *args])
    return result.exit_code, result.stdout, result.stderr


def history(url: str, uri: str) -> list[dict[str, object]]:
    code, out, err = cpmiw(url, "profile", "history", uri, "-F", "json")
    assert code == 0, err
    entries: list[dict[str, object]] = json.loads(out)
    return entries


def test_every_change_records_who_when_what_and_why(url: str) -> None:
    started = time.time()
    assert cpmiw(url, "profile", "set", BOB, "--services", "im", "-r", "new customer")[0] == 0
    assert cpmiw(url, "profile", "alias", "add", BOB, "tel:+15551230002")[0] == 0
    code, _, err = cpmiw(url, "profile", "set", "tel:+15551230002", "--barred", "--reason", "fraud")
    assert code == 0, err
    entries = history(url, "tel:+1-555-123-0002")  # any alias finds the subscriber
    assert [(e["action"], e["fields"], e["reason"]) for e in entries] == [
        ("update", ["barred"], "fraud"),
        ("update", ["identities"], ""),
        ("create", [], "new customer"),
    ]
    for entry in entries:
        assert (entry["user"], entry["host"]) == (getpass.getuser(), socket.gethostname())
        at = time.mktime(time.strptime(str(entry["at"]), "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        assert started - 2 <= at <= time.time() + 2
    assert entries[0]["command"] == "cpmiw profile set tel:+15551230002"
    assert entries[1]["command"] == f"cpmiw profile alias add {BOB} tel:+15551230002"

    code, text, _ = cpmiw(url, "profile", "history", BOB)
    assert code == 0
    first = text.splitlines()[0]
    assert first.endswith(
        f" {getpass.getuser()}@{socket.gethostname()} update fields=barred"
        ' command="cpmiw profile set tel:+15551230002" reason="fraud"'
    )

    assert cpmiw(url, "profile", "delete", BOB, "-r", "contract ended")[0] == 0
    after = history(url, BOB)  # by the subscriber id, after the delete
    assert (after[0]["action"], after[0]["reason"]) == ("delete", "contract ended")
    assert len(after) == 4
    code, _, err = cpmiw(url, "profile", "history", "sip:nobody@ims.example.net")
    assert (code, err) == (3, "error: no profile for sip:nobody@ims.example.net\n")


def test_history_is_bounded(url: str, tmp_path: Path) -> None:
    """HISTORY_KEPT entries per subscriber; a deleted one's expire after HISTORY_TTL."""
    client = redis.Redis.from_url(url)
    assert cpmiw(url, "profile", "set", BOB, "--services", "im")[0] == 0
    for count in range(HISTORY_KEPT + 5):
        barred = "--barred" if count % 2 == 0 else "--not-barred"
        assert cpmiw(url, "profile", "set", BOB, barred, "-r", f"change {count}")[0] == 0
    entries = history(url, BOB)
    assert len(entries) == HISTORY_KEPT
    assert entries[0]["reason"] == f"change {HISTORY_KEPT + 4}"
    assert client.ttl(history_key(BOB)) == -1  # a live subscriber's history does not expire
    # a bulk import records one entry per subscriber it writes
    path = tmp_path / "more.csv"
    path.write_text(f"identities,services\n{BOB},cpm\nsip:carol@{DOMAIN},sms\n")
    assert cpmiw(url, "profile", "import", str(path), "-r", "migration")[0] == 0
    assert history(url, BOB)[0]["reason"] == "migration"
    assert history(url, f"sip:carol@{DOMAIN}")[0]["action"] == "create"
    assert cpmiw(url, "profile", "delete", BOB)[0] == 0
    assert HISTORY_TTL - 10 <= client.ttl(history_key(BOB)) <= HISTORY_TTL
    assert cpmiw(url, "profile", "set", BOB, "--services", "im")[0] == 0  # back again
    assert client.ttl(history_key(BOB)) == -1


def _subscribers_csv(path: Path, who: str, count: int) -> str:
    """`count` subscribers named after `who`, each claiming the shared number of its index."""
    rows = [f"sip:{who}{i}@{DOMAIN} tel:+1555{i:07d},im" for i in range(count)]
    path.write_text("identities,services\n" + "\n".join(rows) + "\n")
    return str(path)


def _misdirected(client: redis.Redis) -> list[str]:
    """Identities whose stored copy is of a subscriber that does not list them, or whose
    subscriber's other copies disagree with it."""
    keys = [key.decode() for key in client.scan_iter(f"{PREFIX}{{*}}:id:*", count=10_000)]
    copies = {
        identity_of(key): json.loads(raw or b"{}")["identities"]
        for key, raw in zip(keys, client.mget(keys), strict=True)
    }
    wrong = []
    for identity, identities in copies.items():
        canonicals = [canonical(uri) for uri in identities]
        disagree = any(copies.get(other) != identities for other in canonicals)
        if identity not in canonicals or disagree:
            wrong.append(identity)
    return wrong


def test_racing_imports_never_leave_an_alias_pointing_at_the_wrong_subscriber(
    url: str, tmp_path: Path
) -> None:
    """Both files claim the same numbers for different subscribers. Checked against the code
    before the fix (owners read outside the transaction): both imports succeeded and every
    shared number pointed at one subscriber while the other listed it too."""
    count = 6_000  # both processes read and compare at once, then write in batches
    files = [_subscribers_csv(tmp_path / f"{who}.csv", who, count) for who in ("alice", "bob")]
    client = redis.Redis.from_url(url)
    for _ in range(2):
        client.flushdb()
        racers = [
            subprocess.Popen(
                [str(CPMIW), "--redis-url", url, "profile", "import", path, "--batch", "500"],
                stderr=subprocess.PIPE,
                text=True,
            )
            for path in files
        ]
        outcomes = [
            (racer.wait(timeout=120), racer.stderr.read()) for racer in racers if racer.stderr
        ]
        codes = sorted(code for code, _ in outcomes)
        assert codes in ([0, 6], [6, 6]), outcomes  # someone lost each contested number
        for code, err in outcomes:
            if code == 6:
                assert "belongs to subscriber" in err.splitlines()[-1], err
        assert _misdirected(client) == []
        numbers = [identity_key(f"tel:+1555{i:07d}") for i in range(0, count, 997)]
        assert None not in client.mget(numbers)
