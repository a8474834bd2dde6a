"""Prometheus metrics of the plugin, shared by all Kamailio worker processes.

The adapter and the store report events through the functions below; `render()` produces the
exposition text for `/metrics`. (Placeholder interface: the prometheus_client multiprocess
implementation replaces the bodies; the signatures are the contract.)
"""

from __future__ import annotations


def setup() -> None:
    """Called once in Kamailio's main process before the workers fork."""


def observe_decision(
    method: str, service: str, action: str, rule: str, status: int, seconds: float
) -> None:
    """One routed initial request: its outcome and how long the plugin took."""


def count_as_failure(handling: str) -> None:
    """An AS failed (408, 5xx, no answer); `handling` is continue or terminate."""


def count_lookup(result: str) -> None:
    """A profile look-up: hit (worker cache), miss (asked Redis) or error."""


def observe_redis(seconds: float, error: bool) -> None:
    """One Redis round trip, and whether it failed."""


def render() -> tuple[str, bytes]:
    """Content type and body of the exposition."""
    return "text/plain; version=0.0.4; charset=utf-8", b""
