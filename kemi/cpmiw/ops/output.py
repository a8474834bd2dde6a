"""How `cpmiw` prints data and progress, in kamcli's manner.

Data: `-F text` (the default: lines for a person), `json`, `yaml` or `table` (tabulate's grid,
as kamcli prints). Every command that prints data takes `-F` itself too, overriding the group's.
Progress: a bulk command reports each phase (read, compare, write per batch) with its rate on
stderr, updated in place on a terminal and as one summary line per phase otherwise, so that a
log of a scripted import still says how long each phase took.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

import click
import yaml
from tabulate import tabulate

FORMATS = ("text", "json", "yaml", "table")

F = TypeVar("F", bound=Callable[..., Any])


def render(data: object, fmt: str, text: Callable[[], Iterator[str]]) -> str:
    """`data` (JSON builtins) in the format asked; `text` gives the lines of the text form."""
    if fmt == "json":
        return json.dumps(data, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")
    if fmt == "table":
        return _table(data)
    return "\n".join(text())


def _cell(value: object) -> object:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else value


def _table(data: object) -> str:
    """Rows of a grid: a list of objects (one row each), of values, or one object (key/value)."""
    if isinstance(data, dict):
        rows: list[list[object]] = [[key, _cell(value)] for key, value in data.items()]
        return tabulate(rows, headers=["field", "value"], tablefmt="grid")
    items: list[object] = data if isinstance(data, list) else [data]
    objects = [item for item in items if isinstance(item, dict)]
    if objects and len(objects) == len(items):
        columns = list(dict.fromkeys(key for item in objects for key in item))
        rows = [[_cell(item.get(column)) for column in columns] for item in objects]
        return tabulate(rows, headers=columns, tablefmt="grid")
    return tabulate([[_cell(item)] for item in items], tablefmt="grid")


def output_option(command: F) -> F:
    """`-F/--output-format` on a command: overrides the group's for that command."""

    def chosen(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            ctx.meta["cpmiw.output"] = value

    return click.option(
        "-F",
        "--output-format",
        type=click.Choice(FORMATS),
        expose_value=False,
        callback=chosen,
        help="Print as text, json, yaml or table [default: the group's -F].",
    )(command)


class Progress:
    """Counts one phase of a bulk command and reports it with its rate on stderr."""

    def __init__(
        self, phase: str, total: int, stream: IO[str] | None = None, *, quiet: bool = False
    ) -> None:
        """`quiet`: count only (a single change needs no progress report)."""
        self.phase, self.total, self.done, self.quiet = phase, total, 0, quiet
        self.stream = stream or sys.stderr
        self.live = not quiet and self.stream.isatty()
        self.started = time.monotonic()
        self._shown = 0.0

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        return f"{self.phase}: {self.done}/{self.total} in {elapsed:.1f} s ({self.rate():,.0f}/s)"

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.live and now - self._shown >= 0.1:  # a terminal: at most ten redraws a second
            self._shown = now
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def close(self) -> None:
        if self.quiet:
            return
        self.stream.write(("\r" if self.live else "") + self.line() + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self.live:
            self.stream.write("\n")
