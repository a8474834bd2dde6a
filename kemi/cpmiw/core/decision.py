"""The routing decision for one initial messaging request: data in, decision out.

The rules, in order (the README's decision table is this function spelled out per cell):

1. not a messaging request              -> deliver unchanged
2. no profile for the recipient         -> 404
3. recipient barred                     -> 403
4. has the service, a device takes it   -> deliver unchanged
5. a device takes the other family      -> by the profile's interworking policy (CPM <-> IM):
   rewrite the feature tag, or hand to the IM AS, or deliver unchanged
6. recipient has SMS                    -> to the IP-SM-GW (file transfer: by policy)
7. has the service, no device takes it  -> 480
8. otherwise                            -> 488

Devices are the recipient's registered contacts and their feature tags; without them (None)
the profile alone says what the recipient takes.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from .profile import Interworking, Profile
from .services import CPM_FOR_IM, IM_FOR_CPM, Family, Service


class Action(enum.StrEnum):
    DELIVER = "deliver"
    REWRITE = "rewrite"
    TO_IM_AS = "to-im-as"
    TO_IP_SM_GW = "to-ip-sm-gw"
    REJECT = "reject"
    ANSWER = "answer"  # the proxy answers itself (OPTIONS on behalf of a subscriber)


@dataclass(frozen=True)
class Decision:
    """What to do, and the rule that said so (for logs, metrics and `cpmiw explain`)."""

    action: Action
    rule: str
    status: int = 0  # REJECT only
    reason: str = ""  # REJECT only
    rewrite_to: Service | None = None  # REWRITE only
    target: str | None = None  # TO_IM_AS and TO_IP_SM_GW: the AS URI
    capabilities: tuple[Service, ...] = ()  # ANSWER: the services advertised

    @property
    def summary(self) -> str:
        """One phrase for the README table and `cpmiw explain`."""
        if self.action in (Action.REJECT, Action.ANSWER):
            return f"{self.status} {self.reason}"
        if self.action is Action.REWRITE:
            assert self.rewrite_to is not None
            return f"rewrite to {self.rewrite_to.value}, deliver"
        return self.action.value

    @property
    def log_fields(self) -> str:
        """Its fields in the proxy's decision log line, which `cpmiw explain` prints too."""
        return f"action={self.action.value} rule={self.rule} status={self.status or '-'}"


class FileTransferToSms(enum.Enum):
    """File transfer to an SMS-only recipient: the IP-SM-GW can send a link, or it cannot."""

    REJECT = "reject"
    IP_SM_GW = "ip_sm_gw"


@dataclass(frozen=True)
class Policy:
    """Network-wide defaults that apply where a profile says nothing."""

    im_as: str
    ip_sm_gw: str
    file_transfer_to_sms: FileTransferToSms = FileTransferToSms.REJECT


_COUNTERPART: dict[Family, tuple[Family, dict[Service, Service]]] = {
    Family.CPM: (Family.IM, IM_FOR_CPM),
    Family.IM: (Family.CPM, CPM_FOR_IM),
}
_INTERWORKING_ACTION = {
    Interworking.REWRITE: Action.REWRITE,
    Interworking.IM_AS: Action.TO_IM_AS,
    Interworking.UNCHANGED: Action.DELIVER,
}

NOT_FOUND = Decision(Action.REJECT, "unknown-recipient", 404, "Not Found")
BARRED = Decision(Action.REJECT, "barred", 403, "Forbidden")
NO_SERVICE = Decision(Action.REJECT, "no-service", 488, "Not Acceptable Here")


NOT_REGISTERED = Decision(Action.REJECT, "not-registered", 480, "Temporarily Unavailable")
SUBSCRIBED = Decision(Action.DELIVER, "subscribed")
SMS_WITHOUT_AS = "sms-without-as"  # an SMS user's request delivered to its devices, without AS

# What each registered device can take, from the feature tags of its Contact; None when the
# registrations are not known (then the profile alone decides). A device that registered no
# messaging tag at all is taken to support every service of the profile.
Devices = list[frozenset[Family]] | None


def reachable(profile: Profile, devices: Devices) -> frozenset[Family]:
    """The families the subscriber can be reached with over IP right now."""
    if devices is not None and len(devices) == 1 and devices[0]:
        return devices[0]  # the common case, without building sets
    subscribed = frozenset(profile.services)
    if devices is None:
        return subscribed
    return frozenset().union(*(tags or subscribed for tags in devices))


@functools.lru_cache(maxsize=256)
def _interworking(
    action: Action, interworking: Interworking, rewrite_to: Service | None, target: str | None
) -> Decision:
    """An interworking decision; made once per process for each kind (a hit costs far less)."""
    return Decision(
        action, f"interworking-{interworking.value}", rewrite_to=rewrite_to, target=target
    )


def decide(
    service: Service,
    profile: Profile | None,
    policy: Policy,
    devices: Devices = None,
    *,
    use_as: bool = True,
) -> Decision:
    """The decision for one request.

    `use_as=False` decides as if no AS existed (a request back from an AS, or an AS that failed
    with default handling `continue`): interworking is done by rewriting, SMS users get the
    request delivered to whatever they registered.
    """
    family = service.family
    if family is None:
        return Decision(Action.DELIVER, "not-messaging")
    if profile is None:
        return NOT_FOUND
    if profile.barred:
        return BARRED
    online = reachable(profile, devices)
    if profile.has(family) and family in online:
        return SUBSCRIBED
    other, mapping = _COUNTERPART.get(family, (None, {}))
    if other in online and service in mapping:
        policy_action = _INTERWORKING_ACTION[profile.interworking]
        action = (
            Action.REWRITE if policy_action is Action.TO_IM_AS and not use_as else policy_action
        )
        return _interworking(
            action,
            profile.interworking,
            mapping[service] if action is Action.REWRITE else None,
            (profile.im_as or policy.im_as) if action is Action.TO_IM_AS else None,
        )
    if profile.has(Family.SMS) and family is not Family.SMS:
        if (
            service is Service.CPM_FILETRANSFER
            and policy.file_transfer_to_sms is FileTransferToSms.REJECT
        ):
            return Decision(Action.REJECT, "file-transfer-to-sms", 488, "Not Acceptable Here")
        if not use_as:
            return Decision(Action.DELIVER, SMS_WITHOUT_AS)
        return Decision(
            Action.TO_IP_SM_GW, "sms-interworking", target=profile.ip_sm_gw or policy.ip_sm_gw
        )
    if profile.has(family) or (other is not None and profile.has(other) and service in mapping):
        return NOT_REGISTERED
    return NO_SERVICE
