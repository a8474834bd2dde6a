"""From the facts of one initial request to a routing plan: the whole flow, without I/O.

The Kamailio adapter and `cpmiw explain` both call `plan()`; the profile look-up is the one
injected dependency (`Lookup`), so the proxy and the CLI cannot disagree about a request.

    returning from an AS with a valid marker -> deliver (never to an AS again)
    Request-URI not ours                     -> relay if addressed to an AS, else 403
    otherwise                                -> classify, look the recipient up, decide
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from . import fields, marker
from .classify import ServiceHeaders, classify
from .decision import Action, Decision, Devices, Policy, decide
from .identity import IdentityError, canonical
from .profile import Profile, ProfileError
from .services import CPM_SERVICES, Family, Service
from .settings import Settings, host_of


class StoreError(RuntimeError):
    """The profile store could not be asked (down, slow, refused)."""


# Finds the profile owning a canonical identity; raises StoreError or ProfileError.
Lookup = Callable[[str], Profile | None]
# The devices registered for an AOR, each as the families its Contact's feature tags name.
Registrations = Callable[[str], list[frozenset[Family]]]


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
    devices: Devices = None
    warnings: tuple[str, ...] = field(default=())
    untrusted: bool = False  # sender may not assert services: drop its P-Asserted-Service
    marker: str | None = None  # the valid AS marker the request came back with
    routed: bool = False  # the request carries Route headers (ours or preloaded): drop them

    @property
    def aor(self) -> str | None:
        """Where to look for the recipient's registered contacts (None: relay the R-URI)."""
        if self.decision.action not in (Action.DELIVER, Action.REWRITE):
            return None
        if self.profile is not None:
            return self.profile.registration_aor
        return None if self.decision.rule == ADDRESSED_TO_AS else self.identity


# Remembered per process: the same recipients are addressed again and again.
_canonical = functools.lru_cache(maxsize=16384)(canonical)

ADDRESSED_TO_AS = "addressed-to-as"
FOREIGN = Decision(Action.REJECT, "foreign-domain", 403, "Relaying Forbidden")
NOT_A_SUBSCRIBER = Decision(Action.REJECT, "not-a-subscriber", 404, "Not Found")
PROFILE_UNAVAILABLE = Decision(Action.REJECT, "profile-unavailable", 503, "Service Unavailable")


def plan(
    request: Request,
    settings: Settings,
    lookup: Lookup,
    registrations: Registrations,
    now: float,
    *,
    use_as: bool = True,
) -> Plan:
    """The plan for `request`; `use_as=False` when its AS failed with default handling continue."""
    untrusted = request.source not in settings.trusted_addresses
    routed = bool(request.route)
    service = classify(request.headers, trusted=not untrusted)
    token, warnings = _returning_from_as(request, settings, now)
    if token is not None:
        # Delivered with the tag the recipient understands, never handed to an AS again.
        rule, use_as = "returned-from-as", False
    elif not request.ruri.lower().startswith("tel:") and request.host not in settings.domains:
        decision = Decision(Action.DELIVER, ADDRESSED_TO_AS)
        if request.host not in settings.as_hosts:
            decision = FOREIGN
        return Plan(
            Service.NONE,
            decision,
            warnings=warnings,
            untrusted=untrusted,
            routed=routed,
        )
    else:
        rule = "" if use_as else "as-failed-continue"
    try:
        identity = _canonical(request.ruri)
        profile = lookup(identity)
    except IdentityError:
        return Plan(
            service,
            NOT_A_SUBSCRIBER,
            warnings=warnings,
            untrusted=untrusted,
            routed=routed,
        )
    except (StoreError, ProfileError) as error:
        lenient = settings.deliver_on_profile_error or service is Service.NONE or token is not None
        decision = Decision(Action.DELIVER, "profile-unavailable-deliver")
        return Plan(
            service,
            decision if lenient else PROFILE_UNAVAILABLE,
            identity,
            warnings=(*warnings, f"profile of {identity} unavailable: {error}"),
            untrusted=untrusted,
            routed=routed,
        )
    devices = None
    if profile is not None and not profile.barred and service.family is not None:
        devices = registrations(profile.registration_aor)
    decision = _decide(request, service, profile, devices, settings, use_as=use_as, rule=rule)
    return Plan(
        service,
        decision,
        identity,
        profile,
        devices,
        warnings,
        untrusted,
        token,
        bool(request.route),
    )


def _decide(
    request: Request,
    service: Service,
    profile: Profile | None,
    devices: Devices,
    settings: Settings,
    *,
    use_as: bool,
    rule: str,
) -> Decision:
    """The decision, with `rule` (when given) naming why it was reached."""
    answer = None
    if request.method == "OPTIONS" and profile is not None and settings.answer_options:
        answer = answer_options(profile, settings.policy)
    if answer is not None:
        return answer
    decision = decide(service, profile, settings.policy, devices, use_as=use_as)
    if decision.target is not None and host_of(decision.target) == request.source:
        # Sent by that very AS: not back to it, but to the recipient.
        rule = "from-as"
        decision = decide(service, profile, settings.policy, devices, use_as=False)
    if rule and decision.action is not Action.REJECT:
        decision = replace(decision, rule=rule)
    return decision


def answer_options(profile: Profile, policy: Policy) -> Decision | None:
    """A capability query the proxy answers for a subscriber without a CPM client.

    The answer advertises every CPM service the network can deliver to the subscriber through
    interworking, so that CPM clients learn they can still write. Subscribers with CPM (whose
    own clients answer) and barred ones get None: their query is routed as usual.
    """
    if profile.barred or profile.has(Family.CPM):
        return None
    services = tuple(
        service
        for service in CPM_SERVICES
        if decide(service, profile, policy).action is not Action.REJECT
    )
    return Decision(Action.ANSWER, "options-on-behalf", 200, "OK", capabilities=services)


def _returning_from_as(
    request: Request, settings: Settings, now: float
) -> tuple[str | None, tuple[str, ...]]:
    """The marker of the top Route when it is ours, valid for this request, from an AS address."""
    if f";{marker.PARAM}=" not in request.route:
        return None, ()
    top = fields.entries(request.route)[0]
    uri = top.text[top.text.find("<") + 1 : top.text.rfind(">")] if "<" in top.text else top.text
    uri_span = fields.Span(0, len(uri), uri)
    token = next((p.value for p in fields.params(uri_span) if p.name == marker.PARAM), None)
    if token is None:
        return None, ()
    if request.source not in settings.as_addresses:
        return None, (f"AS marker from non-AS address {request.source} ignored",)
    bound_to = marker.binding(request.call_id, request.cseq, request.method)
    if not marker.verify(settings.secret, token, bound_to, now):
        return None, (f"invalid or expired AS marker from {request.source} ignored",)
    return token, ()
