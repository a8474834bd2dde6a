"""Remembering plain deliveries for kamailio.cfg's route[MEMO] (the entries: core/memo.py).

The plugin writes an entry after it delivered a request itself; route[MEMO] finds it for the next
request of the same shape and replays it without calling Python: the same header edits, the
registrar's look-up of the same AOR, t_relay(), a count in htable `tally` (rendered with the
plugin's metrics) and, with CPMIW_DECISION_LOG=all, the same decision log line.

Only what cannot differ is remembered: a deliver or rewrite to a subscriber whose devices were
read from their summary and all get the request alike (no tag of their own, no serial fork; an
SMS fallback is armed again by route[MEMO_SMS_FALLBACK]), from a sender that is not an AS
(whose requests may get conversation headers back), with no Route header and no warning.
Bounded: an entry lives at most CPMIW_MEMO_TTL less a random part of up to half (entries made
together, after a start, expire spread over half the TTL, not in a wave of misses) and not past
a contact expiry of its summary; none is written while less than half the shared memory is free.
"""

from __future__ import annotations

import random
import time

import KSR  # provided by app_python3 inside Kamailio

from ..core import devices, memo
from ..core.decision import Action, Decision
from ..core.rewrite import header_edits
from ..core.routing import Plan, Request
from ..settings import DecisionLog, Settings
from . import fallback
from .memory import FREE_PERCENT
from .registrations import RegisteredDevices

TABLE = "memo"  # htable (kamailio.cfg) of the remembered outcomes
TALLY = "tally"  # htable (kamailio.cfg): requests replayed, per labels
# The request's shape as route[MEMO] builds it into an outcome's key, with what of its Contact
# the outcome depends on (core.memo.contact_part): keep them the same as kamailio.cfg's.
_SHAPE = (
    "$_s($ru|$rm|$si|$(hdr(Accept-Contact)[*])|{contact}"
    "|$(hdr(P-Preferred-Service)[*])|$(hdr(P-Asserted-Service)[*])|$(hdr(Content-Type)[*])"
    "|$(hdr(Reject-Contact)[*])|$(hdr(Request-Disposition)[*]))"
)
SHAPES = {
    memo.ContactPart.NONE: _SHAPE.format(contact="*"),
    memo.ContactPart.PARAMS: _SHAPE.format(contact=">$(hdr(Contact)[*]{s.after,>})"),
    memo.ContactPart.WHOLE: _SHAPE.format(contact="$(hdr(Contact)[*])"),
}
_ITERATOR = "cpmiw_tally"
# 1 when route[MEMO] logs each replay as the plugin logs its decisions (CPMIW_DECISION_LOG=all).
LOGGED = "$shv(cpmiw_replays_logged)"


def publish(settings: Settings) -> None:
    """Tells kamailio.cfg whether to log replays; called by mod_init, before the fork."""
    KSR.pv.seti(LOGGED, int(settings.decision_log is DecisionLog.ALL))


def _free_enough() -> bool:
    """At least half of shared memory free, as the shared memory watcher last read it."""
    return int(KSR.pv.get(FREE_PERCENT) or 0) >= 50


class Memo:
    def __init__(
        self,
        ttl: float,
        as_addresses: frozenset[str],
        registered: RegisteredDevices,
        fallback_timeout: int,
    ) -> None:
        self._ttl = ttl
        self._fallback_timeout = fallback_timeout  # ms (CPMIW_FALLBACK_MS)
        self._as_addresses = as_addresses
        self._registered = registered

    def candidate(
        self, routing: Plan, request: Request, stamp: str
    ) -> tuple[str, memo.ContactPart] | None:
        """The shape of a request whose plan may be remembered once carried out, and what of
        its Contact the shape holds; None if it may not be.

        Read before the plan is carried out: delivering changes the Request-URI. Nothing is
        remembered before the change watcher published a stamp: the profiles' version is unknown.
        """
        decision = routing.decision
        if (
            self._ttl <= 0
            or not stamp
            or decision.action not in (Action.DELIVER, Action.REWRITE)
            or routing.routed
            or routing.warnings
            or routing.profile is None
            or (routing.fork is not None and not routing.fork.uniform)
            or request.source in self._as_addresses
            or self._registered.summary is None
            or self._registered.summary[0] != routing.profile.registration_aor
        ):
            return None
        edits = header_edits(request.headers, routing.service, decision.rewrite_to)
        part = memo.contact_part(
            request.headers, routing.service, edits, trusted=not routing.untrusted
        )
        try:
            shape = str(KSR.pv.get(SHAPES[part]))
        except UnicodeDecodeError:  # not UTF-8: a shape the plugin routes every time
            return None
        return (shape, part) if "\x00" not in shape else None

    def remember(
        self, shape: tuple[str, memo.ContactPart], stamp: str, routing: Plan, request: Request
    ) -> None:
        """Remembers a plan that was carried out as decided (`candidate` gave its shape)."""
        assert routing.profile is not None and self._registered.summary is not None
        aor, summary = self._registered.summary
        decision: Decision = routing.decision
        now = time.time()
        ttl = memo.lifetime(
            self._ttl * random.uniform(0.5, 1.0), devices.next_expiry(summary, now), now
        )
        edits = header_edits(
            request.headers, routing.service, decision.rewrite_to, drop_asserted=routing.untrusted
        )
        labels = memo.labels(request.method, routing.service, decision)
        sms_fallback = None
        if routing.sms_fallback is not None:
            armed = fallback.armed(
                routing.sms_fallback, routing.profile.subscriber, routing.service
            )
            sms_fallback = armed, self._fallback_timeout
        key, part = shape
        text = memo.outcome(labels, edits, aor, summary, sms_fallback, part)
        if not ttl or text is None or not _free_enough():
            return
        if KSR.htable.sht_is_null(TALLY, labels) > 0:
            KSR.htable.sht_seti(TALLY, labels, 0)
        KSR.htable.sht_setxs(TABLE, f"{stamp}{memo.SEPARATOR}{key}", text, ttl)


def tallies() -> dict[str, int]:
    """The requests route[MEMO] replayed, per labels (`core.memo.labels`), since the start."""
    counts: dict[str, int] = {}
    if KSR.htable.sht_iterator_start(_ITERATOR, TALLY) < 0:
        return counts
    try:
        while KSR.htable.sht_iterator_next(_ITERATOR) >= 0:
            key = KSR.pv.get(f"$shtitkey({_ITERATOR})")
            value = KSR.pv.get(f"$shtitval({_ITERATOR})")
            if key is not None and value is not None:
                counts[str(key)] = int(value)
    finally:
        KSR.htable.sht_iterator_end(_ITERATOR)
    return counts
