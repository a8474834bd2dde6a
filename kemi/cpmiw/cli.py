"""`cpmiw`: the operators' command-line tool for terminating service profiles.

It follows kamcli's conventions: command groups with subcommands (`cpmiw profile get`), short
aliases (`show`, `rm`, `ls`), `-h/--help`, `-d/--debug`, `-F/--output-format`, a settings file
given with `-c/--config`, and every option also read from a CPMIW_* environment variable. The
settings file is the environment file the Kamailio unit reads, so `cpmiw explain` plans with
exactly the proxy's settings.

Every write goes through ProfileStore (one MULTI/EXEC), so a change reaches every Kamailio
worker through the cache invalidation the store publishes. Errors are one line on stderr, and
the exit status says which kind (see EXIT_*).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import msgspec
import redis

from . import profile as profile_model
from .explain import RequestError, explain, request_for, request_from_message
from .identity import IdentityError, canonical
from .profile import AsFailure, Interworking, Profile, ProfileError
from .provision import (
    FORMATS,
    Change,
    ConflictError,
    Entry,
    InputError,
    Provisioning,
    count_records,
    entry_from,
    format_of,
    read_entries,
    to_csv,
)
from .routing import StoreError
from .rpc import KamailioRpc, RpcError
from .services import Service
from .settings import Settings, SettingsError, load_settings
from .store import connect

EXIT_DIFFERENT = 1  # `profile diff`: the file and Redis differ (as diff(1) says)
EXIT_NOT_FOUND = 3  # no such subscriber or identity
EXIT_INVALID = 4  # bad input: a record, a field, a URI, a service name
EXIT_UNAVAILABLE = 5  # Redis or Kamailio could not be reached
EXIT_CONFLICT = 6  # an identity belongs to another subscriber

DEFAULT_CONFIG = "/etc/cpmiw/cpmiw.env"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_RPC_SOCKET = "/run/cpmiw/kamailio_rpc.sock"


class CliError(click.ClickException):
    """A one-line error with its exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it from the instance

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@dataclass
class Context:
    """What the group options give every command."""

    env: Mapping[str, str]
    redis_url: str
    rpc_socket: str
    output: str
    debug: bool
    _provisioning: Provisioning | None = None

    @property
    def provisioning(self) -> Provisioning:
        if self._provisioning is None:
            self._provisioning = Provisioning(connect(self.redis_url, timeout=10.0))
        return self._provisioning

    def settings(self) -> Settings:
        try:
            return load_settings({**self.env, "CPMIW_REDIS_URL": self.redis_url})
        except SettingsError as error:
            raise CliError(str(error), EXIT_INVALID) from None

    def emit(self, data: object, text: Callable[[], Iterator[str]]) -> None:
        """Prints `data` as JSON with -F json, else the lines `text` yields."""
        if self.output == "json":
            click.echo(json.dumps(data, indent=2))
        else:
            for line in text():
                click.echo(line)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments, optional quotes)."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith(("#", ";")):
            continue
        key, equals, value = text.partition("=")
        if not equals or not key.strip().isidentifier():
            raise CliError(f"{path}:{number}: expected KEY=VALUE, got {text!r}", EXIT_INVALID)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class Group(click.Group):
    """A command group with kamcli-style aliases, turning store failures into one-line errors."""

    def __init__(self, *args: Any, aliases: Mapping[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.aliases = dict(aliases or {})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (redis.RedisError, StoreError) as error:
            cli = ctx.find_object(Context)
            if cli is None or cli.debug:
                raise
            raise CliError(f"{cli.redis_url}: {error}", EXIT_UNAVAILABLE) from None


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "CPMIW"}


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.option(
    "-c",
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CPMIW_CONFIG",
    help=f"Environment file with CPMIW_* settings, as Kamailio's unit reads it "
    f"[default: {DEFAULT_CONFIG} if present; env CPMIW_CONFIG].",
)
@click.option(
    "--redis-url",
    envvar="CPMIW_REDIS_URL",
    help=f"Redis holding the profiles [env CPMIW_REDIS_URL, then the config; {DEFAULT_REDIS_URL}].",
)
@click.option(
    "--rpc-socket",
    envvar="CPMIW_RPC_SOCKET",
    help=f"Kamailio's JSON-RPC socket, for `explain` [env CPMIW_RPC_SOCKET; {DEFAULT_RPC_SOCKET}].",
)
@click.option(
    "-F",
    "--output-format",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="How lists and explanations are printed (profiles are always JSON).",
)
@click.option("-d", "--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="cpmiw")
@click.pass_context
def main(
    ctx: click.Context,
    config: Path | None,
    redis_url: str | None,
    rpc_socket: str | None,
    output: str,
    debug: bool,
) -> None:
    """Manage cpmiw terminating service profiles and explain routing decisions.

    \b
    Exit status: 0 done; 1 `profile diff` found differences; 2 usage error;
    3 not found; 4 invalid input; 5 Redis or Kamailio unreachable;
    6 an identity belongs to another subscriber.
    """
    if config is None and Path(DEFAULT_CONFIG).is_file():
        config = Path(DEFAULT_CONFIG)
    if config is not None and not config.is_file():
        raise CliError(f"{config}: no such file", EXIT_INVALID)
    env = {**(read_env_file(config) if config else {}), **os.environ}
    ctx.obj = Context(
        env=env,
        redis_url=redis_url or env.get("CPMIW_REDIS_URL") or DEFAULT_REDIS_URL,
        rpc_socket=rpc_socket or env.get("CPMIW_RPC_SOCKET") or DEFAULT_RPC_SOCKET,
        output=output,
        debug=debug,
    )


pass_context = click.make_pass_decorator(Context)


def _identity(uri: str) -> str:
    try:
        return canonical(uri)
    except IdentityError as error:
        raise CliError(f"URI: {error}", EXIT_INVALID) from None


def _not_found(uri: str) -> NoReturn:
    raise CliError(f"no profile for {uri}", EXIT_NOT_FOUND)


def _stored(cli: Context, uri: str) -> Profile:
    try:
        found = cli.provisioning.store.lookup(_identity(uri))
    except ProfileError as error:
        raise CliError(f"stored profile of {uri} is invalid: {error}", EXIT_INVALID) from None
    if found is None:
        _not_found(uri)
    return found


@contextmanager
def _input_errors() -> Iterator[None]:
    """Bad records and conflicting identities: one line naming where, and their exit status."""
    try:
        yield
    except ConflictError as error:
        raise CliError(str(error), EXIT_CONFLICT) from None
    except InputError as error:
        raise CliError(str(error), EXIT_INVALID) from None


def _as_json(profile: Profile) -> str:
    return json.dumps(msgspec.to_builtins(profile), indent=2)


def _change_lines(changes: Sequence[Change], *, verb: bool) -> Iterator[str]:
    """`+ new`, `- deleted`, `~ changed field: old -> new`; unchanged profiles are not shown."""
    signs = {"create": "+", "delete": "-", "update": "~"}
    for change in changes:
        if change.kind == "unchanged":
            continue
        sign = f"{change.kind}" if verb else signs[change.kind]
        if change.kind == "update" and not isinstance(change.old, Profile):
            yield f"{sign} {change.subscriber}: replaces an invalid stored profile ({change.old})"
            continue
        yield f"{sign} {change.subscriber}"
        for field, old, new in change.fields():
            yield f"    {field}: {json.dumps(old)} -> {json.dumps(new)}"


def _summary(changes: Sequence[Change]) -> dict[str, int]:
    counts = {"create": 0, "update": 0, "unchanged": 0}
    for change in changes:
        counts[change.kind] = counts.get(change.kind, 0) + 1
    return counts


def _write(cli: Context, changes: Sequence[Change], dry_run: bool, batch: int = 0) -> None:
    """Applies `changes` (unless dry run) and reports them in one line."""
    counts = _summary(changes)
    prefix = "would write" if dry_run else "wrote"
    written = counts["create"] + counts["update"]
    if not dry_run:
        _apply_batches(cli, changes, batch)
    click.echo(
        f"{prefix} {written} profile(s): {counts['create']} new, {counts['update']} changed,"
        f" {counts['unchanged']} unchanged",
        err=True,
    )


def _apply_batches(cli: Context, changes: Sequence[Change], batch: int) -> None:
    pending = [c for c in changes if c.kind in ("create", "update")]
    size = batch or len(pending) or 1
    done = 0
    for start in range(0, len(pending), size):
        try:
            cli.provisioning.apply(pending[start : start + size])
        except (redis.RedisError, StoreError) as error:
            raise CliError(
                f"{cli.redis_url}: {error} ({done} of {len(pending)} profiles written before)",
                EXIT_UNAVAILABLE,
            ) from None
        done += len(pending[start : start + size])


# ---- profile ----------------------------------------------------------------------------------


@main.group(cls=Group, aliases={"show": "get", "add": "set", "rm": "delete", "ls": "list"})
def profile() -> None:
    """Read, write, import and export profiles (JSON in and out)."""


@profile.command("get")
@click.argument("uri")
@pass_context
def profile_get(cli: Context, uri: str) -> None:
    """Print the profile of the subscriber owning URI, as JSON (alias: show)."""
    click.echo(_as_json(_stored(cli, uri)))


_FIELD_OPTIONS = [
    click.option("--services", help="What the subscriber receives: comma-separated cpm,im,sms."),
    click.option("--barred/--not-barred", default=None, help="Bar terminating messaging (403)."),
    click.option("--interworking", type=click.Choice([m.value for m in Interworking])),
    click.option("--as-failure", type=click.Choice([m.value for m in AsFailure])),
    click.option("--im-as", help="This subscriber's IM AS (SIP URI; 'none' for the default)."),
    click.option("--ip-sm-gw", help="This subscriber's IP-SM-GW (SIP URI; 'none': default)."),
]


def _field_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_FIELD_OPTIONS):
        command = option(command)
    return command


def _with_fields(record: dict[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """`record` with the fields given as options replaced."""
    updated = dict(record)
    for name, value in options.items():
        if value is None:
            continue
        if name == "services":
            updated[name] = [item.strip() for item in value.split(",") if item.strip()]
        elif name in ("im_as", "ip_sm_gw"):
            updated[name] = None if value.lower() in ("", "none") else value
        else:
            updated[name] = value
    return updated


def _read_source(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise CliError(f"{source}: {error.strerror}", EXIT_INVALID) from None


@profile.command("set")
@click.argument("uri", required=False)
@click.option("-f", "--file", "source", help="A whole profile as JSON, from a file or '-' (stdin).")
@_field_options
@click.option("-n", "--dry-run", is_flag=True, help="Show what would change; write nothing.")
@pass_context
def profile_set(
    cli: Context, /, uri: str | None, source: str | None, dry_run: bool, **fields: Any
) -> None:
    """Create or change one profile (alias: add).

    Either the subscriber owning URI, with the fields given as options changed (a new
    subscriber needs --services), or a whole profile from --file, optionally with options.
    """
    if (uri is None) == (source is None):
        raise click.UsageError("give a URI or --file, not both")
    if source is not None:
        where = "stdin" if source == "-" else source
        try:
            record = msgspec.json.decode(_read_source(source))
        except msgspec.DecodeError as error:
            raise CliError(f"{where}: not JSON: {error}", EXIT_INVALID) from None
        if not isinstance(record, dict):
            raise CliError(f"{where}: expected one profile (a JSON object)", EXIT_INVALID)
    else:
        assert uri is not None
        where = uri
        try:
            record = msgspec.to_builtins(_stored(cli, uri))
        except CliError as error:
            if error.exit_code != EXIT_NOT_FOUND or fields["services"] is None:
                raise CliError(
                    f"{error.message}; give --services to create one", error.exit_code
                ) from None
            record = {"identities": [uri]}
    with _input_errors():
        entry = entry_from(_with_fields(record, fields), where)
        changes = cli.provisioning.changes([entry])
    cli.emit([_change_json(c) for c in changes], lambda: _change_lines(changes, verb=True))
    _write(cli, changes, dry_run)


def _change_json(change: Change) -> dict[str, object]:
    return {
        "subscriber": change.subscriber,
        "change": change.kind,
        "fields": {name: {"old": old, "new": new} for name, old, new in change.fields()},
    }


@profile.command("delete")
@click.argument("uri")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@pass_context
def profile_delete(cli: Context, uri: str, dry_run: bool) -> None:
    """Delete the subscriber owning URI, with all its aliases (alias: rm)."""
    found = _stored(cli, uri)
    if not dry_run and not cli.provisioning.store.delete(found.subscriber):
        _not_found(uri)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {found.subscriber} ({', '.join(sorted(found.aliases))})", err=True)


@profile.command("list")
@click.option("-m", "--match", default="*", show_default=True, help="Glob on the subscriber id.")
@pass_context
def profile_list(cli: Context, match: str) -> None:
    """List subscribers by their canonical identity (alias: ls)."""
    subscribers = cli.provisioning.subscribers(match)
    cli.emit(subscribers, lambda: iter(subscribers))


_FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="File format [default: from the suffix: .csv, .jsonl, else json].",
)


def _load(path: str, fmt: str | None) -> list[Entry]:
    """Every record of a file, validated, with a progress bar on a terminal."""
    name = "stdin" if path == "-" else path
    data = _read_source(path)
    fmt = fmt or format_of(name)
    with _input_errors():
        try:
            total = count_records(data, fmt)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise InputError(f"{name}: not a JSON profile or list of profiles: {error}") from None
        with click.progressbar(length=total, label=f"reading {name}", file=sys.stderr) as bar:
            return read_entries(data, name, fmt, bar.update)


@profile.command("import")
@click.argument("path")
@_FORMAT_OPTION
@click.option("-n", "--dry-run", is_flag=True, help="Check and count; write nothing.")
@click.option(
    "--batch",
    type=click.IntRange(min=0),
    default=0,
    help="Write in transactions of N profiles (default 0: the whole file in one).",
)
@pass_context
def profile_import(cli: Context, path: str, fmt: str | None, dry_run: bool, batch: int) -> None:
    """Store every profile of a file (JSON, JSON Lines or CSV; '-' is stdin).

    All or nothing: every record is checked first, and nothing is written when one is bad.
    The profiles are then written in one transaction (with --batch N, in transactions of N).
    """
    entries = _load(path, fmt)
    with _input_errors():
        changes = cli.provisioning.changes(entries)
    _write(cli, changes, dry_run, batch)


@profile.command("validate")
@click.argument("path")
@_FORMAT_OPTION
@pass_context
def profile_validate(cli: Context, path: str, fmt: str | None) -> None:
    """Check a file without Redis: exit 0 when every record is a valid profile."""
    entries = _load(path, fmt)
    click.echo(f"{len(entries)} valid profile(s) in {path}", err=True)


@profile.command("diff")
@click.argument("path")
@_FORMAT_OPTION
@pass_context
def profile_diff(cli: Context, path: str, fmt: str | None) -> None:
    """What importing a file would change (exit 1 when anything would)."""
    entries = _load(path, fmt)
    with _input_errors():
        changes = cli.provisioning.changes(entries)
    cli.emit(
        [_change_json(c) for c in changes if c.kind != "unchanged"],
        lambda: _change_lines(changes, verb=False),
    )
    if any(change.kind != "unchanged" for change in changes):
        sys.exit(EXIT_DIFFERENT)


@profile.command("export")
@click.option("-o", "--output", type=click.File("w"), default="-", help="File to write [stdout].")
@_FORMAT_OPTION
@click.option("-m", "--match", default="*", show_default=True, help="Glob on the subscriber id.")
@pass_context
def profile_export(cli: Context, output: IO[str], fmt: str | None, match: str) -> None:
    """Write stored profiles to a file that `profile import` reads back.

    Invalid stored profiles are named on stderr and left out; the exit status is then 4.
    """
    fmt = fmt or format_of(output.name)
    profiles, invalid = [], 0
    for subscriber, found in cli.provisioning.export(match):
        if isinstance(found, ProfileError):
            click.echo(f"error: stored profile of {subscriber} is invalid: {found}", err=True)
            invalid += 1
        else:
            profiles.append(found)
    if fmt == "csv":
        output.write(to_csv(profiles))
    elif fmt == "jsonl":
        output.writelines(profile_model.encode(p).decode() + "\n" for p in profiles)
    else:
        output.write(msgspec.json.format(msgspec.json.encode(profiles)).decode() + "\n")
    if invalid:
        sys.exit(EXIT_INVALID)


@profile.command("schema")
def profile_schema() -> None:
    """Print the profile's JSON Schema (the one model every command validates with)."""
    click.echo(json.dumps(profile_model.json_schema(), indent=2))


# ---- alias ------------------------------------------------------------------------------------


@profile.group(cls=Group, aliases={"rm": "remove", "ls": "list"})
def alias() -> None:
    """The identities (SIP and TEL URIs) a subscriber is reached by."""


def _replace_identities(cli: Context, uri: str, identities: list[str], dry_run: bool) -> None:
    found = _stored(cli, uri)
    record = {**msgspec.to_builtins(found), "identities": identities}
    with _input_errors():
        changes = cli.provisioning.changes([entry_from(record, uri)])
    cli.emit([_change_json(c) for c in changes], lambda: _change_lines(changes, verb=True))
    _write(cli, changes, dry_run)


@alias.command("add")
@click.argument("uri")
@click.argument("aliases", nargs=-1, required=True)
@click.option("-n", "--dry-run", is_flag=True, help="Show what would change; write nothing.")
@pass_context
def alias_add(cli: Context, uri: str, aliases: tuple[str, ...], dry_run: bool) -> None:
    """Give the subscriber owning URI more identities."""
    found = _stored(cli, uri)
    known = set(found.aliases)
    new = [a for a in aliases if _identity(a) not in known]
    _replace_identities(cli, uri, [*found.identities, *new], dry_run)


@alias.command("remove")
@click.argument("uri")
@click.argument("aliases", nargs=-1, required=True)
@click.option("-n", "--dry-run", is_flag=True, help="Show what would change; write nothing.")
@pass_context
def alias_remove(cli: Context, uri: str, aliases: tuple[str, ...], dry_run: bool) -> None:
    """Take identities away from the subscriber owning URI (alias: rm)."""
    found = _stored(cli, uri)
    gone = {_identity(a) for a in aliases}
    for name, identity in zip(aliases, gone, strict=False):
        if identity not in found.aliases:
            raise CliError(f"{name} is not an identity of {found.subscriber}", EXIT_NOT_FOUND)
    if found.subscriber in gone:
        raise CliError(
            f"{found.subscriber} is the subscriber's key (its first identity) and stays;"
            " export, edit and re-import the profile to rename it",
            EXIT_INVALID,
        )
    kept = [i for i in found.identities if canonical(i) not in gone]
    _replace_identities(cli, uri, kept, dry_run)


@alias.command("list")
@click.argument("uri")
@pass_context
def alias_list(cli: Context, uri: str) -> None:
    """The identities of the subscriber owning URI, as stored (alias: ls)."""
    identities = _stored(cli, uri).identities
    cli.emit(identities, lambda: iter(identities))


# ---- explain ----------------------------------------------------------------------------------


@main.command("explain")
@click.argument("uri", required=False)
@click.option(
    "-s",
    "--service",
    type=click.Choice([s.value for s in Service]),
    help="Requested service; a request carrying it is made up [default: none].",
)
@click.option("-m", "--method", help="Request method [default: the one that carries the service].")
@click.option(
    "--message",
    "message_path",
    help="A whole SIP request (a file, or '-' for stdin) instead of URI and service.",
)
@click.option("--source", help="Sender's IP address [default: the message's top Via host].")
@click.option("--no-registrations", is_flag=True, help="Do not ask Kamailio for registrations.")
@pass_context
def explain_command(
    cli: Context,
    uri: str | None,
    service: str | None,
    method: str | None,
    message_path: str | None,
    source: str | None,
    no_registrations: bool,
) -> None:
    """Print the decision the running proxy would take for a request, and why.

    Uses the proxy's own routing code with its settings (-c), its profiles (Redis) and its
    registrations (Kamailio's RPC socket); the last line has the decision log's fields.
    """
    if (uri is None) == (message_path is None):
        raise click.UsageError("give a URI or --message, not both")
    try:
        if message_path is not None:
            request = request_from_message(_read_source(message_path), source)
        else:
            assert uri is not None
            wanted = Service(service) if service else Service.NONE
            request = request_for(uri, wanted, method, source or "")
    except RequestError as error:
        raise CliError(str(error), EXIT_INVALID) from None
    settings = cli.settings()
    lookup = cli.provisioning.store.lookup
    if no_registrations:
        result = explain(request, settings, lookup, None, "not asked")
    else:
        with KamailioRpc(cli.rpc_socket) as rpc:
            try:
                rpc.call("core.version")
            except RpcError as error:
                result = explain(request, settings, lookup, None, str(error))
            else:
                result = explain(request, settings, lookup, rpc.contacts)
    cli.emit(result.as_json(), lambda: iter(result.lines()))
