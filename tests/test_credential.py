"""cpmiw.core.credential: HA1 hashes, the credential record, and what it refuses."""

from __future__ import annotations

import hashlib

import pytest

from cpmiw.core import credential as model
from cpmiw.core.credential import Algorithm, Credential, CredentialError, from_password, ha1


def test_md5_ha1_is_rfc_2617s() -> None:
    """RFC 2617 3.5: Mufasa / testrealm@host.com / Circle Of Life."""
    assert ha1(Algorithm.MD5, "Mufasa", "testrealm@host.com", "Circle Of Life") == (
        "939e7578ed9e3c518a452acee763bce9"
    )


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        (Algorithm.MD5, "8ca523f5e9506fed4657c9700eebdbec"),
        (Algorithm.SHA256, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_ha1_gives_rfc_7616s_responses(algorithm: Algorithm, response: str) -> None:
    """RFC 7616 3.9.1: the example's response, computed from our HA1."""
    nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    new = hashlib.md5 if algorithm is Algorithm.MD5 else hashlib.sha256
    first = ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    second = new(b"GET:/dir/index.html").hexdigest()
    computed = new(f"{first}:{nonce}:00000001:{cnonce}:auth:{second}".encode()).hexdigest()
    assert computed == response


def test_a_credential_from_a_password_holds_both_hashes_and_no_password() -> None:
    made = from_password("SIP:bob@IMS.Example.NET:5060;transport=tcp", "correct horse")
    assert (made.identity, made.username, made.realm) == (
        "sip:bob@ims.example.net",
        "bob",
        "ims.example.net",
    )
    assert made.ha1_md5 == ha1(Algorithm.MD5, "bob", "ims.example.net", "correct horse")
    assert made.ha1_sha256 == ha1(Algorithm.SHA256, "bob", "ims.example.net", "correct horse")
    assert made.algorithms == [Algorithm.MD5, Algorithm.SHA256]
    assert b"correct horse" not in model.encode(made)


def test_a_credential_may_name_its_own_username() -> None:
    made = from_password("sip:bob@ims.example.net", "correct horse", "bob.private")
    assert made.username == "bob.private"
    assert made.ha1_md5 == ha1(Algorithm.MD5, "bob.private", "ims.example.net", "correct horse")


@pytest.mark.parametrize(
    ("identity", "password", "username", "error"),
    [
        ("sip:bob@ims.example.net", "short", None, "8 to 256 characters"),
        ("tel:+15551230001", "correct horse", None, "SIP identity"),
        ("sip:ims.example.net", "correct horse", None, "without a user part"),
        ("sip:bob@ims.example.net", "correct horse", 'bo"b', "quote"),
    ],
)
def test_what_a_credential_is_not_made_from(
    identity: str, password: str, username: str | None, error: str
) -> None:
    with pytest.raises(CredentialError, match=error):
        from_password(identity, password, username)


GOOD = {
    "identity": "sip:bob@ims.example.net",
    "username": "bob",
    "realm": "ims.example.net",
    "ha1_md5": "0" * 32,
}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"realm": "other.example.net"}, "is not the domain"),
        ({"identity": "sip:bob@IMS.example.net"}, "canonical SIP URI"),
        ({"identity": "tel:+15551230001", "realm": "x"}, "canonical SIP URI"),
        ({"ha1_md5": "0" * 31}, "has not 32 digits"),
        ({"ha1_md5": "g" * 32}, r"\$\.ha1_md5"),
        ({"ha1_md5": None}, "neither"),
        ({"ha1_sha256": "0" * 32}, "has not 64 digits"),
        ({"password": "x"}, "unknown field"),
        ({"username": ""}, r"\$\.username"),
    ],
)
def test_a_stored_record_is_checked(change: dict[str, object], error: str) -> None:
    with pytest.raises(CredentialError, match=error):
        model.convert({**GOOD, **change})


def test_errors_never_quote_a_hash() -> None:
    secret = "ab" * 16 + "cd"
    with pytest.raises(CredentialError) as raised:
        model.decode(model.encode(Credential(**GOOD)).replace(b"0" * 32, secret.encode()))
    assert secret not in str(raised.value)


def test_records_round_trip() -> None:
    made = from_password("sip:bob@ims.example.net", "correct horse")
    assert model.decode(model.encode(made)) == made
    with pytest.raises(CredentialError, match="not a JSON object"):
        model.decode(b"{nope")
