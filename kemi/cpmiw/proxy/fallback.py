"""When the devices do not take a request: the next stage of a serial fork, then SMS fallback.

A request delivered to a subscriber's devices is watched (onreply_route[DEVICE_REPLY] and
failure_route[DEVICE_FAILURE], kamailio.cfg) when it forks serially or may fall back to SMS
(`Plan.sms_fallback`: a subscriber with SMS whose profile keeps `sms_fallback` on). Then each
stage of devices has CPMIW_FALLBACK_MS to answer (tm's final-response timers of the
transaction). When every device failed, failure_route calls `failed()`:

- the caller cancelled: nothing more (kamailio.cfg, before calling it);
- a 6xx, or any 2xx, ends it: tm relays it (a 2xx never reaches failure_route);
- a serial fork with a stage left: that stage;
- otherwise, if every device answered 408, 480, 486 or 5xx, or did not answer in time, the
  request goes to the IP-SM-GW as for any CPM traffic to SMS (signed route back, conversation
  remembered), counted and logged; the IP-SM-GW's answer is the caller's. A device that
  answered anything else (488, 603, ...) turned it down itself: the caller gets that.
"""

from __future__ import annotations

import json
import time
import traceback
from typing import Protocol

import KSR  # provided by app_python3 inside Kamailio

from .. import metrics
from ..core.branches import decode
from ..core.decision import Action, Decision
from ..core.routing import SMS_FALLBACK, Request
from ..core.services import Family, Service
from ..settings import Settings
from . import fork
from .conversations import Conversations
from .facts import read_request
from .ksr import pv
from .log import record

ARMED = "$avp(cpmiw_sms_fallback)"  # JSON: [IP-SM-GW, subscriber, service]
REFUSED = "$avp(cpmiw_refused)"  # a device's final answer that rules the fallback out
FAILURE_ROUTE = "DEVICE_FAILURE"
REPLY_ROUTE = "DEVICE_REPLY"


def falls_back(status: int) -> bool:
    """Whether a device's failure leaves the request to SMS: it could not take it now."""
    return status in (408, 480, 486) or 500 <= status < 600


def watch() -> None:
    """Has tm call back on the devices' final answers (kamailio.cfg's device routes)."""
    KSR.tm.t_on_reply(REPLY_ROUTE)
    KSR.tm.t_on_failure(FAILURE_ROUTE)


def armed(ip_sm_gw: str, subscriber: str, service: Service) -> str:
    """What the transaction keeps for the SMS fallback (the plugin's, or route[MEMO]'s)."""
    return json.dumps([ip_sm_gw, subscriber, service.value])


def arm(settings: Settings, ip_sm_gw: str, subscriber: str, service: Service) -> None:
    """The request to the devices falls back to `ip_sm_gw` if none of them takes it in time.
    route[MEMO_SMS_FALLBACK] (kamailio.cfg) does the same for a remembered delivery."""
    KSR.pv.sets(ARMED, armed(ip_sm_gw, subscriber, service))
    KSR.tm.t_set_fr(settings.fallback_timeout, settings.fallback_timeout)
    watch()


def replied() -> None:
    """onreply_route[DEVICE_REPLY], for a final answer >= 300 of a device."""
    status = int(pv("$rs") or 0)
    if not falls_back(status):
        KSR.pv.seti(REFUSED, status)


class Route(Protocol):
    """How a request reaches an application server (proxy/handoff.py HandOff): narrowed here,
    because the hand-off's own fallback delivers to devices, which arm this module."""

    def route(self, request: Request, as_uri: str) -> None: ...


class Fallback:
    def __init__(self, settings: Settings, handoff: Route, conversations: Conversations) -> None:
        self._settings = settings
        self._handoff = handoff
        self._conversations = conversations

    def failed(self) -> None:
        """failure_route[DEVICE_FAILURE]: every branch of the stage failed."""
        call_id = pv("$ci")
        try:
            status = int(pv("$T_reply_code") or 0)
            if status >= 600:
                return
            text = pv(fork.TAGS)
            tags = decode(text) if text else None
            if tags is not None and tags.serial and fork.next_stage(tags):
                KSR.tm.t_on_branch(fork.BRANCH_ROUTE)
                watch()
                if KSR.tm.t_relay() > 0:
                    return
            armed = pv(ARMED)
            if armed and not pv(REFUSED) and falls_back(status):
                self._to_sms(status, *json.loads(armed))
        except Exception:
            error = traceback.format_exc()
            KSR.err(f"cpmiw: device failure not handled call-id={call_id}: {error}\n")

    def _to_sms(self, status: int, ip_sm_gw: str, subscriber: str, service: str) -> None:
        started = time.perf_counter()
        timed_out = KSR.tm.t_branch_timeout() > 0
        reason = "timeout" if timed_out else "failure"
        KSR.info(
            f"cpmiw: devices of {subscriber} did not take it ({status}, {reason}):"
            f" SMS fallback to {ip_sm_gw} call-id={pv('$ci')}\n"
        )
        metrics.count_sms_fallback(reason)
        request, _ = read_request()
        if Service(service).family is Family.CPM:
            self._conversations.remember(subscriber)
        # The subscriber as addressed: its last device's URI, next hop and Path (the route to its
        # P-CSCF) go, as tm's serial forking drops them from one contact to the next.
        KSR.pvx.sbranch_reset()
        KSR.pv.sets("$sbranch(uri)", pv("$ou"))
        KSR.pvx.sbranch_set_ruri()
        decision = Decision(Action.TO_IP_SM_GW, SMS_FALLBACK, target=ip_sm_gw)
        record(self._settings, request, Service(service), decision, (), started)
        self._handoff.route(request, ip_sm_gw)
        KSR.tm.t_relay()
