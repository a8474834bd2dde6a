"""Feature-tag rewriting CPM <-> IM as pure string functions.

Only the service identifier changes; every other parameter, tag and separator of the header stays
as the client wrote it. OMA SIMPLE IM has no ICSI, so:

- CPM -> IM: in Accept-Contact / Contact, the CPM ICSI leaves the `+g.3gpp.icsi-ref` list (the
  parameter goes when the list empties) and the IM tag takes its place; in P-Preferred-Service /
  P-Asserted-Service the CPM URN is removed (the header goes when it empties).
- IM -> CPM: in Accept-Contact / Contact, the IM tag is replaced by the CPM ICSI (joining an
  existing `+g.3gpp.icsi-ref` list if there is one); P-*-Service headers hold no IM identifier
  and stay as they are.
"""

from __future__ import annotations

import functools

from . import fields
from .classify import ServiceHeaders
from .services import ICSI_FEATURE, IM_TAG_FOR, Service, icsi_urn


# Both rewrites are remembered per process: clients of one kind send the same few header values,
# and a hit (a dictionary look-up) saves re-lexing the header for every request rewritten.
@functools.lru_cache(maxsize=1024)
def rewrite_feature_header(value: str, source: Service, target: Service) -> str:
    """Accept-Contact or Contact value with `source`'s tag replaced by `target`'s."""
    edits: list[tuple[fields.Span, str]] = []
    for entry in fields.entries(value):
        params = fields.params(entry)
        if target in IM_TAG_FOR:
            edits += _cpm_to_im(params, icsi_urn(source), IM_TAG_FOR[target])
        else:
            edits += _im_to_cpm(params, IM_TAG_FOR[source], icsi_urn(target))
    return fields.replace_spans(value, edits)


@functools.lru_cache(maxsize=1024)
def rewrite_service_header(value: str, source: Service, target: Service) -> str:
    """P-Preferred-Service / P-Asserted-Service value after the rewrite; "" means remove it."""
    if target in IM_TAG_FOR:
        urn = icsi_urn(source)
        entries = fields.entries(value)
        kept = [e.text for e in entries if e.text.strip("<>").lower() != urn]
        return value if len(kept) == len(entries) else ", ".join(kept)
    return value


def _cpm_to_im(params: list[fields.Param], urn: str, im_tag: str) -> list[tuple[fields.Span, str]]:
    for param in params:
        if param.name == ICSI_FEATURE and urn in fields.unquote_list(param.value):
            kept = [m for m in _members(param.value) if fields.unquote_list(m) != [urn]]
            new_param = f';{ICSI_FEATURE}="{",".join(kept)}"' if kept else ""
            has_tag = any(p.name == im_tag for p in params)
            return [(param.span, new_param + ("" if has_tag else f";{im_tag}"))]
    return []


def _im_to_cpm(params: list[fields.Param], im_tag: str, urn: str) -> list[tuple[fields.Span, str]]:
    tag = next((p for p in params if p.name == im_tag), None)
    if tag is None:
        return []
    encoded = urn.replace(":", "%3A")
    icsi = next((p for p in params if p.name == ICSI_FEATURE), None)
    if icsi is None:
        return [(tag.span, f';{ICSI_FEATURE}="{encoded}"')]
    if urn in fields.unquote_list(icsi.value):
        return [(tag.span, "")]
    members = ",".join([*_members(icsi.value), encoded])
    return [(tag.span, ""), (icsi.span, f';{ICSI_FEATURE}="{members}"')]


def _members(param_value: str | None) -> list[str]:
    """The raw (still encoded) members of a quoted feature value."""
    inner = (param_value or "").strip().strip('"')
    return [member.strip() for member in inner.split(",") if member.strip()]


# The headers a rewrite may change, in the order the proxy edits them.
EDITED = ("Accept-Contact", "Contact", "P-Preferred-Service", "P-Asserted-Service")


def header_edits(
    headers: ServiceHeaders,
    source: Service,
    target: Service | None,
    *,
    drop_asserted: bool = False,
) -> dict[str, str | None]:
    """The headers of a request that change, with their new value (None: removed).

    `target` None: no rewrite. `drop_asserted`: the sender may not assert services, so its
    P-Asserted-Service goes, whatever the rewrite.
    """
    values = (
        (headers.accept_contact, rewrite_feature_header),
        (headers.contact, rewrite_feature_header),
        (headers.preferred_service, rewrite_service_header),
        (headers.asserted_service, rewrite_service_header),
    )
    edits: dict[str, str | None] = {}
    for header, (old, rewrite) in zip(EDITED, values, strict=True):
        if not old:
            continue
        if header == "P-Asserted-Service" and drop_asserted:
            edits[header] = None
        elif target is not None and (new := rewrite(old, source, target)) != old:
            edits[header] = new or None
    return edits
