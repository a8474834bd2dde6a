"""cpmiw.classify: the service a request asks for, read from its headers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpmiw.core.classify import ServiceHeaders, classify
from cpmiw.core.services import Family, Service

ICSI = "urn:urn-7:3gpp-service.ims.icsi."
IARI_IM = '+g.3gpp.iari-ref="urn%3Aurn-7%3A3gpp-application.ims.iari.rcse.im"'


def urn(suffix: str) -> str:
    return ICSI + suffix


def icsi_ref(*suffixes: str) -> str:
    """A `+g.3gpp.icsi-ref` parameter with its quoted, percent-encoded list of ICSIs."""
    members = ",".join(urn(suffix).replace(":", "%3A") for suffix in suffixes)
    return f'+g.3gpp.icsi-ref="{members}"'


# Every CPM service with the ICSI suffix clients send and the methods that carry it.
CPM = [
    ("oma.cpm.msg", Service.CPM_MSG, {"MESSAGE"}),
    ("oma.cpm.largemsg", Service.CPM_LARGEMSG, {"INVITE"}),
    ("oma.cpm.deferred", Service.CPM_DEFERRED, {"MESSAGE", "INVITE"}),
    ("oma.cpm.session", Service.CPM_SESSION, {"INVITE"}),
    ("oma.cpm.session.group", Service.CPM_GROUP, {"INVITE"}),
    ("oma.cpm.filetransfer", Service.CPM_FILETRANSFER, {"INVITE"}),
    ("oma.cpm.systemmsg", Service.CPM_SYSTEMMSG, {"MESSAGE"}),
]
CPM_VALID = [(suffix, service, m) for suffix, service, ms in CPM for m in sorted(ms)]
CPM_INVALID = [
    (suffix, service, m)
    for suffix, service, ms in CPM
    for m in ("MESSAGE", "INVITE")
    if m not in ms
]

# One header carrying a CPM ICSI, in the form clients write it there: (method, suffix) -> headers.
FORMS: dict[str, Callable[[str, str], ServiceHeaders]] = {
    "accept-contact": lambda m, s: ServiceHeaders(
        m, accept_contact=f"*;{IARI_IM};{icsi_ref(s)};require;explicit"
    ),
    "contact": lambda m, s: ServiceHeaders(
        m, contact=f"<sip:alice@10.0.0.1:5060;transport=tcp>;{icsi_ref(s)};expires=600"
    ),
    "preferred-service": lambda m, s: ServiceHeaders(m, preferred_service=urn(s)),
    "asserted-service": lambda m, s: ServiceHeaders(m, asserted_service=urn(s)),
}


def upper(headers: ServiceHeaders) -> ServiceHeaders:
    return ServiceHeaders(
        headers.method,
        headers.accept_contact.upper(),
        headers.contact.upper(),
        headers.preferred_service.upper(),
        headers.asserted_service.upper(),
        headers.content_type.upper(),
    )


def test_table_covers_every_cpm_service() -> None:
    assert {service for _, service, _ in CPM} == {s for s in Service if s.family is Family.CPM}


@pytest.mark.parametrize("shout", [False, True], ids=["as-sent", "upper"])
@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
@pytest.mark.parametrize(
    ("suffix", "service", "method"), CPM_VALID, ids=[f"{s}-{m}" for s, _, m in CPM_VALID]
)
def test_cpm_service_in_each_header(
    suffix: str,
    service: Service,
    method: str,
    form: Callable[[str, str], ServiceHeaders],
    shout: bool,
) -> None:
    headers = form(method, suffix)
    assert classify(upper(headers) if shout else headers) is service


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
@pytest.mark.parametrize(
    ("suffix", "service", "method"), CPM_INVALID, ids=[f"{s}-{m}" for s, _, m in CPM_INVALID]
)
def test_cpm_service_not_valid_for_method_is_none(
    suffix: str, service: Service, method: str, form: Callable[[str, str], ServiceHeaders]
) -> None:
    assert classify(form(method, suffix)) is Service.NONE


EVERYTHING = dict(
    accept_contact=f"*;{icsi_ref('oma.cpm.msg', 'oma.cpm.session')};+g.oma.sip-im;+g.3gpp.smsip",
    contact=f"<sip:a@h>;{icsi_ref('oma.cpm.session')};+g.oma.sip-im",
    preferred_service=urn("oma.cpm.msg"),
    asserted_service=urn("oma.cpm.session"),
    content_type="application/vnd.3gpp.sms",
)


@pytest.mark.parametrize(
    "method", ["OPTIONS", "REGISTER", "SUBSCRIBE", "NOTIFY", "INFO", "BYE", "PUBLISH", ""]
)
def test_other_methods_are_not_messaging(method: str) -> None:
    assert classify(ServiceHeaders(method, **EVERYTHING)) is Service.NONE


H = ServiceHeaders
MSG, SESSION, SYSTEMMSG = "oma.cpm.msg", "oma.cpm.session", "oma.cpm.systemmsg"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # OMA SIMPLE IM feature tags
        pytest.param(H("MESSAGE", accept_contact="*;+g.oma.sip-im;require;explicit"),
                     Service.IM_PAGER, id="im-pager"),
        pytest.param(H("MESSAGE", contact="<sip:b@10.0.0.2>;+g.oma.sip-im"),
                     Service.IM_PAGER, id="im-pager-in-contact"),
        pytest.param(H("INVITE", accept_contact="*;+g.oma.sip-im"),
                     Service.IM_SESSION, id="im-session"),
        pytest.param(H("INVITE", contact="<sip:b@10.0.0.2>;+g.oma.sip-im;expires=60"),
                     Service.IM_SESSION, id="im-session-in-contact"),
        pytest.param(H("INVITE", contact="<sip:b@h>;+g.oma.sip-im;+g.oma.sip-im.large-message"),
                     Service.IM_LARGEMSG, id="im-large-message"),
        pytest.param(H("INVITE", accept_contact="*;+G.Oma.SIP-IM.Large-Message"),
                     Service.IM_LARGEMSG, id="im-large-message-mixed-case"),
        pytest.param(H("MESSAGE", accept_contact="*;+g.oma.sip-im.large-message"),
                     Service.NONE, id="im-large-message-not-in-message"),
        pytest.param(H("MESSAGE", accept_contact="*;+G.OMA.SIP-IM"),
                     Service.IM_PAGER, id="im-tag-upper"),
        # SMS over IP
        pytest.param(H("MESSAGE", content_type="application/vnd.3gpp.sms"),
                     Service.SMS, id="sms-content-type"),
        pytest.param(H("MESSAGE", content_type=" Application/VND.3GPP.SMS ; charset=binary"),
                     Service.SMS, id="sms-content-type-params-case"),
        pytest.param(H("MESSAGE", content_type="application/vnd.3gpp.sms-x"),
                     Service.NONE, id="sms-content-type-lookalike"),
        pytest.param(H("MESSAGE", accept_contact="*;+g.3gpp.smsip;require;explicit"),
                     Service.SMS, id="smsip-tag"),
        pytest.param(H("MESSAGE", accept_contact="*;+G.3GPP.SMSIP"),
                     Service.SMS, id="smsip-tag-upper"),
        pytest.param(H("INVITE", accept_contact="*;+g.3gpp.smsip",
                       content_type="application/vnd.3gpp.sms"),
                     Service.NONE, id="sms-not-in-invite"),
        pytest.param(H("MESSAGE", content_type="message/cpim"), Service.NONE, id="cpim-alone"),
        pytest.param(H("MESSAGE"), Service.NONE, id="no-headers"),
        pytest.param(H("INVITE", contact="<sip:alice@10.0.0.1:5060>"),
                     Service.NONE, id="contact-without-params"),
        # precedence between sources
        pytest.param(H("MESSAGE", content_type="application/vnd.3gpp.sms",
                       asserted_service=urn(MSG)),
                     Service.SMS, id="sms-body-over-asserted"),
        pytest.param(H("MESSAGE", asserted_service=urn(MSG), preferred_service=urn(SYSTEMMSG)),
                     Service.CPM_MSG, id="asserted-over-preferred"),
        pytest.param(H("MESSAGE", preferred_service=urn(MSG),
                       accept_contact=f"*;{icsi_ref(SYSTEMMSG)}"),
                     Service.CPM_MSG, id="preferred-over-accept-contact"),
        pytest.param(H("INVITE", accept_contact=f"*;{icsi_ref(SESSION)}",
                       contact=f"<sip:a@h>;{icsi_ref('oma.cpm.filetransfer')}"),
                     Service.CPM_SESSION, id="accept-contact-over-contact"),
        pytest.param(H("MESSAGE", accept_contact=f"*;+g.oma.sip-im;{icsi_ref(MSG)}"),
                     Service.CPM_MSG, id="icsi-over-im-tag"),
        pytest.param(H("INVITE", accept_contact="*;+g.oma.sip-im",
                       contact=f"<sip:a@h>;{icsi_ref(SESSION)}"),
                     Service.CPM_SESSION, id="contact-icsi-over-accept-contact-im-tag"),
        pytest.param(H("MESSAGE", accept_contact="*;+g.3gpp.smsip;+g.oma.sip-im"),
                     Service.IM_PAGER, id="im-tag-over-smsip"),
        pytest.param(H("MESSAGE", accept_contact=f"*;+g.3gpp.smsip, *;{icsi_ref(MSG)}"),
                     Service.CPM_MSG, id="icsi-over-smsip-several-entries"),
        pytest.param(H("MESSAGE", contact="<sip:a@h>;+g.3gpp.smsip"),
                     Service.NONE, id="smsip-only-in-accept-contact"),
        # a service not valid for the method is skipped, the next source decides
        pytest.param(H("MESSAGE", asserted_service=urn(SESSION),
                       accept_contact=f"*;{icsi_ref(MSG)}"),
                     Service.CPM_MSG, id="session-in-message-falls-through"),
        pytest.param(H("INVITE", preferred_service=urn(MSG), accept_contact="*;+g.oma.sip-im"),
                     Service.IM_SESSION, id="msg-in-invite-falls-through-to-im"),
        # several services in one header: the most specific wins
        pytest.param(H("INVITE", contact=f"<sip:a@h>;{icsi_ref(SESSION, 'oma.cpm.filetransfer')}"),
                     Service.CPM_FILETRANSFER, id="list-session-filetransfer"),
        pytest.param(H("INVITE", accept_contact=f"*;{icsi_ref(SESSION, 'oma.cpm.session.group')}"),
                     Service.CPM_GROUP, id="list-session-group"),
        pytest.param(H("MESSAGE", accept_contact=f"*;{icsi_ref(MSG)}, *;{icsi_ref(SYSTEMMSG)}"),
                     Service.CPM_SYSTEMMSG, id="entries-msg-systemmsg"),
        pytest.param(H("MESSAGE", accept_contact=f"*;{icsi_ref('mmtel', MSG)};explicit"),
                     Service.CPM_MSG, id="list-with-other-icsi"),
        pytest.param(H("MESSAGE", preferred_service=f"{urn('mmtel')}, {urn(MSG)}"),
                     Service.CPM_MSG, id="several-service-urns"),
        pytest.param(H("MESSAGE", accept_contact='*;+g.3gpp.icsi-ref="URN%3aurn-7%3a3GPP-service'
                                                 '.IMS.icsi.OMA.CPM.MSG"'),
                     Service.CPM_MSG, id="icsi-mixed-case-lower-percent"),
        # lookalikes and unrelated RCS tags are ignored
        pytest.param(H("MESSAGE", accept_contact=f"*;{IARI_IM};require"),
                     Service.NONE, id="iari-ref-ignored"),
        pytest.param(H("MESSAGE", accept_contact="*;+g.gsma.rcs.cpm.pager-large"),
                     Service.NONE, id="pager-large-ignored"),
        pytest.param(H("MESSAGE", accept_contact=f"*;+g.gsma.rcs.cpm.pager-large;{icsi_ref(MSG)}"),
                     Service.CPM_MSG, id="pager-large-beside-icsi"),
        pytest.param(H("MESSAGE", accept_contact=icsi_ref(MSG).replace("icsi-ref", "iari-ref")),
                     Service.NONE, id="icsi-value-in-iari-ref"),
        pytest.param(H("MESSAGE", preferred_service=urn("oma.cpm.msg.x")),
                     Service.NONE, id="icsi-suffix-lookalike"),
        pytest.param(H("MESSAGE", accept_contact="*;+g.oma.sip-im-x"),
                     Service.NONE, id="im-tag-lookalike"),
        pytest.param(H("MESSAGE", contact='"+g.oma.sip-im;x" <sip:a@h;+g.oma.sip-im>;expires=1'),
                     Service.NONE, id="im-tag-in-display-name-and-uri"),
    ],
)  # fmt: skip
def test_classify(headers: ServiceHeaders, expected: Service) -> None:
    assert classify(headers) is expected


TEXT = st.text(alphabet=' ,;="<>\\%3A+.-:abcgimopsuAM', max_size=60) | st.text(max_size=60)


@given(
    st.builds(
        ServiceHeaders,
        method=st.sampled_from(["MESSAGE", "INVITE", "message"]) | st.text(max_size=10),
        accept_contact=TEXT,
        contact=TEXT,
        preferred_service=TEXT,
        asserted_service=TEXT,
        content_type=TEXT,
    )
)
def test_classify_never_raises(headers: ServiceHeaders) -> None:
    service = classify(headers)
    assert isinstance(service, Service)
    if headers.method.upper() not in ("MESSAGE", "INVITE"):
        assert service is Service.NONE
