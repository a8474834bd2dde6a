"""From the facts of one initial request to a routing plan: the whole flow, without I/O.

The Kamailio adapter and `cpmiw explain` both call `plan()`; what it asks of the world is
injected (`Lookup`, `Registrations`, `FirstUse`), so the proxy and the CLI cannot disagree about a
request. Each request is decided once: the plan also carries what to do if the AS it names fails
(`Plan.fallback`), so the AS's default handling applies that instead of deciding again.

    returning from an AS with a valid marker -> deliver (never to an AS again)
    Request-URI not ours                     -> relay if addressed to an AS, else 403
    otherwise                                -> classify, look the recipient up, decide
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from . import fields, marker
from .branches import Fork, fork
from .classify import ServiceHeaders, classify
from .decision import NOT_REGISTERED, Action, Decision, Policy, decide
from .devices import Device
from .identity import IdentityError, canonical, host_of
from .profile import Profile, ProfileError
from .services import CPM_SERVICES, Family, Service


class UnavailableError(RuntimeError):
    """What a `Lookup` raises when it cannot answer (the profile store is down, slow, refused):
    not the same as an answer of "no such subscriber"."""


class NotReadyError(UnavailableError):
    """What a `Lookup` raises when the profile store holds no data set (empty, or wiped): its
    silence about a subscriber says nothing until the data is back."""


# Finds the profile owning a canonical identity; raises UnavailableError or ProfileError.
Lookup = Callable[[str], Profile | None]
# The devices registered for an AOR.
Registrations = Callable[[str], list[Device]]
# Whether a valid AS marker is honoured for the first time, recording that it now is: a second
# use is a replay.
FirstUse = Callable[[str], bool]


def unrecorded(_token: str) -> bool:
    """A `FirstUse` for what only looks (`cpmiw explain`, tests): every marker is new."""
    return True


@dataclass(frozen=True)
class Rules:
    """What routing needs of the proxy's settings (settings.py reads them from CPMIW_*)."""

    domains: frozenset[str]  # served domains: their Request-URIs are routed
    policy: Policy
    as_addresses: frozenset[str]  # may send requests back from an AS
    trusted_addresses: frozenset[str]  # may assert services (P-Asserted-Service)
    secrets: tuple[bytes, ...]  # HMAC keys of the AS markers: the current one, then the previous
    deliver_on_profile_error: bool
    answer_options: bool  # answer OPTIONS for subscribers without CPM

    @property
    def as_targets(self) -> frozenset[tuple[str, int]]:
        """(host, port) of the default ASes: requests addressed to them are relayed, not routed.
        Another port of an AS host is not an AS: the proxy relays nowhere else."""
        return frozenset(target_of(uri) for uri in (self.policy.im_as, self.policy.ip_sm_gw))


def target_of(uri: str) -> tuple[str, int]:
    """The host (lower-cased) and port a SIP URI addresses; without a port, 5060, or 5061 for
    `sips:` and `transport=tls` (RFC 3261 19.1.2). A port that is not a number gives 0."""
    scheme, _, rest = uri.partition(":")
    address, *params = rest.split("?", 1)[0].split(";")
    hostport = address.rpartition("@")[2]
    after_host = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
    port = after_host.partition(":")[2]
    if not port:
        tls = scheme.lower() == "sips" or any(p.strip().lower() == "transport=tls" for p in params)
        return host_of(uri), 5061 if tls else 5060
    valid = port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535
    return host_of(uri), int(port) if valid else 0


@dataclass(frozen=True)
class Request:
    """What routing reads of an initial request."""

    ruri: str
    headers: ServiceHeaders  # carries the method
    call_id: str = ""
    cseq: str = ""  # the CSeq number
    source: str = ""  # the sender's IP address
    route: str = ""  # every Route header line, joined by commas
    reject_contact: str = ""  # every line joined by commas, as Accept-Contact in `headers`
    disposition: str = ""  # Request-Disposition

    @property
    def method(self) -> str:
        return self.headers.method

    @property
    def host(self) -> str:
        return host_of(self.ruri)


@dataclass(frozen=True)
class Plan:
    """The decision for a request, with what it was based on."""

    service: Service
    decision: Decision
    identity: str | None = None
    profile: Profile | None = None
    devices: list[Device] | None = None  # registered devices (None: not asked)
    warnings: tuple[str, ...] = field(default=())
    untrusted: bool = False  # sender may not assert services: drop its P-Asserted-Service
    marker: str | None = None  # the valid AS marker the request came back with
    routed: bool = False  # the request carries Route headers (ours or preloaded): drop them
    fallback: Decision | None = None  # to an AS: the decision should the AS fail (`continue`)
    fork: Fork | None = None  # the decision delivers to these devices (core/branches.py)
    fallback_fork: Fork | None = None  # the fallback's
    sms_fallback: str | None = None  # the IP-SM-GW that gets the request if no device takes it

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
STORE_NOT_READY = Decision(Action.REJECT, "store-not-ready", 503, "Service Unavailable")


def plan(
    request: Request,
    rules: Rules,
    lookup: Lookup,
    registrations: Registrations,
    now: float,
    first_use: FirstUse = unrecorded,
) -> Plan:
    """The plan for `request`, decided once."""
    untrusted = request.source not in rules.trusted_addresses
    routed = bool(request.route)
    service = classify(request.headers, trusted=not untrusted)
    token, warnings = _returning_from_as(request, rules, now, first_use)
    if (
        token is None
        and not request.ruri.lower().startswith("tel:")
        and (request.host not in rules.domains)
    ):
        decision = Decision(Action.DELIVER, ADDRESSED_TO_AS)
        if target_of(request.ruri) not in rules.as_targets:
            decision = FOREIGN
        return Plan(Service.NONE, decision, warnings=warnings, untrusted=untrusted, routed=routed)
    try:
        identity = _canonical(request.ruri)
        profile = lookup(identity)
    except IdentityError:
        return Plan(
            service, NOT_A_SUBSCRIBER, warnings=warnings, untrusted=untrusted, routed=routed
        )
    except (UnavailableError, ProfileError) as error:
        lenient = rules.deliver_on_profile_error or service is Service.NONE or token is not None
        decision = Decision(Action.DELIVER, "profile-unavailable-deliver")
        failed = STORE_NOT_READY if isinstance(error, NotReadyError) else PROFILE_UNAVAILABLE
        return Plan(
            service,
            decision if lenient else failed,
            identity,
            warnings=(*warnings, f"profile of {identity} unavailable: {error}"),
            untrusted=untrusted,
            routed=routed,
        )
    devices = None
    if profile is not None and not profile.barred and service.family is not None:
        devices = registrations(profile.registration_aor)
    sms_fallback = fallback = fallback_fork = None
    if token is not None:
        # Delivered with the tag the recipient understands, never handed to an AS again.
        decision, use_as = _decide(request, service, profile, devices, rules, False)
        decision, delivery = _delivery(request, service, decision, profile, devices, rules, False)
        decision = _renamed(decision, RETURNED)
    else:
        decision, use_as = _decide(request, service, profile, devices, rules, True)
        decision, delivery = _delivery(request, service, decision, profile, devices, rules, use_as)
        if delivery is not None and use_as and profile is not None and profile.sms_fallback:
            sms_fallback = _to_sms(request, service, profile, rules)
        if decision.target is not None:
            without_as = _decide(request, service, profile, devices, rules, False)[0]
            fallback, fallback_fork = _delivery(
                request, service, without_as, profile, devices, rules, False
            )
            fallback = _renamed(fallback, AS_FAILED_CONTINUE)
    return Plan(
        service,
        decision,
        identity,
        profile,
        devices,
        warnings,
        untrusted,
        token,
        routed,
        fallback,
        delivery,
        fallback_fork,
        sms_fallback,
    )


RETURNED = "returned-from-as"
AS_FAILED_CONTINUE = "as-failed-continue"


def _renamed(decision: Decision, rule: str) -> Decision:
    """`decision` with `rule` naming why it was reached; a reject keeps its own rule."""
    return decision if decision.action is Action.REJECT else replace(decision, rule=rule)


def _decide(
    request: Request,
    service: Service,
    profile: Profile | None,
    devices: list[Device] | None,
    rules: Rules,
    use_as: bool,
) -> tuple[Decision, bool]:
    """The decision, and whether it may use an AS; `use_as=False` for a request back from an
    AS."""
    if request.method == "OPTIONS" and profile is not None and rules.answer_options:
        answer = answer_options(profile, rules.policy)
        if answer is not None:
            return answer, use_as
    families = None if devices is None else [d.families for d in devices]
    decision = decide(service, profile, rules.policy, families, use_as=use_as)
    if decision.target is not None and host_of(decision.target) == request.source:
        # Sent by that very AS: not back to it, but to the recipient.
        without_as = decide(service, profile, rules.policy, families, use_as=False)
        return _renamed(without_as, "from-as"), False
    return decision, use_as


NO_MATCHING_DEVICE = "no-matching-device"
SMS_FALLBACK = "sms-fallback"  # the devices did not take it: the IP-SM-GW (proxy/fallback.py)


def _delivery(
    request: Request,
    service: Service,
    decision: Decision,
    profile: Profile | None,
    devices: list[Device] | None,
    rules: Rules,
    use_as: bool,
) -> tuple[Decision, Fork | None]:
    """The fork of a decision that delivers to the subscriber's devices. When no device can take
    the request, the decision becomes the IP-SM-GW for a subscriber with SMS (if `use_as`), or
    the reject the decision table gives a subscriber without devices."""
    if (
        decision.action not in (Action.DELIVER, Action.REWRITE)
        or profile is None
        or devices is None
        or service.family is None
    ):
        return decision, None
    preferences = (request.headers.accept_contact, request.reject_contact, request.disposition)
    found = fork(service, decision, profile, rules.policy, devices, preferences, use_as=use_as)
    if found.branches:
        return decision, found
    nobody = decide(service, profile, rules.policy, [], use_as=use_as)
    if nobody.action is Action.TO_IP_SM_GW and _to_sms(request, service, profile, rules):
        return replace(nobody, rule=NO_MATCHING_DEVICE), None
    if nobody.action is Action.REJECT and nobody is not NOT_REGISTERED:
        return nobody, None
    return replace(NOT_REGISTERED, rule=NO_MATCHING_DEVICE), None


def _to_sms(request: Request, service: Service, profile: Profile, rules: Rules) -> str | None:
    """The IP-SM-GW that takes the request when no device of the subscriber does, if any (and
    not the sender)."""
    if not profile.has(Family.SMS):
        return None
    nobody = decide(service, profile, rules.policy, [])
    if nobody.action is not Action.TO_IP_SM_GW or nobody.target is None:
        return None
    return None if host_of(nobody.target) == request.source else nobody.target


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
    request: Request, rules: Rules, now: float, first_use: FirstUse
) -> tuple[str | None, tuple[str, ...]]:
    """The marker of the top Route when it is ours, valid for this request, from an AS address,
    and honoured for the first time."""
    if f";{marker.PARAM}=" not in request.route:
        return None, ()
    top = fields.entries(request.route)[0]
    uri = top.text[top.text.find("<") + 1 : top.text.rfind(">")] if "<" in top.text else top.text
    uri_span = fields.Span(0, len(uri), uri)
    token = next((p.value for p in fields.params(uri_span) if p.name == marker.PARAM), None)
    if token is None:
        return None, ()
    if request.source not in rules.as_addresses:
        return None, (f"AS marker from non-AS address {request.source} ignored",)
    bound_to = marker.binding(request.call_id, request.cseq, request.method)
    if not marker.verify(rules.secrets, token, bound_to, now):
        return None, (f"invalid or expired AS marker from {request.source} ignored",)
    if not first_use(token):
        return None, (f"replayed AS marker from {request.source} ignored",)
    return token, ()
