"""REGISTER, and the registered devices routing reads.

On each successful REGISTER (kamailio.cfg saves it without replying) the plugin notes what each
contact's device said it takes (htable `caps`) and rewrites the AOR's summary (htable `devices`,
core/devices.py) before the registrar's 200 is sent; routing reads the summary in one call, or
usrloc when there is none.
"""

from __future__ import annotations

import functools
import time
import traceback

import KSR  # provided by app_python3 inside Kamailio

from ..core import devices
from ..core.classify import registered_contacts
from ..core.services import DEVICE_TABLE, Family, families_of_text, families_text
from .ksr import all_lines, pv

# What a device registered it takes (htable `caps`), as families; a handful of distinct texts.
_tags = functools.lru_cache(maxsize=64)(families_of_text)
# The registered contacts fetched by reg_fetch_contacts(..., "cpmiw"): count, then each one's.
CONTACT_COUNT = "$ulc(cpmiw=>count)"


@functools.cache
def _contact(attribute: str, index: int) -> str:
    return f"$(ulc(cpmiw=>{attribute})[{index}])"


def _contacts(aor: str) -> list[tuple[int, frozenset[Family]]]:
    """Each contact of `aor` in usrloc: its expiry (Unix time, 0: never) and what it takes."""
    if KSR.registrar.reg_fetch_contacts("location", aor, "cpmiw") < 0:
        return []
    try:
        get, tags = KSR.pv.get, KSR.htable.sht_get
        return [
            (
                int(get(_contact("expires", index)) or 0),
                _tags(tags(DEVICE_TABLE, pv(_contact("addr", index))) or ""),
            )
            for index in range(int(get(CONTACT_COUNT) or 0))
        ]
    finally:
        KSR.registrar.reg_free_contacts("cpmiw")


class RegisteredDevices:
    """The recipient's registered devices, with what each registered it can take (a
    `routing.Registrations` for one worker), and the summary the last answer was read from."""

    def __init__(self) -> None:
        self.summary: tuple[str, str] | None = None  # (AOR, summary text) of the last answer

    def __call__(self, aor: str) -> list[frozenset[Family]]:
        self.summary = None
        text = KSR.htable.sht_get(devices.SUMMARY_TABLE, devices.usrloc_key(aor))
        if text is not None:
            try:
                found = devices.registered(str(text), time.time())
            except ValueError:
                KSR.warn(f"cpmiw: registrations of {aor} read from usrloc: bad summary\n")
            else:
                self.summary = aor, str(text)
                return found
        return [families for _, families in _contacts(aor)]


def forget(aor: str) -> None:
    """Drops the AOR's summary (its contacts went behind the registrar's back): usrloc from now."""
    KSR.htable.sht_rm(devices.SUMMARY_TABLE, devices.usrloc_key(aor))


def registered() -> None:
    """After a REGISTER was saved: what each contact's device takes, and the AOR's summary."""
    aor = pv("$tu")
    try:
        for uri, families in registered_contacts(pv(all_lines("Contact"))):
            KSR.htable.sht_sets(DEVICE_TABLE, uri, families_text(families))
        contacts = _contacts(aor)
    except Exception:
        error = traceback.format_exc()
        KSR.err(f"cpmiw: registration tags not kept call-id={pv('$ci')}: {error}\n")
        contacts = []  # no summary then: routing reads usrloc itself
    if contacts:
        KSR.htable.sht_sets(
            devices.SUMMARY_TABLE, devices.usrloc_key(aor), devices.summary(contacts)
        )
    else:
        forget(aor)
