"""The Kamailio adapter: the only module that imports KSR.

kamailio.cfg handles SIP plumbing (sanity, in-dialog loose routing, CANCEL, REGISTER) and calls
`python_exec("route_initial")` for every other initial request. This module reads the facts of
the request, asks the pure core for a decision and applies it with tm / sl / hdr / registrar.
Every request leaves here answered or relayed: an unexpected exception is logged and answered 500.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass

import KSR  # provided by app_python3 inside Kamailio

from . import fields, marker
from .classify import ServiceHeaders, classify
from .decision import Action, Decision, decide
from .identity import IdentityError, canonical
from .profile import Profile, ProfileError
from .rewrite import rewrite_feature_header, rewrite_service_header
from .services import Service
from .settings import Settings, load_settings
from .store import ProfileStore, StoreError, connect

# The headers that name the service, and how each is rewritten.
REWRITERS = {
    "Accept-Contact": rewrite_feature_header,
    "Contact": rewrite_feature_header,
    "P-Preferred-Service": rewrite_service_header,
    "P-Asserted-Service": rewrite_service_header,
}
NOT_REGISTERED = Decision(Action.REJECT, "not-registered", 480, "Temporarily Unavailable")


def _pv(name: str) -> str:
    value = KSR.pv.get(name)
    return "" if value is None else str(value)


def _all(header: str) -> str:
    """Every line of `header`, joined by commas (Kamailio's own joining)."""
    return _pv(f"$(hdr({header})[*])")


def _reply(status: int, reason: str) -> None:
    KSR.sl.send_reply(status, reason)


@dataclass(frozen=True)
class Outcome:
    """What happened to a request, for the decision log line."""

    service: Service
    decision: Decision


class Router:
    """The handler object app_python3 calls; one per Kamailio process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: ProfileStore | None = None

    def child_init(self, rank: int) -> int:
        # Connections opened before Kamailio forks would be shared by every worker.
        self.store = ProfileStore(connect(self.settings.redis_url, self.settings.redis_timeout))
        return 0

    def route_initial(self, _msg: object) -> int:
        """Routes one initial request; called by kamailio.cfg for everything but REGISTER."""
        try:
            outcome = self._route()
        except Exception:
            KSR.err(f"cpmiw: internal error call-id={_pv('$ci')}: {traceback.format_exc()}\n")
            _reply(500, "Internal Server Error")
            return 1
        decision = outcome.decision
        KSR.info(
            f"cpmiw: call-id={_pv('$ci')} method={_pv('$rm')} service={outcome.service.value}"
            f" action={decision.action.value} rule={decision.rule}"
            f" status={decision.status or '-'}\n"
        )
        return 1

    # -- the request ------------------------------------------------------------------------

    def _route(self) -> Outcome:
        if self._returning_from_as():
            KSR.hdr.remove("Route")
            return self._deliver_returning()
        # A terminating proxy does not honour routes preloaded by the sender (no open relay).
        KSR.hdr.remove("Route")
        ruri = _pv("$ru")
        host = _pv("$rd").lower()
        if not ruri.lower().startswith("tel:") and host not in self.settings.domains:
            return self._foreign(host)
        service = classify(self._service_headers())
        try:
            identity = canonical(ruri)
        except IdentityError:
            return self._reject(
                service, Decision(Action.REJECT, "not-a-subscriber", 404, "Not Found")
            )
        try:
            profile = self._lookup(identity)
        except (StoreError, ProfileError) as error:
            return self._profile_unavailable(service, identity, error)
        decision = decide(service, profile, self.settings.policy)
        return self._apply(service, decision, profile)

    def _service_headers(self) -> ServiceHeaders:
        return ServiceHeaders(
            method=_pv("$rm"),
            accept_contact=_all("Accept-Contact"),
            contact=_all("Contact"),
            preferred_service=_all("P-Preferred-Service"),
            asserted_service=_all("P-Asserted-Service"),
            content_type=_pv("$hdr(Content-Type)"),
        )

    def _lookup(self, identity: str) -> Profile | None:
        assert self.store is not None, "child_init opens the store"
        return self.store.lookup(identity)

    def _foreign(self, host: str) -> Outcome:
        """Requests for other domains: only those addressed to one of our ASes are relayed."""
        if host in self.settings.as_hosts:
            decision = Decision(Action.DELIVER, "addressed-to-as")
            self._relay()
            return Outcome(Service.NONE, decision)
        return self._reject(
            Service.NONE, Decision(Action.REJECT, "foreign-domain", 403, "Relaying Forbidden")
        )

    def _profile_unavailable(self, service: Service, identity: str, error: Exception) -> Outcome:
        KSR.err(f"cpmiw: profile of {identity} unavailable call-id={_pv('$ci')}: {error}\n")
        if self.settings.deliver_on_profile_error or service is Service.NONE:
            decision = Decision(Action.DELIVER, "profile-unavailable-deliver")
            return Outcome(service, self._deliver(_pv("$ru"), decision))
        KSR.hdr.append_to_reply(f"Retry-After: {self.settings.retry_after}\r\n")
        return self._reject(
            service, Decision(Action.REJECT, "profile-unavailable", 503, "Service Unavailable")
        )

    # -- applying a decision ----------------------------------------------------------------

    def _apply(self, service: Service, decision: Decision, profile: Profile | None) -> Outcome:
        action = decision.action
        if action is Action.REJECT:
            return self._reject(service, decision)
        if action in (Action.TO_IM_AS, Action.TO_IP_SM_GW):
            assert decision.target is not None
            self._to_as(decision.target)
            return Outcome(service, decision)
        if action is Action.REWRITE:
            assert decision.rewrite_to is not None
            self._rewrite(service, decision.rewrite_to)
        return Outcome(service, self._deliver(_aor(profile), decision))

    def _reject(self, service: Service, decision: Decision) -> Outcome:
        _reply(decision.status, decision.reason)
        return Outcome(service, decision)

    def _deliver(self, aor: str, decision: Decision) -> Decision:
        """To the recipient's registered contacts; 480 when it has none."""
        if KSR.registrar.lookup_uri("location", aor) < 0:
            _reply(NOT_REGISTERED.status, NOT_REGISTERED.reason)
            return NOT_REGISTERED
        self._relay()
        return decision

    def _relay(self) -> None:
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()

    def _rewrite(self, source: Service, target: Service) -> None:
        """Swaps the feature tag; each header is replaced only when its value changes."""
        for header, rewrite in REWRITERS.items():
            old = _all(header)
            if not old:
                continue
            new = rewrite(old, source, target)
            if new != old:
                KSR.hdr.remove(header)
                if new:
                    KSR.hdr.append(f"{header}: {new}\r\n")

    def _to_as(self, as_uri: str) -> None:
        """Sends the request to the AS with a signed route back to this proxy (ISC style)."""
        token = marker.issue(
            self.settings.secret, self._binding(), time.time(), self.settings.marker_ttl
        )
        own = f"sip:{self.settings.sip_addr}:{self.settings.sip_port};lr;{marker.PARAM}={token}"
        first = as_uri if ";lr" in as_uri.lower() else f"{as_uri};lr"
        KSR.hdr.insert(f"Route: <{first}>, <{own}>\r\n")
        KSR.setdsturi(as_uri)
        self._relay()

    # -- requests coming back from an AS ----------------------------------------------------

    def _binding(self) -> str:
        return marker.binding(_pv("$ci"), _pv("$cs"), _pv("$rm"))

    def _returning_from_as(self) -> bool:
        """True when the top Route is ours with a valid marker, from a configured AS address."""
        route = _pv("$hdr(Route)")
        if f";{marker.PARAM}=" not in route:
            return False
        top = fields.entries(route)[0]
        token = next(
            (p.value for p in fields.params(_uri_span(top)) if p.name == marker.PARAM), None
        )
        source = _pv("$si")
        if token is None:
            return False
        if source not in self.settings.as_addresses:
            KSR.warn(
                f"cpmiw: AS marker from non-AS address {source}, ignored call-id={_pv('$ci')}\n"
            )
            return False
        if not marker.verify(self.settings.secret, token, self._binding(), time.time()):
            KSR.warn(f"cpmiw: invalid or expired AS marker from {source} call-id={_pv('$ci')}\n")
            return False
        return True

    def _deliver_returning(self) -> Outcome:
        """Back from the AS: delivered to the recipient, never sent to an AS again."""
        service = classify(self._service_headers())
        decision = Decision(Action.DELIVER, "returned-from-as")
        try:
            profile = self._lookup(canonical(_pv("$ru")))
        except (IdentityError, StoreError, ProfileError):
            profile = None
        return Outcome(service, self._deliver(_aor(profile), decision))


def _aor(profile: Profile | None) -> str:
    """Where the recipient's devices are registered: its profile's AOR, else the R-URI."""
    return profile.registration_aor if profile else _pv("$ru")


def _uri_span(entry: fields.Span) -> fields.Span:
    """The URI inside `<...>` of a name-addr, as a span whose parameters can be read."""
    inner = entry.text[entry.text.find("<") + 1 : entry.text.rfind(">")]
    return fields.Span(0, len(inner), inner)


def mod_init() -> Router:
    """Called once by app_python3 in Kamailio's main process, before it forks the workers."""
    if sys.prefix != "/usr":
        KSR.err(f"cpmiw: embedded Python runs with sys.prefix={sys.prefix}, expected /usr\n")
    return Router(load_settings())
