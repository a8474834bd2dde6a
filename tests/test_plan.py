"""routing.plan(): the whole flow for one request, with injected look-ups and a fixed clock."""

from __future__ import annotations

import pytest

from cpmiw.core import marker
from cpmiw.core.classify import ServiceHeaders
from cpmiw.core.decision import Action
from cpmiw.core.devices import Device
from cpmiw.core.profile import Profile, ProfileError
from cpmiw.core.routing import Plan, Request, plan, target_of
from cpmiw.core.services import Service
from cpmiw.settings import load_settings
from cpmiw.store.redis import StoreError
from cpmiw.testing import make_profile

NOW = 1_800_000_000.0
RULES = load_settings(
    {
        "CPMIW_SECRET": "s3cret-of-the-plan-tests",
        "CPMIW_IM_AS": "sip:127.0.0.3:5060",
        "CPMIW_IP_SM_GW": "sip:127.0.0.4:5060",
    }
).rules
CPM_ACCEPT = '*;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg"'
CPM_URN = "urn:urn-7:3gpp-service.ims.icsi.oma.cpm.msg"
PROFILES = {
    "sip:im@ims.example.net": make_profile("im", "+15550000002", "im", interworking="im_as"),
    "sip:sms@ims.example.net": make_profile("sms", "+15550000003", "sms"),
    "sip:cpm@ims.example.net": make_profile("cpm", "+15550000001", "cpm"),
}


def lookup(identity: str) -> Profile | None:
    return PROFILES.get(identity)


def no_devices_known(_aor: str) -> list[Device]:
    return [Device("sip:ue@192.0.2.1")]  # registered no tags: takes what the profile says


def message(ruri: str, *, source: str = "127.0.0.1", route: str = "", **headers: str) -> Request:
    return Request(
        ruri=ruri,
        headers=ServiceHeaders(method=headers.pop("method", "MESSAGE"), **headers),
        call_id="c1@h",
        cseq="7",
        source=source,
        route=route,
    )


def run(request: Request, **kwargs: object) -> Plan:
    return plan(request, RULES, lookup, no_devices_known, NOW, **kwargs)  # type: ignore[arg-type]


def own_route(token: str) -> str:
    return f"<sip:127.0.0.1:5060;lr;{marker.PARAM}={token}>"


VALID = marker.issue(RULES.secrets[0], marker.binding("c1@h", "7", "MESSAGE"), NOW, 32, b"nonce-1!")


@pytest.mark.parametrize(
    ("request_", "rule", "action"),
    [
        (
            message("sip:cpm@ims.example.net", accept_contact=CPM_ACCEPT),
            "subscribed",
            Action.DELIVER,
        ),
        (
            message("sip:im@ims.example.net", accept_contact=CPM_ACCEPT),
            "interworking-im_as",
            Action.TO_IM_AS,
        ),
        (message("sip:x@elsewhere.example.org"), "foreign-domain", Action.REJECT),
        (message("sip:127.0.0.4:5060"), "addressed-to-as", Action.DELIVER),
        (
            message("sip:ims.example.net", accept_contact=CPM_ACCEPT),
            "not-a-subscriber",
            Action.REJECT,
        ),
        (
            message("sip:nobody@ims.example.net", accept_contact=CPM_ACCEPT),
            "unknown-recipient",
            Action.REJECT,
        ),
    ],
    ids=["subscribed", "to-im-as", "foreign", "addressed-to-as", "no-user", "unknown"],
)
def test_basic_routes(request_: Request, rule: str, action: Action) -> None:
    decision = run(request_).decision
    assert (decision.rule, decision.action) == (rule, action)


@pytest.mark.parametrize(
    ("ruri", "rule"),
    [
        ("sip:127.0.0.4:5060", "addressed-to-as"),
        ("sip:report@127.0.0.4;transport=udp", "addressed-to-as"),  # 5060 by default
        ("sip:x@127.0.0.3:5071", "foreign-domain"),  # another port of an AS host
        ("sips:127.0.0.4", "foreign-domain"),  # 5061
        ("sip:127.0.0.4:5060x", "foreign-domain"),
    ],
)
def test_only_the_as_uris_host_and_port_are_addressed_to_an_as(ruri: str, rule: str) -> None:
    assert run(message(ruri)).decision.rule == rule


@pytest.mark.parametrize(
    ("uri", "target"),
    [
        ("sip:as.example.net", ("as.example.net", 5060)),
        ("sip:u@AS.example.net:5070;transport=tcp", ("as.example.net", 5070)),
        ("sips:as.example.net", ("as.example.net", 5061)),
        ("sip:as.example.net;transport=TLS", ("as.example.net", 5061)),
        ("sip:[2001:db8::3]:5080", ("[2001:db8::3]", 5080)),
        ("sip:[2001:db8::3]", ("[2001:db8::3]", 5060)),
        ("sip:as.example.net:99999", ("as.example.net", 0)),
        ("sip:as.example.net:" + "9" * 5000, ("as.example.net", 0)),
        ("sip:as.example.net:5\u00b2", ("as.example.net", 0)),
    ],
)
def test_target_of(uri: str, target: tuple[str, int]) -> None:
    assert target_of(uri) == target


def test_valid_marker_from_the_as_is_delivered_with_the_right_tag() -> None:
    routing = run(
        message(
            "sip:im@ims.example.net",
            accept_contact=CPM_ACCEPT,
            source="127.0.0.3",
            route=own_route(VALID),
        )
    )
    assert routing.decision.rule == "returned-from-as"
    assert routing.decision.action is Action.REWRITE  # the IM client gets the IM tag
    assert routing.warnings == ()


@pytest.mark.parametrize(
    ("source", "token", "warning"),
    [
        ("127.0.0.1", VALID, "AS marker from non-AS address 127.0.0.1 ignored"),
        ("127.0.0.4", "1.AAAA", "invalid or expired AS marker from 127.0.0.4 ignored"),
        ("127.0.0.4", VALID.replace(VALID[-2:], "xx"), "invalid or expired AS marker"),
    ],
    ids=["foreign-source", "expired", "tampered"],
)
def test_bad_markers_route_as_new_requests(source: str, token: str, warning: str) -> None:
    request = message(
        "sip:im@ims.example.net", accept_contact=CPM_ACCEPT, source=source, route=own_route(token)
    )
    routing = run(request)
    assert routing.decision.action is Action.TO_IM_AS
    assert routing.warnings[0].startswith(warning)


def test_a_marker_honoured_once_is_a_replay_the_second_time() -> None:
    honoured: set[str] = set()

    def first_use(token: str) -> bool:
        new = token not in honoured
        honoured.add(token)
        return new

    request = message(
        "sip:im@ims.example.net",
        accept_contact=CPM_ACCEPT,
        source="127.0.0.3",
        route=own_route(VALID),
    )
    first = plan(request, RULES, lookup, no_devices_known, NOW, first_use)
    again = plan(request, RULES, lookup, no_devices_known, NOW, first_use)
    assert (first.decision.rule, first.marker) == ("returned-from-as", VALID)
    # Routed as a new request of that AS: not sent back to it.
    assert (again.decision.rule, again.marker) == ("from-as", None)
    assert again.warnings == ("replayed AS marker from 127.0.0.3 ignored",)
    assert again.routed  # its Route headers are still removed


def test_marker_of_another_request_is_invalid() -> None:
    other = marker.issue(
        RULES.secrets[0], marker.binding("c2@h", "7", "MESSAGE"), NOW, 32, b"nonce-2!"
    )
    routing = run(
        message(
            "sip:im@ims.example.net",
            accept_contact=CPM_ACCEPT,
            source="127.0.0.4",
            route=own_route(other),
        )
    )
    assert routing.decision.action is Action.TO_IM_AS


def test_request_from_an_as_is_never_sent_back_to_it() -> None:
    routing = run(message("sip:sms@ims.example.net", accept_contact=CPM_ACCEPT, source="127.0.0.4"))
    assert routing.decision.rule == "from-as"
    assert routing.decision.target is None


@pytest.mark.parametrize(
    ("source", "service"), [("127.0.0.1", Service.IM_PAGER), ("127.0.0.4", Service.CPM_MSG)]
)
def test_only_trusted_senders_assert_services(source: str, service: Service) -> None:
    routing = run(
        message(
            "sip:cpm@ims.example.net",
            accept_contact="*;+g.oma.sip-im",
            asserted_service=CPM_URN,
            source=source,
        )
    )
    assert routing.service is service
    assert routing.untrusted is (source == "127.0.0.1")


@pytest.mark.parametrize(
    ("error", "accept_contact", "deliver_on_error", "rule"),
    [
        (StoreError("down"), CPM_ACCEPT, False, "profile-unavailable"),
        (ProfileError("bad"), CPM_ACCEPT, False, "profile-unavailable"),
        (StoreError("down"), CPM_ACCEPT, True, "profile-unavailable-deliver"),
        (StoreError("down"), "", False, "profile-unavailable-deliver"),
    ],
    ids=["store-down", "bad-profile", "deliver-policy", "not-messaging"],
)
def test_unreadable_profile_follows_the_fail_policy(
    error: Exception, accept_contact: str, deliver_on_error: bool, rule: str
) -> None:
    def failing(_identity: str) -> Profile | None:
        raise error

    env = {"CPMIW_ON_PROFILE_ERROR": "deliver" if deliver_on_error else "reject"}
    settings = load_settings(env)
    routing = plan(
        message("sip:cpm@ims.example.net", accept_contact=accept_contact),
        settings.rules,
        failing,
        no_devices_known,
        NOW,
    )
    assert routing.decision.rule == rule
    assert routing.warnings == (f"profile of sip:cpm@ims.example.net unavailable: {error}",)


def test_a_plan_to_an_as_carries_the_decision_should_the_as_fail() -> None:
    routing = run(message("sip:im@ims.example.net", accept_contact=CPM_ACCEPT))
    assert routing.decision.action is Action.TO_IM_AS
    assert routing.fallback is not None
    assert (routing.fallback.rule, routing.fallback.action) == (
        "as-failed-continue",
        Action.REWRITE,
    )
    assert routing.fallback.rewrite_to is Service.IM_PAGER


def test_a_plan_without_an_as_has_no_fallback() -> None:
    assert run(message("sip:cpm@ims.example.net", accept_contact=CPM_ACCEPT)).fallback is None


def test_options_answered_on_behalf_of_a_subscriber_without_cpm() -> None:
    routing = run(message("sip:sms@ims.example.net", method="OPTIONS"))
    assert routing.decision.action is Action.ANSWER
    assert Service.CPM_MSG in routing.decision.capabilities
    assert Service.CPM_FILETRANSFER not in routing.decision.capabilities  # FT to SMS: rejected
    assert (
        run(message("sip:cpm@ims.example.net", method="OPTIONS")).decision.action is Action.DELIVER
    )


def test_registrations_are_asked_only_for_messaging_to_a_known_subscriber() -> None:
    asked: list[str] = []

    def registrations(aor: str) -> list[Device]:
        asked.append(aor)
        return []

    plan(message("sip:cpm@ims.example.net"), RULES, lookup, registrations, NOW)
    plan(
        message("sip:nobody@ims.example.net", accept_contact=CPM_ACCEPT),
        RULES,
        lookup,
        registrations,
        NOW,
    )
    assert asked == []
    routing = plan(
        message("sip:cpm@ims.example.net", accept_contact=CPM_ACCEPT),
        RULES,
        lookup,
        registrations,
        NOW,
    )
    assert asked == ["sip:cpm@ims.example.net"]
    assert routing.decision.status == 480  # nothing registered, no SMS
