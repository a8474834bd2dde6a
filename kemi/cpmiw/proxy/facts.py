"""Reading the facts of a request: what routing needs, in one KSR call."""

from __future__ import annotations

import KSR  # provided by app_python3 inside Kamailio

from ..core.classify import ServiceHeaders
from ..core.routing import Request
from .ksr import all_lines, pv

# Shared variable (kamailio.cfg) where the change watcher publishes Redis's change stamp.
PUBLISHED_CHANGES = "$shv(cpmiw_changes)"
# What routing reads of every initial request, in Request's field order, then the published change
# stamp. Headers may be absent: each comes with its count, so that an absent one reads "" and not
# Kamailio's "<null>".
_FACTS = (
    "$ru",
    "$rm",
    "Accept-Contact",
    "Contact",
    "P-Preferred-Service",
    "P-Asserted-Service",
    "Content-Type",
    "$ci",
    "$cs",
    "$si",
    "Route",
    PUBLISHED_CHANGES,
)
# ASCII unit separator: no SIP header carries it unescaped. One that does (RFC 3261 lets a
# quoted-pair escape it) shows as a field too many, and the facts are then read one by one.
_SEPARATOR = "\x1f"


def _layout() -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """The pseudo-variables read for _FACTS (a header: its count, then every line of it joined by
    commas), and where each fact's value lies among them with its header's count (-1: none)."""
    variables: list[str] = []
    places: list[tuple[int, int]] = []
    for name in _FACTS:
        at = len(variables)
        if name.startswith("$"):
            places.append((at, -1))
            variables.append(name)
        else:
            places.append((at + 1, at))
            variables += [f"$hdrc({name})", all_lines(name)]
    return tuple(variables), tuple(places)


_FACT_VARIABLES, _PLACES = _layout()
# Every fact in one KSR call: Kamailio evaluates the format ($_s), parsed once per process.
ALL_FACTS = f"$_s({_SEPARATOR.join(_FACT_VARIABLES)})"


def _facts() -> list[str]:
    """The values of _FACTS for the request being routed; absent headers read ""."""
    values = str(KSR.pv.get(ALL_FACTS) or "").split(_SEPARATOR)
    if len(values) != len(_FACT_VARIABLES):  # a separator inside a header: one by one
        values = [pv(variable) for variable in _FACT_VARIABLES]
    return [values[at] if count < 0 or values[count] != "0" else "" for at, count in _PLACES]


def read_request() -> tuple[Request, str]:
    """The request being routed, and the change stamp published when it was read."""
    facts = _facts()
    ruri, method, accept, contact, preferred, asserted, content, call_id, cseq, source, route = (
        facts[:-1]
    )
    request = Request(
        ruri=ruri,
        headers=ServiceHeaders(method, accept, contact, preferred, asserted, content),
        call_id=call_id,
        cseq=cseq,
        source=source,
        route=route,
    )
    return request, facts[-1]
