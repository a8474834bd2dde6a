"""`cpmiw`: the operators' command-line tool for terminating service profiles."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import msgspec

from . import profile as profile_model
from .identity import IdentityError, canonical
from .profile import Profile, ProfileError
from .routing import StoreError
from .store import ProfileStore, connect

EXIT_NOT_FOUND = 3


def _store(ctx: click.Context) -> ProfileStore:
    store: ProfileStore = ctx.obj
    return store


@click.group()
@click.option(
    "--redis-url",
    envvar="CPMIW_REDIS_URL",
    default="redis://127.0.0.1:6379/0",
    show_default=True,
    help="Redis holding the profiles (env CPMIW_REDIS_URL).",
)
@click.pass_context
def main(ctx: click.Context, redis_url: str) -> None:
    """Manage cpmiw terminating service profiles."""
    ctx.obj = ProfileStore(connect(redis_url, timeout=2.0))


@main.group()
def profile() -> None:
    """Get, store and delete profiles."""


def _identity(uri: str) -> str:
    try:
        return canonical(uri)
    except IdentityError as error:
        raise click.BadParameter(str(error), param_hint="URI") from None


@profile.command("get")
@click.argument("uri")
@click.pass_context
def profile_get(ctx: click.Context, uri: str) -> None:
    """Print the profile of the subscriber owning URI, as JSON."""
    try:
        found = _store(ctx).lookup(_identity(uri))
    except (StoreError, ProfileError) as error:
        raise click.ClickException(str(error)) from None
    if found is None:
        click.echo(f"error: no profile for {uri}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    click.echo(json.dumps(msgspec.to_builtins(found), indent=2))


@profile.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def profile_import(ctx: click.Context, path: Path) -> None:
    """Store every profile of a JSON file (one profile or a list): all of them, or none."""
    raw = path.read_bytes()
    try:
        profiles = msgspec.json.decode(raw, type=list[Profile] | Profile)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise click.ClickException(f"{path}: {error}") from None
    batch = profiles if isinstance(profiles, list) else [profiles]
    try:
        _store(ctx).put(batch)
    except StoreError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"imported {len(batch)} profile(s) from {path}")


@profile.command("delete")
@click.argument("uri")
@click.pass_context
def profile_delete(ctx: click.Context, uri: str) -> None:
    """Delete the subscriber owning URI, with all its aliases."""
    try:
        deleted = _store(ctx).delete(_identity(uri))
    except (StoreError, ProfileError) as error:
        raise click.ClickException(str(error)) from None
    if not deleted:
        click.echo(f"error: no profile for {uri}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    click.echo(f"deleted {uri}")


@profile.command("schema")
def profile_schema() -> None:
    """Print the profile's JSON Schema."""
    click.echo(json.dumps(profile_model.json_schema(), indent=2))
