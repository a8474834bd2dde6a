"""The trust domain kamailio.cfg checks before routing (RFC 3325).

The addresses trusted to assert an identity or a service (the AS addresses and
CPMIW_TRUSTED_ADDRESSES, `Rules.trusted_addresses`) go into htable `trusted` once, at start, in
Kamailio's main process: the workers then check a request's source there ($sht(trusted=>$si))
without Python, and remove the P-Asserted-Identity of anyone else.
"""

from __future__ import annotations

import KSR  # provided by app_python3 inside Kamailio

from ..settings import Settings

TABLE = "trusted"  # htable of kamailio.cfg


def publish(settings: Settings) -> None:
    """Fills htable `trusted`; called by mod_init, before Kamailio forks its workers."""
    for address in sorted(settings.rules.trusted_addresses):
        KSR.htable.sht_seti(TABLE, address, 1)
