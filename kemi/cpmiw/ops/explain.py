"""`cpmiw explain`: the decision the running proxy would take for a request, and why.

It calls the very `routing.plan()` the Kamailio adapter calls, with the same settings (the
CPMIW_* environment), the same profile store and the registrations read from the running
Kamailio over its RPC socket, so the two cannot disagree. The request is either a whole SIP
message from a file (headers as a client sent them) or a Request-URI with a service and method,
for which a minimal request carrying that service is made up.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..core.branches import Fork
from ..core.classify import ServiceHeaders, classify
from ..core.decision import NOT_REGISTERED, Decision
from ..core.devices import Device
from ..core.message import SipMessage, header_entries
from ..core.profile import Profile
from ..core.routing import Lookup, Plan, Request, plan
from ..core.services import IM_TAG_FOR, SMS_CONTENT_TYPE, Service, icsi_urn
from ..settings import Settings

# The registered contacts of an AOR, as the running proxy knows them; None when unknown.
Contacts = Callable[[str], list[Device]]


class RequestError(ValueError):
    """The request to explain cannot be built (a service the method cannot carry, a bad file)."""


def _service_headers(service: Service, method: str) -> ServiceHeaders:
    if service.value.startswith("cpm."):
        return ServiceHeaders(method, preferred_service=icsi_urn(service))
    if service in IM_TAG_FOR:
        return ServiceHeaders(method, accept_contact=f"*;{IM_TAG_FOR[service]}")
    if service is Service.SMS:
        return ServiceHeaders(method, content_type=SMS_CONTENT_TYPE)
    return ServiceHeaders(method)


def request_for(uri: str, service: Service, method: str | None, source: str) -> Request:
    """A minimal request for `uri` asking for `service` (method: the one that carries it)."""
    methods = [method.upper()] if method else ["MESSAGE", "INVITE"]
    for candidate in methods:
        headers = _service_headers(service, candidate)
        if classify(headers) is service:
            return Request(uri, headers, source=source)
    raise RequestError(f"service {service.value} cannot be carried by {' or '.join(methods)}")


def _joined(message: SipMessage, name: str) -> str:
    """Every line of a header joined by commas, as the adapter reads it from Kamailio."""
    return ",".join(message.header_values(name))


def request_from_message(data: bytes, source: str | None) -> Request:
    """The request of a SIP message as sent (source: the top Via's host, unless given)."""
    try:
        message = SipMessage.parse(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(f"not a SIP message: {error}") from None
    if not message.is_request or len(message.start_line.split()) != 3:
        raise RequestError(f"not a SIP request: {message.start_line!r}")
    if source is None:
        vias = [v for line in message.header_values("Via") for v in header_entries(line)]
        sent_by = vias[0].split(None, 1)[1] if vias and " " in vias[0].strip() else ""
        source = sent_by.split(";", 1)[0].rsplit(":", 1)[0].strip("[]")
    return Request(
        ruri=message.ruri,
        headers=ServiceHeaders(
            method=message.method,
            accept_contact=_joined(message, "Accept-Contact"),
            contact=_joined(message, "Contact"),
            preferred_service=_joined(message, "P-Preferred-Service"),
            asserted_service=_joined(message, "P-Asserted-Service"),
            content_type=message.header("Content-Type") or "",
        ),
        call_id=message.header("Call-ID") or "",
        cseq=(message.header("CSeq") or "").split(" ", 1)[0],
        source=source,
        route=_joined(message, "Route"),
        reject_contact=_joined(message, "Reject-Contact"),
        disposition=_joined(message, "Request-Disposition"),
    )


@dataclass(frozen=True)
class Explanation:
    """A plan, the contacts it was made with, and the decision the proxy would log."""

    request: Request
    plan: Plan
    decision: Decision
    contacts: list[Device] | None  # None: the proxy's registrations could not be read
    contacts_error: str = ""
    shadow: bool = False
    fallback_timeout: int = 0  # ms (CPMIW_FALLBACK_MS)
    settings_source: str = ""  # where the settings came from: the running proxy, or a file

    def with_settings_source(self, source: str) -> Explanation:
        return dataclasses.replace(self, settings_source=source)

    def _profile_line(self, profile: Profile) -> str:
        services = ",".join(f.value for f in profile.services) or "none"
        extras = [f"barred={str(profile.barred).lower()}"]
        extras += [f"interworking={profile.interworking.value}"]
        extras += [f"as_failure={profile.as_failure.value}"]
        extras += [
            f"{name}={value}" for name in ("im_as", "ip_sm_gw") if (value := getattr(profile, name))
        ]
        return f"{profile.subscriber} services={services} {' '.join(extras)}"

    def _contact_lines(self) -> list[str]:
        if self.contacts is None:
            return [
                f"not available ({self.contacts_error}): decided as if a device took every"
                " service of the profile"
            ]
        if not self.contacts:
            return ["none registered"]
        return [_device(c) for c in self.contacts]

    def _branch_lines(self, fork: Fork, devices: list[Device]) -> list[str]:
        """Each device the request would reach, with its tag, and those left out."""
        lines = [
            f"{_device(devices[b.device])} -> {b.service.value}"
            + (", tag rewritten" if b.service is not fork.service else "")
            + (f", stage {b.stage + 1}" if fork.serial else "")
            for b in fork.branches
        ]
        lines += [f"{_device(devices[out.device])} left out: {out.why}" for out in fork.left_out]
        return lines

    def _fallback_line(self) -> str:
        timer = f"{self.fallback_timeout} ms" if self.fallback_timeout else "tm's timers"
        return (
            f"{self.plan.sms_fallback} (IP-SM-GW) if every device fails (408, 480, 486, 5xx)"
            f" or none answers within {timer}"
        )

    def lines(self) -> list[str]:
        """The explanation for a human, one fact a line; the last line is the log's fields."""
        request, routing, decision = self.request, self.plan, self.decision
        out = [f"settings: {self.settings_source}"] if self.settings_source else []
        out += [
            f"request:  {request.method} {request.ruri} from {request.source or 'unknown'}",
            f"service:  {routing.service.value}",
        ]
        if routing.identity is not None:
            out.append(f"identity: {routing.identity}")
            profile = routing.profile
            out.append(f"profile:  {self._profile_line(profile) if profile else 'none'}")
            out += [f"contacts: {line}" for line in self._contact_lines()]
        if routing.fork is not None and routing.devices and self.contacts is not None:
            lines = self._branch_lines(routing.fork, routing.devices)
            out += [f"branch:   {line}" for line in lines]
        if routing.sms_fallback is not None and self.contacts is not None:
            out.append(f"fallback: {self._fallback_line()}")
        out += [f"warning:  {warning}" for warning in routing.warnings]
        out.append(
            f"decision: {decision.summary}{f' -> {decision.target}' if decision.target else ''}"
        )
        if self.shadow:
            out.append("shadow:   on (the proxy logs this decision but delivers unchanged)")
        out.append(decision.log_fields)
        return out

    def as_json(self) -> dict[str, object]:
        decision = self.decision
        fork = self.plan.fork if self.contacts is not None else None
        devices = self.plan.devices or []
        return {
            "method": self.request.method,
            "ruri": self.request.ruri,
            "source": self.request.source,
            "service": self.plan.service.value,
            "identity": self.plan.identity,
            "subscriber": self.plan.profile.subscriber if self.plan.profile else None,
            "contacts": None
            if self.contacts is None
            else [
                {"uri": c.uri, "families": sorted(f.value for f in c.families)}
                for c in self.contacts
            ],
            "branches": None
            if fork is None
            else [
                {"uri": devices[b.device].uri, "service": b.service.value, "stage": b.stage + 1}
                for b in fork.branches
            ],
            "left_out": None
            if fork is None
            else [{"uri": devices[out.device].uri, "why": out.why} for out in fork.left_out],
            "sms_fallback": self.plan.sms_fallback if self.contacts is not None else None,
            "action": decision.action.value,
            "rule": decision.rule,
            "status": decision.status or None,
            "summary": decision.summary,
            "target": decision.target,
            "warnings": list(self.plan.warnings),
            "shadow": self.shadow,
            "settings": self.settings_source,
        }


def _device(device: Device) -> str:
    """A registered device and what it takes."""
    families = ",".join(sorted(f.value for f in device.families)) or "no tags"
    return f"{device.uri} ({families})"


def explain(
    request: Request,
    settings: Settings,
    lookup: Lookup,
    contacts: Contacts | None,
    contacts_error: str = "",
) -> Explanation:
    """Plans `request` as the proxy would; `contacts` None when registrations are unknown."""
    fetched: dict[str, list[Device]] = {}

    def registered(aor: str) -> list[Device]:
        assert contacts is not None
        if aor not in fetched:
            fetched[aor] = contacts(aor)
        return fetched[aor]

    def registrations(aor: str) -> list[Device]:
        if contacts is None:  # unknown: one device that takes whatever the profile has
            return [Device("")]
        return registered(aor)

    routing = plan(request, settings.rules, lookup, registrations, time.time())
    decision = routing.decision
    if routing.aor is not None and not settings.shadow and not registrations(routing.aor):
        decision = NOT_REGISTERED  # the adapter's last step: nobody to deliver to
    aor = routing.aor or (routing.profile.registration_aor if routing.profile else None)
    shown = None if contacts is None else registered(aor) if aor else []
    return Explanation(
        request,
        routing,
        decision,
        shown,
        contacts_error,
        settings.shadow,
        settings.fallback_timeout,
    )
