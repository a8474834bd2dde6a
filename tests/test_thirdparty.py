"""cpmiw.core.thirdparty: the devices a third-party REGISTER's body names (TS 24.229 5.4.1.7)."""

from __future__ import annotations

import pytest

from cpmiw.core.thirdparty import Devices, ThirdPartyError, devices, is_third_party

AOR = "sip:bob@ims.example.net"


def _message(start_line: str, *headers: str) -> bytes:
    return ("\r\n".join([start_line, *headers, "Content-Length: 0"]) + "\r\n\r\n").encode()


def _register(*headers: str) -> bytes:
    return _message(
        "REGISTER sip:ims.example.net SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKue",
        f"From: <{AOR}>;tag=1",
        f"To: <{AOR}>",
        "Call-ID: c1",
        "CSeq: 1 REGISTER",
        *headers,
    )


def _ok(*headers: str) -> bytes:
    return _message("SIP/2.0 200 OK", f"To: <{AOR}>;tag=2", "CSeq: 1 REGISTER", *headers)


def _multipart(boundary: str, *parts: tuple[str, bytes]) -> bytes:
    chunks = [
        f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + body for kind, body in parts
    ]
    return b"\r\n".join(chunks) + f"\r\n--{boundary}--\r\n".encode()


def test_the_ues_register_gives_its_contact_tags_and_path() -> None:
    body = _register(
        "Path: <sip:term@pcscf.ims.example.net;lr>",
        'Contact: "Bob, \\"B\\" <x>" <sip:bob@192.0.2.10:5060>;+g.oma.sip-im;expires=7200;'
        '+sip.instance="<urn:gsma:imei:1>"',
        "Expires: 600000",
    )
    assert devices("message/sip", body, 600) == Devices(
        '<sip:bob@192.0.2.10:5060>;+g.oma.sip-im;+sip.instance="<urn:gsma:imei:1>";expires=600',
        "<sip:term@pcscf.ims.example.net;lr>",
    )


def test_a_device_that_asked_for_less_gets_less() -> None:
    body = _register(
        "Contact: <sip:bob@192.0.2.10>;expires=60, <sip:bob@192.0.2.11>", "Expires: 120"
    )
    assert devices("message/sip", body, 600).contact == (
        "<sip:bob@192.0.2.10>;expires=60, <sip:bob@192.0.2.11>;expires=120"
    )


def test_compact_and_folded_headers_are_read() -> None:
    body = _register("m: <sip:bob@192.0.2.10>;+g.3gpp.smsip;", " expires=30")
    assert (
        devices("message/sip", body, 600).contact == "<sip:bob@192.0.2.10>;+g.3gpp.smsip;expires=30"
    )


def test_without_the_register_the_200s_contacts_count_each_with_its_expiry() -> None:
    body = _ok(
        "Contact: <sip:bob@192.0.2.10>;expires=300;+g.3gpp.smsip, <sip:bob@192.0.2.11>;expires=0"
    )
    assert devices("message/sip", body, 600) == Devices(
        "<sip:bob@192.0.2.10>;+g.3gpp.smsip;expires=300, <sip:bob@192.0.2.11>;expires=0", ""
    )


@pytest.mark.parametrize("boundary", ['"b 0"', "b0"])
def test_in_a_multipart_the_register_is_preferred_to_the_200(boundary: str) -> None:
    name = boundary.strip('"')
    body = _multipart(
        name,
        ("text/plain", b"ignored"),
        ("message/sip", _ok("Contact: <sip:bob@192.0.2.10>;expires=300, <sip:old@192.0.2.12>")),
        ("message/sip", _register("Contact: <sip:bob@192.0.2.10>;+g.oma.sip-im")),
    )
    found = devices(f"multipart/mixed;boundary={boundary}", body, 600)
    assert found == Devices("<sip:bob@192.0.2.10>;+g.oma.sip-im;expires=600", "")


def test_expires_0_deregisters_every_binding_whatever_the_body() -> None:
    assert devices("message/sip", b"", 0) == Devices("*", "")


@pytest.mark.parametrize(
    ("kind", "body", "error"),
    [
        ("message/sip", b"", "not a SIP start line"),
        ("message/sip", b"hello", "not a SIP start line"),
        ("message/sip", _message("INVITE sip:x SIP/2.0", "Contact: <sip:x>"), "no REGISTER"),
        ("message/sip", _register(), "no contact"),
        ("message/sip", _register("Contact: *"), "no contact"),
        ("message/sip", _register("Contact: <sip:x>;expires=soon"), "unreadable expires"),
        ("message/sip", _register("Not a header line"), "unreadable"),
        ("multipart/mixed", b"--b\r\n\r\n--b--", "without a boundary"),
        ("multipart/mixed; boundary=b", _multipart("b", ("text/plain", b"x")), "no REGISTER"),
    ],
)
def test_a_body_naming_no_device_is_an_error(kind: str, body: bytes, error: str) -> None:
    with pytest.raises(ThirdPartyError, match=error):
        devices(kind, body, 600)


def test_a_part_without_headers_is_text() -> None:
    body = b"--b\r\n\r\n" + _register("Contact: <sip:x@192.0.2.1>") + b"\r\n--b--\r\n"
    with pytest.raises(ThirdPartyError, match="no REGISTER"):
        devices("multipart/mixed; boundary=b", body, 600)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("message/sip", True),
        ("Message/SIP ; x=y", True),
        ('multipart/mixed; boundary="x"', True),
        ("application/sdp", False),
        ("", False),
    ],
)
def test_which_registers_are_third_party(content_type: str, expected: bool) -> None:
    assert is_third_party(content_type) is expected
