"""Carrying a decision out without an AS: reject, rewrite the feature tag, deliver.

A `Delivery` is what this needs of a plan. It is small and plain so that it survives in the
transaction (an AVP) when the request goes to an AS first: the AS's default handling `continue`
then carries out the plan's fallback, decided with everything else, instead of deciding again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import KSR  # provided by app_python3 inside Kamailio

from ..core.decision import NOT_REGISTERED, Action, Decision
from ..core.rewrite import header_edits
from ..core.routing import Plan, Request
from ..core.services import Family, Service
from ..settings import Settings
from . import registrations
from .conversations import Conversations
from .ksr import append_header, relay, reply


@dataclass(frozen=True)
class Delivery:
    """A decision with what carrying it out needs of its plan."""

    service: Service  # the service the request asks for
    decision: Decision  # REJECT, DELIVER or REWRITE
    aor: str | None  # whose registered contacts to deliver to (None: the Request-URI)
    subscriber: str | None  # the recipient's subscriber id, when it has a profile
    untrusted: bool  # the sender's P-Asserted-Service was removed

    @classmethod
    def of(cls, routing: Plan, decision: Decision) -> Delivery:
        """`decision` (the plan's own, or its fallback) with what it needs of `routing`."""
        aor = replace(routing, decision=decision).aor
        subscriber = routing.profile.subscriber if routing.profile else None
        return cls(routing.service, decision, aor, subscriber, routing.untrusted)

    def encode(self) -> str:
        d = self.decision
        rewrite_to = d.rewrite_to.value if d.rewrite_to else None
        fields = [d.action.value, d.rule, d.status, d.reason, rewrite_to]
        return json.dumps([self.service.value, fields, self.aor, self.subscriber, self.untrusted])

    @classmethod
    def decode(cls, text: str) -> Delivery:
        service, (action, rule, status, reason, rewrite_to), aor, subscriber, untrusted = (
            json.loads(text)
        )
        rewrite = Service(rewrite_to) if rewrite_to else None
        decision = Decision(Action(action), rule, status, reason, rewrite_to=rewrite)
        return cls(Service(service), decision, aor, subscriber, untrusted)


class Deliverer:
    def __init__(self, settings: Settings, conversations: Conversations) -> None:
        self._settings = settings
        self._conversations = conversations

    def carry_out(self, delivery: Delivery, request: Request) -> Decision:
        """Returns the decision as finally taken (480 when nothing is registered)."""
        decision = delivery.decision
        if decision.action is Action.REJECT:
            self.reject(decision)
            return decision
        if decision.rewrite_to is not None:
            self._rewrite(delivery, request, decision.rewrite_to)
        delivered = decision.rewrite_to or delivery.service
        from_as = request.source in self._settings.rules.as_addresses
        if delivered.family is Family.CPM and from_as and delivery.subscriber is not None:
            self._conversations.restore(delivery.subscriber)
        return decision if self.deliver(delivery.aor) else NOT_REGISTERED

    def reject(self, decision: Decision) -> None:
        if decision.status == 503:
            KSR.hdr.append_to_reply(f"Retry-After: {self._settings.retry_after}\r\n")
        reply(decision)

    def deliver(self, aor: str | None) -> bool:
        """To the registered contacts of `aor` (None: to the R-URI); 480 when it has none."""
        if aor is not None and KSR.registrar.lookup_uri("location", aor) < 0:
            # Gone behind the registrar's back, if its summary said otherwise: usrloc from now on.
            registrations.forget(aor)
            reply(NOT_REGISTERED)
            return False
        relay()
        return True

    @staticmethod
    def _rewrite(delivery: Delivery, request: Request, target: Service) -> None:
        """Swaps the feature tag; each header is replaced only when its value changes.

        An untrusted sender's P-Asserted-Service was removed already: it stays removed.
        """
        headers = request.headers
        if delivery.untrusted:
            headers = replace(headers, asserted_service="")
        for header, new in header_edits(headers, delivery.service, target).items():
            KSR.hdr.remove(header)
            if new is not None:
                append_header(header, new)
