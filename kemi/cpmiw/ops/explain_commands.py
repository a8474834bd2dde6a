"""`cpmiw explain`: the decision the running proxy would take, with the proxy's own settings.

The settings come from the running proxy over its control socket (the CPMIW_* environment the
plugin published at start); only when Kamailio cannot be asked does the tool fall back to the
environment file (-c), and it says so on the `settings:` line.
"""

from __future__ import annotations

import click

from ..core.services import Service
from .explain import RequestError, explain, request_for, request_from_message
from .options import EXIT_INVALID, CliError, Context, pass_context, read_source
from .output import output_option
from .rpc import KamailioRpc, RpcError


@click.command("explain")
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
@click.option(
    "--no-registrations",
    is_flag=True,
    help="Ask Kamailio for nothing: settings from the file (-c), every device takes everything.",
)
@output_option
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

    Uses the proxy's own routing code with the running proxy's settings and registrations (its
    control socket, --rpc-socket) and its profiles (Redis); the last line has the decision log's
    fields.
    """
    if uri is None and message_path is None:
        raise click.UsageError("give the URI to explain, or --message FILE")
    if uri is not None and message_path is not None:
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
    lookup = cli.provisioning.store.lookup
    if no_registrations:
        result = explain(request, cli.settings(), lookup, None, "not asked")
        result = result.with_settings_source(f"{cli.config_name} (Kamailio not asked)")
    else:
        with KamailioRpc(cli.rpc_socket) as rpc:
            try:
                published = rpc.published_settings()
            except RpcError as error:
                result = explain(request, cli.settings(), lookup, None, str(error))
                result = result.with_settings_source(f"{cli.config_name} ({error})")
            else:
                settings = cli.settings(published)
                result = explain(request, settings, lookup, rpc.contacts)
                result = result.with_settings_source(f"the running proxy ({cli.rpc_socket})")
    cli.emit(result.as_json(), lambda: iter(result.lines()))
