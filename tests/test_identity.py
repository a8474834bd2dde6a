"""cpmiw.identity: canonical subscriber identities."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpmiw.core.identity import IdentityError, canonical

TEL = "tel:+15551230001"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        pytest.param("tel:+15551230001", TEL, id="tel-global"),
        pytest.param("tel:+1-555-123-0001", TEL, id="tel-dashes"),
        pytest.param("tel:+1.555.123.0001;foo=bar", TEL, id="tel-dots-param"),
        pytest.param("tel:+1(555)123-0001", TEL, id="tel-parentheses"),
        pytest.param("TEL:+15551230001", TEL, id="tel-scheme-case"),
        pytest.param("  <tel:+15551230001>  ", TEL, id="tel-brackets-spaces"),
        pytest.param("tel:+1-555-123-0001;phone-context=+44", TEL, id="tel-global-drops-context"),
        pytest.param("sip:+15551230001@ims.example.net;user=phone", TEL, id="sip-user-phone"),
        pytest.param(
            "SIP:+1-555-123-0001@Other.Example.ORG:5061;transport=tcp;User=Phone",
            TEL,
            id="sip-user-phone-any-host",
        ),
        pytest.param("sips:+15551230001@ims.example.net;user=phone", TEL, id="sips-user-phone"),
        pytest.param(
            "<sip:+15551230001@ims.example.net;user=phone>", TEL, id="sip-user-phone-brackets"
        ),
        pytest.param(
            "sip:+15551230001@ims.example.net",
            "sip:+15551230001@ims.example.net",
            id="sip-number-without-user-phone",
        ),
        pytest.param("sip:alice@ims.example.net", "sip:alice@ims.example.net", id="sip"),
        pytest.param(
            "SIP:Alice@IMS.Example.NET:5060;transport=tcp",
            "sip:Alice@ims.example.net",
            id="sip-host-folded-user-kept",
        ),
        pytest.param("sips:Alice@ims.example.net", "sip:Alice@ims.example.net", id="sips"),
        pytest.param(
            "<sip:alice@ims.example.net;lr>", "sip:alice@ims.example.net", id="sip-brackets"
        ),
        pytest.param(
            "sip:alice@ims.example.net?Subject=hi&Priority=urgent",
            "sip:alice@ims.example.net",
            id="sip-headers-dropped",
        ),
        pytest.param(
            "sip:alice@[2001:DB8::1]:5061;transport=tls",
            "sip:alice@[2001:db8::1]",
            id="sip-ipv6-port-dropped",
        ),
        pytest.param(
            "sip:al%69ce@ims.example.net", "sip:al%69ce@ims.example.net", id="sip-escaped-kept"
        ),
        pytest.param(
            "tel:7042;phone-context=+1-555-123",
            "tel:7042;phone-context=+1555123",
            id="local-number-global-context",
        ),
        pytest.param(
            "tel:*12#;Phone-Context=+1555",
            "tel:*12#;phone-context=+1555",
            id="local-service-code",
        ),
        pytest.param(
            "sip:863-1234;phone-context=+1-914-555@ims.example.net;user=phone",
            "tel:8631234;phone-context=+1914555",
            id="sip-user-phone-local-number",
        ),
    ],
)
def test_canonical(uri: str, expected: str) -> None:
    assert canonical(uri) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("tel:7042;phone-context=IMS.Example.NET", "tel:7042;phone-context=ims.example.net"),
        ("tel:7042;phone-context=ab.c", "tel:7042;phone-context=ab.c"),
    ],
)
def test_local_number_domain_context(uri: str, expected: str) -> None:
    assert canonical(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("<>", id="empty-brackets"),
        pytest.param("alice@example.net", id="no-scheme"),
        pytest.param("mailto:alice@example.net", id="mailto"),
        pytest.param("http://ims.example.net/alice", id="http"),
        pytest.param("sip:", id="sip-empty"),
        pytest.param("sip:ims.example.net", id="sip-host-without-user"),
        pytest.param("sip:@ims.example.net", id="sip-empty-user"),
        pytest.param("sip:;x=y@ims.example.net", id="sip-user-only-params"),
        pytest.param("sip:alice@", id="sip-without-host"),
        pytest.param("sip:alice@:5060", id="sip-port-without-host"),
        pytest.param("sip:abc@ims.example.net;user=phone", id="user-phone-not-a-number"),
        pytest.param("tel:", id="tel-empty"),
        pytest.param("tel:abc", id="tel-abc"),
        pytest.param("tel:+", id="tel-plus-only"),
        pytest.param("tel:+1234567890123456", id="tel-more-than-15-digits"),
        pytest.param("tel:+1 555 123", id="tel-spaces"),
        pytest.param("tel:7042", id="local-number-without-context"),
        pytest.param("tel:7042;phone-context=", id="local-number-empty-context"),
        pytest.param("sip:alice@ ?x", id="blank-host"),
        pytest.param(
            "sip:alice@ims.example.net ?x",
            id="space-in-host",
        ),
    ],
)
def test_not_an_identity(uri: str) -> None:
    with pytest.raises(IdentityError):
        canonical(uri)


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("sip:al%69ce@ims.example.net", id="escaped-letter"),
        pytest.param("SIP:Alice@IMS.Example.NET:5060 ", id="trailing-space"),
        pytest.param("sip:%3Bx@ims.example.net", id="escaped-semicolon"),
        pytest.param("sip:a%2540b@ims.example.net", id="escaped-percent"),
    ],
)  # fmt: skip
def test_canonical_form_is_stable(uri: str) -> None:
    once = canonical(uri)
    assert canonical(once) == once


URIISH = st.builds(
    str.__add__,
    st.sampled_from(["sip:", "sips:", "SIP:", "tel:", "TEL:", "<sip:", "<tel:", " ", ""]),
    st.text(alphabet="+-.()0123456789abAB@:;=?[]<> *#", max_size=40),
) | st.text(max_size=40)


@given(URIISH)
def test_canonical_raises_only_identity_error(uri: str) -> None:
    with contextlib.suppress(IdentityError):
        canonical(uri)


@given(URIISH)
def test_canonical_is_idempotent(uri: str) -> None:
    try:
        once = canonical(uri)
    except IdentityError:
        return
    assert once.startswith(("sip:", "tel:"))
    assert canonical(once) == once
