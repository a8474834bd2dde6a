"""Per-device delivery: which registered devices a request forks to, with which tag, in what order.

Data in (the request's service and caller preferences, the subscriber's decision, profile and
registered devices), a `Fork` out. The rules, for a request the decision delivers to devices:

1. Each device gets what the decision table gives a subscriber holding that device alone: the
   request as sent (its tag), the tag rewritten CPM <-> IM, or nothing. A device that registered
   no messaging tag takes every service of the profile (so it gets the subscriber's decision, as
   before devices were told apart); an SMS-only phone is reached through the IP-SM-GW, never
   directly (with no AS to go through, directly only when no other device takes it); with
   interworking `im_as`, a device that needs the other tag is reached through the IM AS only,
   which the request goes to when no device takes it as sent.
2. Caller preferences (core/callerprefs.py) are matched against each device's registered feature
   parameters, with the Accept-Contact as that device would receive it (after interworking): a
   device a Reject-Contact names, or a `require` Accept-Contact leaves out, gets nothing. For a
   device without messaging tags the messaging tags of an Accept-Contact count as registered.
3. `Request-Disposition: no-fork`: the one best device (highest q, then Qa, then registration
   order). Otherwise every device left, in stages by q-value, highest first (serial forking:
   the next stage when the previous one failed); one q-value is one parallel fork.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from . import callerprefs
from .classify import device_families
from .decision import SMS_WITHOUT_AS, Action, Decision, Policy, decide
from .devices import Device
from .profile import Profile
from .rewrite import rewrite_feature_header
from .services import ICSI_FEATURE, IM_LARGE_TAG, IM_TAG, SMSIP_TAG, Service

# The tags a device without any messaging tag is taken to have registered (rule 2).
_MESSAGING_TAGS = frozenset({ICSI_FEATURE, IM_TAG, IM_LARGE_TAG, SMSIP_TAG})
SMS_ONLY = "reached through the IP-SM-GW"
IM_AS_ONLY = "reached through the IM AS"
REJECTED = "Reject-Contact"
NOT_ACCEPTED = "Accept-Contact requires what it did not register"
NOT_CHOSEN = "no-fork: another device was chosen"


class Branch(NamedTuple):
    """A device the request goes to (its index among the devices the fork was made for), the
    service (tag) it is presented with, and its stage."""

    device: int
    service: Service
    stage: int = 0


class LeftOut(NamedTuple):
    device: int  # index, as in Branch
    why: str


class Fork(NamedTuple):
    """Where a request delivered to the subscriber's devices goes. It names devices by index, so
    that the fork of a single device is one and the same object for all alike (cached)."""

    service: Service  # the request's own
    default: Service  # the subscriber's decision: for a contact the devices did not show
    branches: tuple[Branch, ...]
    left_out: tuple[LeftOut, ...] = ()

    @property
    def serial(self) -> bool:
        return any(b.stage for b in self.branches)

    @property
    def uniform(self) -> bool:
        """Every registered device gets the request as the subscriber's decision says, at once:
        no branch needs a tag of its own."""
        return not self.left_out and all(
            b.service is self.default and not b.stage for b in self.branches
        )


def _tag(decision: Decision, service: Service) -> Service | str:
    """The service a device is presented with under `decision`, or why it gets nothing."""
    if decision.action is Action.DELIVER:
        return service
    if decision.action is Action.REWRITE:
        assert decision.rewrite_to is not None
        return decision.rewrite_to
    if decision.action is Action.TO_IP_SM_GW:
        return SMS_ONLY
    if decision.action is Action.TO_IM_AS:
        return IM_AS_ONLY
    return f"takes no {service.value}"


def _tags(
    service: Service,
    decision: Decision,
    profile: Profile,
    policy: Policy,
    devices: Sequence[Device],
    use_as: bool,
) -> list[Service | str]:
    """Rule 1: each device's tag, or why it gets none."""
    each = [decide(service, profile, policy, [d.families], use_as=use_as) for d in devices]
    tags = [_tag(d, service) for d in each]
    # Without an AS, SMS phones take it directly, but only when nothing else does.
    sms_direct = [d.rule == SMS_WITHOUT_AS for d in each]
    if any(not isinstance(t, str) and not s for t, s in zip(tags, sms_direct, strict=True)):
        tags = [SMS_ONLY if s else t for t, s in zip(tags, sms_direct, strict=True)]
    return tags


@functools.lru_cache(maxsize=4096)
def _preference(
    accept: str, reject: str, features: str, service: Service, tag: Service
) -> tuple[float | None, str]:
    """Rule 2 for one device presented with `tag`: its Qa (None: left out) and why it is left
    out. The Accept-Contact is matched as that device would receive it."""
    if tag is not service:
        accept = rewrite_feature_header(accept, service, tag)
    registered = callerprefs.feature_set(features)
    if callerprefs.rejected(callerprefs.predicates(reject), registered):
        return None, REJECTED
    untagged = not device_families(features)
    qa = callerprefs.score(
        callerprefs.predicates(accept), registered, _MESSAGING_TAGS if untagged else frozenset()
    )
    return qa, "" if qa is not None else NOT_ACCEPTED


@functools.lru_cache(maxsize=4096)
def _alone(accept: str, reject: str, features: str, service: Service, default: Service) -> Fork:
    """The fork of a subscriber's only device."""
    qa, why = _preference(accept, reject, features, service, default)
    if qa is None:
        return Fork(service, default, (), (LeftOut(0, why),))
    return Fork(service, default, (Branch(0, default),))


def fork(
    service: Service,
    decision: Decision,
    profile: Profile,
    policy: Policy,
    devices: Sequence[Device],
    preferences: tuple[str, str, str],
    *,
    use_as: bool = True,
) -> Fork:
    """The fork of a request that `decision` (DELIVER or REWRITE) delivers to `devices`.

    `preferences`: the request's Accept-Contact, Reject-Contact and Request-Disposition.
    """
    accept, reject, disposition = preferences
    default = decision.rewrite_to or service
    if len(devices) == 1:  # the most common case, kept short: the decision was made for it
        return _alone(accept, reject, devices[0].features, service, default)
    chosen: list[tuple[int, float, int, Branch]] = []
    left_out: list[LeftOut] = []
    for order, (device, tag) in enumerate(
        zip(devices, _tags(service, decision, profile, policy, devices, use_as), strict=True)
    ):
        if isinstance(tag, str):
            left_out.append(LeftOut(order, tag))
            continue
        qa, why = _preference(accept, reject, device.features, service, tag)
        if qa is None:
            left_out.append(LeftOut(order, why))
        else:
            chosen.append((-device.q, -qa, order, Branch(order, tag)))
    chosen.sort(key=lambda entry: entry[:3])
    if callerprefs.no_fork(disposition) and len(chosen) > 1:
        left_out += [LeftOut(entry[2], NOT_CHOSEN) for entry in chosen[1:]]
        chosen = chosen[:1]
    stages = sorted({entry[0] for entry in chosen})
    branches = tuple(
        Branch(b.device, b.service, stages.index(q)) if q != stages[0] else b
        for q, _, _, b in chosen
    )
    return Fork(service, default, branches, tuple(left_out))


@dataclass(frozen=True)
class Tags:
    """What each branch needs of a fork, kept in the transaction: the tag per contact URI (None:
    left out). A contact the devices did not show (usrloc changed since) gets the default."""

    service: Service
    default: Service
    serial: bool
    by_uri: dict[str, Service | None]

    def of(self, uri: str) -> Service | None:
        return self.by_uri.get(uri, self.default)

    def encode(self) -> str:
        lines = [f"{self.service.value} {self.default.value} {int(self.serial)}"]
        lines += [f"{uri} {tag.value if tag else '-'}" for uri, tag in self.by_uri.items()]
        return "\n".join(lines)

    @classmethod
    def of_fork(cls, fork: Fork, devices: Sequence[Device]) -> Tags:
        """The tags of `fork`, made for `devices`."""
        tags: dict[str, Service | None] = {devices[b.device].uri: b.service for b in fork.branches}
        tags.update((devices[left.device].uri, None) for left in fork.left_out)
        return cls(fork.service, fork.default, fork.serial, tags)


@functools.lru_cache(maxsize=256)
def decode(text: str) -> Tags:
    """The `Tags` of `Tags.encode()`; ValueError for anything else."""
    head, *lines = text.split("\n")
    service, default, serial = head.split(" ")
    by_uri: dict[str, Service | None] = {}
    for line in lines:
        uri, tag = line.rsplit(" ", 1)
        by_uri[uri] = None if tag == "-" else Service(tag)
    return Tags(Service(service), Service(default), serial == "1", by_uri)
