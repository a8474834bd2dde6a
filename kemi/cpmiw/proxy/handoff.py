"""The AS hand-off (ISC style) and the AS's default handling.

A request for an AS goes there with a signed route back to this proxy. The Route header is added
in branch_route[AS_BRANCH] (kamailio.cfg), so that a branch created later by the default handling
goes without it. If the AS fails (408, 5xx, no answer in time) before any provisional response,
failure_route[AS_FAILURE] calls `failed()`: `continue` carries out the plan's fallback (kept in
the transaction), `terminate` lets tm send the AS's failure to the caller.
"""

from __future__ import annotations

import secrets
import time
import traceback

import KSR  # provided by app_python3 inside Kamailio

from .. import metrics
from ..core import marker
from ..core.decision import Action
from ..core.routing import Plan, Request
from ..core.services import Family
from ..settings import Settings
from ..store.markers import HonouredMarkers
from ..store.redis import StoreError
from .conversations import Conversations
from .delivery import Deliverer, Delivery
from .facts import read_request
from .ksr import pv, relay
from .log import record

FALLBACK = "$avp(cpmiw_fallback)"  # the plan's fallback, encoded (delivery.Delivery)
# htable (kamailio.cfg) of the AS markers this proxy honoured, kept longer than a marker lives.
MARKERS = "markers"


class HandOff:
    def __init__(
        self,
        settings: Settings,
        deliverer: Deliverer,
        conversations: Conversations,
        honoured: HonouredMarkers,
    ) -> None:
        self._settings = settings
        self._deliverer = deliverer
        self._conversations = conversations
        self._honoured = honoured

    def first_use(self, token: str) -> bool:
        """Whether a valid marker is honoured for the first time (routing.FirstUse).

        This proxy's own record (htable, shared by its workers) answers a local replay for free;
        then the record every proxy shares (Redis) is asked, so that a marker honoured by another
        proxy, or by this one before a restart, is refused too. If Redis cannot be asked, the
        marker is honoured on the local record alone (logged and counted): sending the request
        to its AS once more would be worse than a replay window while Redis is out.
        """
        nonce = marker.nonce_of(token)
        if KSR.htable.sht_get(MARKERS, nonce) is not None:
            metrics.count_marker("replayed")
            return False
        KSR.htable.sht_seti(MARKERS, nonce, 1)
        try:
            first = self._honoured.first_use(nonce)
        except StoreError as error:
            KSR.warn(f"cpmiw: AS marker honoured on this proxy's record only: {error}\n")
            metrics.count_marker("honoured-unshared")
            return True
        metrics.count_marker("honoured" if first else "replayed")
        return first

    def send(self, routing: Plan, request: Request, as_uri: str) -> None:
        """Sends the request to the AS with a signed route back to this proxy; if the AS fails,
        the profile's default handling applies."""
        sms = routing.decision.action is Action.TO_IP_SM_GW
        if sms and routing.service.family is Family.CPM and routing.profile is not None:
            self._conversations.remember(routing.profile.subscriber)
        handling = routing.profile.as_failure.value if routing.profile else "continue"
        KSR.pv.sets("$avp(cpmiw_as_failure)", handling)
        if routing.fallback is not None:
            KSR.pv.sets(FALLBACK, Delivery.fallback_of(routing).encode())
        KSR.tm.t_on_reply("AS_REPLY")
        KSR.tm.t_on_failure("AS_FAILURE")
        self.route(request, as_uri)
        relay()

    def route(self, request: Request, as_uri: str) -> None:
        """Routes the request to the AS, ISC style, on the next relay: the AS's route, then a
        signed one back to this proxy, added by branch_route[AS_BRANCH]."""
        settings = self._settings
        bound_to = marker.binding(request.call_id, request.cseq, request.method)
        token = marker.issue(
            settings.rules.secrets[0],
            bound_to,
            time.time(),
            settings.marker_ttl,
            secrets.token_bytes(marker.NONCE_BYTES),
        )
        own = f"sip:{settings.route_host};lr;{marker.PARAM}={token}"
        first = as_uri if ";lr" in as_uri.lower() else f"{as_uri};lr"
        KSR.pv.sets("$avp(cpmiw_route)", f"<{first}>, <{own}>")
        KSR.setdsturi(as_uri)
        KSR.tm.t_on_branch("AS_BRANCH")
        KSR.tm.t_set_fr(0, settings.as_timeout)

    def failed(self) -> None:
        """failure_route[AS_FAILURE]: the AS answered 408 / 5xx, or nothing in time.

        Default handling applies only when the AS sent no provisional response: `continue`
        delivers as if there were no AS; `terminate` lets tm send the AS's failure (408 Request
        Timeout when it did not answer) to the caller.
        """
        call_id = pv("$ci")
        try:
            status = int(pv("$T_reply_code") or 0)
            if pv("$avp(cpmiw_as_progress)") or not (status == 408 or 500 <= status < 600):
                return
            handling = pv("$avp(cpmiw_as_failure)") or "continue"
            metrics.count_as_failure(handling)
            KSR.warn(
                f"cpmiw: AS failed with {status}, default handling {handling} call-id={call_id}\n"
            )
            if handling != "continue":
                return
            KSR.pv.unset("$avp(cpmiw_route)")
            KSR.resetdsturi()
            started = time.perf_counter()
            request, _ = read_request()
            fallback = Delivery.decode(pv(FALLBACK))
            decision = self._deliverer.carry_out(fallback, request)
            record(self._settings, request, fallback.service, decision, (), started)
        except Exception:
            KSR.err(
                f"cpmiw: AS default handling failed call-id={call_id}: {traceback.format_exc()}\n"
            )
