"""`cpmiw credential ...` against a real Redis (its own database, index 4, emptied around each
test): what is stored, what is refused, and that no output ever holds a password or an HA1."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import Result
from test_cli import Cli

from conftest import DOMAIN, RedisServer
from cpmiw.store.credentials import credential_key
from cpmiw.store.profiles import ProfileStore
from cpmiw.testing import free_port, make_profile

BOB = f"sip:bob@{DOMAIN}"
CREDENTIALS = "cpmiw:2:{*}:credential:*"  # every credential key
PASSWORD = "correct horse battery"


@pytest.fixture
def cli(redis_server: RedisServer) -> Iterator[Cli]:
    url = f"redis://127.0.0.1:{redis_server.port}/4"
    client = redis.Redis.from_url(url)
    client.flushdb()
    ProfileStore(client).put(
        [
            make_profile("bob", "+15551230002", "im"),
            make_profile("carol", "+15551230003", "sms", identities=[
                f"sip:carol@{DOMAIN}", f"sip:carol.two@{DOMAIN}", "tel:+15551230003"
            ]),
        ]
    )  # fmt: skip
    yield Cli(url, client)
    client.flushdb()


def _stored(cli: Cli, identity: str = BOB) -> dict[str, str] | None:
    raw = cli.client.get(credential_key(identity))
    return None if raw is None else dict(json.loads(raw))


def _secrets(cli: Cli) -> list[str]:
    """Every password and HA1 the test used or Redis holds."""
    held = [value for key in cli.client.keys(CREDENTIALS) for value in _hashes(cli, key)]
    return [PASSWORD, "another password", *held]


def _hashes(cli: Cli, key: bytes | str) -> list[str]:
    record = json.loads(cli.client.get(key) or b"{}")
    return [record[name] for name in ("ha1_md5", "ha1_sha256") if record.get(name)]


def _quiet(cli: Cli, result: Result) -> Result:
    """`result`, once checked to show no secret (stdout and stderr) and no traceback."""
    shown = result.stdout + result.stderr
    for secret in _secrets(cli):
        assert secret not in shown
    assert "Traceback" not in shown
    return result


def test_set_stores_both_hashes_and_get_shows_no_secret(cli: Cli) -> None:
    done = _quiet(cli, cli.ok("credential", "set", "tel:+15551230002", "-p", "-", input=PASSWORD))
    assert f"set the credential of {BOB} (username bob)" in done.stderr
    record = _stored(cli)
    assert record is not None
    text = f"bob:{DOMAIN}:{PASSWORD}".encode()
    assert record == {
        "identity": BOB,
        "username": "bob",
        "realm": DOMAIN,
        "ha1_md5": hashlib.md5(text).hexdigest(),
        "ha1_sha256": hashlib.sha256(text).hexdigest(),
    }
    shown = _quiet(cli, cli.ok("-F", "json", "credential", "show", BOB))
    assert json.loads(shown.stdout) == {
        "identity": BOB,
        "username": "bob",
        "realm": DOMAIN,
        "algorithms": ["MD5", "SHA-256"],
    }
    assert "username: bob" in _quiet(cli, cli.ok("credential", "get", BOB)).stdout


def test_set_reads_the_first_line_of_a_file_and_takes_a_username(cli: Cli, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(f"{PASSWORD}\nnot this line\n")
    args = ("credential", "set", BOB, "-p", str(secret), "--username", "bob.private")
    _quiet(cli, cli.ok(*args))
    record = _stored(cli)
    assert record is not None
    expected = hashlib.md5(f"bob.private:{DOMAIN}:{PASSWORD}".encode()).hexdigest()
    assert (record["username"], record["ha1_md5"]) == ("bob.private", expected)


@pytest.mark.parametrize(
    ("args", "password", "status", "error"),
    [
        (("sip:nobody@ims.example.net",), PASSWORD, 3, "no profile for sip:nobody@ims.example.net"),
        ((BOB,), "short", 4, "8 to 256 characters"),
        ((BOB, "--username", 'a"b'), PASSWORD, 4, "quote"),
        (("not a uri",), PASSWORD, 4, "not a URI"),
    ],
)
def test_set_refuses(
    cli: Cli, args: tuple[str, ...], password: str, status: int, error: str
) -> None:
    result = _quiet(cli, cli("credential", "set", *args, input=password))
    assert result.exit_code == status
    assert result.stderr.startswith("error: ") and error in result.stderr
    assert result.stderr.count("\n") == 1
    assert cli.client.keys(CREDENTIALS) == []


def test_dry_run_stores_nothing(cli: Cli) -> None:
    assert "would set" in cli.ok("credential", "set", BOB, "-n", input=PASSWORD).stderr
    assert _stored(cli) is None


def test_rotate_replaces_an_existing_password_and_keeps_the_username(cli: Cli) -> None:
    missing = _quiet(cli, cli("credential", "rotate", BOB, input=PASSWORD))
    assert (missing.exit_code, missing.stderr) == (3, f"error: no credential for {BOB}\n")
    cli.ok("credential", "set", BOB, "--username", "bob.private", input=PASSWORD)
    before = _stored(cli)
    _quiet(cli, cli.ok("credential", "rotate", BOB, input="another password"))
    after = _stored(cli)
    assert before is not None and after is not None
    assert after["username"] == "bob.private"
    text = f"bob.private:{DOMAIN}:another password".encode()
    assert after["ha1_sha256"] == hashlib.sha256(text).hexdigest() != before["ha1_sha256"]


def test_remove_and_list(cli: Cli) -> None:
    cli.ok("credential", "set", BOB, input=PASSWORD)
    cli.ok("credential", "set", "sip:carol.two@ims.example.net", input=PASSWORD)  # -> carol
    assert cli.ok("credential", "ls").stdout.split() == [BOB, f"sip:carol@{DOMAIN}"]
    assert cli.ok("credential", "list", "-m", "sip:b*").stdout.split() == [BOB]
    assert f"removed the credential of {BOB}" in cli.ok("credential", "rm", BOB).stderr
    again = cli("credential", "remove", BOB)
    assert (again.exit_code, again.stderr) == (3, f"error: no credential for {BOB}\n")
    assert cli.ok("credential", "list").stdout.split() == [f"sip:carol@{DOMAIN}"]


def test_deleting_the_profile_removes_its_credential(cli: Cli) -> None:
    cli.ok("credential", "set", BOB, input=PASSWORD)
    cli.ok("profile", "delete", "tel:+15551230002")
    assert _stored(cli) is None


def test_a_credential_left_without_its_subscriber_can_be_removed(cli: Cli) -> None:
    cli.client.set(credential_key("sip:gone@ims.example.net"), b"{}")
    cli.ok("credential", "remove", "sip:gone@ims.example.net")
    assert cli.client.keys(CREDENTIALS) == []


def test_export_writes_a_private_file_import_reads_back(cli: Cli, tmp_path: Path) -> None:
    cli.ok("credential", "set", BOB, input=PASSWORD)
    cli.ok("credential", "set", f"sip:carol@{DOMAIN}", input="another password")
    saved = {key: cli.client.get(key) for key in cli.client.keys(CREDENTIALS)}
    out = tmp_path / "credentials.jsonl"
    done = _quiet(cli, cli.ok("credential", "export", "-o", str(out)))
    assert f"exported 2 credential(s) to {out}" in done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len(out.read_text().splitlines()) == 2
    refused = cli("credential", "export", "-o", str(out))  # never overwritten
    assert (refused.exit_code, refused.stderr) == (4, f"error: {out}: File exists\n")
    cli.client.delete(*saved)
    assert (
        "imported 2 credential(s)" in _quiet(cli, cli.ok("credential", "import", str(out))).stderr
    )
    assert {key: cli.client.get(key) for key in saved} == saved


def _line(identity: str, **change: str) -> str:
    text = f"{identity.partition(':')[2].partition('@')[0]}:{DOMAIN}:{PASSWORD}".encode()
    record = {
        "identity": identity,
        "username": identity.partition(":")[2].partition("@")[0],
        "realm": DOMAIN,
        "ha1_md5": hashlib.md5(text).hexdigest(),
        "ha1_sha256": hashlib.sha256(text).hexdigest(),
        **change,
    }
    return json.dumps(record)


@pytest.mark.parametrize(
    ("second", "status", "error"),
    [
        (_line(f"sip:carol@{DOMAIN}", ha1_md5="x" * 32), 4, "f:2: Expected `str` matching"),
        (_line(f"sip:carol@{DOMAIN}", realm="other.example.net"), 4, "f:2: "),
        (_line(BOB), 4, f"f:2: {BOB} again (first at f:1)"),
        ("{not json", 4, "f:2: not a JSON object"),
        (_line(f"sip:dave@{DOMAIN}"), 3, f"f:2: no subscriber has the identity sip:dave@{DOMAIN}"),
        (_line(f"sip:carol.two@{DOMAIN}"), 4, "is not the registration identity"),
    ],
)
def test_import_is_all_or_nothing(
    cli: Cli, tmp_path: Path, second: str, status: int, error: str
) -> None:
    path = tmp_path / "f"
    path.write_text(_line(BOB) + "\n" + second + "\n")
    result = _quiet(cli, cli("credential", "import", str(path)))
    assert result.exit_code == status
    assert result.stderr.startswith("error: ")
    assert error in result.stderr.replace(str(path), "f")
    assert cli.client.keys(CREDENTIALS) == []


def test_redis_down_is_one_line_and_exit_5() -> None:
    port = free_port()
    result = Cli(f"redis://127.0.0.1:{port}/0", redis.Redis(port=port))(
        "credential", "set", BOB, input=PASSWORD
    )
    assert result.exit_code == 5
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert PASSWORD not in result.stdout + result.stderr
