"""`cpmiw`: the operators' command-line tool for terminating service profiles.

It follows kamcli's conventions: command groups with subcommands (`cpmiw profile get`), short
aliases (`show`, `rm`, `ls`), `-h/--help`, `-d/--debug`, `-F/--output-format`, a settings file
given with `-c/--config`, and every option also read from a CPMIW_* environment variable. The
groups live in their own modules (`profile_commands`); `explain` is here.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..core.services import Service
from .credential_commands import credential
from .explain import RequestError, explain, request_for, request_from_message
from .options import (
    DEFAULT_CONFIG,
    DEFAULT_REDIS_URL,
    DEFAULT_RPC_SOCKET,
    EXIT_INVALID,
    CliError,
    Context,
    Group,
    pass_context,
    read_env_file,
    read_source,
)
from .profile_commands import profile
from .rpc import KamailioRpc, RpcError

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


main.add_command(profile)
main.add_command(credential)


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
            request = request_from_message(read_source(message_path), source)
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
