"""Initial requests (kamailio.cfg: everything but REGISTER, CANCEL, ACK and in-dialog ones):
read the request, plan it once, carry the plan out, record the decision."""

from __future__ import annotations

import time
import traceback

import KSR  # provided by app_python3 inside Kamailio

from .. import metrics
from ..core.decision import Action, Decision
from ..core.message import escape_bytes
from ..core.routing import Plan, Request, plan
from ..core.services import ICSI_FEATURE, icsi_urn
from ..settings import Settings
from ..store.cache import CachedProfiles
from .delivery import Deliverer, Delivery
from .facts import read_request
from .handoff import HandOff
from .ksr import pv, reply
from .log import record
from .memo import Memo
from .registrations import RegisteredDevices


class InitialRouting:
    def __init__(
        self,
        settings: Settings,
        profiles: CachedProfiles,
        registered: RegisteredDevices,
        deliverer: Deliverer,
        handoff: HandOff,
        memo: Memo,
    ) -> None:
        self._settings = settings
        self._profiles = profiles
        self._registered = registered
        self._deliverer = deliverer
        self._handoff = handoff
        self._memo = memo
        self.stamp_seen = ""  # the published change stamp, as read with the request being routed

    def route(self) -> None:
        """Routes one initial request; an unexpected error is logged and answered 500."""
        started = time.perf_counter()
        request = None
        try:
            request, self.stamp_seen = read_request()
            routing = plan(
                request,
                self._settings.rules,
                self._profiles.lookup,
                self._registered,
                time.time(),
                self._handoff.first_use,
            )
            decision = self._apply(routing, request)
            record(self._settings, request, routing.service, decision, routing.warnings, started)
        except Exception:
            call_id = request.call_id if request else pv("$ci")
            error = escape_bytes(traceback.format_exc())
            KSR.err(f"cpmiw: internal error call-id={call_id}: {error}\n")
            KSR.sl.send_reply(500, "Internal Server Error")
            metrics.observe_decision(pv("$rm"), "unknown", "error", "internal-error", 500, 0.0)

    def _apply(self, routing: Plan, request: Request) -> Decision:
        """Carries the plan out; returns the decision as finally taken (480 if unregistered)."""
        # Our own route was consumed; routes preloaded by a sender are not honoured.
        if routing.routed:
            KSR.hdr.remove("Route")
        if routing.untrusted and request.headers.asserted_service:
            KSR.hdr.remove("P-Asserted-Service")
        decision = routing.decision
        if self._settings.shadow and routing.identity is not None:
            profile = routing.profile
            self._deliverer.deliver(profile.registration_aor if profile else routing.identity)
            return decision
        if decision.action is Action.ANSWER:
            self._answer_options(decision)
            return decision
        if decision.target is not None:
            self._handoff.send(routing, request, decision.target)
            return decision
        shape = self._memo.candidate(routing, request, self.stamp_seen)
        taken = self._deliverer.carry_out(Delivery.of(routing), request)
        if shape is not None and taken is decision:
            self._memo.remember(shape, self.stamp_seen, routing, request)
        return taken

    @staticmethod
    def _answer_options(decision: Decision) -> None:
        """Answers a capability query with what the network can deliver to the subscriber."""
        urns = ",".join(icsi_urn(service).replace(":", "%3A") for service in decision.capabilities)
        KSR.hdr.append_to_reply(f'Contact: <{pv("$ru")}>;{ICSI_FEATURE}="{urns}"\r\n')
        KSR.hdr.append_to_reply("Allow: INVITE, ACK, CANCEL, BYE, MESSAGE, OPTIONS\r\n")
        reply(decision)
