"""Routing outcomes remembered for kamailio.cfg to replay without Python: their text.

A plain delivery (deliver, or rewrite the feature tag and deliver, to a subscriber's registered
devices) comes out the same for every request of the same shape to the same subscriber, as long
as the profiles and the subscriber's registrations stay as they were. So the proxy remembers it
in shared memory (htable `memo`), and kamailio.cfg's route[MEMO] replays it natively: one hash
look-up and a comparison instead of the plugin's Python, which costs more than all of Kamailio's
own work on a MESSAGE (bench/README.md). One entry per request shape, fields separated by `|`:

    <stamp>|<shape> -> <labels>|<edits>|<Accept-Contact>|<Contact>|<P-Preferred-Service>|
                       <P-Asserted-Service>|<usrloc key>|<AOR>|<devices summary>|
                       <SMS fallback>|<fallback ms>

- <stamp>: the change stamp the change watcher publishes: a profile written anywhere gives new
  keys, so nothing remembered from before the write is found again.
- <shape>: every value of the request routing reads (`SHAPES` in proxy/memo.py, the very text
  kamailio.cfg builds), the Request-URI and the sender's address included: trust and "from an
  AS" depend on it. Of the Contact, only what the outcome depends on (`contact_part`): nothing
  (`*`) when the service was named before it and it is not rewritten; its header parameters
  (`>` and what follows its one name-addr) when only they are rewritten (a chat INVITE to an
  IM-only recipient); else all of it. A chat INVITE's Contact names the sender's device, which
  would otherwise make every sender's first request to a recipient a new shape.
- <labels>: method/service/action/rule, the metrics' labels and the decision log's fields.
- <edits>: one character per header of `rewrite.EDITED`: `0` kept, `1` replaced by the value
  that follows, `2` removed, `3` (Contact) its header parameters replaced by the value that
  follows: what comes before its first `>` is this request's own.
- <usrloc key>, <AOR>: whose devices the request goes to; <devices summary>: the AOR's summary
  (core/devices.py) the decision was made with. kamailio.cfg replays the entry only while the
  AOR's summary is still that one: a REGISTER changes it. An entry lives no longer than the next
  contact expiry of its summary.
- <SMS fallback>, <fallback ms>: for a subscriber whose devices' failure falls back to SMS, what
  the plugin keeps in the transaction for it (proxy/fallback.py) and the devices' final-response
  timer; both empty otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from enum import Enum

from .classify import ServiceHeaders, classify
from .decision import Decision
from .devices import usrloc_key
from .rewrite import EDITED
from .services import Service

SEPARATOR = "|"
LABELS = "/"


def labels(method: str, service: Service, decision: Decision) -> str:
    """The labels of an outcome: `MESSAGE/cpm.msg/rewrite/interworking-rewrite`."""
    return LABELS.join((method, service.value, decision.action.value, decision.rule))


def split_labels(text: str) -> tuple[str, str, str, str] | None:
    """(method, service, action, rule) of `labels()`; None for any other text."""
    parts = text.split(LABELS)
    if len(parts) != 4 or not all(parts):
        return None
    method, service, action, rule = parts
    return method, service, action, rule


class ContactPart(Enum):
    """What of the request's Contact an outcome depends on: what of it the shape holds."""

    NONE = "none"
    PARAMS = "params"  # the header parameters after its one name-addr
    WHOLE = "whole"


def outcome(
    labels_text: str,
    edits: Mapping[str, str | None],
    aor: str,
    summary: str,
    sms_fallback: tuple[str, int] | None = None,
    contact: ContactPart = ContactPart.WHOLE,
) -> str | None:
    """The text of an outcome entry; None when a value cannot be carried in one (a separator or
    a line break in it): that request shape is then always routed by the plugin.

    `sms_fallback`: what the transaction keeps for SMS fallback, and the devices' timer (ms).
    `contact`: PARAMS carries the rewritten Contact's header parameters only (code `3`).
    """
    codes = "".join("0" if h not in edits else "2" if edits[h] is None else "1" for h in EDITED)
    carried = dict(edits)
    if contact is ContactPart.PARAMS:
        carried["Contact"] = _params(edits.get("Contact") or "") or ""
        position = EDITED.index("Contact")
        codes = codes[:position] + "3" + codes[position + 1 :]
    armed, timer = sms_fallback if sms_fallback is not None else ("", "")
    values = [
        *(carried.get(header) or "" for header in EDITED),
        usrloc_key(aor),
        aor,
        summary,
        armed,
        str(timer),
    ]
    if any(SEPARATOR in v or "\r" in v or "\n" in v for v in values):
        return None
    return SEPARATOR.join((labels_text, codes, *values))


def lifetime(ttl: float, next_expiry: float | None, now: float) -> int:
    """Whole seconds an entry may live: at most `ttl`, and not past the next contact expiry of
    the summary it was decided with; 0 means not worth remembering."""
    if next_expiry is not None:
        ttl = min(ttl, next_expiry - now)
    return max(int(ttl), 0)


def contact_part(
    headers: ServiceHeaders, service: Service, edits: Mapping[str, str | None], *, trusted: bool
) -> ContactPart:
    """What of the request's Contact an outcome depends on.

    NONE: the service was named before the Contact (classification takes the first source that
    names one) and the Contact is not rewritten. PARAMS: the same, but the Contact is rewritten,
    and it is one name-addr whose rewrite changed its header parameters only: the rewrite reads
    nothing else of it, so a replay keeps the request's own name-addr (a sender's device) and
    puts the remembered parameters after it. WHOLE otherwise.
    """
    if not headers.contact:
        return ContactPart.NONE
    named = classify(replace(headers, contact=""), trusted=trusted)
    if service is Service.NONE or named is not service:
        return ContactPart.WHOLE
    if "Contact" not in edits:
        return ContactPart.NONE
    old, new = headers.contact, edits["Contact"]
    kept = new is not None and new.partition(">")[0] == old.partition(">")[0]
    if kept and _params(old) is not None and _params(new or "") is not None:
        return ContactPart.PARAMS
    return ContactPart.WHOLE


def _params(value: str) -> str | None:
    """The header parameters of a Contact that is one name-addr (`<uri>;...`): what follows its
    first `>`; None for any other Contact. Nothing after that `>` may be a `<` or a `>` (a second
    name-addr, or a `>` inside a quoted display name), so that a request's own text after its
    first `>` equals a remembered one only when it too is those parameters."""
    head, closed, params = value.partition(">")
    if not closed or "<" not in head or not params.startswith(";"):
        return None
    return None if "<" in params or ">" in params else params
