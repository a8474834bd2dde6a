"""What a subscriber's registered devices take, summarised per AOR for routing.

Routing needs, for each messaging request, the families every registered device of the
recipient takes. Reading them from usrloc (reg_fetch_contacts: a copy of every contact, then one
read per contact of htable `caps`) was a tenth of a worker's time per MESSAGE. So at each
REGISTER the adapter writes one summary per AOR in htable `devices` (kamailio.cfg): every
contact's expiry and families, e.g. `1795363264:cpm,sms 1795363300:im`. A request reads it in one
call and drops the contacts expired since.

The summary follows REGISTERs (refresh, new device, de-registration) and expiry. A contact
removed behind the registrar's back (the `ul.rm` RPC) stays in it until it would have expired;
delivery to it then fails (480) and the adapter drops the summary, so that the next request
reads usrloc itself. An AOR without a summary is always read from usrloc.
"""

from __future__ import annotations

import functools

from .services import Family, families_of_text, families_text

SUMMARY_TABLE = "devices"


@functools.lru_cache(maxsize=16384)
def usrloc_key(aor: str) -> str:
    """How usrloc (use_domain on) files a SIP AOR: `user@host`, host lower-cased, no port."""
    rest = aor.strip().strip("<>").split(":", 1)[-1].split(";", 1)[0].split("?", 1)[0]
    user, _, host = rest.rpartition("@")
    return f"{user}@{host.split(':', 1)[0].lower()}" if user else host.lower()


def summary(contacts: list[tuple[int, frozenset[Family]]]) -> str:
    """The summary of (expires, families) per contact; expires is a Unix time, 0 for never."""
    return " ".join(f"{expires}:{families_text(families)}" for expires, families in contacts)


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> tuple[tuple[int, frozenset[Family]], ...]:
    contacts = []
    for item in text.split():
        expires, colon, families = item.partition(":")
        if not colon:
            raise ValueError(f"not expires:families: {item!r}")
        contacts.append((int(expires), families_of_text(families)))
    return tuple(contacts)


def registered(text: str, now: float) -> list[frozenset[Family]]:
    """The families of each device in a summary still registered at `now`; ValueError when
    `text` is not a summary."""
    return [families for expires, families in _parsed(text) if not expires or expires > now]


def next_expiry(text: str, now: float) -> float | None:
    """When the set of devices a summary says are registered at `now` next changes (a contact
    expires); None when none of them expires. ValueError when `text` is not a summary."""
    return min((e for e, _ in _parsed(text) if e > now), default=None)
