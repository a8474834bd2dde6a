"""Caller preferences (core/callerprefs.py): RFC 3841 matching of feature sets, pure."""

from __future__ import annotations

import pytest

from cpmiw.core.callerprefs import (
    feature_set,
    no_fork,
    overlap,
    predicates,
    rejected,
    score,
)

ICSI = "urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm."


def value(text: str) -> tuple[object, ...]:
    return feature_set(f";+x={text}")["+x"]


@pytest.mark.parametrize(
    ("first", "second", "common"),
    [
        ('"a,b"', '"B"', True),  # tokens: case does not count
        (f'"{ICSI}msg"', '"urn:urn-7:3gpp-service.ims.icsi.oma.cpm.msg"', True),  # nor encoding
        ('"a,b"', '"c"', False),
        ('"!a"', '"b"', True),
        ('"!a"', '"a"', False),
        ('"!a"', '"!b"', True),  # any third token
        ('"<Bob>"', '"<Bob>"', True),
        ('"<Bob>"', '"<bob>"', False),  # strings: exactly
        ('"<a,b>"', '"<a,b>"', True),  # a string may hold a comma
        ('"#>=5"', '"#=7"', True),
        ('"#>=5"', '"#<=3"', False),
        ('"#1:4"', '"#4:9"', True),
        ('"#=2"', '"two"', False),
        ('"TRUE"', '"true"', True),
        ('"FALSE"', '"TRUE"', False),
    ],
)
def test_two_values_overlap_when_one_single_value_fits_both(
    first: str, second: str, common: bool
) -> None:
    assert overlap(value(first), value(second)) is common  # type: ignore[arg-type]
    assert overlap(value(second), value(first)) is common  # type: ignore[arg-type]


def test_a_tag_without_value_is_true() -> None:
    assert overlap(feature_set(";audio")["audio"], value('"TRUE"'))  # type: ignore[arg-type]


def test_only_feature_tags_make_the_feature_set() -> None:
    features = feature_set(';+g.oma.sip-im;expires=600;q=0.5;video;reg-id=1;methods="INVITE"')
    assert set(features) == {"+g.oma.sip-im", "video", "methods"}


def test_predicates_keep_their_directives_and_ignore_other_parameters() -> None:
    [cpm, star] = predicates(f'*;+g.3gpp.icsi-ref="{ICSI}msg";require;explicit, *;q=1.0;audio')
    assert (cpm.require, cpm.explicit, [n for n, _ in cpm.terms]) == (
        True,
        True,
        ["+g.3gpp.icsi-ref"],
    )
    assert (star.require, star.explicit, [n for n, _ in star.terms]) == (False, False, ["audio"])
    assert predicates("*") == ()  # asks for nothing


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [("no-fork", True), ("proxy, No-Fork", True), ("fork", False), ("", False)],
)
def test_no_fork(disposition: str, expected: bool) -> None:
    assert no_fork(disposition) is expected


# The example of RFC 3841 (7.2.5): five contacts, one Reject-Contact, three Accept-Contacts.
CONTACTS = {
    "C1": ';audio;video;methods="INVITE,BYE"',
    "C2": ';audio="FALSE";methods="INVITE";actor="msg-taker"',
    "C3": ';audio;actor="msg-taker";methods="INVITE";video',
    "C4": ';audio;methods="INVITE,OPTIONS"',
    "C5": "",
}
REJECT = predicates('*;actor="msg-taker";video')
ACCEPT = predicates('*;audio;require, *;video;explicit, *;methods="BYE";class="business";q=1.0')


def test_the_rfc_3841_example() -> None:
    outcome = {}
    for name, params in CONTACTS.items():
        features = feature_set(params)
        outcome[name] = "rejected" if rejected(REJECT, features) else score(ACCEPT, features)
    assert outcome == {
        "C1": pytest.approx(2.5 / 3),
        "C2": None,
        "C3": "rejected",
        "C4": 1.0,
        "C5": 0.0,
    }


def test_reject_contact_matches_only_devices_that_registered_every_tag_it_names() -> None:
    reject = predicates("*;+g.oma.sip-im;video")
    assert rejected(reject, feature_set(";+g.oma.sip-im;video"))
    assert not rejected(reject, feature_set(";+g.oma.sip-im"))  # video not registered
    assert not rejected(reject, feature_set(';+g.oma.sip-im;video="FALSE"'))


@pytest.mark.parametrize(
    ("accept", "device", "qa"),
    [
        pytest.param("*;+g.oma.sip-im;require", ";+g.3gpp.smsip", 0.0, id="require-implicit"),
        pytest.param("*;+g.oma.sip-im;require;explicit", ";+g.3gpp.smsip", None, id="explicit"),
        pytest.param("*;+g.oma.sip-im;require;explicit", ";+g.oma.sip-im", 1.0, id="registered"),
        pytest.param('*;+g.oma.sip-im="FALSE";require', ";+g.oma.sip-im", None, id="mismatch"),
        pytest.param('*;+g.oma.sip-im="FALSE"', ";+g.oma.sip-im", 0.0, id="preference-only"),
        pytest.param("*;+g.oma.sip-im;explicit", "", 0.0, id="explicit-dropped"),
        pytest.param("", "", 1.0, id="no-preference"),
    ],
)
def test_accept_contact(accept: str, device: str, qa: float | None) -> None:
    assert score(predicates(accept), feature_set(device)) == qa


def test_assumed_tags_count_as_registered_with_any_value() -> None:
    accept = predicates(f'*;+g.3gpp.icsi-ref="{ICSI}msg";require;explicit')
    assert score(accept, feature_set("")) is None
    assert score(accept, feature_set(""), frozenset({"+g.3gpp.icsi-ref"})) == 1.0
    assert score(accept, feature_set(f';+g.3gpp.icsi-ref="{ICSI}session"')) is None
