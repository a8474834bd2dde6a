"""Reading the facts of a request: what routing needs, in one KSR call, whatever its bytes.

app_python3 decodes what Kamailio hands over as strict UTF-8: one byte that is not (a Latin-1
display name, a stray byte in a Call-ID) raises UnicodeDecodeError. The facts are then read
again in hex, which every byte survives. The header values a rewrite may hand back to Kamailio
keep their exact bytes (core.message.decode; ksr.append_header writes them back); the others
come as text that can be logged and passed to KSR (core.message.escape_bytes; the
Request-URI's bytes percent-encoded, so that it is routed as the URI it stands for).
"""

from __future__ import annotations

import KSR  # provided by app_python3 inside Kamailio

from ..core.classify import ServiceHeaders
from ..core.message import escape_bytes, escape_uri_bytes, is_plain
from ..core.routing import Request
from .ksr import all_lines, exact

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
    "Reject-Contact",
    "Request-Disposition",
    PUBLISHED_CHANGES,
)
# The facts a rewrite may write back to the request (proxy/delivery.py): read with their bytes.
_EXACT = frozenset({"Accept-Contact", "Contact", "P-Preferred-Service", "P-Asserted-Service"})
# A Request-URI's stray bytes are percent-encoded: routed as the URI they stand for.
_URI = "$ru"
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


def _values() -> tuple[list[str], bool]:
    """The value of each of _FACT_VARIABLES with its exact bytes, and whether all are plain
    text (UTF-8 without NUL: core.message.is_plain)."""
    try:
        joined = str(KSR.pv.get(ALL_FACTS) or "")
    except UnicodeDecodeError:
        joined = exact(ALL_FACTS)
    values = joined.split(_SEPARATOR)
    if len(values) != len(_FACT_VARIABLES):  # a separator inside a header: one by one
        values = [exact(variable) for variable in _FACT_VARIABLES]
    return values, is_plain(joined)


def _facts() -> list[str]:
    """The values of _FACTS for the request being routed; absent headers read ""."""
    values, plain = _values()
    facts = [values[at] if count < 0 or values[count] != "0" else "" for at, count in _PLACES]
    if plain:
        return facts
    return [_text(name, fact) for name, fact in zip(_FACTS, facts, strict=True)]


def _text(name: str, fact: str) -> str:
    if name in _EXACT:
        return fact
    return escape_uri_bytes(fact) if name == _URI else escape_bytes(fact)


def read_request() -> tuple[Request, str]:
    """The request being routed, and the change stamp published when it was read."""
    facts = _facts()
    (
        ruri, method, accept, contact, preferred, asserted, content, call_id, cseq, source, route,
        reject, disposition,
    ) = facts[:-1]  # fmt: skip
    request = Request(
        ruri=ruri,
        headers=ServiceHeaders(method, accept, contact, preferred, asserted, content),
        call_id=call_id,
        cseq=cseq,
        source=source,
        route=route,
        reject_contact=reject,
        disposition=disposition,
    )
    return request, facts[-1]
