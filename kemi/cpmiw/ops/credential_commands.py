"""`cpmiw credential ...`: subscribers' digest credentials (README, "Trusting registrations").

A credential belongs to a subscriber's registration identity (its profile's first SIP URI): any
identity of the subscriber names it. The password is read from a file or stdin, never from the
command line (other users see arguments in `ps`), and only its HA1 hashes are stored. Nothing
the tool prints holds a password or an HA1: `export` writes HA1s to a file only, created
readable by its owner alone.

Files are JSON Lines, one credential a line, as `export` writes them:

    {"identity":"sip:bob@ims.example.net","username":"bob","realm":"ims.example.net",
     "ha1_md5":"...","ha1_sha256":"..."}
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from ..core import credential as model
from ..core import profile as profile_model
from ..core.credential import Credential, CredentialError
from ..core.identity import canonical
from ..core.profile import ProfileError
from ..store.credentials import CredentialStore
from .options import (
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    CliError,
    Context,
    Group,
    identity_of,
    pass_context,
    read_source,
    stored,
)

_PASSWORD_HELP = (
    "File whose first line is the password; '-' reads stdin (on a terminal: asked twice,"
    " not echoed)."
)


def _store(cli: Context) -> CredentialStore:
    return CredentialStore(cli.provisioning.client)


def _identity(cli: Context, uri: str) -> str:
    """The registration identity of the subscriber owning `uri` (exit 3 when none)."""
    return canonical(stored(cli, uri).registration_aor)


def _password(source: str) -> str:
    if source == "-" and sys.stdin.isatty():
        return str(click.prompt("password", hide_input=True, confirmation_prompt=True))
    data = read_source(source)
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[0] if lines else ""


def _made(identity: str, password: str, username: str | None) -> Credential:
    try:
        return model.from_password(identity, password, username)
    except CredentialError as error:
        raise CliError(str(error), EXIT_INVALID) from None


def _existing(cli: Context, identity: str) -> Credential | None:
    try:
        return _store(cli).get(identity)
    except CredentialError as error:
        message = f"stored credential of {identity} is invalid: {error}"
        raise CliError(message, EXIT_INVALID) from None


def _algorithms(found: Credential) -> str:
    return ", ".join(algorithm.value for algorithm in found.algorithms)


@click.group(cls=Group, aliases={"show": "get", "rm": "remove", "ls": "list"})
def credential() -> None:
    """Subscribers' digest credentials: the HA1 hashes REGISTERs are checked against."""


def _put(cli: Context, made: Credential, dry_run: bool, verb: str, detail: str = "") -> None:
    """Stores `made` (unless dry run) and says so in one line: `set` / `rotate` as the verb."""
    if not dry_run:
        _store(cli).put([made])
    done = f"would {verb}" if dry_run else {"set": "set", "rotate": "rotated"}[verb]
    click.echo(f"{done} the credential of {made.identity}{detail}", err=True)


@credential.command("set")
@click.argument("uri")
@click.option("-p", "--password-file", default="-", show_default=True, help=_PASSWORD_HELP)
@click.option("--username", help="Digest username of the device [default: the user part].")
@click.option("-n", "--dry-run", is_flag=True, help="Check; store nothing.")
@pass_context
def credential_set(
    cli: Context, uri: str, password_file: str, username: str | None, dry_run: bool
) -> None:
    """Give the subscriber owning URI a password (its HA1s are stored), replacing any."""
    identity = _identity(cli, uri)
    made = _made(identity, _password(password_file), username)
    _put(cli, made, dry_run, "set", f" (username {made.username})")


@credential.command("rotate")
@click.argument("uri")
@click.option("-p", "--password-file", default="-", show_default=True, help=_PASSWORD_HELP)
@click.option("-n", "--dry-run", is_flag=True, help="Check; store nothing.")
@pass_context
def credential_rotate(cli: Context, uri: str, password_file: str, dry_run: bool) -> None:
    """Replace the password of a subscriber that has one (same username); exit 3 if none.

    The old password stops working at once: a device registered with it stays registered
    until its registration expires, then needs the new one.
    """
    identity = _identity(cli, uri)
    old = _existing(cli, identity)
    if old is None:
        raise CliError(f"no credential for {identity}", EXIT_NOT_FOUND)
    made = _made(identity, _password(password_file), old.username)
    _put(cli, made, dry_run, "rotate")


@credential.command("remove")
@click.argument("uri")
@pass_context
def credential_remove(cli: Context, uri: str) -> None:
    """Remove a subscriber's credential: its devices can no longer register (alias: rm).

    URI may also name a credential whose subscriber is gone (its registration identity).
    """
    try:
        identity = _identity(cli, uri)
    except CliError as error:
        if error.exit_code != EXIT_NOT_FOUND:
            raise
        identity = identity_of(uri)  # the credential of a subscriber deleted since
    if not _store(cli).remove(identity):
        raise CliError(f"no credential for {identity}", EXIT_NOT_FOUND)
    click.echo(f"removed the credential of {identity}", err=True)


@credential.command("get")
@click.argument("uri")
@pass_context
def credential_get(cli: Context, uri: str) -> None:
    """What a subscriber's credential is made of; never the HA1s (alias: show)."""
    identity = _identity(cli, uri)
    found = _existing(cli, identity)
    if found is None:
        raise CliError(f"no credential for {identity}", EXIT_NOT_FOUND)
    algorithms = [algorithm.value for algorithm in found.algorithms]
    data = {
        "identity": found.identity,
        "username": found.username,
        "realm": found.realm,
        "algorithms": algorithms,
    }
    cli.emit(data, lambda: iter(f"{name}: {value}" for name, value in data.items()))


@credential.command("list")
@click.option("-m", "--match", default="*", show_default=True, help="Glob on the identity.")
@pass_context
def credential_list(cli: Context, match: str) -> None:
    """Identities that have a credential (alias: ls)."""
    identities = _store(cli).identities(match)
    cli.emit(identities, lambda: iter(identities))


def _read(path: str) -> list[tuple[Credential, str]]:
    """Every credential of a JSON Lines file, with where it is: `name:line`."""
    name = "stdin" if path == "-" else path
    found: list[tuple[Credential, str]] = []
    seen: dict[str, str] = {}
    for number, line in enumerate(read_source(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            made = model.decode(line)
        except CredentialError as error:
            raise CliError(f"{where}: {error}", EXIT_INVALID) from None
        if made.identity in seen:
            message = f"{where}: {made.identity} again (first at {seen[made.identity]})"
            raise CliError(message, EXIT_INVALID)
        seen[made.identity] = where
        found.append((made, where))
    return found


def _check_subscribers(cli: Context, records: Sequence[tuple[Credential, str]]) -> None:
    """Each credential must be of a stored subscriber's registration identity."""
    copies = cli.provisioning.store.copies([made.identity for made, _ in records])
    for (made, where), raw in zip(records, copies, strict=True):
        if raw is None:
            message = f"{where}: no subscriber has the identity {made.identity}"
            raise CliError(message, EXIT_NOT_FOUND)
        try:
            registration = canonical(profile_model.decode(raw).registration_aor)
        except ProfileError as error:
            message = f"{where}: the stored profile of {made.identity} is invalid: {error}"
            raise CliError(message, EXIT_INVALID) from None
        if registration != made.identity:
            message = (
                f"{where}: {made.identity} is not the registration identity of its"
                f" subscriber ({registration})"
            )
            raise CliError(message, EXIT_INVALID)


@credential.command("import")
@click.argument("path")
@click.option("-n", "--dry-run", is_flag=True, help="Check; store nothing.")
@pass_context
def credential_import(cli: Context, path: str, dry_run: bool) -> None:
    """Store every credential of a JSON Lines file ('-': stdin), all or nothing.

    Each must be the registration identity of a stored subscriber; one transaction.
    """
    records = _read(path)
    _check_subscribers(cli, records)
    if not dry_run:
        _store(cli).put(made for made, _ in records)
    verb = "would import" if dry_run else "imported"
    click.echo(f"{verb} {len(records)} credential(s)", err=True)


@credential.command("export")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to create (mode 0600; an existing file is refused).",
)
@click.option("-m", "--match", default="*", show_default=True, help="Glob on the identity.")
@pass_context
def credential_export(cli: Context, output: Path, match: str) -> None:
    """Write stored credentials (their HA1s) to a new file that `credential import` reads."""
    try:
        credentials = list(_store(cli).all(match))
    except CredentialError as error:
        raise CliError(f"a stored credential is invalid: {error}", EXIT_INVALID) from None
    try:
        descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise CliError(f"{output}: {error.strerror}", EXIT_INVALID) from None
    with os.fdopen(descriptor, "wb") as out:
        out.writelines(model.encode(made) + b"\n" for made in credentials)
    click.echo(f"exported {len(credentials)} credential(s) to {output}", err=True)
