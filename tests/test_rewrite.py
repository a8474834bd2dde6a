"""cpmiw.rewrite: CPM <-> IM feature-tag rewriting that keeps every other byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpmiw.core.classify import ServiceHeaders
from cpmiw.core.rewrite import header_edits, rewrite_feature_header, rewrite_service_header
from cpmiw.core.services import Service

S = Service
ICSI = "urn:urn-7:3gpp-service.ims.icsi."
IARI = '+g.3gpp.iari-ref="urn%3Aurn-7%3A3gpp-application.ims.iari.rcse.im"'
CONTACT = "<sip:alice@10.0.0.1:5060;transport=tcp;ob>"


def enc(suffix: str) -> str:
    """The percent-encoded ICSI, as written inside `+g.3gpp.icsi-ref`."""
    return (ICSI + suffix).replace(":", "%3A")


def ref(*suffixes: str) -> str:
    return '+g.3gpp.icsi-ref="' + ",".join(enc(s) for s in suffixes) + '"'


MSG, SESSION, GROUP = "oma.cpm.msg", "oma.cpm.session", "oma.cpm.session.group"
FT, MMTEL = "oma.cpm.filetransfer", "mmtel"


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        # CPM -> IM
        pytest.param(f"*;{ref(MSG)};require;explicit", S.CPM_MSG, S.IM_PAGER,
                     "*;+g.oma.sip-im;require;explicit", id="cpm-im-accept-contact"),
        pytest.param(f"{CONTACT};{ref(SESSION)};expires=600", S.CPM_SESSION, S.IM_SESSION,
                     f"{CONTACT};+g.oma.sip-im;expires=600", id="cpm-im-contact"),
        pytest.param(f"*;{IARI};{ref(SESSION)};+g.gsma.rcs.cpm.pager-large;explicit",
                     S.CPM_SESSION, S.IM_SESSION,
                     f"*;{IARI};+g.oma.sip-im;+g.gsma.rcs.cpm.pager-large;explicit",
                     id="cpm-im-rcs-tags-kept"),
        pytest.param(f"*;{ref('oma.cpm.largemsg')} ; require", S.CPM_LARGEMSG, S.IM_LARGEMSG,
                     "*;+g.oma.sip-im.large-message ; require", id="cpm-im-largemsg-spacing-kept"),
        pytest.param(f"*;{ref(SESSION, GROUP, FT)};require", S.CPM_GROUP, S.IM_SESSION,
                     f"*;{ref(SESSION, FT)};+g.oma.sip-im;require", id="cpm-im-list-group-only"),
        pytest.param(f"*;{ref(GROUP, SESSION)}", S.CPM_SESSION, S.IM_SESSION,
                     f"*;{ref(GROUP)};+g.oma.sip-im", id="cpm-im-list-session-not-group"),
        pytest.param(f"*;{ref(MMTEL, MSG)};+g.oma.sip-im;require", S.CPM_MSG, S.IM_PAGER,
                     f"*;{ref(MMTEL)};+g.oma.sip-im;require", id="cpm-im-tag-not-duplicated"),
        pytest.param(f"*;{ref(MSG)};+G.OMA.SIP-IM", S.CPM_MSG, S.IM_PAGER,
                     "*;+G.OMA.SIP-IM", id="cpm-im-upper-tag-not-duplicated"),
        pytest.param('*;+G.3GPP.ICSI-REF="URN%3AURN-7%3A3GPP-SERVICE.IMS.ICSI.OMA.CPM.MSG";Require',
                     S.CPM_MSG, S.IM_PAGER, "*;+g.oma.sip-im;Require", id="cpm-im-upper-case"),
        pytest.param(f"*;+g.3gpp.smsip;require, *;{ref(MSG)};require;explicit, *;{IARI}",
                     S.CPM_MSG, S.IM_PAGER,
                     f"*;+g.3gpp.smsip;require, *;+g.oma.sip-im;require;explicit, *;{IARI}",
                     id="cpm-im-only-entry-with-tag"),
        pytest.param(f'{CONTACT};{ref(SESSION)},"Bob, mobile" <sip:b@h;x=1,2>;q=0.5;{ref(SESSION)}',
                     S.CPM_SESSION, S.IM_SESSION,
                     f'{CONTACT};+g.oma.sip-im,"Bob, mobile" <sip:b@h;x=1,2>;q=0.5;+g.oma.sip-im',
                     id="cpm-im-every-entry-with-tag"),
        # IM -> CPM
        pytest.param("*;+g.oma.sip-im;require;explicit", S.IM_PAGER, S.CPM_MSG,
                     f"*;{ref(MSG)};require;explicit", id="im-cpm-accept-contact"),
        pytest.param(f"{CONTACT};+g.oma.sip-im;expires=600", S.IM_SESSION, S.CPM_SESSION,
                     f"{CONTACT};{ref(SESSION)};expires=600", id="im-cpm-contact"),
        pytest.param("*;+g.oma.sip-im.large-message;require", S.IM_LARGEMSG, S.CPM_LARGEMSG,
                     f"*;{ref('oma.cpm.largemsg')};require", id="im-cpm-largemsg"),
        pytest.param(f"*;{IARI};{ref(MMTEL)};+g.oma.sip-im;explicit", S.IM_SESSION, S.CPM_SESSION,
                     f"*;{IARI};{ref(MMTEL, SESSION)};explicit", id="im-cpm-joins-icsi-list"),
        pytest.param(f"*;{ref(SESSION)};+g.oma.sip-im;require", S.IM_SESSION, S.CPM_SESSION,
                     f"*;{ref(SESSION)};require", id="im-cpm-icsi-already-there"),
        pytest.param("*;+G.Oma.Sip-IM;Require", S.IM_PAGER, S.CPM_MSG,
                     f"*;{ref(MSG)};Require", id="im-cpm-mixed-case"),
        pytest.param("*;+g.3gpp.smsip, <sip:b@h>;expires=5, *;+g.oma.sip-im;require",
                     S.IM_PAGER, S.CPM_MSG,
                     f"*;+g.3gpp.smsip, <sip:b@h>;expires=5, *;{ref(MSG)};require",
                     id="im-cpm-only-entry-with-tag"),
    ],
)  # fmt: skip
def test_rewrite_feature_header(value: str, source: S, target: S, expected: str) -> None:
    assert rewrite_feature_header(value, source, target) == expected


@pytest.mark.parametrize(
    ("value", "source", "target"),
    [
        pytest.param("", S.CPM_MSG, S.IM_PAGER, id="empty"),
        pytest.param(f"*;{ref(MMTEL)};require", S.CPM_MSG, S.IM_PAGER, id="other-icsi"),
        pytest.param(f"*;{ref(SESSION)}", S.CPM_MSG, S.IM_PAGER, id="other-cpm-service"),
        pytest.param(f"*;{ref(GROUP)}", S.CPM_SESSION, S.IM_SESSION, id="group-is-not-session"),
        pytest.param(f"*;{IARI};+g.oma.sip-im", S.CPM_MSG, S.IM_PAGER, id="already-im"),
        pytest.param(f"<sip:a@h;x={enc(MSG)}>, *", S.CPM_MSG, S.IM_PAGER, id="icsi-in-uri"),
        pytest.param(f"*;{ref(MSG)}", S.IM_PAGER, S.CPM_MSG, id="already-cpm"),
        pytest.param("*;+g.oma.sip-im.large-message", S.IM_SESSION, S.CPM_SESSION,
                     id="large-message-is-not-sip-im"),
        pytest.param('"x;+g.oma.sip-im" <sip:b@h;+g.oma.sip-im>;expires=1, <sip:c@h>',
                     S.IM_SESSION, S.CPM_SESSION, id="im-tag-in-display-name-and-uri"),
    ],
)  # fmt: skip
def test_feature_header_without_source_is_unchanged(value: str, source: S, target: S) -> None:
    assert rewrite_feature_header(value, source, target) == value


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        pytest.param(ICSI + MSG, S.CPM_MSG, S.IM_PAGER, "", id="only-urn-removes-header"),
        pytest.param((ICSI + MSG).upper(), S.CPM_MSG, S.IM_PAGER, "", id="upper-case"),
        pytest.param(f"{ICSI}{MMTEL}, {ICSI}{SESSION}", S.CPM_SESSION, S.IM_SESSION,
                     f"{ICSI}{MMTEL}", id="other-urn-kept"),
        pytest.param(ICSI + GROUP, S.CPM_SESSION, S.IM_SESSION, ICSI + GROUP,
                     id="group-is-not-session"),
        pytest.param(ICSI + MSG, S.IM_PAGER, S.CPM_MSG, ICSI + MSG, id="im-cpm-left-alone"),
        pytest.param("", S.IM_PAGER, S.CPM_MSG, "", id="im-cpm-empty"),
    ],
)  # fmt: skip
def test_rewrite_service_header(value: str, source: S, target: S, expected: str) -> None:
    assert rewrite_service_header(value, source, target) == expected


def test_service_header_without_source_is_unchanged() -> None:
    value = f"{ICSI}{MMTEL},{ICSI}{SESSION}"
    assert rewrite_service_header(value, S.CPM_MSG, S.IM_PAGER) == value


# (source, target, fragments that never hold the source's identifier)
PAIRS = [
    (S.CPM_MSG, S.IM_PAGER, [ref(SESSION), ref(MMTEL, GROUP)]),
    (S.CPM_SESSION, S.IM_SESSION, [ref(GROUP), ref(MSG, FT)]),
    (S.IM_PAGER, S.CPM_MSG, [ref(MSG), "+g.oma.sip-im.large-message", "+g.oma.sip-imx"]),
    (S.IM_LARGEMSG, S.CPM_LARGEMSG, [ref("oma.cpm.largemsg"), "+g.oma.sip-im"]),
]
COMMON = ["*", "<sip:a@h;lr>", '"Bob, Jr"', IARI, "+g.3gpp.smsip", "require", "q=0.5", "x"]


@pytest.mark.parametrize(
    ("source", "target", "fragments"), PAIRS, ids=[f"{s.value}-{t.value}" for s, t, _ in PAIRS]
)
@given(data=st.data())
def test_value_without_source_is_unchanged(
    source: S, target: S, fragments: list[str], data: st.DataObject
) -> None:
    pieces = st.sampled_from(COMMON + fragments) | st.text(alphabet=' ;,="<>\\', max_size=3)
    value = "".join(data.draw(st.lists(pieces, max_size=12)))
    assert rewrite_feature_header(value, source, target) == value


def test_header_edits_name_only_the_headers_that_change() -> None:
    headers = ServiceHeaders(
        "MESSAGE",
        accept_contact=f'*;+g.3gpp.icsi-ref="{enc("oma.cpm.msg")}"',
        preferred_service=ICSI + "oma.cpm.msg",
        asserted_service=ICSI + "oma.cpm.msg",
    )
    edits = header_edits(headers, Service.CPM_MSG, Service.IM_PAGER)
    assert edits == {
        "Accept-Contact": "*;+g.oma.sip-im",
        "P-Preferred-Service": None,
        "P-Asserted-Service": None,
    }
    assert header_edits(headers, Service.CPM_MSG, None) == {}
    kept = header_edits(headers, Service.CPM_MSG, None, drop_asserted=True)
    assert kept == {"P-Asserted-Service": None}
