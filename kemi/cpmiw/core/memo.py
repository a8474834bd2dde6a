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
  AS" depend on it. The Contact is left out (`*`) when the outcome cannot depend on it
  (`contact_free`): a chat INVITE's Contact names the sender's device, which would make every
  sender's first request to a recipient a new shape.
- <labels>: method/service/action/rule, the metrics' labels and the decision log's fields.
- <edits>: one character per header of `rewrite.EDITED`: `0` kept, `1` replaced by the value
  that follows, `2` removed.
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


def outcome(
    labels_text: str,
    edits: Mapping[str, str | None],
    aor: str,
    summary: str,
    sms_fallback: tuple[str, int] | None = None,
) -> str | None:
    """The text of an outcome entry; None when a value cannot be carried in one (a separator or
    a line break in it): that request shape is then always routed by the plugin.

    `sms_fallback`: what the transaction keeps for SMS fallback, and the devices' timer (ms).
    """
    codes = "".join("0" if h not in edits else "2" if edits[h] is None else "1" for h in EDITED)
    armed, timer = sms_fallback if sms_fallback is not None else ("", "")
    values = [
        *(edits.get(header) or "" for header in EDITED),
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


def contact_free(
    headers: ServiceHeaders, service: Service, edits: Mapping[str, str | None], *, trusted: bool
) -> bool:
    """Whether an outcome holds for the request whatever its Contact: the service was named
    before the Contact (classification takes the first source that names one) and the Contact
    is not rewritten."""
    if not headers.contact:
        return True
    named = classify(replace(headers, contact=""), trusted=trusted)
    return service is not Service.NONE and named is service and "Contact" not in edits
