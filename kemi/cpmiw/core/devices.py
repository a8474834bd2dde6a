"""A subscriber's registered devices: what each one registered, summarised per AOR for routing.

At REGISTER the adapter keeps, per contact URI, the feature parameters of its Contact entry
(htable `caps`: `;+g.3gpp.icsi-ref="urn%3A...";+g.oma.sip-im`), which say what the device takes
(its families: cpm, im, sms) and which caller preferences it matches (core/callerprefs.py).

Routing needs, for each messaging request, every registered device of the recipient. Reading them
from usrloc (reg_fetch_contacts: a copy of every contact, then one read per contact of htable
`caps`) was a tenth of a worker's time per MESSAGE. So at each REGISTER the adapter also writes
one summary per AOR in htable `devices` (kamailio.cfg): for each contact
`<expires> <q> <contact URI> <feature parameters>`, contacts separated by tabs (one line, so that
route[MEMO] can compare it). A request reads it in one call and drops the contacts expired since.

The summary follows REGISTERs (refresh, new device, de-registration) and expiry. A contact
removed behind the registrar's back (the `ul.rm` RPC) stays in it until it would have expired;
delivery to it then fails (480) and the adapter drops the summary, so that the next request
reads usrloc itself. An AOR without a summary is always read from usrloc.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from . import fields
from .callerprefs import is_feature
from .classify import device_families
from .services import Family

SUMMARY_TABLE = "devices"
Q_DEFAULT = 1000  # usrloc's q of a contact that gave none (kamailio.cfg: registrar default_q)


@dataclass(frozen=True)
class Device:
    """A registered contact: its URI, q-value (as usrloc keeps it: 0 to 1000) and the feature
    parameters of its Contact entry ("" when it registered none)."""

    uri: str
    q: int = Q_DEFAULT
    features: str = ""
    expires: int = 0  # Unix time; 0: never

    @functools.cached_property
    def families(self) -> frozenset[Family]:
        """What it takes; none when it registered no messaging tag."""
        return device_families(self.features)


@functools.lru_cache(maxsize=16384)
def usrloc_key(aor: str) -> str:
    """How usrloc (use_domain on) files a SIP AOR: `user@host`, host lower-cased, no port."""
    rest = aor.strip().strip("<>").split(":", 1)[-1].split(";", 1)[0].split("?", 1)[0]
    user, _, host = rest.rpartition("@")
    return f"{user}@{host.split(':', 1)[0].lower()}" if user else host.lower()


def registered_contacts(contact_header: str) -> list[tuple[str, str]]:
    """(URI, feature parameters) of each entry of a REGISTER's Contact header; `*` has none.

    The parameters are kept as written, in their order, with line breaks and tabs (which a
    quoted value may hold) turned into spaces: the summary separates contacts with tabs.
    """
    found = []
    for entry in fields.entries(contact_header):
        if entry.text == "*":
            continue
        features = "".join(p.span.text for p in fields.params(entry) if is_feature(p.name))
        found.append((fields.address_uri(entry.text), " ".join(features.split())))
    return found


def summary(devices: Iterable[Device]) -> str:
    """The summary of an AOR's devices, as `registered` reads it back."""
    return "\t".join(f"{d.expires} {d.q} {d.uri} {d.features}" for d in devices)


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> tuple[Device, ...]:
    found = []
    for contact in text.split("\t"):
        if contact:
            expires, q, uri, features = contact.split(" ", 3)
            found.append(Device(uri, int(q), features, int(expires)))
    return tuple(found)


def registered(text: str, now: float) -> list[Device]:
    """The devices of a summary still registered at `now`; ValueError when `text` is not a
    summary."""
    return [d for d in _parsed(text) if not d.expires or d.expires > now]


def next_expiry(text: str, now: float) -> float | None:
    """When the set of devices a summary says are registered at `now` next changes (a contact
    expires); None when none of them expires. ValueError when `text` is not a summary."""
    return min((d.expires for d in _parsed(text) if d.expires > now), default=None)
