"""`cpmiw`: the operators' command-line tool for terminating service profiles.

It follows kamcli's conventions: command groups with subcommands (`cpmiw profile get`), short
aliases (`show`, `rm`, `ls`), `-h/--help`, `-d/--debug`, `-F/--output-format` (json, yaml,
table, text) on the group and on every command that prints data, a settings file given with
`-c/--config`, and every option also read from a CPMIW_* environment variable. Each command
group lives in a module of its own; this one only wires them to the top group.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..store.redis import parse_url
from .credential_commands import credential
from .explain_commands import explain_command
from .options import (
    DEFAULT_CONFIG,
    DEFAULT_REDIS_URL,
    DEFAULT_RPC_SOCKET,
    EXIT_INVALID,
    CliError,
    Context,
    Main,
    read_env_file,
)
from .output import FORMATS
from .profile_commands import profile
from .store_commands import store

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "CPMIW"}


def _redis_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A URL naming a Redis topology (README, "Settings"): checked before any command."""
    if value is not None:
        try:
            parse_url(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
    return value


@click.group(cls=Main, context_settings=CONTEXT_SETTINGS)
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
    callback=_redis_url,
    help=f"Redis holding the profiles [env CPMIW_REDIS_URL, then the config; {DEFAULT_REDIS_URL}].",
)
@click.option(
    "--rpc-socket",
    envvar="CPMIW_RPC_SOCKET",
    help="Kamailio's JSON-RPC socket, for `explain` "
    f"[env CPMIW_RPC_SOCKET, then the config; {DEFAULT_RPC_SOCKET}].",
)
@click.option(
    "-F",
    "--output-format",
    "output",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="How commands print data (each command also takes -F).",
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
    Exit status: 0 done; 1 `profile diff` found differences; 2 usage error
    (a bad option or value); 3 not found; 4 invalid input; 5 Redis or Kamailio
    unreachable; 6 an identity belongs to another subscriber.
    """
    if config is None and Path(DEFAULT_CONFIG).is_file():
        config = Path(DEFAULT_CONFIG)
    if config is not None and not config.is_file():
        raise CliError(f"{config}: no such file", EXIT_INVALID)
    env = {**(read_env_file(config) if config else {}), **os.environ}
    url = redis_url or env.get("CPMIW_REDIS_URL") or DEFAULT_REDIS_URL
    if redis_url is None:
        _redis_url(ctx, click.Option(["--redis-url"]), url)  # from the config file
    ctx.obj = Context(
        env=env,
        redis_url=url,
        rpc_socket=rpc_socket or env.get("CPMIW_RPC_SOCKET") or DEFAULT_RPC_SOCKET,
        output=output,
        debug=debug,
        config=config,
    )


main.add_command(profile)
main.add_command(credential)
main.add_command(explain_command)
main.add_command(store)
