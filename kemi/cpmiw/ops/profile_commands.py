"""`cpmiw profile ...`: read, write, import, export, compare profiles, and their aliases.

Every write goes through ProfileStore (one MULTI/EXEC) via `provision`, so a change reaches every
Kamailio worker through the cache invalidation the store publishes; `--dry-run` shows the change
and writes nothing. Files are checked whole before anything is written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

import click
import msgspec
import redis

from ..core import profile as profile_model
from ..core.identity import canonical
from ..core.profile import AsFailure, Interworking, Profile, ProfileError
from ..settings import redacted
from ..store.credentials import CredentialStore
from ..store.profiles import Audit
from ..store.redis import StoreError
from .options import (
    EXIT_DIFFERENT,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    CliError,
    Context,
    Group,
    identity_of,
    input_errors,
    not_found,
    pass_context,
    read_source,
    stored,
)
from .output import Progress, output_option
from .provision import (
    FORMATS,
    Change,
    Entry,
    InputError,
    count_records,
    entry_from,
    format_of,
    read_entries,
    to_csv,
)


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


DRY_RUN = click.option(
    "-n", "--dry-run", is_flag=True, help="Show what would change; write nothing."
)


def _write(
    cli: Context, changes: Sequence[Change], dry_run: bool, audit: Audit, batch: int | None = None
) -> None:
    """Applies `changes` (unless dry run) and reports them in one line; a bulk write (`batch`
    given, 0 for all in one) reports its progress too."""
    counts = _summary(changes)
    prefix = "would write" if dry_run else "wrote"
    written = counts["create"] + counts["update"]
    if not dry_run:
        _apply_batches(cli, changes, batch, audit)
    click.echo(
        f"{prefix} {written} profile(s): {counts['create']} new, {counts['update']} changed,"
        f" {counts['unchanged']} unchanged",
        err=True,
    )


def _apply_batches(
    cli: Context, changes: Sequence[Change], batch: int | None, audit: Audit
) -> None:
    """Writes the new and changed profiles, one transaction per batch, with progress."""
    pending = [c for c in changes if c.kind in ("create", "update")]
    size = batch or len(pending) or 1
    with Progress("write", len(pending), quiet=batch is None) as progress:
        for start in range(0, len(pending), size):
            written = f"{progress.done} of {len(pending)} profiles written before"
            try:
                with input_errors(f" ({written})"):
                    cli.provisioning.apply(pending[start : start + size], audit)
            except (redis.RedisError, StoreError) as error:
                raise CliError(
                    f"{redacted(cli.redis_url)}: {error} ({written})", EXIT_UNAVAILABLE
                ) from None
            progress.update(len(pending[start : start + size]))


# ---- profile ----------------------------------------------------------------------------------


@click.group(cls=Group, aliases={"show": "get", "add": "set", "rm": "delete", "ls": "list"})
def profile() -> None:
    """Read, write, import and export profiles (JSON in and out)."""


@profile.command("get")
@click.argument("uri")
@output_option
@pass_context
def profile_get(cli: Context, uri: str) -> None:
    """Print the profile of the subscriber owning URI (text: JSON) (alias: show)."""
    found = stored(cli, uri)
    cli.emit(msgspec.to_builtins(found), lambda: iter([_as_json(found)]))


@profile.command("history")
@click.argument("uri")
@output_option
@pass_context
def profile_history(cli: Context, uri: str) -> None:
    """The recorded changes of the subscriber owning URI, newest first: when, who (user@host),
    what, the command and the reason given. A deleted subscriber's history is found by its
    subscriber id (its first identity); see README for how long it is kept."""
    entries = cli.provisioning.store.history(identity_of(uri))
    if not entries:
        not_found(uri)
    cli.emit(entries, lambda: map(_history_line, entries))


def _history_line(entry: Mapping[str, Any]) -> str:
    fields = ",".join(entry.get("fields") or []) or "-"
    reason = f" reason={json.dumps(entry['reason'])}" if entry.get("reason") else ""
    return (
        f"{entry.get('at')} {entry.get('user')}@{entry.get('host')} {entry.get('action')}"
        f" fields={fields} command={json.dumps(entry.get('command', ''))}{reason}"
    )


_FIELD_OPTIONS = [
    click.option("--services", help="What the subscriber receives: comma-separated cpm,im,sms."),
    click.option("--barred/--not-barred", default=None, help="Bar terminating messaging (403)."),
    click.option(
        "--interworking",
        type=click.Choice([m.value for m in Interworking]),
        help="CPM traffic for an IM-only subscriber (and IM for CPM-only): rewrite the tag in"
        " the proxy, send it to the IM AS, or deliver it unchanged.",
    ),
    click.option(
        "--as-failure",
        type=click.Choice([m.value for m in AsFailure]),
        help="When an AS fails (408, 5xx, no answer): continue as if there were no AS, or"
        " terminate with the AS's failure.",
    ),
    click.option(
        "--sms-fallback/--no-sms-fallback",
        default=None,
        help="With sms: the IP-SM-GW gets a CPM or IM request none of the subscriber's devices"
        " took (every device failed, or none answered in time).",
    ),
    click.option("--im-as", help="This subscriber's IM AS (SIP URI; 'none' for the default)."),
    click.option("--ip-sm-gw", help="This subscriber's IP-SM-GW (SIP URI; 'none': default)."),
]


REASON = click.option(
    "-r", "--reason", help="Why: recorded with the change in the subscriber's history."
)


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


@profile.command("set")
@click.argument("uri", required=False)
@click.option("-f", "--file", "source", help="A whole profile as JSON, from a file or '-' (stdin).")
@_field_options
@DRY_RUN
@REASON
@output_option
@pass_context
def profile_set(
    cli: Context,
    /,
    uri: str | None,
    source: str | None,
    dry_run: bool,
    reason: str | None,
    **fields: Any,
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
            record = msgspec.json.decode(read_source(source))
        except msgspec.DecodeError as error:
            raise CliError(f"{where}: not JSON: {error}", EXIT_INVALID) from None
        if not isinstance(record, dict):
            raise CliError(f"{where}: expected one profile (a JSON object)", EXIT_INVALID)
    else:
        assert uri is not None
        where = uri
        try:
            record = msgspec.to_builtins(stored(cli, uri))
        except CliError as error:
            if error.exit_code != EXIT_NOT_FOUND:
                raise
            if fields["services"] is None:
                message = f"{error.message}; give --services to create one"
                raise CliError(message, EXIT_NOT_FOUND) from None
            record = {"identities": [uri]}
    with input_errors():
        entry = entry_from(_with_fields(record, fields), where)
        changes = cli.provisioning.changes([entry])
    cli.emit([_change_json(c) for c in changes], lambda: _change_lines(changes, verb=True))
    _write(cli, changes, dry_run, cli.audit(reason, where))


def _change_json(change: Change) -> dict[str, object]:
    return {
        "subscriber": change.subscriber,
        "change": change.kind,
        "fields": {name: {"old": old, "new": new} for name, old, new in change.fields()},
    }


@profile.command("delete")
@click.argument("uri")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@REASON
@pass_context
def profile_delete(cli: Context, uri: str, dry_run: bool, reason: str | None) -> None:
    """Delete the subscriber owning URI, with all its aliases and its credential (alias: rm)."""
    found = stored(cli, uri)
    audit = cli.audit(reason, uri)
    if not dry_run and not cli.provisioning.store.delete(found.subscriber, audit):
        not_found(uri)
    if not dry_run:  # its devices could still register
        CredentialStore(cli.provisioning.client).remove(canonical(found.registration_aor))
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {found.subscriber} ({', '.join(sorted(found.aliases))})", err=True)


@profile.command("list")
@click.option("-m", "--match", default="*", show_default=True, help="Glob on the subscriber id.")
@output_option
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
    data = read_source(path)
    fmt = fmt or format_of(name)
    with input_errors():
        try:
            total = count_records(data, fmt)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise InputError(f"{name}: not a JSON profile or list of profiles: {error}") from None
        with Progress(f"read {name}", total) as progress:
            return read_entries(data, name, fmt, progress.update)


def _compare(cli: Context, entries: list[Entry]) -> list[Change]:
    """What storing `entries` would change, read from Redis with progress."""
    with input_errors(), Progress("compare", len(entries)) as progress:
        return cli.provisioning.changes(entries, progress.update)


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
@REASON
@pass_context
def profile_import(
    cli: Context, path: str, fmt: str | None, dry_run: bool, batch: int, reason: str | None
) -> None:
    """Store every profile of a file (JSON, JSON Lines or CSV; '-' is stdin).

    All or nothing: every record is checked first, and nothing is written when one is bad.
    The profiles are then written in one transaction (with --batch N, in transactions of N).
    """
    entries = _load(path, fmt)
    changes = _compare(cli, entries)
    _write(cli, changes, dry_run, cli.audit(reason, path), batch)


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
@output_option
@pass_context
def profile_diff(cli: Context, path: str, fmt: str | None) -> None:
    """What importing a file would change (exit 1 when anything would)."""
    entries = _load(path, fmt)
    changes = _compare(cli, entries)
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


@profile.command("upgrade")
@click.option("-n", "--dry-run", is_flag=True, help="Count what would be upgraded; write nothing.")
@pass_context
def profile_upgrade(cli: Context, dry_run: bool) -> None:
    """Rewrite the profiles of an older install (key layout 1) in today's layout (2).

    Each valid profile is written under its identities, then its old keys are deleted; invalid
    ones are named on stderr and left as they are (exit status 4). Run once, after upgrading.
    """
    stored = cli.provisioning.layout_1()
    valid = [(s, p) for s, p in stored if isinstance(p, Profile)]
    for subscriber, found in stored:
        if isinstance(found, ProfileError):
            click.echo(f"error: stored profile of {subscriber} is invalid: {found}", err=True)
    if not dry_run and valid:
        cli.provisioning.store.put([p for _, p in valid])
        cli.provisioning.drop_layout_1([s for s, _ in valid])
    prefix = "would upgrade" if dry_run else "upgraded"
    click.echo(f"{prefix} {len(valid)} profile(s) from key layout 1", err=True)
    if len(valid) < len(stored):
        sys.exit(EXIT_INVALID)


@profile.command("schema")
@output_option
@pass_context
def profile_schema(cli: Context) -> None:
    """Print the profile's JSON Schema (the one model every command validates with)."""
    schema = profile_model.json_schema()
    cli.emit(schema, lambda: iter([json.dumps(schema, indent=2)]))


# ---- alias ------------------------------------------------------------------------------------


@profile.group(cls=Group, aliases={"rm": "remove", "ls": "list"})
def alias() -> None:
    """The identities (SIP and TEL URIs) a subscriber is reached by."""


# New identities of a subscriber from its stored profile and the aliases named on the command line.
AliasChange = Callable[[Profile, tuple[str, ...]], list[str]]


def _alias_command(name: str) -> Callable[[AliasChange], click.Command]:
    """An `alias` subcommand that rewrites a subscriber's identities as `change` says."""

    def register(change: AliasChange) -> click.Command:
        @alias.command(name, help=change.__doc__)
        @click.argument("uri")
        @click.argument("aliases", nargs=-1, required=True)
        @DRY_RUN
        @REASON
        @output_option
        @pass_context
        def command(
            cli: Context, uri: str, aliases: tuple[str, ...], dry_run: bool, reason: str | None
        ) -> None:
            found = stored(cli, uri)
            record = {**msgspec.to_builtins(found), "identities": change(found, aliases)}
            with input_errors():
                changes = cli.provisioning.changes([entry_from(record, uri)])
            cli.emit([_change_json(c) for c in changes], lambda: _change_lines(changes, verb=True))
            _write(cli, changes, dry_run, cli.audit(reason, uri, *aliases))

        return command

    return register


@_alias_command("add")
def _with_aliases(found: Profile, aliases: tuple[str, ...]) -> list[str]:
    """Give the subscriber owning URI more identities."""
    known = set(found.aliases)
    return [*found.identities, *(a for a in aliases if identity_of(a) not in known)]


@_alias_command("remove")
def _without_aliases(found: Profile, aliases: tuple[str, ...]) -> list[str]:
    """Take identities away from the subscriber owning URI (alias: rm)."""
    named = {name: identity_of(name) for name in aliases}
    for name, identity in named.items():
        if identity not in found.aliases:
            raise CliError(f"{name} is not an identity of {found.subscriber}", EXIT_NOT_FOUND)
    gone = set(named.values())
    if found.subscriber in gone:
        raise CliError(
            f"{found.subscriber} is the subscriber's key (its first identity) and stays;"
            " export, edit and re-import the profile to rename it",
            EXIT_INVALID,
        )
    return [i for i in found.identities if canonical(i) not in gone]


@alias.command("list")
@click.argument("uri")
@output_option
@pass_context
def alias_list(cli: Context, uri: str) -> None:
    """The identities of the subscriber owning URI, as stored (alias: ls)."""
    identities = stored(cli, uri).identities
    cli.emit(identities, lambda: iter(identities))
