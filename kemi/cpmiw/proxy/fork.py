"""Forking to the subscriber's devices, each with its own tag (the fork: core/branches.py).

The registrar's look-up gives every registered contact; the fork's tags, kept in the transaction
(AVP `cpmiw_fork`), travel with it. tm runs branch_route[DEVICE_BRANCH] (kamailio.cfg) for each
branch it creates, with the branch's contact as `$ru`: `branch()` presents the request there as
that device's service, a change that applies to that branch only, or has kamailio.cfg drop the
branch of a device left out. With several q-values, tm's serial forking (`t_load_contacts`,
`t_next_contacts`) relays one stage at a time, the next one from failure_route[DEVICE_FAILURE]
(proxy/fallback.py); a stage holding only devices left out is skipped.
"""

from __future__ import annotations

import traceback
from dataclasses import replace

import KSR  # provided by app_python3 inside Kamailio

from ..core.branches import Tags, decode
from ..core.classify import ServiceHeaders
from ..core.rewrite import header_edits
from ..core.services import Service
from ..settings import Settings
from .facts import read_request
from .ksr import append_header, pv

TAGS = "$avp(cpmiw_fork)"
DROP = "$var(cpmiw_drop)"  # set to 1 by branch(): kamailio.cfg drops the branch
BRANCH_ROUTE = "DEVICE_BRANCH"


def present(headers: ServiceHeaders, service: Service, target: Service, untrusted: bool) -> None:
    """Presents the request as `target` instead of `service`: swaps the feature tag in each
    header whose value changes (removed, then appended as one line, byte for byte).

    An untrusted sender's P-Asserted-Service was removed already: it stays removed.
    """
    if untrusted:
        headers = replace(headers, asserted_service="")
    for header, new in header_edits(headers, service, target).items():
        KSR.hdr.remove(header)
        if new is not None:
            append_header(header, new)


def _stage_contacts() -> list[str]:
    """The contacts of the destination set: the Request-URI and each branch."""
    count = int(pv("$(branch(count)[0])") or 0)
    return [pv("$ru"), *(pv(f"$(branch(uri)[{index}])") for index in range(count))]


def next_stage(tags: Tags) -> bool:
    """Loads the next stage of a serial fork that has a device to reach; False if none is left."""
    while KSR.tm.t_next_contacts() > 0:
        if any(tags.of(uri) is not None for uri in _stage_contacts()):
            return True
    return False


def start(tags: Tags) -> bool:
    """Prepares the relay of a request whose contacts were looked up: per-branch tags, and with
    several q-values the first stage. False when no contact of the fork is left to reach."""
    KSR.pv.sets(TAGS, tags.encode())
    KSR.tm.t_on_branch(BRANCH_ROUTE)
    if not tags.serial or not int(pv("$(branch(count)[0])") or 0):
        return True
    KSR.tm.t_load_contacts()
    return next_stage(tags)


class Branches:
    """branch_route[DEVICE_BRANCH]: one branch of a fork."""

    def __init__(self, settings: Settings) -> None:
        self._trusted = settings.rules.trusted_addresses

    def branch(self) -> None:
        try:
            tags = decode(pv(TAGS))
            target = tags.of(pv("$ru"))
            if target is None:
                KSR.pv.seti(DROP, 1)
            elif target is not tags.service:
                request, _ = read_request()
                untrusted = request.source not in self._trusted
                present(request.headers, tags.service, target, untrusted)
        except Exception:  # the branch goes as the request came: better than no branch
            KSR.err(f"cpmiw: branch not adapted call-id={pv('$ci')}: {traceback.format_exc()}\n")
