"""From the facts of one initial request to a routing plan: the whole flow, without I/O.

The Kamailio adapter and `cpmiw explain` both call `plan()`; the profile look-up is the one
injected dependency (`Lookup`), so the proxy and the CLI cannot disagree about a request.

    returning from an AS with a valid marker -> deliver (never to an AS again)
    Request-URI not ours                     -> relay if addressed to an AS, else 403
    otherwise                                -> classify, look the recipient up, decide
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import fields, marker
from .classify import ServiceHeaders, classify
from .decision import Action, Decision, decide
from .identity import IdentityError, canonical
from .profile import Profile, ProfileError
from .services import Service
from .settings import Settings


class StoreError(RuntimeError):
    """The profile store could not be asked (down, slow, refused)."""


# Finds the profile owning a canonical identity; raises StoreError or ProfileError.
Lookup = Callable[[str], Profile | None]


@dataclass(frozen=True)
class Request:
    """What routing reads of an initial request."""

    ruri: str
    headers: ServiceHeaders  # carries the method
    call_id: str = ""
    cseq: str = ""  # the CSeq number
    source: str = ""  # the sender's IP address
    route: str = ""  # every Route header line, joined by commas

    @property
    def method(self) -> str:
        return self.headers.method

    @property
    def host(self) -> str:
        hostport = self.ruri.partition(":")[2].split(";", 1)[0].rpartition("@")[2]
        return hostport.split(":", 1)[0].lower()


@dataclass(frozen=True)
class Plan:
    """The decision for a request, with what it was based on."""

    service: Service
    decision: Decision
    identity: str | None = None
    profile: Profile | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def aor(self) -> str | None:
        """Where to look for the recipient's registered contacts (None: relay the R-URI)."""
        if self.decision.action not in (Action.DELIVER, Action.REWRITE):
            return None
        if self.profile is not None:
            return self.profile.registration_aor
        return None if self.decision.rule == ADDRESSED_TO_AS else self.identity


ADDRESSED_TO_AS = "addressed-to-as"
FOREIGN = Decision(Action.REJECT, "foreign-domain", 403, "Relaying Forbidden")
NOT_A_SUBSCRIBER = Decision(Action.REJECT, "not-a-subscriber", 404, "Not Found")
PROFILE_UNAVAILABLE = Decision(Action.REJECT, "profile-unavailable", 503, "Service Unavailable")


def plan(request: Request, settings: Settings, lookup: Lookup, now: float) -> Plan:
    service = classify(request.headers)
    returning, warnings = _returning_from_as(request, settings, now)
    if returning:
        return _returned(request, service, lookup)
    if not request.ruri.lower().startswith("tel:") and request.host not in settings.domains:
        if request.host in settings.as_hosts:
            return Plan(Service.NONE, Decision(Action.DELIVER, ADDRESSED_TO_AS), warnings=warnings)
        return Plan(Service.NONE, FOREIGN, warnings=warnings)
    try:
        identity = canonical(request.ruri)
    except IdentityError:
        return Plan(service, NOT_A_SUBSCRIBER, warnings=warnings)
    try:
        profile = lookup(identity)
    except (StoreError, ProfileError) as error:
        warnings += (f"profile of {identity} unavailable: {error}",)
        if settings.deliver_on_profile_error or service is Service.NONE:
            decision = Decision(Action.DELIVER, "profile-unavailable-deliver")
        else:
            decision = PROFILE_UNAVAILABLE
        return Plan(service, decision, identity, warnings=warnings)
    decision = decide(service, profile, settings.policy)
    return Plan(service, decision, identity, profile, warnings)


def _returned(request: Request, service: Service, lookup: Lookup) -> Plan:
    """Back from the AS: delivered to the recipient, never sent to an AS again."""
    decision = Decision(Action.DELIVER, "returned-from-as")
    try:
        identity = canonical(request.ruri)
        return Plan(service, decision, identity, lookup(identity))
    except (IdentityError, StoreError, ProfileError) as error:
        return Plan(service, decision, warnings=(f"returned request, recipient unknown: {error}",))


def _returning_from_as(
    request: Request, settings: Settings, now: float
) -> tuple[bool, tuple[str, ...]]:
    """True when the top Route holds our marker, valid for this request, from an AS address."""
    if f";{marker.PARAM}=" not in request.route:
        return False, ()
    top = fields.entries(request.route)[0]
    uri = top.text[top.text.find("<") + 1 : top.text.rfind(">")] if "<" in top.text else top.text
    uri_span = fields.Span(0, len(uri), uri)
    token = next((p.value for p in fields.params(uri_span) if p.name == marker.PARAM), None)
    if token is None:
        return False, ()
    if request.source not in settings.as_addresses:
        return False, (f"AS marker from non-AS address {request.source} ignored",)
    bound_to = marker.binding(request.call_id, request.cseq, request.method)
    if not marker.verify(settings.secret, token, bound_to, now):
        return False, (f"invalid or expired AS marker from {request.source} ignored",)
    return True, ()
