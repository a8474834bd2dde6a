"""Carrying a decision out without an AS: reject, or deliver to the subscriber's devices.

A `Delivery` is what this needs of a plan. It is small and plain so that it survives in the
transaction (an AVP) when the request goes to an AS first: the AS's default handling `continue`
then carries out the plan's fallback, decided with everything else, instead of deciding again.

Delivering to devices: when every device gets the same request at once (one device, or several
alike), the request itself is presented as the decision says and relayed to every registered
contact; otherwise each branch gets its own tag (proxy/fork.py). Either way the request may be
watched for a serial fork's next stage and for SMS fallback (proxy/fallback.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import KSR  # provided by app_python3 inside Kamailio

from ..core.branches import Fork, Tags, decode
from ..core.decision import NOT_REGISTERED, Action, Decision
from ..core.routing import Plan, Request
from ..core.services import Family, Service
from ..settings import Settings
from . import fallback, fork, registrations
from .conversations import Conversations
from .ksr import relay, reply


@dataclass(frozen=True)
class Delivery:
    """A decision with what carrying it out needs of its plan."""

    service: Service  # the service the request asks for
    decision: Decision  # REJECT, DELIVER or REWRITE
    aor: str | None  # whose registered contacts to deliver to (None: the Request-URI)
    subscriber: str | None  # the recipient's subscriber id, when it has a profile
    untrusted: bool  # the sender's P-Asserted-Service was removed
    tags: Tags | None = None  # each branch's tag (None: every device as the decision says)
    sms_fallback: str | None = None  # the IP-SM-GW, should no device take it

    @classmethod
    def _of(
        cls, routing: Plan, decision: Decision, fork: Fork | None, sms_fallback: str | None
    ) -> Delivery:
        aor = (
            routing.aor if decision is routing.decision else replace(routing, decision=decision).aor
        )
        subscriber = routing.profile.subscriber if routing.profile else None
        devices = routing.devices
        tags = None
        if fork is not None and devices is not None and not fork.uniform:
            tags = Tags.of_fork(fork, devices)
        return cls(
            routing.service, decision, aor, subscriber, routing.untrusted, tags, sms_fallback
        )

    @classmethod
    def of(cls, routing: Plan) -> Delivery:
        """The plan's own decision."""
        return cls._of(routing, routing.decision, routing.fork, routing.sms_fallback)

    @classmethod
    def fallback_of(cls, routing: Plan) -> Delivery:
        """The plan's fallback, should its AS fail."""
        assert routing.fallback is not None
        return cls._of(routing, routing.fallback, routing.fallback_fork, None)

    def encode(self) -> str:
        d = self.decision
        rewrite_to = d.rewrite_to.value if d.rewrite_to else None
        fields = [d.action.value, d.rule, d.status, d.reason, rewrite_to]
        tags = self.tags.encode() if self.tags else None
        return json.dumps(
            [self.service.value, fields, self.aor, self.subscriber, self.untrusted, tags]
        )

    @classmethod
    def decode(cls, text: str) -> Delivery:
        service, (action, rule, status, reason, rewrite_to), aor, subscriber, untrusted, tags = (
            json.loads(text)
        )
        rewrite = Service(rewrite_to) if rewrite_to else None
        decision = Decision(Action(action), rule, status, reason, rewrite_to=rewrite)
        return cls(
            Service(service),
            decision,
            aor,
            subscriber,
            untrusted,
            decode(tags) if tags else None,
        )


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
        tags = delivery.tags
        if tags is not None:
            services = {t for t in tags.by_uri.values() if t is not None}
        else:
            services = {decision.rewrite_to or delivery.service}
            if decision.rewrite_to is not None:
                fork.present(
                    request.headers, delivery.service, decision.rewrite_to, delivery.untrusted
                )
        from_as = request.source in self._settings.rules.as_addresses
        cpm = any(service.family is Family.CPM for service in services)
        if cpm and from_as and delivery.subscriber is not None:
            self._conversations.restore(delivery.subscriber)
        if delivery.sms_fallback is not None and delivery.subscriber is not None:
            fallback.arm(
                self._settings, delivery.sms_fallback, delivery.subscriber, delivery.service
            )
        elif tags is not None and tags.serial:
            fallback.watch()
        delivered = self.deliver(delivery.aor, tags)
        return decision if delivered else NOT_REGISTERED

    def reject(self, decision: Decision) -> None:
        if decision.status == 503:
            KSR.hdr.append_to_reply(f"Retry-After: {self._settings.retry_after}\r\n")
        reply(decision)

    def deliver(self, aor: str | None, tags: Tags | None = None) -> bool:
        """To the registered contacts of `aor` (None: to the R-URI), each with its tag when
        `tags` are given; 480 when it has none."""
        if aor is not None and KSR.registrar.lookup_uri("location", aor) < 0:
            # Gone behind the registrar's back, if its summary said otherwise: usrloc from now on.
            registrations.forget(aor)
            reply(NOT_REGISTERED)
            return False
        if tags is not None and not fork.start(tags):
            reply(NOT_REGISTERED)
            return False
        relay()
        return True
