"""The Kamailio adapter: the only module that imports KSR.

kamailio.cfg handles SIP plumbing (sanity, in-dialog loose routing, CANCEL, REGISTER) and calls
`python_exec("route_initial")` for every other initial request. This module reads the facts of
the request, asks `routing.plan()` what to do and applies the plan with tm / sl / hdr /
registrar. Every request leaves here answered or relayed: an unexpected exception is logged and
answered 500.
"""

from __future__ import annotations

import sys
import time
import traceback

import KSR  # provided by app_python3 inside Kamailio

from . import marker, metrics
from .classify import ServiceHeaders
from .decision import Action, Decision
from .rewrite import rewrite_feature_header, rewrite_service_header
from .routing import Plan, Request, plan
from .services import Service
from .settings import Settings, load_settings
from .store import ProfileStore, connect

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


def _reply(decision: Decision) -> None:
    KSR.sl.send_reply(decision.status, decision.reason)


def _relay() -> None:
    if KSR.tm.t_relay() < 0:
        KSR.sl.sl_reply_error()


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
        call_id = _pv("$ci")
        started = time.perf_counter()
        try:
            routing = self._plan(call_id)
            for warning in routing.warnings:
                KSR.warn(f"cpmiw: {warning} call-id={call_id}\n")
            decision = self._apply(routing)
        except Exception:
            KSR.err(f"cpmiw: internal error call-id={call_id}: {traceback.format_exc()}\n")
            KSR.sl.send_reply(500, "Internal Server Error")
            metrics.observe_decision(_pv("$rm"), "unknown", "error", "internal-error", 500, 0.0)
            return 1
        metrics.observe_decision(
            _pv("$rm"),
            routing.service.value,
            decision.action.value,
            decision.rule,
            decision.status,
            time.perf_counter() - started,
        )
        KSR.info(
            f"cpmiw: call-id={call_id} method={_pv('$rm')} service={routing.service.value}"
            f" action={decision.action.value} rule={decision.rule}"
            f" status={decision.status or '-'}\n"
        )
        return 1

    def _plan(self, call_id: str) -> Plan:
        assert self.store is not None, "child_init opens the store"
        request = Request(
            ruri=_pv("$ru"),
            headers=ServiceHeaders(
                method=_pv("$rm"),
                accept_contact=_all("Accept-Contact"),
                contact=_all("Contact"),
                preferred_service=_all("P-Preferred-Service"),
                asserted_service=_all("P-Asserted-Service"),
                content_type=_pv("$hdr(Content-Type)"),
            ),
            call_id=call_id,
            cseq=_pv("$cs"),
            source=_pv("$si"),
            route=_all("Route"),
        )
        return plan(request, self.settings, self.store.lookup, time.time())

    def _apply(self, routing: Plan) -> Decision:
        """Carries the plan out; returns the decision as finally taken (480 if unregistered)."""
        # Our own route was consumed; routes preloaded by a sender are not honoured.
        KSR.hdr.remove("Route")
        decision = routing.decision
        if decision.action is Action.REJECT:
            if decision.status == 503:
                KSR.hdr.append_to_reply(f"Retry-After: {self.settings.retry_after}\r\n")
            _reply(decision)
            return decision
        if decision.target is not None:
            self._to_as(decision.target)
            return decision
        if decision.rewrite_to is not None:
            self._rewrite(routing.service, decision.rewrite_to)
        if routing.aor is not None and KSR.registrar.lookup_uri("location", routing.aor) < 0:
            _reply(NOT_REGISTERED)
            return NOT_REGISTERED
        _relay()
        return decision

    def _rewrite(self, source: Service, target: Service) -> None:
        """Swaps the feature tag; each header is replaced only when its value changes."""
        for header, rewrite in REWRITERS.items():
            old = _all(header)
            new = rewrite(old, source, target) if old else old
            if new != old:
                KSR.hdr.remove(header)
                if new:
                    KSR.hdr.append(f"{header}: {new}\r\n")

    def _to_as(self, as_uri: str) -> None:
        """Sends the request to the AS with a signed route back to this proxy (ISC style)."""
        bound_to = marker.binding(_pv("$ci"), _pv("$cs"), _pv("$rm"))
        token = marker.issue(self.settings.secret, bound_to, time.time(), self.settings.marker_ttl)
        own = f"sip:{self.settings.sip_addr}:{self.settings.sip_port};lr;{marker.PARAM}={token}"
        first = as_uri if ";lr" in as_uri.lower() else f"{as_uri};lr"
        KSR.hdr.insert(f"Route: <{first}>, <{own}>\r\n")
        KSR.setdsturi(as_uri)
        _relay()


def mod_init() -> Router:
    """Called once by app_python3 in Kamailio's main process, before it forks the workers."""
    if sys.prefix != "/usr":
        KSR.err(f"cpmiw: embedded Python runs with sys.prefix={sys.prefix}, expected /usr\n")
    metrics.setup()
    return Router(load_settings())
