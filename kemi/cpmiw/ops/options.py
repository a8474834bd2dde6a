"""What every `cpmiw` command shares: settings, the store, one-line errors and exit statuses.

The settings file is the environment file the Kamailio unit reads (KEY=VALUE lines), so that the
tool works with exactly the proxy's settings. An error is one line on stderr, `error: ...`, and
its exit status says which kind (EXIT_*); Redis failures anywhere in a command become one too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import redis

from ..core.identity import IdentityError, canonical
from ..core.profile import Profile, ProfileError
from ..core.routing import NotReadyError
from ..settings import Settings, SettingsError, load_settings, redacted
from ..store.profiles import Audit
from ..store.redis import StoreError, connect
from .output import render
from .provision import ConflictError, InputError, Provisioning

EXIT_DIFFERENT = 1  # `profile diff`: the file and Redis differ (as diff(1) says)
EXIT_USAGE = 2  # a bad option, argument or option value (click's own code for usage errors)
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
    config: Path | None = None
    _provisioning: Provisioning | None = None

    @property
    def config_name(self) -> str:
        return f"{self.config} and the environment" if self.config else "the environment"

    @property
    def provisioning(self) -> Provisioning:
        if self._provisioning is None:
            self._provisioning = Provisioning(connect(self.redis_url, timeout=10.0))
        return self._provisioning

    def settings(self, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of `env` (default: the file and the environment), with our Redis."""
        try:
            return load_settings(
                {**(self.env if env is None else env), "CPMIW_REDIS_URL": self.redis_url}
            )
        except SettingsError as error:
            raise CliError(str(error), EXIT_INVALID) from None

    def emit(self, data: object, text: Callable[[], Iterator[str]]) -> None:
        """Prints `data` (JSON builtins) in the -F format; `text` yields the text form's lines."""
        fmt = click.get_current_context().meta.get("cpmiw.output", self.output)
        printed = render(data, fmt, text)
        if printed:
            click.echo(printed)

    def audit(self, reason: str | None, *arguments: str) -> Audit:
        """Who is writing (this user and host), why, and with which command (and arguments)."""
        path = click.get_current_context().command_path.split()[1:]  # without the program's name
        command = " ".join(["cpmiw", *path, *arguments])
        return Audit(reason=reason or "", command=command)


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
            raise CliError(f"{redacted(cli.redis_url)}: {error}", EXIT_UNAVAILABLE) from None


class Main(Group):
    """The top group: every error, usage errors included, is one line with its exit status."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.UsageError as error:
            hint = f" (see '{error.ctx.command_path} -h')" if error.ctx else ""
            click.echo(f"error: {error.format_message()}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.exceptions.Exit as done:  # --help, --version
            sys.exit(done.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)


pass_context = click.make_pass_decorator(Context)


def identity_of(uri: str) -> str:
    try:
        return canonical(uri)
    except IdentityError as error:
        raise CliError(f"URI: {error}", EXIT_INVALID) from None


def not_found(uri: str) -> NoReturn:
    raise CliError(f"no profile for {uri}", EXIT_NOT_FOUND)


def stored(cli: Context, uri: str) -> Profile:
    try:
        found = cli.provisioning.store.lookup(identity_of(uri))
    except ProfileError as error:
        raise CliError(f"stored profile of {uri} is invalid: {error}", EXIT_INVALID) from None
    except NotReadyError:  # an empty store, to be written to
        found = None
    if found is None:
        not_found(uri)
    return found


@contextmanager
def input_errors(after: str = "") -> Iterator[None]:
    """Bad records and conflicting identities: one line naming where (then `after`), and their
    exit status."""
    try:
        yield
    except ConflictError as error:
        raise CliError(f"{error}{after}", EXIT_CONFLICT) from None
    except InputError as error:
        raise CliError(f"{error}{after}", EXIT_INVALID) from None


def read_source(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise CliError(f"{source}: {error.strerror}", EXIT_INVALID) from None
