"""Small helpers over KSR shared by the adapter's modules."""

from __future__ import annotations

import KSR  # provided by app_python3 inside Kamailio

from ..core.decision import Decision


def pv(name: str) -> str:
    """A pseudo-variable's value as text; "" when it has none."""
    value = KSR.pv.get(name)
    return "" if value is None else str(value)


def all_lines(header: str) -> str:
    """The pseudo-variable of every line of `header`, joined by commas (Kamailio's joining)."""
    return f"$(hdr({header})[*])"


def reply(decision: Decision) -> None:
    KSR.sl.send_reply(decision.status, decision.reason)


def relay() -> None:
    if KSR.tm.t_relay() < 0:
        KSR.sl.sl_reply_error()
