"""The messaging services a request can ask for, and the identifiers clients use for them.

Everything here is data: the ICSI suffixes of OMA CPM, the OMA SIMPLE IM feature tags, and the
tables that map one service family onto another. The classifier, the decision and the rewriter
read these tables instead of branching on strings.
"""

from __future__ import annotations

import enum

ICSI_PREFIX = "urn:urn-7:3gpp-service.ims.icsi."
ICSI_FEATURE = "+g.3gpp.icsi-ref"
IM_TAG = "+g.oma.sip-im"
IM_LARGE_TAG = "+g.oma.sip-im.large-message"
SMSIP_TAG = "+g.3gpp.smsip"
SMS_CONTENT_TYPE = "application/vnd.3gpp.sms"


class Family(enum.Enum):
    """Which service a recipient subscribes to; the granularity of a terminating profile."""

    CPM = "cpm"
    IM = "im"
    SMS = "sms"

    # Members are singletons: hash them by identity, in C, not by Enum's Python-level __hash__
    # (sets and tables of these are consulted several times for every request).
    __hash__ = object.__hash__


class Service(enum.Enum):
    """The service one request asks for; the value is the name used in logs and metrics."""

    CPM_MSG = "cpm.msg"
    CPM_LARGEMSG = "cpm.largemsg"
    CPM_DEFERRED = "cpm.deferred"
    CPM_SESSION = "cpm.session"
    CPM_GROUP = "cpm.session.group"
    CPM_FILETRANSFER = "cpm.filetransfer"
    CPM_SYSTEMMSG = "cpm.systemmsg"
    IM_PAGER = "im.pager"
    IM_SESSION = "im.session"
    IM_LARGEMSG = "im.largemsg"
    SMS = "sms"
    NONE = "none"

    __hash__ = object.__hash__  # as Family's

    @property
    def family(self) -> Family | None:
        return _FAMILY_OF[self]


_FAMILY = {"cpm": Family.CPM, "im": Family.IM, "sms": Family.SMS}
_FAMILY_OF = {service: _FAMILY.get(service.value.split(".", 1)[0]) for service in Service}

# ICSI suffix (after ICSI_PREFIX, lower case) -> CPM service.
CPM_BY_ICSI: dict[str, Service] = {
    "oma.cpm.msg": Service.CPM_MSG,
    "oma.cpm.largemsg": Service.CPM_LARGEMSG,
    "oma.cpm.deferred": Service.CPM_DEFERRED,
    "oma.cpm.session": Service.CPM_SESSION,
    "oma.cpm.session.group": Service.CPM_GROUP,
    "oma.cpm.filetransfer": Service.CPM_FILETRANSFER,
    "oma.cpm.systemmsg": Service.CPM_SYSTEMMSG,
}
ICSI_BY_CPM: dict[Service, str] = {service: icsi for icsi, service in CPM_BY_ICSI.items()}
CPM_SERVICES = tuple(CPM_BY_ICSI.values())

# The OMA SIMPLE IM counterpart of each CPM service. Deferred-message retrieval and system
# messages exist only in CPM: an IM client has nothing to receive them with.
IM_FOR_CPM: dict[Service, Service] = {
    Service.CPM_MSG: Service.IM_PAGER,
    Service.CPM_LARGEMSG: Service.IM_LARGEMSG,
    Service.CPM_SESSION: Service.IM_SESSION,
    Service.CPM_GROUP: Service.IM_SESSION,
    Service.CPM_FILETRANSFER: Service.IM_SESSION,
}
CPM_FOR_IM: dict[Service, Service] = {
    Service.IM_PAGER: Service.CPM_MSG,
    Service.IM_LARGEMSG: Service.CPM_LARGEMSG,
    Service.IM_SESSION: Service.CPM_SESSION,
}

# The feature tag that carries each IM service in Accept-Contact and Contact.
IM_TAG_FOR: dict[Service, str] = {
    Service.IM_PAGER: IM_TAG,
    Service.IM_SESSION: IM_TAG,
    Service.IM_LARGEMSG: IM_LARGE_TAG,
}


def icsi_urn(service: Service) -> str:
    """The plain ICSI URN of a CPM service, as in P-Preferred-Service."""
    return ICSI_PREFIX + ICSI_BY_CPM[service]


# Where Kamailio keeps what each registered device takes: htable `caps` (kamailio.cfg), keyed by
# contact URI, valued by the feature parameters of its Contact (core/devices.py). Written by the
# adapter at REGISTER, read by it to summarise each AOR's devices and by `cpmiw explain` over RPC.
DEVICE_TABLE = "caps"
