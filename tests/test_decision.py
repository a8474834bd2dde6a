"""The decision against the README's decision table, cell by cell, and its policy variants."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpmiw.core.decision import Action, FileTransferToSms, Policy, decide
from cpmiw.core.profile import Interworking
from cpmiw.core.services import Family, Service
from cpmiw.testing import RECIPIENT_KINDS, make_profile

README = Path(__file__).resolve().parent.parent / "README.md"
POLICY = Policy(im_as="sip:imas.example.net", ip_sm_gw="sip:ipsmgw.example.net")


def _readme_table() -> dict[tuple[str, str], str]:
    text = README.read_text()
    table = text.split("<!-- decision-table:begin -->")[1].split("<!-- decision-table:end -->")[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in table.strip().splitlines()
    ]
    header, _, *body = rows
    return {
        (row[0], kind): cell for row in body for kind, cell in zip(header[1:], row[1:], strict=True)
    }


TABLE = _readme_table()


def test_readme_table_covers_every_service_and_recipient_kind() -> None:
    assert set(TABLE) == {(s.value, kind) for s in Service for kind in RECIPIENT_KINDS}


@pytest.mark.parametrize(
    ("service", "kind"), [pytest.param(*cell, id=f"{cell[0]}-{cell[1]}") for cell in sorted(TABLE)]
)
def test_decision_matches_readme(service: str, kind: str) -> None:
    decision = decide(Service(service), RECIPIENT_KINDS[kind], POLICY)
    assert decision.summary == TABLE[service, kind]


def test_as_targets_default_to_policy_and_follow_the_profile() -> None:
    sms = make_profile("s", "+15550000003", "sms")
    assert decide(Service.CPM_MSG, sms, POLICY).target == POLICY.ip_sm_gw
    own = make_profile("s", "+15550000003", "sms", ip_sm_gw="sip:gw2.example.net")
    assert decide(Service.CPM_MSG, own, POLICY).target == "sip:gw2.example.net"


@pytest.mark.parametrize(
    ("interworking", "action", "target"),
    [
        (Interworking.REWRITE, Action.REWRITE, None),
        (Interworking.IM_AS, Action.TO_IM_AS, POLICY.im_as),
        (Interworking.UNCHANGED, Action.DELIVER, None),
    ],
)
@pytest.mark.parametrize(
    ("service", "services"), [(Service.CPM_SESSION, "im"), (Service.IM_PAGER, "cpm")]
)
def test_interworking_policy(
    interworking: Interworking,
    action: Action,
    target: str | None,
    service: Service,
    services: str,
) -> None:
    profile = make_profile("x", "+15550000009", services, interworking=interworking)
    decision = decide(service, profile, POLICY)
    assert (decision.action, decision.target) == (action, target)
    assert decision.rule == f"interworking-{interworking.value}"


def test_profile_im_as_overrides_the_default() -> None:
    profile = make_profile(
        "x", "+15550000009", "im", interworking=Interworking.IM_AS, im_as="sip:imas2.example.net"
    )
    assert decide(Service.CPM_MSG, profile, POLICY).target == "sip:imas2.example.net"


def test_file_transfer_to_sms_by_policy() -> None:
    sms = make_profile("s", "+15550000003", "sms")
    lenient = Policy(POLICY.im_as, POLICY.ip_sm_gw, FileTransferToSms.IP_SM_GW)
    assert decide(Service.CPM_FILETRANSFER, sms, POLICY).status == 488
    assert decide(Service.CPM_FILETRANSFER, sms, lenient).action is Action.TO_IP_SM_GW


SMS_PHONE = frozenset({Family.SMS})
IM_CLIENT = frozenset({Family.IM})
CPM_CLIENT = frozenset({Family.CPM})
UNTAGGED = frozenset[Family]()


@pytest.mark.parametrize(
    ("services", "devices", "service", "expected"),
    [
        ("cpm,sms", [SMS_PHONE], Service.CPM_MSG, "to-ip-sm-gw"),
        ("cpm,sms", [SMS_PHONE, CPM_CLIENT], Service.CPM_MSG, "deliver"),
        ("cpm,sms", [], Service.CPM_SESSION, "to-ip-sm-gw"),
        ("cpm", [IM_CLIENT], Service.CPM_MSG, "rewrite to im.pager, deliver"),
        ("cpm", [UNTAGGED], Service.CPM_MSG, "deliver"),
        ("cpm", [], Service.CPM_MSG, "480 Temporarily Unavailable"),
        ("im", [], Service.CPM_MSG, "480 Temporarily Unavailable"),
        ("im", [], Service.CPM_DEFERRED, "488 Not Acceptable Here"),
        ("im", [CPM_CLIENT], Service.IM_PAGER, "rewrite to cpm.msg, deliver"),
        ("sms", [], Service.CPM_MSG, "to-ip-sm-gw"),
        ("", [CPM_CLIENT], Service.CPM_MSG, "488 Not Acceptable Here"),
    ],
)
def test_registered_devices_refine_the_decision(
    services: str, devices: list[frozenset[Family]], service: Service, expected: str
) -> None:
    profile = make_profile("d", "+15550000010", services)
    assert decide(service, profile, POLICY, devices).summary == expected


@pytest.mark.parametrize(
    ("services", "service", "expected"),
    [
        ("im", Service.CPM_MSG, "rewrite to im.pager, deliver"),
        ("sms", Service.CPM_MSG, "deliver"),
        ("cpm", Service.CPM_MSG, "deliver"),
    ],
)
def test_without_as_interworking_is_done_in_the_proxy(
    services: str, service: Service, expected: str
) -> None:
    profile = make_profile("d", "+15550000010", services, interworking="im_as")
    assert decide(service, profile, POLICY, use_as=False).summary == expected
