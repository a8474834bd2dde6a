"""The `cpmiw` command line against a real Redis, and a live change through a running Kamailio.

Commands run in-process through click's runner (the real command code, real Redis), except the
bulk import, which runs the installed `cpmiw` script. Profile-management tests use a Redis
database of their own (index 3), emptied around each test, so that `list` and `export` see only
what the test wrote.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import msgspec
import pytest
import redis
import yaml
from click.testing import CliRunner, Result
from test_explain import route_through_proxy

from conftest import DOMAIN, Network, RedisServer
from cpmiw.core import profile as profile_model
from cpmiw.core.message import SipMessage
from cpmiw.ops.cli import main
from cpmiw.store.layout import PREFIX, identity_key
from cpmiw.store.redis import text
from cpmiw.testing import make_profile, wait_until
from cpmiw.testing.sipnet import Peer

BOB = f"sip:bob@{DOMAIN}"
BOB_JSON = {"identities": [BOB, "tel:+15551230002"], "services": ["im"]}
CPM_MSG = '*;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg"'


@dataclass
class Cli:
    """Runs `cpmiw` against one Redis database."""

    url: str
    client: redis.Redis

    def __call__(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        return CliRunner().invoke(
            main, list(args), input=input, env={"CPMIW_REDIS_URL": self.url, **(env or {})}
        )

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self(*args, input=input)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result

    def stored_keys(self) -> list[bytes]:
        keys = self.client.keys(f"{PREFIX}{{*}}:id:*")
        return sorted(key if isinstance(key, bytes) else key.encode() for key in keys)


@pytest.fixture
def cli(redis_server: RedisServer) -> Iterator[Cli]:
    url = f"redis://127.0.0.1:{redis_server.port}/3"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield Cli(url, client)
    client.flushdb()


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---- single profiles ---------------------------------------------------------------------------


def test_set_get_delete_round_trip(cli: Cli) -> None:
    created = cli.ok("profile", "set", BOB, "--services", "im,sms", "--interworking", "im_as")
    assert created.stdout == f"create {BOB}\n"
    assert created.stderr == "wrote 1 profile(s): 1 new, 0 changed, 0 unchanged\n"
    assert cli("profile", "show", "tel:+15551230002").exit_code == 3  # not one of its identities
    stored = json.loads(cli.ok("profile", "get", BOB).stdout)
    assert stored["services"] == ["im", "sms"] and stored["interworking"] == "im_as"
    assert cli.ok("profile", "rm", BOB).stderr == f"deleted {BOB} ({BOB})\n"
    gone = cli("profile", "get", BOB)
    assert (gone.exit_code, gone.stderr) == (3, f"error: no profile for {BOB}\n")
    assert cli.stored_keys() == []


def test_set_whole_profile_from_stdin_then_change_one_field(cli: Cli) -> None:
    cli.ok("profile", "set", "-f", "-", input=json.dumps(BOB_JSON))
    changed = cli.ok("profile", "set", "tel:+15551230002", "--barred")
    assert changed.stdout == f"update {BOB}\n    barred: false -> true\n"
    assert json.loads(cli.ok("profile", "get", "tel:+1-555-123-0002").stdout)["barred"] is True


@pytest.mark.parametrize(
    ("args", "stdin", "status", "error"),
    [
        (("profile", "get", "bob"), None, 4, "URI: not a URI: 'bob'"),
        (
            ("profile", "set", BOB, "--services", "im,fax"),
            None,
            4,
            f"{BOB}: services[1]: Invalid enum value 'fax'",
        ),
        (
            ("profile", "set", BOB, "--services", "im", "--im-as", "http://as"),
            None,
            4,
            f"{BOB}: im_as: not a SIP URI: 'http://as'",
        ),
        (
            ("profile", "set", "-f", "-"),
            json.dumps({**BOB_JSON, "colour": "red"}),
            4,
            "stdin: unknown field 'colour'",
        ),
        (("profile", "set", "-f", "-"), "{nope", 4, "stdin: not JSON: "),
        (
            ("profile", "set", "tel:+15551230009", "--services", "cpm"),
            None,
            4,
            "tel:+15551230009: identities: at least one SIP URI is needed to register with",
        ),
        (("profile", "set", BOB), None, 3, f"no profile for {BOB}; give --services to create one"),
        (("profile", "delete", BOB), None, 3, f"no profile for {BOB}"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(
    cli: Cli, args: tuple[str, ...], stdin: str | None, status: int, error: str
) -> None:
    result = cli(*args, input=stdin)
    assert result.exit_code == status
    assert result.stderr.startswith(f"error: {error}") and result.stderr.count("\n") == 1
    assert cli.stored_keys() == []


def test_unreachable_redis_is_exit_5_with_one_line(cli: Cli) -> None:
    result = cli("--redis-url", "redis://127.0.0.1:1/0", "profile", "get", BOB)
    assert result.exit_code == 5
    assert result.stderr.startswith("error: redis://127.0.0.1:1/0: ")
    assert result.stderr.count("\n") == 1


def test_settings_come_from_option_then_env_then_config_file(cli: Cli, tmp_path: Path) -> None:
    cli.ok("profile", "set", BOB, "--services", "im")
    config = write(tmp_path / "cpmiw.env", f'# as the unit reads it\nCPMIW_REDIS_URL="{cli.url}"\n')
    runner = CliRunner()
    from_file = runner.invoke(main, ["-c", config, "profile", "ls"], env={"CPMIW_REDIS_URL": None})
    assert (from_file.exit_code, from_file.stdout) == (0, f"{BOB}\n")
    dead = "redis://127.0.0.1:1/0"
    env_wins = runner.invoke(main, ["-c", config, "profile", "ls"], env={"CPMIW_REDIS_URL": dead})
    assert env_wins.exit_code == 5
    option_wins = runner.invoke(
        main, ["-c", config, "--redis-url", cli.url, "profile", "ls"], env={"CPMIW_REDIS_URL": dead}
    )
    assert option_wins.exit_code == 0
    broken = runner.invoke(
        main, ["-c", write(tmp_path / "bad.env", "no equals sign\n"), "profile", "ls"]
    )
    assert (broken.exit_code, broken.stderr) == (
        4,
        f"error: {tmp_path}/bad.env:1: expected KEY=VALUE, got 'no equals sign'\n",
    )


def test_schema_is_the_profile_model(cli: Cli) -> None:
    schema = json.loads(cli.ok("profile", "schema").stdout)
    assert schema == profile_model.json_schema()
    definition = schema["$defs"]["Profile"]
    assert set(definition["properties"]) == set(profile_model.Profile.__struct_fields__)
    assert definition["additionalProperties"] is False


# ---- aliases -------------------------------------------------------------------------------------


def test_alias_add_list_remove(cli: Cli) -> None:
    cli.ok("profile", "set", "-f", "-", input=json.dumps(BOB_JSON))
    cli.ok("profile", "alias", "add", BOB, "sip:robert@ims.example.net")
    assert cli.ok("profile", "alias", "ls", "sip:robert@IMS.example.net").stdout.split() == [
        BOB,
        "tel:+15551230002",
        "sip:robert@ims.example.net",
    ]
    cli.ok("profile", "alias", "rm", BOB, "sip:robert@ims.example.net", "tel:+1-555-123-0002")
    assert cli.ok("-F", "json", "profile", "alias", "list", BOB).stdout == f'[\n  "{BOB}"\n]\n'
    assert sorted(cli.stored_keys()) == [identity_key(BOB).encode()]


def test_alias_errors_write_nothing(cli: Cli) -> None:
    cli.ok("profile", "set", "-f", "-", input=json.dumps(BOB_JSON))
    cli.ok("profile", "set", f"sip:carol@{DOMAIN}", "--services", "sms")
    before = {key: cli.client.get(key) for key in cli.stored_keys()}
    taken = cli("profile", "alias", "add", f"sip:carol@{DOMAIN}", "tel:+15551230002")
    assert (taken.exit_code, taken.stderr) == (
        6,
        f"error: sip:carol@{DOMAIN}: identity tel:+15551230002 belongs to subscriber {BOB};"
        " remove it there first\n",
    )
    key = cli("profile", "alias", "remove", "tel:+15551230002", BOB)
    assert key.exit_code == 4 and "is the subscriber's key" in key.stderr
    # the error names the identity that is not there, even after one that is
    foreign = cli("profile", "alias", "remove", BOB, "tel:+15551230002", "tel:+15559999999")
    assert (foreign.exit_code, foreign.stderr) == (
        3,
        f"error: tel:+15559999999 is not an identity of {BOB}\n",
    )
    dry = cli.ok("profile", "alias", "add", "--dry-run", BOB, "tel:+15557777777")
    assert dry.stderr == "would write 1 profile(s): 0 new, 1 changed, 0 unchanged\n"
    assert {key: cli.client.get(key) for key in cli.stored_keys()} == before


# ---- files ---------------------------------------------------------------------------------------

CSV = (
    "identities,services,barred,interworking\n"
    f"sip:a@{DOMAIN} tel:+15550000101,cpm sms,false,\n"
    f"sip:b@{DOMAIN},im,no,im_as\n"
    "\n"
    f"sip:c@{DOMAIN},,true,\n"
)


def test_csv_import_then_list_get_and_diff(cli: Cli, tmp_path: Path) -> None:
    path = write(tmp_path / "subscribers.csv", CSV)
    imported = cli.ok("profile", "import", path)
    assert imported.stderr.endswith("wrote 3 profile(s): 3 new, 0 changed, 0 unchanged\n")
    assert cli.ok("profile", "list").stdout.split() == [f"sip:{u}@{DOMAIN}" for u in "abc"]
    assert (
        cli.ok("-F", "json", "profile", "ls", "-m", "sip:b*").stdout
        == f'[\n  "sip:b@{DOMAIN}"\n]\n'
    )
    b = json.loads(cli.ok("profile", "get", f"sip:b@{DOMAIN}").stdout)
    assert (b["services"], b["barred"], b["interworking"]) == (["im"], False, "im_as")
    assert cli.ok("profile", "diff", path).stdout == ""
    edited = CSV.replace(",im,no,", ",im sms,no,") + f"sip:d@{DOMAIN},cpm,,\n"
    diff = cli("profile", "diff", write(tmp_path / "edited.csv", edited))
    assert diff.exit_code == 1
    assert diff.stdout == (
        f'~ sip:b@{DOMAIN}\n    services: ["im"] -> ["im", "sms"]\n+ sip:d@{DOMAIN}\n'
    )
    again = cli.ok("profile", "import", str(tmp_path / "edited.csv"))
    assert again.stderr.endswith("wrote 2 profile(s): 1 new, 1 changed, 2 unchanged\n")


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        (
            "bad.csv",
            CSV + f"sip:e@{DOMAIN},cpm fax,,\n",
            "bad.csv:6: services[1]: Invalid enum value 'fax'",
        ),
        ("bad.csv", CSV.replace("interworking", "colour"), "bad.csv:1: unknown column 'colour'"),
        (
            "bad.csv",
            CSV + f"sip:e@{DOMAIN},cpm,maybe,\n",
            "bad.csv:6: barred: expected true or false",
        ),
        ("bad.csv", CSV + "e@example,cpm,,\n", "bad.csv:6: identities: not a URI: 'e@example'"),
        (
            "bad.json",
            json.dumps(
                [BOB_JSON, {"identities": ["sip:x@y.z"], "services": ["sms"], "im_as": "x"}],
                indent=1,
            ),
            "bad.json:11: profile 2: im_as: Expected `str` of length >= 5",
        ),
        (
            "bad.jsonl",
            json.dumps(BOB_JSON) + "\n\n" + json.dumps({"identities": [], "services": []}) + "\n",
            "bad.jsonl:3: identities: Expected `array` of length >= 1",
        ),
    ],
)
def test_a_bad_record_anywhere_means_nothing_is_written(
    cli: Cli, tmp_path: Path, name: str, text: str, error: str
) -> None:
    result = cli("profile", "import", write(tmp_path / name, text))
    assert result.exit_code == 4 and result.stderr.count("\n") <= 2  # progress label, error
    assert result.stderr.splitlines()[-1].startswith(f"error: {tmp_path}/{error}")
    assert cli.stored_keys() == []
    assert cli("profile", "validate", str(tmp_path / name)).exit_code == 4


def test_import_that_gives_an_identity_twice_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    twice = CSV + f"sip:e@{DOMAIN} tel:+15550000101,cpm,,\n"
    result = cli("profile", "import", write(tmp_path / "twice.csv", twice))
    assert result.exit_code == 6
    assert result.stderr.splitlines()[-1] == (
        f"error: {tmp_path}/twice.csv:6: identity tel:+15550000101 is already at"
        f" {tmp_path}/twice.csv:2"
    )
    assert cli.stored_keys() == []


def test_import_that_steals_an_identity_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    cli.ok("profile", "set", "-f", "-", input=json.dumps(BOB_JSON))
    before = cli.stored_keys()
    thief = CSV.replace("tel:+15550000101", "tel:+15551230002")
    result = cli("profile", "import", write(tmp_path / "thief.csv", thief))
    assert result.exit_code == 6
    assert result.stderr.splitlines()[-1] == (
        f"error: {tmp_path}/thief.csv:2: identity tel:+15551230002 belongs to subscriber {BOB};"
        " remove it there first"
    )
    assert cli.stored_keys() == before


def test_dry_runs_write_nothing(cli: Cli, tmp_path: Path) -> None:
    dry = cli.ok("profile", "import", "--dry-run", write(tmp_path / "s.csv", CSV))
    assert dry.stderr.endswith("would write 3 profile(s): 3 new, 0 changed, 0 unchanged\n")
    assert (
        cli.ok("profile", "set", "--dry-run", BOB, "--services", "im").stdout == f"create {BOB}\n"
    )
    assert cli.stored_keys() == []
    cli.ok("profile", "import", str(tmp_path / "s.csv"))
    assert cli.ok("profile", "rm", "-n", f"sip:a@{DOMAIN}").stderr.startswith("would delete")
    assert len(cli.stored_keys()) == 4  # a copy under each of the 4 identities of 3 profiles


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_export_reads_back_as_the_same_profiles(cli: Cli, tmp_path: Path, fmt: str) -> None:
    cli.ok("profile", "import", write(tmp_path / "s.csv", CSV))
    cli.ok(
        "profile",
        "set",
        "-f",
        "-",
        input=json.dumps({**BOB_JSON, "ip_sm_gw": "sip:gw.example.net"}),
    )
    exported = tmp_path / f"all.{fmt}"
    cli.ok("profile", "export", "-o", str(exported))
    stored = {key: cli.client.get(key) for key in cli.stored_keys()}
    cli.client.flushdb()
    assert cli.ok("profile", "import", str(exported)).stderr.endswith(
        " 4 new, 0 changed, 0 unchanged\n"
    )
    assert {key: cli.client.get(key) for key in cli.stored_keys()} == stored


def test_export_names_invalid_stored_profiles(cli: Cli) -> None:
    cli.ok("profile", "set", "-f", "-", input=json.dumps(BOB_JSON))
    cli.client.set(identity_key(f"sip:broken@{DOMAIN}"), b'{"services": ["fax"]}')
    result = cli("profile", "export")
    assert result.exit_code == 4
    assert result.stderr.startswith(f"error: stored profile of sip:broken@{DOMAIN} is invalid: ")
    assert [p["identities"][0] for p in json.loads(result.stdout)] == [BOB]


def test_validate_needs_no_redis(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "--redis-url",
        "redis://127.0.0.1:1/0",
        "profile",
        "validate",
        write(tmp_path / "s.csv", CSV),
    )
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (
        0,
        f"3 valid profile(s) in {tmp_path}/s.csv",
    )


BULK = 100_000
BULK_BOUND = 45.0  # seconds; README, "Operations": 100,000 subscribers in well under a minute


def test_bulk_csv_import_of_100k_subscribers(redis_server: RedisServer, tmp_path: Path) -> None:
    """The installed `cpmiw` script, one transaction, every subscriber readable afterwards."""
    url = f"redis://127.0.0.1:{redis_server.port}/4"
    client = redis.Redis.from_url(url)
    client.flushdb()
    lines = ["identities,services"] + [
        f"sip:bulk{i}@{DOMAIN} tel:+1559{i:07d},{'cpm sms' if i % 2 else 'im'}" for i in range(BULK)
    ]
    path = write(tmp_path / "bulk.csv", "\n".join(lines) + "\n")
    cpmiw = Path(sys.executable).parent / "cpmiw"
    try:
        started = time.monotonic()
        result = subprocess.run(
            [str(cpmiw), "--redis-url", url, "profile", "import", path],
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert result.stderr.endswith(
            f"wrote {BULK} profile(s): {BULK} new, 0 changed, 0 unchanged\n"
        )
        assert elapsed < BULK_BOUND
        assert client.dbsize() >= 2 * BULK  # a copy under each of the two identities
        last = msgspec.json.decode(client.get(identity_key(f"sip:bulk{BULK - 1}@{DOMAIN}")) or b"")
        assert last["identities"] == [f"sip:bulk{BULK - 1}@{DOMAIN}", f"tel:+1559{BULK - 1:07d}"]
        print(f"\nimported {BULK} subscribers from CSV in {elapsed:.1f} s")
    finally:
        client.flushdb()


# ---- live change through Kamailio ----------------------------------------------------------------

# README, "Operations": a change is applied by every worker to each request that arrives 10 ms or
# more after the write (the change watcher wakes at the write: measured under 2 ms).
CHANGE_BOUND = 0.010


def _message(caller: Peer, uri: str) -> SipMessage:
    return caller.request(
        "MESSAGE", uri, headers=[("Accept-Contact", CPM_MSG), ("Content-Type", "text/plain")]
    )


def _burst(net: Network, uri: str, callers: list[Peer], device: Peer) -> list[tuple[int, str]]:
    """One request from each caller at once (several workers busy); their final statuses, with
    their Call-IDs."""
    sent = [(c, _message(c, uri)) for c in callers]
    for caller, request in sent:
        caller.send(request, net.kamailio.address)
    statuses = []
    for caller, request in sent:
        while True:
            try:
                status = caller.recv_response(timeout=0.01).status
                statuses.append((status, request.header("Call-ID") or ""))
                break
            except TimeoutError:
                with contextlib.suppress(TimeoutError):
                    device.reply(device.recv_request("MESSAGE", timeout=0.01), 200, "OK")
    return statuses


def test_cli_change_reaches_every_worker_within_the_bound(net: Network) -> None:
    profile = make_profile(
        f"live{secrets.token_hex(4)}", f"+1560{secrets.randbelow(10**7):07d}", "cpm"
    )
    net.provision(profile)
    uri = profile.registration_aor
    cli = Cli(net.redis.url, net.redis.client())
    with (
        Peer("127.0.0.5") as device,
        Peer() as a,
        Peer() as b,
        Peer() as c,
        Peer(transport="tcp") as d,
    ):
        assert device.register(net.kamailio.address, uri).status == 200
        callers = [a, b, c, d]
        for _ in range(3):  # every worker has the profile cached: delivered
            assert [status for status, _ in _burst(net, uri, callers, device)] == [200] * 4
        cli.ok("profile", "set", uri, "--barred")
        written = time.monotonic()
        stale = 0
        while True:  # how long until a request routes by the new profile
            stale += 1
            request = _message(a, uri)
            sent_at = time.monotonic()
            route_through_proxy(net, a, device, request)
            if "rule=barred" in net.kamailio.decision_lines(request.header("Call-ID") or "")[0]:
                break
        first = sent_at - written
        time.sleep(max(0.0, written + CHANGE_BOUND - time.monotonic()))
        barred: set[str] = set()  # the Call-IDs of the requests past the bound

        def seen_by_all() -> bool:
            """Whether at least two UDP workers and a TCP one took a request past the bound
            (which worker takes a request is the kernel's choice)."""
            answers = _burst(net, uri, callers, device)
            assert [status for status, _ in answers] == [403] * 4  # routed by the new profile
            barred.update(call_id for _, call_id in answers)
            return len(set(net.kamailio.routed_by(barred).values())) >= 3

        wait_until(seen_by_all, "every worker past the bound")
    assert first < 1.0
    print(f"\nrequest {stale} after the write, {first * 1000:.1f} ms later, saw the change")


# ---- kamcli's conventions: output formats, one-line errors, help, progress ----------------------


def _commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        yield " ".join((*path, name)), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def test_every_option_has_help_and_every_data_command_takes_f() -> None:
    prints_data = {"profile get", "profile set", "profile list", "profile diff", "profile history",
                   "profile schema", "profile alias add", "profile alias remove",
                   "profile alias list", "explain"}  # fmt: skip
    for name, command in [("", main), *_commands(main)]:
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"cpmiw {name} {param.opts}"
        if name in prints_data:
            assert any("-F" in p.opts for p in command.params), name


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--redis-url", "http://127.0.0.1:1/0", "profile", "list"], 2, "--redis-url"),
        (["profile", "import", "x.csv", "--batch", "-1"], 2, "--batch"),
        (["profile", "get"], 2, "Missing argument 'URI'"),
        (["-F", "xml", "profile", "list"], 2, "'xml' is not one of"),
        (["explain"], 2, "give the URI to explain, or --message FILE"),
        (["profile", "get", "mailto:bob"], 4, "URI:"),
        (["--redis-url", "redis://127.0.0.1:1/0", "profile", "list"], 5, "redis://127.0.0.1:1/0"),
    ],
)
def test_bad_input_is_one_line_with_its_exit_status(
    cli: Cli, args: list[str], code: int, message: str
) -> None:
    result = cli(*args)
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_a_bad_url_in_the_installed_tool_is_one_line(tmp_path: Path) -> None:
    cpmiw = Path(sys.executable).parent / "cpmiw"
    result = subprocess.run(
        [str(cpmiw), "--redis-url", "http://127.0.0.1/0", "profile", "list"],
        capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_profile_get_in_every_format(cli: Cli) -> None:
    cli.ok("profile", "set", BOB, "--services", "im,sms")
    as_json = json.loads(cli.ok("profile", "get", BOB, "-F", "json").stdout)
    assert as_json["identities"] == [BOB] and as_json["services"] == ["im", "sms"]
    assert yaml.safe_load(cli.ok("-F", "yaml", "profile", "get", BOB).stdout) == as_json
    table = cli.ok("profile", "get", BOB, "-F", "table").stdout
    assert '| identities   | ["sip:bob@ims.example.net"]' in table
    assert json.loads(cli.ok("profile", "get", BOB).stdout) == as_json  # text: the JSON
    listed = cli.ok("profile", "list", "-F", "table").stdout
    assert BOB in listed and listed.startswith("+")


def test_bulk_import_reports_every_phase_with_its_rate(cli: Cli, tmp_path: Path) -> None:
    rows = "".join(f"sip:p{i}@{DOMAIN},im\n" for i in range(2500))
    path = write(tmp_path / "phases.csv", "identities,services\n" + rows)
    stderr = cli.ok("profile", "import", path, "--batch", "1000").stderr.splitlines()
    assert [line.split(":")[0] for line in stderr[:3]] == [f"read {path}", "compare", "write"]
    for line in stderr[:3]:
        assert re.search(r": 2500/2500 in \d+\.\d s \([\d,]+/s\)$", line), line
    assert stderr[3] == "wrote 2500 profile(s): 2500 new, 0 changed, 0 unchanged"


def test_upgrade_rewrites_an_older_installs_profiles(cli: Cli) -> None:
    """Profiles in key layout 1 (profile + alias keys) become layout 2; invalid ones stay."""
    old = {"identities": [BOB, "tel:+15551230002"], "services": ["im"]}
    cli.client.set(f"cpmiw:1:profile:{BOB}", json.dumps(old))
    cli.client.mset({f"cpmiw:1:alias:{BOB}": BOB, "cpmiw:1:alias:tel:+15551230002": BOB})
    cli.client.set(f"cpmiw:1:profile:sip:broken@{DOMAIN}", b'{"services": ["fax"]}')
    cli.client.set("cpmiw:1:epoch", "e")
    assert "would upgrade 1 profile(s)" in cli("profile", "upgrade", "-n").stderr
    assert cli.stored_keys() == []
    result = cli("profile", "upgrade")
    assert result.exit_code == 4
    assert "upgraded 1 profile(s) from key layout 1" in result.stderr
    assert f"stored profile of sip:broken@{DOMAIN} is invalid" in result.stderr
    shown = json.loads(cli.ok("profile", "get", "tel:+15551230002").stdout)
    assert shown["identities"] == old["identities"]
    left = sorted(text(k) for k in cli.client.keys("cpmiw:1:*"))
    assert left == ["cpmiw:1:epoch", f"cpmiw:1:profile:sip:broken@{DOMAIN}"]
