"""`cpmiw store ...`: the profile store as a whole, ready or not (README, "A failing Redis").

A store holding no data set (Redis restarted empty, a FLUSHALL, a Cluster shard lost) is not
ready: the proxy answers its subscribers 503 "store not ready", never 404, because the store's
silence about them says nothing. Any write marks a store ready; these commands tell whether it
is, and mark it when that is what the operator means: a store meant to be empty, or one whose
data was put back by hand (not through the tool).
"""

from __future__ import annotations

from collections.abc import Iterator

import click

from ..store.layout import BUCKETS
from .options import Context, Group, pass_context


@click.group(cls=Group)
def store() -> None:
    """The profile store as a whole: is it ready, mark it ready."""


@store.command("status")
@pass_context
def store_status(cli: Context) -> None:
    """Whether the store is ready: a missing profile then means no such subscriber (404)."""
    marked = cli.provisioning.store.buckets_ready()
    state = "ready" if marked == BUCKETS else "not ready" if marked == 0 else "partly ready"

    def text() -> Iterator[str]:
        yield f"{state}: {marked} of {BUCKETS} buckets marked"
        if marked < BUCKETS:
            yield "the proxy answers 503 for the subscribers of unmarked buckets"

    cli.emit({"state": state, "buckets_ready": marked, "buckets": BUCKETS}, text)


@store.command("ready")
@click.option("-n", "--dry-run", is_flag=True, help="Say what would be marked; mark nothing.")
@pass_context
def store_ready(cli: Context, dry_run: bool) -> None:
    """Mark the store ready as it is: for a store meant to be empty, or data put back by hand.

    From then on a subscriber the store does not hold is answered 404, not 503.
    """
    marked = cli.provisioning.store.buckets_ready()
    if not dry_run:
        cli.provisioning.store.mark_ready()
    verb = "would mark" if dry_run else "marked"
    click.echo(
        f"{verb} the store ready ({BUCKETS - marked} of {BUCKETS} buckets were not)", err=True
    )
