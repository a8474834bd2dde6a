"""Per-device delivery (core/branches.py) and what routing.plan() makes of it: pure."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cpmiw.core.branches import (
    IM_AS_ONLY,
    NOT_ACCEPTED,
    NOT_CHOSEN,
    REJECTED,
    SMS_ONLY,
    Fork,
    Tags,
    decode,
    fork,
)
from cpmiw.core.classify import ServiceHeaders
from cpmiw.core.decision import Action, Decision, decide
from cpmiw.core.devices import Device
from cpmiw.core.profile import Profile
from cpmiw.core.routing import Plan, Request, plan
from cpmiw.core.services import Service
from cpmiw.settings import load_settings
from cpmiw.testing import make_profile

RULES = load_settings({"CPMIW_IP_SM_GW": "sip:127.0.0.4:5060"}).rules
POLICY = RULES.policy
ICSI = "urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm."
CPM_ACCEPT = f'*;+g.3gpp.icsi-ref="{ICSI}msg";require;explicit'
PHONE = Device("sip:a@192.0.2.1", features=f';+g.3gpp.icsi-ref="{ICSI}msg,{ICSI}session"')
TABLET = Device("sip:a@192.0.2.2", features=";+g.oma.sip-im")
SMS_PHONE = Device("sip:a@192.0.2.3", features=";+g.3gpp.smsip")
UNTAGGED = Device("sip:a@192.0.2.4", features=";video")
MSG, PAGER = Service.CPM_MSG, Service.IM_PAGER


@dataclass(frozen=True)
class Forked:
    fork: Fork
    devices: list[Device]

    @property
    def tags(self) -> dict[str, object]:
        """Each device's tag (its service value, with its stage after a slash), or why none;
        devices by the last digit of their URIs."""
        out: dict[str, object] = {
            self.devices[b.device].uri[-1]: f"{b.service.value}/{b.stage}"
            for b in self.fork.branches
        }
        out.update((self.devices[left.device].uri[-1], left.why) for left in self.fork.left_out)
        return out


def fork_of(
    service: Service,
    profile: Profile,
    devices: list[Device],
    accept: str = "",
    reject: str = "",
    disposition: str = "",
    *,
    use_as: bool = True,
) -> Forked:
    decision = decide(service, profile, POLICY, [d.families for d in devices], use_as=use_as)
    assert decision.action in (Action.DELIVER, Action.REWRITE), decision
    preferences = (accept, reject, disposition)
    found = fork(service, decision, profile, POLICY, devices, preferences, use_as=use_as)
    return Forked(found, devices)


def test_each_device_gets_the_tag_it_understands_in_one_fork() -> None:
    subscriber = make_profile("a", "+15550000001", "cpm,im,sms")
    found = fork_of(MSG, subscriber, [PHONE, TABLET, SMS_PHONE], CPM_ACCEPT)
    assert found.tags == {"1": "cpm.msg/0", "2": "im.pager/0", "3": SMS_ONLY}
    assert found.fork.default is MSG
    assert not found.fork.uniform


def test_im_traffic_reaches_the_cpm_phone_as_cpm() -> None:
    subscriber = make_profile("a", "+15550000001", "cpm,im")
    found = fork_of(PAGER, subscriber, [PHONE, TABLET], "*;+g.oma.sip-im")
    assert found.tags == {"1": "cpm.msg/0", "2": "im.pager/0"}


def test_a_device_without_messaging_tags_gets_what_the_subscriber_would() -> None:
    im_only = make_profile("a", "+15550000001", "im")
    found = fork_of(MSG, im_only, [TABLET, UNTAGGED], CPM_ACCEPT)
    assert found.tags == {"2": "im.pager/0", "4": "im.pager/0"}
    assert found.fork.default is PAGER
    assert found.fork.uniform  # all alike: the request itself is rewritten


@pytest.mark.parametrize(
    ("interworking", "tablet"),
    [("rewrite", "im.pager/0"), ("unchanged", "cpm.msg/0"), ("im_as", IM_AS_ONLY)],
)
def test_the_interworking_policy_applies_per_device(interworking: str, tablet: str) -> None:
    subscriber = make_profile("a", "+15550000001", "cpm,im", interworking=interworking)
    preferred = f'*;+g.3gpp.icsi-ref="{ICSI}msg"'  # not required: a preference
    assert fork_of(MSG, subscriber, [PHONE, TABLET], preferred).tags == {
        "1": "cpm.msg/0",
        "2": tablet,
    }


def test_reject_contact_leaves_the_devices_it_names_out() -> None:
    subscriber = make_profile("a", "+15550000001", "cpm,im")
    found = fork_of(MSG, subscriber, [PHONE, TABLET], CPM_ACCEPT, "*;+g.oma.sip-im")
    assert found.tags == {"1": "cpm.msg/0", "2": REJECTED}


def test_unchanged_requests_keep_their_required_tag() -> None:
    subscriber = make_profile("a", "+15550000001", "cpm,im", interworking="unchanged")
    assert fork_of(MSG, subscriber, [PHONE, TABLET], CPM_ACCEPT).tags == {
        "1": "cpm.msg/0",
        "2": NOT_ACCEPTED,
    }


def test_a_required_accept_contact_is_matched_after_interworking() -> None:
    subscriber = make_profile("a", "+15550000001", "cpm,im")
    found = fork_of(MSG, subscriber, [PHONE, TABLET, UNTAGGED], CPM_ACCEPT)
    assert found.tags == {"1": "cpm.msg/0", "2": "im.pager/0", "4": "cpm.msg/0"}
    video = f"{CPM_ACCEPT}, *;video;require;explicit"
    assert fork_of(MSG, subscriber, [PHONE, TABLET, UNTAGGED], video).tags == {
        "1": NOT_ACCEPTED,
        "2": NOT_ACCEPTED,
        "4": "cpm.msg/0",
    }


def test_a_cpm_phone_without_the_requested_icsi_is_left_out_by_require() -> None:
    subscriber = make_profile("a", "+15550000001", "cpm")
    chat_only = Device("sip:a@192.0.2.5", features=f';+g.3gpp.icsi-ref="{ICSI}session"')
    found = fork_of(MSG, subscriber, [PHONE, chat_only], CPM_ACCEPT)
    assert found.tags == {"1": "cpm.msg/0", "5": NOT_ACCEPTED}


def test_q_values_make_stages_highest_first() -> None:
    subscriber = make_profile("a", "+15550000001", "cpm,im")
    devices = [
        Device("sip:a@192.0.2.1", 500, PHONE.features),
        Device("sip:a@192.0.2.2", 1000, TABLET.features),
        Device("sip:a@192.0.2.6", 500, TABLET.features),
        Device("sip:a@192.0.2.7", 100, PHONE.features),
    ]
    found = fork_of(MSG, subscriber, devices, CPM_ACCEPT)
    assert found.tags == {"2": "im.pager/0", "1": "cpm.msg/1", "6": "im.pager/1", "7": "cpm.msg/2"}
    assert [found.devices[b.device].uri[-1] for b in found.fork.branches] == ["2", "1", "6", "7"]
    assert Tags.of_fork(found.fork, found.devices).serial


def test_no_fork_reaches_the_best_device_only() -> None:
    subscriber = make_profile("a", "+15550000001", "cpm,im")
    low_phone = Device(PHONE.uri, 500, PHONE.features)
    assert fork_of(MSG, subscriber, [low_phone, TABLET], disposition="no-fork").tags == {
        "2": "im.pager/0",
        "1": NOT_CHOSEN,
    }
    # Same q: the better match of the caller's preferences (Qa), then the first registered.
    prefer_im = "*;+g.oma.sip-im"
    assert fork_of(MSG, subscriber, [PHONE, TABLET], prefer_im, "", "no-fork").tags == {
        "2": "im.pager/0",
        "1": NOT_CHOSEN,
    }
    assert fork_of(MSG, subscriber, [PHONE, TABLET], "", "", "no-fork").tags == {
        "1": "cpm.msg/0",
        "2": NOT_CHOSEN,
    }


def test_sms_over_ip_reaches_sms_phones_only() -> None:
    subscriber = make_profile("a", "+15550000001", "cpm,sms")
    found = fork_of(Service.SMS, subscriber, [PHONE, SMS_PHONE], "*;+g.3gpp.smsip;require")
    assert found.tags == {"1": "takes no sms", "3": "sms/0"}


def test_without_an_as_sms_phones_take_it_only_when_nothing_else_does() -> None:
    sms_user = make_profile("a", "+15550000001", "sms")
    assert fork_of(MSG, sms_user, [SMS_PHONE, UNTAGGED], use_as=False).tags == {
        "3": "cpm.msg/0",
        "4": "cpm.msg/0",
    }
    cpm_and_sms = make_profile("a", "+15550000001", "cpm,sms")
    assert fork_of(MSG, cpm_and_sms, [SMS_PHONE, PHONE], use_as=False).tags == {
        "3": SMS_ONLY,
        "1": "cpm.msg/0",
    }


def test_tags_survive_the_transaction() -> None:
    subscriber = make_profile("a", "+15550000001", "cpm,im,sms")
    found = fork_of(MSG, subscriber, [PHONE, TABLET, SMS_PHONE], CPM_ACCEPT)
    kept = decode(Tags.of_fork(found.fork, found.devices).encode())
    assert kept == Tags.of_fork(found.fork, found.devices)
    assert (kept.of(PHONE.uri), kept.of(TABLET.uri), kept.of(SMS_PHONE.uri)) == (MSG, PAGER, None)
    assert kept.of("sip:a@192.0.2.99") is MSG  # a contact the summary did not show: as decided


# -- what plan() makes of it -----------------------------------------------------------------


PROFILES = {
    "sip:both@ims.example.net": make_profile("both", "+15550000010", "cpm,im,sms"),
    "sip:nofallback@ims.example.net": make_profile(
        "nofallback", "+15550000011", "cpm,sms", sms_fallback=False
    ),
    "sip:cpm@ims.example.net": make_profile("cpm", "+15550000012", "cpm"),
}


def planned(
    ruri: str, devices: list[Device], *, source: str = "192.0.2.99", **headers: str
) -> Plan:
    request = Request(
        ruri,
        ServiceHeaders("MESSAGE", accept_contact=headers.pop("accept", CPM_ACCEPT)),
        source=source,
        **headers,
    )
    return plan(request, RULES, PROFILES.get, lambda _aor: devices, 0.0)


def test_a_plan_to_devices_carries_its_fork_and_the_sms_fallback() -> None:
    routing = planned("sip:both@ims.example.net", [PHONE, TABLET, SMS_PHONE])
    assert routing.decision == Decision(Action.DELIVER, "subscribed")
    assert routing.fork is not None
    assert Forked(routing.fork, [PHONE, TABLET, SMS_PHONE]).tags == {
        "1": "cpm.msg/0",
        "2": "im.pager/0",
        "3": SMS_ONLY,
    }
    assert routing.sms_fallback == "sip:127.0.0.4:5060"


@pytest.mark.parametrize(
    ("ruri", "source"),
    [
        ("sip:nofallback@ims.example.net", "192.0.2.99"),  # the profile says no
        ("sip:cpm@ims.example.net", "192.0.2.99"),  # no SMS
        ("sip:both@ims.example.net", "127.0.0.4"),  # sent by the IP-SM-GW itself
    ],
)
def test_no_sms_fallback(ruri: str, source: str) -> None:
    routing = planned(ruri, [PHONE], source=source)
    assert routing.fork is not None
    assert routing.sms_fallback is None


def test_no_device_left_by_the_callers_preferences_goes_by_sms_or_gets_480() -> None:
    reject = {"reject_contact": f'*;+g.3gpp.icsi-ref="{ICSI}msg"'}
    to_sms = planned("sip:both@ims.example.net", [PHONE], **reject)
    assert (to_sms.decision.action, to_sms.decision.rule) == (
        Action.TO_IP_SM_GW,
        "no-matching-device",
    )
    assert to_sms.decision.target == "sip:127.0.0.4:5060"
    assert (to_sms.fork, to_sms.sms_fallback) == (None, None)
    unavailable = planned("sip:cpm@ims.example.net", [PHONE], **reject)
    assert (unavailable.decision.status, unavailable.decision.rule) == (480, "no-matching-device")
